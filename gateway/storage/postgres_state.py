"""The shared state store: PostgreSQL through a psycopg 3 connection pool, for several gateway processes on
several machines (`StateStore` in `gateway.storage.state` says what it must do; `SqliteState` is the embedded
twin, and both answer with the same dataclasses).

Why PostgreSQL: it is what Orthanc and dcm4chee index in when one node is not enough, and it gives the three
things a shared work queue needs without a home-made coordinator: row locks that a claimer can skip
(`SELECT ... FOR UPDATE SKIP LOCKED`: several workers never claim the same job, and never wait on each other),
durable commits that survive a crash of any node, and LISTEN/NOTIFY to wake idle workers (`pg_wake`).

Every transition is one transaction, as in the SQLite store. The statements both databases read alike are
written once (`sql_state.SqlState`); the others mirror the SQLite store method by method. Where SQLite
relied on its single writer (read a row, then update it), this store takes the row lock first (`FOR UPDATE`),
in one order: a series before its instances, and a job's deliveries before the job wherever a sender may be
claiming one of them at the same time (`claim_delivery`, `retry`), so two transactions never wait on each other.
Connection failures (server down, restarted, unreachable) become `StateError` with the server named and the
password redacted: the receiver answers 0xA700 and nothing it acknowledged depends on the lost transaction. The
pool checks a connection before lending it, so the store reconnects by itself once the server is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg.abc import Params, Query
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from gateway.errors import StateError
from gateway.storage import pg_schema
from gateway.storage.lease import LEASE_SECONDS, new_worker_id
from gateway.storage.pg_wake import CHANNEL_OF, DELIVERIES_CHANNEL, JOBS_CHANNEL, Listener
from gateway.storage.sql_state import (
    STUDY_GROUP_READY,
    SqlState,
    delivery_from_row,
    instance_from_row,
    job_from_row,
)
from gateway.storage.state import (
    FINISHED_STATES,
    USER_ROLES,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    JobTakenOver,
    QaOutcome,
    User,
    WorkKind,
    backoff_delay,
)

Cursor = psycopg.Cursor[DictRow]


class QmarkCursor(Cursor):
    """A cursor that reads sqlite3's `?` placeholders as psycopg's `%s`: the statements the two stores share
    (`SqlState`) are written once. No statement of this store has a literal `?` (such as jsonb's `?` operator)."""

    def execute(
        self, query: Query, params: Params | None = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Self:
        if isinstance(query, str):
            return super().execute(query.replace("?", "%s"), params, prepare=prepare, binary=binary)
        # composed SQL and templates go through as they are (psycopg's overloads type a template's call apart)
        return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[arg-type, misc]


# The pool logs a warning at every failed reconnection attempt (several a second while the server is down); the
# callers see StateError and log an outage once (`gateway.logs.Outage`), so only the pool's errors are kept.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

_FINISHED = [str(s) for s in FINISHED_STATES]


class PostgresState(SqlState[Cursor]):
    """PostgreSQL-backed state, safe to share between the threads of a process (a pool of connections).

    Other processes and machines open their own `PostgresState` on the same database; claims belong to
    `worker_id` for `lease_seconds` unless renewed (`gateway.storage.lease`). `migrate` applies the pending
    migrations at open (under the advisory lock); without it the schema must already be current. `timeout`
    bounds how long one call waits for a connection while the server is down before StateError.
    """

    def __init__(
        self, url: str, *, worker_id: str | None = None, lease_seconds: float = LEASE_SECONDS, migrate: bool = True,
        min_size: int = 1, max_size: int = 8, timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.where = pg_schema.redact(url)
        self.worker_id = worker_id or new_worker_id()
        self.lease_seconds = lease_seconds
        if migrate:
            pg_schema.upgrade(url, timeout)
        else:
            pg_schema.require_current(url, timeout)
        # Always synchronous commits: the flag of the SQLite store has nothing to relax here.
        self.fast_instance_rows = False
        self._sizes, self._timeout = (min_size, max_size), timeout
        self._pool_lock = threading.Lock()
        self._outage_since = 0.0   # monotonic time of the first failure of the current outage (0: none)
        self._pool = self._new_pool()
        self._listener = Listener(url, connect_timeout=timeout)

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            self.url,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            timeout=self._timeout,
            open=False,
            check=ConnectionPool.check_connection,   # a connection a server restart broke is replaced, not lent
            connection_class=psycopg.Connection[DictRow],
            kwargs={
                "row_factory": dict_row, "connect_timeout": max(1, round(self._timeout)),
                "application_name": "enhance-gateway",
            },
            name="enhance-gateway-state",
        )
        pool.open(wait=False)
        return pool

    def _current_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        """The pool, replaced by a fresh one after an outage (at most once a second).

        Why: the pool reconnects in the background with a doubling delay (1, 2, 4 ... s), so after a restart of
        the server it may sit out a long pause before its next attempt while every call fails. A fresh pool
        connects at its first request, so the store is back as soon as the server is.
        """
        with self._pool_lock:
            if self._outage_since and time.monotonic() - self._outage_since >= 1.0:
                old, self._pool = self._pool, self._new_pool()
                self._outage_since = 0.0
                old.close(timeout=0)
            return self._pool

    def check_writable(self) -> None:
        """Raise StateError when the database cannot take a write (down, or a read-only standby).

        Waits at most 2 s for a connection: /healthz asks this, and a probe must get its answer before it gives up.
        """
        with self._tx(wait=min(2.0, self._timeout)) as db:
            row = db.execute("SELECT current_setting('transaction_read_only') AS ro").fetchone()
            if row is not None and row["ro"] == "on":
                raise StateError(f"the state database {self.where} is read-only (a standby?): point [state] url"
                                 " at the primary")

    def close(self) -> None:
        self._listener.close()
        with self._pool_lock:
            self._pool.close()

    def wait_for_work(self, kind: WorkKind, timeout: float) -> bool:
        """Sleep until a NOTIFY announces work of `kind` (`pg_wake.CHANNEL_OF`) or `timeout`; True when woken.
        Callers claim again either way: polling remains the fallback."""
        return self._listener.wait(CHANNEL_OF[kind], timeout)

    @contextmanager
    def _tx(self, wait: float | None = None) -> Iterator[Cursor]:
        """One transaction on a pooled connection: committed at the end, rolled back on any exception.

        A lost server (no connection within `timeout`, or the connection broke mid-transaction) and a
        transaction the server aborted (deadlock, serialization) both become StateError; only the first marks
        an outage, after which the next call gets a fresh pool.
        """
        conn: psycopg.Connection[DictRow] | None = None
        try:
            with self._current_pool().connection(timeout=wait) as conn, conn.transaction():
                yield QmarkCursor(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # PoolTimeout is an OperationalError
            if conn is None or conn.broken or isinstance(exc, psycopg.InterfaceError):
                with self._pool_lock:
                    self._outage_since = self._outage_since or time.monotonic()
                raise StateError(f"the state database {self.where} is unavailable: {str(exc).strip()}") from exc
            raise StateError(f"a transaction on the state database {self.where} failed: {str(exc).strip()}") from exc

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[DictRow]:
        with self._tx() as db:
            return db.execute(sql, args).fetchall()

    # --- reception -------------------------------------------------------------------------------------

    def record_instance(
        self, *, sop_uid: str, series_uid: str, study_uid: str, sop_class_uid: str, modality: str, size: int,
        calling_aet: str, now: float | None = None,
    ) -> bool:
        """Record a stored instance; False when the SOP Instance UID was already recorded (stored once).

        The series row is upserted first: its row lock orders this against completion making the series' job.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO series(series_uid, study_uid, modality, first_at, last_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (series_uid) DO UPDATE SET last_at = EXCLUDED.last_at",
                (series_uid, study_uid, modality, now, now),
            )
            cur = db.execute(
                "INSERT INTO instances(sop_uid, series_uid, study_uid, sop_class_uid, size, calling_aet,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sop_uid) DO NOTHING",
                (sop_uid, series_uid, study_uid, sop_class_uid, size, calling_aet, now),
            )
            return cur.rowcount > 0

    # --- completion ------------------------------------------------------------------------------------

    def make_jobs_for_stable_series(
        self, stable_seconds: float, now: float | None = None, exclude: Collection[str] = ()
    ) -> list[int]:
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                "SELECT s.series_uid FROM series s WHERE s.last_at <= %s AND EXISTS"
                " (SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid AND i.job_id IS NULL)"
                " ORDER BY s.series_uid",
                (now - stable_seconds,),
            ).fetchall()
            return self._make_jobs(db, [str(r["series_uid"]) for r in rows if r["series_uid"] not in exclude], now)

    def _make_jobs(
        self, db: Cursor, series_uids: Sequence[str], now: float, *, group: str | None = None,
        skip_reason: str | None = None,
    ) -> list[int]:
        """Why the series rows are locked first, in UID order: two completion stages (two nodes) making jobs at
        once then serialise per series, and the second finds no unassigned instance left (no duplicate job);
        the order rules out a deadlock between them."""
        db.execute(
            "SELECT series_uid FROM series WHERE series_uid = ANY(%s) ORDER BY series_uid FOR UPDATE",
            (list(series_uids),),
        )
        made: list[int] = []
        for series_uid in series_uids:
            row = db.execute(
                "SELECT s.series_uid, s.study_uid, s.modality, COUNT(i.sop_uid) AS n FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid AND i.job_id IS NULL"
                " WHERE s.series_uid = %s GROUP BY s.series_uid",
                (series_uid,),
            ).fetchone()
            if row is None:
                continue
            job = db.execute(
                "INSERT INTO jobs(study_uid, series_uid, modality, state, instance_count, created_at, updated_at,"
                " study_group, skip_reason, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (row["study_uid"], row["series_uid"], row["modality"], "skipped" if skip_reason else "queued",
                 row["n"], now, now, group, skip_reason, now if skip_reason else None),
            ).fetchone()
            assert job is not None
            job_id = int(job["id"])
            db.execute(
                "INSERT INTO job_members(job_id, sop_uid) SELECT %s, sop_uid FROM instances"
                " WHERE series_uid = %s AND job_id IS NULL",
                (job_id, series_uid),
            )
            db.execute("UPDATE instances SET job_id = %s WHERE series_uid = %s AND job_id IS NULL", (job_id, series_uid))
            made.append(job_id)
        if made and not skip_reason:
            db.execute(f"NOTIFY {JOBS_CHANNEL}")
        return made

    # --- jobs ------------------------------------------------------------------------------------------

    def jobs(self, state: str | None = None, study_uid: str | None = None, limit: int = 1000) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE TRUE", list[object]()
        if state:
            sql += " AND state = %s"
            args.append(state)
        if study_uid:
            sql += " AND study_uid = %s"
            args.append(study_uid)
        args.append(limit)
        return [job_from_row(r) for r in self._query(sql + " ORDER BY id DESC LIMIT %s", args)]

    def make_reprocess_job(
        self, series_uid: str, *, enhancer: str | None, only_destination: str | None, strength: float | None = None
    ) -> int:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT s.study_uid, s.modality, COUNT(i.sop_uid) AS n FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid WHERE s.series_uid = %s GROUP BY s.series_uid",
                (series_uid,),
            ).fetchone()
            if row is None:
                raise StateError(f"no instances of series {series_uid} are known to the gateway")
            job = db.execute(
                "INSERT INTO jobs(study_uid, series_uid, modality, state, instance_count, enhancer, only_destination,"
                " strength, reprocess, created_at, updated_at) VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s, 1, %s, %s)"
                " RETURNING id",
                (row["study_uid"], series_uid, row["modality"], row["n"], enhancer, only_destination, strength,
                 now, now),
            ).fetchone()
            assert job is not None
            db.execute(
                "INSERT INTO job_members(job_id, sop_uid) SELECT %s, sop_uid FROM instances WHERE series_uid = %s",
                (job["id"], series_uid),
            )
            db.execute(f"NOTIFY {JOBS_CHANNEL}")
        return int(job["id"])

    def purgeable(self, older_than: float) -> tuple[list[Instance], list[int]]:
        busy = {r["series_uid"] for r in self._query(
            "SELECT DISTINCT series_uid FROM jobs WHERE state <> ALL(%s)", (_FINISHED,)
        )}
        instances = [
            instance_from_row(r)
            for r in self._query(
                "SELECT * FROM instances WHERE purged_at IS NULL AND job_id IS NOT NULL AND received_at < %s",
                (older_than,),
            )
            if r["series_uid"] not in busy
        ]
        jobs = [int(r["id"]) for r in self._query(
            "SELECT id FROM jobs WHERE state = ANY(%s) AND finished_at < %s", (_FINISHED, older_than)
        )]
        return instances, jobs

    def mark_purged(self, sop_uids: Sequence[str]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE instances SET purged_at = %s WHERE sop_uid = ANY(%s)", (time.time(), list(sop_uids))
            )

    def claim_job(self, from_state: JobState, to_state: JobState, now: float | None = None) -> Job | None:
        """Atomically move the oldest job in `from_state` (or failed at that stage and due) to `to_state`.

        SKIP LOCKED: a job another worker is claiming right now is passed over, not waited for, so any number of
        workers on any number of machines each get a different job (or None) without queueing on each other.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET state = %s, failed_stage = NULL, owner = %s, lease_expires_at = %s, updated_at = %s"
                " WHERE id = (SELECT id FROM jobs WHERE state = %s"
                " OR (state = 'failed' AND failed_stage = %s AND next_try_at <= %s)"
                " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (str(to_state), self.worker_id, now + self.lease_seconds, now, str(from_state), str(from_state), now),
            ).fetchone()
        return None if row is None else job_from_row(row)

    def finish_enhancement(
        self, job_id: int, *, destinations: Sequence[str], derived_count: int, psnr: float | None,
        ssim: float | None, seconds: float, error: str | None = None, qa: QaOutcome | None = None,
    ) -> JobState:
        now = time.time()
        qa = qa or QaOutcome()
        new_state = JobState.HELD if qa.hold else JobState.ENHANCED
        me = self.worker_id
        with self._tx() as db:
            row = db.execute("SELECT state, owner FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None or row["state"] != "enhancing" or row["owner"] != me:
                raise JobTakenOver(f"job {job_id} is {row and row['state']} (owner {row and row['owner']}), "
                                   f"no longer enhancing by {me}")
            db.execute(
                "UPDATE jobs SET state = %s, derived_count = %s, psnr = %s, ssim = %s, enhance_seconds = %s,"
                " error = %s, attempts = 0, next_try_at = NULL, updated_at = %s, strength = %s, noise_sigma = %s,"
                " noise_method = %s, qa_verdict = %s, qa_action = %s, qa_reasons = %s, dr_psnr = %s, dr_ssim = %s,"
                " reviewed_at = NULL WHERE id = %s",
                (str(new_state), derived_count, psnr, ssim, seconds, error, now, qa.strength, qa.noise_sigma,
                 qa.noise_method, _str(qa.qa_verdict), _str(qa.qa_action), qa.qa_reasons, qa.dr_psnr, qa.dr_ssim,
                 job_id),
            )
            for name in destinations:
                db.execute(
                    "INSERT INTO deliveries(job_id, destination, state, next_try_at) VALUES (%s, %s, 'pending', %s)"
                    " ON CONFLICT (job_id, destination) DO UPDATE SET state = 'pending', attempts = 0,"
                    " next_try_at = EXCLUDED.next_try_at, last_error = NULL",
                    (job_id, name, now),
                )
            # Also when held: the group rule may now let this job's study siblings go out.
            db.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return new_state

    def release(self, job_id: int) -> Job:
        now = time.time()
        with self._tx() as db:
            self._expect_held(db, job_id, "released")
            db.execute(
                "UPDATE jobs SET state = 'enhanced', reviewed_at = %s, updated_at = %s WHERE id = %s", (now, now, job_id)
            )
            db.execute("UPDATE deliveries SET next_try_at = %s WHERE job_id = %s AND state = 'pending'", (now, job_id))
            db.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return self.job(job_id)

    def _expect_held(self, db: Cursor, job_id: int, verb: str) -> None:
        row = db.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"no job {job_id}; `enhance-gateway held` lists the held jobs")
        if row["state"] != "held":
            raise StateError(
                f"job {job_id} is {row['state']}, not held: only a held job can be {verb}"
                " (`enhance-gateway held` lists them)"
            )

    def fail_job(
        self, job_id: int, stage: JobState, error: str, *, base: float, cap: float, max_attempts: int,
        permanent: bool = False,
    ) -> JobState:
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT attempts, state, owner FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}; `enhance-gateway status` lists jobs")
            if stage == "enhancing" and (row["state"] != "enhancing" or row["owner"] != self.worker_id):
                return JobState(row["state"])  # someone else owns it now: not ours to fail
            attempts = int(row["attempts"]) + 1
            state = JobState.FAILED if permanent or attempts < max_attempts else JobState.DEAD
            retry_stage = JobState.QUEUED if stage == JobState.ENHANCING else JobState.ENHANCED
            next_try = None if permanent else now + backoff_delay(attempts, base, cap)
            db.execute(
                "UPDATE jobs SET state = %s, failed_stage = %s, attempts = %s, next_try_at = %s, error = %s,"
                " updated_at = %s WHERE id = %s",
                (str(state), str(retry_stage), attempts, next_try, error[:2000], now, job_id),
            )
            if state == JobState.DEAD or permanent:  # no longer holds back its study group's deliveries
                db.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return state

    def requeue_job(self, job_id: int, reason: str) -> bool:
        with self._tx() as db:
            requeued = db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_expires_at = NULL, error = %s, updated_at = %s"
                " WHERE id = %s AND state = 'enhancing' AND owner = %s",
                (reason[:2000], time.time(), job_id, self.worker_id),
            ).rowcount > 0
            if requeued:
                db.execute(f"NOTIFY {JOBS_CHANNEL}")
        return requeued

    def retry(self, job_id: int) -> JobState:
        now = time.time()
        with self._tx() as db:
            # Deliveries before the job, the order `claim_delivery` takes them in (a sender may be claiming one of
            # this failed job's deliveries right now): the other order could deadlock with it.
            db.execute("SELECT 1 FROM deliveries WHERE job_id = %s ORDER BY destination FOR UPDATE", (job_id,))
            row = db.execute("SELECT state, failed_stage FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}; `enhance-gateway status` lists jobs")
            if row["state"] not in ("failed", "dead"):
                raise StateError(f"job {job_id} is {row['state']}: only failed or dead jobs can be retried")
            target = JobState.QUEUED if row["failed_stage"] in (None, JobState.QUEUED) else JobState.ENHANCED
            db.execute(
                "UPDATE jobs SET state = %s, failed_stage = NULL, attempts = 0, next_try_at = NULL, updated_at = %s"
                " WHERE id = %s",
                (str(target), now, job_id),
            )
            db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_try_at = %s WHERE job_id = %s"
                " AND state != 'done'",
                (now, job_id),
            )
            db.execute(f"NOTIFY {JOBS_CHANNEL if target == JobState.QUEUED else DELIVERIES_CHANNEL}")
        return target

    def recover(self, owner: str | None = None, now: float | None = None) -> dict[str, int]:
        """Jobs caught mid-stage go back to their queue: those of `owner` (known dead), else those whose lease
        expired; deliveries in flight of the jobs taken back are pending again.

        The rows are locked with SKIP LOCKED: a job whose owner is renewing or finishing it right now is left
        alone this time (its lease is being used, so it is not expired in any useful sense).
        """
        now = time.time() if now is None else now
        args: tuple[object, ...]
        if owner is None:
            who, args = "(lease_expires_at IS NULL OR lease_expires_at < %s)", (now,)
        else:
            who, args = "owner = %s", (owner,)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id, state FROM jobs WHERE state IN ('enhancing', 'sending') AND {who}"
                " ORDER BY id FOR UPDATE SKIP LOCKED",
                args,
            ).fetchall()
            enhancing = [int(r["id"]) for r in rows if r["state"] == "enhancing"]
            sending = [int(r["id"]) for r in rows if r["state"] == "sending"]
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_expires_at = NULL, updated_at = %s"
                " WHERE id = ANY(%s)",
                (now, enhancing),
            )
            db.execute(
                "UPDATE jobs SET state = 'enhanced', owner = NULL, lease_expires_at = NULL, updated_at = %s"
                " WHERE id = ANY(%s)",
                (now, sending),
            )
            db.execute("UPDATE deliveries SET state = 'pending' WHERE job_id = ANY(%s) AND state = 'sending'",
                       (sending,))
            if enhancing:
                db.execute(f"NOTIFY {JOBS_CHANNEL}")
            if sending:
                db.execute(f"NOTIFY {DELIVERIES_CHANNEL}")
        return {"enhancing": len(enhancing), "sending": len(sending)}

    # --- deliveries ------------------------------------------------------------------------------------

    def deliveries(self, job_id: int) -> list[Delivery]:
        return [delivery_from_row(r) for r in self._query(
            "SELECT * FROM deliveries WHERE job_id = %s ORDER BY destination", (job_id,)
        )]

    def claim_delivery(
        self, destination: str | None, known: Sequence[str] = (), now: float | None = None
    ) -> tuple[Job, Delivery] | None:
        """One due pending delivery to `destination` (None: to any destination not in `known`), marked in
        flight, its job 'sending'. The delivery row is locked with SKIP LOCKED (two senders of one destination
        on two nodes take different deliveries); the job row is then updated normally, since the senders of
        other destinations of the same job may touch it too (they wait for each other for one short commit)."""
        now = time.time() if now is None else now
        args: tuple[object, ...]
        if destination is None:
            where, args = "d.destination <> ALL(%s)", (list(known),)
        else:
            where, args = "d.destination = %s", (destination,)
        with self._tx() as db:
            row = db.execute(
                "SELECT j.id, d.destination FROM jobs j JOIN deliveries d ON d.job_id = j.id AND d.state = 'pending'"
                " WHERE (j.state IN ('enhanced', 'sending') OR (j.state = 'failed' AND j.failed_stage = 'enhanced'))"
                f" AND d.next_try_at <= %s AND {where}{STUDY_GROUP_READY}"
                " ORDER BY d.next_try_at, j.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED",
                (now, *args),
            ).fetchone()
            if row is None:
                return None
            job_id, name = int(row["id"]), str(row["destination"])
            job = db.execute(
                "UPDATE jobs SET state = 'sending', owner = %s, lease_expires_at = %s, updated_at = %s WHERE id = %s"
                " RETURNING *",
                (self.worker_id, now + self.lease_seconds, now, job_id),
            ).fetchone()
            delivery = db.execute(
                "UPDATE deliveries SET state = 'sending' WHERE job_id = %s AND destination = %s RETURNING *",
                (job_id, name),
            ).fetchone()
        assert job is not None and delivery is not None
        return job_from_row(job), delivery_from_row(delivery)

    def delivery_failed(
        self, job_id: int, destination: str, error: str, *, base: float, cap: float, max_attempts: int
    ) -> DeliveryState:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts FROM deliveries WHERE job_id = %s AND destination = %s FOR UPDATE",
                (job_id, destination),
            ).fetchone()
            if row is None:
                raise StateError(f"no delivery of job {job_id} to {destination}")
            attempts = int(row["attempts"]) + 1
            state = DeliveryState.DEAD if attempts >= max_attempts else DeliveryState.PENDING
            db.execute(
                "UPDATE deliveries SET state = %s, attempts = %s, next_try_at = %s, last_error = %s"
                " WHERE job_id = %s AND destination = %s",
                (str(state), attempts, now + backoff_delay(attempts, base, cap), error[:2000], job_id, destination),
            )
            db.execute(
                "INSERT INTO destination_health(destination, last_failure_at, consecutive_failures) VALUES (%s, %s, 1)"
                " ON CONFLICT (destination) DO UPDATE SET last_failure_at = EXCLUDED.last_failure_at,"
                " consecutive_failures = destination_health.consecutive_failures + 1",
                (destination, now),
            )
        return state

    def settle_job(self, job_id: int) -> JobState:
        """sending -> done, dead or failed. The job row is locked first, so two senders of one job (two
        destinations) settle it one after the other, the second seeing the first's delivery committed."""
        now = time.time()
        with self._tx() as db:
            db.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            rows = db.execute("SELECT * FROM deliveries WHERE job_id = %s", (job_id,)).fetchall()
            states = {r["state"] for r in rows}
            if "sending" in states:
                return JobState.SENDING
            attempts = max((int(r["attempts"]) for r in rows), default=0)
            errors = "; ".join(f"{r['destination']}: {r['last_error']}" for r in rows if r["last_error"])
            if states <= {"done"}:
                db.execute(
                    "UPDATE jobs SET state = 'done', error = NULL, attempts = %s, next_try_at = NULL,"
                    " updated_at = %s, finished_at = %s WHERE id = %s",
                    (attempts, now, now, job_id),
                )
                return JobState.DONE
            if "dead" in states:
                db.execute(
                    "UPDATE jobs SET state = 'dead', failed_stage = 'enhanced', attempts = %s, error = %s,"
                    " updated_at = %s WHERE id = %s",
                    (attempts, errors[:2000], now, job_id),
                )
                return JobState.DEAD
            next_try = min(float(r["next_try_at"]) for r in rows if r["state"] == "pending")
            db.execute(
                "UPDATE jobs SET state = 'failed', failed_stage = 'enhanced', attempts = %s, next_try_at = %s,"
                " error = %s, updated_at = %s WHERE id = %s",
                (attempts, next_try, errors[:2000] or None, now, job_id),
            )
            return JobState.FAILED

    # --- console users and audit log ------------------------------------------------------------------

    def add_user(self, name: str, role: str, password_hash: str) -> User:
        if role not in USER_ROLES:
            raise StateError(f"role {role!r} is not one of {', '.join(USER_ROLES)}")
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, role, password_hash, now, now),
            )
            if not cur.rowcount:
                raise StateError(f"user {name!r} exists: `enhance-gateway users passwd {name}` sets a new password")
        user = self.user(name)
        assert user is not None
        return user

    def record_audit(
        self, actor: str, action: str, *, outcome: str = "ok", role: str | None = None, target: str | None = None,
        source: str | None = None, detail: str | None = None,
    ) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO audit (at, actor, role, action, target, outcome, source, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (time.time(), actor, role, action, target, outcome, source, detail),
            ).fetchone()
        return int(row["id"]) if row else 0

    # --- derived series --------------------------------------------------------------------------------

    def derived_series_number(self, study_uid: str, derived_series_uid: str, candidates: Sequence[int]) -> int:
        """The Series Number of a derived series: the one it got before, else the first candidate no other
        derived series of the study holds. Two workers racing for a number: ON CONFLICT DO NOTHING makes the
        second wait for the first's commit and then move on to the next candidate (or find its series named)."""
        with self._tx() as db:
            for number in candidates:
                row = db.execute(
                    "SELECT number FROM derived_series_numbers WHERE derived_series_uid = %s", (derived_series_uid,)
                ).fetchone()
                if row is not None:
                    return int(row["number"])
                if db.execute(
                    "INSERT INTO derived_series_numbers (derived_series_uid, study_uid, number) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (derived_series_uid, study_uid, number),
                ).rowcount:
                    return number
            row = db.execute(
                "SELECT number FROM derived_series_numbers WHERE derived_series_uid = %s", (derived_series_uid,)
            ).fetchone()
            if row is not None:
                return int(row["number"])
        raise StateError(f"every Series Number offered for a derived series of this study is taken"
                         f" ({', '.join(map(str, candidates))}): change enhance.series_number_offset")


def _str(value: Any) -> str | None:
    """An enum member as its plain text: bound as a plain str, whatever adapter psycopg would pick for an Enum."""
    return None if value is None else str(value)
