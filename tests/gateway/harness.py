"""Runs the real gateway (`python -m gateway.admin.cli serve`) as a child process for end-to-end tests.

Why a process and not threads: crash tests send SIGKILL/SIGTERM to it, and the logs it prints to stdout are
exactly what an admin's journal would hold (the PHI test reads them).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.storage.state import State, StateStore
from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


#: The QA gate of tests about the data flow (reception, completion, delivery, restarts): it runs and flags, but
#: never holds, and sends no SR, so those tests keep counting derived images whatever the quality of the quick
#: enhancer they route to (a Gaussian blur is rightly a FAIL on a native-dose CT). The shipped defaults (hold on
#: FAIL, the SR report) are exercised by tests/gateway/test_qa_gate.py, which passes `qa={}`.
DATA_FLOW_QA: dict[str, Any] = {"report": False, "actions": {"WARN": "flag", "FAIL": "flag"}}


def write_config(
    path: Path,
    *,
    var_dir: Path,
    port: int,
    destinations: list[dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    stable_seconds: float = 1.0,
    sender: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    sources: list[dict[str, Any]] | None = None,
    metrics_port: int = 0,
    enhance: dict[str, Any] | None = None,
    qa: dict[str, Any] | None = None,
    dicomweb: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    lines = ["[gateway]", "ae_title = \"ENHANCE_GW\"", "host = \"127.0.0.1\"", f"port = {port}"]
    lines += [f"var_dir = {_toml_value(var_dir)}", f"stable_seconds = {stable_seconds}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in ({"min_free_mb": 50} | (gateway or {})).items()]
    for dest in destinations:
        lines += ["", "[[destinations]]"] + [f"{k} = {_toml_value(v)}" for k, v in dest.items()]
    for src in sources or []:
        lines += ["", "[[sources]]"] + [f"{k} = {_toml_value(v)}" for k, v in src.items()]
    for route in routes or []:
        lines += ["", "[[routes]]"] + [f"{k} = {_toml_value(v)}" for k, v in route.items()]
    snd = {"base_seconds": 0.5, "cap_seconds": 2.0, "max_attempts": 20, "dimse_timeout": 30} | (sender or {})
    lines += ["", "[sender]"] + [f"{k} = {_toml_value(v)}" for k, v in snd.items()]
    enh = {"workers": 1, "batch_size": 4, "threads": 1} | (enhance or {})
    lines += ["", "[enhance]"] + [f"{k} = {_toml_value(v)}" for k, v in enh.items()]
    gate = DATA_FLOW_QA if qa is None else qa
    if gate:
        lines += ["", "[qa]"] + [f"{k} = {_toml_value(v)}" for k, v in gate.items()]
    lines += ["", "[metrics]", "host = \"127.0.0.1\"", f"port = {metrics_port}"]
    if dicomweb:
        lines += ["", "[dicomweb]"] + [f"{k} = {_toml_value(v)}" for k, v in dicomweb.items()]
    if state:
        lines += ["", "[state]"] + [f"{k} = {_toml_value(v)}" for k, v in state.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class GatewayProcess:
    """A gateway child process on a free loopback port with its var dir under `root`."""

    def __init__(self, root: Path, *, roles: str | None = None, **config: Any) -> None:
        self.root = root
        self.roles = roles  # `serve --role ...`; None: all roles (and the SCP is what start() waits for)
        self.var_dir = root / "var"
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = write_config(
            root / "gateway.toml", var_dir=self.var_dir, port=self.port, metrics_port=self.metrics_port, **config
        )
        self.log_path = root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.state_url: str | None = (config.get("state") or {}).get("url")  # PostgreSQL instead of state.db
        self._pg: StateStore | None = None
        atexit.register(self.kill_quietly)  # a failed test must not leave a gateway running

    @staticmethod
    def env() -> dict[str, str]:
        return os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `enhance-gateway --config <this gateway's config> ARGS` as an admin would."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.admin.cli", "--config", str(self.config), *args],
            capture_output=True, text=True, check=check, cwd=self.root, env=self.env(), timeout=120,
        )

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        env = self.env()
        with open(self.log_path, "ab") as log:
            role = ["--role", self.roles] if self.roles else []
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.admin.cli", "--config", str(self.config), "serve", *role],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        # a process without the receive role listens only on its metrics port (after it has started)
        port = self.port if not self.roles or "receive" in self.roles else self.metrics_port

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, timeout, f"the gateway ({self.roles or 'all roles'}) to listen on {port}")
        return self

    def kill(self) -> None:
        """SIGKILL: the crash nobody cleans up after."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def kill_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def state(self) -> StateStore:
        """The gateway's state as another process sees it (one PostgreSQL store kept open: it holds a pool)."""
        if self.state_url is None:
            return State(self.var_dir / "state.db")
        if self._pg is None:
            from gateway.storage.postgres_state import PostgresState

            self._pg = PostgresState(self.state_url, migrate=False)
        return self._pg

    def wait_jobs(self, states: set[str], count: int, timeout: float = 120.0) -> list[Any]:
        def ready() -> list[Any] | None:
            jobs = self.state().jobs()
            done = [j for j in jobs if j.state in states]
            return done if len(done) >= count else None

        jobs: list[Any] = wait_for(ready, timeout, f"{count} job(s) in {sorted(states)}; log tail:\n{self.log_text()[-2000:]}")
        return jobs
