"""Degradations on real images: documented behaviour (more dose -> less noise, Rician bias, area mean...)."""

from __future__ import annotations

import numpy as np
import pytest

from enhancers import degrade

Image = tuple[np.ndarray, str, tuple[float, float]]


@pytest.fixture(scope="module")
def ct_head(ct_slice: Image) -> np.ndarray:
    # a 256x256 central crop keeps the projection cheap; padding becomes air as in the corpus
    return degrade.ct_clean(ct_slice[0][0, 128:384, 128:384])


def test_hu_mu_round_trip() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 1000.0])
    np.testing.assert_allclose(degrade.mu_to_hu(degrade.hu_to_mu(hu)), hu, atol=1e-9)
    assert degrade.hu_to_mu(np.array([-3024.0]))[0] == 0.0


def test_ct_low_dose_lower_i0_means_more_noise(ct_head: np.ndarray) -> None:
    proj = degrade.CTProjector(n_angles=180)
    hi = degrade.ct_low_dose(ct_head, i0=1e5, rng=np.random.default_rng(1), pixel_mm=0.48, projector=proj)
    lo = degrade.ct_low_dose(ct_head, i0=2e4, rng=np.random.default_rng(1), pixel_mm=0.48, projector=proj)
    assert hi.shape == lo.shape == ct_head.shape and hi.dtype == np.float32
    roi = (slice(96, 160), slice(96, 160))  # brain
    err_hi = float(np.std((hi - ct_head)[roi]))
    err_lo = float(np.std((lo - ct_head)[roi]))
    assert err_lo > 1.7 * err_hi  # noise std scales ~ 1/sqrt(I0): sqrt(5) = 2.24
    # the mean is preserved: low dose is noise, not a shift of the HU scale
    assert abs(float(np.mean((lo - ct_head)[roi]))) < 0.2 * err_lo
    again = degrade.ct_low_dose(ct_head, i0=2e4, rng=np.random.default_rng(1), pixel_mm=0.48, projector=proj)
    np.testing.assert_array_equal(lo, again)
    with pytest.raises(ValueError, match="i0"):
        degrade.ct_low_dose(ct_head, i0=0, rng=np.random.default_rng(1))


def test_mr_rician(mr_slice: Image) -> None:
    img = mr_slice[0][0]
    a = degrade.mr_rician(img, sigma_fraction=0.03, rng=np.random.default_rng(0))
    b = degrade.mr_rician(img, sigma_fraction=0.05, rng=np.random.default_rng(0))
    assert np.std(b - img) > np.std(a - img) > 0
    assert (a >= 0).all()  # a magnitude
    # Rician bias: a zero background becomes positive on average (sigma * sqrt(pi/2))
    zero = np.zeros((64, 64), dtype=np.float32)
    zero[0, 0] = 1000.0
    noisy = degrade.mr_rician(zero, sigma_fraction=0.05, rng=np.random.default_rng(0))
    assert float(np.mean(noisy)) == pytest.approx(50.0 * np.sqrt(np.pi / 2), rel=0.1)


def test_xray_poisson_gaussian_is_signal_dependent(cr_crop: Image) -> None:
    img, _, vrange = cr_crop
    img = img[0]
    rng = np.random.default_rng(0)
    noisy = degrade.xray_poisson_gaussian(img, peak_photons=2000, read_sigma=0.0, value_range=vrange, rng=rng)
    diff = noisy - img
    bright = img > np.percentile(img, 80)
    dark = img < np.percentile(img, 20)
    assert float(np.std(diff[bright])) > float(np.std(diff[dark]))  # Poisson: variance grows with signal
    fewer = degrade.xray_poisson_gaussian(
        img, peak_photons=500, read_sigma=0.0, value_range=vrange, rng=np.random.default_rng(0)
    )
    assert np.std(fewer - img) > np.std(diff)


def test_downsample_is_the_block_mean(mr_slice: Image) -> None:
    img = mr_slice[0][0]
    small = degrade.downsample2x_area(img)
    assert small.shape == (32, 32)
    assert small[3, 5] == pytest.approx(float(img[6:8, 10:12].mean()))
    assert degrade.downsample2x_area(img[:63, :63]).shape == (31, 31)


def test_gaussian_blur_smooths(ct_slice: Image) -> None:
    img = ct_slice[0][0]
    blurred = degrade.gaussian_blur(img, sigma=1.0)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(img, axis=1)).mean()
    np.testing.assert_array_equal(degrade.gaussian_blur(img, sigma=0), img)


def test_standard_levels_are_the_issue_levels() -> None:
    assert degrade.standard("ct-i0-2e4").params == {"i0": 2e4}
    assert degrade.standard("ct-i0-1e5").params == {"i0": 1e5}
    assert degrade.standard("mr-rician-0.05").params == {"sigma_fraction": 0.05}
    with pytest.raises(KeyError):
        degrade.standard("nope")
