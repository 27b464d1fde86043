"""Drill 2: the destination PACS goes away and comes back; everything must arrive once, with visible backoff.

Two runs against a real Orthanc (it keeps its storage and ports across a restart, like a PACS after a reboot):
- `down before send`: Orthanc is stopped before the series arrives and stays down `down_seconds` after the
  gateway's first failed send; then it comes back.
- `crash mid-send`: Orthanc is SIGKILLed once it holds about half of the derived series, and restarted after
  the gateway noticed.

Why Orthanc and not storescp here: it stores by SOP Instance UID, so "delivered once" is what a site would
check (the PACS shows each derived image once, in one derived series), and it comes back on the same ports.
Backoff must be visible to an admin in the logs: `job.retry_scheduled` events whose `next_try_in` grows up
to `cap_seconds`, and `send.failed` events spaced further and further apart.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pydicom

from bench.drills.common import (
    CT_SOURCE,
    FAST_ROUTE,
    Census,
    DrillGateway,
    DrillResult,
    Modality,
    account,
    gateway_errors,
    spool_problems,
    stop_gateway,
    wait_until,
)
from gateway.storage.state import State
from tests.peers import Orthanc
from tests.realdata import make_series

BASE_SECONDS = 0.5
CAP_SECONDS = 8.0


def orthanc_census(orthanc: Orthanc, study_uid: str) -> Census:
    """Derived instances of a study as Orthanc holds them (one copy per SOP Instance UID by construction)."""
    found = Census()
    for series in orthanc.study_series(study_uid):
        for instance_id in series["Instances"]:
            tags = orthanc.get(f"/instances/{instance_id}/tags?simplify")
            try:
                source = str(tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"])
            except (KeyError, IndexError, TypeError):
                found.unreadable.append(f"{instance_id}: no Source Image Sequence")
                continue
            sop = str(tags["SOPInstanceUID"])
            found.copies[sop] += 1
            found.series.add(str(tags["SeriesInstanceUID"]))
            found.by_source.setdefault(source, set()).add(sop)
    return found


def _when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def destination_drill(
    work: Path, *, slices: int = 200, down_seconds: float = 10.0, timeout: float = 600.0
) -> DrillResult:
    """Run both destination-outage runs in `work`; returns the accounting and every broken promise."""
    started = time.monotonic()
    result = DrillResult(f"destination down ({slices} slices)", runs=2)
    series = {
        name: make_series(CT_SOURCE, slices, work / f"series-{name}", seed=f"dest-drill-{name}-{slices}")
        for name in ("down", "crash")
    }
    with Orthanc(work / "orthanc") as orthanc:
        gw = DrillGateway(
            work / "gateway",
            destinations=[{"name": "pacs", "type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                           "port": orthanc.dicom_port}],
            routes=FAST_ROUTE, stable_seconds=1.0,
            sender={"base_seconds": BASE_SECONDS, "cap_seconds": CAP_SECONDS, "max_attempts": 60},
        )
        orthanc.stop(graceful=False)
        gw.start()
        state = State(gw.var_dir / "state.db")
        try:
            _down_before_send(result, gw, state, orthanc, series["down"], down_seconds, timeout)
            _crash_mid_send(result, gw, state, orthanc, series["crash"], timeout)
        finally:
            state.close()
            stop_gateway(result, gw)
        problems = spool_problems(gw.var_dir)
        result.check(not problems, f"spool problems: {problems[:3]}")
        result.errors.update(gateway_errors(gw))
    result.seconds = time.monotonic() - started
    return result


def _push_all(gw: DrillGateway, files: list[Path], timeout: float) -> Modality:
    modality = Modality(gw.port, files)
    stop = threading.Event()
    thread = modality.start(stop)
    thread.join(timeout)
    stop.set()
    return modality


def _series_jobs(state: State, files: list[Path]) -> tuple[str, list[Any]]:
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    jobs = [j for j in state.jobs() if j.series_uid == head.SeriesInstanceUID]
    return str(head.StudyInstanceUID), jobs


def _wait_done(state: State, files: list[Path], timeout: float) -> list[Any]:
    def done() -> list[Any] | None:
        if state.pending_series():  # read first: once instances are in a job, that job is in the job list
            return None
        _, jobs = _series_jobs(state, files)
        ready = jobs and all(j.state in ("done", "dead") for j in jobs)
        return jobs if ready else None

    return wait_until(done, timeout, interval=0.25) or _series_jobs(state, files)[1]


def _down_before_send(
    result: DrillResult, gw: DrillGateway, state: State, orthanc: Orthanc, files: list[Path],
    down_seconds: float, timeout: float,
) -> None:
    modality = _push_all(gw, files, timeout)
    result.check(not modality.unacked, f"down-before-send: {len(modality.unacked)} instances never acknowledged")
    first_failure = wait_until(lambda: [e for e in gw.events() if e["event"] == "send.failed"], timeout)
    result.check(bool(first_failure), "down-before-send: no send.failed event while the PACS was down")
    deadline = time.monotonic() + down_seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
    orthanc.start()
    jobs = _wait_done(state, files, timeout)
    study_uid, _ = _series_jobs(state, files)
    result.check(all(j.state == "done" for j in jobs), f"down-before-send: jobs {[(j.id, j.state) for j in jobs]}")
    job_ids = {j.id for j in jobs}
    events = [e for e in gw.events() if e.get("job_id") in job_ids]
    retries = [float(e["next_try_in"]) for e in events
               if e["event"] == "job.retry_scheduled" and e.get("next_try_in") is not None]
    failures = [_when(e) for e in events if e["event"] == "send.failed"]
    gaps = [round(b - a, 2) for a, b in pairwise(failures)]
    sends = [e for e in events if e["event"] == "send.done" and e.get("destination") == "pacs"]
    result.details["down-before-send next_try_in"] = retries
    result.details["down-before-send gaps between send.failed (s)"] = gaps
    result.check(len(retries) >= 3, f"down-before-send: only {len(retries)} job.retry_scheduled events")
    result.check(all(b >= a - 0.3 for a, b in pairwise(retries)),
                 f"down-before-send: next_try_in does not grow: {retries}")
    result.check(bool(retries) and retries[-1] > retries[0] and max(retries) <= CAP_SECONDS + 0.5,
                 f"down-before-send: backoff not growing up to the cap {CAP_SECONDS}: {retries}")
    result.check(len(gaps) >= 2 and gaps[-1] > gaps[0], f"down-before-send: send.failed not spaced out: {gaps}")
    result.check(len(sends) == 1, f"down-before-send: {len(sends)} successful sends, expected exactly 1")
    found = wait_until(lambda: _complete(orthanc, study_uid, len(files)), 60, interval=0.5) or orthanc_census(
        orthanc, study_uid)
    account(result, modality.acked, found)
    result.derived += len(found.copies)
    result.check(found.files == len(files), f"down-before-send: Orthanc holds {found.files} derived instances, "
                 f"expected {len(files)}")


def _complete(orthanc: Orthanc, study_uid: str, count: int) -> Census | None:
    found = orthanc_census(orthanc, study_uid)
    return found if found.files >= count else None


def _crash_mid_send(
    result: DrillResult, gw: DrillGateway, state: State, orthanc: Orthanc, files: list[Path], timeout: float
) -> None:
    before = orthanc.count_instances()
    failed_before = sum(1 for e in gw.events() if e["event"] == "send.failed")
    modality = _push_all(gw, files, timeout)
    result.check(not modality.unacked, f"crash-mid-send: {len(modality.unacked)} instances never acknowledged")
    half = wait_until(lambda: orthanc.count_instances() - before >= len(files) // 2, timeout, interval=0.02)
    result.check(bool(half), "crash-mid-send: the derived series never started arriving")
    result.details["crash-mid-send: derived instances in Orthanc when killed"] = orthanc.count_instances() - before
    orthanc.kill()
    noticed = wait_until(
        lambda: sum(1 for e in gw.events() if e["event"] == "send.failed") > failed_before, 120, interval=0.2)
    result.check(bool(noticed), "crash-mid-send: the gateway did not notice the PACS crash")
    time.sleep(2.0)
    orthanc.start()
    jobs = _wait_done(state, files, timeout)
    study_uid, _ = _series_jobs(state, files)
    result.check(all(j.state == "done" for j in jobs), f"crash-mid-send: jobs {[(j.id, j.state) for j in jobs]}")
    found = wait_until(lambda: _complete(orthanc, study_uid, len(files)), 60, interval=0.5) or orthanc_census(
        orthanc, study_uid)
    account(result, modality.acked, found)
    result.derived += len(found.copies)
    result.check(found.files == len(files), f"crash-mid-send: Orthanc holds {found.files} derived instances, "
                 f"expected {len(files)}")


def run(work: Path, **kwargs: Any) -> DrillResult:
    """Entry point for the report script."""
    return destination_drill(work, **kwargs)
