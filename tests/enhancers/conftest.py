"""Real images for the enhancers tests, read with pydicom, modality LUT (slope/intercept) applied here."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.realdata import testfile


def load_modality_values(name: str) -> tuple[np.ndarray, str, tuple[float, float]]:
    """(N, H, W) float32 modality values, the DICOM Modality, and the range the stored bits can hold."""
    ds = pydicom.dcmread(testfile(name))
    raw = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = raw * slope + intercept
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        stored = (0, 2**bits - 1)
    ends = sorted((stored[0] * slope + intercept, stored[1] * slope + intercept))
    if values.ndim == 2:
        values = values[None]
    return values.astype(np.float32), str(ds.Modality), (float(ends[0]), float(ends[1]))


@pytest.fixture(scope="session")
def ct_slice() -> tuple[np.ndarray, str, tuple[float, float]]:
    return load_modality_values("693_UNCR.dcm")


@pytest.fixture(scope="session")
def mr_slice() -> tuple[np.ndarray, str, tuple[float, float]]:
    return load_modality_values("MR_small.dcm")


@pytest.fixture(scope="session")
def cr_crop() -> tuple[np.ndarray, str, tuple[float, float]]:
    """A 600x700 crop of the RG1 chest radiograph (keeps tests fast while exercising tiling)."""
    values, modality, rng = load_modality_values("RG1_UNCR.dcm")
    return np.ascontiguousarray(values[:, 600:1200, 500:1200]), modality, rng
