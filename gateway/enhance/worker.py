"""The enhancement worker: the only place where DICOM meets tensors.

Why a separate process: a long inference must never stall reception, and torch must not be forked with CUDA
initialised, so the service starts workers with the `spawn` method. A worker gets work only through the
state store and files only through the spool. Slices stream through the pipeline in batches: memory stays
flat in series size.
"""

from __future__ import annotations

import contextvars
import functools
import io
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from structlog.contextvars import bound_contextvars

from dicom_utils.classify import skip_reason
from dicom_utils.derive import derived_series_uid, derived_sop_uid, mark_series_qa
from dicom_utils.enhancement import Task
from dicom_utils.pixels import modality_frames, value_range
from dicom_utils.private_tags import set_qa_flag
from enhancers.noise import NoiseEstimate, estimate_noise
from enhancers.pipeline import Pipeline, StoredGrid, resolve_device
from enhancers.registry import EnhancerInfo, modality_group
from enhancers.registry import info as enhancer_info
from gateway import logs
from gateway.enhance import routing
from gateway.enhance.derive_pool import (
    BatchWork,
    Decoded,
    Derived,
    DerivePool,
    SeriesSpec,
    Slot,
    decode,
    discard,
    finish_batch,
    pool_size,
    received,
)
from gateway.enhance.finish import (
    SeriesFacts,
    derivation_options,
    make_pipeline,
    report_number_candidates,
    series_number_candidates,
)
from gateway.enhance.qa import SeriesGate, SeriesVerdict, worst
from gateway.enhance.report import ReportFacts, build_report, reference, report_uids
from gateway.enhance.restore_score import RestoreScore, degrade_restore
from gateway.errors import (
    EnhancerMismatchError,
    UndecodableSeriesError,
    describe,
    is_disk_full,
    is_permanent,
)
from gateway.settings import QaSettings, Settings
from gateway.signals import StopSignals
from gateway.storage.factory import open_state
from gateway.storage.lease import Heartbeat
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import OutputKey, Spool, SpoolKey
from gateway.storage.state import (
    Instance,
    Job,
    JobState,
    JobTakenOver,
    QaAction,
    QaOutcome,
    QaVerdict,
    StateStore,
    WorkKind,
    idle_wait,
)

#: How many instances, evenly spaced over the series, are decoded before the batch loop to estimate its noise
#: (`enhancers.noise` pools the blocks of up to 12 slices) and to pick the DEGRADE_RESTORE slices from.
NOISE_SAMPLE = 12

log = logs.get("gateway.worker")


@dataclass
class _Decoded:
    instance: Instance
    index: int  # position in the job's instance list
    ds: Dataset | None  # None when a derive process decoded it (and reads it again to derive)
    values: Decoded

    @property
    def frames(self) -> np.ndarray:
        return self.values.frames


class DeriveProcessDied(Exception):
    """A derive process died in the middle of a job (killed, out of memory): the job is retried."""


@dataclass
class _Tally:
    """What the derived batches add up to: count, INPUT metrics, QA seconds; their slice checks go to the gate."""

    gate: SeriesGate | None
    written: list[Derived] = field(default_factory=list)
    psnrs: list[float] = field(default_factory=list)
    ssims: list[float] = field(default_factory=list)
    qa_seconds: float = 0.0

    def add(self, derived: list[Derived]) -> None:
        for d in derived:
            self.written.append(d)
            if d.psnr is not None and d.ssim is not None:
                self.psnrs.append(d.psnr)
                self.ssims.append(d.ssim)
            if self.gate is not None:
                for result in d.slices:
                    self.gate.record(result)
            self.qa_seconds += d.qa_seconds


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


def _ahead(futures: Iterator[Future[T]], depth: int, discard: Callable[[T], None]) -> Generator[T, None, None]:
    """The results of `futures` in order, keeping `depth` of them submitted ahead of the one awaited.

    On an early exit (an error, a lost job) the ones submitted but not started are cancelled, and the results
    of those already running go to `discard` when they come."""
    window: deque[Future[T]] = deque()
    try:
        for future in futures:
            window.append(future)
            if len(window) > depth:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            if not future.cancel():
                future.add_done_callback(lambda f: discard(f.result()) if f.exception() is None else None)


def _stored_grid(batch: list[_Decoded]) -> StoredGrid:
    """Each frame's stored grid (Rescale Slope/Intercept, stored range), so the pipeline rounds on the device.

    Why: the metrics and the QA gate then judge exactly the pixels the derived object will hold, and the
    rounding runs beside the model (on the GPU when there is one) instead of after it on the host.
    """
    slopes: list[float] = []
    intercepts: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for item in batch:
        low, high = item.values.stored
        for slope, intercept in item.values.rescale:
            slopes.append(slope)
            intercepts.append(intercept)
            lows.append(float(low))
            highs.append(float(high))
    return StoredGrid(tuple(slopes), tuple(intercepts), tuple(lows), tuple(highs))


class ServiceGone(Exception):
    """The service that spawned this worker died: stop now, its successor re-runs the job."""


class Worker:
    """Processes queued jobs one at a time; pipelines are built once per enhancer and kept."""

    def __init__(self, settings: Settings, state: StateStore, spool: Spool, parent: int | None = None) -> None:
        self.parent = parent
        self.settings = settings
        self.state = state
        self.spool = spool
        self._pipelines: dict[str, Pipeline] = {}
        self.options = derivation_options(settings)
        # Below the watermark the worker claims nothing and says so once (and once when space is back)
        self.disk = logs.Outage(log, failing="worker.waiting_for_disk", recovered="worker.disk_recovered", cap=10.0)
        self._stranded: int | None = None  # a job that ran out of space and could not be put back yet
        alive = (lambda: os.getppid() == parent) if parent is not None else (lambda: True)
        self.heartbeat = Heartbeat(state, state.lease_seconds, alive)  # started by `run`
        self._job: int | None = None  # the job being processed (its lease is renewed by the heartbeat)
        self._retry_at = 0.0  # while the disk is full: no claim before this (time.monotonic())
        self._derive: DerivePool | None = None  # started with the first job that wants one, kept

    def close(self) -> None:
        """Stop the derive processes, if any (after the batch they are writing)."""
        if self._derive is not None:
            self._derive.close()
            self._derive = None

    def derive_pool(self, device: str) -> DerivePool | None:
        """The derive processes for a pipeline on `device` (`[enhance] derive_processes`); None: derive in the
        worker's own thread (the setting says 0, `auto` on CPU, or a spool that is not a local folder)."""
        cfg = self.settings.enhance
        size = pool_size(cfg.derive_processes, device=device, workers=cfg.workers)
        if size == 0 or not isinstance(self.spool, LocalSpool):
            return None
        if self._derive is None or self._derive.processes != size:
            self.close()
            self._derive = DerivePool(size, self.spool)
            log.info("worker.derive_processes", processes=size, device=device)
        return self._derive

    @functools.cached_property
    def device(self) -> str:
        """The device this worker's pipelines run on (`[enhance] device` resolved: "auto" -> cuda or cpu)."""
        return resolve_device(self.settings.enhance.device)

    def pipeline(self, name: str) -> Pipeline:
        if name not in self._pipelines:
            self._pipelines[name] = make_pipeline(self.settings, name)
        return self._pipelines[name]

    def run_once(self) -> bool:
        """Claim and process one job; False when nothing was claimed (none queued, or no space to write).

        Failures are classified: a full disk puts the job back in the queue without counting an attempt (it
        waits, see `_wait_for_space`); a permanent error (`gateway.errors.is_permanent`: an undecodable
        series, an enhancer for another modality) ends the job `failed` at once with one log line; anything
        else is retried with backoff up to `max_attempts`, its traceback logged.
        """
        if not self._space_to_write():
            return False
        job = self.state.claim_job(JobState.QUEUED, JobState.ENHANCING)
        if job is None:
            self._disk_ok()  # nothing waits for space any more
            return False
        self.heartbeat.hold(job.id)
        self._job = job.id
        with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
            try:
                self.process(job)
                self._disk_ok()  # a whole job written: the disk takes writes again
            except (ServiceGone, JobTakenOver) as exc:
                log.warning("job.abandoned", reason=str(exc))
            except Exception as exc:
                if is_disk_full(exc):
                    self._wait_for_space(job, exc)
                    return True
                snd = self.settings.sender
                permanent = is_permanent(exc)
                new_state = self.state.fail_job(
                    job.id,
                    JobState.ENHANCING,
                    describe(exc),
                    base=snd.base_seconds,
                    cap=snd.cap_seconds,
                    max_attempts=snd.max_attempts,
                    permanent=permanent,
                )
                if permanent:
                    log.error(
                        "job.failed", state=new_state, permanent=True, error=describe(exc),
                        hint=f"retrying cannot help; fix the cause, then `enhance-gateway retry {job.id}`",
                    )
                else:
                    log.exception("job.enhance_failed", state=new_state, error=describe(exc))
            finally:
                self._job = None
                self.heartbeat.drop(job.id)
        return True

    def pause(self, poll_seconds: float) -> float:
        """Seconds to sleep after a `run_once` that claimed nothing: the poll, or longer while the disk is full."""
        return max(poll_seconds, self.disk.delay())

    def _space_to_write(self) -> bool:
        """False (logged once per change) while the spool is below the watermark: claiming would only fail.

        After a full disk the next job is tried at growing intervals: only a job whose outputs all fit ends
        the wait (free space above the watermark may still be too little for one series, and the watermark
        may be off). A job stranded by an earlier failure to requeue it (SQLite could not write either) is
        put back first.
        """
        if self.disk.active and time.monotonic() < self._retry_at:
            return False
        try:
            if self._stranded is not None:
                self.state.requeue_job(self._stranded, "waiting for disk space")
                self._stranded = None
            self.spool.check_space()
        except Exception as exc:  # noqa: BLE001 - a full disk or an unwritable state store: wait, then retry
            self._retry_at = time.monotonic() + self.disk.failed(exc, free_mb=round(self.spool.free_mb(), 1))
            return False
        return True

    def _disk_ok(self) -> None:
        if self.disk.active:
            self.disk.ok(free_mb=round(self.spool.free_mb(), 1))

    def _wait_for_space(self, job: Job, exc: BaseException) -> None:
        """The job could not write its outputs: drop the partial ones (they take the space), back to queued.

        Why not a failure: a full disk is an outage an admin fixes by freeing space, not a fault of the
        series; counting attempts would kill jobs of every series that arrived during it. The job keeps its
        place in the queue and runs from the start once `_space_to_write` sees space again.
        """
        self.spool.clear_outputs(job.id)
        self._retry_at = time.monotonic() + self.disk.failed(exc, free_mb=round(self.spool.free_mb(), 1))
        try:
            self.state.requeue_job(job.id, f"waiting for disk space: {describe(exc)}")
        except Exception:  # noqa: BLE001 - SQLite is on the full disk too: put it back once it can write
            self._stranded = job.id

    def process(self, job: Job) -> None:
        started = time.monotonic()
        instances = self.state.job_instances(job.id)
        header = self._dcmread(instances[0].key, stop_before_pixels=True)
        reason = skip_reason(header)
        if reason is None and not job.enhancer:  # `reprocess --enhancer` is an admin's explicit choice
            reason = routing.not_by_default(self.settings.routes, job.modality, header)
        if reason is not None:
            self.state.skip_job(job.id, reason)
            log.info("job.skipped", reason=reason, instances=len(instances), modality=job.modality)
            return
        route = routing.route_for(self.settings.routes, job.modality, str(header.get("SeriesDescription", "")))
        if job.enhancer:  # chosen by `reprocess --enhancer`
            name, task = job.enhancer, Task(enhancer_info(job.enhancer).task)
        else:
            name, task = routing.choose(
                self.settings.routes, job.modality, str(header.get("SeriesDescription", "")),
                quality=routing.wants_quality(self.settings.enhance.default_variant, self.device),
            )
        mismatch = routing.modality_mismatch(name, job.modality)
        if mismatch is not None:  # queued before `reprocess` checked it, or routed by a rule without modality
            raise EnhancerMismatchError(mismatch)
        strength = job.strength if job.strength is not None else route.strength if route else 1.0
        # a route's own `qa = {...}` was built for its task (settings.QA_TASK_RULES); otherwise apply the rule
        routed = route is not None and route.qa is not None and route.task == task
        qa = route.qa if routed and route is not None and route.qa is not None else self.settings.qa.for_task(task)
        pipe = self.pipeline(name)
        info = pipe.info
        derived_uid = derived_series_uid(job.series_uid, info.name, info.version)
        self.state.set_job_enhancer(job.id, info.name, info.version, derived_uid, pipe.device)
        series_number = self.state.derived_series_number(  # never shared by two derived series of one study
            job.study_uid, derived_uid,
            series_number_candidates(header.get("SeriesNumber"), self.settings.enhance.series_number_offset),
        )
        self.spool.clear_outputs(job.id)
        group = modality_group(job.modality)
        sample = self._sample(instances)
        noise = self._noise(sample, group)
        score = self._restore_score(pipe, sample, job.modality, task, strength, qa)
        facts = SeriesFacts(
            noise_sigma=noise.sigma,
            noise_method=noise.method,
            noise_background_sigma=noise.background_sigma,
            strength=strength,
            dr_psnr=score.psnr if score else None,
            dr_ssim=score.ssim if score else None,
            dr_slices=score.slices if score else (),
            series_qa="PASS" if qa.enabled else "",  # provisional: rewritten below when the series is not PASS
            series_number=series_number,
        )
        gate = SeriesGate(qa, group=group, sigma=noise.sigma, count=len(instances)) if qa.enabled else None
        spec = SeriesSpec(
            job.id, info, task, facts, self.options, qa if qa.enabled else None, group, noise.sigma, len(instances)
        )
        pool = self.derive_pool(pipe.device)
        problems: list[str] = []
        tally = _Tally(gate)
        compute = 0.0
        decoded = _prefetch(self._batches(instances, problems, pool), depth=2)
        # bounded: computed batches waiting for their derived files are at most one per deriver plus one
        ahead = pool.processes + 1 if pool is not None else 2
        with closing(decoded), ThreadPoolExecutor(max_workers=1, thread_name_prefix="derive") as thread:
            pending: deque[Future[list[Derived]]] = deque()
            try:
                for batch in decoded:
                    self._check_service()
                    stack = np.concatenate([d.frames for d in batch])
                    t0 = time.monotonic()
                    out = pipe.run(
                        stack,
                        modality=job.modality,
                        value_range=batch[0].values.vrange,
                        noise=noise,
                        strength=strength,
                        stored=_stored_grid(batch),
                    )
                    took = time.monotonic() - t0
                    compute += took
                    slots = [Slot(d.instance.key, d.index, d.values.number) for d in batch]
                    work = BatchWork(spec, slots, [d.frames for d in batch], out, took * 1000.0 / len(batch))
                    if pool is not None:
                        pending.append(pool.submit(work))
                    else:
                        run_here = contextvars.copy_context().run  # the job's log context, in the derive thread
                        sources = [d.ds for d in batch]
                        pending.append(
                            thread.submit(run_here, finish_batch, self.spool, work, sources, self._check_service)
                        )
                    while len(pending) > ahead:
                        tally.add(pending.popleft().result())
                while pending:
                    tally.add(pending.popleft().result())
            except BrokenProcessPool as exc:
                self.close()
                raise DeriveProcessDied(
                    "a derive process died during the job (killed, or out of memory: see the kernel log);"
                    " the job is retried with new ones"
                ) from exc
            finally:  # an error: drop the queued batches, let the ones being written finish
                for future in pending:
                    future.cancel()
                wait(pending)
        derived, psnrs, ssims = len(tally.written), tally.psnrs, tally.ssims
        if derived == 0:
            raise UndecodableSeriesError(
                f"no instance of the series could be enhanced: {'; '.join(problems[:3])}; the originals stay in"
                " the spool (check the transfer syntax and the sending device)"
            )
        error = None
        if problems:
            error = f"{len(problems)} of {len(instances)} instances not enhanced: {'; '.join(problems[:3])}"
        verdict = None
        if gate is not None:
            t0 = time.monotonic()
            verdict = gate.verdict()
            if verdict.verdict != "PASS":
                self._mark_outputs(job.id, instances, info, gate, verdict)
            tally.qa_seconds += time.monotonic() - t0
        psnr = float(np.mean(psnrs)) if psnrs else None
        ssim = float(np.mean(ssims)) if ssims else None
        report = None
        if qa.report:
            facts_for_report = ReportFacts(
                enhancer=info.name,
                version=info.version,
                weights_sha256=info.weights_sha256,
                task=task,
                strength=strength,
                modality=job.modality,
                noise_sigma=noise.sigma,
                input_psnr=psnr,
                input_ssim=ssim,
                dr_psnr=facts.dr_psnr,
                dr_ssim=facts.dr_ssim,
                qa_verdict=verdict.verdict if verdict else None,
                qa_reasons=verdict.text if verdict else "",
                software_version=self.options.software_version,
            )
            report = self._write_report(job.id, instances, tally.written, facts_for_report)
        seconds = time.monotonic() - started
        outcome = QaOutcome(
            strength=strength,
            noise_sigma=noise.sigma,
            noise_method=noise.method,
            qa_verdict=QaVerdict(verdict.verdict) if verdict else None,
            qa_action=QaAction(verdict.action) if verdict else None,
            qa_reasons=verdict.text if verdict else None,
            dr_psnr=facts.dr_psnr,
            dr_ssim=facts.dr_ssim,
        )
        new_state = self.state.finish_enhancement(
            job.id,
            destinations=[job.only_destination]
            if job.only_destination
            else [d.name for d in self.settings.destinations],
            derived_count=derived,
            psnr=psnr,
            ssim=ssim,
            seconds=seconds,
            error=error,
            qa=outcome,
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
            noise_sigma=round(noise.sigma, 3),
            noise_method=noise.method,
            noise_background_sigma=None if noise.background_sigma is None else round(noise.background_sigma, 3),
            noise_blocks=noise.blocks,
            strength=strength,
            degrade_restore_psnr=round(score.psnr, 2) if score else None,
            degrade_restore_ssim=round(score.ssim, 4) if score else None,
            degrade_restore_slices=list(score.slices) if score else None,
            qa_verdict=verdict.verdict if verdict else None,
            qa_action=verdict.action if verdict else None,
            qa_reasons=verdict.text if verdict else None,
            qa_full_slices=verdict.full_slices if verdict else None,
            qa_seconds=round(tally.qa_seconds, 3),
            report=report,
            compute_seconds=round(compute, 3),
            seconds=round(seconds, 3),
        )
        if new_state == JobState.HELD:
            assert verdict is not None
            log.warning(
                "job.held",
                qa_verdict=verdict.verdict,
                qa_reasons=verdict.text,
                hint=f"nothing was delivered; `enhance-gateway release {job.id}` delivers it,"
                f" `enhance-gateway reject {job.id}` drops the outputs",
            )

    def _write_report(
        self, job_id: int, instances: list[Instance], written: list[Derived], facts: ReportFacts
    ) -> str | None:
        """The TID 1500 SR beside the derived files (sent with them); its SOP Instance UID, None on failure.

        Two headers are read (the middle derived instance, which the report measures, and its source); every
        other instance is referenced by its UIDs, known without opening its file: reading the 2 x N headers
        cost ~3 ms per slice after the last batch, seconds for a long series on a GPU (bench/worker_job.py).
        A report that cannot be built must not cost the radiologist the series: the failure is logged
        (`report.failed`) and the series goes on without it.
        """
        try:
            order = sorted(written, key=lambda d: (d.number if d.number is not None else d.index + 1, d.sop_uid))
            middle = order[len(order) // 2]
            first = self._dcmread(OutputKey(job_id, middle.sop_uid), stop_before_pixels=True)
            source = self._dcmread(instances[middle.index].key, stop_before_pixels=True)
            series_uid, sop_class = str(first.SeriesInstanceUID), str(first.SOPClassUID)
            derived = [
                first if d is middle else reference(instances[d.index].study_uid, series_uid, d.sop_uid, sop_class)
                for d in order
            ]
            sources = [
                source if n == middle.index else reference(i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid)
                for n, i in enumerate(instances)
            ]
            # the SR is a series of the study too: its number is allocated like a derived series' (never shared)
            number = self.state.derived_series_number(
                instances[0].study_uid, report_uids(series_uid)[0],
                report_number_candidates(first.get("SeriesNumber"), self.settings.enhance.series_number_offset),
            )
            sr, data = build_report(facts, derived, sources, series_number=number)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("report.failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        self.spool.put(OutputKey(job_id, str(sr.SOPInstanceUID)), data)
        return str(sr.SOPInstanceUID)

    def _sample(self, instances: list[Instance]) -> list[tuple[int, np.ndarray, tuple[float, float]]]:
        """(Instance Number, middle frame, value range) of up to NOISE_SAMPLE instances spread over the series.

        An instance that cannot be decoded is left out here; the batch loop reports it.
        """
        count = len(instances)
        want = min(count, NOISE_SAMPLE)
        picks = sorted({round(i * (count - 1) / max(1, want - 1)) for i in range(want)})
        out: list[tuple[int, np.ndarray, tuple[float, float]]] = []
        for index in picks:
            try:
                ds = self._dcmread(instances[index].key)
                if skip_reason(ds) is not None:
                    continue
                frames = modality_frames(ds)
                number = ds.get("InstanceNumber")
                out.append((int(number) if number not in (None, "") else index + 1,
                            frames[frames.shape[0] // 2], value_range(ds)))
            except Exception:  # noqa: BLE001, S112 - the batch loop reports undecodable instances
                continue
        return out

    @staticmethod
    def _noise(sample: list[tuple[int, np.ndarray, tuple[float, float]]], group: str | None) -> NoiseEstimate:
        """The series' noise from the sampled slices of its most common matrix size."""
        if not sample:
            return NoiseEstimate(0.0, 0, "no decodable slice")
        shapes = [s[1].shape for s in sample]
        common = max(set(shapes), key=shapes.count)
        return estimate_noise(np.stack([s[1] for s in sample if s[1].shape == common]), group)

    @staticmethod
    def _restore_score(
        pipe: Pipeline,
        sample: list[tuple[int, np.ndarray, tuple[float, float]]],
        modality: str,
        task: str,
        strength: float,
        qa: QaSettings,
    ) -> RestoreScore | None:
        """DEGRADE_RESTORE on `degrade_restore_slices` slices spread evenly over the noise sample."""
        want = min(qa.degrade_restore_slices, len(sample))
        if want <= 0:
            return None
        picks = sorted({round(i * (len(sample) - 1) / max(1, want - 1)) for i in range(want)})
        return degrade_restore(pipe, [sample[i] for i in picks], modality=modality, task=task, strength=strength)

    def _mark_outputs(
        self, job_id: int, instances: list[Instance], info: EnhancerInfo, gate: SeriesGate, verdict: SeriesVerdict
    ) -> None:
        """Rewrite the derived files of a series that is not PASS: series verdict, marker, final slice flags.

        Why a second pass: the verdict of a series is known only after its last slice, and the files are
        written as the batches finish (memory stays flat). Only WARN and FAIL series pay for it.
        """
        flags: dict[str, list[str]] = {}
        for result in gate.slices():
            sop = derived_sop_uid(instances[result.order[1]].sop_uid, info.name, info.version)
            flags.setdefault(sop, []).append(result.verdict)
        marker = verdict.action in (QaAction.FLAG, QaAction.HOLD)
        for key in self.spool.list_outputs(job_id):
            self._check_service()
            ds = self._dcmread(key)
            mark_series_qa(ds, verdict.verdict, verdict.text, marker=marker)
            if key.sop_uid in flags:
                set_qa_flag(ds, worst(flags[key.sop_uid]))
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            self.spool.put(key, buf.getvalue())

    def _dcmread(self, key: SpoolKey, *, stop_before_pixels: bool = False) -> Dataset:
        with self.spool.open(key) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)

    def _check_service(self) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            raise ServiceGone("the service that spawned this worker is gone")
        if self._job is not None and self.heartbeat.lost(self._job):
            raise JobTakenOver(f"job {self._job}: the lease of {self.state.worker_id} ran out and another worker took it")

    def _batches(
        self, instances: list[Instance], problems: list[str], pool: DerivePool | None
    ) -> Iterator[list[_Decoded]]:
        """Decode instances lazily into batches of same-shaped frames, at most `batch_size` frames each."""
        limit = self.settings.enhance.batch_size
        batch: list[_Decoded] = []
        frames = 0
        for item in self._decoded(instances, problems, pool):
            if batch and (
                item.frames.shape[1:] != batch[0].frames.shape[1:] or frames + len(item.frames) > limit
            ):
                yield batch
                batch, frames = [], 0
            batch.append(item)
            frames += len(item.frames)
        if batch:
            yield batch

    def _decoded(
        self, instances: list[Instance], problems: list[str], pool: DerivePool | None
    ) -> Iterator[_Decoded]:
        """The job's instances decoded in order, here or by the derive processes (a window ahead); what cannot
        be enhanced goes to `problems` (an undecodable one with a warning)."""
        if pool is None:
            here = (decode(self.spool, i.key) for i in instances)
            results: Iterator[tuple[Dataset | None, bool, Decoded | str]] = (
                (ds, ds is not None, got) for ds, got in here
            )
        else:  # `batch_size` x 2 instances in flight: the processes stay busy, memory stays bounded
            ahead = _ahead((pool.decode(i.key) for i in instances), 2 * self.settings.enhance.batch_size, discard)
            results = ((None, *received(r)) for r in ahead)
        for index, (inst, (ds, read, got)) in enumerate(zip(instances, results, strict=True)):
            if isinstance(got, str):
                problems.append(f"{inst.sop_uid}: {got}")
                if not read:
                    log.warning("instance.not_enhanced", sop_instance_uid=inst.sop_uid, reason=got[:300])
                continue
            yield _Decoded(inst, index, ds, got)


def run(settings: Settings, parent: int, poll_seconds: float = 0.5) -> None:
    """Entry point of a worker process (spawned): loop until SIGTERM or until the service `parent` is gone."""
    stops = StopSignals(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides
    if os.getppid() != parent:
        return  # the service died while this process was still importing
    # The service starts workers as daemonic processes (so that they go with it) and multiprocessing refuses
    # children to a daemonic process; the flag means nothing else inside the worker, whose derive processes
    # exit with it on their own (derive_pool._watch_worker).
    multiprocessing.current_process().daemon = False
    logs.configure()
    routing.load_plugins(settings.plugins)
    state = open_state(settings)
    worker = Worker(settings, state, LocalSpool(settings.spool_dir, min_free_mb=settings.min_free_mb), parent=parent)
    worker.heartbeat.start()
    log.info("worker.started")
    # A failure outside any job (SQLite cannot claim: a full disk) must neither kill the process (the service
    # would restart it every second) nor log a traceback per poll: once per change, growing waits.
    outage = logs.Outage(log, failing="worker.failing", recovered="worker.recovered", cap=10.0)
    while stops.received is None and os.getppid() == parent:
        try:
            busy = worker.run_once()
            outage.ok()
        except Exception as exc:  # noqa: BLE001 - see above
            stops.sleep(max(poll_seconds, outage.failed(exc)))
            continue
        if not busy and worker.disk.active:
            stops.sleep(worker.pause(poll_seconds))  # waiting for disk space: new jobs would not help
        elif not busy:  # until a job is queued anywhere (PostgreSQL: NOTIFY), at most the poll interval
            idle_wait(state, WorkKind.JOBS, poll_seconds, lambda: stops.received is not None or os.getppid() != parent)
    worker.close()
    worker.heartbeat.stop()
    state.close()
    log.info("worker.stopped")
