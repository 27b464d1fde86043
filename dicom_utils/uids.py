"""Deterministic UIDs for derived objects.

Why deterministic: when the gateway re-runs a job (crash, retry, admin re-queue) the derived series must get the
SAME Series and SOP Instance UIDs, so PACS replaces instead of duplicating. Why not
``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``: with ``prefix=None`` it ignores ``entropy_srcs``
and returns a random UUID-based UID. Why length-prefixed parts: plain concatenation is ambiguous
("1.2" + "3" == "1.23" + ""), so two different inputs could collide.

The result is a ``2.25.<decimal>`` UID (ISO/IEC 9834-8 / DICOM PS3.5 B.2) whose integer is a 128-bit UUID with
version 8 ("custom", RFC 9562) bits built from SHA-256; it is at most 44 characters.
"""

from __future__ import annotations

import hashlib
import re
import uuid

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Domain separator: another project hashing the same UIDs does not produce ours.
_NAMESPACE = b"enhance-gateway/derived-uid/v1"


def derived_uid(source_uid: str, *parts: str) -> str:
    """Return the ``2.25.`` UID determined by ``source_uid`` and ``parts`` (same inputs, same UID).

    Each input is UTF-8 encoded and prefixed by its byte length, so no two different input lists hash the same
    byte string. The first 128 bits of the SHA-256 become a UUID with the RFC 9562 variant and version 8 bits.
    """
    if not source_uid:
        raise ValueError("derived_uid needs a non-empty source UID")
    digest = hashlib.sha256()
    digest.update(_NAMESPACE)
    for item in (source_uid, *parts):
        data = item.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    value = uuid.UUID(bytes=digest.digest()[:16])
    as_int = value.int
    # RFC 9562: variant bits 10xx in octet 8, version 8 in the high nibble of octet 6.
    as_int &= ~(0xC000 << 48)
    as_int |= 0x8000 << 48
    as_int &= ~(0xF000 << 64)
    as_int |= 0x8000 << 64
    return f"2.25.{as_int}"


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID: 1..64 chars, digits and dots, no leading zeros in components."""
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None
