"""Optional lossless re-encoding of derived instances (RLE Lossless or JPEG 2000 Lossless).

Why optional and lossless only: some sites want smaller files on the wire and in PACS, but the gateway must
never degrade diagnostic pixels, so only reversible syntaxes are offered, and the result is decoded again and
compared with the input before it is returned (``verify``). Why not ``Dataset.compress`` defaults: they assign a
new random SOP Instance UID (``generate_instance_uid=True``), which would break the deterministic UIDs.
"""

from __future__ import annotations

import copy

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEG2000Lossless, RLELossless

from dicom_utils.errors import PixelEncodeError
from dicom_utils.pixels import stored_frames

#: Syntaxes ``compress_lossless`` accepts (config value -> UID).
LOSSLESS_SYNTAXES: dict[str, UID] = {
    "rle": RLELossless,
    "jpeg2000-lossless": JPEG2000Lossless,
}


def compress_lossless(ds: Dataset, syntax: str, *, verify: bool = True) -> Dataset:
    """Return a copy of the uncompressed ``ds`` re-encoded in ``syntax`` ('rle', 'jpeg2000-lossless' or the UID).

    UIDs, Lossy Image Compression and every other attribute are unchanged; file meta gets the new syntax.
    Raises PixelEncodeError for a lossy or unknown syntax, a missing encoder plugin, or (``verify``) a result
    that does not decode to the same pixels.
    """
    uid = LOSSLESS_SYNTAXES.get(syntax) or UID(syntax)
    if uid not in LOSSLESS_SYNTAXES.values():
        allowed = ", ".join(LOSSLESS_SYNTAXES)
        raise PixelEncodeError(
            f"re-encoding to {uid.name or syntax!r} is refused: only lossless {allowed} are allowed"
        )
    out = copy.deepcopy(ds)
    original = stored_frames(ds)
    try:
        out.compress(uid, original if original.shape[0] > 1 else original[0], generate_instance_uid=False)
    except Exception as exc:  # encoder failures (missing plugin, unsupported depth) become one error
        raise PixelEncodeError(
            f"cannot encode instance {ds.get('SOPInstanceUID', '?')} as {uid.name}: {exc}; "
            "install pylibjpeg-rle / pylibjpeg-openjpeg, or keep the uncompressed output"
        ) from exc
    out.file_meta.TransferSyntaxUID = uid
    if verify:
        decoded = stored_frames(copy.deepcopy(out))
        if not np.array_equal(decoded, original):
            raise PixelEncodeError(
                f"{uid.name} encoding of instance {ds.get('SOPInstanceUID', '?')} did not decode to the same "
                "pixels: keeping it would alter diagnostic data; use the uncompressed output"
            )
    return out
