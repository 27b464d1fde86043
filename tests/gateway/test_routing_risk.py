"""A route that names an adversarially trained enhancer is accepted but said aloud: `config check` warns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[gateway]
var_dir = "{var}"

[[destinations]]
name = "archive"
type = "folder"
path = "{{var_dir}}/archive"

[[routes]]
modality = "CT"
enhancer = "ncdn-ct"

[[routes]]
modality = "CR"
enhancer = "{xray}"
task = "sr4x"
"""


def _check(tmp_path: Path, xray: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(var=tmp_path / "var", xray=xray))
    return subprocess.run(
        [sys.executable, "-m", "gateway.admin.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("xray", "warned"), [("srgan4x-xr", True), ("srresnet4x-xr", False)])
def test_config_check_warns_about_a_hallucination_risk_route(tmp_path: Path, xray: str, warned: bool) -> None:
    done = _check(tmp_path, xray)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    if warned:
        assert len(warnings) == 1 and "routes[1]" in warnings[0] and "srgan4x-xr" in warnings[0]
        assert "hallucination risk" in warnings[0]
    else:
        assert warnings == []
