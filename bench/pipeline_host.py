"""Host-side cost of `Pipeline.run` and of the worker's per-slice steps, before and after issue 19, in one run.

Why in one run: the machine's load moves between runs; the old and the new path are timed alternately on
the same slices a moment apart, so their ratio holds even where the absolute figures do not.

    python -m bench.pipeline_host [--slices 64] [--batch-size 8] [--threads 2] [--repeats 5] [--device cpu]
                                  [--model ncdn-ct] [--model-repeats 3] [--worker-slices 24] [--dicom PATH]

1. `Pipeline.run` with an identity module (returns its input channel: the model costs nothing, so what is
   timed is the pipeline's own host work), 512x512 CT slices, against `reference_run`: the pre-issue-19 path
   kept here only to be measured (float64 normalisation and inverse on the host, stacked tiles, pageable
   copies). Printed: ms per slice, old / new.
2. The same two paths around a real model (`--model`, the CT default): slices/s, old / new.
3. The worker's host steps for one 512x512 instance, as `gateway.enhance.worker` runs them: decode (read + modality
   values), INPUT metrics (PSNR + SSIM; the old float64 scikit-image SSIM and the new `ssim_fast`), the QA gate
   (`SeriesGate.check` over a series, shipped sampling: the series average), derive (`derive_instance`, with
   the stored-value rounding), encode (`save_as`) and the durable write (`LocalSpool.put`: fsync,
   rename). The derive thread's total per slice bounds the worker's rate whatever the GPU does.

On CUDA (`--device cuda`) part 1 and 2 also print the module alone (a batch already on the GPU).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.enhancers_speed import describe_device, load_ct
from enhancers import registry
from enhancers.base import FloatArray, normalisation_for
from enhancers.metrics import psnr, ssim, ssim_fast
from enhancers.models.arch import NOISE_LEVEL_GAIN
from enhancers.noise import NoiseEstimate, estimate_noise
from enhancers.pipeline import Pipeline, StoredGrid, tile_spans

VALUE_RANGE = (-1024.0, 3071.0)


class Identity(torch.nn.Module):
    """An enhancer that changes nothing and costs nothing: returns its image channel."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, :1]


def reference_module(
    module: torch.nn.Module, x: FloatArray, *, scale: int, tile: int, halo: int, batch_size: int, device: str,
    level: float | None,
) -> FloatArray:
    """`enhancers.pipeline.run_module` as it was before issue 19 (normalised in, normalised out)."""
    n, h, w = x.shape
    s = scale
    out = np.empty((n, h * s, w * s), dtype=np.float32)
    ys, xs = tile_spans(h, tile, halo), tile_spans(w, tile, halo)
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


def reference_run(
    pipe: Pipeline, arr: FloatArray, *, modality: str, value_range: tuple[float, float],
    noise: NoiseEstimate | None = None, strength: float = 1.0,
) -> FloatArray:
    """`Pipeline.run` for a model as it was before issue 19: float64 mapping on the host around the module."""
    if not np.all(np.isfinite(arr)):
        raise ValueError("slices contain NaN or infinite values")
    lo, hi = value_range
    group = registry.modality_group(modality)
    norm = normalisation_for(group, arr, (lo, hi))
    x = norm.forward(arr)
    level = None
    if pipe.conditioned:
        level = max(strength, 1.0) * (noise or estimate_noise(arr, group)).sigma / norm.scale
    assert pipe._module is not None
    y = reference_module(pipe._module, x, scale=pipe.info.scale, tile=pipe.tile, halo=pipe._halo,
                         batch_size=pipe.batch_size or 8, device=pipe.device, level=level)
    blend = 1.0 if pipe.conditioned and strength >= 1.0 else strength
    if pipe.info.scale == 1 and blend != 1.0:
        y = x + np.float32(blend) * (y - x)
    out: FloatArray = np.clip(norm.inverse(y), lo, hi).astype(np.float32)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each function, timed in turn `repeats` times after one untimed call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def module_alone(pipe: Pipeline, stack: FloatArray, batch: int) -> float:
    """Seconds per slice of the module alone on a batch already on the device (the GPU's own rate)."""
    assert pipe._module is not None
    channels = 2 if pipe.conditioned else 1
    t = torch.zeros((batch, channels, *stack.shape[1:]), device=pipe.device).contiguous(
        memory_format=torch.channels_last
    )
    cuda = pipe.device.startswith("cuda")

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            pipe._module(t)  # type: ignore[misc]

    seconds = alternate({"m": run}, 5, pipe.device)["m"]
    return seconds / batch


def pipeline_part(args: argparse.Namespace, stack: FloatArray) -> None:
    noise = estimate_noise(stack, "CT")
    grid = StoredGrid.uniform(stack.shape[0], 1.0, -1024.0, -32768.0, 32767.0)
    n = stack.shape[0]
    for label, name, swap in (("identity module", args.model, True), (args.model, args.model, False)):
        pipe = Pipeline(name, device=args.device, batch_size=args.batch_size, threads=args.threads)
        if swap:
            pipe._module = Identity()
        old = Pipeline(name, device=args.device, batch_size=args.batch_size, threads=args.threads)
        if swap:
            old._module = Identity()
        reps = args.repeats if swap else args.model_repeats
        took = alternate(
            {
                "old": lambda o=old: reference_run(o, stack, modality="CT", value_range=VALUE_RANGE, noise=noise),
                "new": lambda p=pipe: p.run(stack, modality="CT", value_range=VALUE_RANGE, noise=noise),
                "new+grid": lambda p=pipe: p.run(stack, modality="CT", value_range=VALUE_RANGE, noise=noise,
                                                 stored=grid),
            },
            reps,
            args.device,
        )
        a = reference_run(old, stack, modality="CT", value_range=VALUE_RANGE, noise=noise)
        b = pipe.run(stack, modality="CT", value_range=VALUE_RANGE, noise=noise)
        diff = float(np.max(np.abs(a.astype(np.float64) - b)))
        if swap:
            print(f"Pipeline.run host overhead, {label} ({n} slices, batch {args.batch_size}):")
            print(f"  old (float64 host round trip)  {took['old'] * 1000 / n:8.3f} ms/slice")
            print(f"  new (float32 on the device)    {took['new'] * 1000 / n:8.3f} ms/slice"
                  f"   old/new {took['old'] / took['new']:5.2f}x")
            print(f"  new + stored-value rounding    {took['new+grid'] * 1000 / n:8.3f} ms/slice"
                  f"   old/new {took['old'] / took['new+grid']:5.2f}x   max |old - new| {diff:.2e} HU")
        else:
            print(f"Pipeline.run with {label} ({n} slices, batch {args.batch_size}):")
            print(f"  old {n / took['old']:8.2f} slices/s   new {n / took['new']:8.2f} slices/s"
                  f"   new/old {took['old'] / took['new']:5.3f}x   new + rounding {n / took['new+grid']:8.2f}"
                  f" slices/s   max |old - new| {diff:.3f} HU")
        if args.device.startswith("cuda"):
            alone = module_alone(pipe, stack, args.batch_size)
            print(f"  module alone: {1.0 / alone:9.1f} slices/s")


def worker_part(args: argparse.Namespace) -> None:
    import pydicom

    from dicom_utils.classify import skip_reason
    from dicom_utils.derive import DerivationOptions
    from dicom_utils.pixels import modality_frames, value_range
    from gateway.enhance.finish import build_derived
    from gateway.enhance.qa import SeriesGate
    from gateway.settings import QaSettings
    from gateway.storage.local_spool import LocalSpool
    from gateway.storage.spool import OutputKey
    from tests.realdata import testfile

    path = args.dicom or str(testfile("693_UNCR.dcm"))
    ds = pydicom.dcmread(path)
    frames = modality_frames(ds)
    rng = np.random.default_rng(0)
    outs = [(frames + rng.normal(0, 8, frames.shape)).astype(np.float32) for _ in range(args.worker_slices)]
    info = registry.info(registry.default_enhancer("CT", "denoise"))
    opts = DerivationOptions(software_version="bench")
    qa = QaSettings()
    sigma = estimate_noise(frames, "CT").sigma
    data_range = float(frames.max() - frames.min())
    spool = LocalSpool(Path(tempfile.mkdtemp(prefix="pipeline-host-")))
    written = [0]

    def decode() -> None:
        d = pydicom.dcmread(path)
        skip_reason(d)
        modality_frames(d)
        value_range(d)

    def gate_series() -> None:
        gate = SeriesGate(qa, group="CT", sigma=sigma, count=len(outs))
        for i, o in enumerate(outs):
            gate.check(i, i + 1, frames[0], o[0], ssim=0.9)

    def derive() -> bytes:
        _d, data, _p, _s = build_derived(ds, frames, outs[0], info=info, task="denoise", processing_ms=1.0,
                                         options=opts, metrics=(40.0, 0.9))
        return data

    derived = build_derived(ds, frames, outs[0], info=info, task="denoise", processing_ms=1.0, options=opts,
                            metrics=(40.0, 0.9))[0]

    def encode() -> None:
        derived.save_as(io.BytesIO(), enforce_file_format=True)

    data = derive()

    def write() -> None:
        written[0] += 1
        spool.put(OutputKey(1, f"1.2.3.{written[0]}"), data)

    took = alternate(
        {
            "decode": decode,
            "psnr": lambda: psnr(frames, outs[0], data_range),
            "ssim (old, float64)": lambda: ssim(frames, outs[0], data_range),
            "ssim_fast (new)": lambda: ssim_fast(frames, outs[0], data_range),
            "gate": gate_series,
            "derive + encode": derive,
            "encode": encode,
            "write": write,
        },
        args.repeats,
        "cpu",
    )
    ms = {k: v * 1000.0 for k, v in took.items()}
    ms["gate"] /= len(outs)
    ms["derive"] = ms["derive + encode"] - ms["encode"]
    print(f"Worker host steps per 512x512 instance (median of {args.repeats}; gate averaged over "
          f"{len(outs)} slices, full checks on every {qa.full_every}th and the last):")
    for key in ("decode", "psnr", "ssim (old, float64)", "ssim_fast (new)", "gate", "derive", "encode", "write"):
        print(f"  {key:<22} {ms[key]:8.2f} ms")
    old = ms["psnr"] + ms["ssim (old, float64)"] + ms["gate"] + ms["derive + encode"] + ms["write"]
    new = ms["psnr"] + ms["ssim_fast (new)"] + ms["gate"] + ms["derive + encode"] + ms["write"]
    print(f"  derive thread total: old {old:7.2f} ms/slice ({1000 / old:6.1f} slices/s), new {new:7.2f} ms/slice "
          f"({1000 / new:6.1f} slices/s), old/new {old / new:4.2f}x; decode thread {ms['decode']:.2f} ms/slice")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="model for part 2 (default: the CT denoiser default)")
    parser.add_argument("--model-repeats", type=int, default=3, help="repeats for the real model (part 2)")
    parser.add_argument("--worker-slices", type=int, default=24)
    parser.add_argument("--dicom", default=None, help="CT slice to read instead of pydicom-data's 693_UNCR.dcm")
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args(argv)
    args.model = args.model or registry.default_enhancer("CT", "denoise")
    torch.set_num_threads(args.threads)
    stack = load_ct(args.slices, args.dicom)
    print(f"# {args.slices} slices 512x512 CT, {args.threads} thread(s), device {describe_device(args.device)}, "
          f"torch {torch.__version__}")
    pipeline_part(args, stack)
    if not args.skip_worker:
        worker_part(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
