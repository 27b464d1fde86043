"""STOW-RS reception with real clients: dicomweb-client, Orthanc's DICOMweb plugin, and a raw socket that is cut off.

Why these peers: the receiver must interoperate with what sites really send from (a Python client and a PACS's
DICOMweb push), and its durability claim (acknowledged only after fsync + rename + record; nothing half-stored
when a request dies) is only worth something when a real process is killed in the middle of a real request.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from gateway.auth import hash_password
from gateway.receive.stow import ALREADY_STORED, STUDY_MISMATCH, StowService
from gateway.settings import DicomwebSettings, Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import Orthanc, PeerMissingError, free_port
from tests.realdata import make_series

TOKEN = "stow-test-token-0123456789"
CT = "693_UNCR.dcm"
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def stow(tmp_path: Path) -> Iterator[StowService]:
    """A STOW-RS receiver on a free loopback port over a fresh spool and state store (in this process)."""
    settings = Settings(var_dir=tmp_path / "var", dicomweb=DicomwebSettings(enabled=True, port=0, tokens=(TOKEN,),
                                                                              max_instance_mb=2, max_request_mb=8))
    settings.var_dir.mkdir(parents=True)
    state = State(settings.state_db)
    service = StowService(settings, state, LocalSpool(settings.spool_dir, min_free_mb=0))
    service.start()
    yield service
    service.stop()
    state.close()


def _url(service: StowService) -> str:
    return f"http://127.0.0.1:{service.port}/dicomweb"


def _multipart(files: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in files
    ) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def test_dicomweb_client_stores_a_series_and_gets_a_ps318_response(tmp_path: Path, stow: StowService) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="stow")
    datasets = [pydicom.dcmread(f) for f in files]
    client = DICOMwebClient(_url(stow), headers={"Authorization": f"Bearer {TOKEN}"})
    response = client.store_instances(datasets)
    refs = response.ReferencedSOPSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in refs) == sorted(d.SOPInstanceUID for d in datasets)
    assert "FailedSOPSequence" not in response
    state = stow.sink.state
    for ds in datasets:  # acknowledged = on disk, readable, recorded
        assert state.instance_purged(ds.SOPInstanceUID) is False
    stored = sorted((stow.sink.spool.incoming / datasets[0].StudyInstanceUID).rglob("*.dcm"))
    assert len(stored) == 3
    again = pydicom.dcmread(stored[0])
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    assert again.PixelData == next(d for d in datasets if d.SOPInstanceUID == again.SOPInstanceUID).PixelData
    # sent again (a client that lost the first response): stored once, acknowledged as a duplicate
    body, ctype = _multipart([f.read_bytes() for f in files[:1]])
    reply = requests.post(f"{_url(stow)}/studies", data=body, headers={"Content-Type": ctype,
                          "Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert reply.status_code == 200
    (item,) = _items(reply.json(), "00081199")
    assert item["00081196"]["Value"] == [ALREADY_STORED]
    assert len(list((stow.sink.spool.incoming / datasets[0].StudyInstanceUID).rglob("*.dcm"))) == 3


def test_each_instance_gets_its_own_verdict(tmp_path: Path, stow: StowService) -> None:
    good, other_study, mismatched = make_series(CT, 3, tmp_path / "in", seed="verdicts")
    study = pydicom.dcmread(good).StudyInstanceUID
    ds = pydicom.dcmread(other_study)
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.save_as(other_study, enforce_file_format=True)
    ds = pydicom.dcmread(mismatched)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"  # meta and data set disagree: not stored
    ds.save_as(mismatched)  # as it is: enforce_file_format would copy the data set's UID into the meta
    body, ctype = _multipart([good.read_bytes(), other_study.read_bytes(), mismatched.read_bytes(), b"junk" * 10])
    reply = requests.post(f"{_url(stow)}/studies/{study}", data=body, timeout=30,
                          headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 202, reply.text  # some stored, some not
    assert reply.headers["Content-Type"] == "application/dicom+json"
    body_json = reply.json()
    assert len(_items(body_json, "00081199")) == 1
    failed = _items(body_json, "00081198")
    assert [f["00081197"]["Value"][0] for f in failed] == [STUDY_MISMATCH, 0xC210, 0xC210]
    assert all(f["0040A160"]["Value"][0] for f in failed)  # a reason a sender's admin can act on
    assert len(list(stow.sink.spool.incoming.rglob("*.dcm"))) == 1


def test_credentials_and_limits_are_checked_before_the_body(tmp_path: Path, stow: StowService) -> None:
    (f,) = make_series(CT, 1, tmp_path / "in", seed="auth")
    body, ctype = _multipart([f.read_bytes()])
    url = f"{_url(stow)}/studies"
    assert requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=10).status_code == 401
    wrong = {"Content-Type": ctype, "Authorization": "Bearer not-the-token-at-all"}
    assert requests.post(url, data=body, headers=wrong, timeout=10).status_code == 401
    state = stow.sink.state
    state.add_user("pacs", "admin", hash_password("a long enough password"))
    state.add_user("nurse", "viewer", hash_password("a long enough password"))
    assert requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=30,
                         auth=("nurse", "a long enough password")).status_code == 401  # role not in user_roles
    assert requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=30,
                         auth=("pacs", "a long enough password")).status_code == 200
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(url, data=body, headers=token | {"Content-Type": "application/dicom"},
                         timeout=10).status_code == 415
    big = requests.post(url, data=b"x" * (9 << 20), headers=token | {"Content-Type": ctype}, timeout=30)
    assert big.status_code == 413  # max_request_mb = 8: refused from Content-Length
    huge, ctype2 = _multipart([b"\0" * (3 << 20)])  # one part past max_instance_mb = 2
    assert requests.post(url, data=huge, headers=token | {"Content-Type": ctype2}, timeout=30).status_code == 413


def test_chunked_upload_is_streamed(tmp_path: Path, stow: StowService) -> None:
    files = make_series(CT, 4, tmp_path / "in", seed="chunked")
    body, ctype = _multipart([f.read_bytes() for f in files])

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]

    reply = requests.post(f"{_url(stow)}/studies", data=pieces(), timeout=30,
                          headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200, reply.text
    assert len(_items(reply.json(), "00081199")) == 4


def _gateway(tmp_path: Path, port: int) -> GatewayProcess:
    return GatewayProcess(
        tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
        stable_seconds=3600, dicomweb={"enabled": True, "port": port, "tokens": [TOKEN]},
    )


def test_a_request_killed_halfway_leaves_nothing_half_stored(tmp_path: Path) -> None:
    files = make_series(CT, 2, tmp_path / "in", seed="killed")
    first, second = (f.read_bytes() for f in files)
    body, ctype = _multipart([first, second])
    cut = len(body) - len(second) // 2  # the first instance whole, the second half sent
    port = free_port()
    gw = _gateway(tmp_path, port).start()
    sop_first = pydicom.dcmread(files[0]).SOPInstanceUID
    try:
        wait_for(lambda: _listening(port), 30, "the STOW-RS port")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + body[:cut])
            wait_for(lambda: gw.state().instance_purged(sop_first) is False, 30, "the first instance recorded")
            gw.kill()  # SIGKILL in the middle of the second instance
    finally:
        gw.kill_quietly()
    var = gw.var_dir / "spool"
    assert [p.name for p in (var / "incoming").rglob("*.dcm")] == [f"{sop_first}.dcm"]
    gw2 = GatewayProcess.__new__(GatewayProcess)
    gw2.__dict__.update(gw.__dict__)
    gw2.proc = None
    gw2.start()  # the next start cleans spool/tmp and reconciles the spool with the state store
    try:
        assert not list((var / "tmp").glob("*.part"))
        stored = pydicom.dcmread(next((var / "incoming").rglob("*.dcm")))
        assert stored.PixelData == pydicom.dcmread(files[0]).PixelData
        assert gw2.state().instance_count() == 1
    finally:
        gw2.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_orthanc_pushes_a_study_over_stow_rs(tmp_path: Path) -> None:
    if not ORTHANC_DICOMWEB.exists():
        raise PeerMissingError(f"{ORTHANC_DICOMWEB} is missing: apt-get install -y orthanc-dicomweb")
    port = free_port()
    gw = _gateway(tmp_path, port).start()
    files = make_series(CT, 3, tmp_path / "in", seed="orthanc-stow")
    for f in files:  # identifiers that must never reach the log
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Stowtest^Patient", "PHI-STOW-4711", "ACC-STOW-99"
        ds.save_as(f)
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    config = {
        "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
            "gateway": {"Url": f"http://127.0.0.1:{port}/dicomweb/",
                        "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}},
    }
    try:
        with Orthanc(tmp_path / "orthanc", config=config) as pacs:
            ids = [pacs.post("/instances", f.read_bytes())["ParentStudy"] for f in files]
            job = pacs.post("/dicom-web/servers/gateway/stow", {"Resources": [ids[0]], "Synchronous": True})
            assert job is not None
            wait_for(lambda: gw.state().instance_count() == 3, 60, "3 instances received over STOW-RS")
        rows = gw.state().series_instances(study)
        assert {r.calling_aet for r in rows} == {"token"}
        assert json.dumps([asdict(r) for r in rows])  # plain values, recorded like C-STOREs
        assert not [e for e in gw.events() if e.get("event") == "stow.refused"]
        assert any(e.get("event") == "stow.request" and e.get("stored") == 3 for e in gw.events())
        assert not any(phi in gw.log_text() for phi in ("Stowtest", "PHI-STOW-4711", "ACC-STOW-99"))
    finally:
        gw.stop()
