"""Hostile-network drill (issue 15): slow clients, connection floods, idle associations (against a plain
gateway), silent TLS clients (against one with mutual DICOM TLS) and a hung PACS, each against a real gateway
process while a legitimate modality keeps probing it.

What it reports, per attack: how long legitimate senders were refused (the longest span from a failed probe to
the next successful one, and the number of failed probes), the slowest successful probe, and for the hung PACS
whether any delivery to another destination was delayed beyond that destination's own timeout.

    .venv/bin/python -m bench.drills.hostile                 # 30 s per attack (about 4 minutes)
    .venv/bin/python -m bench.drills.hostile --seconds 8     # quick

The attackers connect from 127.0.0.2 (loopback, another address than the modality's 127.0.0.1), as an attacker
on another host would; the legitimate modality is dcmtk `echoscu` (with `+tls` and a certificate the site CA
signed against the TLS gateway) every half second, and `storescu +tls` in the hung-PACS phase. Exit status 1 when a legitimate sender was refused or a delivery was
delayed beyond its own destination's timeout.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.drills.common import FAST_ROUTE, DrillGateway
from tests.gateway.test_tls import _ca, _signed
from tests.peers import StoreSCP, dcmtk_env, require_binary, storescu
from tests.realdata import make_series

ATTACKER = "127.0.0.2"
#: 8 bytes of an A-ASSOCIATE-RQ that promises 200 more.
PARTIAL_RQ = struct.pack(">BBI", 0x01, 0, 200) + b"\x00\x01"


@dataclass
class Probe:
    started: float
    ended: float
    ok: bool


@dataclass
class AttackResult:
    """One row of the table."""

    attack: str
    seconds: float
    attack_connections: int = 0
    probes: list[Probe] = field(default_factory=list)
    delayed: int | None = None  # deliveries delayed beyond their own destination's timeout (hung PACS only)
    delivery_note: str = ""

    @property
    def failed(self) -> int:
        return sum(not p.ok for p in self.probes)

    @property
    def longest_refusal(self) -> float:
        """Longest span from a failed probe's start to the end of the next successful probe (or the last probe)."""
        longest, since = 0.0, None
        for probe in sorted(self.probes, key=lambda p: p.started):
            if not probe.ok and since is None:
                since = probe.started
            elif probe.ok and since is not None:
                longest, since = max(longest, probe.ended - since), None
        if since is not None and self.probes:
            longest = max(longest, max(p.ended for p in self.probes) - since)
        return longest

    @property
    def slowest_ok(self) -> float:
        return max((p.ended - p.started for p in self.probes if p.ok), default=0.0)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and not self.delayed

    def row(self) -> dict[str, Any]:
        return {
            "attack": self.attack, "seconds": round(self.seconds, 1), "attack connections": self.attack_connections,
            "legit probes": len(self.probes), "refused probes": self.failed,
            "longest refusal s": round(self.longest_refusal, 2), "slowest ok probe s": round(self.slowest_ok, 2),
            "deliveries delayed beyond own timeout": "-" if self.delayed is None else self.delayed,
            "verdict": "PASS" if self.passed else "FAIL",
        }


# --------------------------------------------------------------------------------------------------------------
# the legitimate modality


class Pki:
    """A site CA, the gateway's certificate and the modality's, made with OpenSSL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        _ca(root, "siteca")
        _signed(root, "gateway", "siteca")
        _signed(root, "modality", "siteca")

    def gateway_tls(self) -> dict[str, Any]:
        return {"cert": str(self.root / "gateway.pem"), "key": str(self.root / "gateway.key"),
                "ca": str(self.root / "siteca.pem"), "require_client_cert": True}

    def client_args(self) -> list[str]:
        return ["+tls", str(self.root / "modality.key"), str(self.root / "modality.pem"),
                "+cf", str(self.root / "siteca.pem")]


def echo_probe(port: int, pki: Pki | None, timeout: float = 20.0) -> Probe:
    """One C-ECHO from 127.0.0.1 (over mutual TLS with `pki`), as a modality checking the node before it sends."""
    tls = pki.client_args() if pki is not None else []
    args = [require_binary("echoscu"), "-to", "10", "-ta", "10", "-td", "10", "-aet", "MODALITY",
            "-aec", "ENHANCE_GW", *tls, "127.0.0.1", str(port)]
    started = time.monotonic()
    try:
        ok = subprocess.run(args, capture_output=True, env=dcmtk_env(), timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return Probe(started, time.monotonic(), ok)


def probe_while(stop: threading.Event, port: int, pki: Pki | None, out: list[Probe], interval: float = 0.5) -> None:
    while not stop.is_set():
        out.append(echo_probe(port, pki))
        stop.wait(interval)


# --------------------------------------------------------------------------------------------------------------
# the attacks (each runs until `stop`, returns how many connections it opened)


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(ATTACKER, 0))
    except OSError:
        return None


def _alive(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(64) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _hold(port: int, stop: threading.Event, count: int, first: bytes, drip: bytes, every: float) -> int:
    """Keep `count` connections open that sent `first` and then `drip` every `every` s; reopen what is dropped."""
    socks: list[socket.socket] = []
    opened = 0
    while not stop.is_set():
        for dead in [s for s in socks if not _alive(s)]:
            dead.close()
            socks.remove(dead)
        while len(socks) < count and not stop.is_set():
            sock = _connect(port)
            if sock is None:
                break
            opened += 1
            try:
                if first:
                    sock.sendall(first)
            except OSError:
                sock.close()
                continue
            socks.append(sock)
        for sock in socks:
            if drip:
                try:
                    sock.sendall(drip)
                except OSError:
                    pass
        stop.wait(every)
    for sock in socks:
        sock.close()
    return opened


def slow_clients(port: int, stop: threading.Event) -> int:
    """40 connections that send 8 bytes of an A-ASSOCIATE-RQ, then one byte a second, renewed when dropped."""
    return _hold(port, stop, 40, PARTIAL_RQ, b"\x00", 1.0)


def silent_tls_clients(port: int, stop: threading.Event) -> int:
    """40 TCP connections to the TLS port that never start the handshake, renewed when dropped."""
    return _hold(port, stop, 40, b"", b"", 0.2)


def connection_flood(port: int, stop: threading.Event) -> int:
    """4 threads that connect and close as fast as they can (half-open churn)."""
    counts = [0] * 4

    def churn(i: int) -> None:
        while not stop.is_set():
            sock = _connect(port)
            if sock is not None:
                counts[i] += 1
                sock.close()

    threads = [threading.Thread(target=churn, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def idle_associations(port: int, stop: threading.Event) -> int:
    """40 associations that then say nothing (a stuck or malicious node that knows an accepted AE title)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    held: list[Any] = []
    opened = 0
    while not stop.is_set():
        held = [a for a in held if a.is_established]
        while len(held) < 40 and not stop.is_set():
            ae = AE(ae_title="IDLER")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = 600
            assoc = ae.associate("127.0.0.1", port, ae_title="ENHANCE_GW", bind_address=(ATTACKER, 0))
            opened += 1
            if not assoc.is_established:
                break
            held.append(assoc)
        stop.wait(0.5)
    for assoc in held:
        assoc.abort()
    return opened


def run_attack(
    name: str, attack: Callable[[threading.Event], int], port: int, pki: Pki | None, seconds: float
) -> AttackResult:
    result = AttackResult(name, seconds)
    stop = threading.Event()
    opened: list[int] = []
    attacker = threading.Thread(target=lambda: opened.append(attack(stop)), daemon=True)
    attacker.start()
    time.sleep(min(2.0, seconds / 4))  # let the attack take hold before the modality arrives
    started = time.monotonic()
    prober = threading.Thread(target=probe_while, args=(stop, port, pki, result.probes), daemon=True)
    prober.start()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    prober.join(60)
    attacker.join(60)
    result.seconds = time.monotonic() - started
    result.attack_connections = opened[0] if opened else 0
    return result


# --------------------------------------------------------------------------------------------------------------
# the hung PACS


class BlackHole:
    """Accepts TCP connections and never answers: a hung PACS."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def hung_pacs(work: Path, pki: Pki, seconds: float, series: int = 4, timeout: float = 10.0) -> AttackResult:
    """Series pushed while one of three destinations accepts TCP and never answers: every series must reach the
    archive folder and the healthy PACS within their own timeout of being enhanced."""
    result = AttackResult("hung PACS", seconds)
    hole = BlackHole()
    with StoreSCP(work / "pacs", aet="STORESCP") as healthy:
        gw = DrillGateway(work / "gw-hung", destinations=[
            {"name": "hung", "type": "dicom", "ae_title": "HUNG", "host": "127.0.0.1", "port": hole.port},
            {"name": "archive", "type": "folder", "path": "{var_dir}/archive"},
            {"name": "pacs", "type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": healthy.port},
        ], routes=FAST_ROUTE, sender={"dimse_timeout": timeout, "circuit_failures": 2, "circuit_seconds": 5},
            gateway={"tls": pki.gateway_tls()}, stable_seconds=1.0).start()
        stop = threading.Event()
        prober = threading.Thread(target=probe_while, args=(stop, gw.port, pki, result.probes), daemon=True)
        started = time.monotonic()
        prober.start()
        try:
            for n in range(series):
                files = make_series("693_UNCR.dcm", 3, work / f"series{n}", seed=f"hostile-hung-{n}")
                storescu(gw.port, files, called_aet="ENHANCE_GW", calling_aet="MODALITY", extra=["-R", *pki.client_args()])
            deadline = time.monotonic() + max(seconds, 180.0)
            while time.monotonic() < deadline:
                done = [e for e in gw.events() if e.get("event") == "send.done"]
                if sum(e.get("destination") in ("archive", "pacs") for e in done) >= 2 * series:
                    break
                time.sleep(0.5)
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        finally:
            stop.set()
            prober.join(60)
            result.seconds = time.monotonic() - started
            events = gw.events()
            gw.stop()
            hole.close()
    enhanced = {e["job_id"]: _ts(e) for e in events if e.get("event") == "job.enhanced" and "job_id" in e}
    delays = {name: [_ts(e) - enhanced[e["job_id"]] for e in events if e.get("event") == "send.done"
                     and e.get("destination") == name and e.get("job_id") in enhanced] for name in ("archive", "pacs")}
    missing = {name: series - len(d) for name, d in delays.items()}
    result.delayed = sum(d > timeout for ds in delays.values() for d in ds) + sum(missing.values())
    hung_tries = sum(e.get("event") == "send.failed" and e.get("destination") == "hung" for e in events)
    opened = sum(e.get("event") == "destination.circuit_open" for e in events)
    worst = {name: round(max(d, default=0.0), 2) for name, d in delays.items()}
    result.delivery_note = (f"worst enhanced->delivered: archive {worst['archive']} s, pacs {worst['pacs']} s"
                            f" (timeout {timeout:g} s); missing {missing}; hung PACS: {hung_tries} failed tries,"
                            f" circuit opened {opened}x")
    return result


# --------------------------------------------------------------------------------------------------------------


def _bound(attack: Callable[[int, threading.Event], int], port: int) -> Callable[[threading.Event], int]:
    return lambda stop: attack(port, stop)


def _baseline(port: int, stop: threading.Event) -> int:
    stop.wait()
    return 0


def hostile_drill(work: Path, *, seconds: float = 30.0, only: tuple[str, ...] = ()) -> list[AttackResult]:
    """Each attack against the gateway it targets: a plain one (slow clients, floods, idle associations) or one
    with mutual DICOM TLS (silent TLS clients), each with its own baseline; then the hung PACS (TLS)."""
    pki = Pki(work / "pki")
    results: list[AttackResult] = []
    plans: dict[str, dict[str, Callable[[int, threading.Event], int]]] = {
        "plain": {
            "none (baseline, plain)": _baseline,
            "slow clients (40, 1 byte/s)": slow_clients,
            "connection flood (4 threads)": connection_flood,
            "idle associations (40)": idle_associations,
        },
        "tls": {
            "none (baseline, mutual TLS)": _baseline,
            "silent TLS clients (40)": silent_tls_clients,
        },
    }
    for kind, attacks in plans.items():
        selected = [a for a in attacks if not only or any(o in a for o in only)]
        if not selected:
            continue
        tls = kind == "tls"
        gw = DrillGateway(work / f"gw-{kind}", destinations=[{"name": "a", "type": "folder", "path": "{var_dir}/a"}],
                          routes=FAST_ROUTE, gateway={"tls": pki.gateway_tls()} if tls else {}).start()
        try:
            for name in selected:
                results.append(run_attack(name, _bound(attacks[name], gw.port), gw.port, pki if tls else None,
                                          seconds))
        finally:
            gw.stop()
    if not only or any("hung" in o for o in only):
        results.append(hung_pacs(work, pki, seconds))
    return results


def format_results(results: list[AttackResult]) -> str:
    rows = [r.row() for r in results]
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    notes = [f"{r.attack}: {r.delivery_note}" for r in results if r.delivery_note]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each attack (30)")
    parser.add_argument("--only", nargs="*", default=[], help="attacks whose name contains one of these words")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        results = hostile_drill(Path(tmp), seconds=args.seconds, only=tuple(args.only))
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps([r.row() | {"note": r.delivery_note} for r in results], indent=2))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
