"""The File Meta Information of a Part 10 file read by hand: the three UIDs a sender needs and where the data
set starts.

Why by hand: pydicom's `read_file_meta_info` costs ~0.4 ms per file to read a group that is always Explicit VR
Little Endian, and the sender reads it for every instance (to pick the presentation context, then to send the
data set from its offset). Any file this scan does not fully understand gets None, and callers fall back to
pydicom, so odd files are judged exactly as before.

The File Meta a receiver writes in front of a received data set is encoded here too (`file_meta_bytes`), by hand
for the same reason (pydicom's FileMetaDataset and writer cost ~0.7 ms per instance); the bytes are those
pydicom's `dcmwrite` gives (tests/dicom_utils/test_part10.py compares them on real files). The Explicit VR
length forms come from pydicom's own table (`LONG_VRS`, `SHORT_VRS`), one copy for every hand-written reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

#: VRs whose Explicit VR elements have a 4-byte length after two reserved bytes (PS3.5 table 7.1-1).
LONG_VRS: frozenset[bytes] = frozenset(vr.value.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: VRs whose Explicit VR elements have a 2-byte length (PS3.5 table 7.1-2).
SHORT_VRS: frozenset[bytes] = frozenset(vr.value.encode("ascii") for vr in EXPLICIT_VR_LENGTH_16)
#: The 128-byte preamble (zeros) and the `DICM` prefix of a Part 10 file (PS3.10 7.1).
PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True)
class FileMeta:
    """(0002,0002), (0002,0003) and (0002,0010) of a Part 10 file, and the offset of its data set."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_offset: int


def scan_file_meta(head: bytes) -> FileMeta | None:
    """Read group 0002 from the start of a Part 10 file (`head` must hold all of it); None if anything is odd."""
    if head[128:132] != b"DICM":
        return None
    found: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if start + length > len(head):
            return None
        if element in (0x0002, 0x0003, 0x0010):
            if vr != b"UI":
                return None
            found[element] = head[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = start + length
    if pos + 8 > len(head) and pos != len(head):
        return None  # group 0002 may continue past `head`
    if 0x0002 not in found or 0x0003 not in found or 0x0010 not in found:
        return None
    return FileMeta(found[0x0002], found[0x0003], found[0x0010], pos)


def ui(uid: str) -> bytes:
    """A UI value as encoded: ASCII, padded to an even length with one NUL (PS3.5 6.2, 6.4)."""
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _sh(text: str) -> bytes:
    """A single-valued SH value as encoded: ASCII, padded to an even length with one space."""
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def explicit_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (the 4-byte length form for `LONG_VRS`); `value` already padded."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """Preamble, `DICM` and the File Meta Information (group 0002) of a Part 10 file holding one data set.

    The elements a receiver knows (PS3.10 7.1): version 00\\01, the SOP class and instance, the transfer
    syntax of the data set that follows, and the writer's implementation class UID and version name. The
    caller names the implementation (the gateway stores as pynetdicom would, so it passes pynetdicom's).
    """
    body = b"".join(
        (
            explicit_element(0x00020001, b"OB", b"\x00\x01"),
            explicit_element(0x00020002, b"UI", ui(sop_class_uid)),
            explicit_element(0x00020003, b"UI", ui(sop_instance_uid)),
            explicit_element(0x00020010, b"UI", ui(transfer_syntax_uid)),
            explicit_element(0x00020012, b"UI", ui(implementation_uid)),
            explicit_element(0x00020013, b"SH", _sh(implementation_version)),
        )
    )
    return PREAMBLE + explicit_element(0x00020000, b"UL", struct.pack("<I", len(body))) + body
