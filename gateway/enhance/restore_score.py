"""The DEGRADE_RESTORE score: a quality figure against a real reference, on a few slices of each series.

Why: a received image has no clean reference, so PSNR/SSIM of the output against it (INPUT) only measure how
much the enhancer changed. Degrading the received slice the way the enhancer is meant to undo, enhancing that,
and comparing the result with the received slice gives a score against an image that really exists.

Degradations (modality values in, same out; the seed is fixed per slice, so a re-run gives the same score):
- CT denoise: white Gaussian noise of `CT_NOISE_HU` HU. Not the projection-domain low-dose simulation that
  training uses (`enhancers.degrade.ct_low_dose`, 1-3 s per slice): cheap enough to run on every series.
  White noise is easier than real correlated CT noise, so the figure flatters every denoiser alike.
- MR denoise: Rician noise, sigma 3 % of the slice maximum (`enhancers.degrade.mr_rician`, standard level).
- X-ray (and anything else) denoise: Poisson-Gaussian, 2000 quanta at full scale, read noise 0.2 %
  (`xray_poisson_gaussian`, standard level).
- sr2x: 2x2 area downsampling (`downsample2x_area`); the restored image is compared at the received size.
- sr4x: 4x4 area downsampling, the same way; deblur: a blurred acquisition (`degrade.blurred_acquisition`, as
  `evaluate --xray` makes it): a Gaussian blur of 1.5 px, then white noise at the slice's own estimated level,
  then integers, restored at the same size. A blur alone would only attenuate the slice's grain, and the score
  would reward an enhancer that amplifies that grain back.
A noise-conditioned model is given the noise estimated on the degraded slices, the route's strength as usual.
Scores use `enhancers.metrics.score` (CT in the [-1000, 1000] HU window, data range 2000; others the
received slice's range), averaged over the sampled slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dicom_utils.enhancement import Task
from enhancers import degrade
from enhancers.metrics import score
from enhancers.noise import estimate_noise
from enhancers.pipeline import Pipeline
from enhancers.registry import modality_group

CT_NOISE_HU = 20.0
MR_SIGMA_FRACTION = 0.03
XR_PEAK_PHOTONS = 2000.0
XR_READ_SIGMA = 0.002
#: deblur's own degradation: the blur its models are evaluated on (`enhancers.degrade` deblur-1.5), before the
#: detector's noise.
DEBLUR_SIGMA_PX = 1.5


@dataclass(frozen=True)
class RestoreScore:
    """Mean PSNR (dB) and SSIM over the sampled slices, and which slices (Instance Numbers) they were."""

    psnr: float
    ssim: float
    slices: tuple[int, ...]
    rule: str


def rule_for(group: str | None, task: str) -> str:
    if task in (Task.SR2X, Task.SR4X):
        f = 2 if task == Task.SR2X else 4
        return f"{f}x{f} area downsampling, restored at the received size"
    if task == Task.DEBLUR:
        return f"Gaussian blur, sigma {DEBLUR_SIGMA_PX:g} px, then noise at the slice's own level, integers"
    if group == "CT":
        return f"white Gaussian noise {CT_NOISE_HU:g} HU"
    if group == "MR":
        return f"Rician noise, sigma {MR_SIGMA_FRACTION:g} of the slice maximum"
    return f"Poisson-Gaussian, {XR_PEAK_PHOTONS:g} quanta at full scale, read noise {XR_READ_SIGMA:g}"


def degrade_slice(
    image: npt.NDArray[np.floating], *, group: str | None, task: str, value_range: tuple[float, float], seed: int
) -> npt.NDArray[np.float32]:
    """The enhancer's own degradation of one received slice (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(image, dtype=np.float32)
    if task == Task.SR2X:
        return degrade.downsample2x_area(x)
    if task == Task.SR4X:
        return degrade.downsample_area(x, 4)
    if task == Task.DEBLUR:
        lo, hi = value_range
        return degrade.blurred_acquisition(
            x,
            sigma=DEBLUR_SIGMA_PX,
            noise_sigma=estimate_noise(x, group).sigma,
            rng=rng,
            value_range=(lo, hi if hi > lo else lo + 1.0),
        )
    if group == "CT":
        return (x + rng.normal(0.0, CT_NOISE_HU, x.shape)).astype(np.float32)
    if group == "MR":
        return degrade.mr_rician(x, sigma_fraction=MR_SIGMA_FRACTION, rng=rng)
    lo, hi = value_range
    if hi <= lo:
        hi = lo + 1.0
    return degrade.xray_poisson_gaussian(
        x, peak_photons=XR_PEAK_PHOTONS, read_sigma=XR_READ_SIGMA, value_range=(lo, hi), rng=rng
    )


def degrade_restore(
    pipe: Pipeline,
    slices: list[tuple[int, npt.NDArray[np.floating], tuple[float, float]]],
    *,
    modality: str,
    task: str,
    strength: float,
) -> RestoreScore | None:
    """Score `pipe` on (Instance Number, received slice, value range) triples; None when nothing can be scored."""
    group = modality_group(modality)
    received: dict[tuple[int, ...], list[tuple[int, npt.NDArray[np.float32], tuple[float, float]]]] = {}
    for number, image, vrange in slices:
        x = np.asarray(image, dtype=np.float32)
        if min(x.shape) >= 16 and float(np.ptp(x)) > 0:
            received.setdefault(x.shape, []).append((number, x, vrange))
    psnrs: list[float] = []
    ssims: list[float] = []
    used: list[int] = []
    for same in received.values():  # one Pipeline.run per matrix size: the slices share a batch
        degraded = np.stack(
            [degrade_slice(x, group=group, task=task, value_range=vr, seed=number) for number, x, vr in same]
        )
        noise = None if task != Task.DENOISE else estimate_noise(degraded, group)
        lo = min(vr[0] for _, _, vr in same)
        hi = max(vr[1] for _, _, vr in same)
        restored = pipe.run(degraded, modality=modality, value_range=(lo, hi), noise=noise, strength=strength)
        for (number, x, _vr), out in zip(same, restored, strict=True):
            h, w = min(out.shape[0], x.shape[0]), min(out.shape[1], x.shape[1])
            result = score(group or "ANY", x[:h, :w], out[:h, :w])
            psnrs.append(result.psnr)
            ssims.append(result.ssim)
            used.append(number)
    if not used:
        return None
    return RestoreScore(float(np.mean(psnrs)), float(np.mean(ssims)), tuple(sorted(used)), rule_for(group, task))
