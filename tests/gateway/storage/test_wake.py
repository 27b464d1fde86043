"""Idle workers and senders are woken when work appears (`StateStore.wait_for_work`), polling only as a fallback:
on PostgreSQL a NOTIFY from another connection ends the wait (`gateway.storage.pg_wake`), the embedded SQLite
store only sleeps its timeout (one node: behaviour unchanged), and a loop asked to stop never sits out its poll
interval (`idle_wait`). The last test runs the real worker process and sender loop with an hour-long poll
interval on the real server: the series is enhanced and delivered anyway, and both stop at once when told.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest

from gateway.deliver import sender as sender_mod
from gateway.deliver.sender import Sender
from gateway.enhance import worker as worker_mod
from gateway.settings import parse
from gateway.storage.local_spool import LocalSpool
from gateway.storage.pg_wake import DELIVERIES_CHANNEL
from gateway.storage.postgres_state import PostgresState
from gateway.storage.spool import InstanceKey
from gateway.storage.sqlite_state import SqliteState
from gateway.storage.state import JobState, StateStore, WorkKind, idle_wait
from tests.gateway.harness import DATA_FLOW_QA, wait_for
from tests.realdata import make_series

HOUR = 3600.0  # a poll interval no test outlives: whatever finishes was woken, not polled


@pytest.fixture
def open_pg(postgres_url: str) -> Iterator[Callable[[], PostgresState]]:
    """Stores on the test's database, each with its own pool and listener (another node); closed at the end."""
    opened: list[PostgresState] = []

    def open_store() -> PostgresState:
        opened.append(PostgresState(postgres_url))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


def _queue_job(state: StateStore, series: str) -> None:
    state.record_instance(sop_uid=f"1.2.3.{series}.1", series_uid=f"1.2.{series}", study_uid="1.2",
                          sop_class_uid="1.2.840", modality="CT", size=10, calling_aet="CT01", now=1.0)
    assert len(state.make_jobs_for_stable_series(0, now=2.0)) == 1


def _listen(store: PostgresState) -> None:
    """Start the store's listener and wait until LISTEN is in effect (a NOTIFY sent before would be missed)."""
    assert not store.wait_for_work(WorkKind.JOBS, 0)
    assert store._listener.listening.wait(30)


def _in_thread(wait: Callable[[], bool]) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(wait()), daemon=True)
    thread.start()
    return thread, result


# --- PostgreSQL: a NOTIFY ends the wait ---------------------------------------------------------------------


def test_a_waiting_worker_wakes_when_another_node_queues_a_job(open_pg: Callable[[], PostgresState]) -> None:
    worker, receiver = open_pg(), open_pg()
    _listen(worker)
    waiting, woke = _in_thread(lambda: worker.wait_for_work(WorkKind.JOBS, HOUR))
    _queue_job(receiver, "1")   # commits on another connection, with its NOTIFY
    waiting.join()
    assert woke == [True]       # woken, not timed out
    assert worker.claim_job(JobState.QUEUED, JobState.ENHANCING) is not None


def test_a_notification_while_busy_or_before_a_threads_first_wait_is_kept(
    open_pg: Callable[[], PostgresState],
) -> None:
    worker, sender = open_pg(), open_pg()
    _queue_job(worker, "1")
    job = worker.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert job is not None
    _listen(sender)
    assert not sender.wait_for_work(WorkKind.DELIVERIES, 0)  # this thread has waited: it counts from here
    # Announced while no thread of the sender waits: this thread's next wait returns at once, and so does the
    # first wait of a thread that starts waiting only after the notification was counted.
    worker.finish_enhancement(job.id, destinations=["x"], derived_count=1, psnr=None, ssim=None, seconds=0)
    assert sender.wait_for_work(WorkKind.DELIVERIES, HOUR)
    late, woke = _in_thread(lambda: sender.wait_for_work(WorkKind.DELIVERIES, HOUR))
    late.join()
    assert woke == [True]
    assert sender.claim_delivery("x") is not None
    assert not sender.wait_for_work(WorkKind.JOBS, 0.05)  # a delivery wakes no job waiter: nothing to enhance


def test_closing_a_postgresql_store_ends_its_waits(open_pg: Callable[[], PostgresState]) -> None:
    store = open_pg()
    _listen(store)
    waiting, woke = _in_thread(lambda: store.wait_for_work(WorkKind.JOBS, HOUR))
    store.close()
    waiting.join()
    assert woke == [False]


# --- SQLite: a sleep, as before -----------------------------------------------------------------------------


def test_sqlite_sleeps_its_timeout_and_answers_false_even_when_work_appears(tmp_path: Path) -> None:
    worker, receiver = SqliteState(tmp_path / "state.db"), SqliteState(tmp_path / "state.db")
    try:
        _queue_job(receiver, "1")
        started = time.monotonic()
        assert not worker.wait_for_work(WorkKind.JOBS, 0.2)
        assert time.monotonic() - started >= 0.2  # it slept the poll interval: the caller polls as it always did
        assert worker.claim_job(JobState.QUEUED, JobState.ENHANCING) is not None
    finally:
        worker.close()
        receiver.close()


def test_closing_a_sqlite_store_ends_its_waits(tmp_path: Path) -> None:
    store = SqliteState(tmp_path / "state.db")
    waiting, woke = _in_thread(lambda: store.wait_for_work(WorkKind.DELIVERIES, HOUR))
    store.close()
    waiting.join()
    assert woke == [False]


def test_idle_wait_ends_when_the_loop_is_asked_to_stop(tmp_path: Path) -> None:
    store = SqliteState(tmp_path / "state.db")
    stop = threading.Event()
    try:
        waiting, woke = _in_thread(lambda: idle_wait(store, WorkKind.JOBS, HOUR, stop.is_set))
        stop.set()
        waiting.join()
        assert woke == [False]
        assert not idle_wait(store, WorkKind.JOBS, HOUR, stop.is_set)  # already stopped: no wait at all
    finally:
        store.close()


# --- the real loops with an hour-long poll interval -----------------------------------------------------------


def _listeners(url: str) -> int:
    """Listener connections of the test's database whose LISTEN on every channel is in effect (the deliveries
    channel is the last one each listener subscribes to, and the connection is idle once it has)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'enhance-gateway-listen' AND state = 'idle' AND query = %s",
            (f'LISTEN "{DELIVERIES_CHANNEL}"',),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_worker_process_and_sender_take_work_at_once_with_an_hour_long_poll(tmp_path: Path, postgres_url: str) -> None:
    archive = tmp_path / "archive"
    cfg = parse({
        "gateway": {"var_dir": str(tmp_path / "var"), "min_free_mb": 0},
        "state": {"url": postgres_url},
        "destinations": [{"name": "archive", "type": "folder", "path": str(archive)}],
        "routes": [{"enhancer": "gaussian"}],
        "enhance": {"workers": 1, "batch_size": 4, "threads": 1},
        "qa": DATA_FLOW_QA,
    }, environ={})
    cfg.var_dir.mkdir(parents=True)
    spool = LocalSpool(cfg.spool_dir)
    feeder, sending = PostgresState(postgres_url), PostgresState(postgres_url)
    worker = multiprocessing.get_context("spawn").Process(
        target=worker_mod.run, args=(cfg, os.getpid(), HOUR), name="enhance-worker", daemon=True)
    stop = threading.Event()
    loop = threading.Thread(target=sender_mod.run_loop, args=(Sender(cfg, sending, spool), stop, HOUR), daemon=True)
    worker.start()
    loop.start()
    try:
        # Both found nothing to do at start and now sleep for an hour, listening.
        wait_for(lambda: _listeners(postgres_url) == 2, 120, "the worker's and the sender's LISTEN")
        files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed="pg-wake")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            size = spool.put(InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                             path.read_bytes())
            feeder.record_instance(sop_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID,
                                   study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID, modality="CT",
                                   size=size, calling_aet="TEST")
        (job_id,) = feeder.make_jobs_for_stable_series(0)
        done: Any = wait_for(lambda: feeder.job(job_id).state in (JobState.DONE, JobState.FAILED, JobState.DEAD)
                             and feeder.job(job_id), 300, "the job to be enhanced and delivered")
        assert (done.state, done.derived_count) == (JobState.DONE, 3), done.error
        assert len(list(archive.rglob("*.dcm"))) == 3
    finally:
        # Both are back in their hour-long idle wait: asked to stop, they stop now.
        worker.terminate()
        stop.set()
        worker.join(60)
        loop.join(60)
        feeder.close()
    assert (worker.exitcode, loop.is_alive()) == (0, False)
    sending.close()
