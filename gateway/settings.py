"""Typed settings, loaded once from TOML (+ environment overrides) and passed down.

Why one object: every path derives from `var_dir`, every component gets its knobs from here, and a bad
value is reported at start-up with the key that holds it instead of failing later in a worker.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from dicom_utils.enhancement import TASKS, Task
from gateway.errors import ConfigError

#: The configuration shipped inside the package (package data): what runs when no file is found. Kept
#: byte-equal to the documented example `config/gateway.toml` by tests/gateway/test_settings.py.
PACKAGED_CONFIG = Path(__file__).resolve().parent / "default_config.toml"
#: Where `discover` looks, in order, after `--config` and $ENHANCE_GW_CONFIG.
LOCAL_CONFIG = Path("config") / "gateway.toml"
SYSTEM_CONFIG = Path("/etc/enhance-gateway/gateway.toml")
_AET_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
ENV_PREFIX = "ENHANCE_GW_"
ENV_CONFIG = ENV_PREFIX + "CONFIG"  # names the file; not a [gateway] key override

#: The range of a route's `strength`. The same numbers as `enhancers.pipeline.STRENGTH_RANGE` (a test keeps
#: them equal): repeated here so that loading the settings never imports torch (`status` must answer fast).
STRENGTH_RANGE: tuple[float, float] = (0.0, 2.0)

#: The QA gate's checks (see `gateway.enhance.qa`): how each is compared with its threshold.
#: "above": value > threshold is a finding; "abs": |value| > threshold; "below": value < threshold.
QA_CHECKS: dict[str, str] = {
    "lowpass": "above",
    "voids": "above",
    "grid": "above",
    "bias": "abs",
    "ssim": "below",
    "jump": "above",
    "gain": "above",
}
QA_VERDICTS = ("PASS", "WARN", "FAIL")
QA_ACTIONS = ("deliver", "flag", "hold")
#: Thresholds tuned on real images at their native noise (config/gateway.toml explains each number).
QA_WARN_DEFAULT: dict[str, float] = {
    "lowpass": 0.35, "voids": 0.001, "grid": 0.05, "bias": 0.3, "ssim": 0.7, "jump": 1.0,
}
QA_FAIL_DEFAULT: dict[str, float] = {"lowpass": 1.0, "voids": 0.01, "grid": 0.2, "bias": 1.0, "ssim": 0.5}
QA_ACTIONS_DEFAULT: dict[str, str] = {"WARN": "flag", "FAIL": "hold"}


def _mask(value: Any) -> Any:
    """"***" for a secret that is set (a list of tokens keeps its length: how many are configured shows)."""
    return tuple("***" for _ in value) if isinstance(value, tuple) else "***"


def _mask_url(value: Any) -> Any:
    """The URL with only its password masked: where it points stays readable."""
    from gateway.storage.pg_schema import redact

    return redact(str(value))


#: Field metadata of a secret: `redacted` prints it masked, and the field is kept out of repr (tracebacks, logs).
SECRET: Mapping[str, Any] = {"redact": _mask}
SECRET_URL: Mapping[str, Any] = {"redact": _mask_url}


def redacted(value: Any) -> Any:
    """`dataclasses.asdict` of settings with every field marked SECRET or SECRET_URL masked when set: what
    `config check` prints. Why by field metadata: a secret added later is marked where it is declared, and no
    list elsewhere has to remember it."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            item = getattr(value, f.name)
            hide = f.metadata.get("redact")
            out[f.name] = hide(item) if hide is not None and item else redacted(item)
        return out
    if isinstance(value, Mapping):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


@dataclass(frozen=True)
class TaskQaRule:
    """How the QA gate's thresholds change for one task: checks that say nothing about it, checks added."""

    ignore: frozenset[str] = frozenset()
    warn: Mapping[str, float] = field(default_factory=dict)
    fail: Mapping[str, float] = field(default_factory=dict)


#: Per-task rules on top of `[qa]` (a route's own `qa = {...}` still overrides them). Why deblur differs:
#: sharpening changes edges by design, so the low-pass residual (which asks "was what was removed only
#: noise?") is not a measure of harm there; what is, is noise amplification (`gain`, enhancers.qa): about 2
#: on a blurred radiograph, 5.5-6.7 when a deblur model is given a real CR that was not blurred (RG1 crops).
QA_TASK_RULES: dict[str, TaskQaRule] = {
    Task.DEBLUR: TaskQaRule(ignore=frozenset({"lowpass"}), warn={"gain": 3.0}, fail={"gain": 4.0}),
}


@dataclass(frozen=True)
class Destination:
    """Where derived series go: a folder (`path`), a DICOM node (`ae_title`, `host`, `port`) or a STOW-RS
    service (`url` and credentials); `[[sources]]` entries use the same fields."""

    name: str
    type: str
    path: Path | None = None
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_aet: str = ""
    retrieve: str = "get"  # sources only: "get" (C-GET) or "move" (C-MOVE to the gateway's own AE title)
    # type = "dicomweb": the service root (`.../dicom-web`), a bearer token or Basic credentials, and TLS
    # verification (`verify = false` only for a test peer; `ca` = a PEM bundle that signed the server's certificate)
    url: str = field(default="", metadata=SECRET_URL)  # a password in the URL's authority is masked
    token: str = field(default="", repr=False, metadata=SECRET)
    username: str = ""
    password: str = field(default="", repr=False, metadata=SECRET)
    verify: bool = True
    ca: Path | None = None
    # the PACS viewer's URL of a study, `{study}` standing for its Study Instance UID: the console links to it
    viewer_url: str = ""


@dataclass(frozen=True)
class QaSettings:
    """The QA gate (`gateway.enhance.qa`): thresholds per check, what to do with each verdict, the report.

    `warn`/`fail`: check name -> threshold (a check absent from `fail` never fails a slice). `actions`: WARN
    and FAIL -> deliver (record only), flag (deliver, marked) or hold (deliver nothing until an admin
    releases it); PASS is always delivered. `full_every`: the low-pass and grid checks run on every k-th
    slice (and on every slice of a series of at most `full_min` slices); the others run on every slice.
    `degrade_restore_slices`: how many evenly spaced slices get the DEGRADE_RESTORE score. `report`: send a
    TID 1500 SR with each derived series.
    """

    enabled: bool = True
    warn: Mapping[str, float] = field(default_factory=lambda: dict(QA_WARN_DEFAULT))
    fail: Mapping[str, float] = field(default_factory=lambda: dict(QA_FAIL_DEFAULT))
    actions: Mapping[str, str] = field(default_factory=lambda: dict(QA_ACTIONS_DEFAULT))
    full_every: int = 4
    full_min: int = 8
    degrade_restore_slices: int = 3
    report: bool = True

    def action(self, verdict: str) -> str:
        """What the gate does with a series of this verdict."""
        return "deliver" if verdict == "PASS" else self.actions.get(verdict, "deliver")

    def for_task(self, task: str) -> QaSettings:
        """These settings with the task's rule (`QA_TASK_RULES`) applied; unchanged for a task without one."""
        rule = QA_TASK_RULES.get(task)
        if rule is None:
            return self
        warn = {k: v for k, v in self.warn.items() if k not in rule.ignore} | dict(rule.warn)
        fail = {k: v for k, v in self.fail.items() if k not in rule.ignore} | dict(rule.fail)
        return replace(self, warn=warn, fail=fail)


@dataclass(frozen=True)
class SeriesMatch:
    """One series a study-level route requires: its modality and/or a Series Description regular expression."""

    modality: str = ""
    series_description: str = ""

    def matches(self, modality: str, description: str) -> bool:
        if self.modality and self.modality != modality.upper():
            return False
        return not self.series_description or re.search(self.series_description, description or "") is not None

    def __str__(self) -> str:
        return "/".join(x for x in (self.modality, self.series_description) if x) or "any series"


@dataclass(frozen=True)
class Route:
    """First matching route picks the enhancer of a series; empty match fields match anything.

    `strength` (see `STRENGTH_RANGE`) goes to `Pipeline.run`; `qa` holds this route's QA settings (the
    global `[qa]` with the route's `qa = {...}` overrides merged in), None when it overrides nothing.
    `trigger = "study"` makes the series this route matches wait for their study (`gateway.receive.completion`):
    until no instance came for `stable_seconds` and every `required` series is there, or `study_timeout`
    seconds after the study's first instance, when `on_timeout` says "process" (what is there) or "discard".
    """

    enhancer: str
    modality: str = ""
    series_description: str = ""  # a regular expression searched in Series Description
    task: Task = Task.DENOISE
    strength: float = 1.0
    qa: QaSettings | None = None
    trigger: str = "series"
    required: tuple[SeriesMatch, ...] = ()
    study_timeout: float = 3600.0
    on_timeout: str = "process"
    localizers: bool = False  # enhance localizers/scouts this route matches (skipped by default: routing.py)


@dataclass(frozen=True)
class SenderSettings:
    """Exponential backoff: wait base * 2**(attempt-1) seconds, at most cap, dead after max_attempts.

    Circuit breaker per destination (gateway.deliver.sender): after `circuit_failures` failed deliveries in a row the
    destination is not tried for `circuit_seconds` (doubling while it keeps failing, at most cap_seconds), so
    a hung PACS does not burn every job's attempts; 0 turns it off.
    """

    base_seconds: float = 5.0
    cap_seconds: float = 300.0
    max_attempts: int = 8
    dimse_timeout: float = 60.0
    circuit_failures: int = 3
    circuit_seconds: float = 30.0


DEFAULT_VARIANTS: tuple[str, ...] = ("auto", "fast", "quality")


@dataclass(frozen=True)
class EnhanceSettings:
    """Knobs of the worker processes."""

    workers: int = 1
    device: str = "auto"
    batch_size: int = 8
    threads: int = 0  # torch threads per worker; 0 = torch's default
    #: processes per worker that derive, check and write the enhanced slices (gateway/enhance/derive_pool.py);
    #: 0 = the worker's own derive thread; None = auto (none on CPU, several beside a GPU)
    derive_processes: int | None = None
    series_number_offset: int = 1000
    description_suffix: str = "ENHANCED"
    #: Which variant of a modality's default enhancer a series gets when no route names one: "fast", "quality"
    #: (enhancers.registry.DEFAULTS: for CT and MR the `-x8` self-ensembles, 8x the work for +0.08-0.32 dB on
    #: held-out patients) or "auto": quality when the worker runs on a GPU, fast on a CPU.
    default_variant: str = "auto"


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS on the SCP: our certificate and key; with `ca`, peers must present a certificate it signed."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class StateSettings:
    """The state store (`gateway.storage`): how long a worker's claim on a job lasts without renewal.

    Why a setting: a dead owner's jobs resume after this long (an owner on the same host, at once); a live one
    renews every third of it, so it must stay well above the longest stall of a loaded machine.
    """

    lease_seconds: float = 60.0
    # `url`: the shared PostgreSQL store ("postgresql://user@host:port/db"); None: SQLite under var_dir. Kept out
    # of repr (it may hold a password); `gateway.storage.factory.describe` prints it redacted.
    url: str | None = field(default=None, repr=False, metadata=SECRET_URL)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus /metrics and /healthz over HTTP; port 0 turns the endpoint off."""

    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class WebSettings:
    """The web console (`enhance-gateway web`): where it listens, HTTPS, sessions, limits.

    Why limits here: the console holds uploads (PHI) in memory only, so the bounds on what one upload and all
    kept uploads may take are what keep it from starving the gateway beside it. `cert`/`key` (PEM) turn on
    HTTPS; a non-loopback `host` is refused without them. `actions_per_minute` bounds state-changing requests
    per user; `login_failures` failed logins per user (and per client address) in 5 minutes lock that name
    (address) out for the rest of the window.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    cert: Path | None = None
    key: Path | None = None
    session_hours: float = 12.0
    max_upload_mb: int = 256
    max_upload_megapixels: float = 30.0
    max_kept_mb: int = 1024
    actions_per_minute: int = 20
    login_failures: int = 5


@dataclass(frozen=True)
class DicomwebSettings:
    """STOW-RS reception (`gateway.receive.stow`): `POST /dicomweb/studies[/{study}]` over HTTP(S).

    Why these knobs: a STOW-RS sender is a machine with a credential, so nothing is accepted without one
    (bearer `tokens`, or HTTP Basic against the console's users whose role is in `user_roles`) unless
    `anonymous` says so (loopback only); `cert`/`key` (PEM) turn on HTTPS and a non-loopback `host` is refused
    without them.
    The limits bound what a request costs: a body is refused (413) past `max_request_mb` before it is read,
    one instance is held in memory at a time and refused past `max_instance_mb`, at most `max_requests` are
    served at once (503 with Retry-After beyond), and a client that stops sending for `timeout_seconds` is cut.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8081
    cert: Path | None = None
    key: Path | None = None
    tokens: tuple[str, ...] = field(default=(), repr=False, metadata=SECRET)
    user_roles: tuple[str, ...] = ("admin",)
    anonymous: bool = False
    max_request_mb: int = 4096
    max_instance_mb: int = 1024
    max_requests: int = 4
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs, validated."""

    ae_title: str = "ENHANCE_GW"
    host: str = "0.0.0.0"
    port: int = 11112
    var_dir: Path = Path("var")
    stable_seconds: float = 10.0
    allowed_calling_aets: tuple[str, ...] = ()
    peer_hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # AE title -> allowed IP addresses
    # Admission (gateway.receive.admission): associations served at once, connections (associating or associated)
    # from one IP address, and the seconds a new connection has to finish TLS and send its A-ASSOCIATE-RQ.
    max_associations: int = 32
    max_associations_per_host: int = 16
    pre_association_timeout: float = 5.0
    max_pdu: int = 0
    min_free_mb: int = 500
    tls: TlsSettings | None = None
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Destination, ...] = ()  # PACS to C-GET purged originals from (`reprocess`)
    routes: tuple[Route, ...] = ()
    sender: SenderSettings = field(default_factory=SenderSettings)
    enhance: EnhanceSettings = field(default_factory=EnhanceSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    state: StateSettings = field(default_factory=StateSettings)
    qa: QaSettings = field(default_factory=QaSettings)
    web: WebSettings = field(default_factory=WebSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    plugins: tuple[str, ...] = ()  # modules imported by workers and `config check` (site enhancers)
    source_file: Path | None = None
    # `[gateway] spool_dir`: a spool shared by several nodes (NFS/CephFS, docs/scale-out.md); None: var_dir/spool
    shared_spool: Path | None = None

    @property
    def spool_dir(self) -> Path:
        return self.shared_spool if self.shared_spool is not None else self.var_dir / "spool"

    @property
    def state_db(self) -> Path:
        return self.var_dir / "state.db"

    def with_overrides(self, *, port: int | None = None, var_dir: Path | None = None) -> Settings:
        """Command-line overrides (`serve --port --var-dir`); folder destinations under var_dir follow it."""
        new = self
        if port is not None:
            new = replace(new, port=_port(port, "--port"))
        if var_dir is not None:
            old = self.var_dir
            dests = tuple(
                replace(d, path=var_dir / d.path.relative_to(old))
                if d.path is not None and d.path.is_relative_to(old)
                else d
                for d in new.destinations
            )
            new = replace(new, var_dir=var_dir, destinations=dests)
        return new


def _port(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(f"{key} = {value!r}: a TCP port must be an integer from 0 to 65535")
    return value


def _aet(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _AET_RE.match(value) or not value.strip() or "\\" in value:
        raise ConfigError(
            f"{key} = {value!r}: an AE title is 1 to 16 printable ASCII characters, not only spaces, no backslash"
        )
    return value.strip()


def _number(value: Any, key: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{key} = {value!r}: expected a number >= {minimum}")
    return float(value)


def _int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} = {value!r}: expected an integer >= {minimum}")
    return value


def _derive_processes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f'enhance.derive_processes = {value!r}: expected "auto" or an integer >= 0')
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} = {value!r}: expected a string")
    return value


def _reject_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; known keys: {', '.join(sorted(known))}"
        )


def _path(value: Any, key: str, var_dir: Path) -> Path:
    text = _str(value, key)
    return Path(text.replace("{var_dir}", str(var_dir)))


def _destination(raw: Any, index: int, var_dir: Path, section: str = "destinations") -> Destination:
    where = f"{section}[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([[{section}]])")
    _reject_unknown(raw, {"name", "type", "path", "ae_title", "host", "port", "calling_aet", "viewer_url",
                          *_DICOMWEB_KEYS}, where)
    dest = _destination_kind(raw, where, var_dir)
    if "viewer_url" not in raw:
        return dest
    viewer = _str(raw["viewer_url"], f"{where}.viewer_url")
    if not viewer.startswith(("http://", "https://")) or "{study}" not in viewer:
        raise ConfigError(f"{where}.viewer_url = {viewer!r}: give an http(s) URL with {{study}} where the Study "
                          "Instance UID goes, e.g. \"http://pacs/viewer?StudyInstanceUID={study}\"")
    return replace(dest, viewer_url=viewer)


def _destination_kind(raw: dict[str, Any], where: str, var_dir: Path) -> Destination:
    name = _str(raw.get("name", ""), f"{where}.name")
    if not name:
        raise ConfigError(f"{where}.name is missing: give each destination a unique name, e.g. name = \"pacs\"")
    kind = raw.get("type")
    if kind == "folder":
        if "path" not in raw:
            raise ConfigError(f"{where}.path is missing: a folder destination needs path = \"{{var_dir}}/archive\"")
        return Destination(name=name, type="folder", path=_path(raw["path"], f"{where}.path", var_dir))
    if kind == "dicom":
        for key in ("ae_title", "host", "port"):
            if key not in raw:
                raise ConfigError(f"{where}.{key} is missing: a dicom destination needs ae_title, host and port")
        return Destination(
            name=name,
            type="dicom",
            ae_title=_aet(raw["ae_title"], f"{where}.ae_title"),
            host=_str(raw["host"], f"{where}.host"),
            port=_port(raw["port"], f"{where}.port"),
            calling_aet=_aet(raw["calling_aet"], f"{where}.calling_aet") if "calling_aet" in raw else "",
        )
    if kind == "dicomweb":  # a STOW-RS destination, or a WADO-RS source
        return _dicomweb_peer(raw, name, where, var_dir)
    raise ConfigError(f"{where}.type = {kind!r}: expected \"folder\", \"dicom\" or \"dicomweb\"")


_DICOMWEB_KEYS = ("url", "token", "username", "password", "verify", "ca")


def _dicomweb_peer(raw: dict[str, Any], name: str, where: str, var_dir: Path) -> Destination:
    """A DICOMweb server (STOW-RS destination, WADO-RS source): an http(s) URL, at most one way to log in, TLS
    verified by default."""
    url = _str(raw.get("url", ""), f"{where}.url").rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{where}.url = {url!r}: give the DICOMweb service root, e.g."
                          " \"https://pacs.example.org/dicom-web\"")
    token = _str(raw.get("token", ""), f"{where}.token")
    username = _str(raw.get("username", ""), f"{where}.username")
    password = _str(raw.get("password", ""), f"{where}.password")
    if token and username:
        raise ConfigError(f"{where}: give token (bearer) or username + password (Basic), not both")
    if bool(username) != bool(password):
        raise ConfigError(f"{where}: username and password go together")
    verify = raw.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{where}.verify must be true or false")
    ca = _path(raw["ca"], f"{where}.ca", var_dir) if raw.get("ca") else None
    if ca is not None and not ca.is_file():
        raise ConfigError(f"{where}.ca = {str(ca)!r}: no such file (a PEM bundle of the CA that signed the server)")
    return Destination(name=name, type="dicomweb", url=url, token=token, username=username, password=password,
                       verify=verify, ca=ca)


def _source(raw: Any, index: int, var_dir: Path) -> Destination:
    """A `[[sources]]` PACS for `reprocess`: a DICOM node with `retrieve = "get"` (default) or `"move"`, or a
    DICOMweb server (`type = "dicomweb"`, `url`, credentials) that serves WADO-RS.

    Why both: C-GET brings the instances back on the gateway's own association, but many PACS refuse it;
    C-MOVE works with every PACS that has the gateway registered as a move destination (its AE title, host
    and port), and the instances then arrive through the gateway's SCP like any C-STORE.
    """
    where = f"sources[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([[sources]])")
    retrieve = raw.get("retrieve", "get")
    if retrieve not in ("get", "move"):
        raise ConfigError(f"{where}.retrieve = {retrieve!r}: expected \"get\" (C-GET) or \"move\" (C-MOVE to"
                          " the gateway's own AE title, which the PACS must know as a move destination)")
    rest = {k: v for k, v in raw.items() if k != "retrieve"}
    if rest.get("type", "dicom") == "dicomweb":  # WADO-RS
        return _destination(rest, index, var_dir, "sources")
    return replace(_destination(dict(rest, type="dicom"), index, var_dir, "sources"), retrieve=retrieve)


def _tls(raw: Any, var_dir: Path) -> TlsSettings:
    if not isinstance(raw, dict):
        raise ConfigError("gateway.tls must be a table: [gateway.tls] with cert, key and optionally ca")
    _reject_unknown(raw, {"cert", "key", "ca", "require_client_cert"}, "[gateway.tls]")
    paths: dict[str, Path] = {}
    for key in ("cert", "key", "ca"):
        if key not in raw:
            if key == "ca":
                continue
            raise ConfigError(f"gateway.tls.{key} is missing: give the PEM file path")
        path = _path(raw[key], f"gateway.tls.{key}", var_dir)
        if not path.is_file():
            raise ConfigError(f"gateway.tls.{key} = {str(path)!r}: no such file")
        paths[key] = path
    require = raw.get("require_client_cert", False)
    if not isinstance(require, bool):
        raise ConfigError("gateway.tls.require_client_cert must be true or false")
    if require and "ca" not in paths:
        raise ConfigError("gateway.tls.require_client_cert = true needs gateway.tls.ca to check client certificates")
    return TlsSettings(cert=paths["cert"], key=paths["key"], ca=paths.get("ca"), require_client_cert=require)


def _strength(value: Any, key: str) -> float:
    lo, hi = STRENGTH_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(
            f"{key} = {value!r}: strength is a number from {lo:g} to {hi:g} (0 = leave the image as received,"
            f" 1 = remove the estimated noise, 2 = twice as strong); e.g. {key.rsplit('.', 1)[-1]} = 0.8"
        )
    return float(value)


def _thresholds(raw: Any, key: str, base: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table of check = threshold, e.g. {{lowpass = 0.35, voids = 0.001}}")
    _reject_unknown(raw, set(QA_CHECKS), key)
    return dict(base) | {name: _number(v, f"{key}.{name}") for name, v in raw.items()}


def _qa(raw: Any, where: str, base: QaSettings) -> QaSettings:
    """`[qa]` (base = the built-in defaults) or a route's `qa = {...}` (base = the global `[qa]`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _reject_unknown(
        raw, {"enabled", "warn", "fail", "actions", "full_every", "full_min", "degrade_restore_slices", "report"},
        where,
    )
    actions = dict(base.actions)
    acts = raw.get("actions", {})
    if not isinstance(acts, dict):
        raise ConfigError(f"{where}.actions must be a table, e.g. {{WARN = \"flag\", FAIL = \"hold\"}}")
    _reject_unknown(acts, {"WARN", "FAIL"}, f"{where}.actions")
    for verdict, action in acts.items():
        if action not in QA_ACTIONS:
            raise ConfigError(
                f"{where}.actions.{verdict} = {action!r}: expected one of {', '.join(QA_ACTIONS)}"
                " (deliver = record only, flag = deliver marked, hold = wait for `enhance-gateway release`)"
            )
        actions[verdict] = action
    flags = {}
    for name in ("enabled", "report"):
        value = raw.get(name, getattr(base, name))
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true or false")
        flags[name] = value
    return QaSettings(
        enabled=flags["enabled"],
        warn=_thresholds(raw.get("warn", {}), f"{where}.warn", base.warn),
        fail=_thresholds(raw.get("fail", {}), f"{where}.fail", base.fail),
        actions=actions,
        full_every=_int(raw.get("full_every", base.full_every), f"{where}.full_every", 1),
        full_min=_int(raw.get("full_min", base.full_min), f"{where}.full_min", 0),
        degrade_restore_slices=_int(
            raw.get("degrade_restore_slices", base.degrade_restore_slices), f"{where}.degrade_restore_slices"
        ),
        report=flags["report"],
    )


def _route(raw: Any, index: int, qa: QaSettings) -> Route:
    where = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([[routes]])")
    _reject_unknown(raw, {"modality", "series_description", "enhancer", "task", "strength", "qa", "trigger",
                          "required", "study_timeout", "on_timeout", "localizers"}, where)
    if "enhancer" not in raw:
        raise ConfigError(f"{where}.enhancer is missing: name an enhancer (`enhance-gateway models` lists them)")
    pattern = _str(raw.get("series_description", ""), f"{where}.series_description")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}.series_description = {pattern!r} is not a valid regular expression: {exc}")
    name = _str(raw.get("task", Task.DENOISE.value), f"{where}.task")
    if name not in TASKS:
        raise ConfigError(f"{where}.task = {name!r}: expected one of {', '.join(TASKS)}")
    task = Task(name)
    return Route(
        enhancer=_str(raw["enhancer"], f"{where}.enhancer"),
        modality=_str(raw.get("modality", ""), f"{where}.modality").upper(),
        series_description=pattern,
        task=task,
        strength=_strength(raw.get("strength", 1.0), f"{where}.strength"),
        qa=_qa(raw["qa"], f"{where}.qa", qa.for_task(task)) if "qa" in raw else None,
        localizers=_bool(raw.get("localizers", False), f"{where}.localizers"),
        **_study_trigger(raw, where),
    )


def _study_trigger(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A route's `trigger`, `required`, `study_timeout` and `on_timeout` (only meaningful for a study trigger)."""
    trigger = raw.get("trigger", "series")
    if trigger not in ("series", "study"):
        raise ConfigError(f"{where}.trigger = {trigger!r}: expected \"series\" (default: each series on its own)"
                          " or \"study\" (wait for the whole study)")
    if trigger == "series" and any(k in raw for k in ("required", "study_timeout", "on_timeout")):
        raise ConfigError(f"{where}: required, study_timeout and on_timeout need trigger = \"study\"")
    required_raw = raw.get("required", [])
    if not isinstance(required_raw, list) or not all(isinstance(r, dict) for r in required_raw):
        raise ConfigError(f'{where}.required must be a list of tables, e.g. [{{modality = "CT",'
                          ' series_description = "AX"}]')
    required = []
    for i, item in enumerate(required_raw):
        _reject_unknown(item, {"modality", "series_description"}, f"{where}.required[{i}]")
        pattern = _str(item.get("series_description", ""), f"{where}.required[{i}].series_description")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}.required[{i}].series_description = {pattern!r}: not a regular expression"
                              f" ({exc})") from None
        required.append(SeriesMatch(_str(item.get("modality", ""), f"{where}.required[{i}].modality").upper(),
                                    pattern))
    on_timeout = raw.get("on_timeout", "process")
    if on_timeout not in ("process", "discard"):
        raise ConfigError(f"{where}.on_timeout = {on_timeout!r}: expected \"process\" (enhance the series that"
                          " arrived) or \"discard\" (enhance nothing, log study.discarded)")
    return {"trigger": trigger, "required": tuple(required), "on_timeout": on_timeout,
            "study_timeout": _number(raw.get("study_timeout", 3600.0), f"{where}.study_timeout", 1.0)}


def _env_overrides(gw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """ENHANCE_GW_<KEY> overrides [gateway] keys, parsed as TOML values (strings may be bare)."""
    out = dict(gw)
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        key = name[len(ENV_PREFIX):].lower()
        try:
            out[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text
    return out


def _state(raw: dict[str, Any]) -> StateSettings:
    _reject_unknown(raw, {"lease_seconds", "url"}, "[state]")
    return StateSettings(lease_seconds=_number(raw.get("lease_seconds", 60.0), "state.lease_seconds", 5.0),
                         url=_state_url(raw["url"]) if "url" in raw else None)


def _state_url(value: Any) -> str:
    """A libpq URL (checked by libpq's own parser, so what passes here connects as psql would); never echoed
    back in an error, since it may carry a password."""
    from gateway.storage.pg_schema import check_url  # psycopg is imported only when a URL is configured

    problem = check_url(value) if isinstance(value, str) else "not a string"
    if problem:
        raise ConfigError(f"state.url: {problem}; expected \"postgresql://user@host:port/database\" (password in"
                          " ~/.pgpass or PGPASSWORD rather than in this file), or no url for the embedded SQLite")
    return str(value)


def parse(data: dict[str, Any], *, source: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build validated Settings from a parsed TOML document."""
    _reject_unknown(
        data,
        {"gateway", "destinations", "sources", "routes", "sender", "enhance", "metrics", "qa", "web", "dicomweb",
         "state"},
        "the top level",
    )
    gw = _env_overrides(data.get("gateway", {}), dict(os.environ) if environ is None else environ)
    known = {
        "ae_title", "host", "port", "var_dir", "stable_seconds", "allowed_calling_aets", "max_pdu", "min_free_mb",
        "tls", "peer_hosts", "max_associations", "max_associations_per_host", "pre_association_timeout",
        "spool_dir",
    }
    _reject_unknown(gw, known, "[gateway]")
    var_dir = Path(_str(gw.get("var_dir", "var"), "gateway.var_dir"))
    shared_spool = _path(gw["spool_dir"], "gateway.spool_dir", var_dir) if "spool_dir" in gw else None
    allowed = gw.get("allowed_calling_aets", [])
    if not isinstance(allowed, list):
        raise ConfigError("gateway.allowed_calling_aets must be a list of AE titles, e.g. [\"CT01\", \"PACS\"]")
    max_pdu = _int(gw.get("max_pdu", 0), "gateway.max_pdu")
    if 0 < max_pdu < 131072:
        raise ConfigError(f"gateway.max_pdu = {max_pdu}: use 0 (unlimited) or at least 131072 for throughput")

    dests_raw = data.get("destinations", [])
    routes_raw = data.get("routes", [])
    if not isinstance(dests_raw, list) or not isinstance(routes_raw, list):
        raise ConfigError("destinations and routes are arrays of tables: write [[destinations]] and [[routes]]")
    dests = tuple(_destination(d, i, var_dir) for i, d in enumerate(dests_raw))
    names = [d.name for d in dests]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"destination name(s) {', '.join(dupes)} used twice: names must be unique")
    if not dests:
        raise ConfigError("no [[destinations]]: add at least one (type = \"folder\" or \"dicom\")")

    sources_raw = data.get("sources", [])
    if not isinstance(sources_raw, list):
        raise ConfigError("sources is an array of tables: write [[sources]]")
    sources = tuple(_source(src, i, var_dir) for i, src in enumerate(sources_raw))

    snd = data.get("sender", {})
    _reject_unknown(
        snd,
        {"base_seconds", "cap_seconds", "max_attempts", "dimse_timeout", "circuit_failures", "circuit_seconds"},
        "[sender]",
    )
    sender = SenderSettings(
        base_seconds=_number(snd.get("base_seconds", 5.0), "sender.base_seconds"),
        cap_seconds=_number(snd.get("cap_seconds", 300.0), "sender.cap_seconds"),
        max_attempts=_int(snd.get("max_attempts", 8), "sender.max_attempts", 1),
        dimse_timeout=_number(snd.get("dimse_timeout", 60.0), "sender.dimse_timeout", 1.0),
        circuit_failures=_int(snd.get("circuit_failures", 3), "sender.circuit_failures"),
        circuit_seconds=_number(snd.get("circuit_seconds", 30.0), "sender.circuit_seconds", 1.0),
    )
    enh = data.get("enhance", {})
    _reject_unknown(
        enh,
        {
            "workers", "device", "batch_size", "threads", "derive_processes", "series_number_offset",
            "description_suffix", "plugins", "default_variant",
        },
        "[enhance]",
    )
    plugins = enh.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError('enhance.plugins must be a list of importable module names, e.g. ["site_enhancers"]')
    device = _str(enh.get("device", "auto"), "enhance.device")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"enhance.device = {device!r}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")
    derive = enh.get("derive_processes", "auto")
    variant = _str(enh.get("default_variant", "auto"), "enhance.default_variant")
    if variant not in DEFAULT_VARIANTS:
        raise ConfigError(
            f"enhance.default_variant = {variant!r}: expected one of {', '.join(map(repr, DEFAULT_VARIANTS))}"
        )
    enhance = EnhanceSettings(
        workers=_int(enh.get("workers", 1), "enhance.workers", 1),
        derive_processes=None if derive == "auto" else _derive_processes(derive),
        device=device,
        batch_size=_int(enh.get("batch_size", 8), "enhance.batch_size", 1),
        threads=_int(enh.get("threads", 0), "enhance.threads"),
        series_number_offset=_int(enh.get("series_number_offset", 1000), "enhance.series_number_offset"),
        description_suffix=_str(enh.get("description_suffix", "ENHANCED"), "enhance.description_suffix"),
        default_variant=variant,
    )
    qa = _qa(data.get("qa", {}), "[qa]", QaSettings())
    tls = _tls(gw["tls"], var_dir) if "tls" in gw else None
    hosts_raw = gw.get("peer_hosts", {})
    if not isinstance(hosts_raw, dict) or not all(isinstance(v, list) for v in hosts_raw.values()):
        raise ConfigError('gateway.peer_hosts must map AE titles to lists of IP addresses, e.g. {CT01 = ["10.0.0.5"]}')
    peer_hosts = {
        _aet(aet, "gateway.peer_hosts"): tuple(_str(h, f"gateway.peer_hosts.{aet}[]") for h in hosts)
        for aet, hosts in hosts_raw.items()
    }
    met = data.get("metrics", {})
    _reject_unknown(met, {"host", "port"}, "[metrics]")
    metrics = MetricsSettings(
        host=_str(met.get("host", "127.0.0.1"), "metrics.host"), port=_port(met.get("port", 9108), "metrics.port")
    )
    return Settings(
        ae_title=_aet(gw.get("ae_title", "ENHANCE_GW"), "gateway.ae_title"),
        host=_str(gw.get("host", "0.0.0.0"), "gateway.host"),
        port=_port(gw.get("port", 11112), "gateway.port"),
        var_dir=var_dir,
        shared_spool=shared_spool,
        stable_seconds=_number(gw.get("stable_seconds", 10), "gateway.stable_seconds"),
        allowed_calling_aets=tuple(_aet(a, "gateway.allowed_calling_aets[]") for a in allowed),
        max_pdu=max_pdu,
        min_free_mb=_int(gw.get("min_free_mb", 500), "gateway.min_free_mb"),
        tls=tls,
        peer_hosts=peer_hosts,
        max_associations=_int(gw.get("max_associations", 32), "gateway.max_associations", 1),
        max_associations_per_host=_int(gw.get("max_associations_per_host", 16), "gateway.max_associations_per_host", 1),
        pre_association_timeout=_number(
            gw.get("pre_association_timeout", 5.0), "gateway.pre_association_timeout", 0.1
        ),
        destinations=dests,
        sources=sources,
        routes=tuple(_route(r, i, qa) for i, r in enumerate(routes_raw)),
        sender=sender,
        enhance=enhance,
        metrics=metrics,
        state=_state(data.get("state", {})),
        qa=qa,
        web=_web(data.get("web", {}), var_dir),
        dicomweb=_dicomweb(data.get("dicomweb", {}), var_dir),
        plugins=tuple(plugins),
        source_file=source,
    )


def _web(raw: Any, var_dir: Path) -> WebSettings:
    """The `[web]` table: cert and key come together or not at all (a half-configured HTTPS is an error)."""
    if not isinstance(raw, dict):
        raise ConfigError("[web] must be a table")
    _reject_unknown(raw, {f.name for f in WebSettings.__dataclass_fields__.values()}, "[web]")
    cert = _path(raw["cert"], "web.cert", var_dir) if raw.get("cert") else None
    key = _path(raw["key"], "web.key", var_dir) if raw.get("key") else None
    if (cert is None) != (key is None):
        raise ConfigError("[web] cert and key go together: set both (PEM files) for HTTPS, or neither")
    megapixels = _number(raw.get("max_upload_megapixels", 30.0), "web.max_upload_megapixels", 0.01)
    return WebSettings(
        host=_str(raw.get("host", "127.0.0.1"), "web.host"),
        port=_port(raw.get("port", 8080), "web.port"),
        cert=cert,
        key=key,
        session_hours=_number(raw.get("session_hours", 12.0), "web.session_hours", 0.01),
        max_upload_mb=_int(raw.get("max_upload_mb", 256), "web.max_upload_mb", 1),
        max_upload_megapixels=megapixels,
        max_kept_mb=_int(raw.get("max_kept_mb", 1024), "web.max_kept_mb", 1),
        actions_per_minute=_int(raw.get("actions_per_minute", 20), "web.actions_per_minute", 1),
        login_failures=_int(raw.get("login_failures", 5), "web.login_failures", 1),
    )


def _dicomweb(raw: Any, var_dir: Path) -> DicomwebSettings:
    """The `[dicomweb]` table: an enabled receiver needs a credential (or `anonymous = true`), and HTTPS
    (cert + key) before it may listen beyond loopback."""
    if not isinstance(raw, dict):
        raise ConfigError("[dicomweb] must be a table")
    _reject_unknown(raw, {f.name for f in DicomwebSettings.__dataclass_fields__.values()}, "[dicomweb]")
    cert = _path(raw["cert"], "dicomweb.cert", var_dir) if raw.get("cert") else None
    key = _path(raw["key"], "dicomweb.key", var_dir) if raw.get("key") else None
    if (cert is None) != (key is None):
        raise ConfigError("[dicomweb] cert and key go together: set both (PEM files) for HTTPS, or neither")
    tokens = raw.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) and len(t) >= 16 for t in tokens):
        raise ConfigError("dicomweb.tokens must be a list of bearer tokens of at least 16 characters, e.g. the"
                          " output of `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    roles = raw.get("user_roles", ["admin"])
    if not isinstance(roles, list) or not all(r in ("viewer", "admin") for r in roles):
        raise ConfigError('dicomweb.user_roles must be a list of console roles ("viewer", "admin"), e.g. ["admin"]')
    flags = {}
    for name, default in (("enabled", False), ("anonymous", False)):
        value = raw.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"dicomweb.{name} must be true or false")
        flags[name] = value
    host = _str(raw.get("host", "127.0.0.1"), "dicomweb.host")
    loopback = host in ("127.0.0.1", "::1", "localhost")
    if flags["enabled"] and cert is None and not loopback:
        raise ConfigError(f"dicomweb.host = {host!r} would receive patient data over plain HTTP beyond this"
                          " machine: set [dicomweb] cert and key (PEM) for HTTPS, or bind 127.0.0.1")
    if flags["enabled"] and flags["anonymous"] and not loopback:
        raise ConfigError(f"dicomweb.anonymous = true with dicomweb.host = {host!r} would let anyone on the network"
                          " store instances: give senders dicomweb.tokens (or console users) instead, or bind"
                          " 127.0.0.1")
    return DicomwebSettings(
        enabled=flags["enabled"],
        host=host,
        port=_port(raw.get("port", 8081), "dicomweb.port"),
        cert=cert,
        key=key,
        tokens=tuple(tokens),
        user_roles=tuple(roles),
        anonymous=flags["anonymous"],
        max_request_mb=_int(raw.get("max_request_mb", 4096), "dicomweb.max_request_mb", 1),
        max_instance_mb=_int(raw.get("max_instance_mb", 1024), "dicomweb.max_instance_mb", 1),
        max_requests=_int(raw.get("max_requests", 4), "dicomweb.max_requests", 1),
        timeout_seconds=_number(raw.get("timeout_seconds", 60.0), "dicomweb.timeout_seconds", 1.0),
    )


@dataclass(frozen=True)
class ConfigChoice:
    """The file `discover` picked, why (`origin`), and the places it looked at first and found empty."""

    path: Path
    origin: str
    missing: tuple[Path, ...] = ()

    @property
    def packaged(self) -> bool:
        return self.origin == "packaged default"

    def describe(self) -> str:
        """One line for stderr: which file, and why; loud when no file was found and the package's is used."""
        if not self.packaged:
            return f"config: {self.path.absolute()} (from {self.origin})"
        return (
            f"WARNING: no configuration file found ({ENV_CONFIG} unset, none of "
            f"{', '.join(str(p) for p in self.missing)} exists): running on the defaults shipped in the package"
            f" ({self.path}, var_dir \"var\" under {Path.cwd()}); pass --config FILE or set {ENV_CONFIG}"
        )


def discover(
    explicit: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    system: Path = SYSTEM_CONFIG,
) -> ConfigChoice:
    """Which configuration file a command uses: `--config`, then $ENHANCE_GW_CONFIG, then
    ./config/gateway.toml, then /etc/enhance-gateway/gateway.toml, then the copy shipped in the package.

    Why this order: an explicit choice wins over the environment (a systemd unit's Environment=), which wins
    over the files found by place (a checkout's own config, then the system-wide one). A file that was named
    (flag or variable) but is absent is an error, never a silent fall-through to another file: a typo would
    otherwise run the gateway on a different var_dir.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} (--config) not found; pass --config with an existing file")
        return ConfigChoice(explicit, "--config")
    named = env.get(ENV_CONFIG, "")
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"config file {named} (from ${ENV_CONFIG}) not found; fix or unset {ENV_CONFIG}")
        return ConfigChoice(Path(named), f"${ENV_CONFIG}")
    local = (cwd or Path.cwd()) / LOCAL_CONFIG
    for candidate, origin in ((local, f"./{LOCAL_CONFIG}"), (system, str(system))):
        if candidate.is_file():
            return ConfigChoice(candidate, origin)
    return ConfigChoice(PACKAGED_CONFIG, "packaged default", (local, system))


def load(path: Path | None = None, *, environ: dict[str, str] | None = None) -> Settings:
    """Load and validate a TOML file (the one `discover` picks when `path` is None)."""
    path = path or discover(environ=environ).path
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config with an existing file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse(data, source=path, environ=environ)
