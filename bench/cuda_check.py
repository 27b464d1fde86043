"""CUDA float16 against CPU float32: the same CT enhancers on the same real slices, differences in HU.

Why: on CUDA `enhancers.pipeline.run_module` runs models under float16 autocast (about 3 significant
digits), on CPU in float32, and a site must get the same derived images whichever device it has, within what
no reader could see. This script measures that gap on the slices `bench.enhancers_speed` times, and splits
it: CUDA float32 (the module called directly, no autocast; torch lets cuDNN use TF32 there by default)
against CPU says what different kernels cost, CUDA float16 against CUDA float32 what half precision costs.
It also checks that CUDA results repeat bit for bit (the pipeline disables cuDNN's non-deterministic
algorithms) and that tiling on CUDA matches the whole-slice result. It needs a GPU, so it is a script for a
lent machine, not a test.

Since issue 19 the pipeline maps on the device in float32 (pinned buffers, side streams, overlapped batches).
Per model it also prints the difference to the pre-issue-19 host path (`bench.pipeline_host.reference_run`,
float64 on the host around the same module), whether the staged path (the default on CUDA) equals the
unstaged one bit for bit, and the batch chosen from free GPU memory; and once, for the CT slice read, whether
an identity module through the CUDA pipeline gives back every stored value (with the rounding to stored
values done on the device).

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
from bench.pipeline_host import Identity, reference_run
from enhancers import registry
from enhancers.base import FloatArray, ModelEnhancer, normalisation_for
from enhancers.metrics import score
from enhancers.noise import estimate_noise
from enhancers.pipeline import DeviceMapping, Pipeline, StoredGrid, run_mapped

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


def unstaged(pipe: Pipeline, stack: FloatArray) -> FloatArray:
    """The same CUDA run without the pinned buffers and side streams (`run_mapped(staged=False)`)."""
    assert pipe._module is not None
    norm = normalisation_for("CT", stack, VALUE_RANGE)
    mapping = DeviceMapping.of(norm, clip=VALUE_RANGE)
    level = None
    if pipe.conditioned:
        level = estimate_noise(stack, "CT").sigma / norm.scale
    return run_mapped(pipe._module, stack, mapping=mapping, scale=pipe.info.scale, tile=pipe.tile,
                      halo=pipe._halo, batch_size=pipe.batch_size or 8, device=pipe.device, level=level, staged=False)


def identity_check(dicom: str | None, device: str = "cuda") -> None:
    """An identity module through the CUDA pipeline gives back every stored value of the CT slice read."""
    import pydicom
    from pydicom.data import get_testdata_file

    from dicom_utils.pixels import (
        frame_rescale,
        modality_frames,
        stored_frames,
        stored_range,
        to_stored,
        value_range,
    )

    ds = pydicom.dcmread(dicom or str(get_testdata_file("693_UNCR.dcm")))
    values, vrange = modality_frames(ds), value_range(ds)
    (slope, intercept), = frame_rescale(ds)
    low, high = stored_range(ds)
    pipe = Pipeline(registry.default_enhancer("CT", "denoise"), device=device)
    pipe._module = Identity()
    plain = pipe.run(values, modality="CT", value_range=vrange)
    grid = StoredGrid.uniform(values.shape[0], slope, intercept, float(low), float(high))
    snapped = pipe.run(values, modality="CT", value_range=vrange, stored=grid)
    exact = [np.array_equal(to_stored(ds, o), stored_frames(ds)) for o in (plain, snapped)]
    print(f"# identity through the CUDA pipeline, stored values bit-exact: {exact[0]} (rounded on the host), "
          f"{exact[1]} (rounded on the device)")


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
    identity_check(args.dicom)
    print(
        f"{'model':<10} {'model change':>12}  {'CUDA fp16 vs CPU fp32':>23}  {'CUDA fp32 vs CPU fp32':>23}  "
        f"{'CUDA fp16 vs CUDA fp32':>23}  {f'tile {args.tile} vs whole':>23}  repeat  "
        f"{'vs old host path':>23}  staged=direct  auto batch"
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
        old = reference_run(gpu_pipe, stack, modality="CT", value_range=VALUE_RANGE)
        staged_same = "bitwise" if np.array_equal(gpu, unstaged(gpu_pipe, stack)) else "DIFFERS"
        auto = Pipeline(name, device="cuda", batch_size=None)
        auto.run(stack, modality="CT", value_range=VALUE_RANGE)
        print(
            f"{name:<10} {change:>12}  {compare(cpu, gpu):>23}  {compare(cpu, fp32):>23}  "
            f"{compare(fp32, gpu):>23}  {compare(gpu, tiled):>23}  {same}  {compare(old, gpu):>23}  "
            f"{staged_same:>13}  {sorted(set(auto._cuda_batches.values()))}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
