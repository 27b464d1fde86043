"""Slices per second of every registered enhancer on 512x512 CT slices, on CPU, against `nlm` in the same run.

Why a ratio: absolute speed depends on the machine and on whatever else runs on it; the ratio to the
classical baseline measured in the same process, on the same slices, a moment apart, is what tells an admin
whether a model is affordable where `nlm` is. The issue's target for the fast variants is >= 8 slices/s at
512x512 on a 2-core CPU.

    python bench/enhancers_speed.py [--threads 2] [--slices 8] [--repeats 3] [--only a,b] [--device cpu]
                                    [--batch-size 8] [--dicom PATH]

Input: the real 512x512 head CT `693_UNCR.dcm` (pydicom-data) repeated to `--slices` slices, with a little
low-dose-like noise so the filters do real work. `--dicom` reads that file (or another CT slice) from a path
instead, for machines where pydicom-data is not installed (the lent GPU machine). For sr2x models the input
is the same 512x512 slice (output 1024x1024). The best of `--repeats` timed runs is reported (after one
warm-up run); models slower than about 1 slice/s are timed once on 2 slices.

On CUDA the models run as `enhancers.pipeline.run_module` runs them there: float16 autocast, `--batch-size`
512x512 tiles per forward pass; the header line says so, since a GPU figure means nothing without its batch
size and precision. Filters (and `nlm`) always run on the CPU with `--threads`. Use more slices on a GPU
(`--slices 64`) so the figure is not dominated by per-call overhead. The clock is read after
`torch.cuda.synchronize()` (`Pipeline.run` already returns host arrays, so this only makes the timing
independent of that detail), and on CUDA one untimed full batch runs first, so CUDA start-up and cuDNN's
first-call work do not make a fast model look slow and get it timed on 2 slices only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enhancers import registry
from enhancers.pipeline import Pipeline


def load_ct(slices: int, dicom: str | None = None) -> np.ndarray:
    """`slices` noisy copies of the CT slice in `dicom` (default: pydicom-data's 693_UNCR.dcm), in HU."""
    import pydicom

    if dicom is None:
        from pydicom.data import get_testdata_file

        dicom = str(get_testdata_file("693_UNCR.dcm"))
    ds = pydicom.dcmread(dicom)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    rng = np.random.default_rng(0)
    stack = np.stack(
        [np.maximum(hu, -1024.0) + rng.normal(0, 30, hu.shape).astype(np.float32) for _ in range(slices)]
    )
    return stack.astype(np.float32)


def _sync(device: str) -> None:
    """Wait for queued GPU work before reading the clock (a no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(
    name: str, stack: np.ndarray, threads: int, repeats: int, device: str, batch_size: int = 8
) -> float:
    """Best slices/s over `repeats` runs on the stack; slow models (> 10 s for the stack, judged from the
    warm-up slice) are timed once on 2 slices so the benchmark stays minutes long."""
    pipe = Pipeline(name, device=device, threads=threads, batch_size=batch_size)
    if device.startswith("cuda"):
        pipe.run(stack[:batch_size], modality="CT", value_range=(-1024.0, 3071.0))
        _sync(device)
    t0 = time.perf_counter()
    pipe.run(stack[:1], modality="CT", value_range=(-1024.0, 3071.0))
    _sync(device)
    warm = time.perf_counter() - t0
    if warm * stack.shape[0] > 10.0:
        stack, repeats = stack[:2], 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.run(stack, modality="CT", value_range=(-1024.0, 3071.0))
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return int(stack.shape[0]) / best


def describe_device(device: str) -> str:
    """The device as the header line names it: the GPU's name on CUDA, so a figure says what produced it."""
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)}, torch {torch.__version__})"
    return device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma list of enhancers (nlm is always measured)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (models only)")
    parser.add_argument(
        "--dicom", default=None, help="CT slice to read instead of pydicom-data's 693_UNCR.dcm"
    )
    args = parser.parse_args()
    stack = load_ct(args.slices, args.dicom)
    names = [m.name for m in registry.infos() if "CT" in m.modalities]
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        names = [n for n in names if n in wanted or n == "nlm"]
    base = measure("nlm", stack, args.threads, args.repeats, args.device, args.batch_size)
    # the precision run_module uses: float16 autocast on CUDA, float32 on CPU; filters always run on the CPU
    precision = "fp16 autocast" if args.device.startswith("cuda") else "fp32"
    print(
        f"# {args.slices} slices 512x512 CT, {args.threads} thread(s), device {describe_device(args.device)}; "
        f"models: batch {args.batch_size}, {precision}; best of {args.repeats}"
    )
    print(f"{'enhancer':<14} {'task':<8} {'slices/s':>9} {'x nlm':>7}  target")
    for name in names:
        meta = registry.info(name)
        rate = (
            base
            if name == "nlm"
            else measure(name, stack, args.threads, args.repeats, args.device, args.batch_size)
        )
        target = ">= 8/s " + ("met" if rate >= 8 else "MISSED") if name.startswith("fast") else ""
        print(f"{name:<14} {meta.task:<8} {rate:9.2f} {rate / base:7.2f}  {target}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
