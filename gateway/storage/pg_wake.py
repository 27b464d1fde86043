"""Wake-ups over PostgreSQL LISTEN/NOTIFY: a worker or sender sleeps until work may be there, not a fixed poll.

Why one listener thread per store: any number of threads (one sender per destination, the enhancement loop)
wait at once, and LISTEN needs a connection of its own, outside the pool (a pooled connection is reset between
uses and would drop its LISTEN). The thread keeps one autocommit connection that listens on every channel and
counts the notifications per channel; waiters block on a condition until the count moves.

Why a count per thread and not a plain event: a notification that arrives while a caller is busy claiming
(between its empty claim and its next wait) is not lost: the next `wait` returns at once. A thread's count
starts at zero, so its first `wait` also returns at once when anything was announced since LISTEN took effect
(one needless claim at worst, instead of a notification missed by a thread that had not waited yet).

Polling stays the fallback, by construction: `wait` returns after `timeout` whatever happens, and while the
server is unreachable the thread reconnects with growing pauses and waiters simply time out.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import psycopg

from gateway import logs
from gateway.storage.state import WorkKind

log = logs.get("gateway.storage.pg_wake")

JOBS_CHANNEL = "enhance_gw_jobs"
DELIVERIES_CHANNEL = "enhance_gw_deliveries"
CHANNELS: tuple[str, ...] = (JOBS_CHANNEL, DELIVERIES_CHANNEL)
#: The channel each kind of work is announced on (`StateStore.wait_for_work`).
CHANNEL_OF: dict[WorkKind, str] = {WorkKind.JOBS: JOBS_CHANNEL, WorkKind.DELIVERIES: DELIVERIES_CHANNEL}


class Listener:
    """LISTEN on `channels` in a daemon thread started by the first `wait`; `close` ends it."""

    def __init__(self, url: str, channels: Sequence[str] = CHANNELS, connect_timeout: float = 5.0) -> None:
        self._url = url
        self._channels = tuple(channels)
        self._connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(self._channels, 0)
        self._seen = threading.local()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.listening = threading.Event()   # set while LISTEN is in effect (tests wait on it before a NOTIFY)

    def wait(self, channel: str, timeout: float) -> bool:
        """Block until a notification on `channel` arrived since this thread's previous `wait` (True) or
        `timeout` seconds passed (False)."""
        if channel not in self._counts:
            raise ValueError(f"{channel!r} is not one of {', '.join(self._channels)}")
        self._start()
        seen: dict[str, int] = self._seen.__dict__.setdefault("counts", {})
        with self._cond:
            last = seen.setdefault(channel, 0)
            woke = self._cond.wait_for(lambda: self._counts[channel] != last or self._closed.is_set(), timeout)
            seen[channel] = self._counts[channel]
        return bool(woke) and not self._closed.is_set()

    def _start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        pause = 0.5
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout)),
                    application_name="enhance-gateway-listen",
                ) as conn:
                    self._conn = conn
                    for channel in self._channels:
                        conn.execute(f'LISTEN "{channel}"')
                    self.listening.set()
                    pause = 0.5
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._bump(note.channel)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._closed.is_set():
                    break
                log.warning("state.listen_lost", error=str(exc).strip(), retry_in=pause)
                self._closed.wait(pause)
                pause = min(pause * 2, 10.0)
            finally:
                self._conn = None
        self.listening.clear()

    def _bump(self, channel: str) -> None:
        with self._cond:
            if channel in self._counts:
                self._counts[channel] += 1
                self._cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
