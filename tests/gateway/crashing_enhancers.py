"""An enhancer that always raises, registered only by the tests (loaded through `[enhance] plugins`).

Why: the PHI test needs a real error path through the worker, with the received datasets in the frames of
the traceback it logs, to prove that a logged exception carries no patient data.
"""

from __future__ import annotations

from enhancers.base import ClassicalEnhancer, FloatArray
from enhancers.registry import EnhancerInfo, names, register

INFO = EnhancerInfo("test-crash", "0.0-test", "denoise", ("CT", "MR", "XR"), "classical", "", 0,
                    description="test only: raises on every image")


class Crash(ClassicalEnhancer):
    info = INFO

    def apply(self, image: FloatArray, sigma: float | None = None) -> FloatArray:
        raise RuntimeError("test-crash: this enhancer always fails (a stand-in for a bug)")


if INFO.name not in names():
    register(INFO, Crash)
