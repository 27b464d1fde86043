"""Which received instances the gateway enhances, and why not the others.

Why: the gateway receives whole studies (SEG, SR, RT, colour ultrasound, secondary captures come along with the
images). Enhancing only grayscale cross-sectional and projection images whose pixels are modality values is the
safe default; everything else is stored and passed over with a short reason that an admin can read in the logs.
It works on headers read with ``stop_before_pixels=True`` so the completion step can classify without loading
pixels.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_utils import private_tags

#: SOP classes whose pixels the gateway enhances (name for messages).
ENHANCED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
}

#: Nuclear medicine classes, enhanced only when the caller opts in (quantitative PET/NM needs care).
NUCLEAR_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
}

#: SOP classes of the Enhanced (multi-frame, functional group) family.
MULTIFRAME_FUNCTIONAL_GROUP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1"}
)

#: SOP classes of the DX family, where Image Type value 3 is empty.
DX_FAMILY_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.2",
        "1.2.840.10008.5.1.4.1.1.1.2.1",
    }
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def sop_class_name(ds: Dataset) -> str:
    """Human name of the instance's SOP class, or its UID when pydicom does not know it."""
    value = ds.get("SOPClassUID")
    if not value:
        return "unknown SOP class"
    name = UID(str(value)).name
    return name or str(value)


def is_enhanced_multiframe(ds: Dataset) -> bool:
    """True for Enhanced CT/MR, whose geometry and rescale live in functional group sequences."""
    return str(ds.get("SOPClassUID", "")) in MULTIFRAME_FUNCTIONAL_GROUP_CLASSES


def skip_reason(ds: Dataset, *, include_nuclear: bool = False) -> str | None:
    """None when the gateway enhances this instance, else a short human reason.

    Enhanced: CT, MR, CR, DX, MG and Enhanced CT/MR (PET/NM with ``include_nuclear``), single sample per pixel,
    MONOCHROME1/MONOCHROME2, integer pixels. Instances that this gateway derived itself (its private block is
    present) are skipped so that a PACS routing the derived series back cannot start a loop.
    Works on a header read with ``stop_before_pixels=True``: image presence is then judged from Rows/Columns.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class:
        return "no SOP Class UID: not a storable image"
    allowed = dict(ENHANCED_SOP_CLASSES)
    if include_nuclear:
        allowed.update(NUCLEAR_SOP_CLASSES)
    if sop_class not in allowed:
        return f"SOP class {sop_class_name(ds)} is not enhanced"
    if private_tags.has_block(ds):
        return "already enhanced by this gateway (its private block is present)"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data is not enhanced"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "no Pixel Data (no Rows/Columns)"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if not photometric:
            return "no photometric interpretation: cannot tell how to read the pixels"
        return f"photometric interpretation {photometric}: colour images are not enhanced"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return f"{samples} samples per pixel: only single-sample grayscale images are enhanced"
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (8, 16):
        return f"Bits Allocated {bits}: only 8- and 16-bit pixels are enhanced"
    return None


def has_pixel_data(ds: Dataset) -> bool:
    """True when the dataset carries an (integer or float) pixel data element."""
    return any(keyword in ds for keyword in _PIXEL_KEYWORDS)
