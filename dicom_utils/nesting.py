"""Does every sequence item and element of an encoded data set fit inside the item or sequence that holds it?

Why (issue 15, defect 8): pydicom reads a defined-length sequence as exactly its declared bytes and clips an
item whose own length runs past them, so a data set with such an item decodes and was acknowledged; dcmtk
believes the item length instead and reads the following elements as part of the item. The stored original
then means different things to different tools. The gateway refuses it (0xC210) with the message built here.

What it decides: only an overrun inside a defined-length parent (an item longer than its sequence has left,
an element longer than its item has left). Anything else odd (truncation at the top level, a missing
delimiter, an unknown structure) makes it give up and return None: the full pydicom check decides those.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR

from dicom_utils.part10 import LONG_VRS

ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64


class _GiveUp(Exception):
    """Not the kind of problem this module decides."""


class _Overrun(Exception):
    """An item or element runs past its defined-length parent; the message says which."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: a sequence only if its length is undefined
        return False


class _Walker:
    def __init__(self, buf: bytes, implicit_vr: bool, little_endian: bool) -> None:
        self.buf = buf
        self.implicit = implicit_vr
        order = "<" if little_endian else ">"
        self.tag_length = struct.Struct(order + "HHI")
        self.short = struct.Struct(order + "HH2sH")
        self.long_length = struct.Struct(order + "I")

    def elements(self, pos: int, end: int | None, parent: str, depth: int) -> int:
        """Elements from `pos` to `end` (None: up to and including an item delimiter); returns the end offset.

        `parent` names what holds them ("" for the data set itself, where an overrun is a truncation)."""
        if depth > _MAX_DEPTH:
            raise _GiveUp
        buf = self.buf
        while end is None or pos < end:
            if len(buf) - pos < 8:
                raise _GiveUp
            group, element, length = self.tag_length.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == ITEM_END:
                if end is None:
                    return pos + 8
                raise _GiveUp
            if self.implicit:
                vr, start = b"", pos + 8
                sequence = length == UNDEFINED and tag != PIXEL_DATA or _is_sequence(tag)
            else:
                _, _, vr, short_length = self.short.unpack_from(buf, pos)
                if vr in LONG_VRS:
                    if len(buf) - pos < 12:
                        raise _GiveUp
                    length, start = self.long_length.unpack_from(buf, pos + 8)[0], pos + 12
                else:
                    length, start = short_length, pos + 8
                sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
            if length == UNDEFINED:
                if not (sequence or tag == PIXEL_DATA):
                    raise _GiveUp
                pos = self.items(start, None, tag, depth + 1)
                continue
            room = (end if end is not None else len(buf)) - start
            if length > room:
                if parent and end is not None:
                    raise _Overrun(f"element {_tag(tag)} declares {length} bytes but its {parent} has only {room} left")
                raise _GiveUp
            if sequence:
                self.items(start, start + length, tag, depth + 1)
            pos = start + length
        return pos

    def items(self, pos: int, end: int | None, tag: int, depth: int) -> int:
        """The items of sequence `tag` (or the fragments of encapsulated Pixel Data); returns the end offset."""
        buf = self.buf
        count = 0
        while end is None or pos < end:
            if len(buf) - pos < 8:
                raise _GiveUp
            group, element, length = self.tag_length.unpack_from(buf, pos)
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_END:
                if end is None:
                    return pos + 8
                raise _GiveUp
            if item_tag != ITEM:
                raise _GiveUp
            count += 1
            start = pos + 8
            if length == UNDEFINED:
                if tag == PIXEL_DATA:
                    raise _GiveUp
                pos = self.elements(start, None, f"item {count} of {_tag(tag)}", depth)
                continue
            room = (end if end is not None else len(buf)) - start
            if length > room:
                if end is not None:
                    raise _Overrun(
                        f"item {count} of sequence {_tag(tag)} declares {length} bytes but the sequence has only"
                        f" {room} left (tools disagree on where the item ends)"
                    )
                raise _GiveUp
            if tag != PIXEL_DATA:
                self.elements(start, start + length, f"item {count} of {_tag(tag)}", depth)
            pos = start + length
        return pos


def nesting_problem(data: bytes, *, implicit_vr: bool, little_endian: bool = True, deflated: bool = False) -> str | None:
    """What overruns its defined-length parent in the encoded data set `data`, or None (see the module)."""
    try:
        if deflated:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        _Walker(data, implicit_vr, little_endian).elements(0, len(data), "", 0)
    except _Overrun as exc:
        return str(exc)
    except (_GiveUp, struct.error, zlib.error):
        return None
    return None
