"""One instance's last step, shared by the worker and the web console: metrics, QA flag, derived object.

Why shared: the console must show exactly what the gateway sends to PACS (same INPUT metrics, same QA rule,
same derived object), so both call these functions instead of keeping copies that could drift.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_utils.derive import TASK_SCALE, DerivationOptions, Enhancement, derive_instance
from enhancers.metrics import psnr, ssim_fast
from enhancers.registry import EnhancerInfo
from gateway import __version__
from gateway.settings import Settings

if TYPE_CHECKING:
    from enhancers.pipeline import Pipeline

QA_MIN_SSIM = 0.5  # an enhanced slice this unlike its input is flagged WARN for the radiologist
MIN_METRIC_SIZE = 7  # SSIM's window: smaller slices get no metrics rather than an error


def to_input_grid(values: npt.NDArray[np.floating], task: str) -> npt.NDArray[np.float32]:
    """A super-resolved image area-averaged back to the received grid (2x2 for sr2x, 4x4 for sr4x); the image
    itself for same-size tasks. What input metrics and the QA gate compare with the received slice."""
    scale = TASK_SCALE.get(task, 1)
    if scale == 1:
        return np.asarray(values, dtype=np.float32)
    arr = np.asarray(values, dtype=np.float32)
    h, w = arr.shape[-2] // scale * scale, arr.shape[-1] // scale * scale
    cut = arr[..., :h, :w]
    out = cut.reshape(cut.shape[:-2] + (h // scale, scale, w // scale, scale)).mean(axis=(-3, -1))
    return np.asarray(out, dtype=np.float32)


def input_metrics(
    before: npt.NDArray[np.floating], after: npt.NDArray[np.floating], task: str
) -> tuple[float | None, float | None]:
    """PSNR/SSIM of the enhanced image against the received input (basis INPUT: fidelity, not quality).

    Data range = the input's observed range; a super-resolved image is area-averaged back to the input grid;
    a flat or tiny input has no metric.
    """
    # float32 is plenty for a QA figure: `ssim_fast` agrees with the float64 `ssim` within 1e-5 and costs a
    # fifth of it (~7 instead of ~35 ms per 512x512 slice, the largest host cost per slice; bench/pipeline_host)
    ref = np.asarray(before, dtype=np.float32)
    test = to_input_grid(after, task)
    data_range = float(ref.max() - ref.min())
    if data_range <= 0 or ref.shape != test.shape or min(ref.shape[-2:]) < MIN_METRIC_SIZE:
        return None, None
    return psnr(ref, test, data_range), ssim_fast(ref, test, data_range)


def qa_flag(ssim_value: float | None) -> str:
    return "PASS" if ssim_value is None or ssim_value >= QA_MIN_SSIM else "WARN"


@dataclass(frozen=True)
class SeriesFacts:
    """What the worker measured on the whole series, written into every derived instance of it."""

    noise_sigma: float | None = None
    noise_method: str = ""
    noise_background_sigma: float | None = None
    strength: float | None = None
    dr_psnr: float | None = None
    dr_ssim: float | None = None
    dr_slices: tuple[int, ...] = ()
    series_qa: str = ""
    qa_reasons: str = ""
    series_number: int | None = None  # allocated per derived series (series_number_candidates); None: the default


def series_number_candidates(source_number: object, offset: int, count: int = 20) -> list[int]:
    """The Series Numbers a derived series may take, best first: source + offset, + 2 x offset, + 3 x offset...

    The rule: the first derived series of a source series numbered 3 is 1003 (offset 1000), as it always was;
    a second one of the same source (another enhancer or task, `reprocess --enhancer`) gets 2003, a third 3003.
    The state store hands out the first candidate no other derived series of the study holds and keeps it for
    that derived series (`StateStore.derived_series_number`), so the same enhancer again keeps its number.

    Why allocated from state and not computed from the enhancer's name: a number must fit an IS and read
    like a series number to a PACS user; squeezing a name into it (a hash) can make two enhancers collide,
    and a PACS viewer that sorts or hangs series by number would then show two series as one. Allocation
    never collides, keeps the familiar source + 1000, and stays stable across restarts and versions.
    """
    first = (int(str(source_number)) if source_number not in (None, "") else 0) + offset
    step = offset or 1000  # offset 0 (derived series keep the source's number): the others still step by 1000
    return [n for n in (first + k * step for k in range(count)) if -(2**31) <= n < 2**31]


def report_number_candidates(derived_number: object, offset: int, count: int = 20) -> list[int]:
    """The Series Numbers the SR report of a derived series may take, best first: the derived series' + 1 (what
    it always was), then + 1 + offset, + 1 + 2 x offset...

    Why allocated like a derived series' (`StateStore.derived_series_number`, under the report's own series
    UID): derived + 1 is the next source's first derived number (source 2's report 1003, source 3's derived
    series 1003), and a viewer that hangs series by number would show the two as one. Why the fallbacks step
    by the offset and not by 1: 1003 + 1 = 1004 is source 4's first derived number, while 1003 + 1000 is a
    slot only a second enhancer of source 3 would want.
    """
    first = (int(str(derived_number)) if derived_number not in (None, "") else 0) + 1
    step = offset or 1000
    return [n for n in (first + k * step for k in range(count)) if -(2**31) <= n < 2**31]


def derivation_options(settings: Settings) -> DerivationOptions:
    return DerivationOptions(
        software_version=__version__,
        series_number_offset=settings.enhance.series_number_offset,
        description_suffix=settings.enhance.description_suffix,
    )


def make_pipeline(settings: Settings, name: str) -> Pipeline:
    """A pipeline with the configured device, batch size and threads.

    torch is imported here and not at the top: the derive processes (`derive_pool`) import this module for
    `build_derived` and must not pay torch's start-up time and memory for code they never run.
    """
    from enhancers.pipeline import Pipeline

    cfg = settings.enhance
    return Pipeline(name, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads or None)


def build_derived(
    source: Dataset,
    before: npt.NDArray[np.floating],
    after: npt.NDArray[np.floating],
    *,
    info: EnhancerInfo,
    task: str,
    processing_ms: float,
    options: DerivationOptions,
    metrics: tuple[float | None, float | None] | None = None,
    flag: str | None = None,
    series: SeriesFacts | None = None,
) -> tuple[Dataset, bytes, float | None, float | None]:
    """Metrics + QA + derived object for one instance; returns (dataset, Part 10 bytes, psnr, ssim).

    `metrics` (INPUT psnr, ssim) and `flag` (this instance's QA verdict) when the caller computed them (the
    worker's QA gate), else computed here with the SSIM-only rule. With a DEGRADE_RESTORE score in `series`
    the headline PSNR/SSIM are that score and the INPUT ones go to the fidelity elements; the returned
    psnr/ssim are always the INPUT ones.
    """
    p, s = input_metrics(before, after, task) if metrics is None else metrics
    facts = series or SeriesFacts()
    restored = facts.dr_psnr is not None and facts.dr_ssim is not None
    enh = Enhancement(
        enhancer=info.name,
        version=info.version,
        task=task,
        weights_sha256=info.weights_sha256,
        psnr=facts.dr_psnr if restored else p,
        ssim=facts.dr_ssim if restored else s,
        metric_basis="DEGRADE_RESTORE" if restored else "INPUT",
        processing_ms=processing_ms,
        qa_flag=flag or qa_flag(s),
        input_psnr=p if restored else None,
        input_ssim=s if restored else None,
        noise_sigma=facts.noise_sigma,
        noise_method=facts.noise_method,
        noise_background_sigma=facts.noise_background_sigma,
        strength=facts.strength,
        series_qa=facts.series_qa,
        qa_reasons=facts.qa_reasons,
        degrade_restore_slices=facts.dr_slices,
        hallucination_risk=info.hallucination_risk,
    )
    if facts.series_number is not None:
        options = replace(options, series_number=facts.series_number)
    derived = derive_instance(source, np.asarray(after, dtype=np.float32), enh, options)
    buf = io.BytesIO()
    derived.save_as(buf, enforce_file_format=True)
    return derived, buf.getvalue(), p, s
