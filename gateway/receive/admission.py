"""Admission of DICOM connections: what a TCP connection must do before it gets an association slot.

Why this exists (issue 15, defects 1 and 2): pynetdicom's `AssociationServer` does the TLS handshake in its
single accept thread with no deadline, so one silent TCP connection to a TLS port blocked every other
sender; and it starts an association thread for every accepted connection and counts that thread against
`maximum_associations` before the A-ASSOCIATE-RQ is read, so 40 idle or half-open connections held every
slot for the ACSE timeout (30-60 s), renewed for ever by a slow attacker, and the AE allowlist could not help.

What happens instead, for each accepted connection:
1. At accept (in the accept thread, no I/O): a connection from a host that already has
   `max_associations_per_host` connections (not yet associated and associated together) is closed at once;
   so is any connection beyond `MAX_PENDING` not-yet-associated connections in all.
2. In the connection's own thread, within `pre_association_timeout` seconds in all: the TLS handshake (when
   TLS is on), then the whole A-ASSOCIATE-RQ PDU. A connection that is silent, slow, closed, or sends
   something else is dropped (closed sockets are noticed at once, as a read of zero bytes).
3. Only then is the request screened (`Screen`: peer host bindings) and counted against the association
   slots: the slots count associations that exist, not connections. A full gateway answers
   A-ASSOCIATE-RJ "local limit exceeded" itself, with the reason logged; the allowlist and the rest of the
   negotiation stay pynetdicom's.
4. The association is created as pynetdicom would, and reads the A-ASSOCIATE-RQ from the bytes already
   read (`netopts.TunedSocket` serves them first).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from gateway import logs
from gateway.dimse.fast.netopts import tune_socket

log = logs.get("gateway.admission")

#: Not-yet-associated connections held at once, all hosts together: bounds the threads an address-spoofing
#: flood can make the gateway hold (each for at most `pre_association_timeout`).
MAX_PENDING = 256
#: Longest A-ASSOCIATE-RQ accepted. 128 presentation contexts of 20 transfer syntaxes each stay below
#: 200 KB; a longer one is a peer trying to make the gateway buffer memory.
MAX_RQ_BYTES = 1 << 20
_HEADER = struct.Struct(">BBL")
#: A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): type 0x03, length 4, then reserved, result, source, reason.
_REJECT_TRANSIENT_LIMIT = (2, 3, 2)  # rejected-transient, service-provider (presentation), local-limit-exceeded
_REJECT_PERMANENT_CALLING = (1, 1, 3)  # rejected-permanent, service-user, calling-AE-title-not-recognized

#: Checks a complete A-ASSOCIATE-RQ before it takes a slot: (calling AE title, peer host) -> refusal reason
#: (an A-ASSOCIATE-RJ, calling AE not recognised) or None to go on.
Screen = Callable[[str, str], str | None]


@dataclass(frozen=True)
class Limits:
    """The admission knobs (`[gateway]` keys of the same names, see config/gateway.toml)."""

    max_associations: int = 32
    max_associations_per_host: int = 16
    pre_association_timeout: float = 5.0


class _Dropped(Exception):
    """A connection that did not deliver an A-ASSOCIATE-RQ in time; the message says what it did instead.

    `quiet`: it closed without sending a byte (a port probe such as /healthz's own check): logged at debug.
    """

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return _HEADER.pack(0x03, 0, 4) + bytes((0, result, source, reason))


def calling_aet(rq: bytes) -> str:
    """The Calling AE Title of an A-ASSOCIATE-RQ PDU (bytes 26-42 of the PDU, PS3.8 9.3.2)."""
    return rq[26:42].decode("ascii", "replace").strip(" \x00")


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Dropped(f"no A-ASSOCIATE-RQ within the deadline ({got} of {count} bytes of a PDU part arrived)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(count - got, 65536))
        except TimeoutError:
            raise _Dropped(f"no A-ASSOCIATE-RQ within the deadline ({got} of {count} bytes arrived)") from None
        if not chunk:
            raise _Dropped("connection closed before a whole A-ASSOCIATE-RQ arrived", quiet=got == 0 and count == 6)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_request(sock: socket.socket, deadline: float) -> bytes:
    """The whole first PDU, which must be an A-ASSOCIATE-RQ, read before `deadline` (monotonic seconds)."""
    header = _recv_exactly(sock, 6, deadline)
    pdu_type, _, length = _HEADER.unpack(header)
    if pdu_type != 0x01:
        raise _Dropped(f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
    if length > MAX_RQ_BYTES or length < 68:
        raise _Dropped(f"A-ASSOCIATE-RQ length {length} is out of range (68 to {MAX_RQ_BYTES})")
    return header + _recv_exactly(sock, length, deadline)


class _Throttle:
    """At most one log line per (event, host) every `seconds`; the lines left out are counted in the next one."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, event: str, host: str) -> int | None:
        """None to stay quiet, else the number of lines left out since the last one."""
        key = (event, host)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.seconds:
                self._skipped[key] += 1
                return None
            self._last[key] = now
            if len(self._last) > 4096:  # a spoofing flood must not grow this without bound
                self._last = {key: now}
            return self._skipped.pop(key, 0)


class GuardedServer(ThreadedAssociationServer):
    """An association server that admits connections as the module docstring says.

    Built by `netopts.TunedAE.make_server` when the receiver sets it as the AE's `server_class` (with `admission`
    limits); pynetdicom's own TLS wrapping in `get_request` is bypassed (the context is kept here and used in each
    connection's thread).
    """

    daemon_threads = True

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any, ssl_context: Any = None,
                 evt_handlers: Any = None, request_handler: Any = None) -> None:
        self.limits: Limits = ae.admission
        self.screen: Screen | None = getattr(ae, "screen", None)
        self.tls: ssl.SSLContext | None = ssl_context
        self._guard = threading.RLock()  # take_prefix runs inside _start_association's critical section
        self._pending: Counter[str] = Counter()
        self._pending_socks: set[socket.socket] = set()
        self._prefixes: dict[int, bytes] = {}
        self._throttle = _Throttle()
        self._closing = False
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers, request_handler)

    # --- counting -----------------------------------------------------------------------------------------

    def _associations(self, host: str | None = None) -> int:
        live = [a for a in self.active_associations if a.is_alive()]
        if host is None:
            return len(live)
        return sum(1 for a in live if str(a.requestor.address) == host)

    def pending(self) -> int:
        with self._guard:
            return sum(self._pending.values())

    def free_slots(self) -> int:
        """Association slots free now (negative never: 0 when full)."""
        return max(0, self.limits.max_associations - self._associations())

    def take_prefix(self, sock: Any) -> bytes:
        """The A-ASSOCIATE-RQ already read from `sock` (for `netopts.TunedRequestHandler`)."""
        with self._guard:
            return self._prefixes.pop(id(sock), b"")

    # --- accept thread ------------------------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept thread: count the connection or close it at once; never any I/O here."""
        host = str(client_address[0])
        with self._guard:
            per_host = self._pending[host] + self._associations(host)
            total_pending = sum(self._pending.values())
            refusal = None
            if per_host >= self.limits.max_associations_per_host:
                refusal = (f"host already has {per_host} connections"
                           f" (gateway.max_associations_per_host = {self.limits.max_associations_per_host})")
            elif total_pending >= MAX_PENDING:
                refusal = f"{total_pending} connections are already waiting for their A-ASSOCIATE-RQ"
            else:
                self._pending[host] += 1
                self._pending_socks.add(request)
        if refusal is not None:
            self._close(request)
            skipped = self._throttle("connection.refused", host)
            if skipped is not None:
                log.warning("connection.refused", peer=host, reason=refusal, similar_not_logged=skipped)
            return
        thread = threading.Thread(target=self._admit, args=(request, client_address),
                                  name=f"PreAssociation@{host}", daemon=True)
        thread.start()

    # --- the connection's own thread ----------------------------------------------------------------------

    def _admit(self, sock: socket.socket, client_address: Any) -> None:
        host = str(client_address[0])
        peer = f"{host}:{client_address[1]}"
        deadline = time.monotonic() + self.limits.pre_association_timeout
        raw = sock
        started = False
        try:
            tune_socket(sock)
            if self.tls is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    with self._guard:
                        self._pending_socks.discard(raw)
                        self._pending_socks.add(sock)
                    sock.do_handshake()
                except TimeoutError:
                    raise _Dropped("TLS handshake not finished within the deadline") from None
                except (ssl.SSLError, OSError) as exc:
                    probe = isinstance(exc, (ssl.SSLEOFError, ConnectionResetError))  # closed before a byte
                    raise _Dropped(f"TLS handshake failed: {type(exc).__name__}: {exc}"[:200], quiet=probe) from None
            rq = read_request(sock, deadline)
            started = self._start_association(sock, client_address, rq)
        except _Dropped as exc:
            skipped = None if exc.quiet else self._throttle("connection.dropped", host)
            if exc.quiet:
                log.debug("connection.dropped", peer=peer, reason=str(exc))
            if skipped is not None:
                log.info("connection.dropped", peer=peer, reason=str(exc), similar_not_logged=skipped,
                         hint="a peer must finish TLS and send its A-ASSOCIATE-RQ within"
                              f" gateway.pre_association_timeout = {self.limits.pre_association_timeout:g} s")
        except OSError as exc:  # reset by the peer, or closed by `server_close` at shutdown
            if not self._closing:
                log.info("connection.dropped", peer=peer, reason=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            with self._guard:
                self._pending[host] -= 1
                if self._pending[host] <= 0:
                    del self._pending[host]
                self._pending_socks.discard(sock)
                self._pending_socks.discard(raw)
            if not started:
                self._close(sock)

    def _start_association(self, sock: socket.socket, client_address: Any, rq: bytes) -> bool:
        """Screen the request, take a slot and start the association; False when it was rejected."""
        host = str(client_address[0])
        aet = calling_aet(rq)
        refusal = self.screen(aet, host) if self.screen is not None else None
        code = _REJECT_PERMANENT_CALLING
        with self._guard:
            if refusal is None:
                code = _REJECT_TRANSIENT_LIMIT
                total, per_host = self._associations(), self._associations(host)
                if self._closing:
                    refusal = "the gateway is shutting down"
                elif total >= self.limits.max_associations:
                    refusal = (f"all {total} association slots are in use"
                               f" (gateway.max_associations = {self.limits.max_associations})")
                elif per_host >= self.limits.max_associations_per_host:
                    refusal = (f"host already has {per_host} associations"
                               f" (gateway.max_associations_per_host = {self.limits.max_associations_per_host})")
            if refusal is None:
                self._prefixes[id(sock)] = rq
                try:
                    sock.settimeout(None)
                    self.finish_request(sock, client_address)  # creates the association and starts its thread
                except Exception:
                    self._prefixes.pop(id(sock), None)
                    log.exception("association.start_failed", peer=host)
                    return False
                return True
        with_rj = f"{refusal}; answered A-ASSOCIATE-RJ"
        skipped = self._throttle("association.rejected", host)
        if skipped is not None:
            log.warning("association.rejected", calling_aet=aet, peer=f"{host}:{client_address[1]}",
                        reason=with_rj, similar_not_logged=skipped)
        try:
            sock.settimeout(1.0)
            sock.sendall(reject_pdu(*code))
        except OSError:
            pass
        return False

    # --- shutdown -----------------------------------------------------------------------------------------

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def server_close(self) -> None:
        """Close the listening socket and every connection that never associated (they hold nothing)."""
        with self._guard:
            self._closing = True
            socks = list(self._pending_socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()


__all__ = ["MAX_PENDING", "GuardedServer", "Limits", "Screen", "calling_aet", "read_request", "reject_pdu"]
