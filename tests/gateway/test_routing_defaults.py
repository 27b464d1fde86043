"""What the gateway passes over by default (localizers, mammograms) and how a route opts in; the Series Number
allocation that keeps two derived series of one source apart. Real headers from pydicom's test files, real
SQLite state."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from gateway import settings
from gateway.enhance import routing
from gateway.enhance.finish import series_number_candidates
from gateway.errors import ConfigError, StateError
from gateway.storage.state import State
from tests.realdata import testfile


def _header(name: str, **changes: object) -> Dataset:
    ds = pydicom.dcmread(testfile(name), stop_before_pixels=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _routes(*raw: dict[str, object]) -> tuple[settings.Route, ...]:
    doc = {"destinations": [{"name": "a", "type": "folder", "path": "/tmp/a"}], "routes": list(raw)}
    return settings.parse(doc, environ={}).routes


@pytest.mark.parametrize(("changes", "localizer"), [
    ({}, False),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, True),
    ({"SeriesDescription": "Topogram  0.6  T20f"}, True),
    ({"SeriesDescription": "3-Plane Loc SSFSE"}, True),
    ({"SeriesDescription": "SURVEY_MST"}, True),
    ({"SeriesDescription": "AX T1 localizer_32ch"}, True),
    ({"SeriesDescription": "Scouting study AX"}, False),  # the word, not a word that starts with it
    ({"SeriesDescription": "5/5mm Plain"}, False),
])
def test_localizers_are_recognised(changes: dict[str, object], localizer: bool) -> None:
    ds = _header("693_UNCR.dcm", **changes)
    assert routing.is_localizer(ds.get("ImageType"), str(ds.get("SeriesDescription", ""))) is localizer


def test_localizers_are_skipped_unless_a_route_opts_in() -> None:
    scout = _header("693_UNCR.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    plain = _header("693_UNCR.dcm")
    reason = routing.not_by_default(_routes({"enhancer": "gaussian"}), "CT", scout)
    assert reason is not None and reason.startswith("localizer") and "localizers = true" in reason
    assert routing.not_by_default(_routes({"enhancer": "gaussian"}), "CT", plain) is None
    opted = _routes({"enhancer": "gaussian", "modality": "CT", "localizers": True})
    assert routing.not_by_default(opted, "CT", scout) is None
    with pytest.raises(ConfigError, match=r"routes\[0\]\.localizers = 'yes'"):
        _routes({"enhancer": "gaussian", "localizers": "yes"})


def test_mammography_needs_a_route_that_names_it() -> None:
    mammo = _header("RG1_UNCR.dcm", Modality="MG")
    for routes in ((), _routes({"enhancer": "gaussian"}), _routes({"enhancer": "gaussian", "modality": "CR"})):
        reason = routing.not_by_default(routes, "MG", mammo)
        assert reason is not None and reason.startswith("mammography") and 'modality = "MG"' in reason
    assert routing.not_by_default(_routes({"enhancer": "gaussian", "modality": "MG"}), "MG", mammo) is None
    assert routing.not_by_default((), "CR", _header("RG1_UNCR.dcm")) is None  # radiographs still go by default


def test_derived_series_numbers_are_allocated_per_study(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    source = _header("693_UNCR.dcm")  # Series Number 2
    offers = series_number_candidates(source.SeriesNumber, 1000)
    assert offers[:3] == [1002, 2002, 3002]
    assert series_number_candidates("", 1000)[0] == 1000 and series_number_candidates(7, 0)[:2] == [7, 1007]
    study = str(source.StudyInstanceUID)
    assert state.derived_series_number(study, "1.2.3.gaussian", offers) == 1002
    assert state.derived_series_number(study, "1.2.3.unsharp", offers) == 2002
    assert state.derived_series_number(study, "1.2.3.gaussian", offers) == 1002  # same derived series, same number
    assert state.derived_series_number("another.study", "1.2.4.gaussian", offers) == 1002
    reopened = State(tmp_path / "state.db")  # kept across restarts
    assert reopened.derived_series_number(study, "1.2.3.unsharp", offers) == 2002
    with pytest.raises(StateError, match="series_number_offset"):
        reopened.derived_series_number(study, "1.2.3.third", [1002, 2002])
