"""A PACS admin's day against a real gateway started as `make run CONFIG=...` starts it (`serve --config FILE`):
push a CT series, a localizer and a mammogram, list what happened, reprocess with a second enhancer, and find
two derived series with two Series Numbers in the archive."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.gateway.harness import GatewayProcess, wait_for
from tests.realdata import make_series

ISO_LOCAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def _serve_with_options_after(gw: GatewayProcess) -> None:
    with open(gw.log_path, "ab") as log:
        gw.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.admin.cli", "serve", "--config", str(gw.config)],
            cwd=gw.root, stdout=log, stderr=subprocess.STDOUT, env=gw.env(),
        )

    def listening() -> bool:
        assert gw.proc is not None
        assert gw.proc.poll() is None, gw.log_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(listening, 60, "the gateway's SCP")


def _cli(gw: GatewayProcess, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
    options = ["--config", str(gw.config)] if config else []  # after the subcommand, as admins type it
    return subprocess.run([sys.executable, "-m", "gateway.admin.cli", *args, *options],
                          capture_output=True, text=True, cwd=gw.root, env=gw.env(), timeout=120, check=True)


def _restamp(files: list[Path], **changes: object) -> list[Path]:
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return files


def test_an_admins_day(tmp_path: Path) -> None:
    ct = make_series("693_UNCR.dcm", 3, tmp_path / "in" / "ct", seed="day-ct")  # Series Number 2, "5/5mm Plain"
    src = pydicom.dcmread(ct[0], stop_before_pixels=True)
    _restamp(make_series("693_UNCR.dcm", 2, tmp_path / "in" / "scout", seed="day-scout", study_uid=src.StudyInstanceUID),
             ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram 0.6 T20f", SeriesNumber=1)
    _restamp(make_series("RG1_UNCR.dcm", 1, tmp_path / "in" / "mg", seed="day-mg"), Modality="MG")
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}])  # a catch-all route opts neither localizers nor MG in
    _serve_with_options_after(gw)
    try:
        assert "config: " + str(gw.config) + " (from --config)" in gw.log_text()
        pushed = _cli(gw, "push", str(tmp_path / "in"), "--to", f"127.0.0.1:{gw.port}", config=False)
        assert pushed.stdout.startswith("sent 6 instances"), pushed.stdout + pushed.stderr
        jobs = {j.series_uid: j for j in gw.wait_jobs({"done", "skipped"}, 3)}
        assert jobs[src.SeriesInstanceUID].state == "done"
        reasons = sorted(j.skip_reason or "" for j in jobs.values() if j.state == "skipped")
        assert reasons[0].startswith("localizer") and reasons[1].startswith("mammography"), reasons

        listing = _cli(gw, "jobs").stdout.splitlines()
        assert listing[0].split()[:5] == ["id", "state", "mod", "series", "n"]
        (ct_row,) = [line for line in listing if "5/5mm Plain" in line]
        assert ct_row.split()[1:3] == ["done", "CT"] and " gaussian " in ct_row and re.search(r" \d+(\.\d)?[smh] ", ct_row)
        assert any("mammography" in line and " MG " in line for line in listing)
        rows = json.loads(_cli(gw, "jobs", "--json").stdout)
        assert all(isinstance(r["id"], int) and ISO_LOCAL.match(r["created_at"]) for r in rows)
        assert {r["series_description"] for r in rows} >= {"5/5mm Plain", "Topogram 0.6 T20f"}
        studies = json.loads(_cli(gw, "studies", "--json").stdout)
        assert all(isinstance(j["id"], int) for s in studies for j in s["jobs"])
        status = _cli(gw, "status").stdout
        assert re.search(r"destination archive \(folder .*\): last success \d{4}-\d\d-\d\dT", status), status

        _cli(gw, "reprocess", src.StudyInstanceUID, "--series", src.SeriesInstanceUID, "--enhancer", "unsharp")
        gw.wait_jobs({"done"}, 2)
        _cli(gw, "reprocess", src.StudyInstanceUID, "--series", src.SeriesInstanceUID)  # gaussian again
        gw.wait_jobs({"done"}, 3)
        numbers: dict[str, set[int]] = {}
        for path in (gw.var_dir / "archive").rglob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.Modality == "CT":
                numbers.setdefault(str(ds.SeriesInstanceUID), set()).add(int(ds.SeriesNumber))
        assert len(numbers) == 2  # gaussian (twice: same series) and unsharp
        assert sorted(n for series in numbers.values() for n in series) == [1002, 2002]
    finally:
        gw.stop()
