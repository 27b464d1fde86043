"""State store: completion, late instances, the job life cycle, retries with backoff, crash recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import StateError
from gateway.storage.state import State, backoff_delay


def _receive(state: State, series: str, n: int, now: float, start: int = 0) -> None:
    for i in range(start, start + n):
        state.record_instance(
            sop_uid=f"1.2.3.{series}.{i}", series_uid=f"1.2.{series}", study_uid="1.2", sop_class_uid="1.2.840",
            modality="CT", path=f"/x/{i}", size=10, calling_aet="CT01", now=now,
        )


def test_series_becomes_one_job_when_quiet_and_late_instances_get_their_own(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    _receive(state, "7", 5, now=100.0)
    assert state.make_jobs_for_stable_series(10, now=105.0) == []  # still receiving
    assert state.counts()["received"] == 1
    (job_id,) = state.make_jobs_for_stable_series(10, now=111.0)
    assert state.job(job_id).instance_count == 5
    assert len(state.job_instances(job_id)) == 5
    _receive(state, "7", 2, now=200.0, start=5)  # late arrivals after the job was made
    (late,) = state.make_jobs_for_stable_series(10, now=211.0)
    assert late != job_id and [i.sop_uid for i in state.job_instances(late)] == ["1.2.3.7.5", "1.2.3.7.6"]


def test_same_sop_instance_recorded_once(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    _receive(state, "1", 1, now=1.0)
    assert not state.record_instance(
        sop_uid="1.2.3.1.0", series_uid="1.2.1", study_uid="1.2", sop_class_uid="1", modality="CT",
        path="/y", size=1, calling_aet="X",
    )
    assert state.instance_count() == 1


def test_full_life_cycle_with_retry_and_dead(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    _receive(state, "1", 3, now=1.0)
    (job_id,) = state.make_jobs_for_stable_series(0, now=2.0)
    job = state.claim_job("queued", "enhancing")
    assert job is not None and job.state == "enhancing"
    state.finish_enhancement(job_id, destinations=["a", "b"], derived_count=3, psnr=40.0, ssim=0.9, seconds=1.0)
    to_a, to_b = state.claim_delivery("a"), state.claim_delivery("b")
    assert to_a is not None and to_b is not None and to_a[0].id == to_b[0].id == job_id
    assert state.job(job_id).state == "sending"
    state.delivery_succeeded(job_id, "a")
    assert state.delivery_failed(job_id, "b", "refused", base=0, cap=0, max_attempts=2) == "pending"
    assert state.settle_job(job_id) == "failed"
    assert state.claim_delivery("a") is None  # "a" is not sent again
    claimed = state.claim_delivery("b")
    assert claimed is not None and claimed[1].destination == "b"
    assert state.delivery_failed(job_id, "b", "refused", base=0, cap=0, max_attempts=2) == "dead"
    assert state.settle_job(job_id) == "dead"
    assert state.retry(job_id) == "enhanced"
    assert state.claim_delivery("b") is not None
    state.delivery_succeeded(job_id, "b")
    assert state.settle_job(job_id) == "done"
    with pytest.raises(StateError, match="only failed or dead"):
        state.retry(job_id)


def test_recover_requeues_jobs_caught_mid_stage(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    _receive(state, "1", 1, now=1.0)
    _receive(state, "2", 1, now=1.0)
    state.make_jobs_for_stable_series(0, now=2.0)
    a = state.claim_job("queued", "enhancing")
    assert a is not None
    state.finish_enhancement(a.id, destinations=["x"], derived_count=1, psnr=None, ssim=None, seconds=0)
    assert state.claim_delivery("x") is not None
    b = state.claim_job("queued", "enhancing")
    assert b is not None
    reopened = State(tmp_path / "s.db")  # a new process after a crash
    assert reopened.recover() == {"enhancing": 1, "sending": 1}
    assert reopened.job(a.id).state == "enhanced" and reopened.job(b.id).state == "queued"


def test_enhancement_failure_backs_off_then_dies(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    _receive(state, "1", 1, now=1.0)
    state.make_jobs_for_stable_series(0, now=2.0)
    job = state.claim_job("queued", "enhancing")
    assert job is not None
    assert state.fail_job(job.id, "enhancing", "boom", base=1000, cap=2000, max_attempts=2) == "failed"
    assert state.claim_job("queued", "enhancing") is None  # not due yet
    again = state.claim_job("queued", "enhancing", now=time.time() + 5000)
    assert again is not None and again.id == job.id
    assert state.fail_job(job.id, "enhancing", "boom", base=1000, cap=2000, max_attempts=2) == "dead"
    assert state.retry(job.id) == "queued"


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_delay(n, 5, 60) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]
