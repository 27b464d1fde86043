"""The SCP's dataset checks on a real CT instance: each problem maps to its own refusal."""

from __future__ import annotations

import pydicom
import pytest

from gateway.scp import InvalidInstance, SopClassMismatch, _check_dataset
from tests import realdata


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(realdata.testfile("693_UNCR.dcm"))


def test_a_sound_instance_passes() -> None:
    ds = _ct()
    study, series, sop, modality = _check_dataset(ds, ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assert (study, series, sop, modality) == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "CT")


def test_sop_class_other_than_announced_is_a_mismatch() -> None:
    ds = _ct()
    with pytest.raises(SopClassMismatch):
        _check_dataset(ds, ds.SOPInstanceUID, "1.2.840.10008.5.1.4.1.1.4", ds.file_meta.TransferSyntaxUID)  # announced as MR


def test_other_problems_are_cannot_understand() -> None:
    ds = _ct()
    with pytest.raises(InvalidInstance, match="Affected SOP Instance UID") as info:
        _check_dataset(ds, "1.2.3", ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assert not isinstance(info.value, SopClassMismatch)
    ds.Rows = 4096
    with pytest.raises(InvalidInstance, match="Pixel Data holds"):
        _check_dataset(ds, ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
