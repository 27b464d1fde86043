"""Event-driven, low-latency networking for pynetdicom associations (the SCP and the sender's SCU).

Why this exists: stock pynetdicom 3 runs two polling loops per association. The DUL thread checks its
socket with `select(timeout=0)` and sleeps 1 ms whenever nothing happened; the association thread sleeps
1 ms before every look at its message queue. A C-STORE crosses those loops four to six times (command
PDU, last data PDU, handler, response, the peer's next request), so on loopback about half of an
instance's time was spent sleeping, and the two idle loops kept waking a 2-core machine. Profiling the
gateway's receive path showed 1-1.5 ms of polling latency at each hand-off.

What changes (protocol, state machine, events and handlers are pynetdicom's own, untouched):
- `EventDrivenDUL`: when idle, blocks in `select()` on its socket and a wake-up socket pair; queueing a
  PDU to send (`send_pdu`), `kill_dul` and `stop_dul` wake it at once. It sets `user_ready` after every
  state-machine action so the association thread wakes only when there may be work.
- `EventDrivenAssociation._run_reactor`: waits on `user_ready` instead of sleeping 1 ms; the reactor
  counts as paused while it waits, so `send_c_store()`/`release()` no longer spin until the next tick.
- `TunedSocket`: TCP_NODELAY on every association socket (accepted and outgoing: without it the response
  to a C-STORE can sit behind the peer's delayed ACK, ~40 ms on Linux), reads whole PDUs with one
  MSG_WAITALL `recv` instead of 4 KiB chunks, and sends each PDU with one `sendall`.
- `TunedAE`: an AE whose servers and outgoing associations use all of the above.

Every wait has a `_MAX_WAIT` bound so timers (ARTIM, network idle) and kill flags are still checked the
way pynetdicom checks them. If the installed pynetdicom is not the series this was written against, or lacks
one of the internals listed in `gateway.dimse.fast.compat`, nothing is swapped and stock behaviour applies
(`compat.FAST_PATH` and `compat.REASON` say which and why).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
import time
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

from gateway.dimse.fast.compat import FAST_PATH
from gateway.dimse.fast.pdata import PDataRouter, StoreSink

try:
    import ssl

    _SSLSocket: type[ssl.SSLSocket] | None = ssl.SSLSocket
except ImportError:  # pragma: no cover - Python built without ssl
    _SSLSocket = None

_DUL_LOG = logging.getLogger("pynetdicom.dul")
_ASSOC_LOG = logging.getLogger("pynetdicom.association")

_MSG_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3)

# Longest a reactor blocks before re-checking timers and kill flags (pynetdicom's timers are seconds-scale).
_MAX_WAIT = 0.05
# Longest the DUL thread waits for the association thread to finish accepting (EVT_ACCEPTED handlers).
_MAX_ESTABLISH_WAIT = 10.0


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY on a TCP socket: a small PDU (a C-STORE response) goes out now, not after a delayed ACK."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # an already-closed socket: the association fails on its own terms


class _Wakeup:
    """A socket pair another thread writes one byte to, so a `select()` on it returns early."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # buffer full (a wake-up is already pending) or closed (the reactor is gone)

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, blocking on its socket and a wake-up instead of sleeping 1 ms."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wakeup = _Wakeup()
        # Set after every state-machine action: a DIMSE message or an ACSE primitive may be waiting.
        self.user_ready = threading.Event()
        # Set on accepted associations whose AE has a store sink (C-STORE requests) and on the sender's
        # associations (C-STORE responses): those messages bypass the state machine (gateway.dimse.fast.pdata).
        self.pdata_router: PDataRouter | None = None

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wakeup.set()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wakeup.set()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wakeup.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def _user_has_work(self) -> bool:
        """Whether the association reactor should wake: an ACSE primitive, or a DIMSE message it will serve.

        While a `send_c_*()` call has paused the reactor (checkpoint cleared), that call takes its response
        from the message queue itself; waking the reactor then only costs two thread switches per message.
        """
        if self.to_user_queue.qsize():
            return True
        return bool(self.assoc.dimse.msg_queue.qsize()) and self.assoc._reactor_checkpoint.is_set()

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, a wake-up arrives, or `_MAX_WAIT` passes."""
        waitables: list[Any] = [self._wakeup]
        sock = self.socket
        if isinstance(sock, TunedSocket) and sock.buffered:
            return  # the A-ASSOCIATE-RQ read during admission is waiting (gateway.receive.admission)
        raw = getattr(sock, "socket", None) if sock is not None else None
        if raw is not None and getattr(sock, "_is_connected", False):
            if _SSLSocket is not None and isinstance(raw, _SSLSocket) and raw.pending():
                return  # decrypted bytes already buffered: select() would not see them
            waitables.append(raw)
        try:
            select.select(waitables, [], [], _MAX_WAIT)
        except (OSError, ValueError):
            # The socket was closed under us: fall through, `_is_transport_event` reports it (Evt17).
            select.select([self._wakeup], [], [], 0.001)
        self._wakeup.drain()

    def _await_established(self) -> bool:
        """Wait (at most `_MAX_ESTABLISH_WAIT` s) for the association thread to finish accepting.

        Why: the peer may send its first C-STORE as soon as it has the A-ASSOCIATE-AC, while the association
        thread is still running the EVT_ACCEPTED handlers (the gateway's peer-host check among them); a
        store served here before they ran would skip that check.
        """
        deadline = time.monotonic() + _MAX_ESTABLISH_WAIT
        while not self.assoc.is_established:
            if self._kill_thread or time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def _read_pdu_data(self) -> None:
        """Read one PDU; on an established association, P-DATA-TF PDUs go through `pdata_router` first.

        The same events as pynetdicom's reader for everything else (Evt17 when the connection closes
        mid-PDU, Evt19 for an unknown PDU type or one that does not decode); only the PDVs the router leaves
        (messages other than C-STORE requests) reach pynetdicom, re-wrapped into a P-DATA-TF PDU.
        """
        router = self.pdata_router
        if router is None or self.state_machine.current_state != "Sta6":
            super()._read_pdu_data()
            return
        if not self.assoc.is_established and not self._await_established():
            self.pdata_router = None  # once a message went to pynetdicom, all later ones do too
            super()._read_pdu_data()
            return
        sock = self.socket
        assert sock is not None
        try:
            header = bytes(sock.recv(6))
            pdu_type, _, length = _PDU_HEADER.unpack(header)
            body: bytes = sock.recv(length)  # type: ignore[assignment]  # TunedSocket.recv returns bytes
        except (OSError, TimeoutError, struct.error):
            _DUL_LOG.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            _DUL_LOG.error(f"The received PDU is shorter than expected ({len(body)} of {length} bytes)")
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04:
            left = router.feed(body)
            if not left:
                return
            header, body = _PDU_HEADER.pack(0x04, 0, len(left)), left
        elif pdu_type not in range(0x01, 0x08):
            _DUL_LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header + body))
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: a PDU that does not decode is Evt19
            _DUL_LOG.error(f"Unable to decode the received PDU data: {exc}")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _abort_after_error(self, exc: Exception) -> None:
        """Same recovery as pynetdicom: an exception inside the reactor sends A-ABORT and stops both loops."""
        _DUL_LOG.error("Exception in DUL.run(), aborting association")
        _DUL_LOG.exception(exc)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def run_reactor(self) -> None:
        """One event per turn, as pynetdicom does, but an idle turn blocks instead of sleeping."""
        self._idle_timer.start()
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if idle:
                    self._wait_for_work()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # noqa: BLE001 - as pynetdicom: any reactor error aborts the association
                    self._abort_after_error(exc)
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
                if self._user_has_work():
                    self.user_ready.set()
        finally:
            self.user_ready.set()
            self._wakeup.close()


class EventDrivenAssociation(Association):
    """An Association whose reactor waits for its DUL's `user_ready` instead of sleeping 1 ms per turn."""

    def kill(self) -> None:
        ready = getattr(self.dul, "user_ready", None)
        if ready is not None:
            ready.set()
        super().kill()

    def _run_reactor(self) -> None:
        ready: threading.Event | None = getattr(self.dul, "user_ready", None)
        if ready is None:  # not upgraded: pynetdicom's polling loop
            super()._run_reactor()
            return
        self._is_paused = False
        busy = False
        while not self._kill:
            # Waiting counts as paused: send_c_store()/release() may take the queues while we wait.
            self._is_paused = True
            if not busy:
                ready.wait(_MAX_WAIT)
            ready.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # A send_c_*() cleared the checkpoint after we passed it and may have read the stale
                # `_is_paused = True`: its response is not ours to take (stock pynetdicom can steal it).
                busy = False
                continue

            context_id, msg = self.dimse.get_msg(block=False)
            busy = msg is not None
            if msg:
                self._serve_request(msg, int(context_id))  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                _ASSOC_LOG.info("Association Aborted")
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                _ASSOC_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class TunedSocket(AssociationSocket):
    """AssociationSocket with TCP_NODELAY, whole-PDU reads and single-call writes."""

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket | None = None,
        address: AddressInformation | None = None,
        prefix: bytes = b"",
    ) -> None:
        if client_socket is not None:
            tune_socket(client_socket)
            # A peer silent in the middle of a PDU must not hold this thread (and an association slot) forever.
            client_socket.settimeout(assoc.network_timeout)
        # Bytes already read from the connection (the A-ASSOCIATE-RQ, by gateway.receive.admission): served first.
        self._prefix = bytearray(prefix)
        super().__init__(assoc, client_socket=client_socket, address=address)

    @property
    def buffered(self) -> bool:
        """Whether bytes read during admission are still waiting to be read."""
        return bool(self._prefix)

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or bool(super().ready)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        tune_socket(sock)
        return sock

    def recv(self, nr_bytes: int) -> bytes:  # type: ignore[override]  # callers only extend a bytearray
        """Read exactly `nr_bytes` (fewer only if the peer closed).

        Why MSG_WAITALL: on a blocking socket (the SCP's accepted sockets) one system call returns a whole
        131 KB PDU; pynetdicom's loop of 4 KiB reads, or a `recv_into` a fresh buffer, cost the DUL thread
        30-50% more CPU per instance. On a socket with a timeout the call may return early; the loop
        collects the rest.
        """
        assert self.socket is not None
        if self._prefix:
            head = bytes(self._prefix[:nr_bytes])
            del self._prefix[:nr_bytes]
            if len(head) == nr_bytes:
                return head
            return head + self.recv(nr_bytes - len(head))
        # SSLSocket.recv() refuses flags; TLS records are decrypted whole anyway.
        flags = 0 if _SSLSocket is not None and isinstance(self.socket, _SSLSocket) else _MSG_WAITALL
        first = self.socket.recv(nr_bytes, flags)
        if len(first) == nr_bytes or not first:
            return first
        chunks = [first]
        got = len(first)
        while got < nr_bytes:
            chunk = self.socket.recv(nr_bytes - got, flags)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def send(self, bytestream: bytes) -> None:
        assert self.socket is not None
        try:
            self.socket.sendall(bytestream)
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
        except Exception:  # noqa: BLE001 - as pynetdicom: any send failure means the connection is gone
            self.event_queue.put("Evt17")  # Evt17: transport connection closed, as pynetdicom does


def upgrade(assoc: Association) -> bool:
    """Give a not-yet-started stock Association the event-driven DUL and reactor; False if left stock.

    Must run before the association's socket exists: the socket posts its first event on the DUL's queue.
    """
    if not FAST_PATH or type(assoc) is not Association or assoc.is_alive() or assoc.dul.socket is not None:
        return False
    assoc.__class__ = EventDrivenAssociation
    assoc.dul = EventDrivenDUL(assoc)
    # The timeouts live in the DUL's timers: re-apply them to the new DUL.
    assoc.acse_timeout = assoc.acse_timeout
    assoc.network_timeout = assoc.network_timeout
    return True


class TunedRequestHandler(RequestHandler):
    """Creates each acceptor association as pynetdicom does, then upgrades it and wraps a tuned socket."""

    def _create_association(self) -> Association:
        take_prefix = getattr(self.server, "take_prefix", None)
        prefix: bytes = take_prefix(self.request) if take_prefix is not None else b""
        assoc = super()._create_association()
        stock_socket = assoc.dul.socket
        assoc.dul.socket = None
        if not upgrade(assoc):
            if prefix:  # the A-ASSOCIATE-RQ was read during admission: only a TunedSocket can replay it
                assoc.dul.event_queue.queue.clear()  # the stock socket's Evt5; TunedSocket posts its own
                assoc.set_socket(TunedSocket(assoc, client_socket=self.request, prefix=prefix))
                return assoc
            assoc.dul.socket = stock_socket
            if isinstance(self.request, socket.socket):
                tune_socket(self.request)
            return assoc
        tuned = TunedSocket(assoc, client_socket=self.request, prefix=prefix)
        assoc.set_socket(tuned)
        sink: StoreSink | None = getattr(self.ae, "store_sink", None)
        if sink is not None:
            dul = cast(EventDrivenDUL, assoc.dul)
            dul.pdata_router = PDataRouter(assoc, contexts=lambda: assoc._accepted_cx, send=tuned.send, sink=sink)
        return assoc


class TunedAE(AE):
    """AE whose servers and outgoing associations use the event-driven reactors and tuned sockets.

    `store_sink`, when set before `start_server()`, receives the C-STORE requests of accepted associations
    through `gateway.dimse.fast.pdata` instead of pynetdicom's EVT_C_STORE (see that module for why and what differs).
    """

    store_sink: StoreSink | None = None
    #: The server class to build instead of pynetdicom's: the receiver sets `gateway.receive.admission.GuardedServer`
    #: (TLS handshake and A-ASSOCIATE-RQ read in each connection's own thread, with a deadline; slots for
    #: associations only). Set by the caller because this layer does not import the receive stage.
    server_class: Any = None
    #: `gateway.receive.admission.Limits`, read by `server_class`.
    admission: Any = None
    #: `gateway.receive.admission.Screen` applied to each complete A-ASSOCIATE-RQ before it takes a slot.
    screen: Any = None

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        # The admission server reads the A-ASSOCIATE-RQ ahead of pynetdicom: only TunedRequestHandler replays it
        if FAST_PATH or self.server_class is not None:
            kwargs.setdefault("request_handler", TunedRequestHandler)
        if self.server_class is not None:
            kwargs["server_class"] = self.server_class
        return super().make_server(*args, **kwargs)

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        if not upgrade(assoc):
            sock = super()._create_socket(assoc, address, tls_args)
            if sock.socket is not None:
                tune_socket(sock.socket)
            return sock
        tuned = TunedSocket(assoc, address=address)
        tuned.tls_args = tls_args
        return tuned


__all__ = ["TunedAE", "TunedRequestHandler", "TunedSocket", "tune_socket", "upgrade"]
