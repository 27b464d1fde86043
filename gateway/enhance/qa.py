"""The QA gate: per-slice "do no harm" checks, a verdict per slice and per series, and what to do with it.

Why in the worker and not only in `evaluate --native`: a model that behaves on the evaluation images can still
remove anatomy, invent voids or print a grid on a series from another scanner; the radiologist would see it
beside the original. So every series is checked before it leaves, with the same formulas as the evaluation
(`enhancers.qa`, in units of the series' noise sigma), and a failing series is held instead of delivered.

Checks (thresholds in `[qa]`, see config/gateway.toml):
- lowpass, voids, grid, bias: `enhancers.qa.slice_checks` (formulas in its docstring).
- ssim: SSIM of the output against the received slice (the INPUT fidelity score the derived object already
  carries; computed once, used twice). Below the threshold is a finding.
- jump (slice-to-slice consistency): r = std over the foreground of (input - output) / noise sigma, the
  strength of what was removed; jump = |log2(r / median r of the 2 slices either side)|, so 1.0 means this
  slice lost twice (or half) as much as its neighbours. A model that breaks on one slice stands out.

Cost and sampling: bias, r and SSIM run on every slice (plain means, and SSIM is the INPUT score the derived
object carries anyway); low-pass, voids and grid (Gaussian filters, smoothed void maps and phase patterns,
~20-30 ms per 512x512 slice) on every `full_every`-th slice of the series (all slices of a series of at most
`full_min`), always including its first and last; the frames of a multi-frame instance are sampled the same
way. Their formulas stay in one place (`enhancers.qa`); a
harmful enhancer harms most slices, so a sample of one in four finds it. bench/qa_gate.py measures the cost
against the enhancement.

Verdict: a slice is FAIL when any check passes its `fail` threshold, else WARN when any passes its `warn`
threshold, else PASS; a check that could not be computed (too little anatomy: NaN) does not count. The series
verdict is its worst slice's, with the reasons counted over slices ("lowpass 2.31 > 1 on 5/20 slices").
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from enhancers import qa as checks
from gateway.settings import QA_CHECKS, QaSettings

_RANK = {"PASS": 0, "WARN": 1, "FAIL": 2}
JUMP_NEIGHBOURS = 2
#: r below this (in noise sigmas) is "nothing removed": a jump against it is not meaningful.
JUMP_FLOOR = 0.05


def worst(verdicts: list[str]) -> str:
    return max(verdicts, key=_RANK.__getitem__, default="PASS")


def finding(check: str, value: float, threshold: float) -> bool:
    """Whether `value` of `check` passes `threshold` in the direction `QA_CHECKS` gives it."""
    if not math.isfinite(value):
        return False
    rule = QA_CHECKS[check]
    if rule == "below":
        return value < threshold
    if rule == "abs":
        return abs(value) > threshold
    return value > threshold


@dataclass
class SliceResult:
    """One slice (a frame of an instance): its position, check values (NaN: not computed) and verdict."""

    order: tuple[float, int, int]  # (Instance Number or job index, job index, frame): the series' order
    label: str  # how reasons name the slice: "#12" (Instance Number) or "#12.3" (frame 3 of instance 12)
    values: dict[str, float]
    residual: float
    verdict: str = "PASS"
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesVerdict:
    """The gate's decision for a series."""

    verdict: str
    action: str
    reasons: tuple[str, ...]
    slices: int
    full_slices: int

    @property
    def text(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all checks within thresholds"


def judge(values: dict[str, float], settings: QaSettings) -> tuple[str, list[str]]:
    """Verdict and reasons of one slice's check values."""
    verdict, reasons = "PASS", []
    for check, value in values.items():
        fail = settings.fail.get(check)
        warn = settings.warn.get(check)
        if fail is not None and finding(check, value, fail):
            verdict = "FAIL"
            reasons.append(f"{check} {value:.3g} (FAIL {_op(check)} {fail:g})")
        elif warn is not None and finding(check, value, warn):
            verdict = worst([verdict, "WARN"])
            reasons.append(f"{check} {value:.3g} (WARN {_op(check)} {warn:g})")
    return verdict, reasons


def _op(check: str) -> str:
    return {"below": "<", "abs": "|x| >", "above": ">"}[QA_CHECKS[check]]


def full_sample(count: int, settings: QaSettings) -> set[int]:
    """Indexes (0..count-1) of the slices that get every check: all of a short series, else every k-th."""
    if count <= settings.full_min or settings.full_every <= 1:
        return set(range(count))
    picked = set(range(0, count, settings.full_every))
    picked.add(count - 1)
    return picked


class SeriesGate:
    """Collects the checks of every slice of one series (from the derive thread) and decides at the end."""

    def __init__(self, settings: QaSettings, *, group: str | None, sigma: float, count: int) -> None:
        self.settings = settings
        self.group = group
        self.sigma = float(sigma)
        self.full = full_sample(count, settings)
        self._slices: list[SliceResult] = []
        self._lock = threading.Lock()

    def check(
        self,
        index: int,
        instance_number: int | None,
        before: npt.NDArray[np.floating],
        after: npt.NDArray[np.floating],
        *,
        ssim: float | None,
        frame: int = 0,
        frames: int = 1,
    ) -> SliceResult:
        """Check one slice (`after` already on the input grid), record it; returns its result (without jump)."""
        result = self.measure(index, instance_number, before, after, ssim=ssim, frame=frame, frames=frames)
        self.record(result)
        return result

    def measure(
        self,
        index: int,
        instance_number: int | None,
        before: npt.NDArray[np.floating],
        after: npt.NDArray[np.floating],
        *,
        ssim: float | None,
        frame: int = 0,
        frames: int = 1,
    ) -> SliceResult:
        """The checks of one slice without recording them: what a derive process computes (`derive_pool`) and
        hands back to the worker's gate, which records it (`record`) and decides on the whole series."""
        inp = np.asarray(before, dtype=np.float32)
        out = np.asarray(after, dtype=np.float32)
        values = {name: math.nan for name in QA_CHECKS}
        residual = math.nan
        mask = checks.foreground_mask(inp, self.group)
        n = int(np.count_nonzero(mask))
        if n >= checks.MIN_FOREGROUND_PIXELS and inp.shape == out.shape and min(inp.shape) >= 8:
            s = max(self.sigma, 1e-6 * max(float(np.ptp(inp)), 1.0))
            if index in self.full and frame in full_sample(frames, self.settings):
                values.update(checks.slice_checks(inp, out, sigma=self.sigma, group=self.group, mask=mask).as_dict())
            else:  # bias is a plain mean (enhancers.qa's formula); the others need its filters
                values["bias"] = float(np.mean(out[mask] - inp[mask], dtype=np.float64)) / s
            residual = float(np.std(inp[mask] - out[mask], dtype=np.float64)) / s
        if ssim is not None:
            values["ssim"] = float(ssim)
        verdict, reasons = judge({k: v for k, v in values.items() if k != "jump"}, self.settings)
        number = index + 1 if instance_number is None else instance_number
        label = f"#{number}" if frames == 1 else f"#{number}.{frame + 1}"
        return SliceResult((float(number), index, frame), label, values, residual, verdict, reasons)

    def record(self, result: SliceResult) -> None:
        """Add one measured slice to the series (any thread)."""
        with self._lock:
            self._slices.append(result)

    def slices(self) -> list[SliceResult]:
        with self._lock:
            return sorted(self._slices, key=lambda r: r.order)

    def _apply_jumps(self, ordered: list[SliceResult]) -> None:
        r = np.array([s.residual for s in ordered], dtype=np.float64)
        for i, result in enumerate(ordered):
            lo, hi = max(0, i - JUMP_NEIGHBOURS), min(len(ordered), i + JUMP_NEIGHBOURS + 1)
            around = np.concatenate([r[lo:i], r[i + 1 : hi]])
            around = around[np.isfinite(around)]
            if not around.size or not math.isfinite(r[i]):
                continue
            ref = float(np.median(around))
            if max(ref, r[i]) < JUMP_FLOOR:
                continue
            jump = abs(math.log2(max(r[i], JUMP_FLOOR) / max(ref, JUMP_FLOOR)))
            result.values["jump"] = jump
            verdict, reasons = judge({"jump": jump}, self.settings)
            result.verdict = worst([result.verdict, verdict])
            result.reasons += reasons

    def verdict(self) -> SeriesVerdict:
        """The series' verdict (worst slice), its action, and reasons counted over slices."""
        ordered = self.slices()
        if len(ordered) >= 3:
            self._apply_jumps(ordered)
        verdict = worst([s.verdict for s in ordered])
        reasons: list[str] = []
        for check in QA_CHECKS:
            for level in ("FAIL", "WARN"):
                hit = [s for s in ordered if any(r.startswith(f"{check} ") and f"({level} " in r for r in s.reasons)]
                if not hit:
                    continue
                limit = (self.settings.fail if level == "FAIL" else self.settings.warn)[check]
                worst_slice = max(hit, key=lambda s: _badness(check, s.values[check]))
                reasons.append(
                    f"{check} {worst_slice.values[check]:.3g} {_op(check)} {limit:g} ({level}) on"
                    f" {len(hit)}/{len(ordered)} slices, worst {worst_slice.label}"
                )
                break  # a check's FAIL slices already say it; its WARN ones would repeat it
        full = sum(1 for s in ordered if math.isfinite(s.values["lowpass"]))
        return SeriesVerdict(verdict, self.settings.action(verdict), tuple(reasons), len(ordered), full)


def _badness(check: str, value: float) -> float:
    rule = QA_CHECKS[check]
    return -value if rule == "below" else abs(value) if rule == "abs" else value


def judge_stack(
    before: npt.NDArray[np.floating],
    after: npt.NDArray[np.floating],
    *,
    settings: QaSettings,
    group: str | None,
    sigma: float,
    ssim: float | None,
) -> SeriesVerdict | None:
    """The gate over the frames of one image (the console's uploads); `after` already on the input grid.

    None when the gate is off. The frames are one series of one instance, sampled as the worker samples.
    """
    if not settings.enabled:
        return None
    frames = np.asarray(before)
    gate = SeriesGate(settings, group=group, sigma=sigma, count=1)
    for f in range(frames.shape[0]):
        gate.check(0, None, frames[f], np.asarray(after)[f], ssim=ssim, frame=f, frames=frames.shape[0])
    return gate.verdict()
