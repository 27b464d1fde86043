"""Ownership helpers: worker ids, a dead owner on this host, the heartbeat that renews leases and notices a
takeover. Run against every state store implementation (`open_store`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from gateway.storage.lease import Heartbeat, dead_here, new_worker_id, recover_dead
from gateway.storage.state import JobState, StateStore
from tests.gateway.storage.conftest import OpenStore


def _gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claim(state: StateStore, series: str) -> int:
    state.record_instance(sop_uid=f"1.2.3.{series}", series_uid=f"1.2.{series}", study_uid="1.2",
                          sop_class_uid="1.2.840", modality="CT", size=1, calling_aet="CT01", now=1.0)
    state.make_jobs_for_stable_series(0, now=2.0)
    job = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert job is not None
    return job.id


def test_a_worker_id_names_host_and_pid_and_differs_per_call() -> None:
    a, b = new_worker_id(), new_worker_id()
    host, pid, suffix = a.split(":")
    assert (host, int(pid), len(suffix)) == (socket.gethostname(), os.getpid(), 6) and a != b


def test_dead_here_only_for_a_gone_process_on_this_host() -> None:
    host = socket.gethostname()
    assert dead_here(f"{host}:{_gone_pid()}:abcdef")
    assert not dead_here(f"{host}:{os.getpid()}:abcdef")
    assert not dead_here(f"another-{host}:{_gone_pid()}:abcdef")  # elsewhere: its lease decides
    assert not dead_here("1234")  # a pid-era owner: its missing lease decides


def test_recover_dead_takes_a_gone_local_owners_jobs_at_once_and_leaves_live_ones(open_store: OpenStore) -> None:
    host = socket.gethostname()
    gone, live, remote = (open_store(worker_id=w) for w in (
        f"{host}:{_gone_pid()}:aaaaaa", f"{host}:{os.getpid()}:bbbbbb", f"elsewhere:{os.getpid()}:cccccc"))
    jobs = [_claim(s, str(i)) for i, s in enumerate((gone, live, remote))]
    service = open_store(worker_id=f"{host}:{os.getpid()}:dddddd")
    assert recover_dead(service) == {"enhancing": 1, "sending": 0}
    assert [service.job(j).state for j in jobs] == [JobState.QUEUED, JobState.ENHANCING, JobState.ENHANCING]


def test_the_heartbeat_renews_held_leases_and_reports_a_takeover(open_store: OpenStore) -> None:
    mine = open_store(worker_id="node-a:1:aaaaaa")
    job_id = _claim(mine, "1")
    beat = Heartbeat(mine, mine.lease_seconds)
    beat.hold(job_id)
    first = mine.job(job_id).lease_expires_at
    assert first is not None
    time.sleep(0.01)  # a later renewal; the assertion compares expiries, not durations
    beat.renew_now()
    renewed = mine.job(job_id).lease_expires_at
    assert renewed is not None and renewed > first and not beat.lost(job_id)
    other = open_store(worker_id="node-b:1:bbbbbb")
    assert other.recover(now=renewed + 1)["enhancing"] == 1
    assert other.claim_job(JobState.QUEUED, JobState.ENHANCING) is not None
    beat.renew_now()
    assert beat.lost(job_id) and other.job(job_id).owner == "node-b:1:bbbbbb"
    beat.drop(job_id)
    beat.renew_now()  # nothing held: nothing renewed, nothing reported
