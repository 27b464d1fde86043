"""The oracle baselines: each beats the degraded input on a real slice, CT's BM3D with the noise spectrum."""

from __future__ import annotations

import numpy as np

from enhancers import corpus, degrade
from enhancers.baselines import NLM_H_FACTORS, baselines_for, bm3d_oracle, nlm_tuned
from enhancers.metrics import foreground_psnr, score


def _slice(sid: str) -> corpus.Slice:
    entry = next(e for e in corpus.read_manifest() if e["id"] == sid)
    return corpus.load_source(entry)[0]


def test_ct_baselines_beat_the_low_dose_input() -> None:
    sl = _slice("ct-small")  # 128x128: quick
    clean = degrade.ct_reconstructed(sl.pixels, pixel_mm=sl.pixel_mm)
    noisy = degrade.ct_low_dose(sl.pixels, i0=2e4, rng=np.random.default_rng(0), pixel_mm=sl.pixel_mm)
    floor = score("CT", clean, noisy).psnr
    out, factor = nlm_tuned(clean, noisy, "CT", sl.value_range)
    assert factor in NLM_H_FACTORS and score("CT", clean, out).psnr > floor + 1.0
    assert score("CT", clean, bm3d_oracle(clean, noisy, "CT", sl.value_range)).psnr > floor + 1.0


def test_mr_rician_correction_helps_the_anatomy() -> None:
    sl = _slice("mr-small")
    noisy = degrade.mr_rician(sl.pixels, sigma_fraction=0.05, rng=np.random.default_rng(0))
    runs = baselines_for("MR")
    assert {"bm3d (oracle)", "bm3d-rc (oracle)", "nlm-tuned-rc (oracle)"} <= set(runs)
    plain = foreground_psnr("MR", sl.pixels, runs["bm3d (oracle)"](sl.pixels, noisy, "MR", sl.value_range))
    corrected = foreground_psnr(
        "MR", sl.pixels, runs["bm3d-rc (oracle)"](sl.pixels, noisy, "MR", sl.value_range)
    )
    assert corrected > foreground_psnr("MR", sl.pixels, noisy)
    assert corrected >= plain - 0.1  # the correction removes the Rician bias; it must not cost tissue PSNR
