"""Shared machinery of the fault drills: the result record, a modality that retries, destination census,
process-tree handling, spool integrity checks and a size-limited filesystem.

Why these pieces exist:
- A drill is judged from the outside, as a site would judge it: what the sender saw acknowledged (the modality
  below keeps its own ledger, like a modality's send queue), what reached the destination (read back from the
  destination's own files), and what the gateway left on disk. The gateway's own counters are only cross-checks.
- The destination is dcmtk `storescp +uf`: with unique file names every C-STORE it receives becomes its own
  file, so a re-sent instance is counted instead of silently overwritten, and a derived instance is mapped back
  to its source through its Source Image Sequence.
- Kill drills need the pids of the service's spawned workers; /proc is read directly (no psutil dependency).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.gateway.harness import GatewayProcess
from tests.peers import StoreSCP

GATEWAY_AET = "ENHANCE_GW"
CT_SOURCE = "693_UNCR.dcm"
FAST_ROUTE: list[dict[str, Any]] = [{"enhancer": "gaussian"}]  # the worker path is the same for every enhancer
SUCCESS_CODES = range(0xB000, 0xC000)  # warnings count as stored (DICOM PS3.4 Annex B)

# Gateway log events at warning/error level that are configuration hints, not faults.
_BENIGN_EVENTS = frozenset({"scp.open_to_any_aet"})


# --------------------------------------------------------------------------------------------------------------
# results


@dataclass
class DrillResult:
    """What one drill observed; `failures` lists every broken promise (empty = the gateway passed)."""

    drill: str
    runs: int = 0
    acknowledged: int = 0
    derived: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0  # extra distinct instances at the destination (a PACS would show them twice)
    resent: int = 0  # same-UID copies sent again after a fault (a PACS keeps one; harmless by design)
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, ok: bool, message: str) -> bool:
        """Record `message` as a failure unless `ok`; returns `ok` so callers can branch on it."""
        if not ok:
            self.failures.append(message)
        return ok

    @property
    def passed(self) -> bool:
        return not self.failures

    def errors_text(self, limit: int = 6) -> str:
        if not self.errors:
            return "-"
        items = [f"{name} x{count}" for name, count in self.errors.most_common(limit)]
        more = len(self.errors) - limit
        return ", ".join(items) + (f", +{more} more" if more > 0 else "")

    def summary(self) -> str:
        """One paragraph for an assertion message: the row, the failures and the details."""
        lines = [format_table([self])]
        lines += [f"FAILURE: {f}" for f in self.failures]
        lines += [f"{k}: {v}" for k, v in self.details.items()]
        return "\n".join(lines)


_COLUMNS = ("drill", "runs", "acknowledged", "derived", "delivered", "lost", "duplicates", "resent", "errors seen",
            "verdict")


def format_table(results: Sequence[DrillResult]) -> str:
    """The report's one table (plain text, fixed-width columns)."""
    rows = [
        (
            r.drill, str(r.runs), str(r.acknowledged), str(r.derived), str(r.delivered), str(r.lost),
            str(r.duplicates), str(r.resent), r.errors_text(), "PASS" if r.passed else f"FAIL ({len(r.failures)})",
        )
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 8, 9) else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*_COLUMNS), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows]
    return "\n".join(out)


def gateway_errors(gw: GatewayProcess) -> Counter[str]:
    """Warning and error events in the gateway's JSON log, by event name (what an admin's alerting would see)."""
    seen: Counter[str] = Counter()
    for event in gw.events():
        if event.get("level") in ("warning", "error", "critical") and event.get("event") not in _BENIGN_EVENTS:
            seen[str(event.get("event"))] += 1
    return seen


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy and return it, or return None at the deadline (the caller decides)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------------------
# the gateway under drill


class DrillGateway(GatewayProcess):
    """The harness's gateway process plus extra environment (e.g. `ENHANCE_GW_MIN_FREE_MB`) and its process tree.

    Why the environment: the harness writes `min_free_mb` into the config itself, and the gateway documents
    `ENHANCE_GW_<KEY>` overrides for exactly this kind of per-site tuning.
    """

    def __init__(self, root: Path, *, env: dict[str, str] | None = None, **config: Any) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, **config)
        self.extra_env = dict(env or {})

    def env(self) -> dict[str, str]:  # type: ignore[override]  # the harness's is a staticmethod
        return GatewayProcess.env() | self.extra_env

    @property
    def pid(self) -> int:
        assert self.proc is not None, "gateway not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        """Pids of the enhancement workers the service spawned (multiprocessing `spawn` children)."""
        return worker_pids(self.pid) if self.alive() else []

    def kill_group(self) -> list[int]:
        """SIGKILL the service and every process below it at once, as systemd's KillMode=control-group does."""
        below = descendants(self.pid)
        self.kill()
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return below


def stop_gateway(result: DrillResult, gw: DrillGateway, timeout: float = 30.0) -> bool:
    """Graceful stop (SIGTERM); True when it was clean. A hang is itself a finding: it is recorded, then the
    whole process group is SIGKILLed so the drill can go on (under systemd, TimeoutStopSec ends the same way)."""
    if not gw.alive():
        result.check(False, "the gateway process was not running at the end of the drill (it died)")
        return False
    try:
        gw.terminate(timeout)
    except subprocess.TimeoutExpired:
        events = [e.get("event") for e in gw.events()][-3:]
        result.check(False, f"graceful stop (SIGTERM) did not finish within {timeout:.0f} s (last events {events})")
        gw.kill_group()
        return False
    return True


def holds(predicate: Callable[[], Any], timeout: float, steady: float = 3.0, interval: float = 0.25) -> bool:
    """True once `predicate()` stayed truthy for `steady` seconds in a row (before `timeout`).

    Why: a gateway that reports a job done and then takes it back (a late worker re-opens it) must not be
    judged in that moment; a steady state is what a site would see.
    """
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        if predicate():
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= steady:
                return True
        else:
            since = None
        time.sleep(interval)
    return False


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every live (non-zombie) process below `pid`, children first."""
    parents = _ppid_map()
    out: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop(0)
        kids = [p for p, pp in parents.items() if pp == current]
        out += kids
        frontier += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def worker_pids(service_pid: int) -> list[int]:
    """Spawned multiprocessing children of the service, excluding its resource tracker."""
    return [p for p in descendants(service_pid) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)]


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead: it does no more work)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL pids this drill caused to exist (orphaned workers); already-gone ones are ignored."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------------
# the sending side


def sop_uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


class Modality:
    """Pushes files to the gateway the way a modality's send queue does: resend until acknowledged.

    Its ledger (`acked`) is the truth a drill holds the gateway to: an instance is the gateway's responsibility
    from the moment a success (or warning) status came back, and only then. A refused instance (0xA700 on a full
    disk) and one whose association died before the response stay in the queue and are sent again.
    """

    def __init__(
        self, port: int, files: Sequence[Path], *, calling_aet: str = "MODALITY", called_aet: str = GATEWAY_AET,
        dimse_timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.files = list(files)
        self.calling_aet = calling_aet
        self.called_aet = called_aet
        self.dimse_timeout = dimse_timeout
        self.sop_of = {path: sop_uid_of(path) for path in self.files}
        first = pydicom.dcmread(self.files[0], stop_before_pixels=True)
        self._context = (str(first.SOPClassUID), str(first.file_meta.TransferSyntaxUID))
        self.acked: dict[str, int] = {}
        self.refused: Counter[str] = Counter()  # status (hex) -> times
        self.associations = 0
        self.broken_associations = 0
        self._lock = threading.Lock()
        self.log = logging.getLogger("drills.modality")

    @property
    def unacked(self) -> list[Path]:
        with self._lock:
            return [p for p in self.files if self.sop_of[p] not in self.acked]

    def push(self, files: Sequence[Path] | None = None, stop: threading.Event | None = None) -> int:
        """Send `files` (default: every unacknowledged one) on one association; returns how many were acked.

        Stops at the first instance without a response (the association died: the gateway was killed).
        """
        todo = list(self.unacked if files is None else files)
        if not todo:
            return 0
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.network_timeout = 10
        ae.dimse_timeout = self.dimse_timeout
        ae.add_requested_context(*self._context)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            return 0
        self.associations += 1
        acked = 0
        try:
            for path in todo:
                if stop is not None and stop.is_set():
                    break
                try:
                    status = assoc.send_c_store(path)
                except (RuntimeError, ValueError, OSError):
                    status = Dataset()
                code = int(status.Status) if "Status" in status else None
                if code is None:
                    self.broken_associations += 1
                    break
                if code == 0 or code in SUCCESS_CODES:
                    with self._lock:
                        self.acked[self.sop_of[path]] = code
                    acked += 1
                else:
                    self.refused[f"0x{code:04X}"] += 1
        finally:
            if assoc.is_established:
                assoc.release()
        return acked

    def run(self, stop: threading.Event, pause: float = 0.2) -> None:
        """Thread body: keep pushing what is unacknowledged until all is acked or `stop` is set."""
        while not stop.is_set() and self.unacked:
            try:
                self.push(stop=stop)
            except Exception as exc:  # noqa: BLE001 - a modality retries whatever went wrong
                self.log.debug("push failed: %s", exc)
            if self.unacked:
                stop.wait(pause)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="modality", daemon=True)
        thread.start()
        return thread


# --------------------------------------------------------------------------------------------------------------
# the receiving side


class CountingSCP(StoreSCP):
    """dcmtk storescp with unique file names: every C-STORE it answers becomes its own file, so copies count."""

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP") -> None:
        super().__init__(out_dir, aet=aet, extra=["+uf"])

    def destination(self, name: str = "pacs") -> dict[str, Any]:
        """The gateway's [[destinations]] entry for this SCP."""
        return {"name": name, "type": "dicom", "ae_title": self.aet, "host": "127.0.0.1", "port": self.port}

    def copies(self) -> int:
        """Files received so far (cheap: a directory listing), for progress triggers."""
        return len(os.listdir(self.out_dir)) if self.out_dir.exists() else 0


@dataclass
class Census:
    """What a destination holds: derived instances by UID, copies of each, and the sources they came from."""

    copies: Counter[str] = field(default_factory=Counter)
    by_source: dict[str, set[str]] = field(default_factory=dict)
    series: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(self.copies.values())

    @property
    def resent(self) -> int:
        return sum(n - 1 for n in self.copies.values())

    def duplicates(self) -> int:
        """Distinct derived instances beyond one per source: what a PACS would show twice."""
        return sum(len(derived) - 1 for derived in self.by_source.values())


_HEADERS = ["SOPInstanceUID", "SeriesInstanceUID", "SourceImageSequence"]


def census(
    paths: Iterable[Path],
    cache: dict[Path, tuple[str, str, str] | None] | None = None,
    sources: set[str] | None = None,
) -> Census:
    """Read the derived instances at a destination (headers only), optionally only those derived from
    `sources`; `cache` spares re-reading finished files."""
    out = Census()
    cache = {} if cache is None else cache
    for path in paths:
        if path not in cache:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADERS)
                source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
                cache[path] = (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), source)
            except Exception as exc:  # noqa: BLE001 - an unreadable file at the destination is itself a finding
                out.unreadable.append(f"{path.name}: {exc}")
                continue
        entry = cache[path]
        if entry is None:
            continue
        sop, series, source = entry
        if sources is not None and source not in sources:
            continue
        out.copies[sop] += 1
        out.series.add(series)
        out.by_source.setdefault(source, set()).add(sop)
    return out


def destination_files(root: Path) -> list[Path]:
    """Every regular file under `root` except hidden ones (storescp and folder destinations alike)."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))


def account(result: DrillResult, acked: Iterable[str], found: Census, *, series: int = 1) -> set[str]:
    """Fill acknowledged/delivered/lost/duplicates/resent from the sender's ledger and the destination.

    Lost = acknowledged by the gateway but no derived instance of it at the destination. `series`: how many
    source series were sent (each must come out as exactly one derived series). Returns the lost UIDs.
    """
    acked = set(acked)
    delivered = {sop for sop in acked if found.by_source.get(sop)}
    lost = acked - delivered
    result.acknowledged += len(acked)
    result.delivered += len(delivered)
    result.lost += len(lost)
    result.duplicates += found.duplicates() + max(0, len(found.series) - series)
    result.resent += found.resent
    result.check(not lost, f"{len(lost)} acknowledged instance(s) never reached the destination: {sorted(lost)[:3]}")
    result.check(found.duplicates() == 0, f"{found.duplicates()} source instance(s) have more than one derived UID")
    result.check(len(found.series) <= series,
                 f"the derived instances came in {len(found.series)} series, expected {series}")
    result.check(not found.unreadable, f"unreadable files at the destination: {found.unreadable[:3]}")
    return lost


# --------------------------------------------------------------------------------------------------------------
# integrity of what the gateway stored


def dataset_problem(source: Path | bytes) -> str | None:
    """Why a stored DICOM file is not a complete, well-formed instance, or None when it is.

    Why these checks: pydicom reads a value shorter than its declared length without complaint, so a truncated
    file or a Pixel Data element that claims more bytes than it holds "parses". The last element read is the
    only one a truncation can cut short; every value must convert (its length fits its VR); compressed pixel
    data must be encapsulated; uncompressed pixel data must hold Rows x Columns x frames x samples.
    """
    try:
        ds = pydicom.dcmread(BytesIO(source) if isinstance(source, bytes) else source)
        tags = list(ds.keys())
        if not tags:
            return "no data elements"
        last = ds.get_item(tags[-1])
        if (isinstance(last, RawDataElement) and isinstance(last.value, bytes) and last.length != 0xFFFFFFFF
                and len(last.value) < last.length):
            return f"truncated: {last.tag} declares {last.length} bytes, {len(last.value)} present"
        pixel = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
        if (isinstance(pixel, RawDataElement) and ds.file_meta.TransferSyntaxUID.is_compressed
                and pixel.length != 0xFFFFFFFF):
            return f"Pixel Data not encapsulated under {ds.file_meta.TransferSyntaxUID.name}"
        for _ in ds.iterall():  # converts every value and sequence item: a length that does not fit its VR raises
            pass
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated)
            if len(ds.PixelData) * 8 < need:
                return f"Pixel Data holds {len(ds.PixelData)} bytes, Rows x Columns x bits need {need // 8}"
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"unreadable: {type(exc).__name__}: {str(exc)[:120]}"
    return None


def spool_problems(var_dir: Path, *, after_clean_stop: bool = True) -> list[str]:
    """Corrupt or partial files in the gateway's spool (incoming originals and outgoing derived files).

    With `after_clean_stop`, leftover `.part` files count too: a graceful stop must not leave any (after a
    SIGKILL they are expected until the next start cleans them).
    """
    spool = var_dir / "spool"
    problems = []
    for sub in ("incoming", "outgoing"):
        for path in sorted((spool / sub).rglob("*.dcm")):
            why = dataset_problem(path)
            if why:
                problems.append(f"{path.relative_to(spool)}: {why}")
    if after_clean_stop:
        problems += [f"leftover partial write {p.name}" for p in (spool / "tmp").glob("*.part")]
    return problems


def state_integrity(db: Path) -> str:
    """SQLite's own verdict on the state database ('ok' when sound)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --------------------------------------------------------------------------------------------------------------
# a small filesystem


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[bool]:
    """Mount a tmpfs of `size_mb` at `path` for the duration; yields False (nothing mounted) when not permitted.

    Why tmpfs: it is the cheapest real filesystem with a hard size limit, so writes fail with ENOSPC exactly as
    on a full disk; mounting needs root (CAP_SYS_ADMIN), which CI runners may lack, hence the fallback.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )
        mounted = proc.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            for _ in range(20):
                if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.25)
            else:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path, leave_mb: float, chunk_mb: int = 4) -> int:
    """Write a ballast file at `path` until only `leave_mb` MB stay free on its filesystem; returns its bytes."""
    free = shutil.disk_usage(path.parent).free
    target = max(0, int(free - leave_mb * 1e6))
    written = 0
    block = b"\0" * (chunk_mb << 20)
    with open(path, "wb") as fh:
        while written < target:
            n = min(len(block), target - written)
            fh.write(block[:n])
            written += n
        fh.flush()
        os.fsync(fh.fileno())
    return written
