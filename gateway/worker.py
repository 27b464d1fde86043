"""The enhancement worker: the only place where DICOM meets tensors.

Why a separate process: a long inference must never stall reception, and torch must not be forked with CUDA
initialised, so the service starts workers with the `spawn` method. A worker gets work only through the
state store and files only through the spool. Slices stream through the pipeline in batches: memory stays
flat in series size.
"""

from __future__ import annotations

import contextvars
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from structlog.contextvars import bound_contextvars

from dicom_utils.classify import skip_reason
from dicom_utils.derive import derived_series_uid
from dicom_utils.errors import DicomUtilsError
from dicom_utils.pixels import modality_frames, value_range
from enhancers.pipeline import Pipeline
from enhancers.registry import EnhancerInfo
from enhancers.registry import info as enhancer_info
from gateway import logs, routing
from gateway.derivation import build_derived, derivation_options, make_pipeline
from gateway.settings import Settings
from gateway.signals import StopSignals
from gateway.spool import Spool
from gateway.state import Instance, Job, JobTakenOver, State

log = logs.get("gateway.worker")


@dataclass
class _Decoded:
    instance: Instance
    ds: Dataset
    frames: np.ndarray
    vrange: tuple[float, float]


@dataclass
class _Finished:
    """What the derive thread reports back: derived count and the INPUT metrics of each derived instance."""

    count: int = 0
    psnrs: list[float] = field(default_factory=list)
    ssims: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, p: float | None, s: float | None) -> None:
        with self.lock:
            self.count += 1
            if p is not None and s is not None:
                self.psnrs.append(p)
                self.ssims.append(s)


T = TypeVar("T")
_END = object()


def _prefetch(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """Iterate `items` in a thread, `depth` ahead of the consumer.

    Why: decoding the next batch (file read, JPEG decode, modality LUT) then overlaps with the current batch's
    compute, which runs in torch without the GIL. The producer's exception is re-raised here; when the consumer
    stops early (an error, a lost job) the producer stops at its next item.
    """
    ahead: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        """Queue `item` unless the consumer has gone; never blocks past the consumer's exit."""
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
            hand_over(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            hand_over(exc)

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="decode", daemon=True
    )
    thread.start()
    try:
        while True:
            got = ahead.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


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
                    job.id,
                    "enhancing",
                    f"{type(exc).__name__}: {exc}",
                    base=snd.base_seconds,
                    cap=snd.cap_seconds,
                    max_attempts=snd.max_attempts,
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
            name, task = routing.choose(
                self.settings.routes, job.modality, str(header.get("SeriesDescription", ""))
            )
        pipe = self.pipeline(name)
        info = pipe.info
        self.state.set_job_enhancer(
            job.id,
            info.name,
            info.version,
            derived_series_uid(job.series_uid, info.name, info.version),
            pipe.device,
        )
        self.spool.clear_outgoing(job.id)
        problems: list[str] = []
        finished = _Finished()
        compute = 0.0
        decoded = _prefetch(self._batches(instances, problems), depth=2)
        with closing(decoded), ThreadPoolExecutor(max_workers=1, thread_name_prefix="derive") as finisher:
            pending: deque[Future[None]] = deque()
            for batch in decoded:
                self._check_service()
                stack = np.concatenate([d.frames for d in batch])
                t0 = time.monotonic()
                out = pipe.run(stack, modality=job.modality, value_range=batch[0].vrange)
                took = time.monotonic() - t0
                compute += took
                per_ms = took * 1000.0 / len(batch)
                run_here = contextvars.copy_context().run  # the job's log context, in the derive thread
                pending.append(
                    finisher.submit(run_here, self._finish, job.id, batch, out, info, task, per_ms, finished)
                )
                while len(pending) > 2:  # bounded: at most two computed batches wait for their derived files
                    pending.popleft().result()
            for future in pending:
                future.result()
        derived, psnrs, ssims = finished.count, finished.psnrs, finished.ssims
        if derived == 0:
            raise DicomUtilsError(f"no instance of the series could be enhanced: {'; '.join(problems[:3])}")
        error = None
        if problems:
            error = f"{len(problems)} of {len(instances)} instances not enhanced: {'; '.join(problems[:3])}"
        seconds = time.monotonic() - started
        self.state.finish_enhancement(
            job.id,
            destinations=[job.only_destination]
            if job.only_destination
            else [d.name for d in self.settings.destinations],
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

    def _check_service(self) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            raise ServiceGone("the service that spawned this worker is gone")

    def _finish(
        self,
        job_id: int,
        batch: list[_Decoded],
        out: np.ndarray,
        info: EnhancerInfo,
        task: str,
        per_ms: float,
        finished: _Finished,
    ) -> None:
        """Metrics, derived object and durable write for one computed batch (runs beside the next compute)."""
        offset = 0
        for item in batch:
            self._check_service()  # an orphan must not keep writing files its successor is rewriting
            n = item.frames.shape[0]
            values = out[offset : offset + n]
            offset += n
            result, data, p, s = build_derived(
                item.ds, item.frames, values, info=info, task=task, processing_ms=per_ms, options=self.options
            )
            self.spool.store_outgoing(job_id, str(result.SOPInstanceUID), data)
            finished.add(p, s)

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
            if batch and (
                item.frames.shape[1:] != batch[0].frames.shape[1:] or frames + len(item.frames) > limit
            ):
                yield batch
                batch, frames = [], 0
            batch.append(item)
            frames += len(item.frames)
        if batch:
            yield batch


def run(settings: Settings, parent: int, poll_seconds: float = 0.5) -> None:
    """Entry point of a worker process (spawned): loop until SIGTERM or until the service `parent` is gone."""
    stops = StopSignals(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides
    if os.getppid() != parent:
        return  # the service died while this process was still importing
    logs.configure()
    state = State(settings.state_db)
    worker = Worker(settings, state, Spool(settings.spool_dir), parent=parent)
    log.info("worker.started")
    while stops.received is None and os.getppid() == parent:
        if not worker.run_once():
            stops.sleep(poll_seconds)
    state.close()
    log.info("worker.stopped")
