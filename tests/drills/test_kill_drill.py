"""SIGKILL drills: the kill -9 flow at three points, and the focused checks of what it exposed.

Why the focused tests exist beside the drill: a drill run hits a defect only when its random points land in
the right window; each test below sets that window up on purpose, so the defect shows on every run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.drills.common import FAST_ROUTE, DrillGateway, Modality, kill_pids, pid_alive, wait_until
from bench.drills.kill import kill_drill, plan_kills
from tests.realdata import make_series

pytestmark = pytest.mark.slow


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids of workers a test orphaned on purpose; SIGKILLed after the test if they are still running."""
    pids: list[int] = []
    yield pids
    kill_pids(p for p in pids if pid_alive(p))


@pytest.fixture
def gateway(tmp_path: Path, reaper: list[int]) -> Iterator[DrillGateway]:
    """A gateway with a folder destination; whatever it leaves running is killed after the test."""
    gw = DrillGateway(tmp_path / "gw", destinations=[{"name": "archive", "type": "folder",
                                                       "path": str(tmp_path / "archive")}],
                      routes=FAST_ROUTE, stable_seconds=0.5)
    yield gw
    if gw.alive():
        reaper += gw.worker_pids()
        gw.kill_group()


def test_plan_covers_every_stage_and_is_reproducible() -> None:
    plan = plan_kills(3, seed=11)
    assert {p.stage for p in plan} == {"receive", "enhance", "send"}
    assert {p.target for p in plan} == {"service", "group", "worker"}
    assert plan == plan_kills(3, seed=11)
    assert [p.stage for p in plan_kills(10, seed=6)] == sorted(
        (p.stage for p in plan_kills(10, seed=6)), key=("receive", "enhance", "send").index)


def test_kill_drill_three_points_loses_nothing(tmp_path: Path) -> None:
    """40 slices, SIGKILL at three seeded points (one per stage), restart each time: nothing lost or doubled."""
    result = kill_drill(tmp_path, slices=40, kills=3, seed=3, timeout=240)
    print(result.summary())
    assert result.acknowledged == 40
    assert result.passed, result.summary()


@pytest.mark.parametrize("when", ["during worker start-up", "mid-enhancement"])
def test_orphaned_worker_stops_when_its_service_is_killed(
    tmp_path: Path, gateway: DrillGateway, reaper: list[int], when: str
) -> None:
    """After a SIGKILL of the service, its enhancement worker must stop at once (at most the batch in flight).

    (A worker still importing torch may take a few seconds to notice.) Otherwise the orphan keeps enhancing the job the restarted service re-queues and hands to its own worker;
    the drill saw an orphan finish job 1 while the successor was rewriting its outgoing files, and the job was
    reported done after a send of 53 of 98 derived instances. Start-up matters too: the worker reads its
    parent's pid only after importing torch, so an orphan made during those seconds never notices.
    """
    gw = gateway
    gw.start()
    spool_out = gw.var_dir / "spool" / "outgoing"
    if when == "mid-enhancement":
        files = make_series("693_UNCR.dcm", 60, tmp_path / "in", seed="orphan")
        Modality(gw.port, files).push()
        wait_until(lambda: any(len(list(d.glob("*.dcm"))) >= 6 for d in spool_out.glob("*")), 120, interval=0.02)
    workers = wait_until(gw.worker_pids, 30, interval=0.05)
    assert workers, "the service spawned no worker"
    reaper += workers
    before = sum(len(list(d.glob("*.dcm"))) for d in spool_out.glob("*"))
    gw.kill()  # the service only: its worker is orphaned
    time.sleep(3.0)
    written = sum(len(list(d.glob("*.dcm"))) for d in spool_out.glob("*")) - before
    assert written <= 4, f"the orphaned worker wrote {written} derived files after its service died"
    gone = wait_until(lambda: not any(pid_alive(p) for p in workers), 15, interval=0.2)
    assert gone, f"worker(s) {[p for p in workers if pid_alive(p)]} still running 18 s after their service died"


def test_sigterm_after_a_worker_was_killed_stops_cleanly(gateway: DrillGateway) -> None:
    """The service replaces a SIGKILLed worker; a later SIGTERM must still stop the gateway within seconds.

    The stop signal is a multiprocessing.Event; a worker killed while waiting on it leaves the Event's
    condition counting a sleeper that will never wake, and `Event.set()` in `Gateway.stop()` waits for it.
    """
    gw = gateway
    gw.start()
    wait_until(lambda: any(e["event"] == "worker.started" for e in gw.events()), 60)
    time.sleep(1.0)  # the worker is idle, waiting on the stop event
    (worker, *_) = gw.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: sum(e["event"] == "worker.started" for e in gw.events()) >= 2, 60)
    started = time.monotonic()
    try:
        code = gw.terminate(timeout=20)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: the defect
        pytest.fail(f"SIGTERM did not stop the gateway within 20 s; last events "
                    f"{[e['event'] for e in gw.events()][-3:]}")
    assert code == 0, gw.log_text()[-2000:]
    assert time.monotonic() - started < 20
