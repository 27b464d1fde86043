"""The QA gate end to end, with real peers: a harmful enhancer is held, good series pass with their SR report.

The gateway runs as a child process; dcmtk storescu pushes real images; Orthanc is the PACS. The harmful
enhancer (`tests.gateway.harmful_enhancers`) reaches the gateway the way a site's own model would: through
`[enhance] plugins`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from dicom_utils.private_tags import read_block
from gateway.storage.local_spool import LocalSpool
from tests.dicom_utils.helpers import dciodvfy_errors
from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import Orthanc, storescu
from tests.realdata import make_series, testfile

CT = "693_UNCR.dcm"
MR = "MR2_UNCR.dcm"
PLUGINS = {"plugins": ["tests.gateway.harmful_enhancers"]}
HARM = [{"enhancer": "test-harm"}]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def _orthanc_dest(orthanc: Orthanc) -> dict[str, Any]:
    return {"name": "pacs", "type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _metrics(gw: GatewayProcess) -> str:
    return requests.get(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10).text


def test_harmful_enhancer_is_held_survives_a_restart_and_release_delivers_once(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    files = make_series(CT, 4, tmp_path / "in", seed="harm-release")
    gw = GatewayProcess(tmp_path, destinations=[_orthanc_dest(orthanc)], routes=HARM, enhance=PLUGINS, qa={}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"held"}, 1)
        assert job.qa_verdict == "FAIL" and job.qa_action == "hold"
        assert job.qa_reasons and "lowpass" in job.qa_reasons and "voids" in job.qa_reasons
        assert job.derived_count == 4
        assert orthanc.count_instances() == 0  # nothing delivered
        assert any(e["event"] == "job.held" and e["job_id"] == job.id for e in gw.events())
        listed = gw.cli("held")
        assert f"job {job.id}:" in listed.stdout and "lowpass" in listed.stdout
        assert "QA:        PASS=0  WARN=0  FAIL=1  (1 held" in gw.cli("status").stdout
        assert "FAIL" in next(line for line in gw.cli("jobs").stdout.splitlines() if line.split()[0] == str(job.id))
        text = _metrics(gw)
        assert "enhance_gw_held 1.0" in text
        assert 'enhance_gw_qa_verdicts_total{verdict="FAIL"} 1.0' in text

        gw.terminate()  # a restart must not deliver or re-run a held job
        gw.start()
        assert [e["event"] for e in gw.events()].count("gateway.starting") == 2
        assert [e["event"] for e in gw.events()].count("series.stable") == 1  # not queued again
        (again,) = gw.state().jobs()
        assert again.state == "held" and again.id == job.id
        assert orthanc.count_instances() == 0

        out = gw.cli("release", str(job.id))
        assert '"event": "job.released"' in out.stdout
        gw.wait_jobs({"done"}, 1)
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        wait_for(lambda: orthanc.count_instances() == 5, 60, "4 derived instances and the SR in Orthanc")
        derived = [s for s in orthanc.study_series(study) if s["MainDicomTags"].get("Modality") == "CT"]
        (series,) = derived
        ds = orthanc.instance_file(series["Instances"][0])
        assert ds.SeriesDescription.startswith("QA FAIL ")
        block = read_block(ds)
        assert block["series_qa"] == "FAIL" and block["qa_flag"] == "FAIL"
        sends = [e for e in gw.events() if e["event"] == "send.done" and e.get("job_id") == job.id]
        assert len(sends) == 1 and sends[0]["instances"] == 5  # delivered exactly once
        again_release = gw.cli("release", str(job.id), check=False)
        assert again_release.returncode == 1 and "not held" in again_release.stderr
        assert orthanc.count_instances() == 5
    finally:
        gw.stop()


def test_reject_drops_the_outputs_and_keeps_the_originals(tmp_path: Path) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="harm-reject")
    archive = {"name": "archive", "type": "folder", "path": "{var_dir}/archive"}
    gw = GatewayProcess(tmp_path, destinations=[archive], routes=HARM, enhance=PLUGINS, qa={}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"held"}, 1)
        outgoing = gw.var_dir / "spool" / "outgoing" / str(job.id)
        assert len(list(outgoing.glob("*.dcm"))) == 4  # 3 derived + the SR, waiting
        out = gw.cli("reject", str(job.id))
        assert '"event": "job.rejected"' in out.stdout
        rejected = gw.state().job(job.id)
        assert rejected.state == "rejected" and rejected.finished_at is not None
        assert not list(outgoing.glob("*.dcm"))
        assert gw.state().deliveries(job.id) == []
        originals = [i.key for i in gw.state().job_instances(job.id)]
        spool = LocalSpool(gw.var_dir / "spool")
        assert len(originals) == 3 and all(spool.exists(key) for key in originals)
        assert gw.cli("release", str(job.id), check=False).returncode == 1
        assert not list((gw.var_dir / "archive").rglob("*.dcm"))
        assert "enhance_gw_held 0.0" in _metrics(gw)
    finally:
        gw.stop()


def test_a_route_can_flag_instead_of_holding(tmp_path: Path) -> None:
    files = make_series(CT, 2, tmp_path / "in", seed="harm-flag")
    archive = {"name": "archive", "type": "folder", "path": "{var_dir}/archive"}
    route = {"enhancer": "test-harm", "qa": {"actions": {"FAIL": "flag"}}}
    gw = GatewayProcess(tmp_path, destinations=[archive], routes=[route], enhance=PLUGINS, qa={}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1)
        assert (job.qa_verdict, job.qa_action) == ("FAIL", "flag")
        delivered = [pydicom.dcmread(p) for p in sorted((gw.var_dir / "archive").rglob("*.dcm"))]
        images = [ds for ds in delivered if ds.Modality == "CT"]
        assert len(images) == 2 and len(delivered) == 3  # and the SR
        assert all(ds.SeriesDescription.startswith("QA FAIL ") and "test-harm" in ds.SeriesDescription
                   for ds in images)
        assert not any(e["event"] == "job.held" for e in gw.events())
    finally:
        gw.stop()


@pytest.mark.parametrize(("source", "count"), [(CT, 3), (MR, 3)])
def test_good_series_passes_and_its_sr_matches_the_private_tags(
    tmp_path: Path, orthanc: Orthanc, source: str, count: int
) -> None:
    files = make_series(source, count, tmp_path / "in", seed=f"good-{source}")
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    gw = GatewayProcess(
        tmp_path, destinations=[_orthanc_dest(orthanc)], routes=[{"enhancer": "nlm", "strength": 0.8}], qa={}
    ).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1, timeout=300)
        assert job.qa_verdict == "PASS" and job.qa_action == "deliver"
        assert job.strength == pytest.approx(0.8) and job.noise_sigma and job.noise_sigma > 0
        wait_for(lambda: orthanc.count_instances() == count + 1, 60, "the derived series and its SR")
        series = [s for s in orthanc.study_series(head.StudyInstanceUID)]
        by_modality = {s["MainDicomTags"].get("Modality"): s for s in series}
        assert set(by_modality) == {head.Modality, "SR"}
        images = [orthanc.instance_file(i) for i in by_modality[head.Modality]["Instances"]]
        blocks = [read_block(ds) for ds in images]
        for ds, block in zip(images, blocks, strict=True):
            assert not ds.SeriesDescription.startswith("QA ")
            assert block["series_qa"] == "PASS" and block["qa_flag"] == "PASS"
            assert block["metric_basis"] == "DEGRADE_RESTORE"
            assert block["strength"] == pytest.approx(0.8)
            assert block["noise_sigma"] == pytest.approx(job.noise_sigma, rel=1e-6)
            assert len(str(block["degrade_restore_slices"]).split(",")) == 3
        (sr_id,) = by_modality["SR"]["Instances"]
        sr = orthanc.instance_file(sr_id)
        assert sr.SOPClassUID == SR_CLASS and sr.StudyInstanceUID == head.StudyInstanceUID
        values = _sr_numbers(sr)
        block = blocks[0]
        assert values["Noise standard deviation"] == pytest.approx(float(block["noise_sigma"]), rel=1e-6)
        assert values["PSNR degrade-restore vs received"] == pytest.approx(float(block["psnr"]), rel=1e-6)
        assert values["SSIM degrade-restore vs received"] == pytest.approx(float(block["ssim"]), rel=1e-6)
        mean_input_psnr = sum(float(b["input_psnr"]) for b in blocks) / len(blocks)  # type: ignore[arg-type]
        assert values["PSNR enhanced vs received"] == pytest.approx(mean_input_psnr, rel=1e-6)
        assert _sr_codes(sr)["Enhancement QA verdict"] == "QA passed"
        evidence = {
            s.SeriesInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for s in study.ReferencedSeriesSequence
        }
        assert evidence == {head.SeriesInstanceUID, images[0].SeriesInstanceUID}
        sr_path = tmp_path / "sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        new_errors = dciodvfy_errors(sr_path) - dciodvfy_errors(testfile(source))
        assert not new_errors, f"dciodvfy errors in the SR that the source did not have: {sorted(new_errors)}"
        log = gw.log_text()  # highdicom warns about odd Patient Names by quoting them: never into our logs
        for phi in (head.PatientName, head.PatientID, head.get("PatientBirthDate"), head.get("AccessionNumber")):
            if phi:
                assert str(phi) not in log, "PHI leaked into the logs"
        enhanced = next(e for e in gw.events() if e["event"] == "job.enhanced")
        assert enhanced["noise_sigma"] == pytest.approx(job.noise_sigma, abs=1e-3)
        assert enhanced["strength"] == 0.8 and enhanced["qa_verdict"] == "PASS" and enhanced["report"]
    finally:
        gw.stop()


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _sr_numbers(sr: pydicom.Dataset) -> dict[str, float]:
    return {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): float(i.MeasuredValueSequence[0].NumericValue)
        for i in _walk(sr.ContentSequence)
        if i.ValueType == "NUM"
    }


def _sr_codes(sr: pydicom.Dataset) -> dict[str, str]:
    return {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): str(i.ConceptCodeSequence[0].CodeMeaning)
        for i in _walk(sr.ContentSequence)
        if i.ValueType == "CODE"
    }


def test_reprocess_with_strength_zero_delivers_the_received_pixels(tmp_path: Path) -> None:
    """`reprocess --strength 0` reaches Pipeline.run: a blended (non-conditioned) enhancer then changes nothing."""
    files = make_series(CT, 2, tmp_path / "in", seed="strength")
    head = pydicom.dcmread(files[0])
    archive = {"name": "archive", "type": "folder", "path": "{var_dir}/archive"}
    gw = GatewayProcess(tmp_path, destinations=[archive], routes=[{"enhancer": "gaussian", "strength": 0.5}]).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (first,) = gw.wait_jobs({"done"}, 1)
        assert first.strength == 0.5
        out = gw.cli("reprocess", head.StudyInstanceUID, "--strength", "0")
        assert "queued" in out.stdout
        done = gw.wait_jobs({"done"}, 2)
        again = next(j for j in done if j.id != first.id)
        assert again.strength == 0.0 and again.qa_verdict == "PASS"
        derived = [pydicom.dcmread(p) for p in sorted((gw.var_dir / "archive").rglob("*.dcm"))]
        assert {float(read_block(ds)["strength"]) for ds in derived} == {0.0}  # type: ignore[arg-type]
        assert all((ds.pixel_array == head.pixel_array).all() for ds in derived)
        bad = gw.cli("reprocess", head.StudyInstanceUID, "--strength", "3", check=False)
        assert bad.returncode == 1 and "strength is a number from 0 to 2" in bad.stderr
    finally:
        gw.stop()
