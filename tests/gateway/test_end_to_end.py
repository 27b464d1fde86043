"""End to end with real peers: dcmtk storescu pushes real series, Orthanc is the PACS.

Each test runs the gateway as a real child process on a free loopback port; nothing is mocked. The derived
series is checked where a PACS administrator would look for it: in Orthanc (REST API) and in the archive
folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

from dicom_utils.private_tags import read_block
from enhancers.registry import default_enhancer
from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import Orthanc, recompress, storescu
from tests.realdata import make_series, testfile

CT = "693_UNCR.dcm"
FAST = [{"enhancer": "gaussian"}]  # the worker path is the same for every enhancer; keep CI quick


def _orthanc_dest(orthanc: Orthanc) -> dict[str, Any]:
    return {"name": "pacs", "type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _derived_series(orthanc: Orthanc, study_uid: str, source_series: str) -> list[dict[str, Any]]:
    return [s for s in orthanc.study_series(study_uid) if s["MainDicomTags"]["SeriesInstanceUID"] != source_series]


def _archive_files(gw: GatewayProcess) -> list[Path]:
    return sorted((gw.var_dir / "archive").rglob("*.dcm"))


def test_series_from_storescu_reaches_orthanc_as_a_derived_series(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 6, tmp_path / "in", seed="e2e")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    gw = GatewayProcess(
        tmp_path, destinations=[_orthanc_dest(orthanc), {"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]
    ).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1)
        default = default_enhancer("CT")  # no route: the modality default from the registry
        assert job.instance_count == 6 and job.derived_count == 6 and job.enhancer == default
        derived = wait_for(lambda: _derived_series(orthanc, source.StudyInstanceUID, source.SeriesInstanceUID),
                           60, "the derived series in Orthanc")
        (series,) = derived
        assert len(series["Instances"]) == 6
        ds = orthanc.instance_file(series["Instances"][0])
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesInstanceUID.startswith("2.25.")
        assert ds.SOPInstanceUID not in {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert default in ds.SeriesDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in {
            pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
        }
        block = read_block(ds)
        assert isinstance(block["psnr"], float) and block["psnr"] > 20
        assert isinstance(block["ssim"], float) and 0 < block["ssim"] <= 1
        assert block["enhancer"] == default
        archived = _archive_files(gw)
        assert len(archived) == 6
        assert {p.parent.name for p in archived} == {ds.SeriesInstanceUID}
        assert {p.parent.parent.name for p in archived} == {source.StudyInstanceUID}
        events = {e["event"] for e in gw.events()}
        assert {"association.accepted", "association.closed", "series.stable", "job.enhanced", "job.done"} <= events
        log = gw.log_text()
        for phi in (str(source.PatientName), source.PatientID, source.get("PatientBirthDate"), source.get("AccessionNumber")):
            if phi:
                assert str(phi) not in log, "PHI leaked into the logs"
    finally:
        gw.stop()


def test_sigkill_after_half_a_series_loses_nothing(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 8, tmp_path / "in", seed="crash")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    gw = GatewayProcess(tmp_path, destinations=[_orthanc_dest(orthanc)], routes=FAST, stable_seconds=3.0).start()
    try:
        storescu(gw.port, files[:4], called_aet="ENHANCE_GW")  # acknowledged, series not yet stable
        gw.kill()
        gw.start()
        storescu(gw.port, files[4:], called_aet="ENHANCE_GW")

        def all_done() -> bool:
            jobs = gw.state().jobs()
            return bool(jobs) and all(j.state == "done" for j in jobs) and sum(j.instance_count for j in jobs) == 8

        wait_for(all_done, 120, "every received instance in a finished job")
        assert gw.state().instance_count() == 8  # every acknowledged instance recorded
        (series,) = wait_for(lambda: _derived_series(orthanc, source.StudyInstanceUID, source.SeriesInstanceUID),
                             60, "the derived series")
        assert len(series["Instances"]) == 8  # the whole derived series (one or two jobs), no duplicates
        assert orthanc.count_instances() == 8
    finally:
        gw.stop()


def test_sigkill_during_enhancement_resumes_after_restart(tmp_path: Path) -> None:
    files = make_series(CT, 6, tmp_path / "in", seed="crash2")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        stable_seconds=0.5).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"enhancing", "enhanced", "sending", "done"}, 1)
        gw.kill()
        gw.start()
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.derived_count == 6
        assert len(_archive_files(gw)) == 6
    finally:
        gw.stop()


def test_pacs_down_then_back_is_delivered_once(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 4, tmp_path / "in", seed="down")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    orthanc.stop()
    gw = GatewayProcess(tmp_path, destinations=[_orthanc_dest(orthanc)], routes=FAST).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        wait_for(lambda: [e for e in gw.events() if e["event"] == "send.failed"], 60, "a failed send")
        (job,) = gw.state().jobs()
        assert job.state != "done"
        orthanc.start()
        gw.wait_jobs({"done"}, 1)
        (series,) = wait_for(lambda: _derived_series(orthanc, source.StudyInstanceUID, source.SeriesInstanceUID),
                             60, "the derived series")
        assert len(series["Instances"]) == 4
        assert orthanc.count_instances() == 4  # delivered once: only the derived series is there
        failures = [e for e in gw.events() if e["event"] == "send.failed"]
        assert all(e["destination"] == "pacs" for e in failures)
        assert any(e["event"] == "job.retry_scheduled" and e["next_try_in"] is not None for e in gw.events())
    finally:
        gw.stop()


def test_dead_job_is_retried_by_the_admin(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 2, tmp_path / "in", seed="dead")
    orthanc.stop()
    gw = GatewayProcess(tmp_path, destinations=[_orthanc_dest(orthanc)], routes=FAST,
                        sender={"max_attempts": 2, "base_seconds": 0.2, "cap_seconds": 0.5}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"dead"}, 1)
        assert "pacs" in (job.error or "")
        orthanc.start()
        out = gw.cli("retry", "--dead")
        assert f"job {job.id}: re-queued" in out.stdout
        gw.wait_jobs({"done"}, 1)
        assert orthanc.count_instances() == 2
    finally:
        gw.stop()


def test_bad_input_is_refused_and_the_next_series_goes_through(tmp_path: Path) -> None:
    from pynetdicom import AE

    good = make_series(CT, 3, tmp_path / "good", seed="good")
    seg = make_series("liver.dcm", 1, tmp_path / "seg", seed="seg")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=FAST).start()
    try:
        bad = pydicom.dcmread(testfile(CT))
        bad.Rows = 4096  # declares far more pixels than the data holds
        bad.SOPInstanceUID = "1.2.3.4.5.6.7"
        ae = AE(ae_title="FUZZ")
        ae.add_requested_context(bad.SOPClassUID, bad.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", gw.port, ae_title="ENHANCE_GW")
        assert assoc.is_established
        status = assoc.send_c_store(bad)
        no_uid = pydicom.dcmread(testfile(CT))
        del no_uid.StudyInstanceUID
        status2 = assoc.send_c_store(no_uid)
        assoc.release()
        assert status.Status == 0xC210 and status2.Status == 0xC210
        storescu(gw.port, seg, called_aet="ENHANCE_GW")
        storescu(gw.port, good, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"done", "skipped"}, 2)
        by_state = {j.state: j for j in jobs}
        assert by_state["skipped"].skip_reason and "Segmentation" in by_state["skipped"].skip_reason
        assert by_state["done"].derived_count == 3
        assert len(_archive_files(gw)) == 3
        assert gw.state().instance_count() == 4  # the refused ones were never recorded
    finally:
        gw.stop()


def test_compressed_series_are_received_and_enhanced(tmp_path: Path) -> None:
    base = make_series(CT, 2, tmp_path / "plain", seed="jpegll")
    series = {
        "jpeg-lossless": recompress(base, tmp_path / "jpegll", JPEGLosslessSV1),
        "jpeg2000": make_series(CT, 2, tmp_path / "j2k", seed="j2k", transfer_syntax=JPEG2000Lossless),
        "rle": make_series(CT, 2, tmp_path / "rle", seed="rle", transfer_syntax=RLELossless),
    }
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=FAST).start()
    try:
        for files in series.values():
            storescu(gw.port, files, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"done"}, 3)
        assert sorted(j.derived_count or 0 for j in jobs) == [2, 2, 2]
        stored = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
                  for p in (gw.var_dir / "spool" / "incoming").rglob("*.dcm")}
        assert len(stored) == 3, f"the compressed syntaxes must be stored as received, got {stored}"
    finally:
        gw.stop()


def test_push_command_and_duplicates_are_stored_once(tmp_path: Path) -> None:
    make_series(CT, 3, tmp_path / "in", seed="push")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=FAST, stable_seconds=2.0).start()
    try:
        for _ in range(2):
            out = gw.cli("push", str(tmp_path / "in"), "--to", f"127.0.0.1:{gw.port}", "--aet", "ENHANCE_GW",
                         check=False)
            assert out.returncode == 0, out.stderr
            assert "sent 3 instances" in out.stdout
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.instance_count == 3 and gw.state().instance_count() == 3
        assert len(list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))) == 3
    finally:
        gw.stop()


@pytest.mark.parametrize("calling", ["NOT_ALLOWED"])
def test_allowed_calling_aets_rejects_others(tmp_path: Path, calling: str) -> None:
    files = make_series(CT, 1, tmp_path / "in", seed="acl")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=FAST, gateway={"allowed_calling_aets": ["CT01"]}).start()
    try:
        refused = storescu(gw.port, files, called_aet="ENHANCE_GW", calling_aet=calling, check=False)
        assert refused.returncode != 0
        storescu(gw.port, files, called_aet="ENHANCE_GW", calling_aet="CT01")
        assert gw.state().instance_count() == 1
        assert any(e["event"] == "association.rejected" for e in gw.events())
    finally:
        gw.stop()


def test_peer_hosts_binds_an_ae_title_to_its_hosts(tmp_path: Path) -> None:
    files = make_series(CT, 1, tmp_path / "in", seed="hosts")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=FAST, gateway={"peer_hosts": {"CT01": ["10.9.9.9"], "CT02": ["127.0.0.1"]}}).start()
    try:
        spoofed = storescu(gw.port, files, called_aet="ENHANCE_GW", calling_aet="CT01", check=False)
        assert spoofed.returncode != 0  # CT01 may only come from 10.9.9.9
        assert gw.state().instance_count() == 0
        storescu(gw.port, files, called_aet="ENHANCE_GW", calling_aet="CT02")
        assert gw.state().instance_count() == 1
        rejected = [e for e in gw.events() if e["event"] == "association.rejected"]
        assert rejected and rejected[0]["calling_aet"] == "CT01"
    finally:
        gw.stop()
