"""Routes that are accepted but said aloud by `config check` (and `reprocess --strength`): an adversarially
trained enhancer, and an MR model above strength 1 (measured to push tissue below half its value; the QA gate
would hold the series)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAD = """
[gateway]
var_dir = "{var}"

[[destinations]]
name = "archive"
type = "folder"
path = "{{var_dir}}/archive"
"""
CONFIG = HEAD + """
[[routes]]
modality = "CT"
enhancer = "ncdn-ct"

[[routes]]
modality = "CR"
enhancer = "{xray}"
task = "sr4x"
"""
MR_ROUTE = HEAD + """
[[routes]]
modality = "CT"
enhancer = "ncdn-ct"
strength = 1.5

[[routes]]
modality = "MR"
enhancer = "{mr}"
strength = {strength}
"""


def _check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "gateway.admin.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("xray", "warned"), [("srgan4x-xr", True), ("srresnet4x-xr", False)])
def test_config_check_warns_about_a_hallucination_risk_route(tmp_path: Path, xray: str, warned: bool) -> None:
    done = _check(tmp_path, CONFIG.format(var=tmp_path / "var", xray=xray))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    if warned:
        assert len(warnings) == 1 and "routes[1]" in warnings[0] and "srgan4x-xr" in warnings[0]
        assert "hallucination risk" in warnings[0]
    else:
        assert warnings == []



@pytest.mark.parametrize(("mr", "strength", "warned"), [
    ("ncdn-mr", 1.5, True), ("ncdn-mr", 1.0, False), ("gaussian", 2.0, False),
])
def test_config_check_warns_about_an_mr_model_above_strength_1(
    tmp_path: Path, mr: str, strength: float, warned: bool
) -> None:
    done = _check(tmp_path, MR_ROUTE.format(var=tmp_path / "var", mr=mr, strength=strength))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    if warned:  # the CT route at 1.5 is not named: the harm was measured on MR
        assert len(warnings) == 1 and "routes[1]" in warnings[0] and "strength 1.5" in warnings[0], warnings
        assert "QA gate will hold" in warnings[0]
    else:
        assert warnings == []


@pytest.mark.parametrize(("enhancer", "strength", "described", "warned"), [
    (None, 1.5, False, True),  # no route matches: the MR default, ncdn-mr
    (None, 1.5, True, False),  # the route for this Series Description runs nlm, as the worker would choose
    ("ncdn-mr", 2.0, True, True), ("ncdn-mr", 1.0, False, False), ("nlm", 2.0, False, False),
    (None, None, False, False),
])
def test_reprocess_says_when_an_mr_model_runs_above_strength_1(
    tmp_path: Path, enhancer: str | None, strength: float | None, described: bool, warned: bool
) -> None:
    import pydicom

    from gateway import settings
    from gateway.admin.ops import reprocess
    from gateway.storage.local_spool import LocalSpool
    from gateway.storage.state import State
    from tests.gateway.inprocess import receive
    from tests.realdata import testfile

    cfg = settings.parse(
        {"gateway": {"var_dir": str(tmp_path)},
         "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
         "routes": [{"modality": "MR", "series_description": "FLAIR", "enhancer": "nlm"}]},
        environ={},
    )
    ds = pydicom.dcmread(testfile("MR_small.dcm"))
    if described:
        ds.SeriesDescription = "T2 FLAIR"
    ds.save_as(tmp_path / "mr.dcm")
    state = State(cfg.state_db)
    receive(state, LocalSpool(cfg.spool_dir), [tmp_path / "mr.dcm"])
    study = state.jobs(limit=1)[0].study_uid
    (done,) = reprocess(cfg, state, study, enhancer=enhancer, strength=strength)
    assert state.job(done.job_id).strength == strength  # queued either way: a warning, not a refusal
    if warned:
        assert done.warning is not None and f"strength {strength:g}" in done.warning
        assert "QA gate will hold" in done.warning
    else:
        assert done.warning is None
