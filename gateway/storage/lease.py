"""Job ownership: a worker id plus a lease, renewed by a heartbeat while the work lasts.

Why not a pid: several processes on several machines may share one state store (the scale-out issue); a pid
says nothing about another host, and a restarted host reuses pids. A claim records `host:pid:random` and a
lease expiry; a live owner keeps renewing it (`Heartbeat`), so an owner that died anywhere shows as an expired
lease and `recover()` hands its jobs back to their queue. An owner on this host whose process is gone is dead
for certain, so `recover_dead` does not wait for its lease to run out (a restart after kill -9 resumes at once).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections import Counter
from collections.abc import Callable

from gateway import logs
from gateway.storage.state import StateStore

log = logs.get("gateway.lease")

#: Seconds a claim stays valid without renewal (`[state] lease_seconds`): long enough that a loaded machine's
#: heartbeat never misses it (renewed every third of it), short enough that a dead node's jobs resume soon.
LEASE_SECONDS = 60.0


def new_worker_id() -> str:
    """`host:pid:random`: unique across machines and across pid reuse (the random part), readable by an admin."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def dead_here(owner: str) -> bool:
    """True when `owner` ran on this host and its process is gone (an owner elsewhere, or not a worker id, is
    left to its lease)."""
    host, sep, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if not sep or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover_dead(state: StateStore) -> dict[str, int]:
    """Re-queue the jobs of owners whose lease expired, and of owners on this host whose process is gone."""
    total = Counter(state.recover())
    for owner in state.lease_holders():
        if owner != state.worker_id and dead_here(owner):
            total.update(state.recover(owner=owner))
    return {"enhancing": total["enhancing"], "sending": total["sending"]}


class Heartbeat:
    """Renews the leases of the jobs this process holds, every third of the lease, from a daemon thread.

    Why a thread and not only renewals between batches: one batch on a slow CPU, or one large series sent to a
    slow PACS, may take longer than the lease. A job whose renewal fails was taken over (its lease had expired
    and another worker claimed it): `lost()` tells the worker to stop writing for it.
    """

    def __init__(self, state: StateStore, lease_seconds: float, alive: Callable[[], bool] = lambda: True) -> None:
        self.state = state
        self.alive = alive  # False: this process is an orphan, its leases must run out (the thread stops)
        self.interval = max(0.05, lease_seconds / 3)
        self._held: Counter[int] = Counter()
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def hold(self, job_id: int) -> None:
        """A claim of `job_id` by this process (counted: several destinations may hold one job at once)."""
        with self._lock:
            self._held[job_id] += 1
            self._lost.discard(job_id)

    def drop(self, job_id: int) -> None:
        with self._lock:
            self._held[job_id] -= 1
            if self._held[job_id] <= 0:
                del self._held[job_id]

    def lost(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._lost

    def renew_now(self) -> None:
        """Renew every held lease once (the thread's step; also called between batches)."""
        with self._lock:
            held = list(self._held)
        for job_id in held:
            if not self.state.renew_lease(job_id, self.state.worker_id):
                with self._lock:
                    if job_id in self._held and job_id not in self._lost:
                        self._lost.add(job_id)
                        log.warning("lease.lost", job_id=job_id, owner=self.state.worker_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self.alive():
            try:
                self.renew_now()
            except Exception as exc:  # noqa: BLE001 - a failed renewal (disk full) is retried at the next beat
                log.warning("lease.renew_failed", error=f"{type(exc).__name__}: {exc}"[:300])
