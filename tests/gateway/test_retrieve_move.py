"""`reprocess` of purged originals with C-MOVE: Orthanc as the source, the gateway registered as its move destination.

Why a real PACS: C-MOVE is three parties on two associations (the gateway's request, the source's C-STOREs to
the gateway's SCP); only a real source shows that the moved instances take the SCP's durable path, restore the
purged rows, and are matched to the reprocess job before it is queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom

from tests.gateway.harness import GatewayProcess
from tests.peers import Orthanc, storescu
from tests.realdata import make_series

CT = "693_UNCR.dcm"


def _source(orthanc: Orthanc, **extra: Any) -> dict[str, Any]:
    return {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port} | extra


def test_purge_then_reprocess_retrieves_originals_with_c_move(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 3, tmp_path / "in", seed="move")
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    storescu(orthanc.dicom_port, files, called_aet=orthanc.aet)  # the originals live in PACS too
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}], sources=[_source(orthanc, retrieve="move")])
    orthanc.add_modality("GATEWAY", "ENHANCE_GW", "127.0.0.1", gw.port)  # the move destination
    gw.start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"done"}, 1)
        gw.cli("purge", "--older-than", "0")
        incoming = gw.var_dir / "spool" / "incoming"
        assert not list(incoming.rglob("*.dcm"))
        out = gw.cli("reprocess", src.StudyInstanceUID, "--enhancer", "unsharp")
        assert "retrieved 3 purged originals from pacs" in out.stdout, out.stdout + out.stderr
        assert len(list(incoming.rglob("*.dcm"))) == 3  # back through the SCP, before the job was queued
        state = gw.state()
        assert all(state.instance_purged(pydicom.dcmread(f).SOPInstanceUID) is False for f in files)
        jobs = gw.wait_jobs({"done"}, 2)
        assert {j.enhancer for j in jobs} == {"gaussian", "unsharp"}
        assert len(state.jobs()) == 2  # the moved instances joined the reprocess job, not a job of their own
        moved = [e for e in gw.events() if e.get("event") == "association.closed" and e.get("calling_aet") == "ORTHANC"]
        assert moved and moved[-1]["stored"] == 3  # they came in over the SCP
    finally:
        gw.stop()


def test_c_move_to_an_unregistered_gateway_says_what_to_fix(tmp_path: Path, orthanc: Orthanc) -> None:
    files = make_series(CT, 2, tmp_path / "in", seed="move-unknown")
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    storescu(orthanc.dicom_port, files, called_aet=orthanc.aet)
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}], sources=[_source(orthanc, retrieve="move")]).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        gw.wait_jobs({"done"}, 1)
        gw.cli("purge", "--older-than", "0")
        out = gw.cli("reprocess", src.StudyInstanceUID, check=False)
        assert out.returncode != 0
        assert "move destination" in out.stderr and "nothing was queued" not in out.stdout
        assert len(gw.state().jobs()) == 1  # no job over originals that are not there
    finally:
        gw.stop()
