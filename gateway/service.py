"""The running gateway: SCP + completion + sender threads in one process, enhancement in worker processes.

Why this split: reception and sending are I/O bound and share the state store; enhancement is CPU/GPU bound
and runs in spawned processes so a long inference never stalls a C-STORE and CUDA is never forked.
SIGTERM stops new associations, lets in-flight C-STOREs finish, and leaves the state consistent.

Roles (`serve --role receive,complete,enhance,send`, default all): a site that outgrows one machine runs the
same program as several processes on several machines sharing one PostgreSQL state and one spool folder
(docs/scale-out.md): receivers behind a TCP load balancer, a worker process per GPU, a sender. Each role is
safe to run several times: completion and claims are transactions on the shared state, ownership is a lease.
Every process, whatever its roles, re-queues the jobs of dead owners (expired leases) once a second.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time

from gateway import logs
from gateway.deliver import sender
from gateway.dimse.fast.compat import configure_process
from gateway.errors import ConfigError
from gateway.metrics import HttpEndpoint, Metrics, health_checks
from gateway.receive.completion import Completion
from gateway.receive.reconcile import RunMarker, reconcile
from gateway.receive.scp import Receiver
from gateway.receive.stow import StowService
from gateway.settings import Settings
from gateway.signals import StopSignals
from gateway.storage.factory import describe as describe_state
from gateway.storage.factory import open_state
from gateway.storage.lease import recover_dead
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import StateStore

log = logs.get("gateway.service")

#: What `serve --role` accepts; all four by default (the single-node gateway).
ROLES: tuple[str, ...] = ("receive", "complete", "enhance", "send")


def parse_roles(text: str) -> frozenset[str]:
    """`receive,enhance` -> the set; an unknown or empty list is a ConfigError naming the valid roles."""
    roles = frozenset(r.strip().lower() for r in text.split(",") if r.strip())
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        raise ConfigError(
            f"--role {text!r}: expected a comma-separated list of {', '.join(ROLES)} (e.g. --role receive,complete)"
        )
    return roles


def _completion_loop(
    state: StateStore, stable_seconds: float, stop: threading.Event, metrics: Metrics, completion: Completion | None = None
) -> None:
    """Series quiet for `stable_seconds` become queued jobs (checked every 0.5 s, or sooner for short waits).

    A failing check (a full disk: SQLite cannot write) is logged once when it starts and once when it ends,
    and retried with growing waits (up to 10 s): the series wait in `received`, nothing is lost.
    """
    interval = max(0.1, min(0.5, stable_seconds / 4))
    outage = logs.Outage(log, failing="completion.failing", recovered="completion.recovered", cap=10.0)
    while not stop.is_set():
        wait = interval
        try:
            # study-level routes hold their series until the study is complete (gateway.receive.completion)
            made = completion.run_once() if completion else state.make_jobs_for_stable_series(stable_seconds)
            outage.ok()
            for job_id in made:
                job = state.job(job_id)
                metrics.series_completed.inc()
                log.info(
                    "series.stable",
                    job_id=job_id,
                    study_uid=job.study_uid,
                    series_uid=job.series_uid,
                    modality=job.modality,
                    instances=job.instance_count,
                )
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure; Outage logs it once
            wait = max(interval, outage.failed(exc))
        stop.wait(wait)


def _run_worker(settings: Settings, parent: int) -> None:
    """Spawned worker's entry: imports torch there, so the service process never loads it (~200 MiB)."""
    from gateway.enhance import worker
    worker.run(settings, parent)


class Gateway:
    """Start/stop the whole service; `serve()` blocks until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, roles: frozenset[str] = frozenset(ROLES)) -> None:
        self.settings = settings
        self.roles = roles
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        self.state = open_state(settings)
        self.spool = LocalSpool(settings.spool_dir, min_free_mb=settings.min_free_mb)
        self.metrics = Metrics()
        self.metrics.watch_state(self.state)
        self.metrics.watch_disk(lambda: self.spool.free_mb() * 1e6, settings.min_free_mb)
        receives = "receive" in roles
        self.receiver = Receiver(settings, self.state, self.spool, self.metrics) if receives else None
        self.http: HttpEndpoint | None = None
        # STOW-RS reception beside the SCP, same spool and state (`[dicomweb] enabled`)
        stow = receives and settings.dicomweb.enabled
        self.stow = StowService(settings, self.state, self.spool, self.metrics) if stow else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self.marker = RunMarker(settings.var_dir)

    def _bind_http(self) -> HttpEndpoint | None:
        """Bind the metrics port first, before the SCP listens or a worker starts (issue 15, defect 11).

        Why first: a port clash found after the SCP listened left a half-started gateway that died with a bare
        `OSError: [Errno 98]`; here it stops the start with the setting to change and how.
        """
        met = self.settings.metrics
        if not met.port:
            return None
        try:
            return HttpEndpoint(met.host, met.port, self.metrics, self.health)
        except OSError as exc:
            raise ConfigError(
                f"[metrics] port = {met.port} cannot be used on {met.host}: {exc.strerror or exc} (another gateway"
                " or program listens there); give this gateway its own port in [metrics] (e.g. port ="
                f" {met.port + 1}), or port = 0 to turn /metrics and /healthz off"
            ) from None

    def start(self) -> None:
        configure_process()  # pynetdicom's process-wide flags, before any association (and it stops a wrong install)
        self.http = self._bind_http()
        if self.stow is not None:  # its port too, before anything listens (a clash is a ConfigError)
            try:
                self.stow.bind()
            except BaseException:
                if self.http is not None:  # bound, not serving: close it (shutdown() would wait for ever)
                    self.http.server.server_close()
                raise
        try:
            # the marker protects unsynced instance rows, which only reception writes
            unclean = self.marker.begin() if self.receiver is not None else False
        except OSError as exc:  # a full or read-only var_dir must not keep the gateway from starting
            unclean = True  # cannot tell; a reconciliation pass is harmless
            self.state.fast_instance_rows = False  # no marker to protect unsynced rows: sync them
            log.error(
                "gateway.run_marker_failed",
                path=str(self.marker.path),
                error=f"{type(exc).__name__}: {exc}"[:300],
                hint="instance rows are synced instead (slower reception); free space under var_dir and restart",
            )
        recovered = recover_dead(self.state)  # expired leases, and claims of this host's dead processes
        cleaned = self.spool.clean_tmp()
        if unclean:
            found = reconcile(self.spool, self.state)
            log.warning(
                "gateway.unclean_stop_recovered",
                recorded_again=found.recorded,
                unreadable=found.unreadable,
                hint="the last run ended without a clean stop (crash, kill -9 or power loss)",
            )
        log.info(
            "gateway.starting",
            var_dir=str(self.settings.var_dir),
            state=describe_state(self.settings),  # a PostgreSQL URL without its password
            roles=sorted(self.roles),
            requeued_enhancing=recovered["enhancing"],
            requeued_sending=recovered["sending"],
            partial_files_removed=cleaned,
            destinations=[d.name for d in self.settings.destinations],
            workers=self.settings.enhance.workers if "enhance" in self.roles else 0,
        )
        if "enhance" in self.roles:
            for _ in range(self.settings.enhance.workers):
                self._start_worker()
        self._threads = [threading.Thread(target=self._watch_workers, name="workers", daemon=True)]
        if "complete" in self.roles:
            completion = Completion(self.state, self.spool, self.settings.routes, self.settings.stable_seconds)
            self._threads.append(threading.Thread(
                target=_completion_loop,
                args=(self.state, self.settings.stable_seconds, self._stop, self.metrics, completion),
                name="completion",
                daemon=True,
            ))
        if "send" in self.roles:
            snd = sender.Sender(self.settings, self.state, self.spool, self.metrics)
            self._threads.append(
                threading.Thread(target=sender.run_loop, args=(snd, self._stop), name="sender", daemon=True)
            )
        for t in self._threads:
            t.start()
        if self.receiver is not None:
            self.receiver.start()
        if self.stow is not None:
            self.stow.start()
        if self.http is not None:
            self.http.start()

    def health(self) -> dict[str, str]:
        receiver = self.receiver
        if receiver is None:  # a node without the receive role has no SCP to check
            return health_checks(self.state, None, self.spool.check_health)
        checks = health_checks(
            self.state, lambda: receiver.port if receiver.server else None, self.spool.check_health
        )
        if checks.get("scp") == "ok":  # listening is not enough: a sender must also find a free slot
            checks["scp"] = receiver.slots()
        return checks

    @property
    def port(self) -> int:
        if self.receiver is None:
            raise ConfigError("this gateway process has no receive role: it listens on no DICOM port")
        return self.receiver.port

    def _start_worker(self) -> None:
        proc = self._ctx.Process(
            target=_run_worker, args=(self.settings, os.getpid()), name="enhance-worker", daemon=True
        )
        proc.start()
        self._workers.append(proc)

    def _watch_workers(self) -> None:
        """A worker that died (OOM killer, segfault) is replaced and its job re-queued; so are the jobs of any
        owner whose lease ran out (another node's) or whose process on this host is gone (an orphaned worker of
        a killed predecessor, once it has stopped). `is_alive()` reaps a dead child first, so its pid is gone."""
        while not self._stop.wait(1.0):
            died = [p for p in self._workers if not p.is_alive() and not self._stop.is_set()]
            try:
                requeued = recover_dead(self.state)
            except Exception as exc:  # noqa: BLE001 - a full disk: the next second tries again
                requeued = {"enhancing": 0, "sending": 0}
                log.warning("lease.recover_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            for proc in died:
                self._workers.remove(proc)
                log.error("worker.died", pid=proc.pid, exitcode=proc.exitcode, requeued=requeued["enhancing"])
                self._start_worker()
            if not died and any(requeued.values()):
                log.warning("lease.recovered", requeued_enhancing=requeued["enhancing"],
                            requeued_sending=requeued["sending"])

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: no new associations, threads and workers finish their current step."""
        if self.receiver is not None:
            self.receiver.stop()
        if self.stow is not None:
            self.stow.stop()
        if self.http is not None:
            self.http.stop()
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        for proc in self._workers:
            proc.terminate()  # SIGTERM: the worker finishes its current job, then exits
        deadline = time.monotonic() + timeout
        for proc in self._workers:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.state.close()
        if self.receiver is not None:  # only reception began it (another role's process may share var_dir)
            self.marker.end()
        log.info("gateway.stopped")

    def serve(self) -> None:
        stops = StopSignals(signal.SIGTERM, signal.SIGINT)  # before start(): a signal during it is kept
        self.start()
        while not stops.sleep(3600.0):
            pass
        log.info("gateway.signal", signal=stops.name)
        self.stop()
