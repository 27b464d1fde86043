"""Orthanc round trip (issue 4): a derived object stored in a real PACS and read back keeps its private block
and UIDs, and Orthanc, configured with the documented dictionary, names our private elements.

Orthanc runs with its own temporary storage, DICOM and HTTP on free loopback ports, remote access off. Only its
REST API is used (no DICOM networking here: dicom_utils has none).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance
from dicom_utils.pixels import modality_frames, stored_frames
from dicom_utils.private_tags import orthanc_dictionary, read_block
from tests.dicom_utils.helpers import read


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("Orthanc")
    if exe is None:
        pytest.fail("Orthanc is not installed: run `apt-get install orthanc`")
    root = tmp_path_factory.mktemp("orthanc")
    http_port = _free_port()
    config = {
        "Name": "dicom-utils-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": _free_port(),
        "DicomAet": "ORTHANCTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "Plugins": [],
        "Dictionary": orthanc_dictionary(),
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    process = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.parametrize(
    ("name", "task"),
    [("CT_small.dcm", "denoise"), ("RG3_J2KR.dcm", "sr2x"), ("eCT_Supplemental.dcm", "denoise")],
)
def test_orthanc_round_trip(orthanc: str, name: str, task: str, tmp_path: Path) -> None:
    source = read(name)
    values = modality_frames(source)
    if task == "sr2x":
        values = values.repeat(2, axis=1).repeat(2, axis=2)
    enh = Enhancement("nlm", "1.0", task, "cd" * 32, 39.5, 0.97, "DEGRADE_RESTORE", 8.25, "PASS")
    derived = derive_instance(source, values, enh, DerivationOptions(software_version="0.1.0"))
    path = tmp_path / "derived.dcm"
    derived.save_as(path, enforce_file_format=True)

    stored = requests.post(f"{orthanc}/instances", data=path.read_bytes(), timeout=60)
    assert stored.ok, stored.text
    instance_id = stored.json()["ID"]
    returned = requests.get(f"{orthanc}/instances/{instance_id}/file", timeout=60)
    assert returned.ok
    (tmp_path / "back.dcm").write_bytes(returned.content)
    back = pydicom.dcmread(tmp_path / "back.dcm")

    assert read_block(back) == read_block(derived)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert back.get(keyword) == derived.get(keyword)
    assert (stored_frames(back) == stored_frames(derived)).all()

    tags = requests.get(f"{orthanc}/instances/{instance_id}/tags", timeout=60).json()
    assert tags["0077,1004"]["Name"] == "EnhanceGwEnhancer"
    assert tags["0077,1004"]["Value"].strip() == "nlm"
    assert tags["0077,1001"]["Value"].strip() == "39.5"
