"""DIMSE status codes the gateway answers or judges (PS3.7 annex C, PS3.4 annexes B and C), in one place.

Why one module: the SCP, the STOW-RS receiver and C-GET retrieval answer with the same codes, and the sender
judges the peer's answers by the same rule (`stored`); a code written as a literal in three places drifts.
"""

from __future__ import annotations

SUCCESS = 0x0000
#: Refused: out of resources (a full disk, the state store failing, shutting down). The peer keeps the
#: instance and may retry later.
OUT_OF_RESOURCES = 0xA700
#: Refused: the data set's SOP class differs from the one the request announced.
SOP_CLASS_MISMATCH = 0xA900
#: Error: cannot understand (a malformed or incomplete data set, a UID that cannot name a spool folder).
CANNOT_UNDERSTAND = 0xC210
#: Refused: not authorized (the calling AE title is bound to other hosts).
NOT_AUTHORIZED = 0x0124
#: Warning: C-STORE coercion of data elements; C-GET/C-MOVE sub-operations complete with failures or warnings.
WARNING = 0xB000
#: C-MOVE refused: move destination unknown (the source does not know the destination AE title).
MOVE_DESTINATION_UNKNOWN = 0xA801


def stored(code: int) -> bool:
    """Whether a C-STORE response status means the peer has the instance: success, or any warning (0xBxxx)."""
    return code == SUCCESS or 0xB000 <= code <= 0xBFFF


__all__ = ["CANNOT_UNDERSTAND", "MOVE_DESTINATION_UNKNOWN", "NOT_AUTHORIZED", "OUT_OF_RESOURCES", "SOP_CLASS_MISMATCH", "SUCCESS", "WARNING",
           "stored"]
