"""Enhance one uploaded image the way the worker enhances one instance of a series.

Why a copy of the worker's per-instance step: the console must show exactly what the gateway would send to
PACS (same pipeline, same INPUT metrics, same QA flag, same derived object), but `gateway.worker.Worker`
works on jobs from the state store. Until the per-instance step is shared (see the report in docs/web.md),
this module calls the same dicom_utils and enhancers functions in the same order; `QA_MIN_SSIM` is the
worker's own constant so the QA rule cannot drift.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_utils import private_tags
from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance
from dicom_utils.pixels import modality_frames, value_range
from enhancers import registry
from enhancers.metrics import psnr, ssim
from enhancers.pipeline import Pipeline
from enhancers.registry import EnhancerInfo
from gateway import __version__
from gateway.settings import Settings
from gateway.web.imaging import downsample2
from gateway.worker import QA_MIN_SSIM

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


def input_metrics(before: FloatArray, after: FloatArray, task: str) -> tuple[float | None, float | None]:
    """PSNR/SSIM of the enhanced image against the input, data range = the input's observed range.

    The worker's `_metrics` rule: a super-resolved image is area-averaged back to the input grid first; a
    flat input (no range) has no metric.
    """
    ref = before.astype(np.float64)
    test = (downsample2(after) if task == "sr2x" else after).astype(np.float64)
    data_range = float(ref.max() - ref.min())
    if data_range <= 0 or ref.shape != test.shape or min(ref.shape[-2:]) < 7:
        return None, None
    return psnr(ref, test, data_range), ssim(ref, test, data_range)


def choose_enhancer(choice: str, task: str, modality: str) -> EnhancerInfo:
    """The enhancer to run: the user's choice, or the gateway's default for the modality and task ("auto")."""
    if task not in registry.TASKS:
        raise EnhanceError(f"task {task!r} is not one of {', '.join(registry.TASKS)}")
    name = registry.default_enhancer(modality, task) if choice in ("", "auto") else choice
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
        self.options = DerivationOptions(
            software_version=__version__,
            series_number_offset=settings.enhance.series_number_offset,
            description_suffix=settings.enhance.description_suffix,
        )

    def pipeline(self, name: str) -> Pipeline:
        """A pipeline per enhancer, built on first use with the worker's device/batch/thread settings."""
        if name not in self._pipelines:
            cfg = self.settings.enhance
            self._pipelines[name] = Pipeline(
                name, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads or None
            )
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
        info = choose_enhancer(choice, task, modality)
        with self._lock:
            progress("loading the enhancer", 0.15)
            pipe = self.pipeline(info.name)
            progress(f"enhancing with {info.name} on {pipe.device}", 0.25)
            t0 = time.monotonic()
            try:
                out = pipe.run(values, modality=modality, value_range=vrange)
            except ValueError as exc:
                raise EnhanceError(str(exc)) from None
            per_ms = (time.monotonic() - t0) * 1000.0 / max(1, values.shape[0])
        progress("measuring PSNR and SSIM", 0.75)
        p, s = input_metrics(values, out, task)
        qa = "PASS" if s is None or s >= QA_MIN_SSIM else "WARN"
        derived: Dataset | None = None
        data: bytes | None = None
        if source is not None:
            progress("building the derived DICOM object", 0.9)
            enh = Enhancement(
                enhancer=info.name,
                version=info.version,
                task=task,
                weights_sha256=info.weights_sha256,
                psnr=p,
                ssim=s,
                metric_basis="INPUT",
                processing_ms=per_ms,
                qa_flag=qa,
            )
            derived = derive_instance(source, out, enh, self.options)
            buf = io.BytesIO()
            derived.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
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
