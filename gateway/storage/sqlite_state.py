"""The embedded state store: SQLite in WAL mode, one file under var_dir, shared by the service's threads and
its worker processes (`StateStore` in `gateway.storage.state` says what it must do).

Why SQLite: one node needs no server; WAL and busy_timeout let the service and its workers write the same
file, and every transition is one short BEGIN IMMEDIATE transaction. A restart resumes from the last committed
state (`recover()` puts jobs that were mid-flight back in the queue they came from). The statements it shares
with the PostgreSQL store are in `gateway.storage.sql_state`.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.errors import StateError, is_disk_full
from gateway.storage.lease import LEASE_SECONDS, new_worker_id
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

#: Columns added after the first release: (name, SQL type). `State` adds the missing ones to an existing
#: database at start-up (ALTER TABLE ADD COLUMN keeps every row; the new columns start NULL).
_ADDED_JOB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("strength", "REAL"),           # set at creation by `reprocess --strength`, else the route's, recorded
    ("noise_sigma", "REAL"),        # the series' noise estimate (modality units)
    ("noise_method", "TEXT"),
    ("qa_verdict", "TEXT"),         # PASS, WARN, FAIL (NULL: not gated, e.g. QA off or before this version)
    ("qa_action", "TEXT"),          # deliver, flag, hold
    ("qa_reasons", "TEXT"),
    ("dr_psnr", "REAL"),            # DEGRADE_RESTORE score of the series (sample of slices)
    ("dr_ssim", "REAL"),
    ("reviewed_at", "REAL"),        # when an admin released or rejected a held job
    ("study_group", "TEXT"),        # jobs made together for a study-level route: delivered together
    ("lease_expires_at", "REAL"),   # the owner's claim runs out then unless renewed (NULL: a pid-era claim)
)

#: Tables added after the first release (console users and the audit log of their actions), created on an
#: existing database at start-up like the added job columns (IF NOT EXISTS: idempotent, keeps every row).
_ADDED_TABLES = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,    -- argon2id, PHC string (never the password)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_login_at REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,            -- console user name, or cli:<os user> for the command line
    role TEXT,
    action TEXT NOT NULL,           -- login, login_failed, logout, upload, retry, reprocess, release, reject, user_add...
    target TEXT,                    -- job id, user name, upload token: never a patient field
    outcome TEXT NOT NULL,          -- ok, refused, error
    source TEXT,                    -- client address, or cli
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS derived_series_numbers (  -- derived_series_number(): one Series Number per derived series
    derived_series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    number INTEGER NOT NULL,
    UNIQUE (study_uid, number)     -- two derived series of a study never share a number
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL,
    job_id INTEGER REFERENCES jobs(id),  -- the job completion put it in (NULL: series still receiving)
    purged_at REAL                       -- the original was removed from the spool by `purge`
);
CREATE INDEX IF NOT EXISTS instances_unassigned ON instances(series_uid) WHERE job_id IS NULL;
CREATE INDEX IF NOT EXISTS instances_job ON instances(job_id);
CREATE TABLE IF NOT EXISTS job_members (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_uid TEXT NOT NULL REFERENCES instances(sop_uid),
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    state TEXT NOT NULL,
    failed_stage TEXT,
    enhancer TEXT,                  -- set at creation by `reprocess --enhancer`, else by routing
    enhancer_version TEXT,
    device TEXT,
    only_destination TEXT,          -- `reprocess --to DEST`: deliver there only
    reprocess INTEGER NOT NULL DEFAULT 0,
    derived_series_uid TEXT,
    instance_count INTEGER NOT NULL,
    derived_count INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL,
    error TEXT,
    skip_reason TEXT,
    psnr REAL,
    ssim REAL,
    enhance_seconds REAL,
    owner TEXT,                     -- worker id (host:pid:random) of the claim (enhancing / sending)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending, sending (in flight: claim_delivery), done, dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS destination_health (
    destination TEXT PRIMARY KEY,
    last_success_at REAL,
    last_failure_at REAL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);
"""


def _open_failure(path: Path, exc: sqlite3.OperationalError) -> str:
    """What an admin reads when the database cannot be opened; a full disk is told apart (SQLite says only
    `disk I/O error` when it cannot create its -shm file)."""
    free = shutil.disk_usage(path.parent).free
    if is_disk_full(exc) or free < 1_000_000:
        return (
            f"cannot open the state database {path} ({exc}): the file system is full ({free / 1e6:.1f} MB"
            " free); free space under var_dir and start again"
        )
    return f"cannot open the state database {path}: {exc}; var_dir must be on a local, writable file system"


class SqliteState(SqlState[sqlite3.Connection]):
    """SQLite-backed state, safe to share between the threads of one process (one connection, one lock).

    Other processes open their own `State` on the same file; WAL and busy_timeout let them coexist.
    """

    def __init__(self, path: Path, *, worker_id: str | None = None, lease_seconds: float = LEASE_SECONDS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.worker_id = worker_id or new_worker_id()
        self.lease_seconds = lease_seconds
        self._lock = threading.RLock()
        self._closed = threading.Event()  # ends the idle waits of `wait_for_work`
        self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # committed state survives power loss (see record_instance)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.OperationalError as exc:  # a start on a full disk: one clear line, not a traceback
            self._db.close()
            raise StateError(_open_failure(path, exc)) from exc
        # Instance rows may skip the WAL sync only while a run marker lets a restart rebuild them (record_instance)
        self.fast_instance_rows = True

    def _migrate(self) -> None:
        """Add the columns newer versions need to a database an older version created, and drop the ones they
        no longer write (idempotent)."""
        self._db.executescript(_ADDED_TABLES)
        with self._tx() as db:
            have = {str(r["name"]) for r in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_JOB_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            # Rows store keys, not paths (the spool maps a key to its file); older releases wrote `path TEXT NOT
            # NULL`, which would refuse every row written without it. DROP COLUMN (SQLite 3.35+) rewrites the
            # table once, at the first start of this release.
            if "path" in {str(r["name"]) for r in db.execute("PRAGMA table_info(instances)")}:
                db.execute("ALTER TABLE instances DROP COLUMN path")

    def check_writable(self) -> None:
        """Take the write lock and give it back: raises when the database cannot be written."""
        with self._tx():
            pass

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._db.close()

    def wait_for_work(self, kind: WorkKind, timeout: float) -> bool:
        """Sleep `timeout` seconds (less once closed) and answer False: nothing announces work in a file that
        other processes write, so the caller polls, as it always has on one node."""
        self._closed.wait(timeout)
        return False

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # --- reception -------------------------------------------------------------------------------------

    def record_instance(
        self,
        *,
        sop_uid: str,
        series_uid: str,
        study_uid: str,
        sop_class_uid: str,
        modality: str,
        size: int,
        calling_aet: str,
        now: float | None = None,
    ) -> bool:
        """Record a stored instance; False when the SOP Instance UID was already recorded (stored once).

        Why this one transaction commits without syncing the WAL (synchronous=NORMAL for it alone): the caller
        has already made the spool file durable (fsync, rename, fsync of its folder), and that file is the
        record of what was acknowledged; this row indexes it. Syncing the row too cost ~0.3 ms per received
        instance. A process crash loses nothing (the WAL write is in the OS's cache); a power loss can lose
        the last rows, and `gateway.receive.reconcile` records them again from the spool at the next start after an
        unclean stop. Every other transaction stays synchronous=FULL, and so does this one when no run marker
        could be written (`fast_instance_rows` False).
        """
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute(f"PRAGMA synchronous={'NORMAL' if self.fast_instance_rows else 'FULL'}")
            try:
                with self._tx() as db:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO series(series_uid, study_uid, modality, first_at, last_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (series_uid, study_uid, modality, now, now),
                    )
                    if not cur.rowcount:
                        db.execute("UPDATE series SET last_at = ? WHERE series_uid = ?", (now, series_uid))
                    cur = db.execute(
                        "INSERT OR IGNORE INTO instances(sop_uid, series_uid, study_uid, sop_class_uid, size,"
                        " calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (sop_uid, series_uid, study_uid, sop_class_uid, size, calling_aet, now),
                    )
                    return bool(cur.rowcount)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    # --- completion ------------------------------------------------------------------------------------

    def make_jobs_for_stable_series(
        self, stable_seconds: float, now: float | None = None, exclude: Collection[str] = ()
    ) -> list[int]:
        """Turn every series quiet for `stable_seconds` that has unassigned instances into a queued job.

        Late instances of a series that already has a job get a job of their own: their derived UIDs are
        deterministic, so they join the same derived series at the destination. Series in `exclude` wait
        (`gateway.receive.completion` holds the series of a study-level route until their study is complete).
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            rows = [
                r for r in db.execute(
                    "SELECT s.series_uid FROM series s"
                    " JOIN instances i ON i.series_uid = s.series_uid AND i.job_id IS NULL"
                    " WHERE s.last_at <= ? GROUP BY s.series_uid",
                    (now - stable_seconds,),
                )
                if r["series_uid"] not in exclude
            ]
            return self._make_jobs(db, [r["series_uid"] for r in rows], now)

    def _make_jobs(
        self, db: sqlite3.Connection, series_uids: Sequence[str], now: float, *, group: str | None = None,
        skip_reason: str | None = None,
    ) -> list[int]:
        made: list[int] = []
        for series_uid in series_uids:
            row = db.execute(
                "SELECT s.series_uid, s.study_uid, s.modality, COUNT(i.sop_uid) AS n FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid AND i.job_id IS NULL"
                " WHERE s.series_uid = ? GROUP BY s.series_uid",
                (series_uid,),
            ).fetchone()
            if row is None:
                continue
            cur = db.execute(
                "INSERT INTO jobs(study_uid, series_uid, modality, state, instance_count, created_at,"
                " updated_at, study_group, skip_reason, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["study_uid"], row["series_uid"], row["modality"],
                 "skipped" if skip_reason else "queued", row["n"], now, now, group, skip_reason,
                 now if skip_reason else None),
            )
            job_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO job_members(job_id, sop_uid) SELECT ?, sop_uid FROM instances"
                " WHERE series_uid = ? AND job_id IS NULL",
                (job_id, row["series_uid"]),
            )
            db.execute(
                "UPDATE instances SET job_id = ? WHERE series_uid = ? AND job_id IS NULL",
                (job_id, row["series_uid"]),
            )
            made.append(job_id)
        return made

    # --- jobs ------------------------------------------------------------------------------------------

    def jobs(self, state: str | None = None, study_uid: str | None = None, limit: int = 1000) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", list[object]()
        if state:
            sql += " AND state = ?"
            args.append(state)
        if study_uid:
            sql += " AND study_uid = ?"
            args.append(study_uid)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [job_from_row(r) for r in self._query(sql, args)]

    def make_reprocess_job(
        self, series_uid: str, *, enhancer: str | None, only_destination: str | None, strength: float | None = None
    ) -> int:
        """A new queued job over every instance of the series, whichever job first took them."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT s.study_uid, s.modality, COUNT(i.sop_uid) AS n FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid WHERE s.series_uid = ? GROUP BY s.series_uid",
                (series_uid,),
            ).fetchone()
            if row is None:
                raise StateError(f"no instances of series {series_uid} are known to the gateway")
            cur = db.execute(
                "INSERT INTO jobs(study_uid, series_uid, modality, state, instance_count, enhancer,"
                " only_destination, strength, reprocess, created_at, updated_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, 1, ?, ?)",
                (row["study_uid"], series_uid, row["modality"], row["n"], enhancer, only_destination, strength,
                 now, now),
            )
            job_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO job_members(job_id, sop_uid) SELECT ?, sop_uid FROM instances WHERE series_uid = ?",
                (job_id, series_uid),
            )
        return job_id

    def purgeable(self, older_than: float) -> tuple[list[Instance], list[int]]:
        """Originals and job outputs past retention: only of series whose every job is finished.

        A series with a job still queued, running, failed or dead keeps everything: `purge` never takes
        the files a job may still need.
        """
        finished = tuple(str(s) for s in FINISHED_STATES)
        busy = self._query(
            f"SELECT DISTINCT series_uid FROM jobs WHERE state NOT IN {finished!r}"
        )
        busy_series = {r["series_uid"] for r in busy}
        instances = [
            instance_from_row(r)
            for r in self._query(
                "SELECT * FROM instances WHERE purged_at IS NULL AND job_id IS NOT NULL AND received_at < ?",
                (older_than,),
            )
            if r["series_uid"] not in busy_series
        ]
        jobs = [
            int(r["id"])
            for r in self._query(
                f"SELECT id FROM jobs WHERE state IN {finished!r} AND finished_at < ?", (older_than,)
            )
        ]
        return instances, jobs

    def mark_purged(self, sop_uids: Sequence[str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE instances SET purged_at = ? WHERE sop_uid = ?", [(now, u) for u in sop_uids])

    def claim_job(self, from_state: JobState, to_state: JobState, now: float | None = None) -> Job | None:
        """Atomically move the oldest job in `from_state` (or failed at that stage and due) to `to_state`."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? OR (state = 'failed' AND failed_stage = ? AND next_try_at <= ?)"
                " ORDER BY id LIMIT 1",
                (from_state, from_state, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, failed_stage = NULL, owner = ?, lease_expires_at = ?, updated_at = ?"
                " WHERE id = ?",
                (to_state, self.worker_id, now + self.lease_seconds, now, row["id"]),
            )
        return self.job(int(row["id"]))

    def finish_enhancement(
        self,
        job_id: int,
        *,
        destinations: Sequence[str],
        derived_count: int,
        psnr: float | None,
        ssim: float | None,
        seconds: float,
        error: str | None = None,
        qa: QaOutcome | None = None,
    ) -> JobState:
        """enhancing -> enhanced (or held when the QA gate says hold), one pending delivery per destination.

        Deliveries of a held job are recorded too (done ones stay done), so `release` only has to move the
        job to enhanced; the sender never claims a held job. Returns the new state.
        """
        now = time.time()
        qa = qa or QaOutcome()
        new_state = JobState.HELD if qa.hold else JobState.ENHANCED
        with self._tx() as db:
            row = db.execute("SELECT state, owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "enhancing" or row["owner"] != self.worker_id:
                raise JobTakenOver(f"job {job_id} is {row and row['state']} (owner {row and row['owner']}), "
                                   f"no longer enhancing by {self.worker_id}")
            db.execute(
                "UPDATE jobs SET state = ?, derived_count = ?, psnr = ?, ssim = ?, enhance_seconds = ?,"
                " error = ?, attempts = 0, next_try_at = NULL, updated_at = ?, strength = ?, noise_sigma = ?,"
                " noise_method = ?, qa_verdict = ?, qa_action = ?, qa_reasons = ?, dr_psnr = ?, dr_ssim = ?,"
                " reviewed_at = NULL WHERE id = ?",
                (new_state, derived_count, psnr, ssim, seconds, error, now, qa.strength, qa.noise_sigma,
                 qa.noise_method, qa.qa_verdict, qa.qa_action, qa.qa_reasons, qa.dr_psnr, qa.dr_ssim, job_id),
            )
            for name in destinations:
                db.execute(
                    "INSERT INTO deliveries(job_id, destination, state, next_try_at) VALUES (?, ?, 'pending', ?)"
                    " ON CONFLICT(job_id, destination) DO UPDATE SET state = 'pending', attempts = 0,"
                    " next_try_at = excluded.next_try_at, last_error = NULL",
                    (job_id, name, now),
                )
        return new_state

    def release(self, job_id: int) -> Job:
        """An admin releases a held job: held -> enhanced, its deliveries due now. Only a held job."""
        now = time.time()
        with self._tx() as db:
            self._expect_held(db, job_id, "released")
            db.execute(
                "UPDATE jobs SET state = 'enhanced', reviewed_at = ?, updated_at = ? WHERE id = ?", (now, now, job_id)
            )
            db.execute(
                "UPDATE deliveries SET next_try_at = ? WHERE job_id = ? AND state = 'pending'", (now, job_id)
            )
        return self.job(job_id)

    def _expect_held(self, db: sqlite3.Connection, job_id: int, verb: str) -> None:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
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
        """Record a failure at `stage` ('enhancing' or 'sending'); returns the new state (failed or dead).

        `permanent` (retrying cannot help, e.g. an undecodable series): failed at once with no next try
        (`next_try_at` NULL, which no claim ever picks); `retry` by an admin re-queues it as usual.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT attempts, state, owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if stage == "enhancing" and (row["state"] != "enhancing" or row["owner"] != self.worker_id):
                return JobState(row["state"])  # someone else owns it now: not ours to fail
            attempts = int(row["attempts"]) + 1
            state = JobState.FAILED if permanent or attempts < max_attempts else JobState.DEAD
            retry_stage = JobState.QUEUED if stage == JobState.ENHANCING else JobState.ENHANCED
            next_try = None if permanent else now + backoff_delay(attempts, base, cap)
            db.execute(
                "UPDATE jobs SET state = ?, failed_stage = ?, attempts = ?, next_try_at = ?, error = ?,"
                " updated_at = ? WHERE id = ?",
                (state, retry_stage, attempts, next_try, error[:2000], now, job_id),
            )
        return state

    def requeue_job(self, job_id: int, reason: str) -> bool:
        """enhancing -> queued without counting an attempt (the job waits, e.g. for disk space); `reason` is
        kept in its error column until it runs. False when this process no longer owns the job."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_expires_at = NULL, error = ?, updated_at = ?"
                " WHERE id = ? AND state = 'enhancing' AND owner = ?",
                (reason[:2000], now, job_id, self.worker_id),
            )
        return bool(cur.rowcount)

    # --- deliveries ------------------------------------------------------------------------------------

    def deliveries(self, job_id: int) -> list[Delivery]:
        rows = self._query("SELECT * FROM deliveries WHERE job_id = ? ORDER BY destination", (job_id,))
        return [delivery_from_row(r) for r in rows]

    def claim_delivery(
        self, destination: str | None, known: Sequence[str] = (), now: float | None = None
    ) -> tuple[Job, Delivery] | None:
        """One due pending delivery to `destination` (None: to any destination not in `known`), marked
        in flight ('sending'), its job 'sending' too; the oldest due first.

        Why per destination (issue 15, defect 3): each destination has its own sender worker, so a PACS that
        hangs delays only its own deliveries; a job another destination's worker is sending can still be
        claimed for this one. `settle_job` leaves a job 'sending' while any of its deliveries is in flight.
        """
        now = time.time() if now is None else now
        if destination is None:
            where, args = f"d.destination NOT IN ({', '.join('?' * len(known))})", tuple(known)
        else:
            where, args = "d.destination = ?", (destination,)
        with self._tx() as db:
            row = db.execute(
                "SELECT j.id, d.destination FROM jobs j JOIN deliveries d ON d.job_id = j.id AND d.state = 'pending'"
                " WHERE (j.state IN ('enhanced', 'sending') OR (j.state = 'failed' AND j.failed_stage = 'enhanced'))"
                f" AND d.next_try_at <= ? AND {where}{STUDY_GROUP_READY} ORDER BY d.next_try_at, j.id LIMIT 1",
                (now, *args),
            ).fetchone()
            if row is None:
                return None
            job_id, name = int(row["id"]), str(row["destination"])
            db.execute(
                "UPDATE jobs SET state = 'sending', owner = ?, lease_expires_at = ?, updated_at = ? WHERE id = ?",
                (self.worker_id, now + self.lease_seconds, now, job_id),
            )
            db.execute(
                "UPDATE deliveries SET state = 'sending' WHERE job_id = ? AND destination = ?", (job_id, name)
            )
            delivery = delivery_from_row(db.execute(
                "SELECT * FROM deliveries WHERE job_id = ? AND destination = ?", (job_id, name)
            ).fetchone())
        return self.job(job_id), delivery

    def delivery_failed(
        self, job_id: int, destination: str, error: str, *, base: float, cap: float, max_attempts: int
    ) -> DeliveryState:
        """Count a failed attempt; returns 'pending' (will retry) or 'dead' (attempts exhausted)."""
        now = time.time()
        with self._tx() as db:
            attempts = int(
                db.execute(
                    "SELECT attempts FROM deliveries WHERE job_id = ? AND destination = ?", (job_id, destination)
                ).fetchone()[0]
            ) + 1
            state = DeliveryState.DEAD if attempts >= max_attempts else DeliveryState.PENDING
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_try_at = ?, last_error = ?"
                " WHERE job_id = ? AND destination = ?",
                (state, attempts, now + backoff_delay(attempts, base, cap), error[:2000], job_id, destination),
            )
            db.execute(
                "INSERT INTO destination_health(destination, last_failure_at, consecutive_failures) VALUES (?, ?, 1)"
                " ON CONFLICT(destination) DO UPDATE SET last_failure_at = ?,"
                " consecutive_failures = consecutive_failures + 1",
                (destination, now, now),
            )
        return state

    def settle_job(self, job_id: int) -> JobState:
        """sending -> done (all delivered), dead (a delivery is dead) or failed (retry at the next due time)."""
        now = time.time()
        with self._tx() as db:
            rows = list(db.execute("SELECT * FROM deliveries WHERE job_id = ?", (job_id,)))
            states = {r["state"] for r in rows}
            if "sending" in states:  # another destination's worker is still at it: it settles the job
                return JobState.SENDING
            attempts = max((int(r["attempts"]) for r in rows), default=0)
            errors = "; ".join(f"{r['destination']}: {r['last_error']}" for r in rows if r["last_error"])
            if states <= {"done"}:
                db.execute(
                    "UPDATE jobs SET state = 'done', error = NULL, attempts = ?, next_try_at = NULL,"
                    " updated_at = ?, finished_at = ? WHERE id = ?",
                    (attempts, now, now, job_id),
                )
                return JobState.DONE
            if "dead" in states:
                db.execute(
                    "UPDATE jobs SET state = 'dead', failed_stage = 'enhanced', attempts = ?, error = ?,"
                    " updated_at = ? WHERE id = ?",
                    (attempts, errors[:2000], now, job_id),
                )
                return JobState.DEAD
            next_try = min(float(r["next_try_at"]) for r in rows if r["state"] == "pending")
            db.execute(
                "UPDATE jobs SET state = 'failed', failed_stage = 'enhanced', attempts = ?, next_try_at = ?,"
                " error = ?, updated_at = ? WHERE id = ?",
                (attempts, next_try, errors[:2000] or None, now, job_id),
            )
            return JobState.FAILED

    def retry(self, job_id: int) -> JobState:
        """An admin re-queues a failed or dead job: enhancement again if it never finished, else sending."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state, failed_stage FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}; `enhance-gateway status` lists jobs")
            if row["state"] not in ("failed", "dead"):
                raise StateError(f"job {job_id} is {row['state']}: only failed or dead jobs can be retried")
            target = JobState.QUEUED if row["failed_stage"] in (None, JobState.QUEUED) else JobState.ENHANCED
            db.execute(
                "UPDATE jobs SET state = ?, failed_stage = NULL, attempts = 0, next_try_at = NULL, updated_at = ?"
                " WHERE id = ?",
                (target, now, job_id),
            )
            db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_try_at = ? WHERE job_id = ?"
                " AND state != 'done'",
                (now, job_id),
            )
        return target

    def recover(self, owner: str | None = None, now: float | None = None) -> dict[str, int]:
        """Jobs caught mid-stage go back to their queue: those of `owner` (known dead), else those whose lease
        expired (or that a pid-era version claimed: no lease). Their deliveries in flight are pending again.

        Safe because every stage is idempotent: derived UIDs are deterministic, outgoing files are rewritten,
        and a destination that got part of a series receives the same instances again.
        """
        now = time.time() if now is None else now
        args: tuple[object, ...]
        if owner is None:
            who, args = " AND (lease_expires_at IS NULL OR lease_expires_at < ?)", (now,)
        else:
            who, args = " AND owner = ?", (owner,)
        with self._tx() as db:
            sending = [int(r[0]) for r in db.execute(f"SELECT id FROM jobs WHERE state = 'sending'{who}", args)]
            a = db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_expires_at = NULL, updated_at = ?"
                f" WHERE state = 'enhancing'{who}",
                (now, *args),
            ).rowcount
            db.executemany(
                "UPDATE jobs SET state = 'enhanced', owner = NULL, lease_expires_at = NULL, updated_at = ?"
                " WHERE id = ?",
                [(now, job_id) for job_id in sending],
            )
            db.executemany(
                "UPDATE deliveries SET state = 'pending' WHERE job_id = ? AND state = 'sending'",
                [(job_id,) for job_id in sending],
            )
        return {"enhancing": a, "sending": len(sending)}

    # --- console users and audit log ------------------------------------------------------------------

    def add_user(self, name: str, role: str, password_hash: str) -> User:
        """A new user; StateError when the name is taken (change a password with `set_password`)."""
        if role not in USER_ROLES:
            raise StateError(f"role {role!r} is not one of {', '.join(USER_ROLES)}")
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise StateError(f"user {name!r} exists: `enhance-gateway users passwd {name}` sets a new password")
            db.execute(
                "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (name, role, password_hash, now, now),
            )
        user = self.user(name)
        assert user is not None
        return user

    def record_audit(
        self, actor: str, action: str, *, outcome: str = "ok", role: str | None = None, target: str | None = None,
        source: str | None = None, detail: str | None = None,
    ) -> int:
        """Append one audit row (never updated or deleted by the gateway); returns its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO audit (at, actor, role, action, target, outcome, source, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), actor, role, action, target, outcome, source, detail),
            )
            return int(cur.lastrowid or 0)

    def derived_series_number(self, study_uid: str, derived_series_uid: str, candidates: Sequence[int]) -> int:
        """The Series Number of a derived series: the one it got before, else the first candidate that no other
        derived series of the study holds (recorded in the same transaction, so two workers cannot both take it)."""
        with self._tx() as db:
            row = db.execute("SELECT number FROM derived_series_numbers WHERE derived_series_uid = ?",
                             (derived_series_uid,)).fetchone()
            if row is not None:
                return int(row[0])
            taken = {int(r[0]) for r in db.execute("SELECT number FROM derived_series_numbers WHERE study_uid = ?",
                                                   (study_uid,))}
            for number in candidates:
                if number not in taken:
                    db.execute("INSERT INTO derived_series_numbers (derived_series_uid, study_uid, number)"
                               " VALUES (?, ?, ?)", (derived_series_uid, study_uid, number))
                    return number
        raise StateError(f"every Series Number offered for a derived series of this study is taken"
                         f" ({', '.join(map(str, candidates))}): change enhance.series_number_offset")
