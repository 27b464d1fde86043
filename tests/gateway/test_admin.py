"""Admin operations against a running gateway: reprocess, purge + C-GET from PACS, metrics, health, CLI views."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from tests.gateway.harness import REPO, GatewayProcess, wait_for
from tests.peers import Orthanc, storescu
from tests.realdata import make_series

CT = "693_UNCR.dcm"


def _pacs(orthanc: Orthanc) -> dict[str, Any]:
    return {"name": "pacs", "type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _derived(orthanc: Orthanc, study: str, source_series: str) -> dict[str, list[str]]:
    return {
        s["MainDicomTags"]["SeriesInstanceUID"]: s["Instances"]
        for s in orthanc.study_series(study)
        if s["MainDicomTags"]["SeriesInstanceUID"] != source_series
    }


def test_reprocess_new_enhancer_makes_a_new_series_and_same_one_is_idempotent(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="reproc")
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    gw = GatewayProcess(tmp_path, destinations=[_pacs(orthanc)], routes=[{"enhancer": "gaussian"}]).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"done"}, 1)
        first = wait_for(lambda: _derived(orthanc, src.StudyInstanceUID, src.SeriesInstanceUID), 60, "derived")
        out = gw.cli("reprocess", src.StudyInstanceUID)  # same enhancer: same UIDs, nothing new in PACS
        assert "job 2 queued (3 instances)" in out.stdout
        gw.wait_jobs({"done"}, 2)
        assert _derived(orthanc, src.StudyInstanceUID, src.SeriesInstanceUID).keys() == first.keys()
        assert orthanc.count_instances() == 3  # the same 3 derived instances, stored again in place
        gw.cli("reprocess", src.StudyInstanceUID, "--series", src.SeriesInstanceUID, "--enhancer", "unsharp",
               "--to", "pacs")
        gw.wait_jobs({"done"}, 3)
        def two_series() -> dict[str, list[str]] | None:
            found = _derived(orthanc, src.StudyInstanceUID, src.SeriesInstanceUID)
            return found if len(found) == 2 else None

        series = wait_for(two_series, 60, "a second derived series")
        assert all(len(v) == 3 for v in series.values())
        jobs = json.loads(gw.cli("jobs", "--json").stdout)
        assert [j["enhancer"] for j in sorted(jobs, key=lambda j: j["id"])] == ["gaussian", "gaussian", "unsharp"]
        studies = json.loads(gw.cli("studies", "--json").stdout)
        assert studies[0]["study_uid"] == src.StudyInstanceUID and len(studies[0]["jobs"]) == 3
        bad = gw.cli("reprocess", src.StudyInstanceUID, "--enhancer", "nope", check=False)
        assert bad.returncode == 1 and "is not registered" in bad.stderr
    finally:
        gw.stop()


def test_purge_then_reprocess_retrieves_originals_from_pacs_with_c_get(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="purge")
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    storescu(orthanc.dicom_port, files, called_aet=orthanc.aet)  # the originals live in PACS too
    orthanc.add_modality("GATEWAY", "ENHANCE_GW", "127.0.0.1", 1)  # C-GET: Orthanc must know the caller
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}], sources=[_pacs(orthanc) | {"name": "pacs"}]).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"done"}, 1)
        dry = gw.cli("purge", "--older-than", "0", "--dry-run")
        assert "would remove 3 originals" in dry.stdout
        assert len(list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))) == 3
        gw.cli("purge", "--older-than", "0")
        assert not list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))
        out = gw.cli("reprocess", src.StudyInstanceUID, "--enhancer", "unsharp")
        assert "retrieved 3 purged originals from pacs" in out.stdout
        assert len(list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))) == 3
        gw.wait_jobs({"done"}, 2)
        series_dirs = {p.parent.name for p in (gw.var_dir / "archive").rglob("*.dcm")}
        assert len(series_dirs) == 2  # gaussian and unsharp derived series
    finally:
        gw.stop()


def test_purge_never_takes_an_unfinished_job(tmp_path: Path) -> None:
    files = make_series(CT, 2, tmp_path / "in", seed="keep")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "pacs", "type": "dicom", "ae_title": "NOBODY",
                                                 "host": "127.0.0.1", "port": 9}],
                        routes=[{"enhancer": "gaussian"}], sender={"base_seconds": 30}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"failed"}, 1)
        out = gw.cli("purge", "--older-than", "0")
        assert "removed 0 originals" in out.stdout
        assert len(list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))) == 2
    finally:
        gw.stop()


def test_metrics_health_and_status(tmp_path: Path) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="metrics")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}]).start()
    base = f"http://127.0.0.1:{gw.metrics_port}"
    try:
        wait_for(lambda: _get(base + "/healthz"), 30, "the HTTP endpoint")
        health = requests.get(base + "/healthz", timeout=5)
        assert health.status_code == 200 and "scp: ok" in health.text and "state: ok" in health.text
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"done"}, 1)
        text = requests.get(base + "/metrics", timeout=5).text
        assert "enhance_gw_instances_received_total 3.0" in text
        assert 'enhance_gw_jobs{state="done"} 1.0' in text
        assert 'enhance_gw_send_attempts_total{destination="archive"} 1.0' in text
        assert 'enhance_gw_enhancement_seconds_count{device="cpu",enhancer="gaussian"} 1.0' in text
        assert "enhance_gw_series_completed_total 1.0" in text
        status = json.loads(gw.cli("status", "--json").stdout)
        assert status["counts"]["done"] == 1 and status["instances"] == 3
        assert status["destinations"][0]["destination"] == "archive"
        shown = json.loads(gw.cli("jobs", "--show", "1").stdout)
        assert shown["deliveries"][0]["state"] == "done"
    finally:
        gw.stop()


def test_healthz_is_503_when_the_disk_is_under_the_watermark(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 1_000_000
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        gateway={"min_free_mb": int(free_mb * 10)}).start()
    try:
        base = f"http://127.0.0.1:{gw.metrics_port}"
        wait_for(lambda: _get(base + "/healthz"), 30, "the HTTP endpoint")
        health = requests.get(base + "/healthz", timeout=5)
        assert health.status_code == 503 and "disk: less than" in health.text and "gateway.min_free_mb" in health.text
        refused = storescu(gw.port, make_series(CT, 1, tmp_path / "in", seed="full"), called_aet="ENHANCE_GW",
                           check=False)
        assert refused.returncode != 0 and "OutOfResources" in refused.stdout + refused.stderr
        assert gw.state().instance_count() == 0
    finally:
        gw.stop()


def _get(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def test_systemd_units_verify() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (no systemd on this host)")
    units = sorted((REPO / "systemd").glob("*.service"))
    assert len(units) >= 5  # all-in-one, receive, complete, send, worker@ (one per GPU)
    # a template verifies as one of its instances (enhance-gateway-worker@0 = GPU 0)
    checked = Path(tempfile.mkdtemp(prefix="units-"))
    for unit in units:
        shutil.copy(unit, checked / unit.name.replace("@.service", "@0.service"))
    out = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(checked.iterdir()))], check=False,
                         capture_output=True, text=True)
    shutil.rmtree(checked, ignore_errors=True)
    problems = [line for line in out.stderr.splitlines() if "enhance-gateway" in line and "not executable" not in line
                and "No such file" not in line and "User=" not in line]
    assert not problems, out.stderr
