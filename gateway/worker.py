"""The enhancement worker: the only place where DICOM meets tensors.

Why a separate process: a long inference must never stall reception, and torch must not be forked with CUDA
initialised, so the service starts workers with the `spawn` method. A worker gets work only through the
state store and files only through the spool. Slices stream through the pipeline in batches: memory stays
flat in series size.
"""

from __future__ import annotations

import io
import multiprocessing.synchronize
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from structlog.contextvars import bound_contextvars

from dicom_utils.classify import skip_reason
from dicom_utils.derive import DerivationOptions, Enhancement, derive_instance, derived_series_uid
from dicom_utils.errors import DicomUtilsError
from dicom_utils.pixels import modality_frames, value_range
from enhancers.metrics import psnr, ssim
from enhancers.pipeline import Pipeline
from enhancers.registry import info as enhancer_info
from gateway import __version__, logs, routing
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.state import Instance, Job, State

log = logs.get("gateway.worker")

QA_MIN_SSIM = 0.5  # an enhanced slice this unlike its input is flagged WARN for the radiologist


@dataclass
class _Decoded:
    instance: Instance
    ds: Dataset
    frames: np.ndarray
    vrange: tuple[float, float]


def _downsample2(values: np.ndarray) -> np.ndarray:
    """2x2 area mean: brings a super-resolved slice back to the input grid for the INPUT metrics."""
    n, h, w = values.shape
    out: np.ndarray = values[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return out


def _metrics(before: np.ndarray, after: np.ndarray, task: str) -> tuple[float | None, float | None]:
    """PSNR/SSIM of the enhanced image against the received input, data range = the input's range."""
    ref = before.astype(np.float64)
    test = _downsample2(after) if task == "sr2x" else after
    data_range = float(ref.max() - ref.min())
    if data_range <= 0 or ref.shape != test.shape:
        return None, None
    return psnr(ref, test.astype(np.float64), data_range), ssim(ref, test.astype(np.float64), data_range)


class Worker:
    """Processes queued jobs one at a time; pipelines are built once per enhancer and kept."""

    def __init__(self, settings: Settings, state: State, spool: Spool) -> None:
        self.settings = settings
        self.state = state
        self.spool = spool
        self._pipelines: dict[str, Pipeline] = {}
        self.options = DerivationOptions(
            software_version=__version__,
            series_number_offset=settings.enhance.series_number_offset,
            description_suffix=settings.enhance.description_suffix,
        )

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            cfg = self.settings.enhance
            self._pipelines[name] = Pipeline(
                name, device=cfg.device, batch_size=cfg.batch_size, threads=cfg.threads or None
            )
        return self._pipelines[name]

    def run_once(self) -> bool:
        """Claim and process one job; False when nothing was queued."""
        job = self.state.claim_job("queued", "enhancing")
        if job is None:
            return False
        with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
            try:
                self.process(job)
            except Exception as exc:
                snd = self.settings.sender
                new_state = self.state.fail_job(
                    job.id, "enhancing", f"{type(exc).__name__}: {exc}",
                    base=snd.base_seconds, cap=snd.cap_seconds, max_attempts=snd.max_attempts,
                )
                log.exception("job.enhance_failed", state=new_state)
        return True

    def process(self, job: Job) -> None:
        started = time.monotonic()
        instances = self.state.job_instances(job.id)
        header = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
        reason = skip_reason(header)
        if reason is not None:
            self.state.skip_job(job.id, reason)
            log.info("job.skipped", reason=reason, instances=len(instances), modality=job.modality)
            return
        if job.enhancer:  # chosen by `reprocess --enhancer`
            name, task = job.enhancer, enhancer_info(job.enhancer).task
        else:
            name, task = routing.choose(self.settings.routes, job.modality, str(header.get("SeriesDescription", "")))
        pipe = self.pipeline(name)
        info = pipe.info
        self.state.set_job_enhancer(
            job.id, info.name, info.version, derived_series_uid(job.series_uid, info.name, info.version), pipe.device
        )
        self.spool.clear_outgoing(job.id)
        derived = 0
        problems: list[str] = []
        psnrs: list[float] = []
        ssims: list[float] = []
        compute = 0.0
        for batch in self._batches(instances, problems):
            stack = np.concatenate([d.frames for d in batch])
            t0 = time.monotonic()
            out = pipe.run(stack, modality=job.modality, value_range=batch[0].vrange)
            compute += time.monotonic() - t0
            per_ms = (time.monotonic() - t0) * 1000.0 / len(batch)
            offset = 0
            for item in batch:
                n = item.frames.shape[0]
                values = out[offset : offset + n]
                offset += n
                p, s = _metrics(item.frames, values, task)
                if p is not None and s is not None:
                    psnrs.append(p)
                    ssims.append(s)
                enh = Enhancement(
                    enhancer=info.name,
                    version=info.version,
                    task=task,
                    weights_sha256=info.weights_sha256,
                    psnr=p,
                    ssim=s,
                    metric_basis="INPUT",
                    processing_ms=per_ms,
                    qa_flag="PASS" if s is None or s >= QA_MIN_SSIM else "WARN",
                )
                result = derive_instance(item.ds, values, enh, self.options)
                buf = io.BytesIO()
                result.save_as(buf, enforce_file_format=True)
                self.spool.store_outgoing(job.id, str(result.SOPInstanceUID), buf.getvalue())
                derived += 1
        if derived == 0:
            raise DicomUtilsError(f"no instance of the series could be enhanced: {'; '.join(problems[:3])}")
        error = None
        if problems:
            error = f"{len(problems)} of {len(instances)} instances not enhanced: {'; '.join(problems[:3])}"
        seconds = time.monotonic() - started
        self.state.finish_enhancement(
            job.id,
            destinations=[job.only_destination] if job.only_destination else [d.name for d in self.settings.destinations],
            derived_count=derived,
            psnr=float(np.mean(psnrs)) if psnrs else None,
            ssim=float(np.mean(ssims)) if ssims else None,
            seconds=seconds,
            error=error,
        )
        log.info(
            "job.enhanced",
            enhancer=info.name,
            version=info.version,
            device=pipe.device,
            task=task,
            instances=len(instances),
            derived=derived,
            not_enhanced=len(problems),
            psnr=round(float(np.mean(psnrs)), 2) if psnrs else None,
            ssim=round(float(np.mean(ssims)), 4) if ssims else None,
            compute_seconds=round(compute, 3),
            seconds=round(seconds, 3),
        )

    def _batches(self, instances: list[Instance], problems: list[str]) -> Iterator[list[_Decoded]]:
        """Decode instances lazily into batches of same-shaped frames, at most `batch_size` frames each."""
        limit = self.settings.enhance.batch_size
        batch: list[_Decoded] = []
        frames = 0
        for inst in instances:
            try:
                ds = pydicom.dcmread(inst.path)
                reason = skip_reason(ds)
                if reason is not None:
                    problems.append(f"{inst.sop_uid}: {reason}")
                    continue
                item = _Decoded(inst, ds, modality_frames(ds), value_range(ds))
            except (DicomUtilsError, OSError, ValueError) as exc:
                problems.append(f"{inst.sop_uid}: {exc}")
                log.warning("instance.not_enhanced", sop_instance_uid=inst.sop_uid, reason=str(exc)[:300])
                continue
            if batch and (item.frames.shape[1:] != batch[0].frames.shape[1:] or frames + len(item.frames) > limit):
                yield batch
                batch, frames = [], 0
            batch.append(item)
            frames += len(item.frames)
        if batch:
            yield batch


def run(settings: Settings, stop: multiprocessing.synchronize.Event, poll_seconds: float = 0.5) -> None:
    """Entry point of a worker process (spawned): loop until `stop` is set or the parent is gone.

    Why watch the parent: after a SIGKILL of the service an orphaned worker would keep claiming jobs beside
    the restarted service's own workers.
    """
    logs.configure()
    parent = os.getppid()
    state = State(settings.state_db)
    worker = Worker(settings, state, Spool(settings.spool_dir))
    log.info("worker.started")
    while not stop.is_set() and os.getppid() == parent:
        if not worker.run_once():
            stop.wait(poll_seconds)
    state.close()
    log.info("worker.stopped")
