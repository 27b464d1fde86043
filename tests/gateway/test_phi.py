"""No PHI in the logs: a full run with real patient-bearing files, logs and admin views searched for PHI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import testfile

# Real files whose headers carry patient name, id, birth date and accession number (MR, CR, Enhanced CT).
SOURCES = ["MR-SIEMENS-DICOM-WithOverlays.dcm", "RG3_UNCR.dcm", "eCT_Supplemental.dcm"]
PHI_TAGS = ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "PatientAddress"]


def _phi_values(path: Path) -> set[str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values: set[str] = set()
    for tag in PHI_TAGS:
        value = str(ds.get(tag, "") or "")
        if len(value) >= 5:  # shorter ones (eCT's id "0010") occur by chance inside UIDs and numbers
            values.add(value)
            values.update(part for part in value.split("^") if len(part) >= 5)
    return values


def test_no_phi_in_logs_of_a_full_run(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    files = [Path(shutil.copy(testfile(name), inbox / name)) for name in SOURCES]
    phi = set().union(*(_phi_values(f) for f in files))
    assert {"Sssssss^Jsssss", "021234567", "11111111", "FUJI95706", "19790408"} <= phi  # the test has PHI to find
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"modality": "CR", "enhancer": "gaussian"}, {"modality": "MR", "enhancer": "gaussian"}])
    gw.start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"done", "skipped", "dead"}, 3, timeout=300)
        assert {j.state for j in jobs} == {"done"}, [(j.state, j.error) for j in jobs]
        views = "\n".join(gw.cli(*args).stdout for args in (["status"], ["jobs"], ["studies"], ["jobs", "show", "1"]))
    finally:
        gw.stop()
    logs = gw.log_text()
    assert "job.done" in logs and "association.closed" in logs
    leaked = sorted(v for v in phi if v in logs or v in views)
    assert not leaked, f"PHI found in logs or admin views: {leaked}"


def test_no_phi_in_the_tracebacks_of_a_failing_job(tmp_path: Path) -> None:
    """An error path: the worker logs a traceback whose frames held the received datasets (as locals)."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    files = [Path(shutil.copy(testfile(name), inbox / name)) for name in SOURCES]
    phi = set().union(*(_phi_values(f) for f in files))
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "test-crash"}], sender={"max_attempts": 2},
                        enhance={"plugins": ["tests.gateway.crashing_enhancers"]})
    gw.start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"dead", "skipped"}, 3, timeout=300)
        assert {j.state for j in jobs} == {"dead"}, [(j.state, j.error) for j in jobs]
    finally:
        gw.stop()
    logs = gw.log_text()
    failures = [e for e in gw.events() if e["event"] == "job.enhance_failed"]
    assert len(failures) == 6 and all(e["exception"][0]["frames"] for e in failures)  # tracebacks were logged
    assert "test-crash: this enhancer always fails" in logs
    leaked = sorted(v for v in phi if v in logs)
    assert not leaked, f"PHI found in the logged tracebacks: {leaked}"
    assert '"locals"' not in logs
