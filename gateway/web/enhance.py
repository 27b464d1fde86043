"""Enhance one uploaded image the way the worker enhances one instance of a series.

Why through `gateway.enhance.finish` and `gateway.enhance.qa`: the console must show exactly what the gateway would send to
PACS (same pipeline settings, same noise estimate, same INPUT metrics, same QA gate, same derived object); the
worker calls the same functions, so the two cannot drift. An upload is one instance: no DEGRADE_RESTORE score
(it needs the series) and strength 1.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_utils import private_tags
from dicom_utils.pixels import modality_frames, value_range
from enhancers import registry
from enhancers.noise import estimate_noise
from enhancers.pipeline import Pipeline, resolve_device
from enhancers.registry import EnhancerInfo
from gateway.enhance import routing
from gateway.enhance.finish import (
    SeriesFacts,
    build_derived,
    derivation_options,
    input_metrics,
    make_pipeline,
    qa_flag,
    to_input_grid,
)
from gateway.enhance.qa import judge_stack
from gateway.settings import Settings

FloatArray = npt.NDArray[np.float32]
Progress = Callable[[str, float], None]


class EnhanceError(ValueError):
    """The upload cannot be enhanced as asked; the message is shown to the user as it is."""


@dataclass(frozen=True)
class Outcome:
    """What one enhancement produced: values before/after, the derived object (DICOM uploads) and metrics."""

    info: EnhancerInfo
    task: str
    modality: str
    original: FloatArray
    enhanced: FloatArray
    psnr: float | None
    ssim: float | None
    qa_flag: str
    processing_ms: float
    device: str
    derived: Dataset | None
    derived_bytes: bytes | None
    block: dict[str, object]


def choose_enhancer(choice: str, task: str, modality: str, *, quality: bool = False) -> EnhancerInfo:
    """The enhancer to run: the user's choice, or the gateway's default for the modality and task ("auto"; its
    quality variant with `quality`, as the worker picks for unrouted series)."""
    if task not in registry.TASKS:
        raise EnhanceError(f"task {task!r} is not one of {', '.join(registry.TASKS)}")
    name = registry.default_enhancer(modality, task, quality=quality) if choice in ("", "auto") else choice
    try:
        info = registry.info(name)
    except KeyError as exc:
        raise EnhanceError(str(exc)) from None
    if info.task != task:
        raise EnhanceError(
            f"enhancer {info.name!r} does {info.task}, not {task}: choose task {info.task} or another enhancer"
        )
    return info


class Enhancer:
    """Runs uploads through cached pipelines, one at a time (the console shares the machine with the gateway)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        self.options = derivation_options(settings)

    @functools.cached_property
    def quality(self) -> bool:
        """Whether "automatic" means the quality variants: the worker's rule (`[enhance] default_variant`, and
        with "auto" whether the pipelines' device is a GPU), so an upload shows what the gateway would send.

        A `device = "cuda"` without a GPU reads as fast here: the upload page still renders, and the upload
        itself fails in `make_pipeline` with the message the worker gives.
        """
        try:
            device = resolve_device(self.settings.enhance.device)
        except RuntimeError:
            return False
        return routing.wants_quality(self.settings.enhance.default_variant, device)

    def pipeline(self, name: str) -> Pipeline:
        """A pipeline per enhancer, built on first use with the worker's device/batch/thread settings."""
        if name not in self._pipelines:
            self._pipelines[name] = make_pipeline(self.settings, name)
        return self._pipelines[name]

    def run(
        self,
        values: FloatArray,
        vrange: tuple[float, float],
        *,
        modality: str,
        choice: str,
        task: str,
        source: Dataset | None,
        progress: Progress,
    ) -> Outcome:
        """Enhance `values` (frames, H, W); with a DICOM `source`, build the derived object as the worker does."""
        info = choose_enhancer(choice, task, modality, quality=self.quality)
        with self._lock:
            progress("loading the enhancer", 0.15)
            pipe = self.pipeline(info.name)
            progress(f"enhancing with {info.name} on {pipe.device}", 0.25)
            t0 = time.monotonic()
            group = registry.modality_group(modality)
            noise = estimate_noise(values, group)
            try:
                out = pipe.run(values, modality=modality, value_range=vrange, noise=noise)
            except ValueError as exc:
                raise EnhanceError(str(exc)) from None
            per_ms = (time.monotonic() - t0) * 1000.0 / max(1, values.shape[0])
        progress("measuring PSNR and SSIM, QA checks", 0.75)
        p, s = input_metrics(values, out, task)
        verdict = judge_stack(
            values, to_input_grid(out, task),
            settings=self.settings.qa.for_task(task), group=group, sigma=noise.sigma, ssim=s,
        )
        qa = verdict.verdict if verdict is not None else qa_flag(s)
        facts = SeriesFacts(
            noise_sigma=noise.sigma,
            noise_method=noise.method,
            noise_background_sigma=noise.background_sigma,
            strength=1.0,
            series_qa=qa if verdict is not None else "",
            qa_reasons=verdict.text if verdict is not None else "",
        )
        derived: Dataset | None = None
        data: bytes | None = None
        if source is not None:
            progress("building the derived DICOM object", 0.9)
            derived, data, p, s = build_derived(
                source, values, out, info=info, task=task, processing_ms=per_ms, options=self.options,
                metrics=(p, s), flag=qa, series=facts,
            )
            block = private_tags.read_block(derived)
        else:
            block = {
                "psnr": None if p is None else (private_tags.PSNR_INFINITE_AS if math.isinf(p) else p),
                "ssim": s,
                "metric_basis": "INPUT",
                "enhancer": info.name,
                "version": info.version,
                "weights_sha256": info.weights_sha256,
                "processing_ms": per_ms,
                "qa_flag": qa,
                "task": task,
                "noise_sigma": noise.sigma,
                "qa_reasons": facts.qa_reasons,
            }
        return Outcome(
            info=info,
            task=task,
            modality=modality,
            original=values,
            enhanced=out,
            psnr=p,
            ssim=s,
            qa_flag=qa,
            processing_ms=per_ms,
            device=pipe.device,
            derived=derived,
            derived_bytes=data,
            block=block,
        )


def dicom_values(ds: Dataset) -> tuple[FloatArray, tuple[float, float]]:
    """Modality values (frames, H, W) and the storable value range of a DICOM instance (may raise
    PixelDecodeError, whose message names the transfer syntax and the fix)."""
    frames: FloatArray = modality_frames(ds).astype(np.float32, copy=False)
    return frames, value_range(ds)
