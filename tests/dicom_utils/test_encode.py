"""Optional lossless re-encoding of derived instances: bit-exact, UIDs unchanged, lossy refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance
from dicom_utils.encode import compress_lossless
from dicom_utils.errors import PixelEncodeError
from dicom_utils.pixels import modality_frames, stored_frames
from dicom_utils.private_tags import read_block
from tests.dicom_utils.helpers import dciodvfy_errors, read

ENH = Enhancement("nlm", "1.0", "denoise", "", 40.0, 0.9, "INPUT", 3.0, "PASS")


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000-lossless"])
@pytest.mark.parametrize("name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG3_UNCR.dcm", "eCT_Supplemental.dcm"])
def test_lossless_reencoding(name: str, syntax: str, tmp_path: Path) -> None:
    source = read(name)
    derived = derive_instance(
        source, modality_frames(source) + 3.0, ENH, DerivationOptions(software_version="t")
    )
    plain = tmp_path / "plain.dcm"
    derived.save_as(plain, enforce_file_format=True)
    packed = compress_lossless(derived, syntax)
    path = tmp_path / "packed.dcm"
    packed.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID.is_compressed
    assert back.SOPInstanceUID == derived.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID
    assert np.array_equal(stored_frames(back), stored_frames(derived))
    assert read_block(back) == read_block(derived)
    assert dciodvfy_errors(path) <= dciodvfy_errors(plain)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "jpeg-ls", "zip"])
def test_lossy_or_unknown_refused(syntax: str) -> None:
    derived = derive_instance(
        read("CT_small.dcm"),
        modality_frames(read("CT_small.dcm")),
        ENH,
        DerivationOptions(software_version="t"),
    )
    with pytest.raises(PixelEncodeError, match="refused"):
        compress_lossless(derived, syntax)
