"""Every registered enhancer on real CT, MR and CR pixels through the pipeline: shape, dtype, range,
determinism; plus tiling and the normalisation round trip."""

from __future__ import annotations

import numpy as np
import pytest

from enhancers import registry
from enhancers.base import normalisation_for
from enhancers.metrics import psnr
from enhancers.pipeline import Pipeline, tile_spans

Image = tuple[np.ndarray, str, tuple[float, float]]


def _case(name: str, ct: Image, mr: Image, cr: Image) -> Image:
    meta = registry.info(name)
    if meta.modalities == ("XR",):
        return cr
    if "CT" in meta.modalities:
        values, modality, rng = ct
        if meta.kind == "model" and meta.task == "sr2x":
            values = values[:, 128:384, 128:384]  # the big SR models take seconds per full slice on CPU
        return values, modality, rng
    return mr


@pytest.mark.parametrize("name", registry.names())
def test_every_enhancer_runs_on_a_real_image(name: str, ct_slice: Image, mr_slice: Image, cr_crop: Image) -> None:
    values, modality, value_range = _case(name, ct_slice, mr_slice, cr_crop)
    pipe = Pipeline(name, device="cpu", batch_size=4, threads=1)
    assert pipe.device == "cpu"
    out = pipe.run(values, modality=modality, value_range=value_range)
    scale = registry.info(name).scale
    assert out.shape == (values.shape[0], values.shape[1] * scale, values.shape[2] * scale)
    assert out.dtype == np.float32
    assert out.min() >= value_range[0] and out.max() <= value_range[1]
    again = pipe.run(values, modality=modality, value_range=value_range)
    np.testing.assert_array_equal(out, again)
    if registry.info(name).task == "denoise" and registry.info(name).name != "clahe":
        # a denoiser on a clean clinical image must stay close to it (deblurring sharpens on purpose)
        lo, hi = (-1000.0, 3000.0) if modality != "CR" else value_range
        assert psnr(np.clip(values, lo, hi), np.clip(out, lo, hi), hi - lo) > 30.0


def test_single_slice_in_single_slice_out(mr_slice: Image) -> None:
    values, modality, value_range = mr_slice
    out = Pipeline("gaussian", device="cpu").run(values[0], modality=modality, value_range=value_range)
    assert out.shape == values[0].shape


def test_clipping_to_value_range(ct_slice: Image) -> None:
    values, modality, _ = ct_slice
    out = Pipeline("unsharp", device="cpu").run(values, modality=modality, value_range=(-1000.0, 1000.0))
    assert out.min() == -1000.0 and out.max() == 1000.0


def test_bad_inputs_are_refused(ct_slice: Image) -> None:
    values, modality, value_range = ct_slice
    pipe = Pipeline("gaussian", device="cpu")
    bad = values.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pipe.run(bad, modality=modality, value_range=value_range)
    with pytest.raises(ValueError, match="shape"):
        pipe.run(values[None], modality=modality, value_range=value_range)
    with pytest.raises(ValueError, match="value_range"):
        pipe.run(values, modality=modality, value_range=(10.0, -10.0))
    with pytest.raises(ValueError, match="batch_size"):
        Pipeline("gaussian", batch_size=0)
    with pytest.raises(KeyError, match="nlm"):
        Pipeline("no-such-enhancer")


@pytest.mark.parametrize(
    ("length", "tile", "halo"), [(100, 512, 16), (1841, 512, 32), (513, 512, 32), (600, 64, 8)]
)
def test_tile_spans_partition_the_axis(length: int, tile: int, halo: int) -> None:
    spans = tile_spans(length, tile, halo)
    assert spans[0][2] == 0 and spans[-1][3] == length
    for (s, e, ks, ke), nxt in zip(spans, spans[1:] + [None], strict=True):
        assert 0 <= s < e <= length and e - s == min(tile, length)
        assert s <= ks < ke <= e
        if nxt is not None:
            assert nxt[2] == ke
            assert ks == 0 or ks - s >= halo
            assert e - ke >= halo


@pytest.mark.parametrize("group", ["CT", "MR", "XR", None])
def test_normalisation_round_trip(group: str | None, ct_slice: Image) -> None:
    values, _, value_range = ct_slice
    norm = normalisation_for(group, values, value_range)
    back = norm.inverse(norm.forward(values))
    np.testing.assert_allclose(back, values, atol=1e-3 * max(1.0, norm.scale))


def test_model_tiling_matches_whole_image(cr_crop: Image) -> None:
    """A model run in overlapping tiles gives the same result as on the whole image (halo >= receptive field)."""
    models = [
        m.name for m in registry.infos() if m.kind == "model" and m.task == "denoise" and "XR" in m.modalities
    ]
    if not models:
        pytest.skip("no X-ray model shipped")
    name = min(models, key=lambda n: registry.info(n).params)
    values, modality, value_range = cr_crop
    whole = Pipeline(name, device="cpu", tile=1024).run(values, modality=modality, value_range=value_range)
    tiled = Pipeline(name, device="cpu", tile=160, batch_size=3).run(
        values, modality=modality, value_range=value_range
    )
    np.testing.assert_allclose(tiled, whole, atol=1e-3 * (value_range[1] - value_range[0]))


@pytest.mark.parametrize(("tile", "blend", "level"), [(1024, 1.0, None), (160, 0.4, 0.02), (256, 1.0, 0.01)])
def test_the_staged_cuda_path_equals_the_cpu_path(cr_crop: Image, tile: int, blend: float, level: float | None) -> None:
    """The CUDA bookkeeping (two buffer pairs, results drained one batch late, torch's float32 mapping) run on
    the CPU gives the CPU path's numbers (numpy's float32 mapping) bit for bit: tiles, blend, noise channel and
    a per-slice stored grid included. On a GPU only the module's own arithmetic differs (bench/cuda_check)."""
    from enhancers.pipeline import DeviceMapping, StoredGrid, _Staging, run_mapped

    values, _modality, value_range = cr_crop
    stack = np.concatenate([values, values[:, ::-1]])
    name = "ncdn-xr" if level is not None else "fastdn-xr"
    pipe = Pipeline(name, device="cpu")
    assert pipe._module is not None
    norm = normalisation_for("XR", stack, value_range)
    grid = StoredGrid((1.0, 2.0), (0.0, -10.0), (0.0, 0.0), (4095.0, 4095.0))
    mapping = DeviceMapping.of(norm, blend=blend, clip=value_range, grid=grid)
    kw = {"mapping": mapping, "scale": 1, "tile": tile, "halo": pipe._halo, "batch_size": 3, "device": "cpu",
          "level": level}
    direct = run_mapped(pipe._module, stack, **kw)  # type: ignore[arg-type]
    staging = _Staging("cpu")  # kept across calls, as a CUDA pipeline keeps its pinned buffers
    staged = run_mapped(pipe._module, stack, staged=True, staging=staging, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(staged, direct)
    one = StoredGrid((2.0,), (-10.0,), (0.0,), (4095.0,))  # a shorter last call reuses the larger buffers
    kw["mapping"] = DeviceMapping.of(norm, blend=blend, clip=value_range, grid=one)
    last = run_mapped(pipe._module, stack[1:], staged=True, staging=staging, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(last, direct[1:])


def test_one_staging_shared_by_two_threads_keeps_each_run_s_pixels() -> None:
    """A CUDA Pipeline keeps one set of pinned buffers; two threads calling `run` at once (the worker and the
    console, or a caller's thread pool) must not read each other's batches out of them."""
    import threading
    import time

    import torch

    from enhancers.pipeline import DeviceMapping, _Staging, run_mapped

    class SlowIdentity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)  # long enough for the other thread to refill the shared buffers
            return x * 1.0

    staging = _Staging("cpu")
    stacks = {k: np.full((6, 32, 32), float(k), dtype=np.float32) for k in (1, 2)}
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = run_mapped(SlowIdentity(), stacks[k], mapping=DeviceMapping(), scale=1, tile=64, halo=0,
                                batch_size=1, device="cpu", staging=staging, staged=True)

    threads = [threading.Thread(target=work, args=(k,)) for k in stacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for k, stack in stacks.items():
        np.testing.assert_array_equal(results[k], stack)


def test_batch_from_free_memory() -> None:
    """Half the free memory, at most the configured batch (or 64 when none is configured), never below one."""
    from enhancers.pipeline import CUDA_MAX_BATCH, batch_from_memory

    gib = 1 << 30
    assert batch_from_memory(80 * gib, 100 << 20, None) == CUDA_MAX_BATCH
    assert batch_from_memory(80 * gib, 100 << 20, 8) == 8
    assert batch_from_memory(2 * gib, 100 << 20, None) == 10
    assert batch_from_memory(10 << 20, 100 << 20, 8) == 1
