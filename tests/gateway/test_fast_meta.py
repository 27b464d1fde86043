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
from pydicom.filereader import _read_file_meta_info as read_file_meta
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_utils.part10 import FileMeta, scan_file_meta
from gateway.dimse.scu import _file_contexts
from gateway.receive.scp import file_meta_bytes
from tests.dicom_utils.test_part10 import real_files

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.3.45", "2.25.123456789012345678901234567890123456"])
def test_file_meta_bytes_match_pynetdicom(syntax: str, sop: str) -> None:
    meta = create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(sop), transfer_syntax=UID(syntax))
    reference = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert file_meta_bytes(CT, sop, syntax) == reference


def test_file_meta_bytes_read_back_by_pydicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(file_meta_bytes(CT, "1.2.3", ImplicitVRLittleEndian)))
    assert ds.file_meta.MediaStorageSOPClassUID == CT
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def _pydicom_meta(path: Path) -> tuple[str, str, str, int] | None:
    """The three UIDs and the data set's offset, as pydicom reads them (None if it cannot)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            if fh.read(4) != b"DICM":
                return None
            meta = read_file_meta(fh)  # what read_file_meta_info runs after the preamble
            offset = fh.tell()
    except Exception:  # noqa: BLE001 - files pydicom cannot read are not the scan's concern
        return None
    return (str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("MediaStorageSOPInstanceUID", "")),
            str(meta.get("TransferSyntaxUID", "")), offset)


def test_scan_meta_agrees_with_pydicom_on_its_test_files() -> None:
    scanned = 0
    for path in real_files():
        reference = _pydicom_meta(path)
        meta = scan_file_meta(path.read_bytes()[:4096])
        if meta is not None:
            scanned += 1
            assert (meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid, meta.data_offset) == reference
            assert _file_contexts([path]) == [(meta.sop_class_uid, meta.transfer_syntax_uid)]
    assert scanned > 50


def test_scan_meta_refuses_what_it_does_not_understand() -> None:
    good = file_meta_bytes(CT, "1.2.3", ExplicitVRLittleEndian)
    assert scan_file_meta(good) == FileMeta(CT, "1.2.3", ExplicitVRLittleEndian, len(good))
    assert scan_file_meta(good[:150]) is None  # truncated inside group 0002
    assert scan_file_meta(good[:-3]) is None  # the last element cut short
    assert scan_file_meta(b"\x00" * 128 + b"DICX" + good[132:]) is None  # no DICM prefix
