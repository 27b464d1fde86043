"""DICOM SCU operations shared by the sender, `push` and `echo`: one association, many C-STOREs.

Why files are sent by path: with `STORE_SEND_CHUNKED_DATASET` (set at process start by
`gateway.dimse.fast.compat.configure_process`) pynetdicom streams the encoded
dataset from the file as stored, in PDU-sized reads, without decoding and re-encoding it (without the flag
it decodes every file with pydicom and encodes it again: about half of the sender's CPU per instance). The
presentation contexts proposed are exactly the (SOP class, transfer syntax) pairs present in the files, so
compressed files travel unchanged; a file whose exact pair the peer rejected is sent decoded, so pynetdicom
may still convert it to an accepted uncompressed syntax as it always did.

Why `netopts.TunedAE`: TCP_NODELAY on the outgoing socket and event-driven reactors instead of pynetdicom's
1 ms polling loops (see gateway/dimse/fast/netopts.py); together these took `send_files` from ~0.1x to ~0.4x of dcmtk
storescu on the benchmark machine (bench/send.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_utils.part10 import scan_file_meta
from gateway.dimse.fast import netopts
from gateway.dimse.fast.store_scu import FastStoreSCU
from gateway.dimse.status import stored
from gateway.errors import DeliveryError
from gateway.settings import Destination

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "ENHANCE_GW"

    @classmethod
    def for_destination(cls, dest: Destination, default_calling_aet: str) -> Peer:
        """The peer of a `[[destinations]]` or `[[sources]]` DICOM node; we call it by its `calling_aet`, else by
        `default_calling_aet` (the gateway's own AE title)."""
        return cls(dest.ae_title, dest.host, dest.port, dest.calling_aet or default_calling_aet)


@dataclass(frozen=True)
class SendResult:
    sent: int
    bytes: int
    seconds: float


def _file_contexts(files: Sequence[Path]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of each file, from its File Meta only (no dataset parsing)."""
    out = []
    for path in files:
        with open(path, "rb") as fh:
            scanned = scan_file_meta(fh.read(4096))
        if scanned is not None:
            pair = (scanned.sop_class_uid, scanned.transfer_syntax_uid)
        else:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        out.append(pair)
    return out


def _contexts(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    unique = list(dict.fromkeys(pairs))
    if len(unique) > MAX_CONTEXTS:
        raise DeliveryError(f"{len(unique)} SOP class/transfer syntax pairs exceed the {MAX_CONTEXTS} contexts limit")
    return unique


def requestor_ae(peer: Peer, timeout: float) -> netopts.TunedAE:
    """The AE that calls `peer` (send, echo, C-GET, C-MOVE): every wait bounded by `timeout`, no PDU size limit.

    Why the connection timeout too: a host that drops SYNs must not hold the caller for the OS's ~2 minutes.
    """
    ae = netopts.TunedAE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0
    return ae


def _associate(ae: AE, peer: Peer, timeout: float) -> Any:
    """Open the association or raise DeliveryError saying what happened: refused, unreachable, rejected (with
    the peer's reason) or timed out (TCP connected, no answer to the A-ASSOCIATE-RQ within `timeout` s)."""
    connected: list[bool] = []
    started = time.monotonic()
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, lambda _: connected.append(True))]
    )
    if assoc.is_established:
        return assoc
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if assoc.is_rejected:
        raise DeliveryError(
            f"association with {where} was rejected by the peer; check that it knows our AE title"
            f" ({peer.calling_aet}) and accepts these SOP classes"
        )
    if connected:
        raise DeliveryError(
            f"association with {where} timed out: TCP connected but no answer to the association request"
            f" within {timeout:g} s (sender.dimse_timeout); the peer is hung or overloaded"
        )
    elapsed = time.monotonic() - started
    if elapsed >= 0.9 * timeout:
        raise DeliveryError(f"connection to {where} timed out after {elapsed:.0f} s; check the host and firewall")
    raise DeliveryError(f"connection to {where} could not be opened (refused or unreachable); check that the peer is up")


def _store(
    assoc: Any,
    fast: FastStoreSCU | None,
    path: Path,
    pair: tuple[str, str],
    accepted: dict[tuple[str, str], int],
    timeout: float,
) -> int | None:
    """One C-STORE; its status, or None without a response. The fast path (`gateway.dimse.fast.store_scu`) for files
    sent as stored; pynetdicom's `send_c_store` for the rest (module docstring)."""
    context_id = accepted.get(pair)
    if context_id is None:
        status = assoc.send_c_store(dcmread(path))  # exact pair rejected: pynetdicom may convert it
    else:
        data = path.read_bytes()
        meta = scan_file_meta(data)
        if fast is not None and meta is not None and (meta.sop_class_uid, meta.transfer_syntax_uid) == pair:
            return fast.send(data, meta, context_id, timeout)
        status = assoc.send_c_store(path)
    return int(status.Status) if status and "Status" in status else None


def _store_association(
    peer: Peer, files: Sequence[Path], timeout: float
) -> tuple[Any, list[tuple[str, str]], dict[tuple[str, str], int], FastStoreSCU | None]:
    """One association proposing each file's own (SOP class, transfer syntax); its accepted context ids by pair
    and the fast C-STORE writer on it (shared by `send_files` and `store_each`)."""
    ae = requestor_ae(peer, timeout)
    pairs = _file_contexts(files)
    for sop_class, tsyntax in _contexts(pairs):
        ae.add_requested_context(sop_class, [tsyntax])
    assoc = _associate(ae, peer, timeout)
    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id or 0) for cx in assoc.accepted_contexts
    }
    return assoc, pairs, accepted, FastStoreSCU.for_association(assoc)


def send_files(peer: Peer, files: Sequence[Path], *, timeout: float = 60.0) -> SendResult:
    """C-STORE every file on one association; raise DeliveryError unless every one is stored."""
    started = time.monotonic()
    if not files:
        return SendResult(0, 0, 0.0)
    assoc, pairs, accepted, fast = _store_association(peer, files, timeout)
    sent = size = 0
    try:
        for path, pair in zip(files, pairs, strict=True):
            code = _store(assoc, fast, path, pair, accepted, timeout)
            if code is None:
                if assoc.is_established:
                    assoc.abort()
                    raise DeliveryError(
                        f"C-STORE to {peer.ae_title} timed out: no response within {timeout:g} s (sender.dimse_timeout)"
                    )
                raise DeliveryError(f"{peer.ae_title} aborted the association during a C-STORE (no response)")
            if not stored(code):
                raise DeliveryError(f"{peer.ae_title} refused an instance with status 0x{code:04X}")
            sent += 1
            size += path.stat().st_size
    finally:
        if assoc.is_established:
            assoc.release()
    return SendResult(sent, size, time.monotonic() - started)


@dataclass(frozen=True)
class Stored:
    """One file of `store_each`: the peer's C-STORE status, or None with `problem` saying why it was not stored."""

    path: Path
    status: int | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and stored(self.status)


def store_each(peer: Peer, files: Sequence[Path], *, timeout: float = 60.0) -> list[Stored]:
    """C-STORE every file on one association and report each one, going on past a refused instance.

    Why beside `send_files`: the sender needs all or nothing (a derived series is delivered whole or retried),
    while an admin's `push` of a folder needs every good file sent and each refused one named. Files after a
    lost association (timeout, abort) are reported as not sent. Raises DeliveryError only when no association
    can be opened at all.
    """
    if not files:
        return []
    assoc, pairs, accepted, fast = _store_association(peer, files, timeout)
    out: list[Stored] = []
    try:
        for path, pair in zip(files, pairs, strict=True):
            if not assoc.is_established:
                out.append(Stored(path, None, f"not sent: {peer.ae_title} ended the association before it"))
                continue
            try:
                code = _store(assoc, fast, path, pair, accepted, timeout)
            except ValueError as exc:  # pynetdicom: no accepted context can carry this SOP class
                out.append(Stored(path, None, f"not sent: {exc}"))
                continue
            if code is None:
                if assoc.is_established:
                    assoc.abort()
                out.append(Stored(path, None, f"no C-STORE response from {peer.ae_title} within {timeout:g} s"))
                continue
            result = Stored(path, code)
            out.append(result if result.ok else Stored(path, code, f"{peer.ae_title} refused it: status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def echo(peer: Peer, *, timeout: float = 30.0) -> float:
    """C-ECHO; returns the round trip in seconds or raises DeliveryError."""
    started = time.monotonic()
    ae = requestor_ae(peer, timeout)
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _associate(ae, peer, timeout)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or int(status.Status) != 0:
        raise DeliveryError(f"C-ECHO to {peer.ae_title} failed")
    return time.monotonic() - started
