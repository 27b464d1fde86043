"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class and every transfer syntax pydicom decodes.

Why the handler is shaped this way: a C-STORE is acknowledged (0x0000) only after the bytes are durable in
the spool and the instance is recorded in the state store. The handler never raises: every failure maps to
a DICOM status (0xA700 out of resources, 0xC210 cannot understand) and the server keeps serving. Nothing
slow happens here (no decoding of pixels, no enhancement): peers time out after ~30 s.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from structlog.contextvars import bound_contextvars

from dicom_utils import part10
from dicom_utils.pixels import DECODABLE_TRANSFER_SYNTAXES
from dicom_utils.validate import SopClassMismatch, check_instance
from gateway import logs
from gateway.dimse.fast import compat, netopts
from gateway.dimse.fast.pdata import StoreRequest
from gateway.dimse.status import (
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    SUCCESS,
)
from gateway.dimse.tls import server_context
from gateway.errors import OutOfSpaceError, SpoolError, StateError
from gateway.metrics import Metrics
from gateway.receive.admission import GuardedServer, Limits
from gateway.settings import Settings
from gateway.storage.spool import InstanceKey, Spool
from gateway.storage.state import StateStore

log = logs.get("gateway.scp")


@dataclass
class _AssocStats:
    calling_aet: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0
    allowed: bool = True


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, `DICM` and the File Meta Information of a received instance, encoded directly.

    Why not pynetdicom's `event.encoded_dataset()`: it builds a pydicom FileMetaDataset and encodes it,
    about 0.7 ms of CPU per instance, the largest piece of the handler after the fsyncs. The bytes are the
    same as pynetdicom's (same elements, its implementation UID and version; `tests/gateway/test_fast_meta.py`
    compares them), so spool files do not change.
    """
    return part10.file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax, PYNETDICOM_IMPLEMENTATION_UID,
                                  PYNETDICOM_IMPLEMENTATION_VERSION)


def spool_instance(
    state: StateStore, spool: Spool, *, study: str, series: str, sop: str, sop_class_uid: str, modality: str,
    meta: bytes, body: bytes | memoryview, calling_aet: str,
) -> int | None:
    """Store one validated instance durably, then record it; the bytes stored, or None for a duplicate.

    Why a function of its own: every way an instance comes in (C-STORE here, STOW-RS in `gateway.receive.stow`,
    a WADO-RS retrieval for `reprocess`) must take this one path, in this order: spool write (temp + fsync +
    rename), then the state row, and only then may the caller acknowledge. An instance that was purged and
    arrives again (a C-MOVE or WADO-RS retrieval) is stored and its row restored instead of being dropped
    as a duplicate. Raises OutOfSpaceError, SpoolError, sqlite3.Error or StateError (a PostgreSQL store that is
    down or unreachable); the caller maps them to a status.
    """
    purged = state.instance_purged(sop)
    if purged is False:
        return None
    key = InstanceKey(study, series, sop)
    size = spool.put(key, (meta, body))  # written in turn: no joined copy in memory
    if purged:
        state.mark_restored(sop)
    else:
        state.record_instance(
            sop_uid=sop, series_uid=series, study_uid=study, sop_class_uid=sop_class_uid, modality=modality,
            size=size, calling_aet=calling_aet,
        )
    return size


class Receiver:
    """Owns the AE and the event handlers; `start()` returns once the port is listening."""

    def __init__(self, settings: Settings, state: StateStore, spool: Spool, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.spool = spool
        self._assocs: dict[int, _AssocStats] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._draining = False
        self.server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> netopts.TunedAE:
        ae = netopts.TunedAE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.maximum_associations = self.settings.max_associations
        ae.admission = Limits(
            max_associations=self.settings.max_associations,
            max_associations_per_host=self.settings.max_associations_per_host,
            pre_association_timeout=self.settings.pre_association_timeout,
        )
        ae.screen = self._screen
        ae.server_class = GuardedServer
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        ae.acse_timeout = 30
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, DECODABLE_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.store_sink = self.store
        if self.settings.allowed_calling_aets:
            ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        return ae

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        tls = self.settings.tls
        self.server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=server_context(tls) if tls else None,
        )
        if not self.settings.allowed_calling_aets:
            log.warning("scp.open_to_any_aet", hint="set gateway.allowed_calling_aets to restrict peers")
        log.info(
            "scp.listening",
            ae_title=self.settings.ae_title,
            host=self.settings.host,
            port=self.port,
            tls="mutual" if tls and tls.require_client_cert else "on" if tls else "off",
            fast_path=compat.FAST_PATH,
            fast_path_reason=compat.REASON,
        )

    def slots(self) -> str:
        """The SCP's health: "ok" while it listens and an association slot is free, else what is wrong."""
        server = self.server
        if server is None:
            return "not listening"
        if isinstance(server, GuardedServer) and server.free_slots() == 0:
            return (f"no free association slot: all {self.settings.max_associations} in use"
                    " (gateway.max_associations); senders are refused until one ends")
        return "ok"

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting associations; let in-flight C-STOREs finish; then close what is still open.

        Why this order: a C-STORE in progress completes (stored, recorded, acknowledged); later requests on
        an open association get 0xA700 so the peer keeps them and retries; associations still open after
        `grace` seconds are aborted; the state store is only closed by the caller once no handler runs.
        """
        if self.server is None:
            return
        self.server.shutdown()
        self.server = None
        with self._lock:
            self._draining = True
        deadline = time.monotonic() + grace
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        open_assocs = self.ae.active_associations
        for assoc in open_assocs:
            # A reader blocked mid-PDU (a peer that went silent) only returns when its socket is shut down;
            # a blocking abort() would wait for it forever.
            raw = getattr(assoc.dul.socket, "socket", None)
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
            assoc.abort()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace + 30)
        log.info("scp.stopped", aborted_associations=len(open_assocs))

    # --- handlers (never raise) ------------------------------------------------------------------------

    def _stats(self, assoc: Any) -> _AssocStats | None:
        with self._lock:
            return self._assocs.get(id(assoc))

    def _screen(self, calling_aet: str, host: str) -> str | None:
        """`gateway.receive.admission.Screen`: an AE title bound to other hosts in `peer_hosts` is rejected before it
        takes a slot (A-ASSOCIATE-RJ), so no association, statistics entry or abort thread ever exists for it."""
        hosts = self.settings.peer_hosts.get(calling_aet.strip())
        if hosts is not None and host not in hosts:
            return "calling AE title is bound to other hosts in gateway.peer_hosts"
        return None

    def _on_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        stats = _AssocStats(calling_aet=str(requestor.ae_title), peer=f"{requestor.address}:{requestor.port}")
        with self._lock:
            self._assocs[id(event.assoc)] = stats
        # Second line of defence (the admission screen rejects these before they associate): refuse every store.
        stats.allowed = self._screen(stats.calling_aet, str(requestor.address)) is None
        log.info("association.accepted", calling_aet=stats.calling_aet, peer=stats.peer)

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            stats = self._assocs.pop(id(event.assoc), None)
        if stats is None:
            return
        log.info(
            "association.closed",
            how="released" if event.event is evt.EVT_RELEASED else "aborted",
            calling_aet=stats.calling_aet,
            peer=stats.peer,
            stored=stats.stored,
            duplicates=stats.duplicates,
            refused=stats.refused,
            bytes=stats.bytes,
            seconds=round(time.monotonic() - stats.started, 3),
        )

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom rejected a request that passed admission: say which of its checks refused it."""
        requestor = event.assoc.requestor
        aet = str(requestor.ae_title).strip()
        allowed = self.settings.allowed_calling_aets
        if allowed and aet not in allowed:
            reason = "calling AE title not in gateway.allowed_calling_aets"
        elif len(self.ae.active_associations) > self.ae.maximum_associations:
            reason = f"association limit reached (gateway.max_associations = {self.settings.max_associations})"
        else:
            reason = "association negotiation refused (no acceptable presentation context or user identity)"
        log.warning("association.rejected", calling_aet=aet, peer=f"{requestor.address}:{requestor.port}",
                    reason=reason)

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        """EVT_C_STORE, for associations that pynetdicom serves itself (see `store` for the fast path)."""
        request = event.request
        fields = StoreRequest(
            context_id=int(event.context.context_id),
            message_id=int(request.MessageID),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
        )
        return self.store(event.assoc, fields, str(event.context.transfer_syntax), request.DataSet.getvalue())

    def store(self, assoc: Any, request: StoreRequest, transfer_syntax: str, data: bytes) -> int:
        """Store one received data set and return its DIMSE status; never raises (`gateway.dimse.fast.pdata.StoreSink`)."""
        with self._lock:
            if self._draining:
                return OUT_OF_RESOURCES  # shutting down: not stored, the peer keeps the instance
            self._inflight += 1
        try:
            return self._store(assoc, request, UID(transfer_syntax), data)
        except Exception as exc:  # the handler must never raise: the server keeps serving
            log.exception("store.internal_error", error=type(exc).__name__)
            return OUT_OF_RESOURCES
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _store(self, assoc: Any, request: StoreRequest, tsyntax: UID, data: bytes) -> int:
        stats = self._stats(assoc)
        if stats is not None and not stats.allowed:
            return NOT_AUTHORIZED
        sop_class_uid = request.sop_class_uid
        try:
            study, series, sop, modality = check_instance(data, request.sop_instance_uid, sop_class_uid, tsyntax)
            InstanceKey(study, series, sop)  # a non-UID cannot be a spool key: 0xC210
        except Exception as exc:  # noqa: BLE001 - any undecodable dataset is refused with a status, never raised
            code = SOP_CLASS_MISMATCH if isinstance(exc, SopClassMismatch) else CANNOT_UNDERSTAND
            if stats:
                stats.refused += 1
            log.warning(
                "store.refused",
                status=f"0x{code:04X}",
                sop_instance_uid=request.sop_instance_uid,
                reason=str(exc)[:300],
            )
            if self.metrics:
                self.metrics.instances_refused.labels(f"0x{code:04X}").inc()
            return code
        with bound_contextvars(study_uid=study, series_uid=series):
            try:
                size = spool_instance(
                    self.state, self.spool, study=study, series=series, sop=sop, sop_class_uid=sop_class_uid,
                    modality=modality, meta=file_meta_bytes(sop_class_uid, sop, tsyntax), body=data,
                    calling_aet=stats.calling_aet if stats else "",
                )
            except (OutOfSpaceError, SpoolError, sqlite3.Error, StateError) as exc:
                if stats:
                    stats.refused += 1
                log.error("store.failed", status="0xA700", sop_instance_uid=sop, reason=str(exc)[:300])
                if self.metrics:
                    self.metrics.instances_refused.labels("0xA700").inc()
                return OUT_OF_RESOURCES
            if size is None:
                if stats:
                    stats.duplicates += 1
                log.info("store.duplicate", sop_instance_uid=sop)
                return SUCCESS
            if stats:
                stats.stored += 1
                stats.bytes += size
            if self.metrics:
                self.metrics.instances_received.inc()
                self.metrics.bytes_received.inc(size)
            return SUCCESS
