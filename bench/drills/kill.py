"""Drill 1: SIGKILL a gateway process at seeded random points of one series flow, restart, count the damage.

One series (default 200 real CT slices) flows modality -> gateway -> enhancement -> dcmtk storescp. Along the
way the drill SIGKILLs, at each planned point:
- `service`: the main process only. Its spawned worker is orphaned and keeps running (the case a plain
  `kill -9 <pid>` or an OOM kill of the main process produces); the gateway is restarted at once.
- `group`: the main process and everything below it, as systemd's KillMode=control-group does; restarted.
- `worker`: the enhancement worker only; the running service must notice, re-queue and respawn on its own.

Why progress-based triggers instead of timers: a point is "70% through enhancing" or "40% of the derived
series delivered", measured from the outside (acks at the modality, derived files in the spool, files at the
destination), so every stage really gets hit whatever the machine's speed. Points are sorted along the flow
so the drill walks receive -> enhance -> send once, restarting after each kill.

The modality re-sends whatever was not acknowledged, like a real one. At the end every acknowledged instance
must have exactly one derived instance UID at the destination (lost = 0, duplicates = 0); same-UID re-sends
after a restart are counted apart (`resent`): at-least-once delivery is the design, a PACS keeps one copy.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.drills.common import (
    CT_SOURCE,
    FAST_ROUTE,
    CountingSCP,
    DrillGateway,
    DrillResult,
    Modality,
    account,
    census,
    destination_files,
    gateway_errors,
    holds,
    kill_pids,
    pid_alive,
    spool_problems,
    state_integrity,
    stop_gateway,
    wait_until,
)
from gateway.storage.state import State
from tests.realdata import make_series

STAGES = ("receive", "enhance", "send")
TARGETS = ("service", "group", "worker")


@dataclass(frozen=True)
class KillPoint:
    """Where to strike: a stage of the flow, how far into it (0..1), and which process."""

    stage: str
    fraction: float
    target: str

    def __str__(self) -> str:
        return f"{self.target}@{self.stage}:{self.fraction:.2f}"


def plan_kills(count: int, seed: int) -> list[KillPoint]:
    """`count` seeded random kill points, sorted along the flow; every stage and target appears when count >= 3.

    The first three points cover each stage once (with shuffled targets) so a short CI run still crosses
    receive, enhance and send; the rest are uniform.
    """
    rng = random.Random(seed)
    targets = list(TARGETS)
    rng.shuffle(targets)
    points = [KillPoint(stage, round(rng.uniform(0.1, 0.9), 2), targets[i]) for i, stage in enumerate(STAGES)]
    points = points[:count]
    while len(points) < count:
        points.append(KillPoint(rng.choice(STAGES), round(rng.uniform(0.05, 0.95), 2), rng.choice(TARGETS)))
    return sorted(points, key=lambda p: (STAGES.index(p.stage), p.fraction))


class _Flow:
    """The running flow: the gateway, its state store, the modality and the destination, plus trigger probes."""

    def __init__(self, gw: DrillGateway, scp: CountingSCP, modality: Modality, slices: int) -> None:
        self.gw = gw
        self.scp = scp
        self.modality = modality
        self.slices = slices
        self.state = State(gw.var_dir / "state.db")
        self.send_base: dict[int, int] = {}  # job id -> destination files when its current send attempt began
        self.copies_at_finish: int | None = None  # destination files when a kill first found the flow finished

    def progress(self, stage: str) -> float | None:
        """How far `stage` is (0..1), or None when that stage is not running right now."""
        if stage == "receive":
            return len(self.modality.acked) / self.slices if self.modality.unacked else None
        if stage == "enhance":
            for job in self.state.jobs("enhancing"):
                out = self.gw.var_dir / "spool" / "outgoing" / str(job.id)
                done = len(list(out.glob("*.dcm"))) if out.exists() else 0
                return done / max(1, job.instance_count)
            return None
        for job in self.state.jobs("sending"):
            base = self.send_base.setdefault(job.id, self.scp.copies())
            return (self.scp.copies() - base) / max(1, job.derived_count or job.instance_count)
        return None

    def finished(self) -> bool:
        if self.modality.unacked or self.state.pending_series():
            return False
        jobs = self.state.jobs()
        return bool(jobs) and all(j.state in ("done", "dead", "skipped") for j in jobs)


def kill_drill(
    work: Path,
    *,
    slices: int = 200,
    kills: int = 10,
    seed: int = 6,
    stable_seconds: float = 1.0,
    timeout: float = 900.0,
) -> DrillResult:
    """Run the kill -9 drill in `work` (created); returns the accounting and every broken promise."""
    started = time.monotonic()
    result = DrillResult(f"kill -9 ({slices} slices)", runs=kills)
    plan = plan_kills(kills, seed)
    result.details["plan"] = [str(p) for p in plan]
    files = make_series(CT_SOURCE, slices, work / "series", seed=f"kill-drill-{seed}-{slices}")
    stop = threading.Event()
    orphans: list[int] = []
    struck: list[str] = []
    with CountingSCP(work / "destination") as scp:
        gw = DrillGateway(
            work / "gateway", destinations=[scp.destination()], routes=FAST_ROUTE, stable_seconds=stable_seconds,
            sender={"base_seconds": 0.5, "cap_seconds": 2.0, "max_attempts": 50},
        )
        gw.start()
        modality = Modality(gw.port, files)
        pusher = modality.start(stop)
        flow = _Flow(gw, scp, modality, slices)
        try:
            for point in plan:
                where = _strike(flow, point, orphans, deadline=time.monotonic() + timeout / 2)
                if where is None:
                    result.errors["kill point not reached"] += 1
                    struck.append(f"{point}: not reached")
                    continue
                struck.append(f"{point}: {where}")
            done = holds(flow.finished, timeout - (time.monotonic() - started))
            result.check(bool(done), f"the flow did not finish within {timeout:.0f} s: jobs "
                         f"{[(j.id, j.state) for j in flow.state.jobs()]}, unacked {len(modality.unacked)}")
            dead = [j.id for j in flow.state.jobs() if j.state == "dead"]
            result.check(not dead, f"job(s) {dead} ended dead")
            time.sleep(0.5)  # storescp finishes writing the file it answered for
            if flow.copies_at_finish is not None:
                again = scp.copies() - flow.copies_at_finish
                result.check(again == 0, f"{again} instances sent again after a restart of a finished flow")
        finally:
            stop.set()
            pusher.join(30)
            survivors = [p for p in orphans if pid_alive(p)]
            clean = stop_gateway(result, gw)
            kill_pids(survivors)
        result.check(not survivors, f"orphaned worker(s) {survivors} still running at the end of the drill")
        found = census(destination_files(scp.out_dir))
        account(result, modality.acked, found)
        result.derived = len(found.copies)
        jobs = flow.state.jobs()
        flow.state.close()
        problems = spool_problems(gw.var_dir, after_clean_stop=clean)
        result.check(not problems, f"spool problems after the drill: {problems[:3]}")
        integrity = state_integrity(gw.var_dir / "state.db")
        result.check(integrity == "ok", f"state database integrity_check: {integrity}")
        result.errors.update(gateway_errors(gw))
        early = premature_done(gw.events())
        result.check(not early, "; ".join(early))
        result.details.update(
            struck=struck,
            jobs=[(j.id, j.state, j.instance_count, j.derived_count) for j in jobs],
            modality_associations=modality.associations,
            modality_broken_associations=modality.broken_associations,
            destination_files=found.files,
            orphans=orphans,
        )
    result.seconds = time.monotonic() - started
    return result


def _strike(flow: _Flow, point: KillPoint, orphans: list[int], deadline: float) -> str | None:
    """Wait until `point` is reached, SIGKILL its target, restart when needed; returns where it struck.

    A stage can end before its point comes (a send of 200 instances takes well under a second): then the kill
    lands as soon as the flow is seen finished, which checks the other promise, that a restart after
    completion sends nothing again. None when nothing could be struck before `deadline`.
    """
    where: str | None = None

    def reached() -> bool:
        nonlocal where
        progress = flow.progress(point.stage)
        if progress is not None and progress >= point.fraction:
            where = f"{point.stage} at {progress:.2f}"
            return True
        if flow.finished():
            where = "after the flow finished (stage passed)"
            if flow.copies_at_finish is None:
                flow.copies_at_finish = flow.scp.copies()
            return True
        return False

    while not reached():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    gw = flow.gw
    if point.target == "worker":
        pids = wait_until(gw.worker_pids, 30, interval=0.02)
        if not pids:
            return None  # no worker to kill (the service keeps failing to start one): reported as not reached
        kill_pids(pids[:1])
    elif point.target == "group":
        gw.kill_group()
        gw.start()
    else:
        orphans += gw.worker_pids()
        gw.kill()
        gw.start()
    flow.send_base.clear()
    return where


def premature_done(events: list[dict[str, Any]]) -> list[str]:
    """Jobs the gateway reported done although its last successful send carried fewer derived instances.

    Why from the log: `send.done` says how many files went out and `job.done` how many were derived; a job
    that is done after a partial send will never send the rest (recovery only re-queues unfinished jobs).
    """
    sent: dict[Any, int] = {}
    out = []
    for event in events:
        job = event.get("job_id")
        if event.get("event") == "send.done":
            sent[job] = int(event.get("instances") or 0)
        elif event.get("event") == "job.done":
            derived = int(event.get("derived") or 0)
            if sent.get(job, 0) < derived:
                out.append(f"job {job} reported done after a send of {sent.get(job, 0)} of {derived} derived instances")
    return out


def run(work: Path, **kwargs: Any) -> DrillResult:
    """Entry point for the report script."""
    return kill_drill(work, **kwargs)
