"""Derived objects (issue 4, 'Derived objects'): tags, pixels, geometry, and dciodvfy conformance.

Each derived object is written, read back and validated by dicom3tools' dciodvfy: it must report no error that
the source file did not already have (several pydicom test files carry errors of their own). Run with ``-s`` to
see the error counts.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_utils.derive import (
    DerivationOptions,
    Enhancement,
    derive_instance,
    derived_series_uid,
    derived_sop_uid,
)
from dicom_utils.errors import DerivationError
from dicom_utils.pixels import modality_frames, stored_frames
from dicom_utils.private_tags import read_block
from dicom_utils.uids import is_valid_uid
from tests.dicom_utils.helpers import ENHANCEABLE, corpus_path, dciodvfy_errors, read

OPTS = DerivationOptions(software_version="0.1.0")
NOW = datetime(2024, 5, 6, 7, 8, 9, 123456)


def _enh(task: str = "denoise", **changes: object) -> Enhancement:
    base = Enhancement(
        enhancer="nlm",
        version="1.0",
        task=task,
        weights_sha256="ab" * 32,
        psnr=41.25,
        ssim=0.9731,
        metric_basis="DEGRADE_RESTORE",
        processing_ms=12.5,
        qa_flag="PASS",
        input_psnr=48.5,
        input_ssim=0.991,
    )
    return Enhancement(**{**base.__dict__, **changes})


def _write(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _upscale(values: np.ndarray) -> np.ndarray:
    return values.repeat(2, axis=1).repeat(2, axis=2)


def _assert_no_new_dciodvfy_errors(source_name: str, derived_path: Path, source: Dataset) -> None:
    """dciodvfy finds nothing wrong in the derived file that was not already wrong in the source.

    A source whose own SOP Instance UID is invalid (bad_sequence.dcm) makes every reference to it invalid too:
    errors quoting that very UID are counted as the source's.
    """
    before = dciodvfy_errors(corpus_path(source_name))
    after = dciodvfy_errors(derived_path)
    bad_source_uid = str(source.SOPInstanceUID)
    new = {e for e in after - before if is_valid_uid(bad_source_uid) or bad_source_uid not in e}
    print(f"dciodvfy {source_name}: source {len(before)} errors, derived {len(after)}, new {len(new)}")
    assert not new, "dciodvfy reports errors the source did not have:\n" + "\n".join(sorted(new))


@pytest.mark.parametrize("name", ENHANCEABLE)
def test_identity_derivation(name: str, tmp_path: Path) -> None:
    """Every CT/MR/CR image in every syntax: derive, write, read back, compare tags and pixels, validate."""
    source = read(name)
    before = copy.deepcopy(source)
    values = modality_frames(source)
    derived = derive_instance(source, values, _enh(), OPTS, now=NOW)
    assert source == before, "derive_instance must not modify its source"
    back = _write(derived, tmp_path / "derived.dcm")

    # pixels: identity enhancement is bit-exact, in uncompressed Explicit VR Little Endian
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(stored_frames(back), stored_frames(source))
    assert np.array_equal(modality_frames(back), values)
    for keyword in (
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PhotometricInterpretation",
    ):
        assert back.get(keyword) == source.get(keyword), keyword

    # same patient, study, frame of reference; new deterministic series and instance
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "AccessionNumber",
        "FrameOfReferenceUID",
        "StudyID",
        "InstanceNumber",
        "SOPClassUID",
    ):
        assert back.get(keyword) == source.get(keyword), keyword
    assert back.SeriesInstanceUID == derived_series_uid(source.SeriesInstanceUID, "nlm", "1.0")
    assert back.SOPInstanceUID == derived_sop_uid(source.SOPInstanceUID, "nlm", "1.0")
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID
    assert is_valid_uid(back.SeriesInstanceUID) and is_valid_uid(back.SOPInstanceUID)

    # series
    assert back.SeriesNumber == int(source.get("SeriesNumber") or 0) + 1000
    assert back.SeriesDescription.endswith("ENHANCED (nlm)")
    assert len(back.SeriesDescription) <= 64
    assert (back.ContentDate, back.ContentTime) == ("20240506", "070809.123456")
    assert (back.InstanceCreationDate, back.InstanceCreationTime) == ("20240506", "070809.123456")

    # image type keeps value 3+
    assert back.ImageType[0] == "DERIVED"
    source_type = list(source.ImageType) if "ImageType" in source else []
    assert list(back.ImageType)[2:] == [v.strip() for v in source_type[2:]] or len(back.ImageType) == 4

    # equipment, references, provenance
    assert back.Manufacturer == "enhance-gateway"
    assert back.SoftwareVersions == "0.1.0"
    purposes = [
        item.PurposeOfReferenceCodeSequence[0].CodeValue for item in back.ContributingEquipmentSequence
    ]
    assert purposes[-2:] == ["109101", "109102"]
    assert back.ContributingEquipmentSequence[-2].Manufacturer == (source.get("Manufacturer") or "UNKNOWN")
    assert back.RelatedSeriesSequence[-1].SeriesInstanceUID == source.SeriesInstanceUID
    assert back.ReferencedSeriesSequence[-1].SeriesInstanceUID == source.SeriesInstanceUID
    assert read_block(back) == {
        "psnr": 41.25,
        "ssim": 0.9731,
        "metric_basis": "DEGRADE_RESTORE",
        "enhancer": "nlm",
        "version": "1.0",
        "weights_sha256": "ab" * 32,
        "processing_ms": 12.5,
        "qa_flag": "PASS",
        "task": "denoise",
        "input_psnr": 48.5,
        "input_ssim": 0.991,
        "noise_sigma": None,
        "noise_method": "",
        "noise_background_sigma": None,
        "strength": None,
        "series_qa": "",
        "qa_reasons": "",
        "degrade_restore_slices": "",
        "hallucination_risk": "NO",
    }
    if str(source.get("LossyImageCompression", "")) == "01":
        assert back.LossyImageCompression == "01"

    _assert_no_new_dciodvfy_errors(name, tmp_path / "derived.dcm", source)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm"])
def test_classic_derivation_references(name: str) -> None:
    source = read(name)
    derived = derive_instance(source, modality_frames(source), _enh(), OPTS)
    assert list(derived.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    code = derived.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("113087", "DCM", "Smoothing")
    assert "nlm 1.0" in derived.DerivationDescription and "denoising" in derived.DerivationDescription
    (ref,) = derived.SourceImageSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    gateway = derived.ContributingEquipmentSequence[-1]
    assert (gateway.Manufacturer, gateway.SoftwareVersions) == ("enhance-gateway", "0.1.0")
    assert gateway.ContributionDescription == "denoise by nlm 1.0"


def test_ct_keeps_axial_and_monochrome1_kept(tmp_path: Path) -> None:
    ct = derive_instance(read("693_UNCR.dcm"), modality_frames(read("693_UNCR.dcm")), _enh(), OPTS)
    assert list(ct.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    cr_source = read("RG3_UNCR.dcm")
    cr = _write(derive_instance(cr_source, modality_frames(cr_source), _enh(), OPTS), tmp_path / "cr.dcm")
    assert cr.PhotometricInterpretation == "MONOCHROME1"
    assert cr.get("WindowCenter") == cr_source.get("WindowCenter")
    assert cr.get("WindowWidth") == cr_source.get("WindowWidth")


def test_dx_image_type_value_3_is_empty() -> None:
    source = read("RG3_UNCR.dcm")
    source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # the same pixels as DX For Presentation
    source.ImageType = ["ORIGINAL", "PRIMARY", "SOMETHING"]
    derived = derive_instance(source, modality_frames(source), _enh(), OPTS)
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY", ""]


def test_enhanced_ct_multiframe(tmp_path: Path) -> None:
    source = read("eCT_Supplemental.dcm")
    values = modality_frames(source)
    back = _write(derive_instance(source, values + 10.0, _enh(), OPTS), tmp_path / "ect.dcm")
    assert back.NumberOfFrames == 2
    assert len(back.ImageType) == 4 and back.ImageType[0] == "DERIVED"
    frame_type = back.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType
    assert len(frame_type) == 4 and frame_type[0] == "DERIVED"
    for index, group in enumerate(back.PerFrameFunctionalGroupsSequence):
        derivation = group.DerivationImageSequence[0]
        assert derivation.DerivationCodeSequence[0].CodeValue == "113087"
        ref = derivation.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref.ReferencedFrameNumber == index + 1
    evidence = back.SourceImageEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    np.testing.assert_array_equal(modality_frames(back), values + 10.0)
    _assert_no_new_dciodvfy_errors("eCT_Supplemental.dcm", tmp_path / "ect.dcm", source)


def _expected_position(position: list[float], orientation: list[float], spacing: list[float]) -> np.ndarray:
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    return np.array(position) - row_dir * spacing[1] / 4 - col_dir * spacing[0] / 4


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KR.dcm", "MR_small_implicit.dcm", "MR2_UNCR.dcm"])
def test_super_resolution_classic(name: str, tmp_path: Path) -> None:
    source = read(name)
    values = _upscale(modality_frames(source))
    back = _write(derive_instance(source, values, _enh("sr2x"), OPTS), tmp_path / "sr.dcm")
    assert (back.Rows, back.Columns) == (2 * source.Rows, 2 * source.Columns)
    spacing = [float(v) for v in source.PixelSpacing]
    np.testing.assert_allclose([float(v) for v in back.PixelSpacing], [s / 2 for s in spacing], rtol=1e-5)
    expected = _expected_position(
        [float(v) for v in source.ImagePositionPatient],
        [float(v) for v in source.ImageOrientationPatient],
        spacing,
    )
    np.testing.assert_allclose([float(v) for v in back.ImagePositionPatient], expected, atol=1e-4)
    assert back.DerivationCodeSequence[0].CodeValue == "113085"
    assert "2x super-resolution" in back.DerivationDescription
    assert read_block(back)["task"] == "sr2x"
    assert np.array_equal(stored_frames(back)[:, ::2, ::2], stored_frames(source))
    _assert_no_new_dciodvfy_errors(name, tmp_path / "sr.dcm", source)


def test_super_resolution_cr_imager_pixel_spacing(tmp_path: Path) -> None:
    source = read("RG3_UNCR.dcm")
    source.ImagerPixelSpacing = [0.15, 0.16]
    back = _write(
        derive_instance(source, _upscale(modality_frames(source)), _enh("sr2x"), OPTS), tmp_path / "c"
    )
    assert [float(v) for v in back.ImagerPixelSpacing] == [0.075, 0.08]
    assert (back.Rows, back.Columns) == (3520, 3520)
    assert back.PhotometricInterpretation == "MONOCHROME1"


def test_super_resolution_enhanced_ct(tmp_path: Path) -> None:
    source = read("eCT_Supplemental.dcm")
    back = _write(
        derive_instance(source, _upscale(modality_frames(source)), _enh("sr2x"), OPTS), tmp_path / "sr.dcm"
    )
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (1024, 1024, 2)
    old_spacing = [
        float(v) for v in source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ]
    new_spacing = [
        float(v) for v in back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ]
    np.testing.assert_allclose(new_spacing, [s / 2 for s in old_spacing], rtol=1e-5)
    orientation = [
        float(v)
        for v in source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    for src_group, new_group in zip(
        source.PerFrameFunctionalGroupsSequence, back.PerFrameFunctionalGroupsSequence, strict=True
    ):
        old = [float(v) for v in src_group.PlanePositionSequence[0].ImagePositionPatient]
        new = [float(v) for v in new_group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(new, _expected_position(old, orientation, old_spacing), atol=1e-4)
        assert new_group.DerivationImageSequence[0].DerivationCodeSequence[0].CodeValue == "113085"
    _assert_no_new_dciodvfy_errors("eCT_Supplemental.dcm", tmp_path / "sr.dcm", source)


def test_super_resolution_drops_overlays() -> None:
    source = read("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert any(elem.tag.group == 0x6000 for elem in source)
    derived = derive_instance(source, _upscale(modality_frames(source)), _enh("sr2x"), OPTS)
    assert not any(0x6000 <= elem.tag.group <= 0x601E for elem in derived)
    kept = derive_instance(source, modality_frames(source), _enh("denoise"), OPTS)
    assert any(elem.tag.group == 0x6000 for elem in kept)


def test_enhanced_values_clipped_and_padding_kept() -> None:
    source = read("693_UNCR.dcm")
    values = modality_frames(source)
    padding = stored_frames(source) == source.PixelPaddingValue
    assert padding.any()
    enhanced = values + 50.0
    enhanced[0, 300, 300] = 1e9  # beyond what 14 bits can hold
    derived = derive_instance(source, enhanced, _enh(), OPTS)
    stored = stored_frames(derived)
    assert (stored[padding] == source.PixelPaddingValue).all()
    assert stored[0, 300, 300] == 8191
    assert derived.get("SmallestImagePixelValue") is None  # absent in the source, not invented


def test_smallest_largest_recomputed(tmp_path: Path) -> None:
    source = read("MR_small.dcm")
    values = modality_frames(source) * 0.5
    back = _write(derive_instance(source, values, _enh(), OPTS), tmp_path / "d.dcm")
    stored = stored_frames(back)
    assert back.SmallestImagePixelValue == int(stored.min())
    assert back.LargestImagePixelValue == int(stored.max())


def test_lossy_source_flags(tmp_path: Path) -> None:
    """Flags are carried over, never reset; a source received lossy without the flag gets it."""
    carried = derive_instance(read("RG1_J2KI.dcm"), modality_frames(read("RG1_J2KI.dcm")), _enh(), OPTS)
    assert carried.LossyImageCompression == "01"
    assert carried.get("LossyImageCompressionRatio") == read("RG1_J2KI.dcm").get("LossyImageCompressionRatio")

    unflagged = read("RG3_J2KI.dcm")
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in unflagged:
            del unflagged[keyword]
    flagged = derive_instance(unflagged, modality_frames(unflagged), _enh(), OPTS)
    assert flagged.LossyImageCompression == "01"
    assert list(flagged.LossyImageCompressionMethod) == [
        "ISO_15444_1"
    ] or flagged.LossyImageCompressionMethod == ("ISO_15444_1")
    assert float(flagged.LossyImageCompressionRatio) > 1.0

    jls = read("JPEGLSNearLossless_16.dcm")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):  # this test file lacks them
        if keyword not in jls:
            setattr(jls, keyword, "1.2.3.4")
    derived = derive_instance(jls, modality_frames(jls), _enh(), OPTS)
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == "ISO_14495_1"

    lossless = derive_instance(read("RG3_J2KR.dcm"), modality_frames(read("RG3_J2KR.dcm")), _enh(), OPTS)
    assert "LossyImageCompression" not in lossless or lossless.LossyImageCompression == "00"


def test_deterministic_uids_and_distinct_enhancers() -> None:
    source = read("CT_small.dcm")
    values = modality_frames(source)
    first = derive_instance(source, values, _enh(), OPTS)
    again = derive_instance(source, values, _enh(), OPTS)
    other = derive_instance(source, values, _enh(enhancer="unet"), OPTS)
    newer = derive_instance(source, values, _enh(version="1.1"), OPTS)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert len({first.SOPInstanceUID, other.SOPInstanceUID, newer.SOPInstanceUID}) == 3
    assert len({first.SeriesInstanceUID, other.SeriesInstanceUID, newer.SeriesInstanceUID}) == 3


def test_options_applied() -> None:
    source = read("CT_small.dcm")
    opts = DerivationOptions(
        software_version="2.3.4",
        series_number_offset=500,
        description_suffix="DENOISED",
        manufacturer="Hospital IT",
        institution_name="General Hospital",
        series_datetime=datetime(2024, 1, 2, 3, 4, 5),
    )
    derived = derive_instance(source, modality_frames(source), _enh(), opts)
    assert derived.SeriesNumber == int(source.SeriesNumber) + 500
    assert re.fullmatch(r".* DENOISED \(nlm\)|DENOISED \(nlm\)", derived.SeriesDescription)
    assert derived.Manufacturer == "Hospital IT"
    assert derived.InstitutionName == "General Hospital"
    assert (derived.SeriesDate, derived.SeriesTime) == ("20240102", "030405.000000")
    assert derived.file_meta.ImplementationVersionName == "ENHGW_2.3.4"


def test_long_series_description_is_cut_to_64() -> None:
    source = read("CT_small.dcm")
    source.SeriesDescription = "X" * 64
    derived = derive_instance(source, modality_frames(source), _enh(enhancer="a-long-enhancer-name"), OPTS)
    assert len(derived.SeriesDescription) == 64
    assert derived.SeriesDescription.endswith(" ENHANCED (a-long-enhancer-name)")


@pytest.mark.parametrize(("task", "factor"), [("denoise", 2), ("sr2x", 1)])
def test_wrong_shape_rejected(task: str, factor: int) -> None:
    source = read("CT_small.dcm")
    values = modality_frames(source)
    if factor == 2:
        values = _upscale(values)
    with pytest.raises(DerivationError, match=f"task {task}"):
        derive_instance(source, values, _enh(task), OPTS)


def test_enhancement_validates_fields() -> None:
    with pytest.raises(ValueError, match="task"):
        _enh("sr8x")
    with pytest.raises(ValueError, match="qa_flag"):
        _enh(qa_flag="OK")
    with pytest.raises(ValueError, match="metric_basis"):
        _enh(metric_basis="GT")


def test_padding_read_as_unsigned_from_implicit_vr() -> None:
    """Implicit VR leaves Pixel Padding Value ambiguous (US or SS): a signed image's -2000 may read as 63536."""
    source = read("693_UNCR.dcm")
    padding = stored_frames(source) == -2000
    source["PixelPaddingValue"].VR = "US"
    source.PixelPaddingValue = 63536
    derived = derive_instance(source, modality_frames(source) + 50.0, _enh(), OPTS)
    assert (stored_frames(derived)[padding] == -2000).all()


def test_padding_kept_after_super_resolution() -> None:
    source = read("693_J2KR.dcm")
    padding = stored_frames(source) == source.PixelPaddingValue
    assert padding.any()
    derived = derive_instance(source, _upscale(modality_frames(source)) + 20.0, _enh("sr2x"), OPTS)
    stored = stored_frames(derived)
    assert (stored[_upscale(padding)] == source.PixelPaddingValue).all()
    assert (stored[~_upscale(padding)] == _upscale(stored_frames(source))[~_upscale(padding)] + 20).all()


def test_big_endian_ow_payloads_are_swapped(tmp_path: Path) -> None:
    """OW data (here overlay planes) read from a big endian file are written little endian, not garbled."""
    dcmconv = shutil.which("dcmconv")
    if dcmconv is None:
        pytest.fail("dcmconv (dcmtk) is not installed: run `apt-get install dcmtk`")
    big = tmp_path / "big.dcm"
    subprocess.run(
        [dcmconv, "+tb", str(corpus_path("MR-SIEMENS-DICOM-WithOverlays.dcm")), str(big)], check=True
    )
    little_source = read("MR-SIEMENS-DICOM-WithOverlays.dcm")
    big_source = pydicom.dcmread(big)
    assert big_source[0x6000, 0x3000].value != little_source[0x6000, 0x3000].value  # raw bytes differ
    from_little = derive_instance(little_source, modality_frames(little_source), _enh(), OPTS)
    from_big = derive_instance(big_source, modality_frames(big_source), _enh(), OPTS)
    assert from_big[0x6000, 0x3000].value == from_little[0x6000, 0x3000].value
    assert np.array_equal(stored_frames(from_big), stored_frames(from_little))


@pytest.mark.parametrize("name", ENHANCEABLE)
def test_super_resolution_every_image(name: str, tmp_path: Path) -> None:
    """sr2x on every image of the corpus: doubled matrix, nearest-upsampled identity is exact, dciodvfy clean."""
    source = read(name)
    path = tmp_path / "sr.dcm"
    back = _write(derive_instance(source, _upscale(modality_frames(source)), _enh("sr2x"), OPTS), path)
    assert (back.Rows, back.Columns) == (2 * source.Rows, 2 * source.Columns)
    assert np.array_equal(stored_frames(back), _upscale(stored_frames(source)))
    if "PixelSpacing" in source:
        np.testing.assert_allclose(
            [float(v) for v in back.PixelSpacing], [float(v) / 2 for v in source.PixelSpacing], rtol=1e-5
        )
    _assert_no_new_dciodvfy_errors(name, path, source)
