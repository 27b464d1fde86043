"""Real PostgreSQL and HAProxy for the scale-out tests, started on free loopback ports and torn down after.

Why real servers: the scale-out promises (jobs claimed once with `FOR UPDATE SKIP LOCKED`, leases that expire,
LISTEN/NOTIFY wake-ups, a database restarted mid-flow, receivers behind a TCP load balancer) are properties of
PostgreSQL and HAProxy themselves; an in-memory stand-in would only agree with its author.

Why `runuser`: CI runs as root and PostgreSQL refuses to run as root, so `initdb` and `postgres` run as the
Debian `postgres` user (created by the package) in a data directory that user owns. Authentication is `trust`
on 127.0.0.1 only: the cluster lives for one test session in a temporary directory.

A missing binary fails the test (`PeerMissingError`), as for dcmtk and Orthanc: a skipped real-peer test would
hide a broken CI image. `scripts/bootstrap.sh test` installs `postgresql` and `haproxy` when missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.peers import LOOPBACK, PeerError, PeerMissingError, free_port, port_accepts, wait_until


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them off PATH, in /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise PeerMissingError(f"{name} not found: install PostgreSQL (scripts/bootstrap.sh test does)")
    return candidates[0]


def _as_postgres(argv: Sequence[str]) -> list[str]:
    """Run as the `postgres` user when we are root (PostgreSQL refuses root), as ourselves otherwise."""
    if os.geteuid() != 0:
        return list(argv)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PeerMissingError("no `postgres` user: install Debian's postgresql package") from None
    return ["runuser", "-u", "postgres", "--", *argv]


class PostgresServer:
    """One throw-away PostgreSQL cluster: `initdb` once, then `start`/`stop`/`kill` as often as a test needs.

    `url(db)` gives a libpq URL; `create_database(name)` makes a fresh database (one per test, cheap).
    """

    def __init__(self, root: Path | None = None, *, fsync: bool = False) -> None:
        """`fsync` False (the tests' default): commits are not flushed, a throw-away cluster needs no durability.
        bench/scale.py turns it on, so PostgreSQL's commits are timed against SQLite's, which sync."""
        self.fsync = fsync
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="pg-")) if root is None else root
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._init()

    def _init(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            for path in (self.data, self.sockets):
                shutil.chown(path, "postgres")
            self.root.chmod(0o755)
        run = subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "--encoding=UTF8", "--no-sync"]),
            check=False, capture_output=True, timeout=120,
        )
        if run.returncode != 0:
            raise PeerError(f"initdb failed: {run.stderr.decode(errors='replace')[-2000:]}")

    def start(self) -> Self:
        """Start (or restart after `stop`/`kill`) on the same port and data directory."""
        log = open(self.log, "ab")  # noqa: SIM115 - the server's stderr, closed with the process
        if os.geteuid() == 0:
            shutil.chown(self.log, "postgres")
        self.proc = subprocess.Popen(
            _as_postgres([
                _pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets),
                "-c", f"listen_addresses={LOOPBACK}", "-c", f"fsync={'on' if self.fsync else 'off'}",
                "-c", "max_connections=200",
            ]),
            stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        wait_until(self._ready, 60, f"PostgreSQL did not start (log: {self.log})", interval=0.1)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise PeerError(f"PostgreSQL exited with {self.proc.returncode}: {self._tail()}")
        if not port_accepts(self.port):
            return False
        probe = subprocess.run(
            [_pg_bin("pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres"],
            check=False, capture_output=True, timeout=10,
        )
        return probe.returncode == 0

    def _tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql (autocommit, so CREATE DATABASE works); its output, unaligned."""
        run = subprocess.run(
            [_pg_bin("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement, self.url(database)],
            check=False, capture_output=True, timeout=60,
        )
        if run.returncode != 0:
            raise PeerError(f"psql failed on {statement!r}: {run.stderr.decode(errors='replace')}")
        return run.stdout.decode().strip()

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _postmaster(self) -> int | None:
        """The postmaster's pid (it starts its own session, so it is not `proc`'s process group)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _signal(self, sig: int, timeout: float) -> None:
        # Its auxiliary processes each run in their own session and exit when they notice the postmaster died.
        pid = self._postmaster()
        if self.proc is not None and self.proc.poll() is None and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """A clean shutdown (SIGINT: PostgreSQL's "fast" mode, open sessions are disconnected)."""
        self._signal(signal.SIGINT, 30)

    def kill(self) -> None:
        """kill -9 of the postmaster and its backends: what a crash or an OOM kill does."""
        self._signal(signal.SIGKILL, 10)

    def close(self) -> None:
        self.stop()
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HAProxy:
    """HAProxy in TCP mode on a free loopback port in front of `backends` (ports on 127.0.0.1).

    Round robin with a health check per backend, as docs/scale-out.md configures it for DICOM receivers: a
    backend that stops accepting is skipped; an association already forwarded to it breaks with it.
    """

    def __init__(self, backends: Sequence[int], root: Path) -> None:
        self.backends = list(backends)
        self.root = root
        self.port = free_port()
        self.config = root / "haproxy.cfg"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self) -> None:
        servers = "\n".join(
            f"    server r{i} {LOOPBACK}:{port} check inter 500ms fall 2 rise 1"
            for i, port in enumerate(self.backends)
        )
        self.config.write_text(
            "global\n    maxconn 1000\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n"
            "    option redispatch\n    retries 3\n"
            f"frontend dicom\n    bind {LOOPBACK}:{self.port}\n    default_backend receivers\n"
            f"backend receivers\n    balance roundrobin\n{servers}\n"
        )

    def start(self) -> Self:
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            raise PeerMissingError("haproxy not found: install it (scripts/bootstrap.sh test does)")
        self._write()
        check = subprocess.run([binary, "-c", "-f", str(self.config)], check=False, capture_output=True, timeout=30)
        if check.returncode != 0:
            raise PeerError(f"haproxy config rejected: {check.stdout.decode()} {check.stderr.decode()}")
        with open(self.root / "haproxy.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )
        wait_until(lambda: port_accepts(self.port), 30, "haproxy did not start listening")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
