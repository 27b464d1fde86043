"""The inference path the gateway's worker calls: modality values in, enhanced modality values out.

Why it is one class: the worker must not know whether an enhancer is a scikit-image filter or a CNN, on CPU
or GPU, nor how each model normalises intensities. `Pipeline(name).run(slices, modality=..., value_range=...)`
hides all of it: normalisation and its inverse (`enhancers.base`), batching, device choice, autocast on
CUDA, `torch.inference_mode()`, and tiling with overlap so a 4k x 4k radiograph never needs more memory than a
`tile` x `tile` batch. Results are deterministic: eval mode, no dropout, fixed tile layout, and cuDNN's
non-deterministic algorithms disabled on CUDA.

Why the mapping runs on the device, in float32 (issue 19): on a GPU the float64 normalisation and inverse on
the host, the stacking of tiles and pageable copies took ~245 ms per 64 slices, so a model that runs 10,000
slices/s alone ran 250 through the pipeline. Now each batch goes to the device as received modality values
and comes back finished: normalised, enhanced, blended (`strength`), mapped back, clipped and, when the caller
passes a `StoredGrid`, rounded to the stored integers the derived object will hold. On CUDA the host buffers
are pinned, copies are non-blocking on their own streams, and the upload of one batch, the compute of the
next and the download of the one before overlap. On CPU the same float32 operations run as numpy ufuncs
(`DeviceMapping.normalise_np` / `finish_np`: torch's threaded elementwise kernels were slower on a loaded
host), in place, writing straight into the output: no extra copy, no float64 pass. On CUDA torch divides by a
scalar as a multiplication by its float32 reciprocal, so the device mapping may differ from the CPU's in the
last bit before rounding to stored values (after it only where a value lies half-way between two of them).

Exactness trade-off. The old path mapped in float64 but already stored the normalised image in float32, so an
identity enhancement came back within about 2u(|v| + |offset|) of each value v (u = 2^-24, float32's unit
roundoff). The float32 path rounds three more times (v - offset, x * scale, + offset): within about
5u(|v| + |offset|). Rounding to stored values stays exact while that is below half a stored step (Rescale
Slope), i.e. while |v| / slope and |offset| / slope stay below about 2^20 (~1,000,000 stored units): every
8- and 16-bit image, which is every real file of the corpus (`tests/enhancers/test_exactness.py` checks all of
them bit for bit). Only 32-bit stored data beyond 2^20 could move by one stored unit; float32 modality values
(`dicom_utils.pixels.modality_frames`) already lose exactness beyond 2^24 there.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from enhancers import registry
from enhancers.base import ClassicalEnhancer, FloatArray, ModelEnhancer, Normalisation, normalisation_for
from enhancers.models.arch import NOISE_LEVEL_GAIN
from enhancers.noise import NoiseEstimate, estimate_noise
from enhancers.registry import EnhancerInfo

#: The range of a route's `strength`: 0 leaves the image as received, 1 removes the estimated noise, 2 acts
#: as if there were twice as much (smoother; see `Pipeline.run`). Beyond 2 a conditioned model is far outside
#: what it was trained on.
STRENGTH_RANGE: tuple[float, float] = (0.0, 2.0)

#: Share of the free GPU memory a batch may take when its size is chosen from it (the rest stays for cuDNN's
#: workspaces, the allocator's fragmentation and whatever else shares the GPU).
CUDA_FREE_SHARE = 0.5
#: Most tiles per forward pass when the batch is chosen from free memory: beyond this a batch is no faster
#: (bench/README: batch 32 ran no faster than 8) and only delays the first result.
CUDA_MAX_BATCH = 64


@dataclass(frozen=True)
class StoredGrid:
    """The stored integers a derived object holds, per slice: value = stored * slope + intercept, stored in
    [low, high] (Rescale Slope/Intercept, Bits Stored and Pixel Representation of each slice's instance).

    Why the pipeline knows it: rounding to stored values is then part of the device-side mapping, so the
    values the worker's metrics and QA gate judge are the pixels that will be delivered, and
    `dicom_utils.pixels.to_stored` only recovers the integers. `enhancers` never imports `dicom_utils`: the
    worker builds this from the header (see `gateway/enhance/worker.py`).
    """

    slope: tuple[float, ...]
    intercept: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.slope)
        if not (len(self.intercept) == len(self.low) == len(self.high) == n) or n == 0:
            raise ValueError("StoredGrid needs one slope, intercept, low and high per slice")
        if any(m == 0.0 or not np.isfinite(m) for m in self.slope):
            raise ValueError(f"StoredGrid slopes must be finite and non-zero, got {self.slope!r}")

    @classmethod
    def uniform(cls, count: int, slope: float, intercept: float, low: float, high: float) -> StoredGrid:
        """The same grid for `count` slices."""
        return cls((slope,) * count, (intercept,) * count, (low,) * count, (high,) * count)

    @property
    def is_uniform(self) -> bool:
        return all(len(set(v)) == 1 for v in (self.slope, self.intercept, self.low, self.high))


@dataclass(frozen=True)
class DeviceMapping:
    """What happens to each batch on the device around the module, all in float32.

    In: x = (v - offset) / scale. Out: y = x + blend * (y - x) when blend != 1 (same-size tasks only), then
    v' = y * scale + offset, clipped to `clip`, then snapped to `grid` when given. offset 0 / scale 1 / no clip
    leaves the numbers as they are (`run_module`: normalised in, normalised out).
    """

    offset: float = 0.0
    scale: float = 1.0
    blend: float = 1.0
    clip: tuple[float, float] | None = None
    grid: StoredGrid | None = None

    @classmethod
    def of(
        cls,
        norm: Normalisation,
        *,
        blend: float = 1.0,
        clip: tuple[float, float] | None = None,
        grid: StoredGrid | None = None,
    ) -> DeviceMapping:
        return cls(norm.offset, norm.scale, blend, clip, grid)

    @property
    def is_identity(self) -> bool:
        return self.offset == 0.0 and self.scale == 1.0

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """Modality values -> normalised float32 (a new tensor: `values` may be the caller's array)."""
        if self.is_identity:
            return values.to(torch.float32, copy=True)
        return torch.sub(values, self.offset).div_(self.scale)

    def finish(
        self,
        pred: torch.Tensor,
        x: torch.Tensor | None,
        rows: Sequence[int],
    ) -> torch.Tensor:
        """Normalised module output (B, H', W') -> mapped values (overwrites `pred`).

        `x`: the normalised input (B, H, W), needed only when blending. `rows`: each batch row's slice index
        (for a per-slice `grid`).
        """
        y = pred
        if self.blend != 1.0 and x is not None and x.shape == y.shape:
            y = torch.sub(y, x).mul_(self.blend).add_(x)  # x + blend * (y - x), as the float32 path always did
        if not self.is_identity:
            y = y.mul_(self.scale).add_(self.offset)
        if self.clip is not None:
            y = y.clamp_(self.clip[0], self.clip[1])
        if self.grid is not None:
            y = self._snap(y, rows)
        return y

    def _snap(self, y: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Round to the stored grid: rint((v - b) / m) clamped to [low, high], back to m * s + b."""
        grid = self.grid
        assert grid is not None
        if grid.is_uniform:
            m, b, lo, hi = grid.slope[0], grid.intercept[0], grid.low[0], grid.high[0]
            q = y.sub_(b).div_(m).round_().clamp_(lo, hi)
            return q.mul_(m).add_(b)

        def column(values: tuple[float, ...]) -> torch.Tensor:
            picked = [values[r] for r in rows]
            return torch.tensor(picked, dtype=torch.float32).view(-1, 1, 1).to(y.device, non_blocking=True)

        m_t, b_t = column(grid.slope), column(grid.intercept)
        q = y.sub_(b_t).div_(m_t).round_()
        q = torch.maximum(torch.minimum(q, column(grid.high)), column(grid.low))
        return q.mul_(m_t).add_(b_t)


    # The same mapping in numpy, for the CPU: single-threaded float32 ufuncs writing in place into buffers the
    # caller keeps. Why not torch there: torch's elementwise kernels split each pass across its threads, which
    # on a loaded 2-core machine (a worker's decode and derive threads beside it) waited for a descheduled
    # thread and took ~15x longer than numpy's (bench/pipeline_host.py); allocating a fresh output per pass
    # also page-faults. Same operations in the same order, so the results equal the torch path's bit for bit
    # (tests/enhancers/test_exactness.py runs both).

    def normalise_np(self, values: FloatArray, out: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Modality values -> normalised float32 written into `out` (any strides)."""
        if self.is_identity:
            np.copyto(out, values)
            return out
        np.subtract(values, np.float32(self.offset), out=out)
        np.divide(out, np.float32(self.scale), out=out)
        return out

    def finish_np(
        self,
        pred: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32] | None,
        rows: Sequence[int],
        out: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        """`finish` in numpy: the module's normalised output -> mapped values in `out` (`pred` is overwritten)."""
        y = pred
        if self.blend != 1.0 and x is not None and x.shape == y.shape:
            np.subtract(y, x, out=y)
            np.multiply(y, np.float32(self.blend), out=y)
            np.add(y, x, out=y)
        if self.is_identity:
            np.copyto(out, y)
        else:
            np.multiply(y, np.float32(self.scale), out=out)
            np.add(out, np.float32(self.offset), out=out)
        if self.clip is not None:
            np.clip(out, np.float32(self.clip[0]), np.float32(self.clip[1]), out=out)
        grid = self.grid
        if grid is not None:
            picked = [[v[0]] if grid.is_uniform else [v[r] for r in rows] for v in (grid.slope, grid.intercept,
                                                                                     grid.low, grid.high)]
            m, b, lo, hi = (np.array(p, dtype=np.float32)[:, None, None] for p in picked)  # broadcast per slice
            np.subtract(out, b, out=out)
            np.divide(out, m, out=out)
            np.rint(out, out=out)
            np.clip(out, lo, hi, out=out)
            np.multiply(out, m, out=out)
            np.add(out, b, out=out)
        return out


def batch_from_memory(free_bytes: int, per_tile_bytes: int, requested: int | None) -> int:
    """Tiles per forward pass that fit `CUDA_FREE_SHARE` of `free_bytes`: at most `requested` (the configured
    batch) or, when None, at most `CUDA_MAX_BATCH`; never below 1 (a single tile that does not fit is the
    caller's `tile` setting to lower, and CUDA's out-of-memory error says so)."""
    fit = int(CUDA_FREE_SHARE * max(free_bytes, 0)) // max(per_tile_bytes, 1)
    ceiling = CUDA_MAX_BATCH if requested is None else requested
    return max(1, min(ceiling, fit))


def cuda_tile_bytes(module: torch.nn.Module, *, channels: int, height: int, width: int, scale: int, device: str) -> int:
    """Peak GPU memory one tile takes through `module` under the pipeline's autocast, plus its buffers.

    Measured, not guessed: one zero tile runs with the allocator's peak counter reset. The buffers are the
    float32 input, the mapped output and the blend's temporary.
    """
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        probe = torch.zeros((1, channels, height, width), device=dev).contiguous(memory_format=torch.channels_last)
        module(probe)
    torch.cuda.synchronize(dev)
    peak = int(torch.cuda.max_memory_allocated(dev)) - int(base)
    return max(peak, 1) + 4 * height * width * (channels + 3 * scale * scale)


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda" without a GPU is an error."""
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but no CUDA GPU is available; use device='cpu' or 'auto'"
            )
        return wanted
    if wanted == "cpu":
        return "cpu"
    raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")


def tile_spans(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Cover [0, length) with windows of `tile` pixels: (start, stop, keep_start, keep_stop) per window.

    Consecutive windows overlap by at least 2 * `halo`, and each keeps only pixels at least `halo` away from
    its inner borders, so with a network whose receptive-field radius is <= halo the stitched result equals
    running on the whole image. The kept ranges partition [0, length) exactly.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    if tile <= 2 * halo:
        raise ValueError(f"tile {tile} must be larger than twice the halo {halo}")
    step = tile - 2 * halo
    starts: list[int] = []
    s = 0
    while s + tile < length:
        starts.append(s)
        s += step
    starts.append(length - tile)
    spans: list[tuple[int, int, int, int]] = []
    keep_start = 0
    for i, start in enumerate(starts):
        keep_stop = length if i == len(starts) - 1 else start + tile - halo
        spans.append((start, start + tile, keep_start, keep_stop))
        keep_start = keep_stop
    return spans


class Pipeline:
    """Run the registered enhancer `name` on stacks of 2-D slices.

    `device`: "auto" (CUDA when available), "cpu" or "cuda[:N]". `batch_size`: tiles per forward pass; on CUDA
    at most what fits in half the free GPU memory (measured once per tile size), and None there means "as
    many as fit", up to `CUDA_MAX_BATCH` (8 on CPU). `tile`: the largest tile side in input pixels; larger
    slices are split with overlap. `threads`: CPU threads for torch and for classical filters (None keeps
    torch's setting and runs filters in one thread).
    """

    def __init__(
        self,
        name: str,
        *,
        device: str = "auto",
        batch_size: int | None = 8,
        tile: int = 512,
        threads: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None: from free GPU memory), got {batch_size}")
        if tile < 32:
            raise ValueError(f"tile must be >= 32 pixels, got {tile}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.info: EnhancerInfo = registry.info(name)
        self.device: str = resolve_device(device)
        self.batch_size = batch_size
        self.tile = tile
        self.threads = threads
        if threads is not None:
            torch.set_num_threads(threads)
        self._enhancer = registry.create(name)
        self._module: torch.nn.Module | None = None
        self._halo = 0
        self.conditioned = False
        self._staging: _Staging | None = None
        self._cuda_batches: dict[tuple[int, int, int], int] = {}
        if isinstance(self._enhancer, ModelEnhancer):
            if self.device.startswith("cuda"):
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
                self._staging = _Staging(self.device)
            # channels-last lets oneDNN (CPU) and cuDNN pick their fast convolution kernels: 1.5x for fastdn and
            # fastsr, 2.8x for srcnn on a 2-core CPU (bench/enhancers_speed.py), same results within float rounding
            module = self._enhancer.module.to(self.device).eval()
            self._module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._halo = self._enhancer.halo
            self.conditioned = self._enhancer.conditioned
        elif not isinstance(self._enhancer, ClassicalEnhancer):
            raise TypeError(f"enhancer {name!r} is neither a classical filter nor a model")

    def __repr__(self) -> str:
        return f"Pipeline({self.info.name!r}, device={self.device!r}, batch_size={self.batch_size}, tile={self.tile})"

    def run(
        self,
        slices: npt.NDArray[np.floating],
        *,
        modality: str,
        value_range: tuple[float, float],
        noise: NoiseEstimate | None = None,
        strength: float = 1.0,
        stored: StoredGrid | None = None,
    ) -> FloatArray:
        """float32 (N, H, W) modality values -> float32 (N, H', W') modality values, clipped to value_range.

        H' = sH and W' = sW for a task of scale s (2 for `sr2x`, 4 for `sr4x`), else H and W. A single (H, W)
        slice is accepted and returned as such.
        `modality` is the DICOM Modality (CT, MR, CR, DX, ...); a model not trained for it is refused.
        `noise`: the series' noise (`enhancers.noise.estimate_noise` over the whole series, which the worker
        computes once); None estimates it from `slices`. Conditioned models and `nlm` use it. `strength` (see
        `STRENGTH_RANGE`): up to 1 the output is blended, input + strength * (output - input), so 0 is the
        received image (up to float rounding, which rounding to stored values removes) and every value in
        between is a convex mix (no new structure); above 1 a conditioned model is told the noise is
        `strength` times the estimate (FFDNet's use of its noise map: smoother), and any other enhancer's
        correction is extrapolated. Above 1 the network works outside the
        levels it was trained on for noisy series: the QA gate is what catches a strength set too high.
        sr2x ignores it. `stored`: the stored grid of each slice (one entry per slice); the output is then
        rounded onto it (on the device), i.e. it holds exactly the values the derived object will store.
        """
        arr = np.asarray(slices)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] < 2 or arr.shape[2] < 2:
            raise ValueError(
                f"slices must be (N, H, W) with N >= 1 and H, W >= 2; got shape {np.shape(slices)}"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        # one read of the data (a sum) instead of a boolean array; a non-finite sum is checked element-wise,
        # so a stack whose finite values overflow the float32 sum is not refused by mistake
        if not np.isfinite(arr.sum()) and not np.all(np.isfinite(arr)):
            raise ValueError(
                "slices contain NaN or infinite values; decode the pixels with the modality LUT first"
            )
        lo, hi = float(value_range[0]), float(value_range[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(f"value_range must be finite (low, high) with low <= high; got {value_range!r}")
        if not (STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]):
            raise ValueError(f"strength must be within {STRENGTH_RANGE}, got {strength!r}")
        if stored is not None and len(stored.slope) != arr.shape[0]:
            raise ValueError(f"stored has {len(stored.slope)} slice(s) but slices has {arr.shape[0]}")
        group = registry.modality_group(modality)
        if self.info.kind == "model" and group not in self.info.modalities:
            raise ValueError(
                f"enhancer {self.info.name!r} is trained for {', '.join(self.info.modalities)}, not for modality "
                f"{modality!r}; route it to {registry.default_enhancer(modality, self.info.task)!r} instead"
            )
        norm = normalisation_for(group, arr, (lo, hi))
        blend = 1.0 if self.conditioned and strength >= 1.0 else strength  # a conditioned model used the level
        mapping = DeviceMapping.of(norm, blend=blend if self.info.scale == 1 else 1.0, clip=(lo, hi), grid=stored)
        if isinstance(self._enhancer, ClassicalEnhancer):
            sigma = (noise or estimate_noise(arr, group)).sigma / norm.scale
            out = self._run_classical(self._enhancer, arr, mapping, sigma if sigma > 0 else None)
        elif self.conditioned:
            sigma = (noise or estimate_noise(arr, group)).sigma
            out = self._run_model(arr, mapping, level=max(strength, 1.0) * sigma / norm.scale)
        else:
            out = self._run_model(arr, mapping)
        return out[0] if squeeze else out

    def _run_classical(
        self, enhancer: ClassicalEnhancer, arr: FloatArray, mapping: DeviceMapping, sigma: float | None
    ) -> FloatArray:
        """Filters run in numpy on the CPU; the mapping around them is the same float32 one as the models'."""
        x = mapping.normalise_np(arr, np.empty_like(arr))
        workers = min(self.threads or 1, x.shape[0])
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outs = list(pool.map(lambda s: enhancer.apply(s, sigma), list(x)))
        else:
            outs = [enhancer.apply(s, sigma) for s in x]
        y = np.stack(outs).astype(np.float32, copy=False)
        return mapping.finish_np(y, x, range(arr.shape[0]), np.empty_like(y))

    def _run_model(self, arr: FloatArray, mapping: DeviceMapping, level: float | None = None) -> FloatArray:
        assert self._module is not None
        batch = self.batch_size or 8
        if self.device.startswith("cuda"):
            batch = self._cuda_batch(arr.shape[1:], channels=2 if level is not None else 1)
        return run_mapped(
            self._module,
            arr,
            mapping=mapping,
            scale=self.info.scale,
            tile=self.tile,
            halo=self._halo,
            batch_size=batch,
            device=self.device,
            level=level,
            staging=self._staging,
        )

    def _cuda_batch(self, shape: tuple[int, ...], *, channels: int) -> int:
        """The batch for tiles of this stack on CUDA: the configured one, capped by free memory (cached)."""
        assert self._module is not None
        th, tw = min(int(shape[0]), self.tile), min(int(shape[1]), self.tile)
        key = (th, tw, channels)
        if key not in self._cuda_batches:
            per_tile = cuda_tile_bytes(
                self._module, channels=channels, height=th, width=tw, scale=self.info.scale, device=self.device
            )
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            self._cuda_batches[key] = batch_from_memory(int(free), per_tile, self.batch_size)
        return self._cuda_batches[key]


def run_module(
    module: torch.nn.Module,
    x: FloatArray,
    *,
    scale: int,
    tile: int,
    halo: int,
    batch_size: int,
    device: str,
    level: float | None = None,
) -> FloatArray:
    """Run `module` (eval mode, on `device`) on normalised slices (N, H, W) with tiling and batching.

    Tiles of at most `tile` x `tile` input pixels overlap by 2 * `halo`; only their reliable centres are kept
    (see `tile_spans`). All tiles of a stack have one size, so any slices and tiles can share a batch.
    `level`: for a noise-conditioned module, the normalised noise sigma, given as a constant second channel
    (times `NOISE_LEVEL_GAIN`). Normalised in, normalised out: `run_mapped` with the identity mapping.
    """
    return run_mapped(
        module,
        np.ascontiguousarray(x, dtype=np.float32),
        mapping=DeviceMapping(),
        scale=scale,
        tile=tile,
        halo=halo,
        batch_size=batch_size,
        device=device,
        level=level,
    )


_Job = tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]


class _Staging:
    """Host buffers and streams for one device, kept across runs (allocating pinned memory costs milliseconds).

    On CUDA: two pinned input and two pinned output buffers (batch k uses pair k % 2, so the host fills one
    while the other is in flight), an upload stream and a download stream beside the compute stream. On CPU
    (used by the tests, to run this bookkeeping without a GPU): plain buffers, no streams, no events.
    `lock`: held for a whole staged run, because a Pipeline (and its staging) may be called from several
    threads and the buffers hold one run's batches until they are drained.
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.lock = threading.Lock()
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        # torch's CUDA stream and event constructors are untyped; mypy --strict needs the ignores
        self.upload: torch.cuda.Stream | None = (
            torch.cuda.Stream(self.device) if self.cuda else None  # type: ignore[no-untyped-call]
        )
        self.download: torch.cuda.Stream | None = (
            torch.cuda.Stream(self.device) if self.cuda else None  # type: ignore[no-untyped-call]
        )

    def buffers(self, batch: int, tile: tuple[int, int], out_tile: tuple[int, int]) -> None:
        """Make sure both buffer pairs hold at least `batch` tiles of these sizes (kept when larger, so a
        series' short last call does not reallocate pinned memory)."""

        def fits(bufs: list[torch.Tensor], shape: tuple[int, int, int]) -> bool:
            return len(bufs) == 2 and all(b.shape[0] >= shape[0] and tuple(b.shape[1:]) == shape[1:] for b in bufs)

        shape_in, shape_out = (batch, *tile), (batch, *out_tile)
        if not fits(self._inputs, shape_in):
            self._inputs = [torch.empty(shape_in, dtype=torch.float32, pin_memory=self.cuda) for _ in range(2)]
        if not fits(self._outputs, shape_out):
            self._outputs = [torch.empty(shape_out, dtype=torch.float32, pin_memory=self.cuda) for _ in range(2)]

    def input(self, slot: int) -> torch.Tensor:
        return self._inputs[slot]

    def output(self, slot: int) -> torch.Tensor:
        return self._outputs[slot]

    def on(self, stream: torch.cuda.Stream | None) -> AbstractContextManager[object]:
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def event(self, stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        """An event recorded on `stream` now (None on CPU, where every operation has finished on return)."""
        if stream is None:
            return None
        ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
        ev.record(stream)
        return ev

    def compute_stream(self) -> torch.cuda.Stream | None:
        return torch.cuda.current_stream(self.device) if self.cuda else None


def _batches(n: int, h: int, w: int, tile: int, halo: int, batch_size: int) -> tuple[bool, list[list[_Job]]]:
    """(whether every tile is a whole slice, the batches of (slice, y span, x span) jobs)."""
    ys = tile_spans(h, tile, halo)
    xs = tile_spans(w, tile, halo)
    jobs = [(i, ty, tx) for i in range(n) for ty in ys for tx in xs]
    whole = len(ys) == 1 and len(xs) == 1
    return whole, [jobs[b : b + batch_size] for b in range(0, len(jobs), batch_size)]


def run_mapped(
    module: torch.nn.Module,
    values: FloatArray,
    *,
    mapping: DeviceMapping,
    scale: int,
    tile: int,
    halo: int,
    batch_size: int,
    device: str,
    level: float | None = None,
    staging: _Staging | None = None,
    staged: bool | None = None,
) -> FloatArray:
    """`module` on (N, H, W) float32 `values`, with `mapping` applied around it on the device, tiled and batched.

    Direct (CPU default): each batch is a view of `values` (whole slices) or a stack of tiles, mapped and run
    in place, and written straight into the output. Staged (CUDA default; `staged=True` runs it on CPU for
    tests): batches go through two pairs of pinned buffers, uploads and downloads run on their own streams,
    and a batch's result is copied out only after the next batch has been queued, so upload, compute and
    download of consecutive batches overlap and the host never waits for the GPU to go idle.
    """
    n, h, w = values.shape
    out = np.empty((n, h * scale, w * scale), dtype=np.float32)
    whole, batches = _batches(n, h, w, tile, halo, batch_size)
    cuda = device.startswith("cuda")
    use_staging = cuda if staged is None else staged
    with torch.inference_mode():
        if use_staging:
            stage = staging if staging is not None and staging.device == torch.device(device) else _Staging(device)
            with stage.lock:  # one run at a time through the shared pinned buffers
                _run_staged(module, values, out, batches, mapping, scale, level, stage, tile)
        else:
            _run_direct(module, values, out, whole, batches, mapping, scale, level, device)
    return out


def _forward(
    module: torch.nn.Module, x: torch.Tensor, level: float | None, cuda: bool
) -> torch.Tensor:
    """The module on a normalised (B, H, W) batch: noise channel, channels-last, autocast on CUDA -> (B, H', W')."""
    t = x[:, None]
    if level is not None:
        t = torch.cat([t, torch.full_like(t, float(level) * NOISE_LEVEL_GAIN)], dim=1)
    t = t.contiguous(memory_format=torch.channels_last)
    if cuda:
        with torch.autocast("cuda", dtype=torch.float16):
            pred = module(t)
    else:
        pred = module(t)
    result: torch.Tensor = pred[:, 0].float()
    return result


def _place(out: npt.NDArray[np.float32], res: npt.NDArray[np.float32], chunk: list[_Job], s: int) -> None:
    """Copy each tile's reliable centre from `res` (B, tile*s, tile*s) into `out`."""
    for k, (i, ty, tx) in enumerate(chunk):
        oy0, oy1 = (ty[2] - ty[0]) * s, (ty[3] - ty[0]) * s
        ox0, ox1 = (tx[2] - tx[0]) * s, (tx[3] - tx[0]) * s
        out[i, ty[2] * s : ty[3] * s, tx[2] * s : tx[3] * s] = res[k, oy0:oy1, ox0:ox1]


def _tiles(values: FloatArray, chunk: list[_Job], dest: npt.NDArray[np.float32] | None = None) -> FloatArray:
    if dest is None:
        return np.stack([values[i, ty[0] : ty[1], tx[0] : tx[1]] for i, ty, tx in chunk])
    for k, (i, ty, tx) in enumerate(chunk):
        dest[k] = values[i, ty[0] : ty[1], tx[0] : tx[1]]
    return dest


def _run_direct(
    module: torch.nn.Module,
    values: FloatArray,
    out: npt.NDArray[np.float32],
    whole: bool,
    batches: list[list[_Job]],
    mapping: DeviceMapping,
    s: int,
    level: float | None,
    device: str,
) -> None:
    """One batch after the other. On CPU the input is normalised straight into a channels-last buffer (the
    noise channel filled once), the module reads it without a copy, and whole slices are mapped back straight
    into `out`: one pass in, one pass out, all in numpy (see `DeviceMapping.normalise_np`)."""
    if device.startswith("cuda"):
        for chunk in batches:
            rows = [i for i, _, _ in chunk]
            host = torch.from_numpy(_tiles(values, chunk))
            x = mapping.normalise(host.to(device))
            res = mapping.finish(_forward(module, x, level, True), x, rows).cpu().numpy()
            _place(out, res, chunk, s)
        return
    first_job = batches[0][0]
    th, tw = first_job[1][1] - first_job[1][0], first_job[2][1] - first_job[2][0]
    channels = 1 if level is None else 2
    buf = np.empty((max(len(c) for c in batches), th, tw, channels), dtype=np.float32)
    if level is not None:
        buf[..., 1] = np.float32(float(level) * NOISE_LEVEL_GAIN)
    for chunk in batches:
        count = len(chunk)
        rows = [i for i, _, _ in chunk]
        xn = buf[:count, ..., 0]
        if whole:  # consecutive whole slices, read in place (never modified)
            mapping.normalise_np(values[rows[0] : rows[0] + count], xn)
        else:
            for k, (i, ty, tx) in enumerate(chunk):
                mapping.normalise_np(values[i, ty[0] : ty[1], tx[0] : tx[1]], xn[k])
        t = torch.from_numpy(buf[:count]).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
        pred = module(t)[:, 0].float().numpy()
        if np.may_share_memory(pred, buf):  # a module that hands back its input (the identity of the tests)
            pred = pred.copy()
        if whole:
            mapping.finish_np(pred, xn, rows, out[rows[0] : rows[0] + count])
        else:
            _place(out, mapping.finish_np(pred, xn, rows, np.empty_like(pred)), chunk, s)


def _run_staged(
    module: torch.nn.Module,
    values: FloatArray,
    out: npt.NDArray[np.float32],
    batches: list[list[_Job]],
    mapping: DeviceMapping,
    s: int,
    level: float | None,
    stage: _Staging,
    tile: int,
) -> None:
    _n, h, w = values.shape
    th, tw = min(h, tile), min(w, tile)
    stage.buffers(max(len(c) for c in batches), (th, tw), (th * s, tw * s))
    compute = stage.compute_stream()
    uploaded: list[torch.cuda.Event | None] = [None, None]
    pending: deque[tuple[torch.cuda.Event | None, torch.Tensor, list[_Job]]] = deque()

    def drain() -> None:
        done, host_out, chunk = pending.popleft()
        if done is not None:
            done.synchronize()
        _place(out, host_out.numpy(), chunk, s)

    for k, chunk in enumerate(batches):
        slot, count = k % 2, len(chunk)
        rows = [i for i, _, _ in chunk]
        previous = uploaded[slot]
        if previous is not None:
            previous.synchronize()  # the upload from this pinned buffer two batches ago has finished
        host_in = stage.input(slot)[:count]
        _tiles(values, chunk, host_in.numpy())
        with stage.on(stage.upload):
            dev_in = host_in.to(stage.device, non_blocking=True)
            uploaded[slot] = stage.event(stage.upload)
        if compute is not None and uploaded[slot] is not None:
            compute.wait_event(uploaded[slot])  # type: ignore[arg-type]
            dev_in.record_stream(compute)
        x = mapping.normalise(dev_in)
        res = mapping.finish(_forward(module, x, level, stage.cuda), x, rows)
        computed = stage.event(compute)
        host_out = stage.output(slot)[:count]
        with stage.on(stage.download):
            if stage.download is not None and computed is not None:
                stage.download.wait_event(computed)
                res.record_stream(stage.download)
            host_out.copy_(res, non_blocking=True)
            downloaded = stage.event(stage.download)
        pending.append((downloaded, host_out, chunk))
        while len(pending) > 1:  # the previous batch's result, while this one computes
            drain()
    while pending:
        drain()
