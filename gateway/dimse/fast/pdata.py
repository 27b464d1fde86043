"""C-STORE requests assembled and answered in the association's DUL thread, beside pynetdicom's state machine
(and, on the sender's associations, C-STORE responses handed back from it: see `gateway.dimse.fast.store_scu`).

Why: profiling the receive path (bench/README.md) put 3.4 of the 5.4 ms of CPU per received 512x512 CT
instance in pynetdicom's per-PDU path: each P-DATA-TF PDU is decoded into objects, passes the state machine
and two queues, the DIMSE layer copies its fragments into a BytesIO, the association thread wakes (a GIL
hand-off), decodes the command set with pydicom, and the response goes back through the same layers. With one
association that time adds to every instance's latency, and storescu waits for each response before it sends
the next instance. Here the PDVs of a C-STORE request are sliced out of the PDU bytes, the command set is
read with `struct`, the data set is handed to the store handler as one bytes object, and the C-STORE response
(a fixed command set) is written to the socket from the same thread.

What is taken over, and what is not: only complete C-STORE requests with a data set, on an established
association (state Sta6), on an accepted presentation context. Every other PDU type, every other message
(C-ECHO, a C-STORE without a data set, a command set that does not parse) and every state other than Sta6 go
to pynetdicom unchanged: their PDVs are re-wrapped into a P-DATA-TF PDU and decoded by pynetdicom. A message
is routed as a whole, decided when its command set is complete. Protocol violations inside a taken-over
message (a command fragment in the middle of its data set, a change of presentation context) raise
`PDataError`, which aborts the association as pynetdicom's reactor does for any error.

What is lost against the stock path: the C-STORE does not fire pynetdicom's EVT_C_STORE, EVT_DIMSE_RECV,
EVT_PDU_RECV or EVT_DATA_RECV for these messages (the gateway binds none of them for stores), and the data
set is held in memory until it is complete, as pynetdicom's default (non-chunked) mode also does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicom_utils.part10 import ui

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101

_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, message control header
_ELEMENT_HEADER = struct.Struct("<HHI")  # group, element, value length (Implicit VR Little Endian)
_US = struct.Struct("<H")


class PDataError(ValueError):
    """A P-DATA-TF PDU that breaks PS3.8 framing rules: the association is aborted."""


@dataclass(frozen=True)
class StoreRequest:
    """The fields of a C-STORE request's command set that the store handler and the response need."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


# (association, request, transfer syntax UID of the context, encoded data set) -> DIMSE status; never raises
StoreSink = Callable[[Any, StoreRequest, str, bytes], int]
# (Message ID Being Responded To, status) of a C-STORE response; True if it was awaited (taken over here)
ResponseSink = Callable[[int, int], bool]


def parse_command(raw: bytes) -> dict[int, bytes]:
    """A command set (group 0000, always Implicit VR Little Endian, PS3.7 6.3.1) as {element: value bytes}."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < _ELEMENT_HEADER.size:
            raise PDataError("command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(raw, pos)
        pos += _ELEMENT_HEADER.size
        if group != 0 or length > end - pos:
            raise PDataError(f"command set element ({group:04X},{element:04X}) is not group 0000 or overruns it")
        out[element] = raw[pos : pos + length]
        pos += length
    return out


def _us(value: bytes | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        return None


def store_request(context_id: int, command: dict[int, bytes]) -> StoreRequest | None:
    """The C-STORE request in `command`, or None when it is another message or lacks a field (pynetdicom's job)."""
    if _us(command.get(0x0100)) != C_STORE_RQ or _us(command.get(0x0800)) in (None, NO_DATA_SET):
        return None
    message_id = _us(command.get(0x0110))
    sop_class = _uid(command.get(0x0002))
    sop_instance = _uid(command.get(0x1000))
    if message_id is None or not sop_class or not sop_instance:
        return None
    return StoreRequest(context_id, message_id, sop_class, sop_instance)


def store_response(command: dict[int, bytes]) -> tuple[int, int] | None:
    """(Message ID Being Responded To, Status) of a C-STORE response without a data set, else None."""
    if _us(command.get(0x0100)) != C_STORE_RSP or _us(command.get(0x0800)) != NO_DATA_SET:
        return None
    message_id, status = _us(command.get(0x0120)), _us(command.get(0x0900))
    return None if message_id is None or status is None else (message_id, status)


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0, element, len(value)) + value


def _command_pdu(context_id: int, body: bytes) -> bytes:
    """One P-DATA-TF PDU holding a whole command set (group length first) in one last fragment."""
    command = _element(0x0000, struct.pack("<I", len(body))) + body
    pdv = _PDV_HEADER.pack(len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


def store_request_pdus(request: StoreRequest, data: bytes | memoryview, max_pdu: int, priority: int = 2) -> bytes:
    """A C-STORE request as P-DATA-TF PDUs: the command set (PS3.7 table 9.3-1, as pynetdicom encodes it), then
    the data set in fragments that fit the peer's maximum PDU length (0: no limit), one PDV per PDU."""
    body = b"".join(
        (
            _element(0x0002, ui(request.sop_class_uid)),
            _element(0x0100, _US.pack(C_STORE_RQ)),
            _element(0x0110, _US.pack(request.message_id)),
            _element(0x0700, _US.pack(priority)),
            _element(0x0800, _US.pack(0x0001)),
            _element(0x1000, ui(request.sop_instance_uid)),
        )
    )
    parts = [_command_pdu(request.context_id, body)]
    view = memoryview(data)
    step = max(max_pdu - 6, 1) if max_pdu else max(len(view), 1)
    for start in range(0, max(len(view), 1), step):
        fragment = view[start : start + step]
        control = 0x02 if start + step >= len(view) else 0x00
        parts.append(struct.pack(">BBIIBB", 0x04, 0x00, len(fragment) + 6, len(fragment) + 2, request.context_id, control))
        parts.append(bytes(fragment))
    return b"".join(parts)


def store_response_pdu(request: StoreRequest, status: int) -> bytes:
    """A P-DATA-TF PDU holding the C-STORE response command set (PS3.7 table 9.3-2) in one last fragment."""
    body = b"".join(
        (
            _element(0x0002, ui(request.sop_class_uid)),
            _element(0x0100, _US.pack(C_STORE_RSP)),
            _element(0x0120, _US.pack(request.message_id)),
            _element(0x0800, _US.pack(NO_DATA_SET)),
            _element(0x0900, _US.pack(status)),
            _element(0x1000, ui(request.sop_instance_uid)),
        )
    )
    return _command_pdu(request.context_id, body)


@dataclass
class _Message:
    """The message being received: its command fragments until classified, then its route."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    raw_pdvs: list[bytes] = field(default_factory=list)  # kept until classified, for a hand-over to pynetdicom
    request: StoreRequest | None = None  # set: taken over; its data set fragments follow
    stock: bool = False  # routed to pynetdicom until its last fragment
    stock_ends_with_command: bool = False
    fragments: list[memoryview] = field(default_factory=list)


class PDataRouter:
    """Per association: splits each P-DATA-TF PDU's PDVs between the fast C-STORE path and pynetdicom.

    As acceptor, `sink` stores each C-STORE request's data set and returns its status, and the response goes
    out through `send` (bytes to the association's socket). As requestor, `on_response` takes the C-STORE
    responses it awaits (see `gateway.dimse.fast.store_scu`). `contexts()` returns the accepted presentation contexts
    ({id: pynetdicom PresentationContext, whose `.transfer_syntax` list holds the one accepted}).
    """

    def __init__(
        self,
        assoc: Any,
        contexts: Callable[[], dict[int, Any]],
        send: Callable[[bytes], None],
        *,
        sink: StoreSink | None = None,
        on_response: ResponseSink | None = None,
    ) -> None:
        self._assoc = assoc
        self._sink = sink
        self._on_response = on_response
        self._contexts = contexts
        self._send = send
        self._message: _Message | None = None

    def feed(self, body: bytes) -> bytes:
        """Route one P-DATA-TF PDU body (after its 6-byte header); return the PDV items left for pynetdicom."""
        view = memoryview(body)
        stock: list[bytes] = []
        pos, end = 0, len(body)
        while pos < end:
            if end - pos < _PDV_HEADER.size:
                raise PDataError("P-DATA-TF PDU ends inside a presentation data value item header")
            length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
            if length < 2 or length > end - pos - 4:
                raise PDataError(f"presentation data value item length {length} does not fit its PDU")
            item = view[pos : pos + 4 + length]
            self._route(context_id, control, item, stock)
            pos += 4 + length
        return b"".join(stock)

    def _route(self, context_id: int, control: int, item: memoryview, stock: list[bytes]) -> None:
        is_command, is_last = bool(control & 0x01), bool(control & 0x02)
        msg = self._message
        if msg is None:
            msg = self._message = _Message(context_id)
        if msg.stock:
            stock.append(item.tobytes())
            if is_last and is_command == msg.stock_ends_with_command:
                self._message = None
            return
        if context_id != msg.context_id:
            raise PDataError(f"presentation context changed from {msg.context_id} to {context_id} inside a message")
        if msg.request is None:
            if not is_command:
                raise PDataError("data set fragment before the command set was complete")
            msg.command += item[6:]
            msg.raw_pdvs.append(item.tobytes())
            if is_last:
                self._classify(msg, stock)
            return
        if is_command:
            raise PDataError("command fragment inside a C-STORE request's data set")
        msg.fragments.append(item[6:])
        if is_last:
            self._message = None
            self._store(msg.request, b"".join(msg.fragments))

    def _classify(self, msg: _Message, stock: list[bytes]) -> None:
        """Take the message over if it is a C-STORE request on an accepted context (acceptor) or an awaited
        C-STORE response (requestor); else hand it to pynetdicom."""
        try:
            command = parse_command(bytes(msg.command))
        except PDataError:
            command = {}  # pynetdicom's decoder reports it in its own way
        if msg.context_id in self._contexts():
            if self._on_response is not None:
                response = store_response(command)
                if response is not None and self._on_response(*response):
                    self._message = None
                    return
            request = store_request(msg.context_id, command) if self._sink is not None else None
            if request is not None:
                msg.request = request
                msg.raw_pdvs.clear()
                return
        stock.extend(msg.raw_pdvs)
        msg.raw_pdvs.clear()
        msg.stock = True
        msg.stock_ends_with_command = _us(command.get(0x0800)) == NO_DATA_SET
        if msg.stock_ends_with_command:
            self._message = None

    def _store(self, request: StoreRequest, data: bytes) -> None:
        context = self._contexts()[request.context_id]
        assert self._sink is not None  # only an acceptor's router takes requests over
        status = self._sink(self._assoc, request, str(context.transfer_syntax[0]), data)
        self._send(store_response_pdu(request, status))

