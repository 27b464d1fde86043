"""CUDA float16 against CPU float32: the same CT enhancers on the same real slices, differences in HU.

Why: on CUDA `enhancers.pipeline.run_module` runs models under float16 autocast (about 3 significant
digits), on CPU in float32, and a site must get the same derived images whichever device it has, within what
no reader could see. This script measures that gap on the slices `bench.enhancers_speed` times, and splits
it: CUDA float32 (the module called directly, no autocast; torch lets cuDNN use TF32 there by default)
against CPU says what different kernels cost, CUDA float16 against CUDA float32 what half precision costs.
It also checks that CUDA results repeat bit for bit (the pipeline disables cuDNN's non-deterministic
algorithms) and that tiling on CUDA matches the whole-slice result. It needs a GPU, so it is a script for a
lent machine, not a test.

    python -m bench.cuda_check [--only fastdn-ct,drunet-ct] [--slices 2] [--dicom PATH] [--threads 16]

Per model it prints: max |difference| in HU over the whole slice, PSNR with the evaluation's CT rule
(`enhancers.metrics.score`: HU clipped to [-1000, 1000], data range 2000 HU), and, for scale, the mean
|change| the model itself makes to its input on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.enhancers_speed import load_ct
from enhancers import registry
from enhancers.base import FloatArray, ModelEnhancer, normalisation_for
from enhancers.metrics import score
from enhancers.pipeline import Pipeline

VALUE_RANGE = (-1024.0, 3071.0)


def cuda_fp32(name: str, stack: FloatArray) -> FloatArray:
    """The model on CUDA in float32, whole slices, no autocast: the reference for the float16 error alone."""
    enhancer = registry.create(name)
    assert isinstance(enhancer, ModelEnhancer)
    module = enhancer.module.to("cuda").eval()
    norm = normalisation_for("CT", stack, VALUE_RANGE)
    with torch.inference_mode():
        x = torch.from_numpy(norm.forward(stack)[:, None]).to("cuda")
        y = module(x).float().cpu().numpy()[:, 0]
    out: FloatArray = np.clip(norm.inverse(y), *VALUE_RANGE).astype(np.float32)
    return out


def compare(a: FloatArray, b: FloatArray) -> str:
    """'max |a-b| HU, PSNR dB' of b against a."""
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    psnr = score("CT", a, b).psnr
    return f"{diff:8.3f} HU {psnr:7.1f} dB"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", default="fastdn-ct,drunet-ct", help="comma list, or 'all' CT models")
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument(
        "--dicom", default=None, help="CT slice to read instead of pydicom-data's 693_UNCR.dcm"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the float32 reference")
    parser.add_argument("--tile", type=int, default=160, help="tile side for the tiled CUDA run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to compare", file=sys.stderr)
        return 2
    models = [m.name for m in registry.infos() if m.kind == "model" and "CT" in m.modalities]
    if args.only != "all":
        wanted = [n.strip() for n in args.only.split(",")]
        models = [n for n in wanted if n in models]
    stack = load_ct(args.slices, args.dicom)
    print(
        f"# {args.slices} slices 512x512 CT, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
        f"max |diff| HU, PSNR (HU clipped to [-1000, 1000], range 2000 HU)"
    )
    print(
        f"{'model':<10} {'model change':>12}  {'CUDA fp16 vs CPU fp32':>23}  {'CUDA fp32 vs CPU fp32':>23}  "
        f"{'CUDA fp16 vs CUDA fp32':>23}  {f'tile {args.tile} vs whole':>23}  repeat"
    )
    for name in models:
        cpu = Pipeline(name, device="cpu", threads=args.threads).run(
            stack, modality="CT", value_range=VALUE_RANGE
        )
        gpu_pipe = Pipeline(name, device="cuda")
        gpu = gpu_pipe.run(stack, modality="CT", value_range=VALUE_RANGE)
        again = gpu_pipe.run(stack, modality="CT", value_range=VALUE_RANGE)
        tiled = Pipeline(name, device="cuda", tile=args.tile, batch_size=8).run(
            stack, modality="CT", value_range=VALUE_RANGE
        )
        fp32 = cuda_fp32(name, stack)
        change = "" if cpu.shape != stack.shape else f"{float(np.mean(np.abs(cpu - stack))):9.2f} HU"
        same = "bitwise" if np.array_equal(gpu, again) else "DIFFERS"
        print(
            f"{name:<10} {change:>12}  {compare(cpu, gpu):>23}  {compare(cpu, fp32):>23}  "
            f"{compare(fp32, gpu):>23}  {compare(gpu, tiled):>23}  {same}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
