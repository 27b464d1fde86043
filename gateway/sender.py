"""The sender: delivers each enhanced job's derived series to every destination, with retry and backoff.

Why per-destination delivery rows: a PACS that is down must not block the archive copy, and a restart must
resume exactly the deliveries that were not confirmed. A DICOM destination gets one association per series;
a folder destination gets `<path>/<study>/<series>/<sop>.dcm`, each file written atomically.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
from structlog.contextvars import bound_contextvars

from gateway import dicomnet, logs
from gateway.errors import DeliveryError, SpoolError, describe, is_disk_full
from gateway.metrics import Metrics
from gateway.settings import Destination, Settings
from gateway.spool import Spool, ensure_space, write_atomic
from gateway.state import Job, State

log = logs.get("gateway.sender")


def deliver_to_folder(root: Path, files: list[Path], min_free_mb: float = 0) -> int:
    """Copy derived files under root/<study>/<series>/<sop>.dcm; returns bytes written.

    Each file is refused (OutOfSpaceError) when it would leave less than `min_free_mb` free on the folder's
    file system: the watermark guards every write, and the folder is often on the spool's own disk.
    """
    tmp = root / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
        data = path.read_bytes()
        ensure_space(root, len(data), min_free_mb)
        final = root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / path.name
        write_atomic(final, data, tmp)
        total += len(data)
    return total


class Sender:
    """Claims jobs that are enhanced (or due for a retry) and delivers them."""

    def __init__(self, settings: Settings, state: State, spool: Spool, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.spool = spool
        self.destinations = {d.name: d for d in settings.destinations}
        self._disk: dict[str, logs.Outage] = {}  # per destination: a full folder disk, logged once per change

    def deliver(self, dest: Destination, files: list[Path]) -> int:
        """Deliver all files to one destination; returns bytes; raises DeliveryError on any failure."""
        if dest.type == "folder":
            assert dest.path is not None
            try:
                return deliver_to_folder(dest.path, files, self.settings.min_free_mb)
            except (OSError, SpoolError) as exc:
                raise DeliveryError(f"folder {dest.path}: {exc}") from exc
        peer = dicomnet.Peer(dest.ae_title, dest.host, dest.port, dest.calling_aet or self.settings.ae_title)
        return dicomnet.send_files(peer, files, timeout=self.settings.sender.dimse_timeout).bytes

    def run_once(self) -> bool:
        """Deliver one job's due deliveries; False when nothing was due."""
        claimed = self.state.claim_delivery_job()
        if claimed is None:
            return False
        job, due = claimed
        if self.metrics and job.enhancer and all(d.attempts == 0 for d in self.state.deliveries(job.id)):
            # first delivery of a freshly enhanced job: count its enhancement exactly once
            self.metrics.enhancement_seconds.labels(job.enhancer, job.device or "cpu").observe(job.enhance_seconds or 0)
        with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
            self._deliver_job(job, [d.destination for d in due])
        return True

    def _deliver_job(self, job: Job, names: list[str]) -> None:
        files = self.spool.outgoing_files(job.id)
        snd = self.settings.sender
        waited = 0
        for name in names:
            dest = self.destinations.get(name)
            started = time.monotonic()
            if self.metrics:
                self.metrics.send_attempts.labels(name).inc()
            try:
                if dest is None:
                    raise DeliveryError(f"destination {name!r} is no longer configured")
                if not files:
                    raise DeliveryError(f"no derived files in the spool for job {job.id}; reprocess the study")
                size = self.deliver(dest, files)
            except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried with backoff
                if is_disk_full(exc):  # the folder's disk is full: the delivery waits, no attempt is counted
                    self._wait_for_space(job, name, exc)
                    waited += 1
                    continue
                state = self.state.delivery_failed(
                    job.id, name, str(exc), base=snd.base_seconds, cap=snd.cap_seconds, max_attempts=snd.max_attempts
                )
                if self.metrics:
                    self.metrics.send_failures.labels(name).inc()
                log.warning("send.failed", destination=name, error=str(exc)[:300], delivery_state=state)
                continue
            self.state.delivery_succeeded(job.id, name)
            if name in self._disk:
                self._disk[name].ok(destination=name)
            log.info(
                "send.done",
                destination=name,
                instances=len(files),
                bytes=size,
                seconds=round(time.monotonic() - started, 3),
            )
        final = self.state.settle_job(job.id)
        if waited == len(names):
            return  # only waiting for disk space: `send.waiting_for_disk` said it once for every job
        done = self.state.job(job.id)
        event = {"done": "job.done", "dead": "job.dead"}.get(final, "job.retry_scheduled")
        log.info(
            event,
            state=final,
            enhancer=done.enhancer,
            instances=done.instance_count,
            derived=done.derived_count,
            attempts=done.attempts,
            psnr=done.psnr,
            ssim=done.ssim,
            next_try_in=round(done.next_try_at - time.time(), 1) if final == "failed" and done.next_try_at else None,
            total_seconds=round(time.time() - done.created_at, 3),
            enhance_seconds=round(done.enhance_seconds or 0.0, 3),
        )


    def _wait_for_space(self, job: Job, name: str, exc: BaseException) -> None:
        """A delivery that cannot write waits for space (growing waits, up to a minute) and never goes dead.

        Why not a failed attempt: an outage an admin fixes by freeing space must not kill every delivery that
        came due during it. Logged once when the destination's disk fills and once when it takes files again.
        """
        outage = self._disk.setdefault(
            name, logs.Outage(log, failing="send.waiting_for_disk", recovered="send.disk_recovered", cap=60.0)
        )
        delay = outage.failed(exc, destination=name)
        self.state.delivery_waiting(job.id, name, f"waiting for disk space: {describe(exc)}", retry_in=delay)


def run_loop(sender: Sender, stop: threading.Event, poll_seconds: float = 0.25) -> None:
    """Sender thread body: never dies on an error, logs it once per change (a full disk fails every claim:
    SQLite cannot write) and waits longer after each failed try, up to 10 s."""
    outage = logs.Outage(log, failing="sender.failing", recovered="sender.recovered", cap=10.0)
    while not stop.is_set():
        try:
            busy = sender.run_once()
            outage.ok()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            stop.wait(max(poll_seconds, outage.failed(exc)))
            continue
        if not busy:
            stop.wait(poll_seconds)
