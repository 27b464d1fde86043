"""The hand-written File Meta encoder (dicom_utils.part10) writes the bytes pydicom's `dcmwrite` writes.

Why: every received instance is stored behind these bytes (the SCP and STOW-RS encode them without pydicom, to
save ~0.7 ms per instance); a drift from pydicom's encoding would store files other tools read differently. The
reference is pydicom writing the same File Meta for every real test file that has one (their UIDs have odd and
even lengths, their transfer syntaxes cover the ones the gateway accepts), with implementation version names of
odd and even length.
"""

from __future__ import annotations

import struct
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info

from dicom_utils.part10 import LONG_VRS, PREAMBLE, explicit_element, file_meta_bytes, scan_file_meta, ui

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"  # odd length


def _pydicom_bytes(sop_class: str, sop: str, syntax: str, implementation: str, version: str) -> bytes:
    """Preamble and File Meta as pydicom writes them in front of an (empty) data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = implementation
    meta.ImplementationVersionName = version
    ds = Dataset()
    ds.file_meta = meta
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@cache
def real_files() -> list[Path]:
    """Every `.dcm` of pydicom's own test files and pydicom-data, where they are installed (`get_testdata_files`
    would try the network first: 15 s offline)."""
    roots = [Path(DATA_ROOT) / "test_files"] + [Path(src.data_path) for src in external_data_sources().values()]
    return sorted(p for root in roots for p in root.rglob("*.dcm"))


@cache
def real_metas() -> list[tuple[str, str, str]]:
    """(SOP class, SOP instance, transfer syntax) of every real test file with a File Meta."""
    found = []
    for name in real_files():
        try:
            meta = read_file_meta_info(name)
        except Exception:  # noqa: BLE001, S112 - files without a readable File Meta are not references
            continue
        uids = [str(meta.get(k, "")) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                                                "TransferSyntaxUID")]
        if all(uids):
            found.append((uids[0], uids[1], uids[2]))
    return found


def test_the_reference_corpus_is_real_and_varied() -> None:
    assert len(real_metas()) > 50
    assert len({syntax for _, _, syntax in real_metas()}) >= 8
    assert {len(sop) % 2 for _, sop, _ in real_metas()} == {0, 1}


@pytest.mark.parametrize("version", ["PYNETDICOM_304", "OFFIS_DCMTK_369"])
def test_file_meta_bytes_equal_pydicoms_dcmwrite_on_real_files(version: str) -> None:
    for sop_class, sop, syntax in real_metas():
        ours = file_meta_bytes(sop_class, sop, syntax, IMPLEMENTATION_UID, version)
        written = _pydicom_bytes(sop_class, sop, syntax, IMPLEMENTATION_UID, version)
        # pydicom writes group 0002 then the (empty, possibly deflated) data set: ours must be exactly group 0002
        assert written[: len(ours)] == ours, (sop_class, sop, syntax)
        assert written[len(ours) : len(ours) + 2] != b"\x02\x00"  # the next element is not in group 0002
        meta = dcmread(BytesIO(written)).file_meta
        assert struct.unpack_from("<I", ours, 132 + 8)[0] == meta.FileMetaInformationGroupLength


def test_scan_reads_back_what_the_encoder_wrote() -> None:
    for sop_class, sop, syntax in real_metas()[:20]:
        ours = file_meta_bytes(sop_class, sop, syntax, IMPLEMENTATION_UID, "X")
        scanned = scan_file_meta(ours)
        assert scanned is not None
        assert (scanned.sop_class_uid, scanned.sop_instance_uid, scanned.transfer_syntax_uid) == (sop_class, sop, syntax)
        assert scanned.data_offset == len(ours)


def test_ui_and_element_forms() -> None:
    assert ui("1.2.3") == b"1.2.3\x00"
    assert ui("1.2.34") == b"1.2.34"
    assert explicit_element(0x00020001, b"OB", b"\x00\x01") == b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"
    assert explicit_element(0x00020002, b"UI", ui("1.2")) == b"\x02\x00\x02\x00UI\x04\x001.2\x00"
    assert LONG_VRS == {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    assert PREAMBLE == _pydicom_bytes("1.2", "1.2.3", "1.2.840.10008.1.2", "1.2", "V")[:132]
