"""What an enhancer is, and how modality values are mapped to the numbers enhancers work on.

Why a separate normalisation step: DICOM pixels arrive in modality units (HU for CT, arbitrary units for MR,
stored values for X-ray) whose ranges differ by orders of magnitude between modalities and sites. Every
enhancer, classical or learned, works on a normalised float32 image and the pipeline maps the result back with
the exact inverse, so a model trained on one CT scanner's HU sees the same numbers on another's, and an
identity enhancer returns the input unchanged (up to float32 rounding and the final clip).

Normalisations (all linear, never clipped on the way in, so the mapping back is exact):

- CT: a fixed HU window, x = (HU + 1000) / 2000: air -> 0, water -> 0.5, +1000 HU -> 1. Fixed, not data
  dependent, so the model sees the same physical scale on every series.
- MR: per series (the whole stack given to one `Pipeline.run` call), x = (v - p0.5) / (p99.5 - p0.5) with
  p0.5 replaced by 0 when it is positive (MR magnitude is non-negative and the background is its zero).
  MR intensity has no physical unit, so only a robust, data-driven scale makes series comparable.
- XR: the stored-value range the caller passes as `value_range`, x = (v - lo) / (hi - lo). Projection images
  use their stored bits, and the Poisson-Gaussian noise model is defined on that scale.
- anything else: like XR, the given `value_range`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from enhancers.registry import EnhancerInfo

if TYPE_CHECKING:
    import torch

FloatArray = npt.NDArray[np.float32]

CT_OFFSET_HU = -1000.0
CT_SCALE_HU = 2000.0
MR_LOW_PERCENTILE = 0.5
MR_HIGH_PERCENTILE = 99.5


@dataclass(frozen=True)
class Normalisation:
    """A linear map x = (v - offset) / scale, and its exact inverse."""

    offset: float
    scale: float
    rule: str

    def forward(self, values: npt.NDArray[np.floating]) -> FloatArray:
        """Modality values -> normalised float32."""
        return ((np.asarray(values, dtype=np.float64) - self.offset) / self.scale).astype(np.float32)

    def inverse(self, normalised: npt.NDArray[np.floating]) -> FloatArray:
        """Normalised values -> modality values (float32)."""
        return (np.asarray(normalised, dtype=np.float64) * self.scale + self.offset).astype(np.float32)


def normalisation_for(
    group: str | None, slices: npt.NDArray[np.floating], value_range: tuple[float, float]
) -> Normalisation:
    """The normalisation for a modality group ("CT", "MR", "XR" or None) and a stack of slices."""
    lo, hi = float(value_range[0]), float(value_range[1])
    if group == "CT":
        return Normalisation(CT_OFFSET_HU, CT_SCALE_HU, "CT: (HU + 1000) / 2000")
    if group == "MR":
        finite = np.asarray(slices, dtype=np.float64)
        p_lo, p_hi = np.percentile(finite, [MR_LOW_PERCENTILE, MR_HIGH_PERCENTILE])
        offset = min(float(p_lo), 0.0)
        scale = float(p_hi) - offset
        if not np.isfinite(scale) or scale <= 1e-6:
            scale = max(float(np.max(finite)) - offset, 1.0)
        return Normalisation(offset, scale, "MR: (v - min(p0.5, 0)) / (p99.5 - that), per series")
    scale = hi - lo if hi > lo else 1.0
    return Normalisation(lo, scale, f"{group or 'other'}: (v - lo) / (hi - lo) of value_range")


class Enhancer(ABC):
    """Base class of every registered enhancer. `info` describes it; subclasses say how to run it."""

    info: EnhancerInfo


class ClassicalEnhancer(Enhancer):
    """A filter applied slice by slice in numpy to a normalised float32 image."""

    @abstractmethod
    def apply(self, image: FloatArray, sigma: float | None = None) -> FloatArray:
        """One normalised slice (H, W) -> enhanced slice (H, W), or (2H, 2W) for `sr2x`.

        `sigma`: the series' noise std in normalised units (`enhancers.noise`), for filters whose strength
        depends on it; None when the caller has no estimate (such a filter then estimates on the slice).
        """


class ModelEnhancer(Enhancer):
    """A torch module mapping normalised (B, 1, H, W) to (B, 1, H', W'), with weights already verified."""

    module: torch.nn.Module
    #: How many pixels at a tile border are unreliable (at least the receptive-field radius), in input
    #: pixels; the pipeline overlaps tiles by twice this and keeps only the reliable centre of each tile.
    halo: int = 32
    #: True for a noise-conditioned network: the pipeline feeds it the series' noise level as a second channel.
    conditioned: bool = False
