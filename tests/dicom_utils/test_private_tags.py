"""The private block: written, saved in every syntax pydicom writes, read back unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_utils.enhancement import Enhancement
from dicom_utils.private_tags import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PSNR_INFINITE_AS,
    has_block,
    read_block,
    write_block,
)
from tests.dicom_utils.helpers import read

ENH = Enhancement(
    "unet-dn", "2.0.1", "denoise", "0123456789abcdef" * 4, 38.123456789, 0.95123, "INPUT", 123.456, "WARN"
)


def test_group_is_private_and_creator_ours() -> None:
    assert PRIVATE_GROUP % 2 == 1 and 0x0009 <= PRIVATE_GROUP <= 0xFFFF
    assert PRIVATE_CREATOR == "ENHANCE_GW 1"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_round_trip_through_file(syntax: str, tmp_path: Path) -> None:
    ds = read("MR_small_bigendian.dcm" if syntax == ExplicitVRBigEndian else "CT_small.dcm")
    write_block(ds, ENH)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    block = read_block(pydicom.dcmread(path))
    assert block["enhancer"] == "unet-dn"
    assert block["version"] == "2.0.1"
    assert block["weights_sha256"] == "0123456789abcdef" * 4
    assert block["metric_basis"] == "INPUT"
    assert block["qa_flag"] == "WARN"
    assert block["task"] == "denoise"
    assert block["psnr"] == pytest.approx(38.123456789, rel=1e-9)
    assert block["ssim"] == pytest.approx(0.95123)
    assert block["processing_ms"] == pytest.approx(123.456)


def test_vrs_and_tags() -> None:
    ds = Dataset()
    write_block(ds, ENH)
    expected = {
        0x01: "DS",
        0x02: "DS",
        0x03: "CS",
        0x04: "LO",
        0x05: "LO",
        0x06: "LO",
        0x07: "DS",
        0x08: "CS",
    }
    assert ds[PRIVATE_GROUP, 0x0010].value == PRIVATE_CREATOR
    for offset, vr in expected.items():
        assert ds[PRIVATE_GROUP, 0x1000 + offset].VR == vr


def test_missing_metrics_and_infinite_psnr() -> None:
    ds = Dataset()
    write_block(ds, Enhancement("nlm", "1.0", "denoise", "", None, None, "INPUT", 0.0, "PASS"))
    block = read_block(ds)
    assert block["psnr"] is None and block["ssim"] is None
    assert block["input_psnr"] is None and block["input_ssim"] is None
    write_block(ds, Enhancement("nlm", "1.0", "denoise", "", math.inf, 1.0, "INPUT", 0.0, "PASS"))
    assert read_block(ds)["psnr"] == PSNR_INFINITE_AS
    with pytest.raises(ValueError, match="NaN"):
        write_block(ds, Enhancement("nlm", "1.0", "denoise", "", math.nan, 1.0, "INPUT", 0.0, "PASS"))


def test_found_by_creator_not_slot() -> None:
    """Another writer may have used slot 0x10 of our group: the block is found by its creator string."""
    ds = Dataset()
    ds.add_new((PRIVATE_GROUP, 0x0010), "LO", "SOMEONE ELSE")
    ds.add_new((PRIVATE_GROUP, 0x1001), "LO", "theirs")
    assert not has_block(ds)
    write_block(ds, ENH)
    assert ds[PRIVATE_GROUP, 0x1001].value == "theirs"
    assert read_block(ds)["enhancer"] == "unet-dn"


def test_absent_block_raises() -> None:
    with pytest.raises(KeyError, match="ENHANCE_GW 1"):
        read_block(read("CT_small.dcm", header_only=True))


def test_series_elements_round_trip_through_implicit_vr(tmp_path: Path) -> None:
    """Noise, strength, series QA and DEGRADE_RESTORE slices survive a file whose elements arrive as UN."""
    from dataclasses import replace

    from dicom_utils.derive import mark_series_qa
    from dicom_utils.private_tags import set_qa_flag

    enh = replace(
        ENH,
        noise_sigma=12.345678,
        noise_method="flat 8x8 blocks, soft tissue -200..200 HU",
        noise_background_sigma=3.5,
        strength=0.8,
        series_qa="PASS",
        degrade_restore_slices=(1, 50, 99),
    )
    ds = read("CT_small.dcm")
    write_block(ds, enh)
    ds.SeriesDescription = "x" * 60
    mark_series_qa(ds, "WARN", "voids 0.002 > 0.001 (WARN) on 3/9 slices, worst #4", marker=True)
    set_qa_flag(ds, "FAIL")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    block = read_block(back)
    assert block["noise_sigma"] == pytest.approx(12.345678, rel=1e-6)
    assert block["noise_method"] == "flat 8x8 blocks, soft tissue -200..200 HU"
    assert block["noise_background_sigma"] == pytest.approx(3.5)
    assert block["strength"] == pytest.approx(0.8)
    assert block["series_qa"] == "WARN"
    assert block["qa_reasons"] == "voids 0.002 > 0.001 (WARN) on 3/9 slices, worst #4"
    assert block["qa_flag"] == "FAIL"
    assert block["degrade_restore_slices"] == "1,50,99"
    assert back.SeriesDescription.startswith("QA WARN x") and len(back.SeriesDescription) <= 64


def test_orthanc_dictionary_names_every_element() -> None:
    from dicom_utils.private_tags import ELEMENTS, orthanc_dictionary

    entries = orthanc_dictionary()
    assert len(entries) == len(ELEMENTS)
    assert entries["0077,1010"] == ["CS", "EnhanceGwSeriesQA", 1, 1, PRIVATE_CREATOR]
    assert entries["0077,100c"][:2] == ["DS", "EnhanceGwNoiseSigma"]
