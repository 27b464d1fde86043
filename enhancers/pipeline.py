"""The inference path the gateway's worker calls: modality values in, enhanced modality values out.

Why it is one class: the worker must not know whether an enhancer is a scikit-image filter or a CNN, on CPU
or GPU, nor how each model normalises intensities. `Pipeline(name).run(slices, modality=..., value_range=...)`
hides all of it: normalisation and its exact inverse (`enhancers.base`), batching, device choice, autocast on
CUDA, `torch.inference_mode()`, and tiling with overlap so a 4k x 4k radiograph never needs more memory than a
`tile` x `tile` batch. Results are deterministic: eval mode, no dropout, fixed tile layout, and cuDNN's
non-deterministic algorithms disabled on CUDA.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import torch

from enhancers import registry
from enhancers.base import ClassicalEnhancer, FloatArray, ModelEnhancer, normalisation_for
from enhancers.models.arch import NOISE_LEVEL_GAIN
from enhancers.noise import NoiseEstimate, estimate_noise
from enhancers.registry import EnhancerInfo

#: The range of a route's `strength`: 0 leaves the image as received, 1 removes the estimated noise, 2 acts
#: as if there were twice as much (smoother; see `Pipeline.run`). Beyond 2 a conditioned model is far outside
#: what it was trained on.
STRENGTH_RANGE: tuple[float, float] = (0.0, 2.0)


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

    `device`: "auto" (CUDA when available), "cpu" or "cuda[:N]". `batch_size`: tiles per forward pass.
    `tile`: the largest tile side in input pixels; larger slices are split with overlap. `threads`: CPU threads
    for torch and for classical filters (None keeps torch's setting and runs filters in one thread).
    """

    def __init__(
        self,
        name: str,
        *,
        device: str = "auto",
        batch_size: int = 8,
        tile: int = 512,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        if isinstance(self._enhancer, ModelEnhancer):
            if self.device.startswith("cuda"):
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
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
    ) -> FloatArray:
        """float32 (N, H, W) modality values -> float32 (N, H', W') modality values, clipped to value_range.

        H' = 2H and W' = 2W for `sr2x`, else H and W. A single (H, W) slice is accepted and returned as such.
        `modality` is the DICOM Modality (CT, MR, CR, DX, ...); a model not trained for it is refused.
        `noise`: the series' noise (`enhancers.noise.estimate_noise` over the whole series, which the worker
        computes once); None estimates it from `slices`. Conditioned models and `nlm` use it. `strength` (see
        `STRENGTH_RANGE`): up to 1 the output is blended, input + strength * (output - input), so 0 is the
        received image (up to float rounding, which rounding to stored values removes) and every value in
        between is a convex mix (no new structure); above 1 a conditioned model is told the noise is
        `strength` times the estimate (FFDNet's use of its noise map: smoother), and any other enhancer's
        correction is extrapolated. Above 1 the network works outside the
        levels it was trained on for noisy series: the QA gate is what catches a strength set too high.
        sr2x ignores it.
        """
        arr = np.asarray(slices)
        squeeze = arr.ndim == 2
        if squeeze:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] < 2 or arr.shape[2] < 2:
            raise ValueError(
                f"slices must be (N, H, W) with N >= 1 and H, W >= 2; got shape {np.shape(slices)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                "slices contain NaN or infinite values; decode the pixels with the modality LUT first"
            )
        lo, hi = float(value_range[0]), float(value_range[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(f"value_range must be finite (low, high) with low <= high; got {value_range!r}")
        if not (STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]):
            raise ValueError(f"strength must be within {STRENGTH_RANGE}, got {strength!r}")
        group = registry.modality_group(modality)
        if self.info.kind == "model" and group not in self.info.modalities:
            raise ValueError(
                f"enhancer {self.info.name!r} is trained for {', '.join(self.info.modalities)}, not for modality "
                f"{modality!r}; route it to {registry.default_enhancer(modality, self.info.task)!r} instead"
            )
        norm = normalisation_for(group, arr, (lo, hi))
        x = norm.forward(arr)
        if isinstance(self._enhancer, ClassicalEnhancer):
            sigma = (noise or estimate_noise(arr, group)).sigma / norm.scale
            y = self._run_classical(self._enhancer, x, sigma if sigma > 0 else None)
        elif self.conditioned:
            sigma = (noise or estimate_noise(arr, group)).sigma
            y = self._run_model(x, level=max(strength, 1.0) * sigma / norm.scale)
        else:
            y = self._run_model(x)
        blend = 1.0 if self.conditioned and strength >= 1.0 else strength  # a conditioned model used the level
        if self.info.scale == 1 and blend != 1.0:
            y = x + np.float32(blend) * (y - x)
        out = np.clip(norm.inverse(y), lo, hi).astype(np.float32)
        return out[0] if squeeze else out

    def _run_classical(self, enhancer: ClassicalEnhancer, x: FloatArray, sigma: float | None) -> FloatArray:
        workers = min(self.threads or 1, x.shape[0])
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outs = list(pool.map(lambda s: enhancer.apply(s, sigma), list(x)))
        else:
            outs = [enhancer.apply(s, sigma) for s in x]
        return np.stack(outs).astype(np.float32)

    def _run_model(self, x: FloatArray, level: float | None = None) -> FloatArray:
        assert self._module is not None
        return run_module(
            self._module,
            x,
            scale=self.info.scale,
            tile=self.tile,
            halo=self._halo,
            batch_size=self.batch_size,
            device=self.device,
            level=level,
        )


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
    (times `NOISE_LEVEL_GAIN`).
    """
    n, h, w = x.shape
    s = scale
    out = np.empty((n, h * s, w * s), dtype=np.float32)
    ys = tile_spans(h, tile, halo)
    xs = tile_spans(w, tile, halo)
    jobs = [(i, ty, tx) for i in range(n) for ty in ys for tx in xs]
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b : b + batch_size]
            batch = np.stack([x[i, ty[0] : ty[1], tx[0] : tx[1]] for i, ty, tx in chunk])[:, None]
            t = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            if level is not None:
                t = torch.cat([t, torch.full_like(t, float(level) * NOISE_LEVEL_GAIN)], dim=1)
            t = t.contiguous(memory_format=torch.channels_last)
            if cuda:
                with torch.autocast("cuda", dtype=torch.float16):
                    pred = module(t)
            else:
                pred = module(t)
            res = pred.float().cpu().numpy()[:, 0]
            for k, (i, ty, tx) in enumerate(chunk):
                oy0, oy1 = (ty[2] - ty[0]) * s, (ty[3] - ty[0]) * s
                ox0, ox1 = (tx[2] - tx[0]) * s, (tx[3] - tx[0]) * s
                out[i, ty[2] * s : ty[3] * s, tx[2] * s : tx[3] * s] = res[k, oy0:oy1, ox0:ox1]
    return out
