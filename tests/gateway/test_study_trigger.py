"""Study-level routes (`trigger = "study"`): completion rules, timeouts, and delivery of a study's series together.

Why real files and a real state store: completion reads each series' Series Description from its spooled
file and decides from the times recorded in SQLite; the end-to-end test pushes two series with dcmtk and
watches the running gateway make their jobs together.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from structlog.testing import capture_logs

from gateway.receive.completion import Completion
from gateway.settings import Route, SeriesMatch
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey
from gateway.storage.state import State
from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import make_series

CT, MR = "693_UNCR.dcm", "MR2_UNCR.dcm"


def _series(tmp_path: Path, source: str, description: str, study: str, n: int = 2) -> list[Path]:
    files = make_series(source, n, tmp_path / description, seed=f"{study}-{description}", study_uid=study)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = description
        ds.save_as(f)
    return files


def _record(state: State, files: list[Path], now: float) -> None:
    """Store the files in the spool beside the state database (where completion reads descriptions) and record them."""
    spool = _spool(state)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        key = InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        spool.put(key, f.read_bytes())
        state.record_instance(sop_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID,
                              study_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID, modality=ds.Modality,
                              size=1, calling_aet="CT01", now=now)


def _spool(state: State) -> LocalSpool:
    return LocalSpool(state.path.parent / f"{state.path.stem}-spool")


def _route(on_timeout: str = "process") -> Route:
    return Route(enhancer="gaussian", modality="CT", trigger="study", required=(SeriesMatch("CT", "^B$"),),
                 study_timeout=100.0, on_timeout=on_timeout)


def test_a_study_waits_for_its_required_series_then_its_series_become_jobs_together(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    study = generate_uid()
    completion = Completion(state, _spool(state), [_route()], stable_seconds=2.0)
    _record(state, _series(tmp_path, CT, "A", study), now=0.0)
    _record(state, _series(tmp_path, MR, "T1", study), now=0.0)  # no study route: a series job as usual
    (mr_job,) = completion.run_once(now=5.0)
    assert state.job(mr_job).modality == "MR" and state.job(mr_job).study_group is None
    assert completion.run_once(now=50.0) == []  # A waits: B is required
    _record(state, _series(tmp_path, CT, "B", study), now=60.0)
    assert completion.run_once(now=61.0) == []  # not quiet yet
    with capture_logs() as logs:
        made = completion.run_once(now=62.5)
    assert len(made) == 2
    jobs = [state.job(j) for j in made]
    assert {j.state for j in jobs} == {"queued"} and len({j.study_group for j in jobs}) == 1
    assert [e["event"] for e in logs] == ["study.complete"]
    # a late series of the same study: its required series is among the earlier ones, so it goes once quiet
    _record(state, _series(tmp_path, CT, "C", study), now=70.0)
    (late,) = completion.run_once(now=73.0)
    assert state.job(late).study_group not in (None, jobs[0].study_group)


def test_timeout_processes_what_is_there_or_discards_it_with_a_log_line(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    kept, dropped = generate_uid(), generate_uid()
    _record(state, _series(tmp_path / "k", CT, "A", kept), now=0.0)
    _record(state, _series(tmp_path / "d", CT, "A", dropped), now=0.0)
    process = Completion(state, _spool(state), [_route("process")], stable_seconds=2.0)
    assert process.run_once(now=99.0) == []
    with capture_logs() as logs:
        made = Completion(state, _spool(state), [_route("process")], stable_seconds=2.0).run_once(now=101.0)
    assert {state.job(j).study_uid for j in made} == {kept, dropped}
    assert {e["event"] for e in logs} == {"study.timeout"} and logs[0]["missing"] == ["CT/^B$"]
    state2 = State(tmp_path / "s2.db")
    _record(state2, _series(tmp_path / "d2", CT, "A", dropped), now=0.0)
    with capture_logs() as logs:
        (job,) = Completion(state2, _spool(state2), [_route("discard")], stable_seconds=2.0).run_once(now=101.0)
    assert state2.job(job).state == "skipped" and "missing CT/^B$" in (state2.job(job).skip_reason or "")
    assert [e["event"] for e in logs] == ["study.discarded"]


def test_the_sender_waits_until_every_series_of_the_study_is_enhanced(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    study = generate_uid()
    _record(state, _series(tmp_path, CT, "A", study), now=0.0)
    _record(state, _series(tmp_path, CT, "B", study), now=0.0)
    first, second = Completion(state, _spool(state), [_route()], stable_seconds=1.0).run_once(now=5.0)
    for expected in (first, second):
        job = state.claim_job("queued", "enhancing")
        assert job is not None and job.id == expected
        state.finish_enhancement(job.id, destinations=["pacs"], derived_count=2, psnr=None, ssim=None, seconds=1)
        if expected == first:
            assert state.claim_delivery("pacs") is None  # B is still to be enhanced: A waits for it
    claimed = state.claim_delivery("pacs")
    assert claimed is not None and claimed[0].id == first


def test_gateway_makes_the_jobs_of_a_study_together(tmp_path: Path) -> None:
    study = generate_uid()
    a, b = _series(tmp_path / "in", CT, "A", study, 3), _series(tmp_path / "in", CT, "B", study, 3)
    route = {"enhancer": "gaussian", "modality": "CT", "trigger": "study", "required": [{"series_description": "^B$"}],
             "study_timeout": 600}
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[route], stable_seconds=1.0).start()
    try:
        storescu(gw.port, a, called_aet="ENHANCE_GW")
        storescu(gw.port, b, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"done"}, 2)
        assert len({j.study_group for j in jobs}) == 1 and jobs[0].study_group
        assert [e["event"] for e in gw.events() if e.get("event", "").startswith("study.")] == ["study.complete"]
        assert len(list((gw.var_dir / "archive").rglob("*.dcm"))) == 6
    finally:
        gw.stop()


def test_the_series_description_cache_is_bounded_and_rereads_what_it_dropped(tmp_path: Path) -> None:
    """The cache kept one entry per series ever seen: a gateway running for months grew it without end."""
    state = State(tmp_path / "s.db")
    studies = [generate_uid() for _ in range(3)]
    for n, study in enumerate(studies):
        _record(state, _series(tmp_path / str(n), CT, "A", study), now=0.0)
    completion = Completion(state, _spool(state), [_route()], stable_seconds=1.0, descriptions_kept=2)
    assert completion.run_once(now=5.0) == []  # each study waits for its series B
    assert len(completion._descriptions) == 2
    _record(state, _series(tmp_path / "0", CT, "B", studies[0]), now=6.0)
    made = completion.run_once(now=10.0)  # A of the first study was dropped: read again, still routed right
    assert len(made) == 2 and {state.job(j).study_uid for j in made} == {studies[0]}
    assert len(completion._descriptions) == 2
    state.close()
