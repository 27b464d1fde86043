"""STOW-RS destinations (`[[destinations]] type = "dicomweb"`): Orthanc's DICOMweb plugin and the gateway's own
receiver as the servers, a server that is down and comes back, a wrong token.

Why real servers: a STOW-RS delivery is only done when the server's PS3.18 response lists every instance as
stored; both servers answer in their own way (Orthanc's plugin, our receiver with reasons), and the sender's
retry and backoff must carry a delivery over an outage exactly as for a DICOM destination.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from gateway.deliver.dicomweb import stow_files
from gateway.errors import DeliveryError
from gateway.receive.stow import StowService
from gateway.settings import Destination, DicomwebSettings, Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.harness import GatewayProcess, wait_for
from tests.gateway.test_dicomweb import ORTHANC_DICOMWEB
from tests.gateway.test_tls import _ca, _signed
from tests.peers import Orthanc, PeerMissingError, storescu
from tests.realdata import make_series

CT = "693_UNCR.dcm"
TOKEN = "destination-token-0123456789"


def test_stow_files_to_the_gateways_own_receiver(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "peer", dicomweb=DicomwebSettings(enabled=True, port=0, tokens=(TOKEN,)))
    settings.var_dir.mkdir()
    state = State(settings.state_db)
    server = StowService(settings, state, LocalSpool(settings.spool_dir, min_free_mb=0))
    server.start()
    files = make_series(CT, 3, tmp_path / "in", seed="stow-dest")
    try:
        url = f"http://127.0.0.1:{server.port}/dicomweb"
        good = Destination(name="peer", type="dicomweb", url=url, token=TOKEN)
        assert stow_files(good, files) == sum(f.stat().st_size for f in files)
        assert state.instance_count() == 3
        with pytest.raises(DeliveryError, match="HTTP 401: check the destination's token"):
            stow_files(Destination(name="peer", type="dicomweb", url=url, token="wrong-token-0123456789"), files)
    finally:
        server.stop()
        state.close()


def test_derived_series_reach_orthanc_over_stow_rs_after_an_outage(tmp_path: Path) -> None:
    if not ORTHANC_DICOMWEB.exists():
        raise PeerMissingError(f"{ORTHANC_DICOMWEB} is missing: apt-get install -y orthanc-dicomweb")
    files = make_series(CT, 3, tmp_path / "in", seed="stow-orthanc")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    pacs = Orthanc(tmp_path / "orthanc", config={"Plugins": [str(ORTHANC_DICOMWEB)],
                                                 "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    pacs.start()
    url = f"{pacs.url}/dicom-web"
    pacs.stop()  # down when the first delivery is tried; same ports when it comes back
    dest = {"name": "web-pacs", "type": "dicomweb", "url": url}
    gw = GatewayProcess(tmp_path, destinations=[dest], routes=[{"enhancer": "gaussian"}]).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        wait_for(lambda: [e for e in gw.events() if e.get("event") == "send.failed"], 120, "a failed STOW-RS")
        pacs.start()
        (job,) = gw.wait_jobs({"done"}, 1, timeout=120)
        assert job.derived_count == 3
        series = wait_for(lambda: [s for s in pacs.study_series(source.StudyInstanceUID)
                                   if s["MainDicomTags"]["SeriesInstanceUID"] != source.SeriesInstanceUID], 30,
                          "the derived series in Orthanc")
        assert len(series) == 1 and len(series[0]["Instances"]) == 3
        assert [d.state for d in gw.state().deliveries(job.id)] == ["done"]
    finally:
        gw.stop()
        pacs.kill()


def test_stow_over_https_verifies_the_servers_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _ca(certs, "ca")
    _signed(certs, "server", "ca")
    settings = Settings(var_dir=tmp_path / "peer", dicomweb=DicomwebSettings(
        enabled=True, port=0, tokens=(TOKEN,), cert=certs / "server.pem", key=certs / "server.key"))
    settings.var_dir.mkdir()
    state = State(settings.state_db)
    server = StowService(settings, state, LocalSpool(settings.spool_dir, min_free_mb=0))
    server.start()
    files = make_series(CT, 2, tmp_path / "in", seed="stow-tls")
    try:
        url = f"https://127.0.0.1:{server.port}/dicomweb"
        with pytest.raises(DeliveryError, match="SSLError|certificate"):  # verified against the system CAs: refused
            stow_files(Destination(name="peer", type="dicomweb", url=url, token=TOKEN), files)
        assert state.instance_count() == 0
        stow_files(Destination(name="peer", type="dicomweb", url=url, token=TOKEN, ca=certs / "ca.pem"), files)
        assert state.instance_count() == 2
        plain = f"http://127.0.0.1:{server.port}/dicomweb"  # plain HTTP to the HTTPS port: no answer, nothing stored
        with pytest.raises(DeliveryError):
            stow_files(Destination(name="peer", type="dicomweb", url=plain, token=TOKEN), files[:1], timeout=5)
    finally:
        server.stop()
        state.close()
