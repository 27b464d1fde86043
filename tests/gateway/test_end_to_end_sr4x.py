"""End to end, an sr4x route (issue 14): a low-resolution radiograph series in, the 4x derived series out.

The gateway runs as a real child process; dcmtk's storescu pushes a real CR (RG3's pixels, cut to 128 x 128 as
a low-resolution radiograph: the SRGAN seed's 64x64-in, 256x256-out use) and the derived series is read back
from the archive folder, where a PACS would receive it: the matrix x4, the spacings / 4, the Spatial resampling
code, the enhancer and task in the private block.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_utils.private_tags import read_block
from enhancers import registry
from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import make_series

SIZE = 128


def _low_resolution_cr(tmp_path: Path, count: int) -> list[Path]:
    files = make_series("RG3_UNCR.dcm", count, tmp_path / "in", seed="sr4x-e2e")
    for path in files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[600 : 600 + SIZE, 600 : 600 + SIZE].copy()
        ds.Rows, ds.Columns = SIZE, SIZE
        ds.PixelData = pixels.tobytes()
        ds.ImagerPixelSpacing = [0.4, 0.4]
        ds.save_as(path, enforce_file_format=True)
    return files


@pytest.mark.parametrize("enhancer", ["srresnet4x-xr"])
def test_sr4x_route_delivers_a_4x_derived_radiograph(tmp_path: Path, enhancer: str) -> None:
    if enhancer not in registry.names():
        pytest.fail(f"{enhancer} is not registered: its weights must ship in enhancers/weights")
    files = _low_resolution_cr(tmp_path, 2)
    route = {"modality": "CR", "enhancer": enhancer, "task": "sr4x"}
    gw = GatewayProcess(
        tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}], routes=[route]
    ).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1, timeout=240.0)
        assert job.enhancer == enhancer and job.derived_count == 2
        archived = sorted((gw.var_dir / "archive").rglob("*.dcm"))
        assert len(archived) == 2
        ds = pydicom.dcmread(archived[0])
        assert (ds.Rows, ds.Columns) == (4 * SIZE, 4 * SIZE)
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.1, 0.1]
        assert ds.DerivationCodeSequence[0].CodeValue == "113085"
        assert "4x super-resolution" in ds.DerivationDescription
        block = read_block(ds)
        assert block["enhancer"] == enhancer and block["task"] == "sr4x" and block["hallucination_risk"] == "NO"
        assert ds.pixel_array.shape == (4 * SIZE, 4 * SIZE)
    finally:
        gw.stop()
