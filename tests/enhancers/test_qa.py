"""The "do no harm" checks on real images: what a good denoiser passes and what harmful ones fail."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from enhancers.noise import estimate_noise
from enhancers.pipeline import Pipeline
from enhancers.qa import slice_checks
from tests.enhancers.conftest import load_modality_values


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, float]:
    values, _, _ = load_modality_values("693_UNCR.dcm")
    return values[0], estimate_noise(values[0], "CT").sigma


@pytest.fixture(scope="module")
def mr() -> tuple[np.ndarray, float, tuple[float, float]]:
    values, _, vrange = load_modality_values("MR2_UNCR.dcm")
    return values[0], estimate_noise(values[0], "MR").sigma, vrange


def test_identity_is_clean(ct: tuple[np.ndarray, float]) -> None:
    img, sigma = ct
    c = slice_checks(img, img.copy(), sigma=sigma, group="CT")
    assert (c.lowpass, c.voids, c.grid, c.bias) == (0.0, 0.0, 0.0, 0.0)


def test_nlm_passes_and_a_blur_fails_the_lowpass_check(ct: tuple[np.ndarray, float]) -> None:
    img, sigma = ct
    nlm = Pipeline("nlm", device="cpu").run(img, modality="CT", value_range=(-1024.0, 3071.0))
    good = slice_checks(img, nlm, sigma=sigma, group="CT")
    assert good.lowpass <= 0.35 and abs(good.bias) <= 0.3 and good.grid <= 0.05 and good.voids == 0.0
    blurred = ndimage.gaussian_filter(img, 1.0)
    assert slice_checks(img, blurred, sigma=sigma, group="CT").lowpass > 0.35


def test_a_grid_and_a_shift_are_measured_in_sigma(ct: tuple[np.ndarray, float]) -> None:
    img, sigma = ct
    yy, xx = np.indices(img.shape)
    checker = np.where((yy + xx) % 2 == 0, 0.3, -0.3).astype(np.float32) * sigma
    assert slice_checks(img, img + checker, sigma=sigma, group="CT").grid == pytest.approx(0.3, abs=0.03)
    assert slice_checks(img, img + 0.5 * sigma, sigma=sigma, group="CT").bias == pytest.approx(0.5, abs=1e-3)


def test_zeroing_dark_tissue_is_a_void(mr: tuple[np.ndarray, float, tuple[float, float]]) -> None:
    img, sigma, _ = mr
    harmful = np.where(img < 150, 0.0, img).astype(np.float32)  # what the old MR default did to muscle
    c = slice_checks(img, harmful, sigma=sigma, group="MR")
    assert c.voids > 0.01 and c.bias < 0


def test_too_little_anatomy_gives_nan_not_an_error() -> None:
    flat = np.zeros((32, 32), dtype=np.float32)
    assert np.isnan(slice_checks(flat, flat, sigma=1.0, group="MR").lowpass)


def test_gain_is_one_for_identity_below_one_for_a_denoiser_and_above_for_sharpening(
    ct: tuple[np.ndarray, float],
) -> None:
    img, sigma = ct
    assert slice_checks(img, img.copy(), sigma=sigma, group="CT").gain == pytest.approx(1.0)
    nlm = Pipeline("nlm", device="cpu").run(img, modality="CT", value_range=(-1024.0, 3071.0))
    assert slice_checks(img, nlm, sigma=sigma, group="CT").gain < 0.9
    sharpened = img + 2.0 * (img - ndimage.gaussian_filter(img, 1.0))
    assert slice_checks(img, sharpened, sigma=sigma, group="CT").gain > 2.5
