"""Per-slice "do no harm" checks: what an enhancer removed must look like noise.

Why these four and not PSNR against the input: on a real image there is no clean reference, and PSNR/SSIM
against the received image only say how much was changed, not whether what was removed was noise. A denoiser
that works removes something that is zero-mean, has no low-frequency content, no periodic pattern, and does
not take whole regions away. Each check is expressed in units of the series' noise sigma (`enhancers.noise`),
so one threshold holds for CT in HU, MR in arbitrary units and X-ray stored values. They are the same
formulas in `evaluate --native` and in the gateway's QA gate.

With d = input - output, restricted to the foreground F (the anatomy, see `foreground_mask`):
- **low-pass residual** = std over F of G2(d) / noise sigma, where G2 is a Gaussian of sigma 2 px normalised
  to F (G2(d * F) / G2(F), so the padding or air outside F never leaks in). Removed white noise of std s
  leaves s / (2 sqrt(pi) * 2) = 0.14 s after the blur; removed anatomy (edges, small structures, a shift of a
  region) survives the blur. NLM at its own sigma gives about 0.13, a 1 px Gaussian blur 0.5-1.4.
- **voids** = share of F whose value falls below half of its input value, both smoothed by a 1 px Gaussian
  (CT measured from air, HU + 1000, so "half" is a physical attenuation; MR and X-ray from their zero),
  counted where the smoothed input is at least `VOID_MIN_SIGMAS` sigma above that zero. The smoothing
  (noise std / 3.5) and the floor mean a void is a region that lost half its signal, several times what noise
  removal changes: black blotches in dark muscle, not single pixels whose noise spike was removed.
- **grid** = for period p in (2, 4): RMS over the p x p phases of the mean value in each phase (over F) of the
  high-pass difference output - input, the larger of the two periods, / noise sigma. A polyphase or
  strided-layer grid the enhancer added, measured where the input is flat (|high-pass input| < 3 sigma: a
  grid shows in flat tissue, while edges of bone, hundreds of sigma, would swamp the phase means); the part
  of the change that only attenuates a pattern already in the input is not counted (`added_grid`).
  (High-pass = image - Gaussian(1 px) of it.)
- **bias** = mean over F of (output - input) / noise sigma. A shift of tissue values.
- **gain** = std of the high-pass output / std of the high-pass input, over the flat part of F (as for grid):
  how much the enhancer amplified what is there at the finest scale, which in flat tissue is the noise. A
  denoiser stays below 1; a deblurring model is allowed about 2 on a blurred image (its job), but on an image
  that was not blurred it has nothing to restore and amplifies the noise instead (measured on the real CR RG1:
  5.5-6.7, against 1.9-2.2 on the same crops blurred by 1.5 px). The gateway's QA gate judges it for the
  `deblur` task, where the low-pass residual is no measure of harm (sharpening changes edges by design).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

LOWPASS_SIGMA_PX = 2.0
GRID_PERIODS: tuple[int, ...] = (2, 4)
CT_AIR_HU = -1000.0
#: Foreground: CT above -500 HU (tissue, not air or lung); MR and X-ray, smoothed by 1 px, above this share of
#: the 99th percentile (5 %: dark muscle on a T1 shoulder is 6 % of p99 and must count as anatomy).
CT_FOREGROUND_HU = -500.0
FOREGROUND_FRACTION = 0.05
MIN_FOREGROUND_PIXELS = 64
VOID_MIN_SIGMAS = 2.0
GRID_FLAT_SIGMAS = 3.0


@dataclass(frozen=True)
class SliceChecks:
    """The checks of one slice (see the module docstring); NaN when the slice has too little anatomy."""

    lowpass: float
    voids: float
    grid: float
    bias: float
    gain: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"lowpass": self.lowpass, "voids": self.voids, "grid": self.grid, "bias": self.bias, "gain": self.gain}


def foreground_mask(before: npt.NDArray[np.floating], group: str | None) -> npt.NDArray[np.bool_]:
    """The anatomy of one slice: CT above -500 HU; otherwise, smoothed by 1 px (so background noise spikes stay
    out), above 5 % of the way from the minimum to the 99th percentile."""
    img = np.asarray(before, dtype=np.float32)
    if group == "CT":
        return img > CT_FOREGROUND_HU
    lo = float(np.min(img))
    top = float(np.percentile(img, 99))
    smooth = ndimage.gaussian_filter(img, 1.0, mode="reflect", truncate=3.0)
    mask: npt.NDArray[np.bool_] = smooth > lo + FOREGROUND_FRACTION * (top - lo)
    return mask


def highpass(image: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """image - Gaussian(1 px) of it: what a grid lives in, without the anatomy's slow variation."""
    img = np.asarray(image, dtype=np.float32)
    out: npt.NDArray[np.float32] = img - ndimage.gaussian_filter(img, 1.0, mode="reflect", truncate=3.0)
    return out


def phase_pattern(
    hp: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], period: int
) -> npt.NDArray[np.float64]:
    """The p x p phase means (zero-mean) of a high-pass image over `mask`; zeros if a phase has no pixel."""
    h, w = hp.shape
    hh, ww = h // period * period, w // period * period
    vals = hp[:hh, :ww].reshape(hh // period, period, ww // period, period).astype(np.float64)
    m = mask[:hh, :ww].reshape(hh // period, period, ww // period, period)
    counts = m.sum(axis=(0, 2))
    if int(counts.min()) < 1:
        return np.zeros((period, period))
    means = np.where(m, vals, 0.0).sum(axis=(0, 2)) / counts
    out: npt.NDArray[np.float64] = means - means.mean()
    return out


def added_grid(
    hp_before: npt.NDArray[np.float32], hp_after: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]
) -> float:
    """The RMS of the phase pattern the enhancer added (periods 2 and 4, the larger), in image units.

    The change of pattern d = pattern(after) - pattern(before) is counted, except the part of it that only
    shrinks a pattern already in the input towards zero (a denoiser that attenuates a scanner's own grid has
    not added one).
    """
    worst = 0.0
    for p in GRID_PERIODS:
        pin, pout = phase_pattern(hp_before, mask, p), phase_pattern(hp_after, mask, p)
        d = pout - pin
        n2 = float(np.sum(pin * pin))
        if n2 > 0:
            c = float(np.sum(d * pin)) / n2
            if c < 0:
                d = d - max(c, -1.0) * pin
        worst = max(worst, float(np.sqrt(np.mean(d * d))))
    return worst


def slice_checks(
    before: npt.NDArray[np.floating],
    after: npt.NDArray[np.floating],
    *,
    sigma: float,
    group: str | None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> SliceChecks:
    """The checks of one enhanced slice against its input (same shape), in units of the noise `sigma`."""
    inp = np.asarray(before, dtype=np.float32)
    out = np.asarray(after, dtype=np.float32)
    if inp.shape != out.shape or inp.ndim != 2:
        raise ValueError(f"expected two 2-D slices of one shape, got {inp.shape} and {out.shape}")
    fg = foreground_mask(inp, group) if mask is None else mask
    n = int(np.count_nonzero(fg))
    if n < MIN_FOREGROUND_PIXELS or min(inp.shape) < 8:
        nan = float("nan")
        return SliceChecks(nan, nan, nan, nan, nan)
    s = max(float(sigma), 1e-6 * max(float(np.ptp(inp)), 1.0))
    diff = inp - out
    weight = fg.astype(np.float32)
    spread = ndimage.gaussian_filter(weight, LOWPASS_SIGMA_PX, mode="constant", truncate=3.0)
    low = ndimage.gaussian_filter(diff * weight, LOWPASS_SIGMA_PX, mode="constant", truncate=3.0)
    lowpass = float(np.std(low[fg] / np.maximum(spread[fg], 1e-6))) / s
    zero = CT_AIR_HU if group == "CT" else 0.0
    hp_in, hp_out = highpass(inp), highpass(out)
    smooth_in = inp - zero - hp_in  # Gaussian(1 px) of the input, from its high-pass
    smooth_out = out - zero - hp_out
    above = fg & (smooth_in > VOID_MIN_SIGMAS * s)
    m = int(np.count_nonzero(above))
    voids = float(np.count_nonzero(smooth_out[above] < 0.5 * smooth_in[above])) / m if m else 0.0
    flat = fg & (np.abs(hp_in) < GRID_FLAT_SIGMAS * s)
    grid = added_grid(hp_in, hp_out, flat) / s
    bias = float(np.mean(-diff[fg])) / s
    spread_in = float(np.std(hp_in[flat])) if np.count_nonzero(flat) >= MIN_FOREGROUND_PIXELS else 0.0
    gain = float(np.std(hp_out[flat])) / spread_in if spread_in > 0 else float("nan")
    return SliceChecks(lowpass, voids, grid, bias, gain)
