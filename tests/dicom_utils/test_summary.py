"""safe_summary: technical facts only, never PHI."""

from __future__ import annotations

import json

import pytest

from dicom_utils.summary import safe_summary
from tests.dicom_utils.helpers import read

PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "OtherPatientIDsSequence",
    "ReferringPhysicianName",
    "InstitutionName",
    "StudyID",
)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "693_J2KR.dcm", "MR_small.dcm", "rtplan.dcm", "eCT_Supplemental.dcm"]
)
def test_no_phi(name: str) -> None:
    ds = read(name)
    text = json.dumps(safe_summary(ds))
    found = 0
    for keyword in PHI_KEYWORDS[:4]:
        value = str(ds.get(keyword, "") or "").strip()
        if len(value) >= 3:
            found += 1
            assert value not in text, f"{keyword} value leaked into the summary"
    if name == "CT_small.dcm":
        assert found >= 2  # the check actually had PHI to look for
        for item in ds.OtherPatientIDsSequence:
            assert str(item.PatientID) not in text


def test_fields() -> None:
    ds = read("eCT_Supplemental.dcm")
    summary = safe_summary(ds)
    assert summary == {
        "study_uid": ds.StudyInstanceUID,
        "series_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "modality": "CT",
        "sop_class": "Enhanced CT Image Storage",
        "rows": 512,
        "columns": 512,
        "frames": 2,
        "transfer_syntax": "Explicit VR Little Endian",
        "photometric_interpretation": "MONOCHROME2",
    }


def test_non_image_and_header_only() -> None:
    summary = safe_summary(read("reportsi.dcm", header_only=True))
    assert summary["rows"] is None and summary["frames"] == 1
    assert summary["sop_class"] == "Basic Text SR Storage"
