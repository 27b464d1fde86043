"""DICOM knowledge of the enhancement gateway: pixels, classification, derived objects, UIDs, private tags.

No networking and no torch here (the worker is the only place where DICOM meets tensors); only pydicom and numpy.
See README.md in this folder for why each module exists.
"""

from __future__ import annotations

from dicom_utils.classify import skip_reason
from dicom_utils.derive import (
    DerivationOptions,
    Enhancement,
    derive_instance,
    derived_series_uid,
    derived_sop_uid,
)
from dicom_utils.encode import compress_lossless
from dicom_utils.errors import DerivationError, DicomUtilsError, PixelDecodeError, PixelEncodeError
from dicom_utils.pixels import modality_frames, to_stored, value_range
from dicom_utils.summary import safe_summary
from dicom_utils.uids import derived_uid

__all__ = [
    "DerivationError",
    "DerivationOptions",
    "DicomUtilsError",
    "Enhancement",
    "PixelDecodeError",
    "PixelEncodeError",
    "compress_lossless",
    "derive_instance",
    "derived_series_uid",
    "derived_sop_uid",
    "derived_uid",
    "modality_frames",
    "safe_summary",
    "skip_reason",
    "to_stored",
    "value_range",
]
