"""The DEGRADE_RESTORE score on real slices: a denoiser beats the degradation it undoes; sr2x is scored too."""

from __future__ import annotations

import numpy as np
import pydicom

from dicom_utils.pixels import modality_frames, value_range
from enhancers.metrics import score
from enhancers.pipeline import Pipeline
from gateway.enhance.restore_score import CT_NOISE_HU, degrade_restore, degrade_slice
from tests.realdata import testfile


def _ct(name: str) -> tuple[np.ndarray, tuple[float, float]]:
    ds = pydicom.dcmread(testfile(name))
    return modality_frames(ds)[0], value_range(ds)


def test_ct_degradation_is_the_stated_noise_and_is_reproducible() -> None:
    x, vr = _ct("693_UNCR.dcm")
    a = degrade_slice(x, group="CT", task="denoise", value_range=vr, seed=5)
    b = degrade_slice(x, group="CT", task="denoise", value_range=vr, seed=5)
    assert np.array_equal(a, b)
    assert abs(float(np.std(a - x)) - CT_NOISE_HU) < 0.5


def test_a_denoiser_restores_better_than_the_degraded_input() -> None:
    x, vr = _ct("693_UNCR.dcm")
    degraded = degrade_slice(x, group="CT", task="denoise", value_range=vr, seed=3)
    baseline = score("CT", x, degraded)
    result = degrade_restore(Pipeline("nlm", device="cpu"), [(3, x, vr)], modality="CT", task="denoise",
                             strength=1.0)
    assert result is not None and result.slices == (3,)
    assert result.psnr > baseline.psnr + 1.0, (result.psnr, baseline.psnr)
    assert "20 HU" in result.rule


def test_sr2x_is_scored_at_the_received_size_and_tiny_slices_are_left_out() -> None:
    x, vr = _ct("CT_small.dcm")
    tiny = np.zeros((8, 8), dtype=np.float32)
    result = degrade_restore(Pipeline("bicubic", device="cpu"), [(1, x, vr), (2, x, vr), (9, tiny, vr)],
                             modality="CT", task="sr2x", strength=1.0)
    assert result is not None and result.slices == (1, 2)
    assert 20.0 < result.psnr < 80.0 and 0.0 < result.ssim <= 1.0
