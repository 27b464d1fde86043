"""The admin CLI as an admin types it: real `python -m gateway.admin.cli` processes, a real config in tmp_path,
real SQLite state, a real dcmtk storescp for `push` (no gateway needed for any of these)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from gateway import settings
from gateway.admin.cli import build_parser
from gateway.storage.state import State
from tests.gateway.harness import REPO, write_config
from tests.peers import StoreSCP
from tests.realdata import make_series

CT = "CT_small.dcm"


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None,
         stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != settings.ENV_CONFIG}
    return subprocess.run(
        [sys.executable, "-m", "gateway.admin.cli", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
        cwd=cwd, env=base | {"PYTHONPATH": str(REPO)} | (env or {}), timeout=120, check=False,
    )


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "site.toml", var_dir=tmp_path / "var", port=11112, destinations=[
        {"name": "archive", "type": "folder", "path": "{var_dir}/archive"},
        {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
    ])


@pytest.mark.parametrize("command", ["status", "jobs", "studies", "held", "web"])
def test_read_only_commands_never_create_a_state_database(tmp_path: Path, command: str) -> None:
    config = _config(tmp_path)
    for argv in ([command, "--config", str(config)], ["--config", str(config), command]):
        done = _run(*argv, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert f"no state database at {tmp_path / 'var' / 'state.db'}: wrong --config or var_dir?" in done.stderr
        assert f"config: {config} (from --config)" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists()


def test_every_command_takes_its_options_after_the_subcommand() -> None:
    """--config after the subcommand, as before it, for every command that reads the configuration."""
    parser = build_parser()
    cases = {
        "serve": [], "status": ["--json"], "jobs": ["--json"], "studies": ["--json"], "held": ["--json"],
        "retry": ["--dead"], "reprocess": ["1.2.3"], "release": ["4"], "reject": ["4"],
        "purge": ["--older-than", "1"], "echo": ["pacs"], "web": [], "users": ["list"],
    }
    for command, extra in cases.items():
        words = command.split() + extra
        after = parser.parse_args([*words, "--config", "site.toml"])
        before = parser.parse_args(["--config", "site.toml", *words])
        assert after.config == before.config == Path("site.toml"), command
        assert after.needs_config, command
    assert parser.parse_args(["config", "check", "--config", "site.toml"]).config == Path("site.toml")
    assert parser.parse_args(["users", "add", "bob", "--role", "viewer", "--config", "x.toml"]).config == Path("x.toml")
    assert parser.parse_args(["jobs"]).config is None  # nothing given: discovery decides (main)


def test_the_makefile_passes_config_after_serve() -> None:
    """`make run CONFIG=my.toml` appends --config after `serve` (parsed above); the target still says so."""
    makefile = (REPO / "Makefile").read_text()
    assert "enhance-gateway serve $(if $(CONFIG),--config $(CONFIG),)" in makefile


def test_config_discovery_is_said_on_stderr(tmp_path: Path) -> None:
    config = _config(tmp_path)
    named = _run("config", "check", cwd=tmp_path, env={settings.ENV_CONFIG: str(config)})
    assert named.returncode == 0, named.stderr
    assert f"config: {config} (from $ENHANCE_GW_CONFIG)" in named.stderr
    local = tmp_path / "site"
    (local / "config").mkdir(parents=True)
    (local / "config" / "gateway.toml").write_text(config.read_text())
    found = _run("config", "check", cwd=local)
    assert f"config: {local / 'config' / 'gateway.toml'} (from ./config/gateway.toml)" in found.stderr
    bare = _run("config", "check", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    if settings.SYSTEM_CONFIG.is_file():
        assert f"(from {settings.SYSTEM_CONFIG})" in bare.stderr
    else:
        assert "WARNING: no configuration file found" in bare.stderr
        assert str(settings.PACKAGED_CONFIG) in bare.stderr
    missing = _run("status", cwd=tmp_path, env={settings.ENV_CONFIG: str(tmp_path / "gone.toml")})
    assert missing.returncode == 1 and "gone.toml (from $ENHANCE_GW_CONFIG) not found" in missing.stderr


def test_empty_listings_say_so_and_status_lists_every_destination(tmp_path: Path) -> None:
    config = _config(tmp_path)
    State(tmp_path / "var" / "state.db").close()  # a gateway that ran once and received nothing
    jobs = _run("jobs", "--config", str(config), cwd=tmp_path)
    assert (jobs.returncode, jobs.stdout) == (0, "no jobs\n")
    assert _run("jobs", "--state", "dead", "--config", str(config), cwd=tmp_path).stdout == "no jobs in state dead\n"
    assert _run("studies", "--config", str(config), cwd=tmp_path).stdout == "no studies\n"
    assert _run("held", "--config", str(config), cwd=tmp_path).stdout == "no held jobs\n"
    assert json.loads(_run("jobs", "--json", "--config", str(config), cwd=tmp_path).stdout) == []
    status = _run("status", "--config", str(config), cwd=tmp_path)
    assert "destination archive (folder " in status.stdout and "destination pacs (dicom PACS@127.0.0.1:4242)" in status.stdout
    assert "last success never" in status.stdout
    report = json.loads(_run("status", "--json", "--config", str(config), cwd=tmp_path).stdout)
    assert [d["destination"] for d in report["destinations"]] == ["archive", "pacs"]
    assert report["destinations"][1]["last_success_at"] is None


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`jobs | head`: the reader is gone before the first write; exit 1 without a traceback (the docs' recipe)."""
    config = _config(tmp_path)
    State(tmp_path / "var" / "state.db").close()
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = _run("jobs", "--config", str(config), cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr and "Exception" not in done.stderr


def _without_preamble(src: Path, out: Path) -> Path:
    out.write_bytes(src.read_bytes()[132:])  # File Meta group first, as some exporters write it
    return out


def _raw_data_set(src: Path, out: Path) -> Path:
    """The data set alone, implicit VR little endian, no preamble and no File Meta (an ACR-NEMA style file)."""
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    meta_length = struct.unpack("<I", data[140:144])[0]
    out.write_bytes(data[144 + meta_length:])
    return out


def test_push_sends_files_without_preamble_and_names_what_it_skipped(tmp_path: Path) -> None:
    good = make_series(CT, 3, tmp_path / "in" / "good", seed="push")
    odd = tmp_path / "in" / "odd"
    odd.mkdir()
    no_preamble = _without_preamble(good[0].parent / "0001.dcm",
                                     odd / "no-preamble.dcm")  # same SOP instance as good[0]
    raw = _raw_data_set(make_series(CT, 1, tmp_path / "raw-src", seed="raw")[0], odd / "raw.ima")
    notes = odd / "notes.txt"
    notes.write_text("the CD's readme, not DICOM\n")
    with StoreSCP(tmp_path / "scp") as scp:
        done = _run("push", str(tmp_path / "in"), str(tmp_path / "nowhere"), "--to", f"127.0.0.1:{scp.port}",
                    "--aet", "STORESCP", cwd=tmp_path)
        assert done.returncode == 1, done.stderr  # not everything named was sent
        assert done.stdout.startswith("sent 5 instances"), done.stdout
        assert "2 without preamble/File Meta sent as Part 10" in done.stdout
        assert "skipped: 2 file(s)" in done.stderr
        assert f"{notes}: not DICOM" in done.stderr and f"{tmp_path / 'nowhere'}: no such file or folder" in done.stderr
        received = {pydicom.dcmread(p).SOPInstanceUID for p in scp.wait_for(4)}
        assert received == {pydicom.dcmread(p, force=True).SOPInstanceUID for p in [*good, raw]}
        assert str(no_preamble) not in done.stderr
        clean = _run("push", str(tmp_path / "in" / "good"), "--to", f"127.0.0.1:{scp.port}", "--aet", "STORESCP",
                     "--json", cwd=tmp_path)
        assert clean.returncode == 0, clean.stderr
        report = json.loads(clean.stdout)
        assert len(report["sent"]) == 3 and report["skipped"] == report["failed"] == []
