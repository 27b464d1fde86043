"""The QA gate's decisions on real slices, the held/rejected states and their migration, the `[qa]` settings."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicom_utils.pixels import modality_frames
from enhancers.noise import estimate_noise
from gateway import settings
from gateway.enhance.qa import SeriesGate, full_sample, judge
from gateway.errors import ConfigError, StateError
from gateway.settings import QaSettings
from gateway.storage.state import JOB_STATES, QaOutcome, State
from tests.realdata import testfile


def _slice(name: str) -> tuple[np.ndarray, float, str]:
    ds = pydicom.dcmread(testfile(name))
    x = modality_frames(ds)[0].astype(np.float32)
    group = "CT" if ds.Modality == "CT" else "MR"
    return x, estimate_noise(x, group).sigma, group


def _gate(count: int, name: str = "693_UNCR.dcm", **qa: object) -> tuple[SeriesGate, np.ndarray, float]:
    x, sigma, group = _slice(name)
    return SeriesGate(QaSettings(**qa), group=group, sigma=sigma, count=count), x, sigma  # type: ignore[arg-type]


def test_untouched_and_lightly_denoised_real_slices_pass() -> None:
    gate, x, sigma = _gate(1)
    rng = np.random.default_rng(0)
    light = x + rng.normal(0, 0.05 * sigma, x.shape).astype(np.float32)  # removes (or adds) next to nothing
    result = gate.check(0, 1, x, light, ssim=0.99)
    assert result.verdict == "PASS", result.reasons
    assert gate.verdict().verdict == "PASS" and gate.verdict().action == "deliver"


def test_blur_of_a_native_dose_ct_fails_and_is_held() -> None:
    gate, x, _ = _gate(1)
    result = gate.check(0, 7, x, ndimage.gaussian_filter(x, 2.0), ssim=0.95)
    assert result.verdict == "FAIL"
    assert any(r.startswith("lowpass ") and "FAIL" in r for r in result.reasons)
    verdict = gate.verdict()
    assert (verdict.verdict, verdict.action) == ("FAIL", "hold")
    assert "lowpass" in verdict.text and "1/1 slices, worst #7" in verdict.text


def test_voids_in_mr_anatomy_fail() -> None:
    gate, x, _ = _gate(1, "MR2_UNCR.dcm")
    out = x.copy()
    rows, cols = np.indices(x.shape)
    blotches = ((rows // 12) % 3 == 0) & ((cols // 12) % 3 == 0)  # 12x12 black blotches, 1 in 9 of the image
    out[blotches & (x > np.percentile(x, 60))] = 0
    result = gate.check(0, 1, x, out, ssim=None)
    assert result.verdict == "FAIL" and any(r.startswith("voids ") for r in result.reasons)


def test_low_ssim_fails_and_actions_follow_the_settings() -> None:
    gate, x, _ = _gate(1, actions={"WARN": "flag", "FAIL": "deliver"})
    assert gate.check(0, 1, x, x, ssim=0.4).verdict == "FAIL"
    assert gate.verdict().action == "deliver"
    gate, x, _ = _gate(1)
    assert gate.check(0, 1, x, x, ssim=0.6).verdict == "WARN"
    assert gate.verdict().action == "flag"


def test_one_slice_out_of_line_with_its_neighbours_is_a_jump() -> None:
    gate, x, sigma = _gate(7)
    rng = np.random.default_rng(1)
    for i in range(7):
        removed = rng.normal(0, (2.5 if i == 3 else 0.5) * sigma, x.shape).astype(np.float32)
        gate.check(i, i + 1, x, x - removed, ssim=None)
    verdict = gate.verdict()
    by_label = {s.label: s for s in gate.slices()}
    assert by_label["#4"].values["jump"] > 2.0
    assert all(by_label[f"#{n}"].values["jump"] < 1.0 for n in (1, 2, 6, 7))
    assert verdict.verdict == "WARN" and "jump" in verdict.text and "worst #4" in verdict.text


def test_expensive_checks_run_on_a_documented_sample() -> None:
    qa = QaSettings()
    assert full_sample(8, qa) == set(range(8))
    picked = full_sample(40, qa)
    assert picked == set(range(0, 40, 4)) | {39}
    gate, x, _ = _gate(20)
    for i in range(20):
        gate.check(i, i + 1, x, x, ssim=1.0)
    results = gate.slices()
    full = [r for r in results if not math.isnan(r.values["lowpass"])]
    assert [r.order[1] for r in full] == sorted(full_sample(20, qa))
    assert all(not math.isnan(r.values["bias"]) and not math.isnan(r.values["ssim"]) for r in results)
    assert all(math.isnan(r.values["voids"]) == (r.order[1] not in full_sample(20, qa)) for r in results)
    assert gate.verdict().full_slices == len(full)


def test_a_nan_check_is_no_finding() -> None:
    verdict, reasons = judge({"lowpass": math.nan, "voids": math.nan, "ssim": math.nan}, QaSettings())
    assert verdict == "PASS" and reasons == []


def test_strength_range_matches_the_pipelines() -> None:
    from enhancers.pipeline import STRENGTH_RANGE

    assert settings.STRENGTH_RANGE == STRENGTH_RANGE


def _doc(**extra: object) -> dict[str, object]:
    return {"destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]} | extra


def test_qa_settings_and_route_overrides() -> None:
    cfg = settings.parse(
        _doc(
            qa={"fail": {"lowpass": 2.0}, "actions": {"WARN": "deliver"}},
            routes=[
                {"modality": "CT", "enhancer": "nlm", "strength": 0.8, "qa": {"actions": {"FAIL": "flag"}}},
                {"modality": "MR", "enhancer": "nlm"},
            ],
        ),
        environ={},
    )
    assert cfg.qa.fail["lowpass"] == 2.0 and cfg.qa.fail["voids"] == 0.01 and cfg.qa.action("WARN") == "deliver"
    ct, mr = cfg.routes
    assert ct.strength == 0.8 and mr.strength == 1.0 and mr.qa is None
    assert ct.qa is not None and ct.qa.action("FAIL") == "flag" and ct.qa.action("WARN") == "deliver"
    assert ct.qa.fail["lowpass"] == 2.0  # the route starts from the global [qa]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"routes": [{"enhancer": "nlm", "strength": 2.5}]}, r"routes\[0\]\.strength = 2\.5: strength is a number"),
        ({"routes": [{"enhancer": "nlm", "strength": "x"}]}, r"routes\[0\]\.strength"),
        ({"qa": {"warn": {"lowpas": 1}}}, r"lowpas"),
        ({"qa": {"actions": {"FAIL": "drop"}}}, r"\[qa\]\.actions\.FAIL = 'drop'"),
        ({"qa": {"actions": {"PASS": "hold"}}}, r"PASS"),
        ({"qa": {"report": "yes"}}, r"\[qa\]\.report must be true or false"),
        ({"routes": [{"enhancer": "nlm", "qa": {"fail": {"ssim": -1}}}]}, r"routes\[0\]\.qa\.fail\.ssim"),
    ],
)
def test_bad_qa_and_strength_values_name_the_key(doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        settings.parse(_doc(**doc), environ={})


def _job(state: State) -> int:
    state.record_instance(sop_uid="1.2.3.1", series_uid="1.2.3", study_uid="1.2", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                          modality="CT", size=1, calling_aet="T", now=0.0)
    (job_id,) = state.make_jobs_for_stable_series(1.0, now=10.0)
    assert state.claim_job("queued", "enhancing") is not None
    return job_id


def test_hold_release_reject_transitions(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    job_id = _job(state)
    held = QaOutcome(qa_verdict="FAIL", qa_action="hold", qa_reasons="lowpass 3 > 1", noise_sigma=2.5, strength=1.0)
    assert state.finish_enhancement(job_id, destinations=["a"], derived_count=1, psnr=None, ssim=None, seconds=0,
                                    qa=held) == "held"
    assert state.claim_delivery("a") is None  # the sender never takes a held job
    assert state.recover() == {"enhancing": 0, "sending": 0}
    assert state.job(job_id).state == "held"
    assert state.counts()["held"] == 1 and state.qa_verdict_counts()["FAIL"] == 1
    job = state.release(job_id)
    assert job.state == "enhanced" and job.reviewed_at is not None and job.qa_verdict == "FAIL"
    with pytest.raises(StateError, match="not held"):
        state.release(job_id)
    claimed = state.claim_delivery("a")
    assert claimed is not None and claimed[0].id == job_id and claimed[1].destination == "a"

    other = State(tmp_path / "other.db")
    job_id = _job(other)
    other.finish_enhancement(job_id, destinations=["a"], derived_count=1, psnr=None, ssim=None, seconds=0, qa=held)
    job = other.reject(job_id)
    assert job.state == "rejected" and job.finished_at is not None and other.deliveries(job_id) == []
    with pytest.raises(StateError, match="only a held job can be released"):
        other.release(job_id)


def test_an_old_database_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State(path)
    job_id = _job(state)
    state.close()
    db = sqlite3.connect(path)  # what the previous release's schema looked like: none of the new columns
    for column in ("strength", "noise_sigma", "noise_method", "qa_verdict", "qa_action", "qa_reasons", "dr_psnr",
                   "dr_ssim", "reviewed_at"):
        db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    db.commit()
    assert "qa_verdict" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    db.close()
    again = State(path, worker_id=state.worker_id)  # the same worker, after the upgrade
    job = again.job(job_id)
    assert job.state == "enhancing" and job.qa_verdict is None
    assert {"held", "rejected"} <= set(JOB_STATES)
    again.finish_enhancement(job_id, destinations=["a"], derived_count=1, psnr=None, ssim=None, seconds=0,
                             qa=QaOutcome(qa_verdict="WARN", qa_action="flag", qa_reasons="r"))
    assert again.job(job_id).qa_verdict == "WARN"
    State(path).close()  # opening a migrated database again changes nothing


def test_the_frames_of_one_multiframe_instance_are_sampled_like_slices() -> None:
    gate, x, _ = _gate(1)
    for frame in range(20):
        gate.check(0, 5, x, x, ssim=1.0, frame=frame, frames=20)
    full = [r.order[2] for r in gate.slices() if not math.isnan(r.values["lowpass"])]
    assert full == sorted(full_sample(20, QaSettings()))
    assert gate.slices()[3].label == "#5.4"


def test_reprocess_strength_is_checked_and_recorded_on_the_job(tmp_path: Path) -> None:
    from gateway.admin.ops import reprocess
    from gateway.errors import GatewayError

    state = State(tmp_path / "state.db")
    _job(state)
    cfg = settings.parse(_doc(gateway={"var_dir": str(tmp_path)}), environ={})
    with pytest.raises(GatewayError, match=r"--strength 2\.5: strength is a number from 0 to 2"):
        reprocess(cfg, state, "1.2", strength=2.5)
    job_id = state.make_reprocess_job("1.2.3", enhancer=None, only_destination=None, strength=0.5)
    assert state.job(job_id).strength == 0.5
    assert state.make_reprocess_job("1.2.3", enhancer=None, only_destination=None) and (
        state.jobs(limit=1)[0].strength is None  # no --strength: the route's applies when the worker runs it
    )


def test_a_real_head_ct_volume_denoised_by_nlm_passes_every_check_including_jump() -> None:
    """No false alarm on a real series whose anatomy changes from slice to slice (InVesalius' Cranium, read
    where Debian installs it): nlm removes noise only, so the gate, jump included, must pass it."""
    from enhancers.corpus import INVESALIUS_CRANIUM, _inv3_slices
    from enhancers.pipeline import Pipeline
    from gateway.enhance.finish import input_metrics

    vol, vrange, _ = _inv3_slices(Path(INVESALIUS_CRANIUM), {"step": 3})
    noise = estimate_noise(vol, "CT")
    out = Pipeline("nlm", device="cpu").run(vol, modality="CT", value_range=vrange, noise=noise)
    gate = SeriesGate(QaSettings(), group="CT", sigma=noise.sigma, count=len(vol))
    for i in range(len(vol)):
        gate.check(i, i + 1, vol[i], out[i], ssim=input_metrics(vol[i], out[i], "denoise")[1])
    verdict = gate.verdict()
    jumps = [r.values["jump"] for r in gate.slices() if not math.isnan(r.values["jump"])]
    assert verdict.verdict == "PASS", verdict.text
    assert len(jumps) > len(vol) // 2 and max(jumps) < 1.0  # measured, not skipped


def test_deblur_is_judged_on_noise_gain_not_lowpass_on_a_real_radiograph() -> None:
    """Sharpening a blurred CR passes; strongly "deblurring" a CR that was not blurred amplifies its noise and
    fails. The strong sharpening is the first `unsharp-deblur` tuning (0.5 px x 14, made on a blur without
    noise after it); the mask tuned on the blurred acquisition (6 px x 0.1) is gentle and passes on the CR as
    received too."""
    from enhancers.classical import unsharp
    from enhancers.pipeline import Pipeline

    ds = pydicom.dcmread(testfile("RG1_UNCR.dcm"))
    full = modality_frames(ds)[0].astype(np.float32)
    cy, cx = full.shape[0] // 2, full.shape[1] // 2
    native = full[cy - 192 : cy + 192, cx - 192 : cx + 192]
    blurred = ndimage.gaussian_filter(native, 1.5)
    lo, hi = vrange = (float(full.min()), float(full.max()))
    tuned = Pipeline("unsharp-deblur", device="cpu")
    rule = QaSettings().for_task("deblur")
    assert "lowpass" not in rule.warn and "lowpass" not in rule.fail and rule.fail["gain"] == 4.0
    assert QaSettings().for_task("denoise") == QaSettings()

    def strong(x: np.ndarray) -> np.ndarray:
        return np.clip(unsharp((x - lo) / (hi - lo), radius=0.5, amount=14.0) * (hi - lo) + lo, lo, hi)

    def verdict(before: np.ndarray, qa: QaSettings, gentle: bool = False) -> tuple[str, list[str]]:
        after = tuned.run(before, modality="CR", value_range=vrange) if gentle else strong(before)
        gate = SeriesGate(qa, group="XR", sigma=estimate_noise(before, "XR").sigma, count=1)
        result = gate.check(0, 1, before, after, ssim=None)
        return result.verdict, result.reasons

    ok, reasons = verdict(blurred, rule)
    assert ok == "PASS", reasons
    assert verdict(blurred, QaSettings())[0] == "FAIL"  # the denoise thresholds would hold every deblur
    bad, reasons = verdict(native, rule)
    assert bad == "FAIL" and any(r.startswith("gain") for r in reasons), reasons
    ok, reasons = verdict(native, rule, gentle=True)
    assert ok == "PASS", reasons


def test_a_deblur_route_gets_its_task_rule_under_its_own_overrides() -> None:
    doc = _doc(routes=[{"modality": "CR", "enhancer": "unsharp-deblur", "task": "deblur",
                        "qa": {"warn": {"gain": 2.5}}}])
    (route,) = settings.parse(doc, environ={}).routes
    assert route.qa is not None and route.qa.warn["gain"] == 2.5 and route.qa.fail["gain"] == 4.0
    assert "lowpass" not in route.qa.fail
