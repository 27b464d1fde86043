"""Identity enhancement through `Pipeline.run` gives back every stored value bit for bit, on every real file of
the corpus.

Why: the pipeline maps in float32 on the device since issue 19 (see `enhancers.pipeline`'s docstring for the
bound); a derived series must still hold exactly the received integers wherever the enhancer changed nothing.
Each DICOM file of the corpus manifest (the included sources and the other encodings it lists as excluded) is
decoded and encoded with the worker's own code (`dicom_utils.pixels`), once with the rounding left to
`to_stored` and once with the rounding on the device (`StoredGrid`). The non-DICOM sources (NIfTI, InVesalius,
NumPy) have no stored integers: they are held to the documented float32 bound instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import pytest
import torch

from dicom_utils.classify import skip_reason
from dicom_utils.pixels import (
    frame_rescale,
    modality_frames,
    stored_frames,
    stored_range,
    to_stored,
    value_range,
)
from enhancers import registry
from enhancers.base import normalisation_for
from enhancers.corpus import CorpusError, load_source, read_manifest, resolve
from enhancers.noise import NoiseEstimate
from enhancers.pipeline import Pipeline, StoredGrid

SOURCES = read_manifest()
DICOM = [s for s in SOURCES if s["kind"] == "dicom"]
OTHER = [s for s in SOURCES if s["kind"] != "dicom" and s["included"]]
QUIET = NoiseEstimate(1.0, 1, "fixed for the test")  # an identity model ignores it; skips the estimate


class _Identity(torch.nn.Module):
    """Returns its first channel (the image; a conditioned model's second channel is the noise map)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, :1]


def identity_pipeline(modality: str) -> Pipeline:
    """The modality's default denoiser's pipeline (its normalisation, conditioning, tiling), module replaced."""
    pipe = Pipeline(registry.default_enhancer(modality, "denoise"), device="cpu", batch_size=4)
    pipe._module = _Identity()  # the pipeline's own device path around a module that changes nothing
    return pipe


def _path(entry: dict[str, Any]) -> Any:
    try:
        return resolve(entry["kind"], entry["file"])
    except CorpusError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("entry", DICOM, ids=[s["id"] for s in DICOM])
def test_identity_gives_back_every_stored_value(entry: dict[str, Any]) -> None:
    ds = pydicom.dcmread(_path(entry))
    reason = skip_reason(ds)
    if reason is not None:
        pytest.skip(reason)
    stored, values, vrange = stored_frames(ds), modality_frames(ds), value_range(ds)
    modality = str(ds.Modality)
    pipe = identity_pipeline(modality)
    out = pipe.run(values, modality=modality, value_range=vrange, noise=QUIET)
    np.testing.assert_array_equal(to_stored(ds, out), stored)
    rescale = frame_rescale(ds)
    low, high = stored_range(ds)
    grid = StoredGrid(
        tuple(m for m, _ in rescale), tuple(b for _, b in rescale), (float(low),) * len(rescale), (float(high),) * len(rescale)
    )
    snapped = pipe.run(values, modality=modality, value_range=vrange, noise=QUIET, stored=grid)
    np.testing.assert_array_equal(to_stored(ds, snapped), stored)
    # on the grid: the values the derived object will hold, as decoding it would give them (float32 rounding)
    np.testing.assert_allclose(snapped, values, rtol=4e-7, atol=0)


@pytest.mark.parametrize("entry", OTHER, ids=[s["id"] for s in OTHER])
def test_identity_stays_within_the_float32_bound(entry: dict[str, Any]) -> None:
    _path(entry)
    stack = np.stack([s.pixels for s in load_source(entry, verify=False)])
    group = entry["group"]
    vrange = (float(stack.min()), float(stack.max())) if group != "CT" else (-1024.0, 3071.0)
    out = identity_pipeline(group).run(stack, modality=group, value_range=vrange, noise=QUIET)
    norm = normalisation_for(group, stack, vrange)
    bound = 5 * 2.0**-24 * (np.abs(stack) + abs(norm.offset))  # enhancers.pipeline: about 5u(|v| + |offset|)
    assert np.all(np.abs(out.astype(np.float64) - stack) <= bound + 1e-30)
    if np.array_equal(stack, np.rint(stack)):  # integer-valued sources (int16 HU, uint8 T1) round back exactly
        np.testing.assert_array_equal(np.rint(out), stack)


def test_strength_zero_of_a_real_model_is_bit_exact() -> None:
    """strength 0 blends nothing in: the received integers, whatever the model computed."""
    entry = next(s for s in DICOM if s["id"] == "ct-693")
    ds = pydicom.dcmread(_path(entry))
    pipe = Pipeline(registry.default_enhancer("CT", "denoise"), device="cpu")
    out = pipe.run(modality_frames(ds), modality="CT", value_range=value_range(ds), strength=0.0)
    np.testing.assert_array_equal(to_stored(ds, out), stored_frames(ds))


def test_a_per_slice_grid_rounds_each_slice_on_its_own_grid() -> None:
    """A batch may mix instances with different rescales (the worker batches by shape, not by header)."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(3, 40, 40)).astype(np.float64)
    slopes, intercepts = (1.0, 0.5, 2.5), (-1024.0, -1000.0, 7.0)
    values = np.stack([stored[i] * slopes[i] + intercepts[i] for i in range(3)]).astype(np.float32)
    grid = StoredGrid(slopes, intercepts, (0.0, 0.0, 0.0), (4095.0, 4095.0, 4095.0))
    jitter = values + np.float32(0.2) * np.array(slopes, dtype=np.float32)[:, None, None]  # 0.2 stored steps off
    out = identity_pipeline("CT").run(jitter, modality="CT", value_range=(-5000.0, 20000.0), noise=QUIET, stored=grid)
    back = np.stack([(out[i] - intercepts[i]) / slopes[i] for i in range(3)])
    np.testing.assert_array_equal(back, stored)
    with pytest.raises(ValueError, match="stored has 1"):
        identity_pipeline("CT").run(values, modality="CT", value_range=(-5000.0, 20000.0), noise=QUIET,
                                    stored=StoredGrid.uniform(1, 1.0, 0.0, 0, 10))
