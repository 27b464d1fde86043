"""The structural scan vouches for well-formed Explicit VR Little Endian data sets and for nothing else.

Real files from pydicom's test set carry the structures that matter (nested sequences of defined and
undefined length, encapsulated Pixel Data); each malformation below is one the receive path must not wave
through, and the scan must answer None (let the full check decide) for it.
"""

from __future__ import annotations

import struct

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from dicom_utils import header_scan
from tests import realdata

STUDY, SOP, PIXEL = 0x0020000D, 0x00080018, 0x7FE00010


def _body(name: str, *, undefined_sequences: bool = False) -> tuple[pydicom.Dataset, bytes]:
    ds = pydicom.dcmread(realdata.testfile(name))
    if undefined_sequences:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    body = encode(ds, False, True)
    assert body is not None
    return ds, body


def _element_at(body: bytes, group: int, element: int) -> int:
    """Offset of a top-level element in an Explicit VR Little Endian body (no sequences before it)."""
    pos = 0
    while True:
        g, e, vr = struct.unpack_from("<HH2s", body, pos)
        if (g, e) == (group, element):
            return pos
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV"):
            pos += 12 + struct.unpack_from("<I", body, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", body, pos + 6)[0]


def test_reads_the_wanted_values_and_the_pixel_length_of_a_real_ct() -> None:
    ds, body = _body("693_UNCR.dcm")
    scanned = header_scan.scan(body, frozenset({STUDY, SOP}))
    assert scanned is not None
    values, pixel = scanned
    assert values[STUDY].rstrip(b"\x00") == ds.StudyInstanceUID.encode()
    assert values[SOP].rstrip(b"\x00") == ds.SOPInstanceUID.encode()
    assert pixel == len(ds.PixelData)


@pytest.mark.parametrize("undefined", [False, True])
def test_walks_nested_sequences_of_both_length_forms(undefined: bool) -> None:
    ds, body = _body("rtplan.dcm", undefined_sequences=undefined)
    assert any(e.VR == "SQ" for e in ds)  # the file really has sequences
    scanned = header_scan.scan(body, frozenset({SOP}))
    assert scanned is not None and scanned[0][SOP].rstrip(b"\x00") == ds.SOPInstanceUID.encode()


def test_encapsulated_pixel_data_is_undefined_length() -> None:
    ds = pydicom.dcmread(realdata.testfile("MR_small_RLE.dcm"))
    body = encode(ds, False, True)
    assert body is not None
    scanned = header_scan.scan(body, frozenset())
    assert scanned is not None and scanned[1] == header_scan.UNDEFINED


def test_no_pixel_data_is_none() -> None:
    _, body = _body("rtplan.dcm")
    scanned = header_scan.scan(body, frozenset())
    assert scanned is not None and scanned[1] is None


def _rows_of_three_bytes(body: bytes) -> bytes:
    """Rows (US) holding 3 bytes with its length saying so: the structure stays intact, the value cannot
    convert (pydicom's iterall raises), so the scan must not vouch for it."""
    pos = _element_at(body, 0x0028, 0x0010)
    return _rows_length(body[: pos + 10] + b"\x00" + body[pos + 10 :], 3)


def _charset_with_a_null(body: bytes) -> bytes:
    """Specific Character Set's first byte zeroed: pydicom's text decoding raises on it (the fuzz drill's find)."""
    pos = _element_at(body, 0x0008, 0x0005)
    return body[: pos + 8] + b"\x00" + body[pos + 9 :]


def _rows_length(body: bytes, length: int) -> bytes:
    pos = _element_at(body, 0x0028, 0x0010)
    out = bytearray(body)
    struct.pack_into("<H", out, pos + 6, length)
    return bytes(out)


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda b: b[:-1], id="truncated last byte"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated in pixel data"),
        pytest.param(lambda b: b[:1001], id="truncated in an element header"),
        pytest.param(lambda b: _rows_length(b, 3), id="US length 3, misaligned from there on"),
        pytest.param(_rows_of_three_bytes, id="US value of 3 bytes, structure intact"),
        pytest.param(lambda b: _rows_length(b, 0xFFF0), id="length beyond the data"),
        pytest.param(lambda b: b + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", id="stray item delimiter"),
        pytest.param(_charset_with_a_null, id="null byte in Specific Character Set"),
        pytest.param(lambda b: b[:4] + b"XX" + b[6:], id="unknown VR"),
        pytest.param(lambda b: b[:4] + b"UN" + b[6:], id="UN element"),
    ],
)
def test_malformed_bodies_are_not_vouched_for(break_it: object) -> None:
    _, body = _body("693_UNCR.dcm")
    assert header_scan.scan(body, frozenset()) is not None
    assert callable(break_it)
    assert header_scan.scan(break_it(body), frozenset()) is None


def test_implicit_vr_streams_are_not_vouched_for() -> None:
    ds = pydicom.dcmread(realdata.testfile("693_UNCR.dcm"))
    body = encode(ds, True, True)
    assert body is not None
    assert header_scan.scan(body, frozenset()) is None
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the explicit encoding above is the file's own
