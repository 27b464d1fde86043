"""A fast structural scan of an encoded Explicit VR Little Endian data set, reading a few top-level values.

Why: the gateway must refuse a malformed instance before acknowledging it, and pydicom's way of proving a data
set well formed (decode it, then convert every value with `iterall()`) cost about 2.3 ms of CPU per 512x512 CT
instance, the largest share of the receive path once the network layer was lean. This scan walks the same
structure with `struct` in about a tenth of that time.

What it proves, and why that is enough: every element header and every value fits inside its parent (the data
set, a sequence item, a sequence), sequences and encapsulated Pixel Data are made of items and end with their
delimiters, the VR is one PS3.5 defines, and the numeric binary VRs whose values pydicom converts (US, SS, UL,
SL, FL, FD, SV, UV, AT) hold whole values. Those are the failures pydicom's `iterall()` raises for (it reads
invalid DS/IS strings with a warning), and Specific Character Set holds only terms pydicom knows (the fuzz
drill found that a stray byte there makes pydicom's text decoding raise). It never decides "malformed" on its own:
`scan()` returns None for anything it does not prove well formed (other transfer syntaxes, UN elements, whose
values pydicom may re-read with the dictionary VR, an overrun, an odd structure), and the caller then runs the
full pydicom check, which gives the verdict and the message. So the scan can only make the common case fast;
it cannot accept what the full check would refuse.
"""

from __future__ import annotations

import struct

from pydicom.charset import python_encoding

from dicom_utils.part10 import LONG_VRS, SHORT_VRS

_TAG_LENGTH = struct.Struct("<HHI")  # item and delimiter headers: group, element, 4-byte length
_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length
_LONG_LENGTH = struct.Struct("<I")

_VALUE_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"AT": 4, b"FD": 8, b"SV": 8, b"UV": 8}

SPECIFIC_CHARACTER_SET = 0x00080005
_KNOWN_CHARSETS = frozenset(python_encoding)
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32


class _Unsure(Exception):
    """The scan cannot vouch for this data set; the full check must decide."""


def scan(data: bytes, wanted: frozenset[int]) -> tuple[dict[int, bytes], int | None] | None:
    """Prove `data` (Explicit VR Little Endian) well formed and return ({tag: value} of the top-level `wanted`
    tags, Pixel Data's length, UNDEFINED when encapsulated, None when absent); None when it cannot."""
    walker = _Walker(data, wanted)
    try:
        end = walker.elements(0, len(data), 0)
    except (_Unsure, struct.error):
        return None
    if end != len(data):
        return None  # a stray delimiter at the top level
    return walker.values, walker.pixel


def _known_charsets(value: bytes) -> bool:
    """Every term of a Specific Character Set value is one pydicom decodes (at any depth: items may redefine it)."""
    try:
        terms = value.decode("ascii").split("\\")
    except UnicodeDecodeError:
        return False
    return all(term.strip(" ") in _KNOWN_CHARSETS for term in terms)


class _Walker:
    """One scan: the buffer, the tags to read at the top level, and what was read."""

    def __init__(self, data: bytes, wanted: frozenset[int]) -> None:
        self.buf = memoryview(data)
        self.wanted = wanted
        self.values: dict[int, bytes] = {}
        self.pixel: int | None = None

    def elements(self, pos: int, end: int, depth: int) -> int:
        """Walk elements from `pos` until `end` or an item delimiter (its offset is returned, for the caller)."""
        if depth > _MAX_DEPTH:
            raise _Unsure
        buf = self.buf
        while pos < end:
            if end - pos < 8:
                raise _Unsure
            group, element, vr, length = _SHORT.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == ITEM_END:
                return pos
            if vr in LONG_VRS:
                if end - pos < 12:
                    raise _Unsure
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                pos += 12
            elif vr in SHORT_VRS:
                pos += 8
            else:
                raise _Unsure  # unknown VR, an implicit VR stream, or a delimiter where an element belongs
            if vr == b"UN":
                raise _Unsure
            if length == UNDEFINED:
                if vr == b"SQ":
                    pos = self.undefined_sequence(pos, end, depth)
                elif tag == PIXEL_DATA and depth == 0 and vr in (b"OB", b"OW"):
                    pos = self.fragments(pos, end)
                    self.pixel = UNDEFINED
                else:
                    raise _Unsure
                continue
            if length > end - pos:
                raise _Unsure
            size = _VALUE_SIZE.get(vr)
            if size is not None and length % size:
                raise _Unsure
            if vr == b"SQ":
                self.defined_sequence(pos, pos + length, depth)
            elif tag == SPECIFIC_CHARACTER_SET and (vr != b"CS" or not _known_charsets(bytes(buf[pos : pos + length]))):
                # pydicom reads any other VR as numbers and then cannot decode the file's text: the full check
                raise _Unsure
            if depth == 0 and vr != b"SQ":
                if tag in self.wanted:
                    self.values[tag] = bytes(buf[pos : pos + length])
                if tag == PIXEL_DATA:
                    self.pixel = length
            pos += length
        return pos

    def item(self, pos: int, end: int, depth: int) -> int:
        """One sequence item starting at `pos` (its tag); returns the offset after it."""
        if end - pos < 8:
            raise _Unsure
        group, element, length = _TAG_LENGTH.unpack_from(self.buf, pos)
        if group << 16 | element != ITEM:
            raise _Unsure
        pos += 8
        if length == UNDEFINED:
            pos = self.elements(pos, end, depth + 1)
            if end - pos < 8 or _TAG_LENGTH.unpack_from(self.buf, pos) != (0xFFFE, 0xE00D, 0):
                raise _Unsure
            return pos + 8
        if length > end - pos or self.elements(pos, pos + length, depth + 1) != pos + length:
            raise _Unsure
        return pos + int(length)

    def defined_sequence(self, pos: int, end: int, depth: int) -> None:
        while pos < end:
            pos = self.item(pos, end, depth)

    def undefined_sequence(self, pos: int, end: int, depth: int) -> int:
        while True:
            if end - pos < 8:
                raise _Unsure
            group, element, length = _TAG_LENGTH.unpack_from(self.buf, pos)
            if group << 16 | element == SEQUENCE_END:
                if length != 0:
                    raise _Unsure
                return pos + 8
            pos = self.item(pos, end, depth)

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated Pixel Data: items of defined length (the offset table, then fragments), then the delimiter."""
        while True:
            if end - pos < 8:
                raise _Unsure
            group, element, length = _TAG_LENGTH.unpack_from(self.buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM or length == UNDEFINED or length > end - pos:
                raise _Unsure
            pos += length
