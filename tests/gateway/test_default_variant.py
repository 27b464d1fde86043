"""`[enhance] default_variant`: which variant of the default denoiser an unrouted series gets.

The gateway runs as a child process and dcmtk storescu pushes a real MR series; the derived files say which
enhancer ran (the private block), so the test reads the choice from what was delivered, not from the code.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_utils.private_tags import read_block
from gateway import settings
from gateway.enhance import routing
from gateway.errors import ConfigError
from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import make_series


def _parse(**enhance: object) -> settings.Settings:
    doc = {"destinations": [{"name": "a", "type": "folder", "path": "/tmp/a"}], "enhance": enhance}
    return settings.parse(doc, environ={})


def test_the_setting_is_checked_and_auto_by_default() -> None:
    assert _parse().enhance.default_variant == "auto"
    assert _parse(default_variant="quality").enhance.default_variant == "quality"
    with pytest.raises(ConfigError, match="enhance.default_variant = 'best'"):
        _parse(default_variant="best")


@pytest.mark.parametrize(
    ("variant", "device", "quality"),
    [
        ("auto", "cpu", False),
        ("auto", "cuda", True),
        ("auto", "cuda:1", True),
        ("fast", "cuda", False),
        ("quality", "cpu", True),
    ],
)
def test_auto_means_quality_on_a_gpu_only(variant: str, device: str, quality: bool) -> None:
    assert routing.wants_quality(variant, device) is quality


def test_a_route_wins_over_the_variant() -> None:
    routes = _parse().routes
    assert routing.choose(routes, "MR", "", quality=True)[0] == "ncdn-mr-x8"
    assert routing.choose(routes, "MR", "", quality=False)[0] == "ncdn-mr"
    assert routing.choose(routes, "CR", "", quality=True)[0] == "ncdn-xr"  # XR gained too little from x8
    routed = settings.parse(
        {
            "destinations": [{"name": "a", "type": "folder", "path": "/tmp/a"}],
            "routes": [{"enhancer": "nlm"}],
        },
        environ={},
    ).routes
    assert routing.choose(routed, "MR", "", quality=True)[0] == "nlm"


@pytest.mark.parametrize(
    ("variant", "expected"), [("quality", "ncdn-mr-x8"), ("fast", "ncdn-mr"), ("auto", None)]
)
def test_an_unrouted_mr_series_gets_the_configured_variant(
    tmp_path: Path, variant: str, expected: str | None
) -> None:
    if expected is None:  # auto: the quality variant only where the worker has a GPU
        import torch

        expected = "ncdn-mr-x8" if torch.cuda.is_available() else "ncdn-mr"
    files = make_series("MR_small.dcm", 3, tmp_path / "in", seed=f"variant-{variant}")
    archive = {"name": "archive", "type": "folder", "path": "{var_dir}/archive"}
    gw = GatewayProcess(tmp_path, destinations=[archive], enhance={"default_variant": variant}).start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1)
        assert job.enhancer == expected
        derived = sorted((gw.var_dir / "archive").rglob("*.dcm"))
        assert len(derived) == 3
        assert {read_block(pydicom.dcmread(p))["enhancer"] for p in derived} == {expected}
    finally:
        gw.stop()
