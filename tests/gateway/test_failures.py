"""How the worker and `reprocess` treat failures: permanent ones end a job at once, a full disk makes it wait.

Why in-process: the worker's decisions (fail for good, retry, wait) are read straight from the state store and
the captured log lines, with a real State, a real spool on a real (small) file system and real DICOM files.
End-to-end behaviour on a full disk (completion, /healthz) is in test_disk_full.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import settings
from gateway.admin.ops import reprocess
from gateway.deliver.sender import Sender
from gateway.enhance.worker import Worker
from gateway.errors import GatewayError
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.inprocess import receive
from tests.realdata import make_series, testfile
from tests.smalldisk import SmallDisk

CT = "693_UNCR.dcm"


def _settings(var_dir: Path, archive: str = "{var_dir}/archive", **gateway: Any) -> settings.Settings:
    doc = {
        "gateway": {"var_dir": str(var_dir), "min_free_mb": 0} | gateway,
        "destinations": [{"name": "archive", "type": "folder", "path": archive}],
        "routes": [{"enhancer": "gaussian"}],
        "qa": {"report": False, "actions": {"WARN": "flag", "FAIL": "flag"}},
        "enhance": {"workers": 1, "batch_size": 4, "threads": 1},
        "sender": {"base_seconds": 0.5, "cap_seconds": 2.0, "max_attempts": 2},
    }
    return settings.parse(doc, environ={})


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_an_undecodable_series_fails_at_once_with_one_line_and_no_retry(tmp_path: Path) -> None:
    cfg = _settings(tmp_path / "var")
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    job_id = receive(state, spool, [Path(shutil.copy(testfile("MR_truncated.dcm"), tmp_path / "mr.dcm"))])
    worker = Worker(cfg, state, spool)
    with capture_logs() as logs:
        assert worker.run_once()
    job = state.job(job_id)
    assert job.state == "failed" and job.attempts == 1 and job.next_try_at is None
    assert "UndecodableSeriesError" in (job.error or "") and "cannot decode" in (job.error or "")
    failed = _events(logs, "job.failed")
    assert len(failed) == 1 and failed[0]["log_level"] == "error" and failed[0]["permanent"] is True
    assert f"enhance-gateway retry {job_id}" in failed[0]["hint"]
    assert not [e for e in logs if "exc_info" in e], "a permanent error is not a bug: no traceback"
    assert not _events(logs, "job.enhance_failed")
    # never claimed again, however long one waits; the queue-age gauge does not count it as waiting
    assert state.claim_job("queued", "enhancing", now=time.time() + 10 * 86400) is None
    assert state.oldest_waiting() is None
    assert state.retry(job_id) == "queued"  # an admin can still try again after fixing the cause


def test_a_job_with_an_enhancer_for_another_modality_fails_at_once(tmp_path: Path) -> None:
    cfg = _settings(tmp_path / "var")
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    first = receive(state, spool, make_series(CT, 2, tmp_path / "in", seed="mismatch"))
    series = state.job(first).series_uid
    state.skip_job(first, "not this one")
    job_id = state.make_reprocess_job(series, enhancer="ncdn-mr", only_destination=None)  # queued unchecked
    with capture_logs() as logs:
        assert Worker(cfg, state, spool).run_once()
    job = state.job(job_id)
    assert job.state == "failed" and job.next_try_at is None
    assert "EnhancerMismatchError" in (job.error or "") and "not for modality CT" in (job.error or "")
    assert len(_events(logs, "job.failed")) == 1 and not [e for e in logs if "exc_info" in e]


def test_reprocess_refuses_an_enhancer_for_another_modality_before_queueing(tmp_path: Path) -> None:
    cfg = _settings(tmp_path / "var")
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    job_id = receive(state, spool, make_series(CT, 2, tmp_path / "in", seed="refuse"))
    study = state.job(job_id).study_uid
    with pytest.raises(GatewayError, match=r"is made for MR, not for modality CT; pick one made for it") as info:
        reprocess(cfg, state, study, enhancer="ncdn-mr")
    assert "nothing was queued" in str(info.value)
    assert [j.id for j in state.jobs()] == [job_id]
    (done,) = reprocess(cfg, state, study, enhancer="ncdn-ct")  # the CT one is accepted
    assert state.job(done.job_id).enhancer == "ncdn-ct"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", size_mb=8)
    try:
        yield disk
    finally:
        disk.close()


def test_a_job_that_cannot_write_its_outputs_waits_and_runs_when_space_is_back(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    cfg = _settings(small_disk.path / "var", min_free_mb=2)
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir, min_free_mb=cfg.min_free_mb)
    job_id = receive(state, spool, make_series(CT, 3, tmp_path / "in", seed="waits"))
    worker = Worker(cfg, state, spool)
    # above the watermark, but not by one derived slice (~0.5 MB): the claim succeeds, the first write refuses
    small_disk.fill(leave=2_300_000)
    with capture_logs() as logs:
        assert worker.run_once()
        job = state.job(job_id)
        assert job.state == "queued" and job.attempts == 0, (job.state, job.error)
        assert "waiting for disk space" in (job.error or "") and "gateway.min_free_mb" in (job.error or "")
        assert spool.list_outputs(job_id) == []  # the partial outputs were dropped: they take the space
        while worker.disk.failures < 4:  # it tries again, later each time, and stays quiet about it
            worker.run_once()
            time.sleep(0.1)
        assert state.job(job_id).state == "queued" and state.job(job_id).attempts == 0
        small_disk.drain()
        while state.job(job_id).state == "queued":
            worker.run_once()
            time.sleep(0.1)
    job = state.job(job_id)
    assert job.state == "enhanced" and job.derived_count == 3 and job.attempts == 0 and job.error is None
    waiting = _events(logs, "worker.waiting_for_disk")
    assert len(waiting) == 1 and waiting[0]["kind"] == "disk_full" and "exc_info" not in waiting[0]
    assert len(_events(logs, "worker.disk_recovered")) == 1
    assert not _events(logs, "job.enhance_failed") and not _events(logs, "job.failed")


def test_below_the_watermark_the_worker_claims_nothing(tmp_path: Path, small_disk: SmallDisk) -> None:
    cfg = _settings(small_disk.path / "var", min_free_mb=2)
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir, min_free_mb=cfg.min_free_mb)
    job_id = receive(state, spool, make_series(CT, 1, tmp_path / "in", seed="noclaim"))
    small_disk.fill(leave=1_000_000)
    worker = Worker(cfg, state, spool)
    with capture_logs() as logs:
        for _ in range(3):
            assert not worker.run_once()
    assert state.job(job_id).state == "queued" and state.job(job_id).attempts == 0
    assert worker.pause(0.5) >= 0.5
    (waiting,) = _events(logs, "worker.waiting_for_disk")
    assert "less than 2 MB would stay free" in waiting["error"]


def test_a_folder_delivery_to_a_full_disk_waits_and_is_never_dead(tmp_path: Path, small_disk: SmallDisk) -> None:
    cfg = _settings(tmp_path / "var", archive=str(small_disk.path / "archive"), min_free_mb=2)
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir, min_free_mb=cfg.min_free_mb)
    job_id = receive(state, spool, make_series(CT, 2, tmp_path / "in", seed="folder"))
    assert Worker(cfg, state, spool).run_once() and state.job(job_id).state == "enhanced"
    small_disk.fill(leave=1_000_000)  # the archive's disk, below the watermark
    sender = Sender(cfg, state, spool)
    with capture_logs() as logs:
        assert sender.run_destination_once("archive")
        (delivery,) = state.deliveries(job_id)
        assert delivery.state == "pending" and delivery.attempts == 0
        assert "waiting for disk space" in (delivery.last_error or "")
        while sender._disk["archive"].failures < 4:  # more tries than max_attempts = 2: still not dead
            sender.run_destination_once("archive")
            time.sleep(0.1)
        assert state.deliveries(job_id)[0].attempts == 0 and state.job(job_id).state != "dead"
        assert not list((small_disk.path / "archive").rglob("*.dcm"))
        small_disk.drain()
        while state.job(job_id).state != "done":
            sender.run_destination_once("archive")
            time.sleep(0.1)
    assert len(list((small_disk.path / "archive").rglob("*.dcm"))) == 2
    waiting = _events(logs, "send.waiting_for_disk")
    assert len(waiting) == 1 and "less than 2 MB would stay free" in waiting[0]["error"]
    assert len(_events(logs, "send.disk_recovered")) == 1
    assert not _events(logs, "send.failed") and len(_events(logs, "job.done")) == 1
