"""skip_reason: what the gateway enhances and why it passes over the rest."""

from __future__ import annotations

import pytest

from dicom_utils.classify import skip_reason
from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance
from dicom_utils.pixels import modality_frames
from tests.dicom_utils.helpers import ENHANCEABLE, read


@pytest.mark.parametrize("header_only", [False, True], ids=["full", "header"])
@pytest.mark.parametrize("name", ENHANCEABLE)
def test_images_are_enhanced(name: str, header_only: bool) -> None:
    assert skip_reason(read(name, header_only=header_only)) is None


@pytest.mark.parametrize("header_only", [False, True], ids=["full", "header"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("liver.dcm", "SOP class Segmentation Storage is not enhanced"),
        ("rtdose.dcm", "SOP class RT Dose Storage is not enhanced"),
        ("rtplan.dcm", "SOP class RT Plan Storage is not enhanced"),
        ("reportsi.dcm", "SOP class Basic Text SR Storage is not enhanced"),
        ("US1_UNCR.dcm", "SOP class Ultrasound Image Storage is not enhanced"),
        ("OBXXXX1A.dcm", "SOP class Ultrasound Image Storage is not enhanced"),
        ("waveform_ecg.dcm", "SOP class 12-lead ECG Waveform Storage is not enhanced"),
        ("JPEG-LL.dcm", "SOP class Secondary Capture Image Storage is not enhanced"),
    ],
)
def test_non_images_are_skipped(name: str, expected: str, header_only: bool) -> None:
    assert skip_reason(read(name, header_only=header_only)) == expected


def test_colour_ct_is_skipped_with_photometric_reason() -> None:
    ds = read("CT_small.dcm")
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    assert skip_reason(ds) == "photometric interpretation RGB: colour images are not enhanced"


def test_palette_mr_is_skipped() -> None:
    ds = read("MR_small.dcm", header_only=True)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    assert skip_reason(ds) == "photometric interpretation PALETTE COLOR: colour images are not enhanced"


def test_no_pixel_data() -> None:
    ds = read("CT_small.dcm", header_only=True)
    del ds.Rows
    assert skip_reason(ds) == "no Pixel Data (no Rows/Columns)"


def test_one_bit_image_skipped() -> None:
    ds = read("CT_small.dcm", header_only=True)
    ds.BitsAllocated = 1
    assert skip_reason(ds) == "Bits Allocated 1: only 8- and 16-bit pixels are enhanced"


def test_nuclear_medicine_only_on_request() -> None:
    ds = read("CT_small.dcm", header_only=True)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    assert skip_reason(ds) == "SOP class Positron Emission Tomography Image Storage is not enhanced"
    assert skip_reason(ds, include_nuclear=True) is None


def test_own_output_is_not_enhanced_again() -> None:
    """A PACS that routes the derived series back must not start a loop."""
    source = read("CT_small.dcm")
    enh = Enhancement("nlm", "1.0", "denoise", "", 40.0, 0.9, "INPUT", 1.0, "PASS")
    derived = derive_instance(source, modality_frames(source), enh, DerivationOptions(software_version="t"))
    assert skip_reason(derived) == "already enhanced by this gateway (its private block is present)"
