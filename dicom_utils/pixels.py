"""Pixel data in and out: stored values <-> float modality values, frame by frame.

Why modality values: enhancers and metrics must see physical quantities (Hounsfield units for CT) on one scale
across instances whose stored encodings differ (slope/intercept, signedness, bit depth). Why an exact inverse:
the derived object keeps the source's rescale, bit depth and Pixel Representation, so an identity enhancement
must give back the original stored pixels bit for bit, and nothing written can overflow what the header says.

MONOCHROME1 is left as is (no inversion): the values keep their meaning, and the derived object keeps
MONOCHROME1 and its VOI, so it displays like the source.

Decoding goes through pydicom's pixel backends: pylibjpeg-libjpeg (JPEG baseline/extended/lossless, JPEG-LS),
pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle (RLE; pydicom's own RLE decoder is the fallback), numpy for
uncompressed and deflated data. Any failure becomes a :class:`PixelDecodeError` that names the instance, the
transfer syntax, the photometric interpretation and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_utils.errors import PixelDecodeError, PixelEncodeError

#: The transfer syntaxes whose Pixel Data this module decodes (with the backends above), most preferred first:
#: what the gateway accepts on every way in (C-STORE, STOW-RS, C-GET), since an instance it could not decode
#: could not be enhanced. Uncompressed first, so a peer that offers both sends what costs nothing to read.
DECODABLE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)

_PLUGIN_HINT: dict[str, str] = {
    "JPEG 2000": "pip install pylibjpeg pylibjpeg-openjpeg",
    "JPEG-LS": "pip install pylibjpeg pylibjpeg-libjpeg",
    "JPEG": "pip install pylibjpeg pylibjpeg-libjpeg",
    "RLE": "pip install pylibjpeg pylibjpeg-rle",
}


def transfer_syntax_name(ds: Dataset) -> str:
    """Name of the dataset's transfer syntax for messages ('unknown transfer syntax' without file meta)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        return "unknown transfer syntax"
    name = UID(str(uid)).name
    return name or str(uid)


def _describe(ds: Dataset) -> str:
    """Identify an instance in an error message without any PHI."""
    meta = getattr(ds, "file_meta", None)
    fallback = meta.get("MediaStorageSOPInstanceUID") if meta is not None else None
    sop = ds.get("SOPInstanceUID") or fallback or "<no SOP Instance UID>"
    photometric = ds.get("PhotometricInterpretation", "<none>")
    return (
        f"instance {sop} (transfer syntax {transfer_syntax_name(ds)}, "
        f"photometric interpretation {photometric})"
    )


def _fix_hint(ds: Dataset, exc: BaseException) -> str:
    """Best guess at what an admin should do, from the transfer syntax and the decoder's complaint."""
    text = str(exc).lower()
    name = transfer_syntax_name(ds)
    if "less than expected" in text or "too short" in text or "truncat" in text or "not enough" in text:
        return (
            "the pixel data is shorter than Rows x Columns x Frames needs: the file is truncated; resend it"
        )
    if "missing dependencies" in text or "no pixel data decoders" in text or "not installed" in text:
        for key, hint in _PLUGIN_HINT.items():
            if key in name:
                return f"no decoder plugin for {name} is installed: {hint}"
        return f"no decoder for {name} is installed"
    if "all available plugins" in text:
        return (
            f"every installed {name} decoder rejected the data: the encoded stream is damaged or uses a variant "
            "they do not support; resend it or decompress it with dcmtk (dcmdjpeg, dcmdjpls) or gdcmconv and resend"
        )
    return (
        "the pixel data could not be decoded: the file is damaged or uses an unsupported encoding; resend it"
    )


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames, 1 when absent or empty."""
    value = ds.get("NumberOfFrames")
    try:
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def _float_or(value: Any, default: float) -> float:
    """float(value) for a DS/IS/number, ``default`` when missing or empty."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PixelDecodeError(f"{value!r} is not a number (Rescale Slope/Intercept or similar)") from None


def _seq_item(group: Dataset | None, keyword: str) -> Dataset | None:
    """First item of ``group.<keyword>`` when present and non-empty."""
    if group is None or keyword not in group:
        return None
    seq = group[keyword].value
    return seq[0] if seq else None


def frame_rescale(ds: Dataset) -> list[tuple[float, float]]:
    """(slope, intercept) per frame.

    Enhanced objects: per-frame Pixel Value Transformation overrides the shared one; top-level Rescale
    Slope/Intercept are the fallback (some writers put them there), then identity. Classic objects: the
    top-level values, identity when absent (MR usually has none).
    """
    frames = number_of_frames(ds)
    top = (_float_or(ds.get("RescaleSlope"), 1.0), _float_or(ds.get("RescaleIntercept"), 0.0))
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    shared_pvt = _seq_item(shared, "PixelValueTransformationSequence")
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    result: list[tuple[float, float]] = []
    for index in range(frames):
        pvt = None
        if per_frame_seq is not None and index < len(per_frame_seq):
            pvt = _seq_item(per_frame_seq[index], "PixelValueTransformationSequence")
        pvt = pvt or shared_pvt
        if pvt is not None and "RescaleSlope" in pvt:
            result.append(
                (_float_or(pvt.get("RescaleSlope"), 1.0), _float_or(pvt.get("RescaleIntercept"), 0.0))
            )
        else:
            result.append(top)
    for slope, _ in result:
        if slope == 0.0:
            raise PixelDecodeError(f"{_describe(ds)} has Rescale Slope 0: modality values are undefined")
    return result


def stored_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest stored value that Bits Stored and Pixel Representation allow."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def stored_dtype(ds: Dataset) -> np.dtype[Any]:
    """Little-endian numpy dtype for Bits Allocated and Pixel Representation."""
    allocated = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if allocated not in (8, 16, 32):
        raise PixelEncodeError(
            f"Bits Allocated {allocated} of instance {ds.get('SOPInstanceUID', '?')} is not supported "
            "(8, 16 or 32): such images are not enhanced"
        )
    return np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")


def stored_frames(ds: Dataset) -> np.ndarray:
    """Stored pixel values as (frames, rows, cols) in their native dtype; PixelDecodeError when impossible."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise PixelDecodeError(f"{_describe(ds)} has float pixel data, which is not enhanced")
        raise PixelDecodeError(
            f"{_describe(ds)} has no Pixel Data: it was read with stop_before_pixels or is not an image"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise PixelDecodeError(
            f"{_describe(ds)}: only single-sample MONOCHROME1/MONOCHROME2 images give modality values; "
            "check dicom_utils.classify.skip_reason before decoding"
        )
    try:
        array = np.asarray(ds.pixel_array)
    except Exception as exc:  # every decoder failure becomes one documented error
        raise PixelDecodeError(f"cannot decode {_describe(ds)}: {_fix_hint(ds, exc)} ({exc})") from exc
    frames = number_of_frames(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if array.size != frames * rows * cols:
        raise PixelDecodeError(
            f"cannot decode {_describe(ds)}: decoded {array.size} values for {frames} frame(s) of "
            f"{rows}x{cols}; the header and the pixel data disagree"
        )
    return array.reshape(frames, rows, cols)


def modality_frames(ds: Dataset) -> np.ndarray:
    """Float32 (frames, rows, cols) modality values: stored x slope + intercept, per frame.

    MONOCHROME1 stays MONOCHROME1. A Modality LUT Sequence (non-linear) is not applied: such values are passed
    through as stored values, and the derived object keeps the same LUT, so meaning is preserved.
    Raises PixelDecodeError for anything undecodable.
    """
    stored = stored_frames(ds)
    rescale = frame_rescale(ds)
    out = np.empty(stored.shape, dtype=np.float32)
    for index, (slope, intercept) in enumerate(rescale):
        frame = stored[index].astype(np.float64)
        if slope != 1.0:
            frame *= slope
        if intercept != 0.0:
            frame += intercept
        out[index] = frame
    return out


def to_stored(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`modality_frames` for the same dataset: round, clip, cast to the stored dtype.

    ``values`` is (frames, rows', cols') or (rows', cols') for single-frame images; rows'/cols' may differ from
    the dataset's (super-resolution). NaN/inf raise PixelEncodeError: a model producing them is broken and
    writing clipped garbage would hide it.
    """
    array = np.asarray(values)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise PixelEncodeError(f"values must be (frames, rows, cols), got shape {array.shape}")
    rescale = frame_rescale(ds)
    if array.shape[0] != len(rescale):
        raise PixelEncodeError(
            f"values have {array.shape[0]} frame(s) but instance {ds.get('SOPInstanceUID', '?')} has "
            f"{len(rescale)}"
        )
    if not np.all(np.isfinite(array)):
        raise PixelEncodeError(
            f"values for instance {ds.get('SOPInstanceUID', '?')} contain NaN or infinity: "
            "the enhancer output is invalid"
        )
    low, high = stored_range(ds)
    dtype = stored_dtype(ds)
    out = np.empty(array.shape, dtype=dtype)
    for index, (slope, intercept) in enumerate(rescale):
        frame = array[index].astype(np.float64)
        if intercept != 0.0:
            frame -= intercept
        if slope != 1.0:
            frame /= slope
        np.rint(frame, out=frame)
        np.clip(frame, low, high, out=frame)
        out[index] = frame.astype(dtype)
    return out


def value_range(ds: Dataset) -> tuple[float, float]:
    """Modality-value range the stored representation can hold (over all frames' rescales).

    Used to clip model outputs and as ``data_range`` for PSNR/SSIM. The ends are rounded to float32, the
    dtype of :func:`modality_frames`, so that decoded values always lie inside the range.
    """
    low, high = stored_range(ds)
    ends: list[float] = []
    for slope, intercept in frame_rescale(ds):
        ends.extend((low * slope + intercept, high * slope + intercept))
    return float(np.float32(min(ends))), float(np.float32(max(ends)))


def observed_range(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Min and max of an array, for windowing and metric data ranges of actual content."""
    array = np.asarray(values)
    return float(array.min()), float(array.max())
