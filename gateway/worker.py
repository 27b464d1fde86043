"""The enhancement worker: the only place where DICOM meets tensors.

Why a separate process: a long inference must never stall reception, and torch must not be forked with CUDA
initialised, so the service starts workers with the `spawn` method. A worker gets work only through the
state store and files only through the spool. Slices stream through the pipeline in batches: memory stays
flat in series size.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from structlog.contextvars import bound_contextvars

from dicom_utils.classify import skip_reason
from dicom_utils.derive import derived_series_uid
from dicom_utils.errors import DicomUtilsError
from dicom_utils.pixels import modality_frames, value_range
from enhancers.pipeline import Pipeline
from enhancers.registry import info as enhancer_info
from gateway import logs, routing
from gateway.derivation import build_derived, derivation_options, make_pipeline
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.state import Instance, Job, JobTakenOver, State

log = logs.get("gateway.worker")


@dataclass
class _Decoded:
    instance: Instance
    ds: Dataset
    frames: np.ndarray
    vrange: tuple[float, float]


class ServiceGone(Exception):
    """The service that spawned this worker died: stop now, its successor re-runs the job."""


class Worker:
    """Processes queued jobs one at a time; pipelines are built once per enhancer and kept."""

    def __init__(self, settings: Settings, state: State, spool: Spool, parent: int | None = None) -> None:
        self.parent = parent
        self.settings = settings
        self.state = state
        self.spool = spool
        self._pipelines: dict[str, Pipeline] = {}
        self.options = derivation_options(settings)

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            self._pipelines[name] = make_pipeline(self.settings, name)
        return self._pipelines[name]

    def run_once(self) -> bool:
        """Claim and process one job; False when nothing was queued."""
        job = self.state.claim_job("queued", "enhancing")
        if job is None:
            return False
        with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
            try:
                self.process(job)
            except (ServiceGone, JobTakenOver) as exc:
                log.warning("job.abandoned", reason=str(exc))
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
            if self.parent is not None and os.getppid() != self.parent:
                raise ServiceGone("the service that spawned this worker is gone")
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
                result, data, p, s = build_derived(
                    item.ds, item.frames, values, info=info, task=task, processing_ms=per_ms, options=self.options
                )
                if p is not None and s is not None:
                    psnrs.append(p)
                    ssims.append(s)
                self.spool.store_outgoing(job.id, str(result.SOPInstanceUID), data)
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
            except Exception as exc:  # noqa: BLE001 - one undecodable instance must not fail its series
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


def run(settings: Settings, parent: int, poll_seconds: float = 0.5) -> None:
    """Entry point of a worker process (spawned): loop until SIGTERM or until the service `parent` is gone."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides
    if os.getppid() != parent:
        return  # the service died while this process was still importing
    logs.configure()
    state = State(settings.state_db)
    worker = Worker(settings, state, Spool(settings.spool_dir), parent=parent)
    log.info("worker.started")
    while not stop.is_set() and os.getppid() == parent:
        if not worker.run_once():
            stop.wait(poll_seconds)
    state.close()
    log.info("worker.stopped")
