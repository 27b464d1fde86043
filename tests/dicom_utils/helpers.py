"""Shared helpers for the dicom_utils tests: the real-file corpus and the dciodvfy validator.

Why here and not in tests/conftest.py: that file belongs to the whole suite; these helpers only make sense for
DICOM-level checks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from tests.realdata import testfile

#: Lossless groups: every file in a group holds the same pixels in a different transfer syntax.
#: (*_UNCI is the uncompressed copy of the lossy *_J2KI, so they form a group of their own.)
LOSSLESS_GROUPS: dict[str, list[str]] = {
    "693": ["693_UNCR.dcm", "693_J2KR.dcm"],
    "693_lossy": ["693_UNCI.dcm", "693_J2KI.dcm"],
    "MR2": ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
    "MR2_lossy": ["MR2_UNCI.dcm", "MR2_J2KI.dcm"],
    "MR_small": [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
    "emri_small": [
        "emri_small.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],
    "RG1": ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],
    "RG1_lossy": ["RG1_UNCI.dcm", "RG1_J2KI.dcm"],
    "RG3": ["RG3_UNCR.dcm", "RG3_J2KR.dcm"],
    "RG3_lossy": ["RG3_UNCI.dcm", "RG3_J2KI.dcm"],
}

#: Further CT/MR images of the corpus, one syntax each.
OTHER_IMAGES = [
    "CT_small.dcm",
    "eCT_Supplemental.dcm",
    "bad_sequence.dcm",
    "explicit_VR-UN.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "examples_overlay.dcm",
]

#: Every CT/MR/CR image the gateway enhances, in every syntax the corpus has.
ENHANCEABLE = [name for group in LOSSLESS_GROUPS.values() for name in group] + OTHER_IMAGES

#: Grayscale non-enhanced images whose decoding still matters (JPEG extended/lossless, deflate, JPEG-LS lossy).
OTHER_SYNTAX_FILES = ["JPEG-LL.dcm", "JPGExtended.dcm", "image_dfl.dcm", "JPEGLSNearLossless_16.dcm"]


def corpus_path(name: str) -> Path:
    """Path of a corpus file (tests.realdata.testfile under a name pytest does not collect as a test)."""
    return testfile(name)


def read(name: str, *, header_only: bool = False) -> Dataset:
    """Read a corpus file, silencing pydicom's warnings about the known quirks of its test files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(testfile(name), stop_before_pixels=header_only)


def dciodvfy_errors(path: Path) -> set[str]:
    """The set of 'Error - ...' lines dciodvfy prints for a file, whitespace-normalised."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise AssertionError(
            "dciodvfy (dicom3tools) is not installed: the derived-object checks need it; "
            "run `apt-get install dicom3tools`"
        )
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.startswith("Error")}
