"""The C-STORE fast path: PDV routing, the hand-written response, and a real association through it.

The response must be what pynetdicom would have sent; the router must hand every message that is not a
C-STORE request to pynetdicom untouched, reassemble fragmented data sets exactly, and refuse framing that
breaks PS3.8; over a real association (pynetdicom's SCU, small PDUs so data sets span many of them) stores
and echoes interleave and every byte arrives.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.dimse.fast.pdata import PDataError, PDataRouter, StoreRequest, parse_command, store_response_pdu
from tests import realdata
from tests.gateway.fast_scp import fast_scp

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_response_pdu_matches_pynetdicom_encoding() -> None:
    request = StoreRequest(context_id=3, message_id=17, sop_class_uid=CT, sop_instance_uid="1.2.3.45")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 17
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.45"
    rsp.Status = 0xA900
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    message.context_id = 3
    pdus = []
    for primitive in message.encode_msg(3, 0):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    reference = b"".join(pdus)
    assert store_response_pdu(request, 0xA900) == reference


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _command(field: int, message_id: int, *, data_set: bool, sop: str = "1.2.3.4") -> bytes:
    def el(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, element, len(value)) + value

    body = (
        el(0x0002, CT.encode() + b"\x00" * (len(CT) % 2))
        + el(0x0100, struct.pack("<H", field))
        + el(0x0110, struct.pack("<H", message_id))
        + el(0x0800, struct.pack("<H", 0x0000 if data_set else 0x0101))
        + el(0x1000, sop.encode() + b"\x00" * (len(sop) % 2))
    )
    return el(0x0000, struct.pack("<I", len(body))) + body


class _Context:
    def __init__(self) -> None:
        self.transfer_syntax = [ExplicitVRLittleEndian]


class _Router:
    """A router with a recording sink and socket."""

    def __init__(self) -> None:
        self.stored: list[tuple[StoreRequest, str, bytes]] = []
        self.sent: list[bytes] = []
        self.router = PDataRouter("assoc", contexts=lambda: {1: _Context()}, send=self.sent.append, sink=self._sink)

    def _sink(self, assoc: Any, request: StoreRequest, syntax: str, data: bytes) -> int:
        self.stored.append((request, syntax, data))
        return 0x0000


def test_a_store_in_fragments_across_pdus_is_reassembled_and_answered() -> None:
    r = _Router()
    command = _command(0x0001, 7, data_set=True)
    data = bytes(range(256)) * 40
    assert r.router.feed(_pdv(1, 0x01, command[:10]) + _pdv(1, 0x03, command[10:])) == b""
    assert r.router.feed(_pdv(1, 0x00, data[:1000]) + _pdv(1, 0x00, data[1000:5000])) == b""
    assert not r.stored
    assert r.router.feed(_pdv(1, 0x02, data[5000:])) == b""
    assert [(s[0].message_id, s[0].sop_instance_uid, s[1], s[2]) for s in r.stored] == [
        (7, "1.2.3.4", ExplicitVRLittleEndian, data)
    ]
    assert r.sent == [store_response_pdu(r.stored[0][0], 0x0000)]


def test_other_messages_go_to_pynetdicom_untouched_even_when_packed_with_a_store() -> None:
    r = _Router()
    echo = _pdv(1, 0x03, _command(0x0030, 1, data_set=False))
    find = _pdv(1, 0x03, _command(0x0020, 2, data_set=True)) + _pdv(1, 0x02, b"identifier")
    store = _pdv(1, 0x03, _command(0x0001, 3, data_set=True)) + _pdv(1, 0x02, b"\x00\x01")
    assert r.router.feed(echo) == echo
    assert r.router.feed(find + store + echo) == find + echo
    assert len(r.stored) == 1 and r.stored[0][0].message_id == 3


def test_a_store_on_an_unknown_context_goes_to_pynetdicom() -> None:
    r = _Router()
    pdus = _pdv(5, 0x03, _command(0x0001, 1, data_set=True)) + _pdv(5, 0x02, b"\x00\x01")
    assert r.router.feed(pdus) == pdus
    assert not r.stored


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(_pdv(1, 0x02, b"data first"), id="data before command"),
        pytest.param(_pdv(1, 0x03, _command(1, 1, data_set=True)) + _pdv(1, 0x01, b"\x00\x00"), id="command in data"),
        pytest.param(_pdv(1, 0x03, _command(1, 1, data_set=True)) + _pdv(3, 0x02, b"\x00\x00"), id="context change"),
        pytest.param(struct.pack(">IBB", 400, 1, 0x03) + b"short", id="item longer than its PDU"),
        pytest.param(b"\x00\x00", id="PDU ends inside an item header"),
    ],
)
def test_framing_errors_raise(stream: bytes) -> None:
    with pytest.raises(PDataError):
        _Router().router.feed(stream)


def test_parse_command_rejects_an_overrunning_element() -> None:
    with pytest.raises(PDataError):
        parse_command(struct.pack("<HHI", 0, 0x0100, 10) + b"\x01\x00")


# --- over a real association ---------------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, assoc: Any, request: StoreRequest, syntax: str, data: bytes) -> int:
        with self.lock:
            self.received.append((request.sop_instance_uid, syntax, data))
        return 0xA900 if request.sop_instance_uid.endswith(".99") else 0x0000


@pytest.fixture
def server() -> Iterator[tuple[int, _Sink]]:
    sink = _Sink()
    # 16 KiB PDUs: the SCU must split each 512x512 data set into ~33 of them
    with fast_scp(sink, ae_title="FAST", syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                  max_pdu=16384) as port:
        yield port, sink


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_stores_and_echoes_interleave_on_one_association(server: tuple[int, _Sink], syntax: str) -> None:
    port, sink = server
    ds = pydicom.dcmread(realdata.testfile("693_UNCR.dcm"))
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage, [syntax])
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="FAST")
    assert assoc.is_established
    statuses = []
    sops = [ds.SOPInstanceUID + ".1", ds.SOPInstanceUID + ".99", ds.SOPInstanceUID + ".3"]
    try:
        for sop in sops:
            assert assoc.send_c_echo().Status == 0x0000
            ds.SOPInstanceUID = sop
            statuses.append(int(assoc.send_c_store(ds).Status))
    finally:
        assoc.release()
    assert statuses == [0x0000, 0xA900, 0x0000]
    assert [r[0] for r in sink.received] == sops
    ds.SOPInstanceUID = sops[-1]
    implicit = syntax == ImplicitVRLittleEndian
    assert sink.received[-1][1] == syntax
    assert sink.received[-1][2] == encode(ds, implicit, True)
