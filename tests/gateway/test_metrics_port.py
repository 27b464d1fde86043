"""A metrics port that another program holds (issue 15, defect 11): `serve` stops before the SCP listens, with
one line naming `[metrics] port` and the fix, not a traceback after a half start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.gateway.harness import GatewayProcess, write_config
from tests.peers import free_port, port_accepts


def test_a_taken_metrics_port_stops_the_start_before_anything_listens(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:  # another gateway's metrics endpoint, say
        taken = int(squatter.getsockname()[1])
        scp_port = free_port()
        config = write_config(tmp_path / "gateway.toml", var_dir=tmp_path / "var", port=scp_port, metrics_port=taken,
                              destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}])
        run = subprocess.run([sys.executable, "-m", "gateway.admin.cli", "--config", str(config), "serve"],
                             capture_output=True, text=True, cwd=tmp_path, env=GatewayProcess.env(), timeout=120,
                             check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert f"[metrics] port = {taken}" in run.stderr and "port = 0" in run.stderr, run.stderr
    assert "scp.listening" not in run.stdout  # it failed before listening
    assert not port_accepts(scp_port)
