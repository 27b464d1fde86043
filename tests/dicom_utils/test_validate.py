"""The data-set checks every receiver runs (dicom_utils.validate), on real instances: each problem its own refusal,
the quick scan never more lenient than pydicom's full check, and our decoder equal to pynetdicom's."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import dsutils
from pynetdicom.dsutils import encode

from dicom_utils.validate import (
    InvalidInstance,
    SopClassMismatch,
    check_dataset,
    check_instance,
    decode,
    quick_check,
)
from tests import realdata


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(realdata.testfile("693_UNCR.dcm"))


def test_a_sound_instance_passes() -> None:
    ds = _ct()
    study, series, sop, modality = check_dataset(ds, ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assert (study, series, sop, modality) == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "CT")


def test_sop_class_other_than_announced_is_a_mismatch() -> None:
    ds = _ct()
    with pytest.raises(SopClassMismatch):
        check_dataset(ds, ds.SOPInstanceUID, "1.2.840.10008.5.1.4.1.1.4", ds.file_meta.TransferSyntaxUID)  # announced as MR


def test_other_problems_are_cannot_understand() -> None:
    ds = _ct()
    with pytest.raises(InvalidInstance, match="Affected SOP Instance UID") as info:
        check_dataset(ds, "1.2.3", ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assert not isinstance(info.value, SopClassMismatch)
    ds.Rows = 4096
    with pytest.raises(InvalidInstance, match="Pixel Data holds"):
        check_dataset(ds, ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)


# --- the quick check (no pydicom) against the full one ---------------------------------------------------

def _full_verdict(body: bytes, sop: str, sop_class: str, syntax: UID) -> tuple[str, str, str, str] | str:
    try:
        return check_dataset(decode(body, ExplicitVRLittleEndian), sop, sop_class, syntax)
    except Exception as exc:  # noqa: BLE001 - any refusal of the full check is the verdict compared
        return f"refused: {type(exc).__name__}"


@pytest.mark.parametrize("name", ["693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_RLE.dcm",
                                  "JPEG2000.dcm", "SC_rgb.dcm", "emri_small.dcm"])
def test_quick_check_agrees_with_the_full_check_on_real_files(name: str) -> None:
    ds = pydicom.dcmread(realdata.testfile(name))
    body = encode(ds, False, True)
    assert body is not None
    syntax = ds.file_meta.TransferSyntaxUID
    quick = quick_check(body, ds.SOPInstanceUID, ds.SOPClassUID, syntax)
    if name in ("693_UNCR.dcm", "CT_small.dcm", "MR_small_RLE.dcm"):
        assert quick is not None, "the common case must take the quick path"
    if quick is not None:
        assert quick == _full_verdict(body, ds.SOPInstanceUID, ds.SOPClassUID, syntax)


def test_quick_check_leaves_refusals_to_the_full_check() -> None:
    ds = _ct()
    syntax = ds.file_meta.TransferSyntaxUID
    body = encode(ds, False, True)
    assert body is not None
    assert quick_check(body, "1.2.3", ds.SOPClassUID, syntax) is None
    assert quick_check(body, ds.SOPInstanceUID, "1.2.840.10008.5.1.4.1.1.4", syntax) is None
    assert quick_check(body, ds.SOPInstanceUID, ds.SOPClassUID, ImplicitVRLittleEndian) is None
    ds.Rows = 4096
    assert quick_check(encode(ds, False, True) or b"", ds.SOPInstanceUID, ds.SOPClassUID, syntax) is None


_SEED = pydicom.dcmread(realdata.testfile("693_UNCR.dcm"))
_SEED_BODY = encode(_SEED, False, True) or b""


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=4), st.sampled_from(["set", "insert", "delete"])),
        min_size=1,
        max_size=3,
    ),
    cut=st.one_of(st.none(), st.integers(0, len(_SEED_BODY))),
)
def test_quick_check_never_accepts_what_the_full_check_refuses(
    edits: list[tuple[int, bytes, str]], cut: int | None
) -> None:
    """Byte edits in the header region (where the structure lives) and truncations anywhere."""
    body = bytearray(_SEED_BODY)
    for pos, data, how in edits:
        if how == "set":
            body[pos : pos + len(data)] = data
        elif how == "insert":
            body[pos:pos] = data
        else:
            del body[pos : pos + len(data)]
    mutated = bytes(body[:cut] if cut is not None else body)
    syntax = _SEED.file_meta.TransferSyntaxUID
    quick = quick_check(mutated, _SEED.SOPInstanceUID, _SEED.SOPClassUID, syntax)
    if quick is not None:
        assert quick == _full_verdict(mutated, _SEED.SOPInstanceUID, _SEED.SOPClassUID, syntax)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_decode_reads_what_pynetdicom_reads_and_check_instance_accepts_it(syntax: UID) -> None:
    """The receive path once decoded with pynetdicom's `dsutils.decode`; dicom_utils may not import pynetdicom."""
    ds = _ct()
    body = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert body is not None
    ours = decode(body, syntax)
    theirs = dsutils.decode(BytesIO(body), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert [(e.tag, e.VR, e.value) for e in ours.iterall()] == [(e.tag, e.VR, e.value) for e in theirs.iterall()]
    keys = check_instance(body, ds.SOPInstanceUID, ds.SOPClassUID, syntax)
    assert keys == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "CT")
    with pytest.raises(SopClassMismatch):
        check_instance(body, ds.SOPInstanceUID, "1.2.840.10008.5.1.4.1.1.4", syntax)
