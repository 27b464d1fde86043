"""PSNR / SSIM on real images, against hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from enhancers.metrics import psnr, ssim


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
