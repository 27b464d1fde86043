"""PSNR / SSIM on real images, against hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from enhancers.metrics import psnr, ssim, ssim_fast


def test_psnr_known_value(ct_slice: tuple[np.ndarray, str, tuple[float, float]]) -> None:
    ref = ct_slice[0][0]
    test = ref + 10.0  # MSE = 100
    assert psnr(ref, test, 2000.0) == pytest.approx(10 * math.log10(2000.0**2 / 100.0))
    assert psnr(ref, ref, 2000.0) == math.inf


def test_ssim_identity_and_degradation(ct_slice: tuple[np.ndarray, str, tuple[float, float]]) -> None:
    ref = np.clip(ct_slice[0][0], -1000, 1000)
    assert ssim(ref, ref, 2000.0) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    mild = ref + rng.normal(0, 10, ref.shape)
    strong = ref + rng.normal(0, 80, ref.shape)
    assert 1.0 > ssim(ref, mild, 2000.0) > ssim(ref, strong, 2000.0)


def test_stack_is_mean_of_slices(mr_slice: tuple[np.ndarray, str, tuple[float, float]]) -> None:
    ref = mr_slice[0][0]
    a = ref + 20.0
    b = ref * 0.9
    stack = ssim(np.stack([ref, ref]), np.stack([a, b]), 3000.0)
    assert stack == pytest.approx((ssim(ref, a, 3000.0) + ssim(ref, b, 3000.0)) / 2)


def test_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((8, 8)), np.zeros((8, 9)), 1.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), 0.0)


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "CT_small.dcm"])
def test_ssim_fast_agrees_with_ssim(name: str) -> None:
    """The worker's float32 SSIM (`ssim_fast`) against scikit-image's float64 one, on real slices at three
    noise levels and on a smoothed copy, with the worker's data range (the input's observed range)."""
    from scipy import ndimage

    from tests.enhancers.conftest import load_modality_values

    ref = load_modality_values(name)[0][0]
    rng = np.random.default_rng(1)
    data_range = float(ref.max() - ref.min())
    spread = data_range / 4000.0
    for test in [ref + rng.normal(0, sd * spread, ref.shape) for sd in (1, 30, 300)] + [
        ndimage.gaussian_filter(ref, 1.5)
    ]:
        test = test.astype(np.float32)
        assert ssim_fast(ref, test, data_range) == pytest.approx(ssim(ref, test, data_range), abs=1e-5)
    assert ssim_fast(ref, ref, data_range) == pytest.approx(1.0, abs=1e-6)
    stack = np.stack([ref, ref + np.float32(spread)])
    assert ssim_fast(stack, stack[::-1], data_range) == pytest.approx(ssim(stack, stack[::-1], data_range), abs=1e-5)
    with pytest.raises(ValueError, match="7x7"):
        ssim_fast(ref[:5, :5], ref[:5, :5], data_range)
