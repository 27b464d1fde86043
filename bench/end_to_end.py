"""End-to-end benchmark: last instance acknowledged -> last derived instance stored at a dcmtk storescp.

For a series of N real 512x512 CT slices pushed with storescu, the end-to-end time is
`(mtime of the newest file storescp wrote) - (moment storescu returned) - stable_seconds`, i.e. everything
the gateway adds after the series is complete: completion detection, decode, enhancement, derive + encode,
durable writes of the derived files, and the C-STOREs to the destination. Alongside, the enhancer's pure
compute time for the same slices is measured in this process with the worker's settings
(`Pipeline(name, device="cpu", batch_size=4, threads=1).run(...)` on the same decoded slices, batches of 4,
decode not timed). The ratio (end to end)/(compute) is the overhead; 1.0 would mean everything else hides
behind compute. The breakdown comes from the gateway's own log events (series.stable, job.enhanced,
send.done).

    .venv/bin/python -m bench.end_to_end --n 200 --enhancer nlm --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom

from bench.common import (
    TunedStoreSCP,
    dicom_destination,
    gateway,
    iso_to_epoch,
    median,
    run_flow,
    scratch,
    series,
)
from dicom_utils.pixels import modality_frames, value_range
from enhancers.pipeline import Pipeline

BATCH = 4  # tests.gateway.harness.write_config: [enhance] batch_size = 4, threads = 1, workers = 1
THREADS = 1


def compute_seconds(files: list[Path], enhancer: str) -> float:
    """Seconds inside Pipeline.run for all slices, batched as the worker batches them; decoding not timed."""
    pipe = Pipeline(enhancer, device="cpu", batch_size=BATCH, threads=THREADS)
    first = pydicom.dcmread(files[0])
    vrange = value_range(first)
    pipe.run(modality_frames(first), modality="CT", value_range=vrange)  # warm-up (allocations, caches)
    total = 0.0
    for start in range(0, len(files), BATCH):
        stack = np.concatenate([modality_frames(pydicom.dcmread(p)) for p in files[start : start + BATCH]])
        t0 = time.perf_counter()
        pipe.run(stack, modality="CT", value_range=vrange)
        total += time.perf_counter() - t0
    return total


def one_run(files: list[Path], enhancer: str, stable: float) -> dict[str, float]:
    root = scratch("gw-e2e-")
    try:
        with TunedStoreSCP(root / "pacs") as scp:
            config = {
                "destinations": [dicom_destination(scp)],
                "routes": [{"enhancer": enhancer}],
                "stable_seconds": stable,
            }
            with gateway(root / "gw", **config) as gw:  # type: ignore[arg-type]
                flow = run_flow(gw, scp, files)
        stable_at = iso_to_epoch(flow.event("series.stable").get("timestamp", "1970-01-01T00:00:00Z"))
        enhanced = flow.event("job.enhanced")
        return {
            "e2e": flow.delivered_at - flow.acked_at - stable,
            "detect": stable_at - flow.acked_at - stable,
            "enhance": float(enhanced.get("seconds", float("nan"))),
            "worker_compute": float(enhanced.get("compute_seconds", float("nan"))),
            "send": float(flow.event("send.done").get("seconds", float("nan"))),
            "receive_per_s": len(files) / flow.push_seconds,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[200], help="slices per series (e.g. 200 1000)")
    parser.add_argument("--enhancer", default="gaussian", help="route every series to this enhancer")
    parser.add_argument("--stable", type=float, default=2.0, help="gateway stable_seconds")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported")
    args = parser.parse_args(argv)
    print(
        f"end-to-end benchmark: {os.cpu_count()} CPUs, enhancer {args.enhancer} on CPU (batch {BATCH},"
        f" {THREADS} thread), stable_seconds {args.stable}, repeat={args.repeat}"
    )
    rows = []
    for n in args.n:
        files = series(n, "e2e")
        runs = []
        computes = []
        for rep in range(args.repeat):
            runs.append(one_run(files, args.enhancer, args.stable))
            computes.append(compute_seconds(files, args.enhancer))
            r = runs[-1]
            print(
                f"  N={n} rep {rep + 1}: end to end {r['e2e']:.2f} s, compute {computes[-1]:.2f} s"
                f" (detect {r['detect']:.2f}, enhance job {r['enhance']:.2f} of which compute"
                f" {r['worker_compute']:.2f}, send {r['send']:.2f})",
                flush=True,
            )
        rows.append((n, runs, computes))
    print()
    print(
        f"{'N':>5} {'e2e s':>7} {'compute s':>9} {'ratio':>6} {'detect':>7} {'enh job':>8} {'wrk cmp':>8}"
        f" {'send':>6}"
    )
    for n, runs, computes in rows:
        ratio = median([r["e2e"] / c for r, c in zip(runs, computes, strict=True)])
        print(
            f"{n:>5} {median([r['e2e'] for r in runs]):>7.2f} {median(computes):>9.2f} {ratio:>6.2f}"
            f" {median([r['detect'] for r in runs]):>7.2f} {median([r['enhance'] for r in runs]):>8.2f}"
            f" {median([r['worker_compute'] for r in runs]):>8.2f} {median([r['send'] for r in runs]):>6.2f}"
        )
    print("e2e: last ack -> last derived file at storescp, minus stable_seconds; ratio = e2e / compute")
    print("detect: last ack -> series.stable, minus stable_seconds; enh job / wrk cmp: the worker's job.enhanced")


if __name__ == "__main__":
    main()
