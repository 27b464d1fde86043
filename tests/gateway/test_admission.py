"""Admission under hostile or broken peers (issue 15, defects 1, 2 and 9): real dcmtk peers, raw sockets,
OpenSSL-made certificates, an in-process SCP on a free loopback port.

Each test asserts behaviour, not timing: a legitimate dcmtk sender succeeds while the attack is still in
place (the attacking sockets are held open for the whole check), and the gateway's answers say why.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from structlog.testing import capture_logs

from gateway.receive.scp import Receiver
from gateway.settings import parse
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.test_tls import _ca, _signed
from tests.peers import dcmtk_env, require_binary, storescu, wait_until
from tests.realdata import make_series

#: The attacker's address: loopback, but not the legitimate sender's 127.0.0.1 (per-host limits apply to it).
ATTACKER = "127.0.0.2"
#: A safety net for a test that fails (a hung peer), never a threshold the test measures.
HANG = 90.0

Make = Callable[..., Receiver]


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Make]:
    made: list[Receiver] = []

    def make(**gateway: Any) -> Receiver:
        var = tmp_path / f"var{len(made)}"
        var.mkdir()
        settings = parse(
            {"gateway": {"host": "127.0.0.1", "port": 0, "var_dir": str(var), "min_free_mb": 0} | gateway,
             "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]},
            environ={},
        )
        receiver = Receiver(settings, State(settings.state_db), LocalSpool(settings.spool_dir, min_free_mb=0))
        receiver.start()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop(grace=1.0)
        receiver.state.close()


def _idle(port: int, payload: bytes = b"", source: str = ATTACKER) -> socket.socket:
    """A connection that sends `payload` (maybe nothing) and then waits, as a slow or silent attacker does."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_gateway(sock: socket.socket) -> bool:
    """Whether the gateway has closed this connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(64) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _echoscu(port: int, *extra: str, aet: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    args = [require_binary("echoscu"), "-v", "-aet", aet, "-aec", "ENHANCE_GW", *extra, "127.0.0.1", str(port)]
    return subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), timeout=HANG, check=False)


#: The first 8 bytes of an A-ASSOCIATE-RQ promising 200 more: a slow client that stops there.
PARTIAL_RQ = struct.pack(">BBI", 0x01, 0, 200) + b"\x00\x01"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    out.mkdir()
    _ca(out, "siteca")
    _signed(out, "gateway", "siteca")
    _signed(out, "modality", "siteca")
    return out


def test_silent_connections_do_not_block_mutual_tls(scp: Make, pki: Path, tmp_path: Path) -> None:
    """Defect 1: a silent TCP connection (and one silent after its TLS handshake began) must not stall the
    handshakes of other senders; the handshake runs in each connection's own thread."""
    tls = {"cert": str(pki / "gateway.pem"), "key": str(pki / "gateway.key"), "ca": str(pki / "siteca.pem"),
           "require_client_cert": True}
    receiver = scp(tls=tls, pre_association_timeout=600)  # the deadline is not what lets the sender in
    silent = [_idle(receiver.port), _idle(receiver.port, b"\x16\x03\x01\x00\xff\x01")]  # nothing; a TLS fragment
    files = make_series("693_UNCR.dcm", 2, tmp_path / "in", seed="admission-tls")
    try:
        run = storescu(receiver.port, files, called_aet="ENHANCE_GW", check=False, timeout=HANG, extra=[
            "-R", "+tls", str(pki / "modality.key"), str(pki / "modality.pem"), "+cf", str(pki / "siteca.pem")])
        assert run.returncode == 0, run.stdout + run.stderr
        assert receiver.state.instance_count() == 2
        assert not any(_closed_by_gateway(s) for s in silent)  # the attack was still in place throughout
    finally:
        for sock in silent:
            sock.close()


def test_a_silent_tls_client_is_dropped_at_the_deadline(scp: Make, pki: Path) -> None:
    tls = {"cert": str(pki / "gateway.pem"), "key": str(pki / "gateway.key")}
    receiver = scp(tls=tls, pre_association_timeout=0.5)
    with _idle(receiver.port) as silent:
        wait_until(lambda: _closed_by_gateway(silent) or None, HANG, "the gateway to drop a silent TLS client")


def test_idle_and_half_open_connections_take_no_association_slot(scp: Make, tmp_path: Path) -> None:
    """Defect 2: 40 connections that sent 8 bytes of an A-ASSOCIATE-RQ, and 40 that connected and closed, from
    the sender's own address, while only 4 slots exist: the sender still gets in (slots count associations)."""
    receiver = scp(max_associations=4, max_associations_per_host=100, pre_association_timeout=600)
    idle = [_idle(receiver.port, PARTIAL_RQ, source="127.0.0.1") for _ in range(40)]
    for _ in range(40):
        _idle(receiver.port, source="127.0.0.1").close()
    files = make_series("693_UNCR.dcm", 2, tmp_path / "in", seed="admission-idle")
    try:
        run = storescu(receiver.port, files, called_aet="ENHANCE_GW", check=False, timeout=HANG)
        assert run.returncode == 0, run.stdout + run.stderr
        assert receiver.state.instance_count() == 2
        assert receiver.slots() == "ok"
        assert not any(_closed_by_gateway(s) for s in idle)
    finally:
        for sock in idle:
            sock.close()


def test_closed_connections_are_noticed_at_once(scp: Make) -> None:
    receiver = scp(pre_association_timeout=600)
    server = receiver.server
    for _ in range(40):
        _idle(receiver.port).close()
    # with a 600 s deadline, only noticing the close can free them
    wait_until(lambda: server.pending() == 0 or None, HANG, "the closed connections to be forgotten")  # type: ignore[union-attr]


def test_one_host_cannot_take_every_connection(scp: Make) -> None:
    """Defect 2: past `max_associations_per_host`, an attacker's connections are closed at once, while the
    ones it already holds are kept until the deadline; other hosts are served."""
    receiver = scp(max_associations_per_host=3, pre_association_timeout=600)
    idle = [_idle(receiver.port, PARTIAL_RQ) for _ in range(40)]
    try:
        wait_until(lambda: sum(_closed_by_gateway(s) for s in idle) == 37 or None, HANG,
                   "37 of the attacker's 40 connections to be closed")
        run = _echoscu(receiver.port)
        assert run.returncode == 0, run.stdout + run.stderr
        assert sum(not _closed_by_gateway(s) for s in idle) == 3
    finally:
        for sock in idle:
            sock.close()


def test_a_slowly_dripped_request_is_dropped_at_the_deadline(scp: Make) -> None:
    receiver = scp(pre_association_timeout=0.5)
    with _idle(receiver.port, PARTIAL_RQ) as slow:
        for _ in range(200):  # a byte at a time keeps the connection busy but never finishes the request
            try:
                slow.sendall(b"\x00")
            except OSError:
                break
            if _closed_by_gateway(slow):
                break
            time.sleep(0.05)
        wait_until(lambda: _closed_by_gateway(slow) or None, HANG, "the gateway to drop the slow client")


def _associate(port: int) -> Any:
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="ENHANCE_GW")


def test_health_says_unhealthy_while_no_slot_is_free_and_why_a_sender_was_rejected(scp: Make) -> None:
    """Defects 2 and 9: /healthz's SCP check fails while every slot is taken, and the rejection of the next
    sender blames the slot limit, not the AE allowlist."""
    receiver = scp(max_associations=1, allowed_calling_aets=["HOLDER", "ECHOSCU"])
    holder = _associate(receiver.port)
    assert holder.is_established
    try:
        assert "gateway.max_associations" in receiver.slots()
        with capture_logs() as logs:
            run = _echoscu(receiver.port)
        assert run.returncode != 0
        assert "Local Limit Exceeded" in run.stdout + run.stderr
        rejected = [e for e in logs if e["event"] == "association.rejected"]
        assert rejected and "association slots" in rejected[0]["reason"], rejected
        assert "allowed_calling_aets" not in rejected[0]["reason"]
    finally:
        holder.release()
    wait_until(lambda: receiver.slots() == "ok" or None, HANG, "the slot to be free again")
    assert _echoscu(receiver.port).returncode == 0


def test_a_peer_hosts_refusal_leaves_nothing_behind(scp: Make) -> None:
    """Defect 9: an AE title bound to another host is rejected before it associates: no statistics entry, no
    association.accepted without its association.closed."""
    receiver = scp(peer_hosts={"ECHOSCU": ["10.9.9.9"]})
    with capture_logs() as logs:
        for _ in range(5):
            run = _echoscu(receiver.port)
            assert run.returncode != 0
        assert _echoscu(receiver.port, aet="OTHER").returncode == 0
    events = [e["event"] for e in logs]
    assert events.count("association.accepted") == events.count("association.closed") == 1, events
    rejected = [e for e in logs if e["event"] == "association.rejected"]
    assert rejected and "peer_hosts" in rejected[0]["reason"]
    assert receiver._assocs == {}


def test_stop_does_not_wait_for_connections_that_never_associated(scp: Make) -> None:
    """Defect 9: SIGTERM's drain waits for associations, not for a TCP connection that never sent a request."""
    receiver = scp(pre_association_timeout=600)
    silent = _idle(receiver.port, source="127.0.0.1")
    try:
        wait_until(lambda: receiver.server.pending() == 1 or None, HANG, "the connection to be seen")  # type: ignore[union-attr]
        started = time.monotonic()
        receiver.stop(grace=60.0)
        assert time.monotonic() - started < 30.0  # far below the grace it used to wait out in full
        wait_until(lambda: _closed_by_gateway(silent) or None, HANG, "the idle connection to be closed")
    finally:
        silent.close()


def test_an_unknown_calling_aet_is_still_blamed_on_the_allowlist(scp: Make) -> None:
    receiver = scp(allowed_calling_aets=["CT01"])
    with capture_logs() as logs:
        run = _echoscu(receiver.port, aet="INTRUDER")
    assert run.returncode != 0
    rejected = [e for e in logs if e["event"] == "association.rejected"]
    assert rejected and rejected[0]["reason"] == "calling AE title not in gateway.allowed_calling_aets", rejected
    assert receiver.slots() == "ok"
