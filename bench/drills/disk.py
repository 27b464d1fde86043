"""Drill 3: the disk under `var_dir` fills up mid-series; the gateway must refuse cleanly and recover.

Runs (each a fresh gateway whose `var_dir` is a size-limited tmpfs, when this process may mount one):
- `enospc`: watermark off (`min_free_mb = 0`): the spool write itself hits ENOSPC, the hardest path (partial
  temp files, SQLite unable to grow its WAL, the worker unable to write derived files).
- `watermark`: `min_free_mb` set above what is left: reception refuses before the disk is actually full.
Without permission to mount, one run uses the real disk with a watermark set just under its free space.

In every run a ballast file eats the free space, a modality pushes a series, and the drill checks: the first
instances are acknowledged, every later one is refused with 0xA700 (never another status, never an abort),
every acknowledged instance is complete on disk and recorded, no spool file is corrupt and no temp file is
left behind; then the ballast is deleted (space returns), the modality re-sends what was refused, and every
acknowledged instance must come out as a derived instance at the destination (a folder outside `var_dir`).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from bench.drills.common import (
    CT_SOURCE,
    FAST_ROUTE,
    DrillGateway,
    DrillResult,
    Modality,
    account,
    census,
    dataset_problem,
    destination_files,
    fill,
    gateway_errors,
    small_filesystem,
    spool_problems,
    state_integrity,
    stop_gateway,
    wait_until,
)
from gateway.storage.state import State
from tests.realdata import make_series

MB = 1_000_000


def disk_full_drill(
    work: Path, *, slices: int = 60, fs_mb: int = 64, full_seconds: float = 4.0, timeout: float = 300.0
) -> DrillResult:
    """Run the disk-full drill in `work`; returns the accounting and every broken promise.

    `full_seconds`: how long the disk stays full after the refusals, long enough for the acknowledged part
    to become a job and meet the full disk in the worker too.
    """
    started = time.monotonic()
    result = DrillResult(f"disk full ({slices} slices)")
    runs = [("enospc", 0, 12.0), ("watermark", 20, 30.0)]  # (name, min_free_mb, MB left free by the ballast)
    for name, watermark, leave in runs:
        root = work / name
        var_dir = root / "var"
        with small_filesystem(var_dir, fs_mb) as mounted:
            if not mounted:
                result.details["filesystem"] = "no permission to mount a tmpfs: watermark on the real disk"
                _run(result, root, slices, "real-disk watermark", None, 10.0, full_seconds, timeout)
                break
            result.details["filesystem"] = f"tmpfs of {fs_mb} MB mounted on var_dir"
            _run(result, root, slices, name, watermark, leave, full_seconds, timeout)
    result.seconds = time.monotonic() - started
    return result


def _run(
    result: DrillResult, root: Path, slices: int, name: str, watermark: int | None, leave_mb: float,
    full_seconds: float, timeout: float,
) -> None:
    """One run; `watermark` None means: compute one just under the real disk's free space (fallback)."""
    result.runs += 1
    files = make_series(CT_SOURCE, slices, root / "series", seed=f"disk-drill-{name}-{slices}")
    var_dir = root / "var"
    var_dir.mkdir(parents=True, exist_ok=True)
    ballast = var_dir / "ballast.bin"
    if watermark is None:  # real disk: the ballast is the space that "returns"; refuse 10 MB from now
        fill_mb = 40
        with open(ballast, "wb") as fh:
            fh.write(b"\0" * fill_mb * MB)
        watermark = max(1, int(shutil.disk_usage(var_dir).free / MB - leave_mb))
    archive = root / "archive"
    gw = DrillGateway(
        root, env={"ENHANCE_GW_MIN_FREE_MB": str(watermark)},
        destinations=[{"name": "archive", "type": "folder", "path": str(archive)}],
        routes=FAST_ROUTE, stable_seconds=1.0, sender={"base_seconds": 0.5, "cap_seconds": 2.0, "max_attempts": 100},
    )
    gw.start()
    state = State(gw.var_dir / "state.db")
    try:
        if not ballast.exists():
            fill(ballast, leave_mb)
        free_mb = shutil.disk_usage(var_dir).free / MB
        modality = Modality(gw.port, files)
        modality.push()
        acked_while_full = dict(modality.acked)
        refusals = dict(modality.refused)
        result.details[f"{name}: free MB at start, watermark"] = (round(free_mb, 1), watermark)
        result.details[f"{name}: acknowledged while full, refusals"] = (len(acked_while_full), refusals)
        result.check(bool(acked_while_full), f"{name}: nothing was acknowledged before the disk filled")
        result.check(set(refusals) == {"0xA700"},
                     f"{name}: refusals should all be 0xA700 (out of resources), got {refusals}")
        result.check(modality.broken_associations == 0, f"{name}: the association broke instead of a refusal")
        time.sleep(full_seconds)  # the acknowledged part becomes a job and meets the full disk
        for sop in acked_while_full:
            result.check(state.instance_purged(sop) is not None,
                         f"{name}: acknowledged {sop} is not in the state store")
        stored = {p.stem: p for p in (gw.var_dir / "spool" / "incoming").rglob("*.dcm")}
        for sop in acked_while_full:
            path = stored.get(sop)
            why = "missing" if path is None else dataset_problem(path)
            result.check(why is None, f"{name}: acknowledged {sop} on disk: {why}")
        corrupt = [f"{p.name}: {why}" for p in stored.values() if (why := dataset_problem(p))]
        result.check(not corrupt, f"{name}: corrupt spool files while the disk was full: {corrupt[:3]}")
        ballast.unlink()  # space returns
        stop = threading.Event()
        pusher = modality.start(stop)
        pusher.join(timeout)
        stop.set()
        result.check(not modality.unacked, f"{name}: {len(modality.unacked)} instances still refused after "
                     "space returned")
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

        def finished() -> bool:
            if state.pending_series():  # read first: once instances are in a job, that job is in jobs()
                return False
            jobs = [j for j in state.jobs() if j.series_uid == series_uid]
            return bool(jobs) and all(j.state in ("done", "dead") for j in jobs)

        result.check(bool(wait_until(finished, timeout, interval=0.25)),
                     f"{name}: jobs did not finish: {[(j.id, j.state, j.error) for j in state.jobs()]}")
        dead = [(j.id, j.error) for j in state.jobs() if j.state == "dead"]
        result.check(not dead, f"{name}: dead jobs after recovery: {dead}")
        found = census(destination_files(archive))
        account(result, modality.acked, found)
        result.derived += len(found.copies)
    finally:
        state.close()
        stop_gateway(result, gw)
        ballast.unlink(missing_ok=True)
    problems = spool_problems(gw.var_dir)
    result.check(not problems, f"{name}: spool problems after a clean stop: {problems[:3]}")
    integrity = state_integrity(gw.var_dir / "state.db")
    result.check(integrity == "ok", f"{name}: state database integrity_check: {integrity}")
    errors = gateway_errors(gw)
    result.errors.update(errors)
    result.details[f"{name}: gateway warnings/errors"] = dict(errors)


def run(work: Path, **kwargs: Any) -> DrillResult:
    """Entry point for the report script."""
    return disk_full_drill(work, **kwargs)
