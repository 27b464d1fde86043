"""Derive processes (`[enhance] derive_processes`): the same derived series as the worker's own thread, a
dead process costs a retry and nothing else, and no process outlives its worker.

In-process worker, real State (SQLite), real spool, real CT slices (pydicom-data's 693_UNCR.dcm).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest

from dicom_utils.private_tags import read_block
from gateway import settings
from gateway.enhance.derive_pool import pool_size
from gateway.enhance.worker import Worker
from gateway.settings import ConfigError
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import OutputKey
from gateway.storage.state import JobState, State
from tests.gateway.harness import GatewayProcess
from tests.gateway.inprocess import receive
from tests.peers import storescu
from tests.realdata import make_series

CT = "693_UNCR.dcm"
SLICES = 9  # with batch_size 2: five batches, the last one short


def _config(var: Path, processes: int) -> settings.Settings:
    return settings.parse({
        "gateway": {"var_dir": str(var), "min_free_mb": 0},
        "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
        # gaussian: cheap, and its blur fails the low-pass check, so the gate's findings travel back from the
        # processes and the series is marked after its last slice (the second pass over the files)
        "routes": [{"enhancer": "gaussian"}],
        "qa": {"actions": {"WARN": "flag", "FAIL": "flag"}},
        "enhance": {"batch_size": 2, "threads": 1, "derive_processes": processes},
    }, environ={})


#: What must not depend on who derived the instance (creation date/time and the model's ms do).
_SAME = ("SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "ImageType",
         "DerivationDescription", "SmallestImagePixelValue", "LargestImagePixelValue", "BurnedInAnnotation")


def _read(spool: LocalSpool, key: OutputKey) -> pydicom.Dataset:
    with spool.open(key) as fh:
        return pydicom.dcmread(fh)


def _outputs(spool: LocalSpool, job_id: int) -> dict[str, dict[str, object]]:
    found = {}
    for key in spool.list_outputs(job_id):
        ds = _read(spool, key)
        if ds.Modality == "SR":
            continue
        private = read_block(ds)  # the metrics, QA flags and noise; the model's time differs run to run
        assert private["input_psnr"] is not None and private["qa_flag"] in ("PASS", "WARN", "FAIL")
        del private["processing_ms"]
        found[key.sop_uid] = {k: str(ds.get(k)) for k in _SAME} | {"pixels": bytes(ds.PixelData),
                                                                   "private": private}
    return found


def _enhance(tmp_path: Path, name: str, files: list[Path], processes: int) -> tuple[State, LocalSpool, int]:
    cfg = _config(tmp_path / name, processes)
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    job_id = receive(state, spool, files)
    worker = Worker(cfg, state, spool)
    try:
        assert worker.run_once()
        assert (worker._derive is not None) == (processes > 0)
    finally:
        worker.close()
    return state, spool, job_id


def test_derive_processes_write_the_same_series_as_the_worker_thread(tmp_path: Path) -> None:
    files = make_series(CT, SLICES, tmp_path / "in", seed="derive-pool")
    s0, spool0, job0 = _enhance(tmp_path, "thread", files, 0)
    segments = _segments()
    s2, spool2, job2 = _enhance(tmp_path, "processes", files, 2)
    assert _segments() <= segments, "shared memory left behind"
    one, two = s0.job(job0), s2.job(job2)
    assert one.state == two.state == JobState.ENHANCED, (one.error, two.error)
    assert one.derived_count == two.derived_count == SLICES
    assert one.qa_verdict == two.qa_verdict and one.qa_reasons == two.qa_reasons
    assert one.qa_verdict != "PASS", "the blur must be found (through the processes too)"
    assert one.psnr == pytest.approx(two.psnr, abs=1e-9) and one.ssim == pytest.approx(two.ssim, abs=1e-9)
    a, b = _outputs(spool0, job0), _outputs(spool2, job2)
    assert len(a) == SLICES and a.keys() == b.keys()
    for sop in a:
        assert a[sop] == b[sop], sop
    # the SR references every derived and every source instance (built from UIDs, two headers read)
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    for spool, job in ((spool0, job0), (spool2, job2)):
        (sr,) = [ds for ds in (_read(spool, k) for k in spool.list_outputs(job)) if ds.Modality == "SR"]
        listed = {str(i.ReferencedSOPInstanceUID) for st in sr.CurrentRequestedProcedureEvidenceSequence
                  for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert listed == set(a) | sources
        assert sr.PatientName == pydicom.dcmread(files[0], stop_before_pixels=True).PatientName
    # the processes' temp folders are their own (never the worker's), and empty once the files are written
    tmp = [p for p in (spool2.root / "tmp").iterdir() if p != spool2.tmp]
    assert tmp and all(not any(p.iterdir()) for p in tmp)


def test_an_undecodable_instance_is_reported_alike_by_the_processes(tmp_path: Path) -> None:
    """One slice of the series has half its pixel data: the processes decode the others and name it, as the
    worker's thread does."""
    files = make_series(CT, 5, tmp_path / "in", seed="derive-pool-bad")
    bad = pydicom.dcmread(files[2])
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    bad.save_as(files[2], enforce_file_format=True)
    jobs = [_enhance(tmp_path, name, files, processes) for name, processes in (("thread", 0), ("processes", 2))]
    (s0, _, j0), (s2, _, j2) = jobs
    one, two = s0.job(j0), s2.job(j2)
    assert one.state == two.state == JobState.ENHANCED
    assert one.derived_count == two.derived_count == 4
    assert one.error == two.error and one.error and "1 of 5 instances not enhanced" in one.error
    assert str(bad.SOPInstanceUID) in one.error


def test_a_killed_derive_process_costs_a_retry_and_the_retry_delivers(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "var", 2)
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    job_id = receive(state, spool, make_series(CT, 4, tmp_path / "in", seed="derive-pool-kill"))
    worker = Worker(cfg, state, spool)
    try:
        pool = worker.derive_pool("cpu")  # the pool the job will use: start one of its processes, kill it
        assert pool is not None
        os.kill(pool._executor.submit(os.getpid).result(timeout=60), signal.SIGKILL)
        time.sleep(0.5)
        assert worker.run_once()
        job = state.job(job_id)
        assert job.state == JobState.FAILED and job.next_try_at is not None, (job.state, job.error)
        assert "DeriveProcessDied" in (job.error or "") and "retried" in (job.error or "")
        assert worker._derive is None  # the broken pool is gone
        state.retry(job_id)  # now, not after the back-off
        assert worker.run_once()
        job = state.job(job_id)
        assert job.state == JobState.ENHANCED and job.derived_count == 4, job.error
        assert worker._derive is not None and worker._derive is not pool  # new processes
        assert len(_outputs(spool, job_id)) == 4  # the retry's files, nothing left of the failed run
    finally:
        worker.close()


def test_derive_processes_exit_when_their_worker_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from gateway.enhance.derive_pool import DerivePool
        from gateway.storage.local_spool import LocalSpool
        pool = DerivePool(2, LocalSpool(Path({str(tmp_path / 'spool')!r})))
        pids = {{pool._executor.submit(os.getpid).result(timeout=60) for _ in range(8)}}
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert pids and parent.pid not in pids
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _status(p)]
        time.sleep(0.2)
    assert not alive, f"derive processes {alive} outlived their worker"


def _segments() -> set[str]:
    """The POSIX shared-memory segments that multiprocessing created and nobody removed."""
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_the_service_with_derive_processes_survives_a_kill_during_enhancement(tmp_path: Path) -> None:
    """The real service: its spawned worker spawns the derive processes; SIGKILL mid-job, restart, delivered."""
    files = make_series(CT, 12, tmp_path / "in", seed="derive-pool-e2e")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        stable_seconds=0.5, enhance={"derive_processes": 2, "batch_size": 2}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"enhancing", "enhanced", "sending", "done"}, 1)
        gw.kill()
        gw.start()
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.derived_count == 12
        archived = sorted((gw.var_dir / "archive").rglob("*.dcm"))
        assert len([p for p in archived if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"]) == 12
        assert "worker.derive_processes" in gw.log_text()
    finally:
        gw.stop()


def test_auto_means_none_on_cpu_and_several_beside_a_gpu() -> None:
    assert pool_size(None, device="cpu", workers=1, cpus=16) == 0
    assert pool_size(None, device="cuda:0", workers=1, cpus=16) == 8
    assert pool_size(None, device="cuda:0", workers=4, cpus=16) == 2
    assert pool_size(None, device="cuda", workers=1, cpus=2) == 1
    assert pool_size(3, device="cpu", workers=1, cpus=2) == 3  # an admin's number is taken as it is
    assert pool_size(0, device="cuda", workers=1, cpus=64) == 0


def test_the_setting_takes_auto_or_a_count(tmp_path: Path) -> None:
    base = {"gateway": {"var_dir": str(tmp_path)},
            "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]}
    assert settings.parse(base, environ={}).enhance.derive_processes is None
    assert settings.parse(base | {"enhance": {"derive_processes": 0}}, environ={}).enhance.derive_processes == 0
    for bad in ("many", -1, True):
        with pytest.raises(ConfigError, match='derive_processes.*"auto" or an integer'):
            settings.parse(base | {"enhance": {"derive_processes": bad}}, environ={})
