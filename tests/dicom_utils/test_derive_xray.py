"""Derived objects of the radiograph tasks (issue 14): sr4x geometry, deblur's Derivation Code, the GAN flag.

The 4x rules are the 2x ones with another factor: Rows/Columns x4, every spacing (Pixel Spacing, Imager Pixel
Spacing, per-frame and shared Pixel Measures) / 4, and Image Position moved from the centre of the old first
pixel to the centre of the new one, (s/4 - s)/2 = -3s/8 along each axis. A real CR is cropped in memory (a 4x
copy of the full 1760x1760 radiograph would be a 100 MB file) and written, so dciodvfy compares the derived
object with a source of the same size and content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance
from dicom_utils.pixels import modality_frames, stored_frames
from dicom_utils.private_tags import read_block
from tests.dicom_utils.helpers import dciodvfy_errors, read

OPTS = DerivationOptions(software_version="0.1.0")


def _enh(task: str, **changes: object) -> Enhancement:
    base = Enhancement(
        enhancer="srresnet4x-xr",
        version="1.0",
        task=task,
        weights_sha256="cd" * 32,
        psnr=40.0,
        ssim=0.95,
        metric_basis="INPUT",
        processing_ms=80.0,
        qa_flag="PASS",
    )
    return Enhancement(**{**base.__dict__, **changes})


def _up(values: np.ndarray, f: int) -> np.ndarray:
    return values.repeat(f, axis=1).repeat(f, axis=2)


def _cropped_cr(name: str, tmp_path: Path, size: int = 128) -> tuple[Dataset, Path]:
    """A real CR cut to `size` x `size` (its own pixels, header otherwise unchanged), written to disk."""
    source = read(name)
    pixels = source.pixel_array[:size, :size].copy()
    source.Rows, source.Columns = size, size
    source.PixelData = pixels.tobytes()
    source.ImagerPixelSpacing = [0.16, 0.14]
    source.PixelSpacing = [0.16, 0.14]
    path = tmp_path / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path), path


def _no_new_errors(source_path: Path, derived_path: Path) -> None:
    before, after = dciodvfy_errors(source_path), dciodvfy_errors(derived_path)
    new = after - before
    assert not new, "dciodvfy reports errors the source did not have:\n" + "\n".join(sorted(new))


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_sr4x_real_cr_geometry_and_conformance(name: str, tmp_path: Path) -> None:
    source, source_path = _cropped_cr(name, tmp_path)
    values = _up(modality_frames(source), 4)
    path = tmp_path / "sr4x.dcm"
    derive_instance(source, values, _enh("sr4x"), OPTS).save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert (back.Rows, back.Columns) == (512, 512)
    np.testing.assert_allclose([float(v) for v in back.ImagerPixelSpacing], [0.04, 0.035], rtol=1e-6)
    np.testing.assert_allclose([float(v) for v in back.PixelSpacing], [0.04, 0.035], rtol=1e-6)
    assert back.PhotometricInterpretation == "MONOCHROME1"
    assert back.DerivationCodeSequence[0].CodeValue == "113085"
    assert "4x super-resolution" in back.DerivationDescription
    assert read_block(back)["task"] == "sr4x"
    assert np.array_equal(stored_frames(back)[:, ::4, ::4], stored_frames(source))
    _no_new_errors(source_path, path)


def test_sr4x_classic_ct_image_position() -> None:
    source = read("CT_small.dcm")
    derived = derive_instance(source, _up(modality_frames(source), 4), _enh("sr4x"), OPTS)
    spacing = [float(v) for v in source.PixelSpacing]
    orientation = [float(v) for v in source.ImageOrientationPatient]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    expected = (
        np.array([float(v) for v in source.ImagePositionPatient])
        - row_dir * 3 * spacing[1] / 8
        - col_dir * 3 * spacing[0] / 8
    )
    np.testing.assert_allclose([float(v) for v in derived.ImagePositionPatient], expected, atol=1e-4)
    np.testing.assert_allclose([float(v) for v in derived.PixelSpacing], [s / 4 for s in spacing], rtol=1e-5)
    assert (derived.Rows, derived.Columns) == (4 * source.Rows, 4 * source.Columns)


def test_sr4x_enhanced_per_frame_pixel_measures(tmp_path: Path) -> None:
    source = read("eCT_Supplemental.dcm")
    derived = derive_instance(source, _up(modality_frames(source), 4), _enh("sr4x"), OPTS)
    shared = source.SharedFunctionalGroupsSequence[0]
    old = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    new = [float(v) for v in derived.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(new, [s / 4 for s in old], rtol=1e-5)
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    for src, out in zip(
        source.PerFrameFunctionalGroupsSequence, derived.PerFrameFunctionalGroupsSequence, strict=True
    ):
        p_old = np.array([float(v) for v in src.PlanePositionSequence[0].ImagePositionPatient])
        p_new = [float(v) for v in out.PlanePositionSequence[0].ImagePositionPatient]
        expected = p_old - row_dir * 3 * old[1] / 8 - col_dir * 3 * old[0] / 8
        np.testing.assert_allclose(p_new, expected, atol=1e-4)
    assert (derived.Rows, derived.Columns) == (4 * source.Rows, 4 * source.Columns)


def test_deblur_is_edge_enhancement_same_geometry(tmp_path: Path) -> None:
    source, source_path = _cropped_cr("RG3_UNCR.dcm", tmp_path)
    path = tmp_path / "deblur.dcm"
    derive_instance(
        source, modality_frames(source), _enh("deblur", enhancer="drunet-deblur-xr"), OPTS
    ).save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    code = back.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113086",
        "DCM",
        "Edge enhancement",
    )
    assert back.DerivationDescription.startswith("deblurring by")
    assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
    assert [float(v) for v in back.ImagerPixelSpacing] == [0.16, 0.14]
    _no_new_errors(source_path, path)


def test_hallucination_risk_in_description_and_private_block() -> None:
    source = read("CT_small.dcm")
    values = _up(modality_frames(source), 4)
    risky = derive_instance(
        source, values, _enh("sr4x", enhancer="srgan4x-xr", hallucination_risk=True), OPTS
    )
    assert risky.DerivationDescription.startswith("HALLUCINATION RISK")
    assert read_block(risky)["hallucination_risk"] == "YES"
    plain = derive_instance(source, values, _enh("sr4x"), OPTS)
    assert "HALLUCINATION" not in plain.DerivationDescription
    assert read_block(plain)["hallucination_risk"] == "NO"
