"""Derived UIDs: deterministic, distinct, valid (issue 4, 'UIDs')."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicom_utils.derive import derived_series_uid, derived_sop_uid
from dicom_utils.uids import derived_uid, is_valid_uid

SOURCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def test_same_inputs_same_uid() -> None:
    assert derived_uid(SOURCE, "nlm", "1.0") == derived_uid(SOURCE, "nlm", "1.0")


def test_deterministic_across_processes() -> None:
    """A fresh interpreter (new hash seed) computes the same UID: re-runs replace, never duplicate."""
    code = f"from dicom_utils.uids import derived_uid; print(derived_uid({SOURCE!r}, 'nlm', '1.0'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == derived_uid(SOURCE, "nlm", "1.0")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("nlm", "1.0"), ("nlm", "1.1")),
        (("nlm", "1.0"), ("unet", "1.0")),
        (("ab", "c"), ("a", "bc")),  # the separator must be unambiguous
        (("nlm1", ".0"), ("nlm", "1.0")),
        (("",), ()),
    ],
)
def test_distinct_inputs_distinct_uids(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert derived_uid(SOURCE, *a) != derived_uid(SOURCE, *b)


def test_series_and_sop_uids_differ_for_same_source_uid() -> None:
    assert derived_series_uid(SOURCE, "nlm", "1.0") != derived_sop_uid(SOURCE, "nlm", "1.0")


@pytest.mark.parametrize("source", [SOURCE, "1.2", "2.25." + "9" * 39, "1." * 31 + "1"])
def test_valid_and_short(source: str) -> None:
    for uid in (derived_uid(source), derived_series_uid(source, "n", "v"), derived_sop_uid(source, "n", "v")):
        assert uid.startswith("2.25.")
        assert len(uid) <= 64
        assert is_valid_uid(uid), uid


def test_many_uids_unique() -> None:
    uids = {derived_sop_uid(f"1.2.3.{i}", "nlm", "1.0") for i in range(5000)}
    assert len(uids) == 5000


def test_empty_source_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        derived_uid("")


@pytest.mark.parametrize("bad", ["", "1..2", "01.2", "1.2.", "1.2a", "1." * 40 + "1"])
def test_is_valid_uid_rejects(bad: str) -> None:
    assert not is_valid_uid(bad)
