"""The SR report is a series of the study: its Series Number is allocated like a derived series', never shared.

Why a test of its own: the report used to take the derived series' number + 1, so source series 2's report
(1003) and source series 3's derived series (1003) shared a number, and a viewer that hangs series by number
showed them as one. In-process, with a real State, a real spool and real CT images (two series of one study,
numbered 2 and 3), each enhanced with its report as the worker does it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom

from gateway import settings
from gateway.enhance.finish import report_number_candidates
from gateway.enhance.worker import Worker
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.gateway.inprocess import receive
from tests.realdata import make_series

CT = "693_UNCR.dcm"


def _receive(state: State, spool: LocalSpool, files: list[Path], series_number: int) -> int:
    """Number the files `series_number`, then store them as the SCP would and queue their series."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = series_number
        ds.save_as(path, enforce_file_format=True)
    return receive(state, spool, files)


def test_a_report_never_takes_the_number_of_another_derived_series(tmp_path: Path) -> None:
    cfg = settings.parse({
        "gateway": {"var_dir": str(tmp_path / "var"), "min_free_mb": 0},
        "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
        "routes": [{"enhancer": "gaussian"}],
        "qa": {"report": True, "actions": {"WARN": "flag", "FAIL": "flag"}},
        "enhance": {"workers": 1, "batch_size": 4, "threads": 1},
    }, environ={})
    state, spool = State(cfg.state_db), LocalSpool(cfg.spool_dir)
    worker = Worker(cfg, state, spool)
    three = make_series(CT, 2, tmp_path / "in3", seed="report-number-3")
    study = str(pydicom.dcmread(three[0], stop_before_pixels=True).StudyInstanceUID)
    two = make_series(CT, 2, tmp_path / "in2", seed="report-number-2", study_uid=study)
    jobs = {3: _receive(state, spool, three, 3)}
    assert worker.run_once()
    jobs[2] = _receive(state, spool, two, 2)
    assert worker.run_once()

    numbers: dict[tuple[int, str], set[int]] = defaultdict(set)  # (source number, modality) -> Series Numbers
    series: dict[int, set[str]] = defaultdict(set)               # Series Number -> Series Instance UIDs
    for source, job_id in jobs.items():
        assert state.job(job_id).state == "enhanced", state.job(job_id).error
        for key in spool.list_outputs(job_id):
            with spool.open(key) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            assert str(ds.StudyInstanceUID) == study
            numbers[(source, str(ds.Modality))].add(int(ds.SeriesNumber))
            series[int(ds.SeriesNumber)].add(str(ds.SeriesInstanceUID))
    assert dict(numbers) == {
        (3, "CT"): {1003}, (3, "SR"): {1004},   # the first report keeps the familiar derived + 1
        (2, "CT"): {1002}, (2, "SR"): {2003},   # 1003 is source 3's derived series: the next offset step
    }
    assert all(len(uids) == 1 for uids in series.values()), dict(series)  # one series per number

    # the same job again keeps every number (the numbers belong to the series UIDs, which do not change)
    again = state.make_reprocess_job(state.job(jobs[2]).series_uid, enhancer=None, only_destination=None)
    assert worker.run_once()
    redone = set()
    for key in spool.list_outputs(again):
        with spool.open(key) as fh:
            redone.add(int(pydicom.dcmread(fh, stop_before_pixels=True).SeriesNumber))
    assert redone == {1002, 2003}


def test_report_candidates_start_at_the_derived_number_plus_one_and_step_by_the_offset() -> None:
    assert report_number_candidates(1002, 1000, count=3) == [1003, 2003, 3003]
    assert report_number_candidates("7", 0, count=2) == [8, 1008]  # offset 0: derived series keep the source's
    assert report_number_candidates(None, 1000, count=1) == [1]
