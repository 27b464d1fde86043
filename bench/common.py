"""Shared pieces of the benchmarks: real series on disk, a tuned dcmtk storescp, storescu runs, a gateway.

Why these choices:
- Every figure is a ratio against a dcmtk peer measured in the same run, alternating gateway and peer, so
  the noise of a shared 2-core machine hits both sides alike; each measurement is repeated and the median
  is reported.
- dcmtk gets `TCP_NODELAY=1` (the delayed-ACK trap costs ~45 ms per instance on loopback otherwise) and the
  largest PDU it supports: it is the tuned reference, not a straw man.
- Series are built once from pydicom-data's real `693_UNCR.dcm` (512x512 CT) and cached, so building them
  is not timed and reruns are quick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import dcmtk_env, free_port, port_accepts, require_binary
from tests.realdata import make_series

SOURCE = "693_UNCR.dcm"
LOOPBACK = "127.0.0.1"
DCMTK_PDU = "131072"  # the largest receive PDU dcmtk accepts
GATEWAY_AET = "ENHANCE_GW"


def data_root() -> Path:
    """Where cached series live: $BENCH_DATA, else <tmp>/enhance-gw-bench."""
    root = Path(os.environ.get("BENCH_DATA", Path(tempfile.gettempdir()) / "enhance-gw-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def series(count: int, seed: str) -> list[Path]:
    """`count` real CT instances of one new series (cached by seed and count); a `.done` marker guards reuse."""
    out = data_root() / f"{seed}-{count}"
    marker = out / ".done"
    if marker.exists():
        return sorted(out.glob("*.dcm"))
    shutil.rmtree(out, ignore_errors=True)
    paths = make_series(SOURCE, count, out, seed=f"{seed}-{count}")
    marker.write_text("ok")
    return paths


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Round-robin split, so each concurrent sender gets the same number of files (within one)."""
    return [list(files[i::parts]) for i in range(parts)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_runs(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


class TunedStoreSCP:
    """dcmtk storescp as the reference receiver: TCP_NODELAY, max PDU, no DNS lookups, no verbose log.

    With `fork` each association gets its own process (storescp --fork), which is how a site would run it
    for concurrent senders; without it storescp serves associations one after the other.
    """

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP", fork: bool = False) -> None:
        self.out_dir = out_dir
        self.aet = aet
        self.fork = fork
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [require_binary("storescp"), "-aet", self.aet, "+xa", "-pm", "-dhl", "-pdu", DCMTK_PDU,
                "-od", str(self.out_dir)]  # fmt: skip
        if self.fork:
            args.append("--fork")
        args.append(str(self.port))
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env())
        wait_for(lambda: port_accepts(self.port), 10.0, "storescp to listen", interval=0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("storescp is not running")
        return self._proc.pid

    def received(self) -> list[Path]:
        return [p for p in self.out_dir.iterdir() if p.is_file()] if self.out_dir.exists() else []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def storescu_args(port: int, called_aet: str, files: Sequence[Path]) -> list[str]:
    """storescu with the largest PDU; it proposes the uncompressed syntaxes, which is what the files hold."""
    return [require_binary("storescu"), "-aet", "BENCH_SCU", "-aec", called_aet, "-pdu", DCMTK_PDU,
            LOOPBACK, str(port), *(str(p) for p in files)]  # fmt: skip


def push(port: int, called_aet: str, groups: Sequence[Sequence[Path]]) -> float:
    """Run one storescu per group at the same time; wall seconds from the first start to the last exit."""
    env = dcmtk_env()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(storescu_args(port, called_aet, g), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for g in groups
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    seconds = time.perf_counter() - started
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu exited {proc.returncode}:\n{out.decode(errors='replace')[-2000:]}")
    return seconds


@dataclass
class Gateway:
    """A gateway child process (tests.gateway.harness.GatewayProcess) that is idle before measuring."""

    proc: GatewayProcess

    @property
    def port(self) -> int:
        return self.proc.port

    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid


@contextlib.contextmanager
def gateway(root: Path, **config: Any) -> Iterator[Gateway]:
    """Start a gateway under `root` and wait until its worker has started (torch imported).

    Why wait for the worker: the spawned worker imports torch for seconds at start-up; measuring before it
    settles would charge that CPU to reception.
    """
    root.mkdir(parents=True, exist_ok=True)
    proc = GatewayProcess(root, **config)
    proc.start()
    try:
        wait_for(
            lambda: any(e.get("event") == "worker.started" for e in proc.events()), 120.0, "the worker to start"
        )
        time.sleep(0.5)
        yield Gateway(proc)
    finally:
        proc.stop()


def scratch(prefix: str) -> Path:
    """A fresh temporary folder on the same filesystem as the data cache (same disk as a real spool)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=data_root()))


def iso_to_epoch(stamp: str) -> float:
    """structlog's ISO timestamps (UTC, 'Z' suffix; Python 3.11 parses it) as seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


def dicom_destination(scp: TunedStoreSCP) -> dict[str, object]:
    return {"name": "pacs", "type": "dicom", "ae_title": scp.aet, "host": LOOPBACK, "port": scp.port}


@dataclass
class Flow:
    """One series through the whole gateway: pushed, stable, enhanced, delivered to a dcmtk storescp."""

    acked_at: float  # epoch seconds when storescu returned: every instance acknowledged
    delivered_at: float  # epoch seconds of the newest file storescp wrote
    push_seconds: float
    events: list[dict[str, Any]]

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == name]
        return found[-1] if found else {}


def run_flow(gw: Gateway, scp: TunedStoreSCP, files: Sequence[Path], timeout: float = 3600.0) -> Flow:
    """Push `files` to the gateway and wait until storescp holds as many derived files; times from both ends."""
    os.sync()
    push_seconds = push(gw.port, GATEWAY_AET, [files])
    acked_at = time.time()
    wait_for(lambda: len(scp.received()) >= len(files), timeout, "the derived series at storescp", interval=0.1)
    wait_for(
        lambda: any(e.get("event") == "job.done" for e in gw.proc.events()), 60.0, "job.done in the log", interval=0.1
    )
    delivered_at = max(p.stat().st_mtime for p in scp.received())
    return Flow(acked_at, delivered_at, push_seconds, gw.proc.events())
