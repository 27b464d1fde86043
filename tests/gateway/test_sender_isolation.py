"""Deliveries under a hung or dead PACS (issue 15, defect 3): a black-hole TCP server (accepts, never answers),
a closed port, dcmtk storescp as the healthy PACS and a real folder; the sender as the service runs it.

No timing thresholds: the hung destination's first attempt is still in flight (its timeout far away) while
every other destination's deliveries finish.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from structlog.testing import capture_logs

from gateway.deliver import sender as sender_mod
from gateway.deliver.sender import Circuit, Sender
from gateway.dimse.scu import Peer, send_files
from gateway.errors import DeliveryError
from gateway.settings import Settings, parse
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey, OutputKey
from gateway.storage.state import State
from tests.peers import StoreSCP, free_port, wait_until
from tests.realdata import make_series

HANG = 120.0  # a safety net for a failing test, never a measured threshold


class BlackHole:
    """A TCP server that accepts every connection and never sends a byte: a hung PACS."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _settings(var: Path, destinations: list[dict[str, Any]], **sender: Any) -> Settings:
    return parse({"gateway": {"var_dir": str(var), "min_free_mb": 0}, "destinations": destinations,
                  "sender": {"base_seconds": 0.2, "cap_seconds": 1.0, "max_attempts": 50} | sender}, environ={})


def _enhanced_jobs(cfg: Settings, state: State, spool: LocalSpool, tmp: Path, count: int) -> list[int]:
    """`count` jobs in state enhanced, their derived files in the spool (copies of real CT slices)."""
    ids = []
    for n in range(count):
        files = make_series("693_UNCR.dcm", 2, tmp / f"in{n}", seed=f"isolation-{n}")
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            size = spool.put(InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                             path.read_bytes())
            state.record_instance(sop_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID,
                                  study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID, modality="CT",
                                  size=size, calling_aet="TEST", now=0.0)
        (job_id,) = state.make_jobs_for_stable_series(1.0, now=10.0)
        job = state.claim_job("queued", "enhancing")
        assert job is not None and job.id == job_id
        for path in files:
            spool.put(OutputKey(job_id, pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID),
                      path.read_bytes())
        state.finish_enhancement(job_id, destinations=[d.name for d in cfg.destinations], derived_count=2,
                                 psnr=None, ssim=None, seconds=0.1)
        ids.append(job_id)
    return ids


def _delivery(state: State, job_id: int, name: str) -> Any:
    return next(d for d in state.deliveries(job_id) if d.destination == name)


def test_a_hung_pacs_delays_no_other_destination(tmp_path: Path, black_hole: BlackHole) -> None:
    with StoreSCP(tmp_path / "pacs2", aet="STORESCP") as healthy:
        cfg = _settings(tmp_path / "var", [
            {"name": "hung", "type": "dicom", "ae_title": "HUNG", "host": "127.0.0.1", "port": black_hole.port},
            {"name": "archive", "type": "folder", "path": str(tmp_path / "archive")},
            {"name": "pacs2", "type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": healthy.port},
        ], dimse_timeout=600)  # the hung attempt outlives the test: only independence lets the others through
        cfg.var_dir.mkdir()
        state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
        jobs = _enhanced_jobs(cfg, state, spool, tmp_path, 3)
        stop = threading.Event()
        loop = threading.Thread(target=sender_mod.run_loop, args=(Sender(cfg, state, spool), stop, 0.05), daemon=True)
        loop.start()
        try:
            wait_until(lambda: all(_delivery(state, j, n).state == "done" for j in jobs for n in ("archive", "pacs2"))
                       or None, HANG, "the archive and the healthy PACS to get every series")
            in_flight = [j for j in jobs if _delivery(state, j, "hung").state == "sending"]
            assert len(in_flight) == 1 and _delivery(state, in_flight[0], "hung").attempts == 0
            assert len(healthy.wait_for(6)) == 6
            assert len(list((tmp_path / "archive").rglob("*.dcm"))) == 6
            assert {state.job(j).state for j in jobs} <= {"sending", "failed"}  # the hung PACS still owes them
        finally:
            stop.set()
            black_hole.close()  # the hung attempt ends (connection closed) and the workers stop
            loop.join(HANG)
        assert not loop.is_alive()
        assert {d.state for j in jobs for d in state.deliveries(j) if d.destination == "hung"} == {"pending"}
        state.close()


def test_a_timeout_says_timed_out(black_hole: BlackHole, tmp_path: Path) -> None:
    files = make_series("693_UNCR.dcm", 1, tmp_path / "in", seed="timeout")
    with pytest.raises(DeliveryError, match="timed out") as info:
        send_files(Peer("HUNG", "127.0.0.1", black_hole.port), files, timeout=1.0)
    assert "rejected" not in str(info.value)
    with pytest.raises(DeliveryError, match="could not be opened"):
        send_files(Peer("NOBODY", "127.0.0.1", free_port()), files, timeout=5.0)


def test_the_circuit_opens_and_spares_the_other_jobs_attempts(tmp_path: Path) -> None:
    cfg = _settings(tmp_path / "var", [
        {"name": "down", "type": "dicom", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()},
    ], circuit_failures=2, circuit_seconds=600, dimse_timeout=5)
    cfg.var_dir.mkdir()
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    jobs = _enhanced_jobs(cfg, state, spool, tmp_path, 4)
    snd = Sender(cfg, state, spool)
    with capture_logs() as logs:
        assert snd.run_destination_once("down") and snd.run_destination_once("down")
        assert not snd.run_destination_once("down")  # open: not tried
    assert sorted(_delivery(state, j, "down").attempts for j in jobs) == [0, 0, 1, 1]
    opened = [e for e in logs if e["event"] == "destination.circuit_open"]
    assert len(opened) == 1 and "could not be opened" in opened[0]["error"]
    state.close()


def test_a_circuit_tries_once_after_its_wait_and_closes_on_success() -> None:
    circuit = Circuit("pacs", failures=1, seconds=1.0, cap=8.0)
    circuit.failed("timed out")
    assert circuit.is_open and not circuit.allows()
    circuit.retry_at = 0.0  # the wait is over
    assert circuit.allows()
    circuit.failed("timed out again")  # the trial failed: open again, for twice as long
    assert circuit.is_open and circuit.retry_at > 0.0 and circuit.opened == 2
    circuit.succeeded()
    assert not circuit.is_open and circuit.allows()


def test_an_unconfigured_destination_still_ends_its_deliveries(tmp_path: Path) -> None:
    cfg = _settings(tmp_path / "var", [{"name": "archive", "type": "folder", "path": str(tmp_path / "a")}],
                    max_attempts=1)
    cfg.var_dir.mkdir()
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    (job,) = _enhanced_jobs(cfg, state, spool, tmp_path, 1)
    with state._tx() as db:  # a destination removed from the config since the job was enhanced
        db.execute("INSERT INTO deliveries(job_id, destination, state, next_try_at) VALUES (?, 'gone', 'pending', 0)",
                   (job,))
    snd = Sender(cfg, state, spool)
    while snd.run_destination_once("archive") or snd.run_destination_once(None):  # the two workers' steps
        pass
    assert _delivery(state, job, "archive").state == "done"
    assert _delivery(state, job, "gone").state == "dead" and state.job(job).state == "dead"
    shutil.rmtree(tmp_path / "a")
    state.close()


def test_a_job_with_no_derived_files_does_not_open_the_destinations_circuit(tmp_path: Path) -> None:
    """Only failures of the destination count towards its breaker: jobs whose derived files are gone failed
    at a healthy folder, opened its circuit, and the sound job behind them waited for circuit_seconds."""
    cfg = _settings(tmp_path / "var", [{"name": "archive", "type": "folder", "path": str(tmp_path / "a")}],
                    circuit_failures=2, circuit_seconds=600)
    cfg.var_dir.mkdir()
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    *broken, sound = _enhanced_jobs(cfg, state, spool, tmp_path, 3)
    for job in broken:
        spool.clear_outputs(job)
    snd = Sender(cfg, state, spool)
    with capture_logs() as logs:
        assert snd.run_destination_once("archive") and snd.run_destination_once("archive")
        assert snd.run_destination_once("archive")  # the circuit is still closed: the sound job is tried
    assert [_delivery(state, j, "archive").attempts for j in broken] == [1, 1]
    assert "no derived files" in (_delivery(state, broken[0], "archive").last_error or "")
    assert _delivery(state, sound, "archive").state == "done"
    assert not snd.circuits["archive"].is_open
    assert not [e for e in logs if e["event"] == "destination.circuit_open"]
    shutil.rmtree(tmp_path / "a")
    state.close()
