"""Pixel decode/encode across the corpus' transfer syntaxes (issue 4, 'Pixels')."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_utils.errors import PixelDecodeError, PixelEncodeError
from dicom_utils.pixels import (
    frame_rescale,
    modality_frames,
    stored_frames,
    stored_range,
    to_stored,
    value_range,
)
from tests.dicom_utils.helpers import ENHANCEABLE, LOSSLESS_GROUPS, OTHER_SYNTAX_FILES, read


@pytest.mark.parametrize("name", ENHANCEABLE + OTHER_SYNTAX_FILES)
def test_decodes_to_float32_frames(name: str) -> None:
    ds = read(name)
    values = modality_frames(ds)
    frames = int(ds.get("NumberOfFrames") or 1)
    assert values.dtype == np.float32
    assert values.shape == (frames, ds.Rows, ds.Columns)
    assert np.isfinite(values).all()
    low, high = value_range(ds)
    assert low <= float(values.min()) <= float(values.max()) <= high


@pytest.mark.parametrize("name", ENHANCEABLE + OTHER_SYNTAX_FILES)
def test_round_trip_is_bit_exact(name: str) -> None:
    """Identity enhancement: modality_frames -> to_stored gives back the stored pixels bit for bit."""
    ds = read(name)
    original = stored_frames(ds)
    back = to_stored(ds, modality_frames(ds))
    assert back.dtype == original.dtype.newbyteorder("<")
    assert np.array_equal(back, original)


@pytest.mark.parametrize(
    ("group", "variant"),
    [(group, name) for group, names in LOSSLESS_GROUPS.items() for name in names[1:]],
)
def test_lossless_syntaxes_agree(group: str, variant: str) -> None:
    reference = modality_frames(read(LOSSLESS_GROUPS[group][0]))
    assert np.array_equal(modality_frames(read(variant)), reference)


def test_ct_in_hounsfield_units() -> None:
    values = modality_frames(read("693_UNCR.dcm"))
    assert float(values.min()) == -3024.0  # air/padding after intercept -1024
    assert -1100 < float(np.median(values[0, 200:300, 200:300])) < 2000


def test_mr_with_fractional_slope() -> None:
    ds = read("MR2_UNCR.dcm")
    slope, intercept = frame_rescale(ds)[0]
    assert slope == pytest.approx(3.774114)
    stored = stored_frames(ds)
    np.testing.assert_allclose(modality_frames(ds), stored * slope + intercept, rtol=1e-6)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_J2KR.dcm"])
def test_monochrome1_is_not_inverted(name: str) -> None:
    ds = read(name)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(modality_frames(ds), stored_frames(ds).astype(np.float32))


def test_enhanced_ct_shared_rescale() -> None:
    ds = read("eCT_Supplemental.dcm")
    assert frame_rescale(ds) == [(1.0, -1024.0), (1.0, -1024.0)]
    values = modality_frames(ds)
    assert values.shape == (2, 512, 512)
    assert float(values.min()) == -1024.0


def _per_frame_rescale_ct() -> Dataset:
    """eCT_Supplemental with its (real) pixels and a different rescale per frame in the per-frame groups."""
    ds = read("eCT_Supplemental.dcm")
    shared = ds.SharedFunctionalGroupsSequence[0]
    template = shared.PixelValueTransformationSequence[0]
    del shared.PixelValueTransformationSequence
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = copy.deepcopy(template)
        item.RescaleSlope = [1.0, 0.5][index]
        item.RescaleIntercept = [-1024.0, -1000.0][index]
        group.PixelValueTransformationSequence = [item]
    return ds


def test_enhanced_per_frame_rescale() -> None:
    ds = _per_frame_rescale_ct()
    stored = stored_frames(ds)
    values = modality_frames(ds)
    np.testing.assert_array_equal(values[0], stored[0] * 1.0 - 1024.0)
    np.testing.assert_array_equal(values[1], stored[1] * 0.5 - 1000.0)
    assert np.array_equal(to_stored(ds, values), stored)
    low, high = value_range(ds)
    assert (low, high) == (-1024.0, 65535 - 1024.0)


def test_to_stored_clips_to_bits_stored() -> None:
    ds = read("693_UNCR.dcm")  # signed, Bits Stored 14, intercept -1024
    low, high = stored_range(ds)
    assert (low, high) == (-8192, 8191)
    values = np.array([[[-1e9, 1e9, -1024.4, -1023.6]]], dtype=np.float32)
    out = to_stored(ds, values)
    assert out.dtype == np.int16
    assert out.tolist() == [[[low, high, 0, 0]]]
    assert value_range(ds) == (low - 1024.0, high - 1024.0)


def test_to_stored_unsigned_clips_at_zero() -> None:
    ds = read("RG3_UNCR.dcm")  # unsigned, Bits Stored 10
    out = to_stored(ds, np.array([[[-5.0, 5000.0, 512.49]]]))
    assert out.dtype == np.uint16
    assert out.tolist() == [[[0, 1023, 512]]]


def test_to_stored_accepts_super_resolution_shape() -> None:
    ds = read("CT_small.dcm")
    values = modality_frames(ds).repeat(2, axis=1).repeat(2, axis=2)
    out = to_stored(ds, values)
    assert out.shape == (1, 256, 256)
    assert np.array_equal(out[:, ::2, ::2], stored_frames(ds))


def test_to_stored_rejects_nan_and_wrong_frames() -> None:
    ds = read("emri_small.dcm")
    values = modality_frames(ds)
    values[3, 1, 1] = np.nan
    with pytest.raises(PixelEncodeError, match="NaN"):
        to_stored(ds, values)
    with pytest.raises(PixelEncodeError, match="10"):
        to_stored(ds, values[:2])


def test_truncated_file_raises_pixel_decode_error() -> None:
    ds = read("MR_truncated.dcm")
    with pytest.raises(PixelDecodeError) as info:
        modality_frames(ds)
    message = str(info.value)
    assert "Explicit VR Little Endian" in message
    assert "MONOCHROME2" in message
    assert str(ds.SOPInstanceUID) in message
    assert "truncated" in message


def test_truncated_jpeg2000_raises_pixel_decode_error() -> None:
    ds = read("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(PixelDecodeError, match="JPEG 2000 Image Compression \\(Lossless Only\\)"):
        modality_frames(ds)


def test_damaged_jpeg_stream_raises_pixel_decode_error() -> None:
    """JPEG-lossy.dcm holds a 12-bit stream no installed decoder accepts: one clear error, not a crash."""
    with pytest.raises(PixelDecodeError, match="JPEG Extended"):
        modality_frames(read("JPEG-lossy.dcm"))


def test_header_only_raises_pixel_decode_error() -> None:
    with pytest.raises(PixelDecodeError, match="no Pixel Data"):
        modality_frames(read("CT_small.dcm", header_only=True))


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "OBXXXX1A.dcm"])
def test_colour_raises_pixel_decode_error(name: str) -> None:
    with pytest.raises(PixelDecodeError, match="MONOCHROME"):
        modality_frames(read(name))
