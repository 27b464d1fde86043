"""STOW-RS takes the SCP's checks, all of them: what a C-STORE refuses, a STOW-RS part must not get stored."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import threading
import tracemalloc
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from bench.drills.badinput import body_of, fresh_instance, with_item_overrun
from gateway.dimse.status import CANNOT_UNDERSTAND
from gateway.errors import ConfigError
from gateway.receive.stow import InstanceSink, StowService, read_stow
from gateway.settings import DicomwebSettings, Settings, parse
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.harness import GatewayProcess, write_config
from tests.peers import free_port, port_accepts

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.8.1", "1.2.826.0.1.3680043.8.498.8.2"
TOKEN = "stow-test-token-0123456789"


def _part10(ds: pydicom.Dataset, body: bytes) -> bytes:
    """A Part 10 file: preamble, File Meta of `ds`, then `body` verbatim."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    whole = out.getvalue()
    return whole[: len(whole) - len(body_of(ds))] + body


def test_a_part_with_an_item_longer_than_its_sequence_is_refused(tmp_path: Path) -> None:
    """Issue 15, defect 8: the SCP refuses this with 0xC210; STOW-RS stored it (pydicom clips the item)."""
    state = State(tmp_path / "state.db")
    sink = InstanceSink(state, LocalSpool(tmp_path / "spool"))
    ds = fresh_instance("stow-overrun", STUDY, SERIES)
    try:
        outcome = sink.accept(_part10(ds, with_item_overrun(body_of(ds), 20)), None, "token")
        assert outcome.status == CANNOT_UNDERSTAND, outcome
        assert "malformed sequence" in outcome.reason
        assert state.instance_purged(str(ds.SOPInstanceUID)) is None  # never recorded
        well_formed = fresh_instance("stow-well-formed", STUDY, SERIES)
        assert sink.accept(_part10(well_formed, with_item_overrun(body_of(well_formed), 0)), None, "token").status == 0
    finally:
        state.close()


def test_a_malformed_content_length_is_answered_400(tmp_path: Path) -> None:
    """`Content-Length: abc` raised ValueError out of the handler: no answer, a traceback on stderr."""
    settings = Settings(var_dir=tmp_path / "var", dicomweb=DicomwebSettings(enabled=True, port=0, tokens=(TOKEN,)))
    settings.var_dir.mkdir(parents=True)
    state = State(settings.state_db)
    service = StowService(settings, state, LocalSpool(settings.spool_dir, min_free_mb=0))
    service.start()
    try:
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                         b'Content-Type: multipart/related; type="application/dicom"; boundary=b0\r\n'
                         b"Content-Length: abc\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"Content-Length" in answer
    finally:
        service.stop()
        state.close()


def test_anonymous_reception_is_refused_beyond_loopback(tmp_path: Path) -> None:
    """config/gateway.toml says `anonymous = true` is for a loopback test setup, never on a network: enforce it."""
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    https = {"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}
    doc = {"destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]}
    with pytest.raises(ConfigError, match="dicomweb.anonymous"):
        parse(doc | {"dicomweb": {"enabled": True, "anonymous": True, "host": "0.0.0.0"} | https}, environ={})
    assert parse(doc | {"dicomweb": {"enabled": True, "anonymous": True}}, environ={}).dicomweb.anonymous
    assert parse(doc | {"dicomweb": {"enabled": True, "tokens": [TOKEN], "host": "0.0.0.0"} | https},
                 environ={}).dicomweb.host == "0.0.0.0"


def test_a_taken_stow_port_stops_the_start_before_anything_listens(tmp_path: Path) -> None:
    """As for the metrics port (issue 15, defect 11): a clash on [dicomweb] port is found before the SCP listens,
    with one line naming the setting, not an `OSError: [Errno 98]` traceback from a half-started gateway."""
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = int(squatter.getsockname()[1])
        scp_port = free_port()
        config = write_config(tmp_path / "gateway.toml", var_dir=tmp_path / "var", port=scp_port, metrics_port=0,
                              destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                              dicomweb={"enabled": True, "port": taken, "tokens": [TOKEN]})
        run = subprocess.run([sys.executable, "-m", "gateway.admin.cli", "--config", str(config), "serve"],
                             capture_output=True, text=True, cwd=tmp_path, env=GatewayProcess.env(), timeout=120,
                             check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert f"[dicomweb] port = {taken}" in run.stderr, run.stderr
    assert "scp.listening" not in run.stdout
    assert not port_accepts(scp_port)


def test_basic_credentials_are_verified_only_inside_a_request_slot(tmp_path: Path) -> None:
    """Argon2 verification ran before the max_requests slot was taken: a burst of HTTP Basic requests queued
    one thread each on the verification lock instead of being answered 503 with Retry-After."""
    settings = Settings(var_dir=tmp_path / "var",
                        dicomweb=DicomwebSettings(enabled=True, port=0, user_roles=("admin",), max_requests=1))
    settings.var_dir.mkdir(parents=True)
    state = State(settings.state_db)
    service = StowService(settings, state, LocalSpool(settings.spool_dir, min_free_mb=0))
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_verify(name: str, password: str) -> None:
        calls.append(name)
        inside.set()
        release.wait(30)  # then None: a refused credential

    service.credentials.auth.verify = slow_verify  # type: ignore[method-assign]
    service.start()
    basic = "Basic " + base64.b64encode(b"ada:some-password-1").decode()
    request = (b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + basic.encode() + b"\r\n"
               b'Content-Type: multipart/related; type="application/dicom"; boundary=b0\r\nContent-Length: 0\r\n\r\n')
    first = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    try:
        first.sendall(request)
        assert inside.wait(10)  # the first request holds the only slot, inside the verification
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(request)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Retry-After: 5" in answer
        assert calls == ["ada"]  # the second never reached the verification
        release.set()
        assert first.recv(4096).startswith(b"HTTP/1.1 401 ")
    finally:
        release.set()
        first.close()
        service.stop()
        state.close()


def test_one_stow_instance_is_held_in_memory_about_twice_not_three_times(tmp_path: Path) -> None:
    """docs/dicomweb.md states the bound (2 x max_instance_mb per request); the part buffer was copied to bytes,
    sliced past its File Meta and joined to new File Meta: three whole copies alive at the peak."""
    ds = fresh_instance("stow-memory", STUDY, SERIES)
    ds.Rows = ds.Columns = 2048
    ds.PixelData = b"\1\0" * (2048 * 2048)  # 8 MiB: the pixels dwarf everything else traced
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    part10 = out.getvalue()
    del out
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + part10 + b"\r\n--b0--\r\n"
    state = State(tmp_path / "state.db")
    sink = InstanceSink(state, LocalSpool(tmp_path / "spool"))
    tracemalloc.start()
    try:
        result = read_stow(BytesIO(body), len(body), 'multipart/related; type="application/dicom"; boundary=b0',
                           max_part=64 << 20, sink=sink, study_uid=None, sender="token")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        state.close()
    assert [o.status for o in result.outcomes] == [0]
    assert peak < 2.5 * len(part10), peak / len(part10)
