"""What the QA gate costs per 512x512 slice, as a share of the enhancement it guards, measured in one run.

Why a share: the issue's rule is that the gate never costs more than a small share of the enhancement, and the
share is what stays true from machine to machine. The enhancers are timed on the same slices a moment before.

    python -m bench.qa_gate [--threads 2] [--slices 32] [--only fastdn-ct,nlm] [--repeats 3]

Input: the real head CT `693_UNCR.dcm` (pydicom-data) repeated to `--slices` slices with a little noise (as
bench/enhancers_speed.py). Per slice, the worker's per-slice QA path is timed exactly as the worker runs it
(`gateway.enhance.qa.SeriesGate.check`, the shipped `[qa]` defaults: the full checks on every 4th slice and the last,
the cheap ones on the others), plus the INPUT PSNR/SSIM the derived object carries anyway (`input_metrics`,
listed apart because it existed before the gate). Per series: the noise estimate (12 slices), the
DEGRADE_RESTORE score (3 slices, through the enhancer) and the SR report. Printed: ms per slice of each part,
ms per series, and the gate's share of each enhancer's compute for a series of `--slices` slices.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.enhancers_speed import load_ct
from enhancers.noise import estimate_noise
from enhancers.pipeline import Pipeline
from gateway.enhance.finish import input_metrics
from gateway.enhance.qa import SeriesGate
from gateway.enhance.restore_score import degrade_restore
from gateway.settings import QaSettings


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Best wall time of `repeats` calls of `fn` (seconds), after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--only", default="fastdn-ct,nlm")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    stack = load_ct(args.slices)
    n = stack.shape[0]
    qa = QaSettings()
    noise = estimate_noise(stack, "CT")
    print(f"QA gate cost, {n} slices of {stack.shape[1]}x{stack.shape[2]} CT, {args.threads} threads; "
          f"noise sigma {noise.sigma:.2f} HU; [qa] full_every={qa.full_every} full_min={qa.full_min}")

    rows: list[tuple[str, float]] = []
    outputs: dict[str, np.ndarray] = {}
    for name in [s for s in args.only.split(",") if s]:
        pipe = Pipeline(name, device="cpu", batch_size=8, threads=args.threads)
        seconds = best_of(1 if name == "nlm" else args.repeats,
                          lambda p=pipe: outputs.__setitem__(p.info.name, p.run(
                              stack, modality="CT", value_range=(-1024.0, 3071.0), noise=noise)))
        rows.append((name, seconds * 1000.0 / n))
        print(f"  enhance {name:12s} {seconds * 1000.0 / n:8.1f} ms/slice")

    after = outputs[rows[0][0]]

    def metrics() -> None:
        for i in range(n):
            input_metrics(stack[i], after[i], "denoise")

    def gate_pass() -> None:
        gate = SeriesGate(qa, group="CT", sigma=noise.sigma, count=n)
        for i in range(n):
            gate.check(i, i + 1, stack[i], after[i], ssim=0.9)
        gate.verdict()

    metrics_ms = best_of(args.repeats, metrics) * 1000.0 / n
    gate_ms = best_of(args.repeats, gate_pass) * 1000.0 / n
    full = SeriesGate(QaSettings(full_every=1), group="CT", sigma=noise.sigma, count=n)
    full_ms = best_of(args.repeats, lambda: full.check(0, 1, stack[0], after[0], ssim=0.9)) * 1000.0
    cheap_gate = SeriesGate(qa, group="CT", sigma=noise.sigma, count=n)
    cheap_ms = best_of(args.repeats, lambda: cheap_gate.check(1, 2, stack[1], after[1], ssim=0.9)) * 1000.0
    noise_ms = best_of(args.repeats, lambda: estimate_noise(stack[:12], "CT")) * 1000.0
    print(f"  INPUT psnr+ssim (existed before the gate) {metrics_ms:6.1f} ms/slice")
    print(f"  gate, one fully checked slice             {full_ms:6.1f} ms")
    print(f"  gate, one cheaply checked slice           {cheap_ms:6.1f} ms")
    print(f"  gate, series average                      {gate_ms:6.1f} ms/slice")
    print(f"  noise estimate (12 slices, per series)    {noise_ms:6.1f} ms")
    for name, enhance_ms in rows:
        pipe = Pipeline(name, device="cpu", batch_size=8, threads=args.threads)
        sample = [(i + 1, stack[i], (-1024.0, 3071.0)) for i in (0, n // 2, n - 1)]
        dr_ms = best_of(1, lambda p=pipe, s=sample: degrade_restore(p, s, modality="CT", task="denoise",
                                                                      strength=1.0)) * 1000.0
        for size in (n, 200):  # DEGRADE_RESTORE and the noise estimate are per series: longer series dilute them
            total = gate_ms * size + noise_ms + dr_ms
            print(f"  {name:12s} series of {size:3d}: DEGRADE_RESTORE (3 slices) {dr_ms:6.0f} ms, gate + noise + DR"
                  f" {total / size:6.1f} ms/slice = {100.0 * total / (enhance_ms * size):5.1f} % of the enhancement"
                  f" (per-slice gate alone {100.0 * gate_ms / enhance_ms:4.1f} %; INPUT metrics"
                  f" {100.0 * metrics_ms / enhance_ms:4.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
