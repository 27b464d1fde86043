"""Issue 19: a whole worker job (`Worker.run_once`: noise sample, model, QA gate, derived objects, durable
writes, the SR) in slices/s, with the derive step in the worker's own thread (`derive_processes = 0`, the
pre-issue path) against N derive processes, alternately in one run; the model alone on the same slices
as the ceiling.

Why in-process and not through DICOM: the issue is the worker's host side; reception and sending have their
own benchmarks (receive.py, send.py, end_to_end.py). Each run stores the real CT series into a fresh spool and
SQLite state (not timed), then times `run_once`. With a cheap enhancer (`gaussian`, default) the figure is the
host side's ceiling: what a GPU worker would reach if the model cost nothing.

Also measures whether a second derive THREAD would do (it would not: the step holds the GIL), which is why
the issue's derive step runs in processes.

    .venv/bin/python -m bench.worker_job --n 200 1000 --processes 2 --repeat 3
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom

from bench.common import series
from dicom_utils.enhancement import Task
from enhancers import registry
from enhancers.noise import estimate_noise
from gateway import logs, settings
from gateway.enhance.derive_pool import BatchWork, SeriesSpec, Slot, finish_batch
from gateway.enhance.finish import SeriesFacts, derivation_options, make_pipeline
from gateway.enhance.worker import Worker
from gateway.settings import QaSettings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey
from gateway.storage.state import JobState, State
from tests.gateway.inprocess import receive

#: The route's strength: 0 blends the model's output fully back to the input (the model still runs), so the
#: QA gate passes and the job takes the normal path; a failing series would add the second pass that marks its
#: files (`Worker._mark_outputs`), which only WARN and FAIL series pay.
STRENGTH = 0.0


def _config(var: Path, enhancer: str, processes: int, batch: int, threads: int) -> settings.Settings:
    return settings.parse({
        "gateway": {"var_dir": str(var), "min_free_mb": 0},
        "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
        "routes": [{"enhancer": enhancer, "task": registry.info(enhancer).task, "strength": STRENGTH}],
        "qa": {"actions": {"WARN": "deliver", "FAIL": "deliver"}},
        "enhance": {"batch_size": batch, "threads": threads, "derive_processes": processes},
    }, environ={})


class Run:
    """One worker configuration, kept warm across repeats (its pipeline and derive processes are reused, as a
    running gateway reuses them); each repeat enhances the series from an emptied spool and a new state."""

    def __init__(self, root: Path, enhancer: str, processes: int, batch: int, threads: int) -> None:
        self.root, self.enhancer, self.processes = root, enhancer, processes
        self.batch, self.threads = batch, threads
        self.worker: Worker | None = None
        self.round = 0

    def once(self, files: list[Path]) -> tuple[float, float, float]:
        """Seconds of one whole job over `files`; CPU seconds of the worker's own process in it (what bounds one
        worker once the derive step is spread out) and of its derive processes (what the spreading costs)."""
        self.round += 1
        var = self.root / f"p{self.processes}"
        cfg = _config(var, self.enhancer, self.processes, self.batch, self.threads)
        for db in var.glob("state.db*"):
            db.unlink()
        for sub in ("incoming", "outgoing"):  # the derive processes keep their spool: empty it, keep the root
            shutil.rmtree(cfg.spool_dir / sub, ignore_errors=True)
        state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
        receive(state, spool, files)
        worker = Worker(cfg, state, spool)
        if self.worker is not None:  # keep the warm pipeline and processes of the previous round
            worker._pipelines = self.worker._pipelines
            worker._derive, self.worker._derive = self.worker._derive, None
        self.worker = worker
        cpu0, pool0, t0 = _cpu(), _pool_cpu(worker), time.perf_counter()
        assert worker.run_once()
        took, cpu, pool = time.perf_counter() - t0, _cpu() - cpu0, _pool_cpu(worker) - pool0
        (job,) = state.jobs()
        assert job.state == JobState.ENHANCED and job.derived_count == len(files), job.error
        state.close()
        return took, cpu, pool

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process: its threads, not its children
    return usage.ru_utime + usage.ru_stime


def _pool_cpu(worker: Worker) -> float:
    """CPU seconds so far of the worker's derive processes (0 before they start)."""
    if worker._derive is None:
        return 0.0
    ticks = 0
    for pid in list(worker._derive._executor._processes or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def model_alone(enhancer: str, files: list[Path], batch: int, threads: int, var: Path) -> float:
    """Seconds of `Pipeline.run` over the series' decoded slices (no decode, no derive): the ceiling."""
    cfg = _config(var, enhancer, 0, batch, threads)
    pipe = make_pipeline(cfg, enhancer)
    from dicom_utils.pixels import modality_frames, value_range

    first = pydicom.dcmread(files[0])
    stack = np.stack([modality_frames(pydicom.dcmread(p))[0] for p in files])
    noise = estimate_noise(stack[:: max(1, len(stack) // 12)][:12], "CT")
    vr = value_range(first)
    t0 = time.perf_counter()
    for i in range(0, len(stack), batch):
        pipe.run(stack[i : i + batch], modality="CT", value_range=vr, noise=noise, strength=STRENGTH)
    return time.perf_counter() - t0


def derive_threads(files: list[Path], threads: int, root: Path) -> float:
    """Slices/s of the derive step alone (`finish_batch`, QA gate on) for the slices of `files` spread over
    `threads` threads: whether more threads would lift the ceiling (the GIL says no)."""
    cfg = _config(root / f"threads-{threads}", "gaussian", 0, 8, 1)
    spool = LocalSpool(cfg.spool_dir)
    pipe = make_pipeline(cfg, "gaussian")
    from dicom_utils.pixels import modality_frames

    sources = [pydicom.dcmread(p) for p in files]
    before = [modality_frames(ds) for ds in sources]
    noise = estimate_noise(np.concatenate(before[:12]), "CT")
    after = [pipe.run(b, modality="CT", value_range=(-1024.0, 3071.0), noise=noise) for b in before]
    spec = SeriesSpec(1, pipe.info, Task(pipe.info.task), SeriesFacts(), derivation_options(cfg), QaSettings(),
                      "CT", noise.sigma, len(files))
    works = [
        BatchWork(spec, [Slot(InstanceKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                          str(ds.SOPInstanceUID)), i, i + 1)], [before[i]], after[i], 1.0)
        for i, ds in enumerate(sources)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: finish_batch(spool, works[i], [sources[i]]), range(len(works))))
    took = time.perf_counter() - t0
    shutil.rmtree(root / f"threads-{threads}", ignore_errors=True)
    return len(files) / took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200])
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--enhancer", default="gaussian")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="worker-job-"))
    logs.configure(level=logging.WARNING)
    print(f"worker job, {args.enhancer}, batch {args.batch_size}, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    try:
        files48 = series(48, "worker-job")
        rates = {t: derive_threads(files48, t, root) for t in (1, 2)}
        print(f"derive step alone, 48 slices: 1 thread {rates[1]:.1f} slices/s, 2 threads {rates[2]:.1f} "
              f"({rates[2] / rates[1]:.2f}x)")
        for n in args.n:
            files = series(n, "worker-job")
            runs = [Run(root, args.enhancer, p, args.batch_size, args.threads) for p in [0, *args.processes]]
            took: dict[int, list[float]] = {r.processes: [] for r in runs}
            cpu: dict[int, list[float]] = {r.processes: [] for r in runs}
            pool: dict[int, list[float]] = {r.processes: [] for r in runs}
            try:
                for r in runs:
                    r.once(files[: min(n, 16)])  # warm: the model loaded, the processes started
                for _ in range(args.repeat):
                    for r in runs:
                        seconds, used, spread = r.once(files)
                        took[r.processes].append(seconds)
                        cpu[r.processes].append(used)
                        pool[r.processes].append(spread)
            finally:
                for r in runs:
                    r.close()
            alone = model_alone(args.enhancer, files, args.batch_size, args.threads, root / "alone")
            base = n / statistics.median(took[0])
            print(f"\n{n} slices: model alone (Pipeline.run) {n / alone:7.1f} slices/s, {alone * 1000 / n:.1f} ms/slice")
            for p, times in took.items():
                rate = n / statistics.median(times)
                own = statistics.median(cpu[p]) * 1000 / n
                spread = statistics.median(pool[p]) * 1000 / n
                label = "derive thread (before)" if p == 0 else f"{p} derive processes"
                print(f"  {label:<24} {rate:7.1f} slices/s  {rate / base:5.2f}x   "
                      f"{rate / (n / alone):5.0%} of the model alone; CPU ms/slice: worker {own:5.1f} (model "
                      f"included), derive processes {spread:5.1f}   (runs: " + ", ".join(f"{t:.1f}" for t in times)
                      + " s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
