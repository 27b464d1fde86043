"""DICOM SCU operations shared by the sender, `push` and `echo`: one association, many C-STOREs.

Why files are sent by path: pynetdicom then streams the encoded dataset as stored, without decoding and
re-encoding it, and the presentation contexts proposed are exactly the (SOP class, transfer syntax) pairs
present in the files, so compressed files travel unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.errors import DeliveryError

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "ENHANCE_GW"


@dataclass(frozen=True)
class SendResult:
    sent: int
    bytes: int
    seconds: float


def _contexts(files: Sequence[Path]) -> list[tuple[str, str]]:
    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    if len(pairs) > MAX_CONTEXTS:
        raise DeliveryError(f"{len(pairs)} SOP class/transfer syntax pairs exceed the {MAX_CONTEXTS} contexts limit")
    return list(pairs)


def _ae(peer: Peer, timeout: float) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    return ae


def send_files(peer: Peer, files: Sequence[Path], *, timeout: float = 60.0) -> SendResult:
    """C-STORE every file on one association; raise DeliveryError unless every one is stored."""
    started = time.monotonic()
    if not files:
        return SendResult(0, 0, 0.0)
    ae = _ae(peer, timeout)
    for sop_class, tsyntax in _contexts(files):
        ae.add_requested_context(sop_class, [tsyntax])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(
            f"association with {peer.ae_title}@{peer.host}:{peer.port} was rejected or could not be opened;"
            " check that the peer is up and knows our AE title"
        )
    sent = size = 0
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise DeliveryError(f"no C-STORE response from {peer.ae_title} (timeout or aborted association)")
            if code != 0 and not 0xB000 <= code <= 0xBFFF:
                raise DeliveryError(f"{peer.ae_title} refused an instance with status 0x{code:04X}")
            sent += 1
            size += path.stat().st_size
    finally:
        if assoc.is_established:
            assoc.release()
    return SendResult(sent, size, time.monotonic() - started)


def echo(peer: Peer, *, timeout: float = 30.0) -> float:
    """C-ECHO; returns the round trip in seconds or raises DeliveryError."""
    started = time.monotonic()
    ae = _ae(peer, timeout)
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"no association with {peer.ae_title}@{peer.host}:{peer.port}")
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or int(status.Status) != 0:
        raise DeliveryError(f"C-ECHO to {peer.ae_title} failed")
    return time.monotonic() - started
