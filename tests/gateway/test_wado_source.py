"""`reprocess` of purged originals from a WADO-RS source: Orthanc with its DICOMweb plugin.

Why a real server: WADO-RS answers are multipart/related bodies whose exact shape (boundary, part headers,
transfer-syntax negotiation) differs between servers; the retrieved files must take the receiver's durable
path and restore the purged rows before the reprocess job is queued.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.gateway.harness import GatewayProcess
from tests.gateway.test_dicomweb import ORTHANC_DICOMWEB
from tests.peers import Orthanc, PeerMissingError, storescu
from tests.realdata import make_series

CT = "693_UNCR.dcm"


def _orthanc(workdir: Path) -> Orthanc:
    if not ORTHANC_DICOMWEB.exists():
        raise PeerMissingError(f"{ORTHANC_DICOMWEB} is missing: apt-get install -y orthanc-dicomweb")
    return Orthanc(workdir, config={"Plugins": [str(ORTHANC_DICOMWEB)],
                                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})


def test_purge_then_reprocess_retrieves_originals_with_wado_rs(tmp_path: Path) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="wado")
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    with _orthanc(tmp_path / "orthanc") as pacs:
        for f in files:
            pacs.post("/instances", f.read_bytes())
        source = {"name": "web-pacs", "type": "dicomweb", "url": f"{pacs.url}/dicom-web"}
        gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                            routes=[{"enhancer": "gaussian"}], sources=[source]).start()
        try:
            storescu(gw.port, files, called_aet="ENHANCE_GW")
            gw.wait_jobs({"done"}, 1)
            before = {p.name: p.read_bytes() for p in (gw.var_dir / "spool" / "incoming").rglob("*.dcm")}
            gw.cli("purge", "--older-than", "0")
            assert not list((gw.var_dir / "spool" / "incoming").rglob("*.dcm"))
            out = gw.cli("reprocess", src.StudyInstanceUID, "--enhancer", "unsharp")
            assert "retrieved 3 purged originals from web-pacs" in out.stdout, out.stdout + out.stderr
            after = {p.name: p for p in (gw.var_dir / "spool" / "incoming").rglob("*.dcm")}
            assert after.keys() == before.keys()
            originals = {f"{pydicom.dcmread(f).SOPInstanceUID}.dcm": f for f in files}
            for name, path in after.items():  # the same pixels as sent, in a file the SCP would have written
                back = pydicom.dcmread(path)
                assert back.PixelData == pydicom.dcmread(originals[name]).PixelData
                assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
            jobs = gw.wait_jobs({"done"}, 2)
            assert {j.enhancer for j in jobs} == {"gaussian", "unsharp"}
            assert len(gw.state().jobs()) == 2
            wrong = {"name": "web-pacs", "type": "dicomweb", "url": f"{pacs.url}/no-such-root"}
            gw.cli("purge", "--older-than", "0")
            bad = GatewayProcess.cli(_with_source(gw, tmp_path, wrong), "reprocess", src.StudyInstanceUID, check=False)
            assert bad.returncode != 0 and "answered HTTP 404" in bad.stderr
            assert len(gw.state().jobs()) == 2  # nothing queued over missing originals
        finally:
            gw.stop()


def _with_source(gw: GatewayProcess, tmp_path: Path, source: dict[str, object]) -> GatewayProcess:
    """The same gateway's config with another [[sources]] entry (the CLI reads the file it is given)."""
    other = GatewayProcess.__new__(GatewayProcess)
    other.__dict__.update(gw.__dict__)
    text = gw.config.read_text()
    head, _, tail = text.partition("[[sources]]")
    rest = tail.split("\n\n", 1)[1] if "\n\n" in tail else ""
    lines = ["[[sources]]"] + [f'{k} = "{v}"' for k, v in source.items()]
    other.config = tmp_path / "gateway-other.toml"
    other.config.write_text(head + "\n".join(lines) + "\n\n" + rest)
    return other
