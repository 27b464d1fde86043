"""The hand-written File Meta paths agree with pydicom/pynetdicom byte for byte and value for value.

Why: the SCP encodes a received file's preamble and group 0002 itself (0.7 ms of CPU per instance saved)
and the sender scans each file's SOP class and transfer syntax itself (0.4 ms saved); any drift from
pydicom's reading or pynetdicom's encoding would change the spool files or the proposed contexts. Odd and
even UID lengths exercise the padding; every pydicom test file exercises the scan.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from gateway.dicomnet import _file_contexts, _scan_meta
from gateway.scp import file_meta_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.3.45", "2.25.123456789012345678901234567890123456"])
def test_file_meta_bytes_match_pynetdicom(syntax: str, sop: str) -> None:
    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax=syntax)
    reference = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert file_meta_bytes(CT, sop, syntax) == reference


def test_file_meta_bytes_read_back_by_pydicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(file_meta_bytes(CT, "1.2.3", ImplicitVRLittleEndian)))
    assert ds.file_meta.MediaStorageSOPClassUID == CT
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def _pydicom_pair(path: Path) -> tuple[str, str] | None:
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - files pydicom cannot read are not the scan's concern
        return None
    return str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("TransferSyntaxUID", ""))


def test_scan_meta_agrees_with_pydicom_on_its_test_files() -> None:
    scanned = 0
    for name in get_testdata_files("*.dcm"):
        path = Path(name)
        reference = _pydicom_pair(path)
        pair = _scan_meta(path.read_bytes()[:4096])
        if pair is not None:
            scanned += 1
            assert pair == reference, path.name
            assert _file_contexts([path]) == [pair]
    assert scanned > 50


def test_scan_meta_refuses_what_it_does_not_understand() -> None:
    good = file_meta_bytes(CT, "1.2.3", ExplicitVRLittleEndian)
    assert _scan_meta(good) == (CT, ExplicitVRLittleEndian)
    assert _scan_meta(good[:150]) is None  # truncated inside group 0002
    assert _scan_meta(b"\x00" * 128 + b"DICX" + good[132:]) is None  # no DICM prefix
