"""The state store contract, run against every implementation (`open_store` in conftest.py): completion, late
instances, the job life cycle, retries with backoff, ownership by worker id and lease, crash recovery."""

from __future__ import annotations

import time

import pytest

from gateway.errors import StateError
from gateway.storage.state import (
    DeliveryState,
    JobState,
    JobTakenOver,
    QaAction,
    QaOutcome,
    QaVerdict,
    StateStore,
    backoff_delay,
)
from tests.gateway.storage.conftest import OpenStore


def _receive(state: StateStore, series: str, n: int, now: float, start: int = 0) -> None:
    for i in range(start, start + n):
        state.record_instance(
            sop_uid=f"1.2.3.{series}.{i}", series_uid=f"1.2.{series}", study_uid="1.2", sop_class_uid="1.2.840",
            modality="CT", size=10, calling_aet="CT01", now=now,
        )


def test_series_becomes_one_job_when_quiet_and_late_instances_get_their_own(store: StateStore) -> None:
    state = store
    _receive(state, "7", 5, now=100.0)
    assert state.make_jobs_for_stable_series(10, now=105.0) == []  # still receiving
    assert state.counts()["received"] == 1
    (job_id,) = state.make_jobs_for_stable_series(10, now=111.0)
    assert state.job(job_id).instance_count == 5
    assert len(state.job_instances(job_id)) == 5
    _receive(state, "7", 2, now=200.0, start=5)  # late arrivals after the job was made
    (late,) = state.make_jobs_for_stable_series(10, now=211.0)
    assert late != job_id and [i.sop_uid for i in state.job_instances(late)] == ["1.2.3.7.5", "1.2.3.7.6"]


def test_same_sop_instance_recorded_once(store: StateStore) -> None:
    state = store
    _receive(state, "1", 1, now=1.0)
    assert not state.record_instance(
        sop_uid="1.2.3.1.0", series_uid="1.2.1", study_uid="1.2", sop_class_uid="1", modality="CT",
        size=1, calling_aet="X",
    )
    assert state.instance_count() == 1


def test_full_life_cycle_with_retry_and_dead(store: StateStore) -> None:
    state = store
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


def test_recover_requeues_jobs_caught_mid_stage(store: StateStore, open_store: OpenStore) -> None:
    state = store
    _receive(state, "1", 1, now=1.0)
    _receive(state, "2", 1, now=1.0)
    state.make_jobs_for_stable_series(0, now=2.0)
    a = state.claim_job("queued", "enhancing")
    assert a is not None
    state.finish_enhancement(a.id, destinations=["x"], derived_count=1, psnr=None, ssim=None, seconds=0)
    assert state.claim_delivery("x") is not None
    b = state.claim_job("queued", "enhancing")
    assert b is not None
    reopened = open_store()  # a new process after a crash
    assert reopened.recover() == {"enhancing": 0, "sending": 0}  # the leases still run: the owner may be alive
    assert reopened.recover(now=time.time() + state.lease_seconds + 1) == {"enhancing": 1, "sending": 1}
    assert reopened.job(a.id).state == "enhanced" and reopened.job(b.id).state == "queued"
    assert reopened.job(b.id).owner is None and reopened.deliveries(a.id)[0].state == DeliveryState.PENDING


def test_enhancement_failure_backs_off_then_dies(store: StateStore) -> None:
    state = store
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


def _claimed(state: StateStore, series: str = "1") -> int:
    _receive(state, series, 1, now=1.0)
    (job_id,) = state.make_jobs_for_stable_series(0, now=2.0)
    job = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert job is not None and job.id == job_id
    return job_id


def test_a_claim_belongs_to_a_worker_id_with_a_lease_that_only_its_owner_renews(open_store: OpenStore) -> None:
    mine, other = open_store(worker_id="node-a:10:aaaaaa"), open_store(worker_id="node-b:10:bbbbbb")
    before = time.time()
    job_id = _claimed(mine)
    job = mine.job(job_id)
    assert job.owner == "node-a:10:aaaaaa" and job.state is JobState.ENHANCING
    assert job.lease_expires_at is not None and job.lease_expires_at >= before + mine.lease_seconds
    assert mine.lease_holders() == ["node-a:10:aaaaaa"]
    assert mine.renew_lease(job_id, "node-a:10:aaaaaa")
    assert not other.renew_lease(job_id, "node-b:10:bbbbbb")  # not its claim: nothing changes
    assert other.job(job_id).owner == "node-a:10:aaaaaa"


def test_an_expired_lease_hands_the_job_to_another_worker_and_the_old_owner_cannot_finish_it(
    open_store: OpenStore,
) -> None:
    dead, alive = open_store(worker_id="node-a:10:aaaaaa"), open_store(worker_id="node-b:20:bbbbbb")
    job_id = _claimed(dead)
    expiry = dead.job(job_id).lease_expires_at
    assert expiry is not None
    assert alive.recover(now=expiry - 1) == {"enhancing": 0, "sending": 0}
    assert alive.recover(now=expiry + 1) == {"enhancing": 1, "sending": 0}
    taken = alive.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert taken is not None and taken.id == job_id and taken.owner == "node-b:20:bbbbbb"
    assert not dead.renew_lease(job_id, dead.worker_id)  # its heartbeat learns it lost the job
    with pytest.raises(JobTakenOver):
        dead.finish_enhancement(job_id, destinations=["x"], derived_count=1, psnr=None, ssim=None, seconds=0)
    assert dead.fail_job(job_id, JobState.ENHANCING, "late", base=1, cap=1, max_attempts=3) is JobState.ENHANCING
    assert not dead.requeue_job(job_id, "waiting for disk space")
    assert alive.finish_enhancement(job_id, destinations=["x"], derived_count=1, psnr=None, ssim=None,
                                    seconds=0) is JobState.ENHANCED


def test_recover_by_owner_takes_only_that_owners_jobs_whatever_their_lease(open_store: OpenStore) -> None:
    a, b = open_store(worker_id="h:1:aaaaaa"), open_store(worker_id="h:2:bbbbbb")
    job_a, job_b = _claimed(a, "1"), _claimed(b, "2")
    assert a.recover(owner="h:2:bbbbbb") == {"enhancing": 1, "sending": 0}
    assert a.job(job_b).state is JobState.QUEUED and a.job(job_a).state is JobState.ENHANCING


def test_a_sending_job_of_a_dead_owner_goes_back_with_its_deliveries_in_flight(open_store: OpenStore) -> None:
    service = open_store(worker_id="h:1:aaaaaa")
    job_id = _claimed(service)
    service.finish_enhancement(job_id, destinations=["x", "y"], derived_count=1, psnr=None, ssim=None, seconds=0)
    assert service.claim_delivery("x") is not None
    assert service.job(job_id).owner == "h:1:aaaaaa"
    restarted = open_store(worker_id="h:9:cccccc")
    assert restarted.recover(owner="h:1:aaaaaa") == {"enhancing": 0, "sending": 1}
    assert restarted.job(job_id).state is JobState.ENHANCED
    assert {d.destination: d.state for d in restarted.deliveries(job_id)} == {
        "x": DeliveryState.PENDING, "y": DeliveryState.PENDING}
    again = restarted.claim_delivery("x")
    assert again is not None and again[0].owner == "h:9:cccccc"


def test_values_come_back_as_enums_and_dataclasses(store: StateStore) -> None:
    job_id = _claimed(store)
    outcome = QaOutcome(qa_verdict=QaVerdict.WARN, qa_action=QaAction.FLAG, qa_reasons="r")
    store.finish_enhancement(job_id, destinations=["x"], derived_count=1, psnr=None, ssim=None, seconds=0, qa=outcome)
    job = store.job(job_id)
    assert job.state is JobState.ENHANCED and job.qa_verdict is QaVerdict.WARN and job.qa_action is QaAction.FLAG
    assert store.deliveries(job_id)[0].state is DeliveryState.PENDING
    _receive(store, "9", 2, now=50.0)
    (pending,) = store.pending_series()
    assert (pending.series_uid, pending.instances, pending.first_at, pending.last_at) == ("1.2.9", 2, 50.0, 50.0)
    (study,) = store.studies()
    assert (study.study_uid, study.series, study.instances) == ("1.2", 2, 3)
    assert [(j.id, j.state, j.enhancer) for j in study.jobs] == [(job_id, JobState.ENHANCED, None)]
    store.delivery_failed(job_id, "x", "refused", base=0, cap=0, max_attempts=5)
    (health,) = store.destination_health()
    assert (health.destination, health.consecutive_failures) == ("x", 1)
    assert {i.sop_uid: i.calling_aet for i in store.series_instances("1.2", "1.2.9")} == {
        "1.2.3.9.0": "CT01", "1.2.3.9.1": "CT01"}
