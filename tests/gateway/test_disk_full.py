"""A running gateway whose var dir is on a full file system: quiet log, truthful /healthz, nothing lost.

Why a real gateway on a real tmpfs: a full disk fails SQLite (SQLITE_FULL), file writes (ENOSPC) and the free
space check at once, in the service and its worker processes; only the real thing shows what an admin's
journal and monitoring see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import free_port, storescu
from tests.realdata import make_series
from tests.smalldisk import SmallDisk

CT = "693_UNCR.dcm"


@pytest.fixture
def var_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "var", size_mb=8)  # the harness's var dir is <root>/var
    try:
        yield disk
    finally:
        disk.close()


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _health(port: int) -> requests.Response | None:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except requests.RequestException:
        return None


def test_full_var_dir_logs_once_reports_unhealthy_and_resumes_when_freed(tmp_path: Path, var_disk: SmallDisk) -> None:
    archive = tmp_path / "archive"  # on the ordinary disk: only the var dir is full
    config: dict[str, Any] = {
        "destinations": [{"name": "archive", "type": "folder", "path": str(archive)}],
        "routes": [{"enhancer": "gaussian"}],
        "gateway": {"min_free_mb": 0},  # watermark off: the disk really fills, and health must still say so
    }
    # A series received while there was room, then the disk fills before the series is complete: a first run
    # with a long stable_seconds receives it, a second with a short one completes it (no race on a timer).
    # `admin` is an admin's CLI or console connection, open throughout: it keeps SQLite's -wal and -shm files,
    # which a gateway starting on a full disk could not create (a start-up failure, not this test's subject).
    first = GatewayProcess(tmp_path, stable_seconds=3600, **config).start()
    admin = first.state()
    gw = GatewayProcess(tmp_path, stable_seconds=0.5, **config)
    try:
        storescu(first.port, make_series(CT, 2, tmp_path / "in", seed="diskfull"), called_aet="ENHANCE_GW")
        assert var_disk.fill() < 100_000
        first.stop()
        offset = len(gw.log_text())
        gw.start()
        wait_for(lambda: "completion.failing" in gw.log_text()[offset:], 60, "completion.failing in the log")
        wait_for(lambda: _health(gw.metrics_port) is not None, 30, "the HTTP endpoint")  # a 503 is falsy
        health = _health(gw.metrics_port)
        assert health is not None and health.status_code == 503, health and health.text
        disk_line = next(line for line in health.text.splitlines() if line.startswith("disk: "))
        assert "MB free under" in disk_line and "the file system is full" in disk_line, disk_line
        metrics = requests.get(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).text
        (free,) = [float(line.split()[1]) for line in metrics.splitlines()
                   if line.startswith("enhance_gw_disk_free_bytes ")]
        assert free < 100_000 and "enhance_gw_disk_watermark_bytes 0.0" in metrics
        time.sleep(4)  # the completion loop keeps trying meanwhile (0.5 s, 1 s, 2 s apart): it must stay quiet
        var_disk.drain()
        jobs = gw.wait_jobs({"done"}, 1, timeout=120)
        assert jobs[0].derived_count == 2 and jobs[0].attempts == 1 and jobs[0].error is None  # delivered at once
        assert len(list(archive.rglob("*.dcm"))) == 2
        healthy = _health(gw.metrics_port)
        assert healthy is not None and healthy.status_code == 200 and "disk: ok" in healthy.text
    finally:
        first.stop()
        gw.stop()
        admin.close()
    events = _events(gw.log_text()[offset:])
    failing = [e for e in events if e["event"] == "completion.failing"]
    assert len(failing) == 1, failing
    assert failing[0]["kind"] == "disk_full" and "exception" not in failing[0] and "hint" in failing[0]
    assert len([e for e in events if e["event"] == "completion.recovered"]) == 1
    assert not [e for e in events if e["event"] == "completion.error"]
    assert not [e for e in events if "exception" in e and e["event"] != "completion.failing"], "no tracebacks"


def test_sender_on_a_full_disk_logs_once_and_resumes(tmp_path: Path, var_disk: SmallDisk) -> None:
    """A delivery due for a retry while the disk is full: every claim fails in SQLite, one line says so."""
    pacs_down = {"name": "pacs", "type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    gw = GatewayProcess(tmp_path, destinations=[pacs_down], routes=[{"enhancer": "gaussian"}],
                        gateway={"min_free_mb": 0}, sender={"base_seconds": 0.5, "cap_seconds": 1.0}).start()
    admin = gw.state()
    try:
        storescu(gw.port, make_series(CT, 2, tmp_path / "in", seed="sendfull"), called_aet="ENHANCE_GW")
        gw.wait_jobs({"failed"}, 1)  # the first delivery was refused: it is retried every second
        offset = len(gw.log_text())
        assert var_disk.fill() < 100_000
        wait_for(lambda: "sender.failing" in gw.log_text()[offset:], 60, "sender.failing in the log")
        time.sleep(4)  # the sender keeps trying meanwhile (0.5 s, 1 s, 2 s apart): it must stay quiet
        var_disk.drain()
        wait_for(lambda: "sender.recovered" in gw.log_text()[offset:], 60, "sender.recovered in the log")
        (delivery,) = admin.deliveries(1)
        assert delivery.state == "pending"  # still retried as usual, not dead
    finally:
        gw.stop()
        admin.close()
    events = _events(gw.log_text()[offset:])
    failing = [e for e in events if e["event"] == "sender.failing"]
    assert len(failing) == 1 and failing[0]["kind"] == "disk_full" and "exception" not in failing[0], failing
    assert len([e for e in events if e["event"] == "sender.recovered"]) == 1
    assert not [e for e in events if e["event"] == "sender.error" or "exception" in e], "no tracebacks"


def test_a_start_on_a_full_disk_says_so_in_one_line(tmp_path: Path, var_disk: SmallDisk) -> None:
    """No other connection keeps SQLite's -shm file: the database cannot be opened; say why, no traceback."""
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": str(tmp_path / "a")}],
                        gateway={"min_free_mb": 0})
    gw.start()
    gw.stop()  # the state database exists; its -wal and -shm files went with the last connection
    assert var_disk.fill() < 100_000
    done = subprocess.run(
        [sys.executable, "-m", "gateway.admin.cli", "--config", str(gw.config), "serve"],
        capture_output=True, text=True, cwd=tmp_path, env=gw.env(), timeout=120, check=False,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "cannot open the state database" in done.stderr and "the file system is full" in done.stderr
    assert "free space under var_dir" in done.stderr
