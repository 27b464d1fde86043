"""What the two SQL state stores share: the row mappers, and every transition whose SQL reads the same in
SQLite and PostgreSQL.

Why one base class: `SqliteState` and `PostgresState` keep the same `StateStore` contract with the same
dataclasses, and most of their statements are plain SQL both dialects run alike. Written twice, they drift (a
column read in one store and not the other). What stays in each store is what the databases do differently:
how a transaction takes its locks (BEGIN IMMEDIATE against row locks and SKIP LOCKED), inserts that race, the
schema and its migrations, the connection pool.

The statements here use `?` placeholders, as sqlite3 does; `PostgresState` runs them through `QmarkCursor`,
which turns them into psycopg's `%s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from gateway.errors import StateError
from gateway.storage.state import (
    JOB_STATES,
    QA_VERDICTS,
    USER_ROLES,
    AuditEntry,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Instance,
    Job,
    JobState,
    QaAction,
    QaVerdict,
    SeriesSummary,
    StudyJob,
    StudySummary,
    User,
    UserRole,
)

#: Delivery claims take a job of a study group only when no other job of the group is still to be enhanced
#: (queued, enhancing, or failed with a retry due at the enhancing stage): the derived series of a study go
#: out together. A held, skipped or dead member does not stop the others.
STUDY_GROUP_READY = (
    " AND (j.study_group IS NULL OR NOT EXISTS (SELECT 1 FROM jobs g WHERE g.study_group = j.study_group"
    " AND (g.state IN ('queued', 'enhancing') OR (g.state = 'failed' AND g.failed_stage = 'queued'"
    " AND g.next_try_at IS NOT NULL))))"
)

_JOB_FIELDS = tuple(Job.__dataclass_fields__)


class Row(Protocol):
    """A result row read by column name: `sqlite3.Row` and psycopg's dict rows alike."""

    def keys(self) -> Iterable[str]: ...

    def __getitem__(self, key: str, /) -> Any: ...


class Executor(Protocol):
    """What a transaction hands the statements: an sqlite3 connection or a psycopg cursor."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any: ...


DB = TypeVar("DB", bound=Executor)


def as_dict(row: Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys()}  # noqa: SIM118 - iterating an sqlite3.Row gives its values


def _opt(kind: type[JobState | QaVerdict | QaAction], value: object) -> object:
    return None if value is None else kind(str(value))


def job_from_row(row: Row) -> Job:
    """A job row as the dataclass: coded columns become their enums (an unknown value is a corrupt row: raise)."""
    d = {k: row[k] for k in _JOB_FIELDS}
    d["state"] = JobState(d["state"])
    d["failed_stage"] = _opt(JobState, d["failed_stage"])
    d["qa_verdict"] = _opt(QaVerdict, d["qa_verdict"])
    d["qa_action"] = _opt(QaAction, d["qa_action"])
    d["owner"] = None if d["owner"] is None else str(d["owner"])
    return Job(**d)


def delivery_from_row(row: Row) -> Delivery:
    d = as_dict(row)
    d["state"] = DeliveryState(d["state"])
    return Delivery(**d)


def series_from_row(row: Row, study_uid: str | None = None) -> SeriesSummary:
    return SeriesSummary(
        series_uid=str(row["series_uid"]),
        study_uid=study_uid or str(row["study_uid"]),
        modality=str(row["modality"]),
        first_at=float(row["first_at"]),
        last_at=float(row["last_at"]),
        instances=int(row["n"]),
        sample_sop_uid=str(row["sample_sop_uid"]),
    )


def instance_from_row(row: Row) -> Instance:
    """An instance row; the columns a query did not select (modality, purge mark, ...) are None."""
    d = as_dict(row)
    return Instance(
        sop_uid=str(d["sop_uid"]),
        series_uid=str(d["series_uid"]),
        study_uid=str(d["study_uid"]),
        sop_class_uid=str(d["sop_class_uid"]),
        size=int(d["size"]),
        modality=str(d["modality"]) if "modality" in d else None,
        purged_at=d.get("purged_at"),
        calling_aet=d.get("calling_aet"),
        received_at=d.get("received_at"),
    )


def user_from_row(row: Row) -> User:
    d = as_dict(row)
    d["role"] = UserRole(d["role"])
    return User(**d)


class SqlState(Generic[DB]):
    """The transitions and reports both SQL stores run with the same statements.

    A subclass gives `_tx` (one transaction, committed at the end, rolled back on any exception; `DB` is what
    it hands the statements), `_query` (read rows outside a write), `_make_jobs` and `_expect_held` (whose
    locking differs), and `lease_seconds`.
    """

    lease_seconds: float

    def _tx(self) -> AbstractContextManager[DB]:
        raise NotImplementedError

    def _query(self, sql: str, args: Sequence[object] = ()) -> Sequence[Row]:
        raise NotImplementedError

    def _make_jobs(
        self,
        db: DB,
        series_uids: Sequence[str],
        now: float,
        *,
        group: str | None = None,
        skip_reason: str | None = None,
    ) -> list[int]:
        raise NotImplementedError

    def _expect_held(self, db: DB, job_id: int, verb: str) -> None:
        raise NotImplementedError

    # --- reception -------------------------------------------------------------------------------------

    def instance_purged(self, sop_uid: str) -> bool | None:
        """None: never received; False: recorded and in the spool; True: recorded but purged.

        Why: an instance that `purge` removed and that arrives again (a C-MOVE or WADO-RS retrieval for
        `reprocess`, or a modality resending it) must be stored and its row restored, not dropped as a duplicate.
        """
        rows = self._query("SELECT purged_at FROM instances WHERE sop_uid = ?", (sop_uid,))
        return None if not rows else rows[0]["purged_at"] is not None

    def recorded_sop_uids(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs recorded for a series (reconciliation compares them with the spool's files)."""
        rows = self._query("SELECT sop_uid FROM instances WHERE series_uid = ?", (series_uid,))
        return {str(r["sop_uid"]) for r in rows}

    def mark_restored(self, sop_uid: str) -> None:
        """A purged original was retrieved again (C-GET) and is back in the spool."""
        with self._tx() as db:
            db.execute("UPDATE instances SET purged_at = NULL WHERE sop_uid = ?", (sop_uid,))

    # --- completion ------------------------------------------------------------------------------------

    def make_study_jobs(
        self,
        series_uids: Sequence[str],
        group: str,
        *,
        skip_reason: str | None = None,
        now: float | None = None,
    ) -> list[int]:
        """One job per series (its unassigned instances) in one transaction, all in study group `group`:
        queued, or skipped with `skip_reason` (a study discarded on timeout: visible, and `reprocess` still works)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            return self._make_jobs(db, series_uids, now, group=group, skip_reason=skip_reason)

    def pending_series(self) -> list[SeriesSummary]:
        """Series still receiving (instances not yet in a job): the `received` stage."""
        return [
            series_from_row(r)
            for r in self._query(
                "SELECT s.series_uid, s.study_uid, s.modality, s.last_at, COUNT(i.sop_uid) AS n, s.first_at,"
                " MIN(i.sop_uid) AS sample_sop_uid FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid AND i.job_id IS NULL GROUP BY s.series_uid"
            )
        ]

    def study_series(self, study_uid: str) -> list[SeriesSummary]:
        """Every series of a study, received before or still receiving, with one instance's key (to read its
        Series Description) and when it started and last grew: what a study-level route's completion reads."""
        return [
            series_from_row(r, study_uid)
            for r in self._query(
                "SELECT s.series_uid, s.modality, s.first_at, s.last_at, COUNT(i.sop_uid) AS n,"
                " MIN(i.sop_uid) AS sample_sop_uid FROM series s"
                " JOIN instances i ON i.series_uid = s.series_uid WHERE s.study_uid = ? GROUP BY s.series_uid",
                (study_uid,),
            )
        ]

    # --- jobs ------------------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise StateError(f"no job {job_id}; `enhance-gateway status` lists jobs")
        return job_from_row(rows[0])

    def job_instances(self, job_id: int) -> list[Instance]:
        return [
            instance_from_row(r)
            for r in self._query(
                "SELECT i.sop_uid, i.series_uid, i.study_uid, i.sop_class_uid, i.size FROM instances i"
                " JOIN job_members m ON m.sop_uid = i.sop_uid WHERE m.job_id = ? ORDER BY i.received_at, i.sop_uid",
                (job_id,),
            )
        ]

    def series_instances(self, study_uid: str, series_uid: str | None = None) -> list[Instance]:
        """Every instance of a study (or one series) with its purge mark and its series' modality: what
        `reprocess` starts from (and checks an enhancer against)."""
        sql = (
            "SELECT i.*, s.modality FROM instances i JOIN series s ON s.series_uid = i.series_uid"
            " WHERE i.study_uid = ?"
        )
        args: list[object] = [study_uid]
        if series_uid:
            sql += " AND i.series_uid = ?"
            args.append(series_uid)
        return [
            instance_from_row(r) for r in self._query(sql + " ORDER BY i.series_uid, i.received_at", args)
        ]

    def studies(self, since: float = 0.0) -> list[StudySummary]:
        """One summary per study seen since `since` (the newest first): series, instances, its jobs."""
        rows = self._query(
            "SELECT s.study_uid, COUNT(DISTINCT s.series_uid) AS series, MIN(s.first_at) AS first_at,"
            " MAX(s.last_at) AS last_at,"
            " (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid) AS instances"
            " FROM series s WHERE s.last_at >= ? GROUP BY s.study_uid ORDER BY last_at DESC",
            (since,),
        )
        jobs: dict[str, list[StudyJob]] = {}
        for j in self._query(
            "SELECT j.study_uid, j.id, j.state, j.enhancer, j.derived_series_uid FROM jobs j"
            " JOIN (SELECT DISTINCT study_uid FROM series WHERE last_at >= ?) s ON s.study_uid = j.study_uid"
            " ORDER BY j.id",
            (since,),
        ):
            jobs.setdefault(str(j["study_uid"]), []).append(
                StudyJob(int(j["id"]), JobState(j["state"]), j["enhancer"], j["derived_series_uid"])
            )
        return [
            StudySummary(
                study_uid=str(r["study_uid"]),
                series=int(r["series"]),
                instances=int(r["instances"]),
                first_at=float(r["first_at"]),
                last_at=float(r["last_at"]),
                jobs=jobs.get(str(r["study_uid"]), []),
            )
            for r in rows
        ]

    def set_job_enhancer(
        self, job_id: int, enhancer: str, version: str, derived_series_uid: str, device: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET enhancer = ?, enhancer_version = ?, derived_series_uid = ?, device = ?,"
                " updated_at = ? WHERE id = ?",
                (enhancer, version, derived_series_uid, device, time.time(), job_id),
            )

    def reject(self, job_id: int) -> Job:
        """An admin rejects a held job: held -> rejected (final); its undelivered deliveries are dropped.

        The caller removes the outputs from the spool; the originals and their rows are never touched.
        """
        now = time.time()
        with self._tx() as db:
            self._expect_held(db, job_id, "rejected")
            db.execute(
                "UPDATE jobs SET state = 'rejected', reviewed_at = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                (now, now, now, job_id),
            )
            db.execute("DELETE FROM deliveries WHERE job_id = ? AND state != 'done'", (job_id,))
        return self.job(job_id)

    def skip_job(self, job_id: int, reason: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'skipped', skip_reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                (reason, now, now, job_id),
            )

    def renew_lease(self, job_id: int, worker_id: str) -> bool:
        """Extend `worker_id`'s claim on the job by a lease from now; False when another worker owns it now."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND owner = ?",
                (time.time() + self.lease_seconds, job_id, worker_id),
            )
        return bool(cur.rowcount > 0)

    def lease_holders(self) -> list[str]:
        """Owners of the jobs in flight (enhancing, sending), each once."""
        return [
            str(r["owner"])
            for r in self._query(
                "SELECT DISTINCT owner FROM jobs WHERE state IN ('enhancing', 'sending') AND owner IS NOT NULL"
                " ORDER BY owner"
            )
        ]

    # --- deliveries ------------------------------------------------------------------------------------

    def delivery_succeeded(self, job_id: int, destination: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'done', attempts = attempts + 1, delivered_at = ?, last_error = NULL"
                " WHERE job_id = ? AND destination = ?",
                (now, job_id, destination),
            )
            db.execute(
                "INSERT INTO destination_health(destination, last_success_at, consecutive_failures) VALUES (?, ?, 0)"
                " ON CONFLICT (destination) DO UPDATE SET last_success_at = EXCLUDED.last_success_at,"
                " consecutive_failures = 0",
                (destination, now),
            )

    def delivery_waiting(self, job_id: int, destination: str, reason: str, *, retry_in: float) -> None:
        """A delivery that could not write (its folder's disk is full) tries again in `retry_in` seconds.

        No attempt is counted: waiting for space is not a failure, and must never make a delivery dead.
        """
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'pending', next_try_at = ?, last_error = ?"
                " WHERE job_id = ? AND destination = ?",
                (time.time() + retry_in, reason[:2000], job_id, destination),
            )

    # --- reporting -------------------------------------------------------------------------------------

    def qa_verdict_counts(self) -> dict[str, int]:
        """Series gated per QA verdict, over every job ever enhanced (jobs are never deleted)."""
        out: dict[str, int] = {str(v): 0 for v in QA_VERDICTS}
        for row in self._query(
            "SELECT qa_verdict, COUNT(*) AS n FROM jobs WHERE qa_verdict IS NOT NULL GROUP BY qa_verdict"
        ):
            out[str(row["qa_verdict"])] = int(row["n"])
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {str(s): 0 for s in (JobState.RECEIVED, *JOB_STATES)}
        for row in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[str(row["state"])] = int(row["n"])
        out[JobState.RECEIVED] = len(self.pending_series())
        return out

    def oldest_waiting(self) -> Job | None:
        rows = self._query(
            "SELECT * FROM jobs WHERE state IN ('queued', 'enhancing', 'enhanced', 'sending', 'failed')"
            " AND NOT (state = 'failed' AND next_try_at IS NULL)"  # failed for good: waits for an admin, not a try
            " ORDER BY created_at LIMIT 1"
        )
        return job_from_row(rows[0]) if rows else None

    def destination_health(self) -> list[DestinationHealth]:
        rows = self._query("SELECT * FROM destination_health ORDER BY destination")
        return [DestinationHealth(**as_dict(r)) for r in rows]

    def instance_count(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM instances")[0]["n"])

    # --- console users and audit log ------------------------------------------------------------------

    def users(self) -> list[User]:
        return [user_from_row(r) for r in self._query("SELECT * FROM users ORDER BY name")]

    def user(self, name: str) -> User | None:
        rows = self._query("SELECT * FROM users WHERE name = ?", (name,))
        return user_from_row(rows[0]) if rows else None

    def set_password(self, name: str, password_hash: str, role: str | None = None) -> None:
        """Replace a user's hash (and role when given); StateError when there is no such user."""
        if role is not None and role not in USER_ROLES:
            raise StateError(f"role {role!r} is not one of {', '.join(USER_ROLES)}")
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET password_hash = ?, role = COALESCE(?, role), updated_at = ? WHERE name = ?",
                (password_hash, role, time.time(), name),
            )
            if cur.rowcount == 0:
                raise StateError(f"no user {name!r}: `enhance-gateway users list` shows who exists")

    def remove_user(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise StateError(f"no user {name!r}: `enhance-gateway users list` shows who exists")

    def note_login(self, name: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET last_login_at = ? WHERE name = ?", (time.time(), name))

    def audit(self, limit: int = 100, actor: str | None = None) -> list[AuditEntry]:
        """The newest audit rows first."""
        if actor is None:
            rows = self._query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM audit WHERE actor = ? ORDER BY id DESC LIMIT ?", (actor, limit))
        return [AuditEntry(**as_dict(r)) for r in rows]
