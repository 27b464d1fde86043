"""SIGTERM mid-series: every instance the gateway acknowledged is on disk and in the state store."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
from pynetdicom import AE

from tests.gateway.harness import GatewayProcess, wait_for
from tests.realdata import make_series


def test_sigterm_mid_series_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    files = make_series("693_UNCR.dcm", 40, tmp_path / "in", seed="sigterm")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}], stable_seconds=5.0).start()
    acknowledged: list[str] = []
    refused: list[str] = []
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="ENHANCE_GW")
    assert assoc.is_established

    def push() -> None:
        for path in files:
            if not assoc.is_established:
                break
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            (acknowledged if status and status.get("Status") == 0 else refused).append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()

    sender = threading.Thread(target=push)
    sender.start()
    wait_for(lambda: len(acknowledged) >= 10, 60, "10 acknowledged instances")
    code = gw.terminate()
    sender.join(60)
    assert code == 0, gw.log_text()[-2000:]
    assert any(e["event"] == "gateway.stopped" for e in gw.events())
    state = gw.state()
    for sop in acknowledged:
        assert state.instance_purged(sop) is not None, f"acknowledged {sop} is missing after SIGTERM"
    stored = {p.stem for p in (gw.var_dir / "spool" / "incoming").rglob("*.dcm")}
    assert set(acknowledged) <= stored
    for path in (gw.var_dir / "spool" / "incoming").rglob("*.dcm"):
        assert pydicom.dcmread(path).pixel_array.shape == (512, 512)  # complete, decodable files only
    assert not list((gw.var_dir / "spool" / "tmp").glob("*.part"))
    gw.start()  # and it comes back and finishes the series
    try:
        gw.wait_jobs({"done"}, 1, timeout=120)
    finally:
        gw.stop()
