"""Rows lost at a power loss come back from the spool; a clean stop leaves no marker and no reconciliation.

A power loss cannot be pulled in a test, so its effect is reproduced exactly: the instance rows that
synchronous=NORMAL may lose are deleted from the database while the gateway is down (after a SIGKILL, the
unclean stop the marker must tell), and the restarted gateway must still enhance and deliver every
acknowledged instance.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom

from gateway.receive.reconcile import RunMarker, reconcile
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey
from gateway.storage.state import State
from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import make_series

ARCHIVE = [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]
FAST = [{"enhancer": "gaussian"}]


def _drop_rows(db: Path, sop_uids: list[str]) -> None:
    """What a power loss can do to rows committed without a WAL sync: they are gone, their files are not."""
    with sqlite3.connect(db) as conn:
        conn.executemany("DELETE FROM instances WHERE sop_uid = ?", [(s,) for s in sop_uids])


def test_reconcile_records_spool_files_without_rows_and_skips_the_rest(tmp_path: Path) -> None:
    files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed="reconcile")
    spool, state = LocalSpool(tmp_path / "spool"), State(tmp_path / "state.db")
    sops = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        key = InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        spool.put(key, f.read_bytes())
        path = spool.local_path(key)
        assert path is not None
        state.record_instance(sop_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID,
                              study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID, modality="CT",
                              size=path.stat().st_size, calling_aet="CT01")
        sops.append(str(ds.SOPInstanceUID))
    (path.parent / "1.2.3.999.dcm").write_bytes(b"not DICOM at all")  # a stray file: logged, not fatal
    state.close()
    _drop_rows(tmp_path / "state.db", sops[:2])

    state = State(tmp_path / "state.db")
    found = reconcile(spool, state)
    assert (found.recorded, found.unreadable) == (2, 1)
    assert state.recorded_sop_uids(str(ds.SeriesInstanceUID)) == set(sops)
    rows = {r.sop_uid: r for r in state.series_instances(str(ds.StudyInstanceUID))}
    assert rows[sops[0]].key == InstanceKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sops[0])
    assert rows[sops[2]].calling_aet == "CT01"  # the surviving row is untouched
    assert reconcile(spool, state).recorded == 0


def test_marker_tells_an_unclean_stop(tmp_path: Path) -> None:
    marker = RunMarker(tmp_path)
    assert marker.begin() is False
    assert marker.begin() is True  # begun again without an end: the last run did not stop cleanly
    marker.end()
    assert not marker.path.exists() and marker.begin() is False


def test_rows_lost_at_a_power_loss_are_delivered_after_restart(tmp_path: Path) -> None:
    files = make_series("693_UNCR.dcm", 5, tmp_path / "in", seed="powerloss")
    gw = GatewayProcess(tmp_path, destinations=ARCHIVE, routes=FAST, stable_seconds=3600).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")  # all 5 acknowledged
        gw.kill()
        lost = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:3]]
        _drop_rows(gw.var_dir / "state.db", lost)
        assert gw.state().instance_count() == 2
        gw.config.write_text(gw.config.read_text().replace("stable_seconds = 3600", "stable_seconds = 0.5"))
        gw.start()
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.instance_count == 5 and job.derived_count == 5
        assert len(list((gw.var_dir / "archive").rglob("*.dcm"))) == 5
        (event,) = [e for e in gw.events() if e["event"] == "gateway.unclean_stop_recovered"]
        assert event["recorded_again"] == 3
    finally:
        gw.stop()
    assert not (gw.var_dir / "gateway.running").exists()
    gw.start()
    gw.stop()
    assert len([e for e in gw.events() if e["event"] == "gateway.unclean_stop_recovered"]) == 1


def test_a_marker_that_cannot_be_written_does_not_stop_the_gateway(tmp_path: Path) -> None:
    """A full or read-only var_dir at start: the gateway still receives, with its instance rows synced."""
    files = make_series("693_UNCR.dcm", 2, tmp_path / "in", seed="nomarker")
    gw = GatewayProcess(tmp_path, destinations=ARCHIVE, routes=FAST, stable_seconds=0.5)
    (gw.var_dir / "gateway.running").mkdir(parents=True)  # os.open on it fails as on a full disk
    gw.start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.derived_count == 2
        (failed,) = [e for e in gw.events() if e["event"] == "gateway.run_marker_failed"]
        assert "synced instead" in failed["hint"]
    finally:
        gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0
