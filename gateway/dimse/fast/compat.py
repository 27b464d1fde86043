"""The fence around the gateway's use of pynetdicom and pydicom internals: every private name, checked once.

Why: the fast path (`netopts`, `pdata`, `store_scu`) subclasses pynetdicom's DUL, association reactor, socket and
request handler, and reads their private attributes; the connection admission (`gateway.receive.admission`) and
the STOW-RS receiver lean on a few more internals. None of that is API: a minor release may rename any of it.
So the versions are pinned (setup.cfg, `TESTED_SERIES`), every name is listed here (`PRIVATE_NAMES`), and at
import each is looked up on real (never started) pynetdicom objects:
- a missing fast-path name, or a version outside the tested series, turns the fast path off (`FAST_PATH`,
  `REASON`): associations then run on stock pynetdicom, as they would without this package (the SCP's
  EVT_C_STORE handler stores, `send_c_store` sends; slower, the same bytes: tests/gateway/test_receive_paths.py);
- a missing name that has no stock fallback (`required`) stops the start (`configure_process` raises, naming
  the names and the pinned range to install) instead of leaving associations that hang.
`Receiver.start` logs the verdict (`scp.listening fast_path=... fast_path_reason=...`).

Process-wide pynetdicom settings (`pynetdicom._config`) are set here too, once, at process start
(`configure_process`, called by the service and the `push`/`echo` commands), never inside constructors: they
change every association in the process, whoever builds it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import pydicom.filereader
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

from gateway.errors import GatewayError

#: The (major, minor) series the fast path was written and tested against; setup.cfg pins `>=X.Y,<X.Y+1` to
#: the same series (tests/gateway/test_compat.py checks that they agree).
TESTED_SERIES: dict[str, tuple[int, int]] = {"pynetdicom": (3, 0), "pydicom": (3, 0)}


@dataclass(frozen=True)
class Private:
    """One internal name: where it lives, who uses it, and whether stock pynetdicom can stand in without it."""

    owner: str  # a key of `_owners()`: the class (probed on a fresh instance) or module that holds it
    name: str
    used_by: str
    required: bool = False  # True: no fallback, the gateway cannot start without it


_FAST = "netopts.EventDrivenDUL"
_REACTOR = "netopts.EventDrivenAssociation"
PRIVATE_NAMES: tuple[Private, ...] = (
    # the event-driven DUL reactor and its C-STORE router (netopts, pdata)
    Private("DULServiceProvider", "_process_recv_primitive", _FAST),
    Private("DULServiceProvider", "_is_transport_event", _FAST),
    Private("DULServiceProvider", "_read_pdu_data", _FAST),
    Private("DULServiceProvider", "_decode_pdu", _FAST),
    Private("DULServiceProvider", "_kill_thread", _FAST),
    Private("DULServiceProvider", "_idle_timer", _FAST),
    Private("DULServiceProvider", "_recv_pdu", _FAST),
    Private("DULServiceProvider", "artim_timer", _FAST),
    Private("DULServiceProvider", "to_user_queue", _FAST),
    Private("DULServiceProvider", "state_machine", _FAST),
    Private("DULServiceProvider", "idle_timer_expired", _REACTOR),
    # the event-driven association reactor (netopts)
    Private("Association", "_run_reactor", _REACTOR),
    Private("Association", "_serve_request", _REACTOR),
    Private("Association", "_kill", _REACTOR),
    Private("Association", "_is_paused", _REACTOR),
    Private("Association", "_reactor_checkpoint", f"{_REACTOR}, {_FAST}"),
    Private("Association", "_dul_ready", _FAST),
    Private("Association", "_accepted_cx", "netopts.TunedRequestHandler, store_scu.FastStoreSCU"),
    Private("DIMSEServiceProvider", "msg_queue", _FAST),
    Private("DIMSEServiceProvider", "get_msg", _REACTOR),
    Private("DIMSEServiceProvider", "maximum_pdu_size", "store_scu.FastStoreSCU"),
    # tuned sockets (netopts): stock sockets serve without them
    Private("AssociationSocket", "_is_connected", _FAST),
    Private("AssociationSocket", "_create_socket", "netopts.TunedSocket"),
    Private("AE", "_create_socket", "netopts.TunedAE"),
    # connection admission: the A-ASSOCIATE-RQ read during admission is replayed through these (no fallback)
    Private("RequestHandler", "_create_association", "netopts.TunedRequestHandler (admission)", required=True),
    Private("DULServiceProvider", "event_queue", "netopts.TunedRequestHandler (admission)", required=True),
    # process-wide settings (configure_process): without them PHI could reach pynetdicom's debug log lines
    Private("pynetdicom._config", "STORE_SEND_CHUNKED_DATASET", "configure_process", required=True),
    Private("pynetdicom._config", "STORE_RECV_CHUNKED_DATASET", "configure_process", required=True),
    Private("pynetdicom._config", "PASS_CONTEXTVARS", "configure_process", required=True),
    Private("pynetdicom._config", "LOG_REQUEST_IDENTIFIERS", "configure_process", required=True),
    Private("pynetdicom._config", "LOG_RESPONSE_IDENTIFIERS", "configure_process", required=True),
    Private("pynetdicom._config", "LOG_HANDLER_LEVEL", "configure_process", required=True),
    # pydicom: the STOW-RS receiver reads each part's File Meta after its preamble
    Private("pydicom.filereader", "_read_file_meta_info", "gateway.receive.stow", required=True),
)


def in_tested_range(package: str, installed: str) -> bool:
    """Whether version string `installed` of `package` is in the series the fast path was tested with."""
    parts = installed.split(".")
    try:
        series = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return False
    return series == TESTED_SERIES[package]


def _owners() -> dict[str, Any]:
    """Fresh, never started pynetdicom objects to look the names up on (instance attributes are set in __init__)."""
    owners: dict[str, Any] = {"RequestHandler": RequestHandler, "AE": AE, "pynetdicom._config": _config,
                              "pydicom.filereader": pydicom.filereader}
    assoc = Association(AE(), "requestor")
    owners.update(Association=assoc, DULServiceProvider=assoc.dul, DIMSEServiceProvider=assoc.dimse)
    ours, theirs = socket.socketpair()
    try:
        owners["AssociationSocket"] = AssociationSocket(assoc, client_socket=ours)
    finally:
        ours.close()
        theirs.close()
    return owners


def _missing() -> list[Private]:
    try:
        owners = _owners()
    except Exception:  # noqa: BLE001 - an API that changed this much lacks every name: say so below
        return list(PRIVATE_NAMES)
    return [p for p in PRIVATE_NAMES if p.owner not in owners or not hasattr(owners[p.owner], p.name)]


def _names(found: list[Private]) -> str:
    return ", ".join(f"{p.owner}.{p.name} ({p.used_by})" for p in found)


def _verdict() -> tuple[bool, str, tuple[Private, ...]]:
    versions = {package: version(package) for package in TESTED_SERIES}
    missing = _missing()
    required = tuple(p for p in missing if p.required)
    outside = [f"{package} {v} is outside the tested {'.'.join(map(str, TESTED_SERIES[package]))} series"
               for package, v in versions.items() if not in_tested_range(package, v)]
    if outside or missing:
        why = "; ".join(outside + ([f"missing: {_names(missing)}"] if missing else []))
        return False, f"{why}; stock pynetdicom serves every association", required
    installed = " and ".join(f"{package} {v}" for package, v in versions.items())
    return True, f"{installed} are the tested series; all {len(PRIVATE_NAMES)} internal names present", required


#: Whether the fast path is on; `REASON` says why not (or what was checked).
FAST_PATH, REASON, _REQUIRED_MISSING = _verdict()
#: Whether the installed versions are inside the pinned series (the fast path's tests must pass then).
IN_TESTED_RANGE = all(in_tested_range(package, version(package)) for package in TESTED_SERIES)


def configure_process() -> None:
    """Set pynetdicom's process-wide flags; call once at process start, before any association.

    Raises GatewayError when a name with no fallback is missing (the installed pynetdicom or pydicom is not
    the pinned series): better a start that stops with the fix than associations that hang.
    """
    if _REQUIRED_MISSING:
        pins = ", ".join(f"'{p}>={a}.{b},<{a}.{b + 1}'" for p, (a, b) in TESTED_SERIES.items())
        raise GatewayError(
            f"the installed pynetdicom/pydicom lack internals the gateway needs: {_names(list(_REQUIRED_MISSING))};"
            f" install the tested versions: pip install {pins}"
        )
    # The sender passes file paths to send_c_store: streamed as stored, not decoded and re-encoded (dimse.scu).
    _config.STORE_SEND_CHUNKED_DATASET = True
    # The SCP's stock EVT_C_STORE handler takes the data set as bytes; chunked receiving was also slower here.
    _config.STORE_RECV_CHUNKED_DATASET = False
    # Context variables bound where an association starts (structlog's bound ids) reach its handlers.
    _config.PASS_CONTEXTVARS = True
    # pynetdicom logs identifiers and whole data sets at debug level: PHI. Its "standard" handlers also format
    # debug lines for every PDU and DIMSE message even with the logger at WARNING: ~15% of the sender's CPU.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"


__all__ = ["FAST_PATH", "IN_TESTED_RANGE", "PRIVATE_NAMES", "REASON", "TESTED_SERIES", "Private", "configure_process",
           "in_tested_range"]
