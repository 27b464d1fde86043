"""The baselines a user would pick instead of a model, at their best: the yardstick of `evaluate`.

Why "at their best": a model that beats an NLM fed a noise estimate that reads 2-10x low (the wavelet MAD on
correlated CT noise) has beaten a straw man. Here every baseline is given what an expert tuning it on this
very image would give it, from the clean reference (an *oracle*: an upper bound for that baseline, which a
real deployment cannot reach):
- `nlm-tuned`: non-local means (5x5 patches, +-6 px), sigma = the true noise std (std of degraded - clean
  over the anatomy), h chosen per image from `NLM_H_FACTORS` x sigma as the one with the best PSNR.
- `bm3d`: BM3D (the `bm3d` package, both stages). CT gets the true noise power spectrum (the periodogram of
  degraded - clean, smoothed), because reconstructed CT noise is far from white; MR and X-ray the true std.
- MR: both followed by the Gudbjartsson-Patz Rician bias correction with the true sigma (`-rc` suffix),
  the standard treatment of magnitude images (without it, a Gaussian denoiser keeps the Rician bias of the
  dark tissue and background, and whole-image PSNR punishes it for that rather than for its denoising).
All work in the normalised domain (`enhancers.base`) and return modality values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage import restoration

from enhancers.base import normalisation_for
from enhancers.metrics import psnr
from enhancers.noise import rician_correct
from enhancers.qa import foreground_mask

FloatArray = npt.NDArray[np.float32]
NLM_H_FACTORS: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5)


def true_sigma(clean: npt.NDArray[np.floating], degraded: npt.NDArray[np.floating], group: str) -> float:
    """The std of the added noise over the anatomy of the clean image (modality units)."""
    mask = foreground_mask(clean, group)
    d = np.asarray(degraded, dtype=np.float64) - np.asarray(clean, dtype=np.float64)
    return float(np.std(d[mask])) if mask.any() else float(np.std(d))


def _noise_psd(noise: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The periodogram of a noise realisation, smoothed (5x5 bins), as BM3D's `sigma_psd` expects it: |FFT|^2
    unnormalised, so white noise of variance v has a flat PSD of v * (number of pixels)."""
    psd = np.abs(np.fft.fft2(noise)) ** 2
    return np.asarray(ndimage.uniform_filter(psd, size=5, mode="wrap"), dtype=np.float64)


def nlm_tuned(
    clean: FloatArray, degraded: FloatArray, group: str, value_range: tuple[float, float]
) -> tuple[FloatArray, float]:
    """NLM with the true sigma and the best h of `NLM_H_FACTORS` for this image; returns (output, h factor)."""
    norm = normalisation_for(group, degraded[None], value_range)
    x = norm.forward(degraded).astype(np.float64)
    sigma = true_sigma(clean, degraded, group) / norm.scale
    rng = float(np.ptp(clean)) or 1.0
    best: tuple[float, FloatArray, float] = (-np.inf, degraded, 0.0)
    for f in NLM_H_FACTORS:
        y = restoration.denoise_nl_means(
            x, h=f * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, preserve_range=True
        )
        out = norm.inverse(np.asarray(y, dtype=np.float32))
        p = psnr(clean, out, rng)
        if p > best[0]:
            best = (p, out, f)
    return best[1], best[2]


def bm3d_oracle(
    clean: FloatArray, degraded: FloatArray, group: str, value_range: tuple[float, float]
) -> FloatArray:
    """BM3D with the true noise level (CT: the true noise power spectrum)."""
    import bm3d

    if not hasattr(np, "trapz"):  # bm4d 4.2 (under bm3d) still calls np.trapz for a PSD; numpy 2.4 removed it
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    norm = normalisation_for(group, degraded[None], value_range)
    x = norm.forward(degraded).astype(np.float64)
    if group == "CT":
        noise = (np.asarray(degraded, dtype=np.float64) - clean) / norm.scale
        sigma_psd: npt.NDArray[np.float64] | float = _noise_psd(noise)
    else:
        sigma_psd = true_sigma(clean, degraded, group) / norm.scale
    y = bm3d.bm3d(x, sigma_psd)
    return norm.inverse(np.asarray(y, dtype=np.float32))


def rician_corrected(
    fn: Callable[[FloatArray, FloatArray, str, tuple[float, float]], FloatArray],
) -> Callable[[FloatArray, FloatArray, str, tuple[float, float]], FloatArray]:
    """`fn` followed by the Rician bias correction with the true sigma (MR magnitude images)."""

    def run(
        clean: FloatArray, degraded: FloatArray, group: str, value_range: tuple[float, float]
    ) -> FloatArray:
        return rician_correct(fn(clean, degraded, group, value_range), true_sigma(clean, degraded, group))

    return run


def _nlm_only(
    clean: FloatArray, degraded: FloatArray, group: str, value_range: tuple[float, float]
) -> FloatArray:
    return nlm_tuned(clean, degraded, group, value_range)[0]


Baseline = Callable[[FloatArray, FloatArray, str, tuple[float, float]], FloatArray]


def baselines_for(group: str) -> dict[str, Baseline]:
    """The oracle baselines of `evaluate` for a modality group, by row name."""
    out: dict[str, Baseline] = {"nlm-tuned (oracle)": _nlm_only, "bm3d (oracle)": bm3d_oracle}
    if group == "MR":
        out["nlm-tuned-rc (oracle)"] = rician_corrected(_nlm_only)
        out["bm3d-rc (oracle)"] = rician_corrected(bm3d_oracle)
    return out
