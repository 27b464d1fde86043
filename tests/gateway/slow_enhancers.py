"""An enhancer that takes its time (identity after a pause), registered only by the tests (`[enhance] plugins`).

Why: the scale-out test must kill a worker while it is in the middle of a job; a real model on 64x64 test
slices finishes before the test can look. The pause per image makes "mid-job" last long enough to observe.
"""

from __future__ import annotations

import time

from enhancers.base import ClassicalEnhancer, FloatArray
from enhancers.registry import EnhancerInfo, names, register

PAUSE_SECONDS = 1.0

INFO = EnhancerInfo("test-slow", "0.0-test", "denoise", ("CT", "MR", "XR"), "classical", "", 0,
                    description="test only: returns the image unchanged after a pause")


class Slow(ClassicalEnhancer):
    info = INFO

    def apply(self, image: FloatArray, sigma: float | None = None) -> FloatArray:
        time.sleep(PAUSE_SECONDS)
        return image.copy()


if INFO.name not in names():
    register(INFO, Slow)
