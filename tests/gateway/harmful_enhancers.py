"""A deliberately harmful enhancer, registered only by the tests (loaded through `[enhance] plugins`).

Why a real one and not a mock: the QA gate must stop what a broken model would do on real images. `test-harm`
blurs heavily (Gaussian, 3 px) and pushes the darker half of the anatomy to the bottom of the range: anatomy
removed (low-pass residual), signal voids and a shift of tissue values, all at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from enhancers.base import ClassicalEnhancer, FloatArray
from enhancers.registry import EnhancerInfo, names, register

INFO = EnhancerInfo("test-harm", "0.0-test", "denoise", ("CT", "MR", "XR"), "classical", "", 0,
                    description="test only: heavy blur and voids")


class Harm(ClassicalEnhancer):
    info = INFO

    def apply(self, image: FloatArray, sigma: float | None = None) -> FloatArray:
        blurred = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), 3.0)
        cut = float(np.percentile(blurred, 60))
        out = np.where(blurred < cut, np.float32(0.0), blurred)
        return np.asarray(out, dtype=np.float32)


if INFO.name not in names():
    register(INFO, Harm)
