"""Real DICOM peers for tests: dcmtk `storescu`/`storescp` and Orthanc, on free loopback ports.

Why real peers: the gateway lives or dies by interoperability (association negotiation, transfer syntaxes,
timeouts, a PACS that goes away and comes back), and a mock only ever agrees with its author. So the
house rule is no mocks of DICOM networking: every fixture here starts a real program.

Why the details below matter:
- dcmtk (and Orthanc, which is built on dcmtk) falls into the delayed-ACK trap on loopback unless
  `TCP_NODELAY=1` is in its environment: ~45 ms per instance instead of ~2 ms. Every process started here
  gets `dcmtk_env()`.
- `storescu` on its own proposes only uncompressed syntaxes, so it silently decompresses JPEG/RLE/JPEG-LS
  files and fails on JPEG 2000. `storescu()` below writes an association profile that proposes each file's
  own transfer syntax, and refuses (by default) any run in which dcmtk still converted a compressed file.
- A missing binary raises `PeerMissingError`, which fails the test. A skipped real-peer test would hide a
  broken CI image.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import pydicom
import requests
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

INSTALL_HINT = "apt-get install -y dcmtk orthanc orthanc-dicomweb dicom3tools"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class PeerError(RuntimeError):
    """A real peer could not be started, stopped or used; the message says what to look at."""


class PeerMissingError(PeerError):
    """A peer's binary is not installed. Raised (never skipped) so a CI image without peers fails loudly."""


class PeerCommandError(subprocess.CalledProcessError):
    """A peer command exited non-zero; unlike CalledProcessError its message carries the program's output.

    Why: the useful part of a dcmtk failure ("Received Store Response (Refused: OutOfResources)",
    "Association Rejected") is in its log, and a bare exit status makes a failing test undebuggable.
    """

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- output (tail) ---\n{_tail(_as_text(self.stdout) + _as_text(self.stderr))}"


# --------------------------------------------------------------------------------------------------------------
# small helpers


def require_binary(name: str, *fallbacks: str) -> str:
    """Absolute path of the program `name` (PATH first, then `fallbacks`), or PeerMissingError with the fix.

    Fallbacks exist because Orthanc lives in /usr/sbin, which is not on every user's PATH. The virtual
    environment's bin folder is skipped: pynetdicom installs its own `storescp`/`storescu` there, and a test
    that means dcmtk must never get pynetdicom's look-alike because the venv happens to be activated.
    """
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    search = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    found = shutil.which(name, path=os.pathsep.join(search))
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise PeerMissingError(
        f"{name} is not installed (looked in PATH and {list(fallbacks) or 'nowhere else'}); "
        f"install the real test peers with: {INSTALL_HINT} (the Makefile's test target does this)"
    )


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0 and ask the kernel).

    There is a small race between closing this socket and the peer binding the port; the peer classes retry
    with a new port when they see "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def dcmtk_env() -> dict[str, str]:
    """`os.environ` plus TCP_NODELAY=1: without it dcmtk tools (and Orthanc) take ~45 ms per instance."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts a TCP connection on host:port (the peer is listening)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], T | None], timeout: float, message: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy and return that; TimeoutError with `message` else.

    Why: the gateway works asynchronously (spool, completion timer, sender), so tests wait for an observable
    effect with a deadline instead of sleeping a guessed amount.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} (waited {timeout:.1f} s)")
        time.sleep(interval)


def _as_text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text("utf-8", "replace"), lines)
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"


def _expand(files: Iterable[Path | str]) -> list[Path]:
    """Files as given, directories replaced by the files under them (sorted), so a series dir can be passed."""
    out: list[Path] = []
    for item in files:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            out.append(path)
    return out


# Every process started here, so a crashed test run does not leave peers holding ports.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _LIVE.clear()


def _terminate(proc: subprocess.Popen[bytes], *, graceful: bool, timeout: float) -> bool:
    """Stop `proc` (SIGTERM then wait, or SIGKILL); True when it exited within `timeout` of a SIGTERM."""
    clean = True
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            clean = False
            proc.kill()
            proc.wait(timeout=10)
    _LIVE.discard(proc)
    return clean


def _port_in_use(log: str) -> bool:
    lowered = log.lower()
    return "address already in use" in lowered or "already in use" in lowered or "cannot listen" in lowered


# --------------------------------------------------------------------------------------------------------------
# storescu


# Syntaxes storescu may fall back to for an uncompressed file, besides the file's own.
_UNCOMPRESSED_FALLBACK = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Options that choose what storescu proposes; when the caller passes one, it is in charge of negotiation.
_PROPOSAL_OPTIONS = ("-x", "--propose", "-R", "--required", "+C", "--combine", "--config-file")
_MAX_PRESENTATION_CONTEXTS = 128


def _is_uncompressed(syntax: UID) -> bool:
    return syntax.is_transfer_syntax and not syntax.is_compressed and not syntax.is_deflated


def storescu_profile(files: Sequence[Path]) -> str:
    """A dcmtk association profile (`storescu -xf FILE Default`) proposing each file's own transfer syntax.

    One presentation context per distinct (SOP Class, transfer syntax) pair, holding only that syntax, so a
    compressed file is either sent as it is or not at all: storescu then never decodes and re-encodes
    behind the test's back. Uncompressed files get a second context per SOP Class with Explicit and
    Implicit VR Little Endian, as a real modality would offer, so a peer that accepts only Implicit VR
    still receives them. UIDs are written raw, which dcmtk accepts in place of its symbolic names.
    """
    pairs: dict[tuple[str, str], None] = {}
    fallback_classes: dict[str, None] = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
        except Exception as exc:
            raise ValueError(
                f"{path} has no readable DICOM file meta ({exc}); storescu() needs Part 10 files, "
                "or pass the proposal options yourself in extra="
            ) from exc
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
        if not sop_class or not syntax:
            raise ValueError(f"{path} lacks MediaStorageSOPClassUID or TransferSyntaxUID in its file meta")
        pairs[(sop_class, str(syntax))] = None
        if _is_uncompressed(syntax):
            fallback_classes[sop_class] = None
    contexts = len(pairs) + len(fallback_classes)
    if contexts > _MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{contexts} presentation contexts needed but an association holds at most "
            f"{_MAX_PRESENTATION_CONTEXTS}; send the files in smaller groups"
        )

    syntax_names: dict[tuple[str, ...], str] = {}
    lines_pc: list[str] = []

    def syntax_group(uids: tuple[str, ...]) -> str:
        if uids not in syntax_names:
            syntax_names[uids] = f"TS{len(syntax_names) + 1}"
        return syntax_names[uids]

    for sop_class, file_syntax in pairs:
        lines_pc.append(f"{sop_class}\\{syntax_group((file_syntax,))}")
    for sop_class in fallback_classes:
        lines_pc.append(f"{sop_class}\\{syntax_group(tuple(str(u) for u in _UNCOMPRESSED_FALLBACK))}")

    out = ["[[TransferSyntaxes]]"]
    for uids, name in syntax_names.items():
        out.append(f"[{name}]")
        out.extend(f"TransferSyntax{i} = {uid}" for i, uid in enumerate(uids, start=1))
    out += ["", "[[PresentationContexts]]", "[FileSyntaxes]"]
    out.extend(f"PresentationContext{i} = {pc}" for i, pc in enumerate(lines_pc, start=1))
    out += ["", "[[Profiles]]", "[Default]", "PresentationContexts = FileSyntaxes", ""]
    return "\n".join(out)


def transcoded_files(output: str) -> list[str]:
    """The "Converting transfer syntax: A -> B" lines of a verbose storescu run in which A differs from B."""
    changed = []
    for line in output.splitlines():
        _, sep, rest = line.partition("Converting transfer syntax:")
        if sep:
            source, _, target = rest.partition("->")
            if source.strip() != target.strip():
                changed.append(line.strip())
    return changed


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_aet: str,
    calling_aet: str = "STORESCU",
    host: str = LOOPBACK,
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = 120,
    allow_transcoding: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send `files` (directories are expanded) with dcmtk storescu in one association; return the run.

    Negotiation: see `storescu_profile`: each file goes in its own transfer syntax (uncompressed, RLE, JPEG,
    JPEG-LS, JPEG 2000 alike). If `extra` holds a proposal option (-x?, -R, +C, -xf) the caller's choice is
    used instead. storescu runs with -v so a failure's message carries the DIMSE status, and halts on the
    first refused store (dcmtk's default; exit status non-zero) so `check` catches a refusing peer.

    With `check`, a non-zero exit raises PeerCommandError, and (unless `allow_transcoding`) so does a run
    in which storescu converted any file to another transfer syntax, because then the peer did not receive
    what the test thinks it sent.
    """
    paths = _expand(files)
    if not paths:
        raise ValueError("storescu() was given no files")
    binary = require_binary("storescu")
    caller_negotiates = any(arg.startswith(_PROPOSAL_OPTIONS) for arg in extra)
    with tempfile.TemporaryDirectory(prefix="storescu-") as scratch:
        args = [binary, "-v", "-aet", calling_aet, "-aec", called_aet]
        if not caller_negotiates:
            profile = Path(scratch) / "storescu.cfg"
            profile.write_text(storescu_profile(paths), "ascii")
            args += ["-xf", str(profile), "Default"]
        args += [*extra, host, str(port), *(str(p) for p in paths)]
        run = subprocess.run(
            args, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
        )
    if check:
        if run.returncode != 0:
            raise PeerCommandError(run.returncode, args[:8] + ["..."], run.stdout, run.stderr)
        changed = transcoded_files(run.stderr + run.stdout)
        if changed and not allow_transcoding:
            raise PeerCommandError(
                0,
                args[:8] + ["..."],
                run.stdout,
                "storescu converted files to another transfer syntax (pass allow_transcoding=True if "
                "intended):\n" + "\n".join(changed) + "\n" + run.stderr,
            )
    return run


# --------------------------------------------------------------------------------------------------------------
# dcmtk encoders


# Real encoders from dcmtk (not pydicom's), so tests see files made by the code PACS and modalities use.
# +un keeps the SOP Instance UID: lossless re-encoding yields the same instance.
RECOMPRESSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    JPEGLosslessSV1: ("dcmcjpeg", ("+e1", "+un")),
    RLELossless: ("dcmcrle", ("+un",)),
    JPEGLSLossless: ("dcmcjpls", ("+el", "+un")),
}


def recompress(files: Sequence[Path], out_dir: Path, syntax: str) -> list[Path]:
    """Encode `files` into `syntax` with dcmtk (dcmcjpeg / dcmcrle / dcmcjpls) into `out_dir`; new paths.

    Inputs must be uncompressed or in a syntax dcmtk decodes (JPEG, RLE, JPEG-LS). Output names are the
    input names; each output's transfer syntax is checked, since an encoder that quietly kept the old one
    would make a "compressed input" test pass for the wrong reason.
    """
    if syntax not in RECOMPRESSORS:
        known = ", ".join(f"{UID(uid).name} ({uid})" for uid in RECOMPRESSORS)
        raise ValueError(f"cannot encode to {syntax}: recompress() supports {known}")
    program, options = RECOMPRESSORS[syntax]
    binary = require_binary(program)
    paths = _expand(files)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("recompress() got two files with the same name; they would overwrite each other")
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / p.name for p in paths]

    def encode(pair: tuple[Path, Path]) -> None:
        source, target = pair
        args = [binary, *options, str(source), str(target)]
        run = subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), check=False, timeout=120)
        if run.returncode != 0:
            raise PeerCommandError(run.returncode, args, run.stdout, run.stderr)
        written = read_file_meta_info(target).TransferSyntaxUID
        if written != syntax:
            raise PeerError(f"{program} wrote {target} as {UID(written).name}, not {UID(syntax).name}")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(encode, zip(paths, targets, strict=True)))
    return targets


# --------------------------------------------------------------------------------------------------------------
# storescp


class StoreSCP:
    """dcmtk storescp on a free loopback port, writing what it receives into `out_dir`.

    Options: +xa accepts every transfer syntax dcmtk knows (so compressed files arrive as sent), -pm
    accepts unknown/private SOP classes, -dhl skips reverse DNS per association. Files are named
    `<modality>.<SOPInstanceUID>`; a resent instance overwrites its file (storescp warns), which is what a
    PACS-like destination does. storescp writes a file completely before it answers the C-STORE, so once
    the sender saw the response the file is whole; `wait_for` also waits for sizes to settle because a
    test polling mid-transfer could otherwise see a half-written file.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        aet: str = "STORESCP",
        extra: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.aet = aet
        self.extra = tuple(extra)
        self.start_timeout = start_timeout
        self.port = 0
        self.log_text = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: Path | None = None

    @property
    def log_path(self) -> Path:
        if self._logdir is None:
            raise PeerError("storescp is not running")
        return self._logdir / "storescp.log"

    def start(self) -> Self:
        """Start storescp and return once its port accepts connections (retries on a port race)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        binary = require_binary("storescp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._logdir = Path(tempfile.mkdtemp(prefix="storescp-log-"))
        for _attempt in range(3):
            self.port = free_port()
            args = [binary, "-v", "-aet", self.aet, "+xa", "-pm", "-dhl", "-od", str(self.out_dir),
                    *self.extra, str(self.port)]  # fmt: skip
            with open(self.log_path, "wb") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
            _LIVE.add(proc)
            self._proc = proc
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if port_accepts(self.port):
                    return self
                time.sleep(0.02)
            log_tail = _read_tail(self.log_path)
            _terminate(proc, graceful=False, timeout=5)
            if not _port_in_use(log_tail):
                raise PeerError(
                    f"storescp did not listen on port {self.port} within {self.start_timeout} s "
                    f"(exit status {proc.returncode}); log:\n{log_tail}"
                )
        raise PeerError(f"storescp found no free port in 3 tries; last log:\n{_read_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop storescp (SIGTERM, then SIGKILL after 5 s), keep its log in `log_text`, keep the files."""
        if self._proc is not None:
            _terminate(self._proc, graceful=True, timeout=5)
            self._proc = None
        if self._logdir is not None:
            with contextlib.suppress(OSError):
                self.log_text = self.log_path.read_text("utf-8", "replace")
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def received(self) -> list[Path]:
        """Files received so far, sorted by name (storescp names them `<modality>.<SOPInstanceUID>`)."""
        if not self.out_dir.exists():
            return []
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file() and not p.name.startswith("."))

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least `count` files arrived and their sizes stopped changing; return them."""
        last: dict[Path, int] = {}

        def settled() -> list[Path] | None:
            nonlocal last
            files = self.received()
            sizes = {p: p.stat().st_size for p in files}
            stable = len(files) >= count and sizes == last
            last = sizes
            return files if stable else None

        return wait_until(
            settled, timeout, f"storescp {self.aet} received {len(self.received())} of {count} files"
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"StoreSCP(aet={self.aet!r}, port={self.port}, out_dir={str(self.out_dir)!r})"


# --------------------------------------------------------------------------------------------------------------
# Orthanc


class Orthanc:
    """The Debian Orthanc as a throwaway PACS: own JSON config, own storage, free DICOM and HTTP ports.

    Why these settings: storage and index in `workdir` so `stop()` then `start()` is the same PACS (the
    "PACS down, then back" drill); ports are chosen once and kept across restarts, so a gateway configured
    with them reconnects; no plugins (the Debian package's plugin folder would otherwise be loaded);
    every transfer syntax and unknown SOP classes accepted and no called-AET check, because a test PACS
    must not be the reason a store fails; REST on loopback without authentication; StableAge 1 s so
    stability events come quickly; Orthanc started with TCP_NODELAY=1 (it is built on dcmtk and without
    it ingests ~20 instances/s instead of ~150/s on loopback).

    `modalities` maps a symbolic name to [AET, host, port] (Orthanc's DicomModalities), e.g.
    {"GATEWAY": ["ENHANCE_GW", "127.0.0.1", 11112]}; `add_modality` adds one at run time and remembers it
    for restarts. `config` overrides or adds any Orthanc option (e.g. {"OverwriteInstances": True}).

    Leaving the `with` block kills Orthanc (SIGKILL): its storage is thrown away or kept only for
    post-mortem reading, and a graceful stop costs ~4 s of shutdown polling per test. Call `stop()` for
    a graceful stop.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        aet: str = "ORTHANC",
        name: str = "test-pacs",
        modalities: Mapping[str, Sequence[str | int]] | None = None,
        config: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.aet = aet
        self.name = name
        self.modalities: dict[str, list[str | int]] = {k: list(v) for k, v in (modalities or {}).items()}
        self.overrides: dict[str, Any] = dict(config or {})
        self.start_timeout = start_timeout
        self.dicom_port = 0
        self.http_port = 0
        self.last_start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = requests.Session()
        self._http.trust_env = False  # never route loopback REST calls through a proxy from the environment

    # ---- paths and config

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration written before each start (see the class docstring for why)."""
        storage = self.workdir / "storage"
        conf: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "DicomModalitiesInDatabase": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "UnknownSopClassAccepted": True,
            "DicomScuTimeout": 10,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "Plugins": [],
            "LuaScripts": [],
            "StableAge": 1,
            "SaveJobs": False,
            "SynchronousCMove": True,
        }
        conf.update(self.overrides)
        return conf

    # ---- lifecycle

    def start(self) -> Self:
        """Start Orthanc; return once /system answers and the DICOM port accepts (PeerError with log tail)."""
        if self.running:
            return self
        binary = require_binary("Orthanc", "/usr/sbin/Orthanc", "/usr/bin/Orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._http.close()
        self._http = requests.Session()  # pooled connections died with the previous process
        self._http.trust_env = False
        fixed_ports = self.dicom_port != 0
        for _attempt in range(1 if fixed_ports else 3):
            if not fixed_ports:
                self.dicom_port, self.http_port = free_port(), free_port()
                while self.http_port == self.dicom_port:
                    self.http_port = free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2), "utf-8")
            began = time.monotonic()
            with open(self.log_path, "ab") as log:
                log.write(f"---- starting Orthanc at {time.strftime('%H:%M:%S')}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [binary, "--no-jobs", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dcmtk_env(),
                    cwd=self.workdir,
                )
            _LIVE.add(proc)
            self._proc = proc
            if self._wait_ready(proc):
                self.last_start_seconds = time.monotonic() - began
                return self
            log_tail = _read_tail(self.log_path)
            _terminate(proc, graceful=False, timeout=5)
            self._proc = None
            if fixed_ports or not _port_in_use(log_tail):
                raise PeerError(
                    f"Orthanc did not come up within {self.start_timeout} s (DICOM port {self.dicom_port}, "
                    f"HTTP port {self.http_port}, exit status {proc.returncode}); log {self.log_path}:\n"
                    f"{log_tail}"
                )
            self.dicom_port = self.http_port = 0
        raise PeerError(f"Orthanc found no free ports in 3 tries; log:\n{_read_tail(self.log_path)}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                answer = self._http.get(f"{self.url}/system", timeout=1)
                if answer.ok and port_accepts(self.dicom_port):
                    return True
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        return False

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Stop Orthanc, keeping storage and ports so `start()` brings back the same PACS.

        Graceful (SIGTERM) takes ~4 s: Orthanc's HTTP and DICOM servers poll for shutdown once a second.
        `graceful=False` is a crash (SIGKILL); Orthanc's SQLite index survives that too.
        """
        if self._proc is None:
            return
        clean = _terminate(self._proc, graceful=graceful, timeout=timeout)
        self._proc = None
        if not clean:
            raise PeerError(
                f"Orthanc did not stop within {timeout} s of SIGTERM and was killed; log:\n"
                f"{_read_tail(self.log_path)}"
            )

    def kill(self) -> None:
        """Stop Orthanc at once (SIGKILL): teardown, or a PACS crash drill."""
        self.stop(graceful=False)

    def restart(self, graceful: bool = True) -> Self:
        self.stop(graceful=graceful)
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Orthanc(aet={self.aet!r}, dicom_port={self.dicom_port}, url={self.url!r})"

    # ---- REST

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if not self.running:
            raise PeerError(f"Orthanc is not running (REST {method} {path}); call start() first")
        answer = self._http.request(method, f"{self.url}/{path.lstrip('/')}", timeout=60, **kwargs)
        if not answer.ok:
            raise PeerError(f"Orthanc {method} {path} answered {answer.status_code}: {answer.text[:500]}")
        return answer

    def get(self, path: str) -> Any:
        """GET a REST path (e.g. "/statistics") and return its JSON."""
        return self._request("GET", path).json()

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path).content

    def post(self, path: str, body: Any = None) -> Any:
        """POST JSON (or a str/bytes body as is) and return the JSON answer (None when empty)."""
        if isinstance(body, str | bytes):
            answer = self._request("POST", path, data=body)
        else:
            answer = self._request("POST", path, json=body)
        return answer.json() if answer.content else None

    def delete(self, path: str) -> None:
        self._request("DELETE", path)

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """Series of the study with this StudyInstanceUID (Orthanc JSON: MainDicomTags, Instances, ...).

        Orthanc keys a study by PatientID and StudyInstanceUID, so instances of one study UID sent with two
        patient IDs become two Orthanc studies; their series are merged here, since the UID is what the
        caller asked about. Sorted by SeriesNumber then SeriesInstanceUID so tests can index them; [] if
        the study is absent.
        """
        hits = self.post("/tools/lookup", study_uid) or []
        series: list[dict[str, Any]] = []
        for hit in hits:
            if hit.get("Type") == "Study":
                series.extend(self.get(f"/studies/{hit['ID']}/series"))

        def key(item: dict[str, Any]) -> tuple[int, str]:
            tags = item.get("MainDicomTags", {})
            number = str(tags.get("SeriesNumber", "")).strip()
            return (
                int(number) if number.lstrip("-").isdigit() else 1 << 30,
                tags.get("SeriesInstanceUID", ""),
            )

        return sorted(series, key=key)

    def wait_for_study(self, study_uid: str, instances: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until the study holds at least `instances` instances (all series); return its series."""

        def enough() -> list[dict[str, Any]] | None:
            series = self.study_series(study_uid)
            return series if sum(len(s["Instances"]) for s in series) >= instances else None

        return wait_until(
            enough, timeout, f"Orthanc {self.aet}: study {study_uid} has < {instances} instances"
        )

    def instance_file(self, instance_id: str) -> pydicom.Dataset:
        """The stored file of an Orthanc instance, parsed by pydicom (private tags and file meta included)."""
        return pydicom.dcmread(io.BytesIO(self.get_bytes(f"/instances/{instance_id}/file")))

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register a DICOM peer (PUT /modalities/{name}) and remember it for restarts."""
        self.modalities[name] = [aet, host, port]
        self._request("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    def send_to_modality(self, name: str, resource_ids: Sequence[str]) -> Any:
        """Orthanc C-STOREs the given patients/studies/series/instances to a registered modality (blocking)."""
        return self.post(f"/modalities/{name}/store", {"Resources": list(resource_ids), "Synchronous": True})
