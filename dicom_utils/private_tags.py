"""The gateway's private block: quality metrics and provenance inside every derived instance.

Why private tags: no standard attribute holds "PSNR of this enhancement against that reference" or "sha256 of
the model weights", yet a radiologist or a PACS admin must be able to see, per image, what software changed it
and how well it scored. Why group 0x0077: odd (private), and no vendor in pydicom's private dictionary uses it, so
viewers do not mislabel our elements. The creator string is the project's own; element offsets never change
meaning (add new ones, never reuse).

| tag | VR | name |
|---|---|---|
| (0077,0010) | LO | Private Creator "ENHANCE_GW 1" |
| (0077,1001) | DS | PSNR (dB) |
| (0077,1002) | DS | SSIM |
| (0077,1003) | CS | Metric basis (INPUT or DEGRADE_RESTORE) |
| (0077,1004) | LO | Enhancer name |
| (0077,1005) | LO | Enhancer version |
| (0077,1006) | LO | Weights SHA-256 (hex, empty for classical filters) |
| (0077,1007) | DS | Processing time per instance (ms) |
| (0077,1008) | CS | QA flag (PASS, WARN, FAIL) |
| (0077,1009) | LO | Task (denoise, sr2x, sr4x, deblur) |
| (0077,100A) | DS | PSNR enhanced vs received input (dB), when 1001 is DEGRADE_RESTORE |
| (0077,100B) | DS | SSIM enhanced vs received input, when 1002 is DEGRADE_RESTORE |
| (0077,100C) | DS | Noise sigma of the series (modality units) |
| (0077,100D) | LO | Noise estimation method |
| (0077,100E) | DS | MR background (Rayleigh) noise sigma, empty when not measured |
| (0077,100F) | DS | Strength the enhancer ran at |
| (0077,1010) | CS | Series QA verdict (PASS, WARN, FAIL) |
| (0077,1011) | LT | Series QA reasons |
| (0077,1012) | LT | Instance Numbers the DEGRADE_RESTORE score was taken on (comma separated) |
| (0077,1013) | CS | Hallucination risk: YES for an adversarially trained enhancer (may show structure not in the data), else NO |

The block slot (0x10 -> elements 0x10xx) is what ``Dataset.private_block`` allocates first; readers find the
block by creator, never by slot.
"""

from __future__ import annotations

import math

from pydicom.dataset import Dataset, PrivateBlock
from pydicom.valuerep import format_number_as_ds

from dicom_utils.enhancement import Enhancement

PRIVATE_GROUP: int = 0x0077
PRIVATE_CREATOR: str = "ENHANCE_GW 1"

#: Value written for an infinite PSNR (identical images): DS cannot hold infinity.
PSNR_INFINITE_AS: float = 999.0

#: Names used in dictionaries handed to viewers/PACS (Orthanc's "Dictionary", dcmtk's private.dic).
NAMES: dict[str, str] = {
    "psnr": "EnhanceGwPSNR",
    "ssim": "EnhanceGwSSIM",
    "metric_basis": "EnhanceGwMetricBasis",
    "enhancer": "EnhanceGwEnhancer",
    "version": "EnhanceGwEnhancerVersion",
    "weights_sha256": "EnhanceGwWeightsSHA256",
    "processing_ms": "EnhanceGwProcessingMs",
    "qa_flag": "EnhanceGwQAFlag",
    "task": "EnhanceGwTask",
    "input_psnr": "EnhanceGwInputPSNR",
    "input_ssim": "EnhanceGwInputSSIM",
    "noise_sigma": "EnhanceGwNoiseSigma",
    "noise_method": "EnhanceGwNoiseMethod",
    "noise_background_sigma": "EnhanceGwNoiseBackgroundSigma",
    "strength": "EnhanceGwStrength",
    "series_qa": "EnhanceGwSeriesQA",
    "qa_reasons": "EnhanceGwQAReasons",
    "degrade_restore_slices": "EnhanceGwDegradeRestoreSlices",
    "hallucination_risk": "EnhanceGwHallucinationRisk",
}

# offset -> (key, VR)
ELEMENTS: dict[int, tuple[str, str]] = {
    0x01: ("psnr", "DS"),
    0x02: ("ssim", "DS"),
    0x03: ("metric_basis", "CS"),
    0x04: ("enhancer", "LO"),
    0x05: ("version", "LO"),
    0x06: ("weights_sha256", "LO"),
    0x07: ("processing_ms", "DS"),
    0x08: ("qa_flag", "CS"),
    0x09: ("task", "LO"),
    0x0A: ("input_psnr", "DS"),
    0x0B: ("input_ssim", "DS"),
    0x0C: ("noise_sigma", "DS"),
    0x0D: ("noise_method", "LO"),
    0x0E: ("noise_background_sigma", "DS"),
    0x0F: ("strength", "DS"),
    0x10: ("series_qa", "CS"),
    0x11: ("qa_reasons", "LT"),
    0x12: ("degrade_restore_slices", "LT"),
    0x13: ("hallucination_risk", "CS"),
}
_NUMERIC = frozenset(
    {"psnr", "ssim", "processing_ms", "input_psnr", "input_ssim", "noise_sigma", "noise_background_sigma", "strength"}
)
_OFFSET: dict[str, int] = {key: offset for offset, (key, _vr) in ELEMENTS.items()}
#: Largest LT value (PS3.5 6.2): reasons beyond it are cut.
LT_MAX = 10240


def _ds_text(value: float | None, key: str) -> str:
    """Format a number as a DS string (<= 16 chars); empty for None; refuse NaN."""
    if value is None:
        return ""
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{key} is NaN: fix the metric computation (a DS element cannot hold NaN)")
    if math.isinf(number):
        if key != "psnr" or number < 0:
            raise ValueError(f"{key} is {number}: a DS element cannot hold infinity")
        number = PSNR_INFINITE_AS
    return format_number_as_ds(number)


def orthanc_dictionary() -> dict[str, list[object]]:
    """Entries for Orthanc's ``Dictionary`` configuration option, so Orthanc shows our elements by name.

    Slot 0x10 is assumed, which is what :func:`write_block` allocates on every derived object.
    """
    return {
        f"{PRIVATE_GROUP:04x},10{offset:02x}": [vr, NAMES[key], 1, 1, PRIVATE_CREATOR]
        for offset, (key, vr) in ELEMENTS.items()
    }


def has_block(ds: Dataset) -> bool:
    """True when the dataset carries this gateway's private creator in PRIVATE_GROUP."""
    return _find_block(ds) is not None


def _find_block(ds: Dataset) -> PrivateBlock | None:
    """Our block wherever its slot is (readers must not assume 0x10)."""
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=False)
    except KeyError:
        return None


def write_block(ds: Dataset, enh: Enhancement) -> None:
    """Write (or overwrite) the private block with the values of ``enh``."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    values: dict[str, str] = {
        "psnr": _ds_text(enh.psnr, "psnr"),
        "ssim": _ds_text(enh.ssim, "ssim"),
        "metric_basis": enh.metric_basis,
        "enhancer": enh.enhancer[:64],
        "version": enh.version[:64],
        "weights_sha256": enh.weights_sha256[:64],
        "processing_ms": _ds_text(enh.processing_ms, "processing_ms"),
        "qa_flag": enh.qa_flag,
        "task": enh.task,
        "input_psnr": _ds_text(enh.input_psnr, "psnr"),
        "input_ssim": _ds_text(enh.input_ssim, "ssim"),
        "noise_sigma": _ds_text(enh.noise_sigma, "noise_sigma"),
        "noise_method": enh.noise_method[:64],
        "noise_background_sigma": _ds_text(enh.noise_background_sigma, "noise_background_sigma"),
        "strength": _ds_text(enh.strength, "strength"),
        "series_qa": enh.series_qa,
        "qa_reasons": enh.qa_reasons[:LT_MAX],
        "degrade_restore_slices": ",".join(str(n) for n in enh.degrade_restore_slices),
        "hallucination_risk": "YES" if enh.hallucination_risk else "NO",
    }
    for offset, (key, vr) in ELEMENTS.items():
        block.add_new(offset, vr, values[key])


def set_series_qa(ds: Dataset, verdict: str, reasons: str) -> None:
    """Overwrite the series QA verdict and reasons of an existing block (the gate decides after the last slice).

    Raises KeyError when the dataset has no block.
    """
    block = _find_block(ds)
    if block is None:
        raise KeyError(f"no private block {PRIVATE_CREATOR!r} in group {PRIVATE_GROUP:04X}")
    block.add_new(_OFFSET["series_qa"], "CS", verdict)
    block.add_new(_OFFSET["qa_reasons"], "LT", reasons[:LT_MAX])


def set_qa_flag(ds: Dataset, flag: str) -> None:
    """Overwrite this instance's QA flag (raises KeyError when the dataset has no block)."""
    block = _find_block(ds)
    if block is None:
        raise KeyError(f"no private block {PRIVATE_CREATOR!r} in group {PRIVATE_GROUP:04X}")
    block.add_new(_OFFSET["qa_flag"], "CS", flag)


def read_block(ds: Dataset) -> dict[str, object]:
    """Read the block back: numbers as float (None when empty), text as str. Raises KeyError when absent.

    Works on datasets read from Implicit VR files too (elements then arrive as UN/unknown VR and are decoded
    here from their bytes).
    """
    block = _find_block(ds)
    if block is None:
        raise KeyError(f"no private block {PRIVATE_CREATOR!r} in group {PRIVATE_GROUP:04X}")
    result: dict[str, object] = {}
    for offset, (key, _vr) in ELEMENTS.items():
        if offset not in block:
            result[key] = None if key in _NUMERIC else ""
            continue
        raw = block[offset].value
        if isinstance(raw, bytes):
            text = raw.decode("ascii", errors="replace").strip(" \x00")
        elif raw is None:
            text = ""
        else:
            text = str(raw).strip()
        if key in _NUMERIC:
            result[key] = float(text) if text else None
        else:
            result[key] = text
    return result
