"""Noise estimation per series, robust to the correlated noise of reconstructed CT and to Rician MR.

Why not the wavelet MAD estimator (`estimate_noise_sigma` in `enhancers.classical`, scikit-image's
`estimate_sigma`): it looks only at the finest diagonal sub-band, i.e. at the noise power near the Nyquist
frequency. Filtered back projection and MR/JPEG reconstruction put most of the noise power at lower
frequencies, so on real CT it reads 2-10x low, and a denoiser conditioned on it would barely act.

What is done instead ("flat blocks"): the slice is cut into B x B blocks; in each, a plane a + b*u + c*v is
fitted by least squares and the standard deviation of what is left is taken (B^2 - 3 degrees of freedom). A
plane absorbs slow shading, but not anatomy with edges or texture, which only makes a block's deviation
larger. Among the blocks that lie in the anatomy (CT: mean in [-200, 200] HU, soft tissue; MR and X-ray: mean
above 10 % of the 99th percentile, no constant block), the flattest are pure noise: the estimate is the P-th
percentile of the block deviations, divided by the P-th percentile of the chi distribution with B^2 - 3
degrees of freedom (what that percentile is for blocks of pure noise), so pure white noise is estimated
without bias. It measures the total noise variance within B pixels, whatever its spectrum.

B and P per modality (`PARAMETERS`), measured against known noise: CT noise is correlated over several
pixels, so CT takes 8x8 blocks and P = 25 (within 10 % of the true std of projection-domain low-dose noise;
4x4 blocks absorb part of it in the plane and read 15 % low). MR noise is nearly white but MR anatomy (EPI,
brain) has fine texture that leaves few flat 8x8 blocks: on the real-noise pair (std of the difference of two
acquisitions / sqrt 2 = 358) 8x8/P25 read 1020, 4x4/P10 reads 420; X-ray follows MR.

MR magnitude noise is Rician: where the signal is below about 2 sigma its spread is smaller than sigma (pure
background: Rayleigh, std 0.655 sigma, mean 1.25 sigma). Once the noise passes ~4 % of the maximum, the
Rayleigh background clears the "10 % of p99" foreground test and its blocks are the flattest, so the plain rule
read 0.65-0.7x the true sigma on most images at 5-8 % (pinned at sqrt(2 - pi/2)). MR therefore takes a second
step: only blocks whose mean is above `RICIAN_FLOOR` x the first estimate (3 x 0.655 sigma ~ 2 sigma when the
first one read the background, where Rician spread is within a few % of sigma) are kept, and the percentile is
taken again. Once, not iterated: on a textured slice (dipy's b=0) each raise of the floor drops more of the flat
tissue and the estimate ran away to 3.4x. Measured on the corpus's MR slices at Rician 1-12 % (true = the added
sigma combined with the slice's own noise): 0.97-1.21x with the step, 0.58-1.17x without (docs/lopo.md).

MR magnitude images also get the Rician (Rayleigh) background estimate when they have a background that is
not zero-filled: where there is no signal, magnitude noise has mean sigma * sqrt(pi / 2). It is the sigma
the Rician bias correction (Gudbjartsson and Patz 1995, |A|^2 = |M|^2 - sigma^2) needs. Background blocks are
those whose mean is below `BACKGROUND_SIGMAS` x the anatomy's sigma (Rayleigh blocks of 16 pixels average 1.25
+- 0.16 sigma), or below 3 % of p99 as before.

Blocks are pooled over up to `MAX_SLICES` slices spread over the series, so one estimate describes a series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

#: (block side B, percentile P) per modality group; None is any other modality.
PARAMETERS: dict[str | None, tuple[int, float]] = {
    "CT": (8, 25.0),
    "MR": (4, 10.0),
    "XR": (4, 10.0),
    None: (4, 10.0),
}
MAX_SLICES = 12
MIN_BLOCKS = 16
CT_TISSUE_HU: tuple[float, float] = (-200.0, 200.0)
FOREGROUND_FRACTION = 0.10
BACKGROUND_FRACTION = 0.03
#: MR: the second step keeps blocks brighter than this many first-step sigmas (module docstring)
RICIAN_FLOOR = 3.0
#: MR: blocks darker than this many sigmas (or than BACKGROUND_FRACTION of p99) are the background
BACKGROUND_SIGMAS = 2.0


def _chi_percentile(block: int, percentile: float) -> float:
    """The percentile of the sample deviation of pure unit noise over one block (chi / sqrt(dof))."""
    dof = block * block - 3
    return math.sqrt(float(stats.chi2.ppf(percentile / 100.0, dof)) / dof)


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of a series in modality units (HU, MR units, stored values).

    `sigma`: the flat-block estimate in the anatomy (0.0 when no block qualified, e.g. a synthetic flat
    image). `background_sigma`: MR only, the Rayleigh estimate from a non-zero-filled background, else None.
    `blocks`: how many blocks the estimate rests on; `method` names the rule, for the private block and logs.
    """

    sigma: float
    blocks: int
    method: str
    background_sigma: float | None = None

    @property
    def rician_sigma(self) -> float:
        """The sigma for the Rician bias correction: the background's when measured, else the anatomy's."""
        return self.background_sigma if self.background_sigma is not None else self.sigma


def _sample(slices: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    arr = np.asarray(slices, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a slice (H, W) or a stack (N, H, W), got shape {arr.shape}")
    if arr.shape[0] > MAX_SLICES:
        arr = arr[np.linspace(0, arr.shape[0] - 1, MAX_SLICES).round().astype(int)]
    return arr


def block_stats(
    slices: npt.NDArray[np.floating], block: int = 8
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per block x block tile of each slice: mean, deviation after a plane fit, and whether it is constant."""
    arr = _sample(slices)
    n, h, w = arr.shape
    bh, bw = h // block, w // block
    if bh == 0 or bw == 0:
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=bool)
    blocks = arr[:, : bh * block, : bw * block].reshape(n, bh, block, bw, block).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(-1, block, block)
    u = np.arange(block, dtype=np.float64) - (block - 1) / 2.0
    suu = float(np.sum(u * u)) * block
    mean = blocks.mean(axis=(1, 2))
    b = np.einsum("kij,j->k", blocks, u) / suu
    c = np.einsum("kij,i->k", blocks, u) / suu
    centred = blocks - mean[:, None, None]
    ss = np.einsum("kij,kij->k", centred, centred) - (b * b + c * c) * suu
    dev = np.sqrt(np.maximum(ss, 0.0) / (block * block - 3))
    constant = blocks.max(axis=(1, 2)) == blocks.min(axis=(1, 2))
    return mean, dev, constant


def estimate_noise(slices: npt.NDArray[np.floating], group: str | None) -> NoiseEstimate:
    """The noise of a series (N, H, W) or slice (H, W) in its modality values; see the module docstring."""
    block, percentile = PARAMETERS.get(group, PARAMETERS[None])
    mean, dev, constant = block_stats(slices, block)
    if mean.size == 0:
        return NoiseEstimate(0.0, 0, "too small")
    varying = ~constant
    if group == "CT":
        fg = varying & (mean >= CT_TISSUE_HU[0]) & (mean <= CT_TISSUE_HU[1])
        rule = f"flat {block}x{block} blocks P{percentile:g}, soft tissue {CT_TISSUE_HU[0]:g}..{CT_TISSUE_HU[1]:g} HU"
    else:
        top = float(np.percentile(mean, 99)) if mean.size else 0.0
        fg = varying & (mean > FOREGROUND_FRACTION * top)
        rule = f"flat {block}x{block} blocks P{percentile:g}, above 10% of p99"
    if int(np.count_nonzero(fg)) < MIN_BLOCKS:
        fg = varying  # a phantom or an unusual field of view: any block that is not padding
    count = int(np.count_nonzero(fg))
    if count < MIN_BLOCKS:
        return NoiseEstimate(0.0, count, "too few varying blocks")
    chi = _chi_percentile(block, percentile)
    sigma = float(np.percentile(dev[fg], percentile)) / chi
    background = None
    if group == "MR":
        bright = fg & (mean > RICIAN_FLOOR * sigma)
        if int(np.count_nonzero(bright)) >= MIN_BLOCKS:
            sigma = float(np.percentile(dev[bright], percentile)) / chi
            count = int(np.count_nonzero(bright))
            rule += f", Rician floor {RICIAN_FLOOR:g}x"  # the private block keeps 64 characters
        top = float(np.percentile(mean, 99))
        dark = np.maximum(BACKGROUND_FRACTION * top, BACKGROUND_SIGMAS * sigma)
        bg = varying & (mean < dark) & (mean > 0)
        if int(np.count_nonzero(bg)) >= MIN_BLOCKS:
            # Rayleigh: E[M] = sigma sqrt(pi/2); the median block mean resists blocks that touch the anatomy
            background = float(np.median(mean[bg])) / math.sqrt(math.pi / 2.0)
    return NoiseEstimate(sigma, count, rule, background)


def rician_correct(values: npt.NDArray[np.floating], sigma: float) -> npt.NDArray[np.float32]:
    """Gudbjartsson-Patz bias correction of MR magnitude: sqrt(max(M^2 - sigma^2, 0)).

    It removes the positive bias magnitude noise adds where the signal is low (background, dark tissue);
    where the signal is a few sigma or more it changes almost nothing.
    """
    m = np.asarray(values, dtype=np.float64)
    return np.sqrt(np.maximum(m * m - float(sigma) ** 2, 0.0)).astype(np.float32)
