"""The sender's C-STORE fast path: the PDUs pynetdicom would send, byte-identical delivery to dcmtk storescp,
and refusals and silence reported as delivery errors.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from dicom_utils.part10 import scan_file_meta
from gateway.dimse.fast.pdata import StoreRequest, store_request_pdus
from gateway.dimse.fast.store_scu import FastStoreSCU
from gateway.dimse.scu import Peer, send_files
from gateway.errors import DeliveryError
from tests.gateway.fast_scp import fast_scp
from tests.peers import StoreSCP, recompress
from tests.realdata import make_series

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("max_pdu", [16384, 131072, 0])
def test_request_pdus_match_pynetdicom(max_pdu: int) -> None:
    data = bytes(range(256)) * 700  # 179,200 bytes: several fragments at 16 KiB, one at the others
    req = C_STORE()
    req.MessageID = 9
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = "1.2.3.45"
    req.Priority = 2
    req.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    pdus = []
    for primitive in message.encode_msg(5, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    ours = store_request_pdus(StoreRequest(5, 9, CT, "1.2.3.45"), data, max_pdu)
    assert ours == b"".join(pdus)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many C-STOREs went through the fast path (a spy on the real method; nothing replaced)."""
    calls: list[int] = []
    real = FastStoreSCU.send

    def spy(self: FastStoreSCU, *args: Any, **kwargs: Any) -> int | None:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FastStoreSCU, "send", spy)
    return calls


def _data_set(path: Path) -> bytes:
    raw = path.read_bytes()
    meta = scan_file_meta(raw)
    assert meta is not None
    return raw[meta.data_offset :]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_files_reach_storescp_byte_identical(tmp_path: Path, counted: list[int], syntax: str) -> None:
    files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed=f"scu-{syntax}")
    if syntax == RLELossless:
        files = recompress(files, tmp_path / "rle", RLELossless)
    elif syntax == ImplicitVRLittleEndian:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(f, enforce_file_format=True)
    with StoreSCP(tmp_path / "out") as scp:
        result = send_files(Peer("STORESCP", "127.0.0.1", scp.port), files)
        received = scp.wait_for(3)
    assert result.sent == 3 and len(counted) == 3
    by_sop = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in received}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert pydicom.dcmread(by_sop[ds.SOPInstanceUID]).file_meta.TransferSyntaxUID == syntax
        assert _data_set(by_sop[ds.SOPInstanceUID]) == _data_set(f)


class _Answering:
    """A gateway-style SCP (TunedAE + store sink) that refuses one SOP Instance and stalls on another."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, assoc: Any, request: Any, syntax: str, data: bytes) -> int:
        if request.sop_instance_uid.endswith(".2"):
            self.release.wait(10)
        return 0xA900 if request.sop_instance_uid.endswith(".1") else 0x0000


@pytest.fixture
def answering() -> Iterator[tuple[int, _Answering]]:
    sink = _Answering()
    with fast_scp(sink, ae_title="PACS") as port:
        yield port, sink
        sink.release.set()


def _renamed(tmp_path: Path, suffix: str) -> Path:
    (src,) = make_series("693_UNCR.dcm", 1, tmp_path / suffix, seed=suffix)
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{ds.SOPInstanceUID}.{suffix}")
    ds.save_as(src, enforce_file_format=True)
    return src


def test_a_refusal_is_a_delivery_error_with_its_status(tmp_path: Path, answering: tuple[int, _Answering]) -> None:
    port, _ = answering
    with pytest.raises(DeliveryError, match="0xA900"):
        send_files(Peer("PACS", "127.0.0.1", port), [_renamed(tmp_path, "0"), _renamed(tmp_path, "1")])


def test_no_response_within_the_timeout_aborts(tmp_path: Path, answering: tuple[int, _Answering]) -> None:
    port, _ = answering
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="C-STORE to PACS timed out: no response within 1 s"):
        send_files(Peer("PACS", "127.0.0.1", port), [_renamed(tmp_path, "2")], timeout=1.0)
    assert time.monotonic() - started < 8


def test_pdu_fragments_respect_the_peer_limit() -> None:
    pdus = store_request_pdus(StoreRequest(1, 1, CT, "1.2.3"), b"\x00" * 40000, 16384)
    pos, sizes = 0, []
    while pos < len(pdus):
        (length,) = struct.unpack_from(">I", pdus, pos + 2)
        sizes.append(length)
        pos += 6 + length
    assert max(sizes) <= 16384 and len(sizes) == 1 + 3
