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

from gateway import logs
from gateway.dimse import scu as dicomnet
from gateway.errors import DeliveryError, SpoolError, describe, is_disk_full
from gateway.metrics import Metrics
from gateway.settings import Destination, Settings
from gateway.storage.lease import Heartbeat
from gateway.storage.spool import Spool, ensure_space, write_atomic
from gateway.storage.state import Job, JobState, StateStore, WorkKind, idle_wait

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


class _JobFault(DeliveryError):
    """The job cannot be sent to any destination (e.g. its derived files are gone from the spool).

    Why apart: it is a failed attempt of that job like any other, but it says nothing about the destination,
    so it must not count towards the destination's circuit breaker: a few broken jobs would otherwise stop
    the deliveries of every sound job to a healthy PACS.
    """


class Circuit:
    """A destination's circuit breaker: closed (try), open (do not try until `retry_at`), then one trial.

    Why: a PACS that accepts TCP and never answers costs `dimse_timeout` per attempt; without a breaker every
    due job pays it, one after another, and each attempt counts towards `max_attempts`, so a long outage
    makes jobs dead that would have been delivered once the PACS came back. While open, deliveries wait
    without an attempt counted; the state changes are logged once each (`destination.circuit_open/closed`).
    """

    def __init__(self, name: str, failures: int, seconds: float, cap: float) -> None:
        self.name = name
        self.threshold = failures
        self.seconds = seconds
        self.cap = max(cap, seconds)
        self.consecutive = 0
        self.opened = 0  # times opened in a row (the open period doubles each time)
        self.retry_at = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.opened > 0

    def allows(self) -> bool:
        """Whether a delivery may be tried now (closed, or open and its wait is over: one trial)."""
        with self._lock:
            return self.opened == 0 or time.monotonic() >= self.retry_at

    def failed(self, error: str) -> None:
        with self._lock:
            self.consecutive += 1
            if self.consecutive < self.threshold and self.opened == 0:
                return
            wait = min(self.cap, self.seconds * 2 ** self.opened)
            self.opened += 1
            self.retry_at = time.monotonic() + wait
        log.warning("destination.circuit_open", destination=self.name, consecutive_failures=self.consecutive,
                    retry_in=round(wait, 1), error=error[:300],
                    hint="deliveries to this destination wait (no attempt counted) until it answers again;"
                         " other destinations are not affected")

    def succeeded(self) -> None:
        with self._lock:
            was_open, self.consecutive, self.opened = self.opened > 0, 0, 0
        if was_open:
            log.info("destination.circuit_closed", destination=self.name)


class Sender:
    """Claims due deliveries, one destination at a time per worker, and delivers them."""

    def __init__(self, settings: Settings, state: StateStore, spool: Spool, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.spool = spool
        self.destinations = {d.name: d for d in settings.destinations}
        self._disk: dict[str, logs.Outage] = {}  # per destination: a full folder disk, logged once per change
        snd = settings.sender
        self.circuits = {
            d.name: Circuit(d.name, snd.circuit_failures, snd.circuit_seconds, snd.cap_seconds)
            for d in settings.destinations
            if snd.circuit_failures > 0
        }
        self._lock = threading.Lock()
        self._counted: set[int] = set()  # jobs whose enhancement time was observed (bounded by the run)
        self.heartbeat = Heartbeat(state, state.lease_seconds)  # renews the claims of sends in flight (run_loop)

    def deliver(self, dest: Destination, files: list[Path]) -> int:
        """Deliver all files to one destination; returns bytes; raises DeliveryError on any failure."""
        if dest.type == "folder":
            assert dest.path is not None
            try:
                return deliver_to_folder(dest.path, files, self.settings.min_free_mb)
            except (OSError, SpoolError) as exc:
                raise DeliveryError(f"folder {dest.path}: {exc}") from exc
        if dest.type == "dicomweb":  # STOW-RS: same retry, backoff, dead state and health as a DICOM destination
            from gateway.deliver.dicomweb import stow_files

            return stow_files(dest, files, timeout=self.settings.sender.dimse_timeout)
        peer = dicomnet.Peer.for_destination(dest, self.settings.ae_title)
        return dicomnet.send_files(peer, files, timeout=self.settings.sender.dimse_timeout).bytes

    def run_destination_once(self, name: str | None) -> bool:
        """Deliver one due delivery to destination `name` (None: to any destination no longer configured).

        False when nothing was due, or when the destination's circuit is open (it is not tried at all then).
        """
        circuit = self.circuits.get(name) if name is not None else None
        if circuit is not None and not circuit.allows():
            return False
        claimed = self.state.claim_delivery(name, known=list(self.destinations))
        if claimed is None:
            return False
        job, delivery = claimed
        if self.metrics and job.enhancer and all(d.attempts == 0 for d in self.state.deliveries(job.id)):
            with self._lock:  # first delivery of a freshly enhanced job: count its enhancement exactly once
                if job.id not in self._counted:
                    self._counted.add(job.id)
                    self.metrics.enhancement_seconds.labels(job.enhancer, job.device or "cpu").observe(
                        job.enhance_seconds or 0
                    )
        self.heartbeat.hold(job.id)
        try:
            with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
                self._deliver_one(job, delivery.destination, circuit)
        finally:
            self.heartbeat.drop(job.id)
        return True

    def _files(self, job_id: int) -> list[Path]:
        """The job's derived files as local paths: the DIMSE and folder senders stream files by path."""
        files = []
        for key in self.spool.list_outputs(job_id):
            path = self.spool.local_path(key)
            if path is None:
                raise SpoolError(f"job {job_id}: this spool has no local files; the sender needs a POSIX spool")
            files.append(path)
        return files

    def _deliver_one(self, job: Job, name: str, circuit: Circuit | None) -> None:
        files = self._files(job.id)
        snd = self.settings.sender
        dest = self.destinations.get(name)
        started = time.monotonic()
        if self.metrics:
            self.metrics.send_attempts.labels(name).inc()
        waited = False
        try:
            if dest is None:
                raise DeliveryError(f"destination {name!r} is no longer configured")
            if not files:
                raise _JobFault(f"no derived files in the spool for job {job.id}; reprocess the study")
            size = self.deliver(dest, files)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, retried with backoff
            if is_disk_full(exc):  # the folder's disk is full: the delivery waits, no attempt is counted
                self._wait_for_space(job, name, exc)
                waited = True
            else:
                state = self.state.delivery_failed(
                    job.id, name, str(exc), base=snd.base_seconds, cap=snd.cap_seconds, max_attempts=snd.max_attempts
                )
                if self.metrics:
                    self.metrics.send_failures.labels(name).inc()
                log.warning("send.failed", destination=name, error=str(exc)[:300], delivery_state=state,
                            seconds=round(time.monotonic() - started, 3))
                if circuit is not None and not isinstance(exc, _JobFault):
                    circuit.failed(str(exc))
        else:
            self.state.delivery_succeeded(job.id, name)
            if circuit is not None:
                circuit.succeeded()
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
        if waited or final == JobState.SENDING:
            return  # waiting for disk space (`send.waiting_for_disk` said it once), or another destination's
            # worker is still sending this job and will report it
        done = self.state.job(job.id)
        event = {JobState.DONE: "job.done", JobState.DEAD: "job.dead"}.get(final, "job.retry_scheduled")
        log.info(
            event,
            state=final,
            enhancer=done.enhancer,
            instances=done.instance_count,
            derived=done.derived_count,
            attempts=done.attempts,
            psnr=done.psnr,
            ssim=done.ssim,
            next_try_in=round(done.next_try_at - time.time(), 1) if final == JobState.FAILED and done.next_try_at else None,
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
    """Sender thread body: one worker thread per destination (and one for deliveries to destinations no longer
    configured), so a PACS that hangs for `dimse_timeout` delays only its own deliveries (issue 15, defect 3)."""
    names: list[str | None] = [*sender.destinations, None]
    workers = [
        threading.Thread(target=_destination_loop, args=(sender, name, stop, poll_seconds),
                         name=f"sender-{name or 'unconfigured'}", daemon=True)
        for name in names
    ]
    sender.heartbeat.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sender.heartbeat.stop()


def _destination_loop(sender: Sender, name: str | None, stop: threading.Event, poll_seconds: float) -> None:
    """One destination's worker: never dies on an error, logs it once per change (a full disk fails every
    claim: SQLite cannot write) and waits longer after each failed try, up to 10 s."""
    outage = logs.Outage(log, failing="sender.failing", recovered="sender.recovered", cap=10.0)
    while not stop.is_set():
        try:
            busy = sender.run_destination_once(name)
            outage.ok()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            stop.wait(max(poll_seconds, outage.failed(exc, destination=name)))
            continue
        if not busy:  # until a delivery is due anywhere (PostgreSQL: NOTIFY), at most the poll interval
            idle_wait(sender.state, WorkKind.DELIVERIES, poll_seconds, stop.is_set)
