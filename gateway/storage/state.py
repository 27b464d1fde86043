"""The state seam: what every stage may ask of the state store (instances, jobs, deliveries, users, audit).

Why a Protocol and plain values: one node runs the embedded SQLite store (`gateway.storage.sqlite_state`); sites
that outgrow one machine run a second implementation on PostgreSQL behind the same methods. So callers see only
this module: enums for coded values, frozen dataclasses for everything returned (never a driver row, never a
packed string), and job ownership as a worker id plus a lease, never a bare pid.

Job states: queued -> enhancing -> enhanced -> sending -> done, plus skipped (not an image to enhance),
failed (retryable; `failed_stage` says which stage re-runs at `next_try_at`) and dead (needs an admin).
The QA gate adds held (enhancing -> held: outputs kept, nothing delivered until an admin decides), which
`release` turns into enhanced (delivered as usual) and `reject` into rejected (outputs dropped, final).
"received" is not stored on a job: it counts series whose instances are not yet in a job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from gateway.errors import StateError
from gateway.storage.spool import InstanceKey


class JobState(StrEnum):
    RECEIVED = "received"    # a series still receiving: counted by `counts()`, never a job row's state
    QUEUED = "queued"
    ENHANCING = "enhancing"
    ENHANCED = "enhanced"
    SENDING = "sending"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    DEAD = "dead"
    HELD = "held"
    REJECTED = "rejected"


#: The states a job row can be in (what `jobs(state=...)` accepts).
JOB_STATES: tuple[JobState, ...] = tuple(s for s in JobState if s is not JobState.RECEIVED)
#: States in which a job's work is over: its originals and outputs may be purged after the retention.
FINISHED_STATES: tuple[JobState, ...] = (JobState.DONE, JobState.SKIPPED, JobState.REJECTED)


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"      # in flight: claimed by a sender worker
    DONE = "done"
    DEAD = "dead"


class WorkKind(StrEnum):
    """What an idle loop waits for (`StateStore.wait_for_work`): jobs to enhance, or deliveries to send."""

    JOBS = "jobs"
    DELIVERIES = "deliveries"


class QaVerdict(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


class QaAction(StrEnum):
    DELIVER = "deliver"
    FLAG = "flag"            # delivered with a marker in the Series Description
    HOLD = "hold"            # kept until an admin releases or rejects it


QA_VERDICTS: tuple[QaVerdict, ...] = tuple(QaVerdict)


class UserRole(StrEnum):
    """`viewer` reads jobs and tries enhancers; `admin` also retries, reprocesses, releases and rejects jobs."""

    VIEWER = "viewer"
    ADMIN = "admin"


USER_ROLES: tuple[UserRole, ...] = tuple(UserRole)


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    series_uid: str
    modality: str
    state: JobState
    failed_stage: JobState | None
    enhancer: str | None
    enhancer_version: str | None
    device: str | None
    only_destination: str | None
    reprocess: int
    derived_series_uid: str | None
    instance_count: int
    derived_count: int | None
    attempts: int
    next_try_at: float | None
    error: str | None
    skip_reason: str | None
    psnr: float | None
    ssim: float | None
    enhance_seconds: float | None
    owner: str | None            # worker id (host:pid:random) of the claim while enhancing or sending
    created_at: float
    updated_at: float
    finished_at: float | None
    strength: float | None = None
    noise_sigma: float | None = None
    noise_method: str | None = None
    qa_verdict: QaVerdict | None = None
    qa_action: QaAction | None = None
    qa_reasons: str | None = None
    dr_psnr: float | None = None
    dr_ssim: float | None = None
    reviewed_at: float | None = None
    study_group: str | None = None
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class QaOutcome:
    """What the enhancement stage records besides its counts: noise, strength, QA gate and DEGRADE_RESTORE."""

    strength: float | None = None
    noise_sigma: float | None = None
    noise_method: str | None = None
    qa_verdict: QaVerdict | None = None
    qa_action: QaAction | None = None
    qa_reasons: str | None = None
    dr_psnr: float | None = None
    dr_ssim: float | None = None

    @property
    def hold(self) -> bool:
        return self.qa_action == QaAction.HOLD


@dataclass(frozen=True)
class Instance:
    """A received instance; its file is `spool.open(instance.key)`. The fields after `size` are filled by
    `series_instances` (what `reprocess` and reconciliation read), None elsewhere.

    No path: the key is the file's address, and only the spool knows where that is (rows of older releases
    stored paths; the stores dropped that column).
    """

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    size: int
    modality: str | None = None
    purged_at: float | None = None
    calling_aet: str | None = None
    received_at: float | None = None

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.study_uid, self.series_uid, self.sop_uid)


@dataclass(frozen=True)
class SeriesSummary:
    """A series as completion sees it: its instances (those not yet in a job, for `pending_series`), when it
    started and last grew, and one instance (`sample`) to read its Series Description from."""

    series_uid: str
    study_uid: str
    modality: str
    first_at: float
    last_at: float
    instances: int
    sample_sop_uid: str

    @property
    def sample(self) -> InstanceKey:
        return InstanceKey(self.study_uid, self.series_uid, self.sample_sop_uid)


@dataclass(frozen=True)
class StudyJob:
    id: int
    state: JobState
    enhancer: str | None
    derived_series_uid: str | None


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    series: int
    instances: int
    first_at: float
    last_at: float
    jobs: list[StudyJob] = field(default_factory=list)


@dataclass(frozen=True)
class DestinationHealth:
    destination: str
    last_success_at: float | None
    last_failure_at: float | None
    consecutive_failures: int


@dataclass(frozen=True)
class User:
    """A console user: the hash is argon2id (see gateway.auth); the password itself is never stored."""

    name: str
    role: UserRole
    password_hash: str
    created_at: float
    updated_at: float
    last_login_at: float | None


@dataclass(frozen=True)
class AuditEntry:
    """One admin action: who (actor, role), what (action, target, outcome, detail), when (at), from where."""

    id: int
    at: float
    actor: str
    role: str | None
    action: str
    target: str | None
    outcome: str
    source: str | None
    detail: str | None


@dataclass(frozen=True)
class Delivery:
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_try_at: float
    last_error: str | None
    delivered_at: float | None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2**(attempt-1), at most cap."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def idle_wait(state: StateStore, kind: WorkKind, seconds: float, stopped: Callable[[], bool],
              step: float = 0.1) -> bool:
    """A worker's or sender's wait after an empty claim: until work of `kind` may be there (True), `seconds`
    passed or `stopped()` (False).

    Why in steps: `seconds` is the poll interval, which may be long once wake-ups do the work, and a process
    asked to stop must not sit out the rest of it. Between steps nothing is lost: a wake-up that arrives while
    the caller is not waiting is kept for its next wait (`gateway.storage.pg_wake`).
    """
    deadline = time.monotonic() + seconds
    while not stopped():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if state.wait_for_work(kind, min(step, left)):
            return True
    return False


class JobTakenOver(StateError):
    """This process no longer owns the job (a restarted service re-queued it and another worker claimed it)."""


class StateStore(Protocol):
    """Every state transition is one short transaction; a restart resumes from the last committed state.

    Implementations: `gateway.storage.sqlite_state.SqliteState` (one node) and
    `gateway.storage.postgres_state.PostgresState` (several processes and machines on one database); the one a
    process opens is chosen by `gateway.storage.factory.open_state`. The contract is
    `tests/gateway/storage/test_state_contract.py`, parametrised over implementations.
    """

    #: Instance rows may be committed without syncing while a run marker lets a restart rebuild them
    #: (`record_instance`); an implementation that always syncs ignores it.
    fast_instance_rows: bool
    #: Who this store's claims belong to (`gateway.storage.lease.new_worker_id`), and how long a claim lasts
    #: without renewal.
    worker_id: str
    lease_seconds: float

    def check_writable(self) -> None: ...
    def close(self) -> None: ...
    def wait_for_work(self, kind: WorkKind, timeout: float) -> bool:
        """Block until work of `kind` may have become claimable (True) or `timeout` passed (False).

        A hint, never a promise: True does not mean a claim will succeed (another node may win it), and work
        can appear without a wake-up (a retry whose backoff ran out, a notification lost while the server
        restarted), so callers claim again after every wait and keep `timeout` at their poll interval. The
        embedded store only sleeps (its one node has no one to hear from); PostgreSQL wakes on LISTEN/NOTIFY.
        """
        ...

    # reception
    def instance_purged(self, sop_uid: str) -> bool | None: ...
    def record_instance(
        self, *, sop_uid: str, series_uid: str, study_uid: str, sop_class_uid: str, modality: str, size: int,
        calling_aet: str, now: float | None = None,
    ) -> bool: ...
    def recorded_sop_uids(self, series_uid: str) -> set[str]: ...
    def mark_restored(self, sop_uid: str) -> None: ...

    # completion
    def make_jobs_for_stable_series(
        self, stable_seconds: float, now: float | None = None, exclude: Collection[str] = ()
    ) -> list[int]: ...
    def make_study_jobs(
        self, series_uids: Sequence[str], group: str, *, skip_reason: str | None = None, now: float | None = None
    ) -> list[int]: ...
    def pending_series(self) -> list[SeriesSummary]: ...
    def study_series(self, study_uid: str) -> list[SeriesSummary]: ...

    # jobs
    def job(self, job_id: int) -> Job: ...
    def jobs(self, state: str | None = None, study_uid: str | None = None, limit: int = 1000) -> list[Job]: ...
    def job_instances(self, job_id: int) -> list[Instance]: ...
    def series_instances(self, study_uid: str, series_uid: str | None = None) -> list[Instance]: ...
    def make_reprocess_job(
        self, series_uid: str, *, enhancer: str | None, only_destination: str | None, strength: float | None = None
    ) -> int: ...
    def purgeable(self, older_than: float) -> tuple[list[Instance], list[int]]: ...
    def mark_purged(self, sop_uids: Sequence[str]) -> None: ...
    def studies(self, since: float = 0.0) -> list[StudySummary]: ...
    def claim_job(self, from_state: JobState, to_state: JobState, now: float | None = None) -> Job | None: ...
    def set_job_enhancer(
        self, job_id: int, enhancer: str, version: str, derived_series_uid: str, device: str
    ) -> None: ...
    def finish_enhancement(
        self, job_id: int, *, destinations: Sequence[str], derived_count: int, psnr: float | None,
        ssim: float | None, seconds: float, error: str | None = None, qa: QaOutcome | None = None,
    ) -> JobState: ...
    def release(self, job_id: int) -> Job: ...
    def reject(self, job_id: int) -> Job: ...
    def skip_job(self, job_id: int, reason: str) -> None: ...
    def fail_job(
        self, job_id: int, stage: JobState, error: str, *, base: float, cap: float, max_attempts: int,
        permanent: bool = False,
    ) -> JobState: ...
    def requeue_job(self, job_id: int, reason: str) -> bool: ...
    def retry(self, job_id: int) -> JobState: ...
    def renew_lease(self, job_id: int, worker_id: str) -> bool: ...
    def lease_holders(self) -> list[str]: ...
    def recover(self, owner: str | None = None, now: float | None = None) -> dict[str, int]: ...

    # deliveries
    def deliveries(self, job_id: int) -> list[Delivery]: ...
    def claim_delivery(
        self, destination: str | None, known: Sequence[str] = (), now: float | None = None
    ) -> tuple[Job, Delivery] | None: ...
    def delivery_succeeded(self, job_id: int, destination: str) -> None: ...
    def delivery_failed(
        self, job_id: int, destination: str, error: str, *, base: float, cap: float, max_attempts: int
    ) -> DeliveryState: ...
    def delivery_waiting(self, job_id: int, destination: str, reason: str, *, retry_in: float) -> None: ...
    def settle_job(self, job_id: int) -> JobState: ...

    # reporting
    def qa_verdict_counts(self) -> dict[str, int]: ...
    def counts(self) -> dict[str, int]: ...
    def oldest_waiting(self) -> Job | None: ...
    def destination_health(self) -> list[DestinationHealth]: ...
    def instance_count(self) -> int: ...

    # console users and audit log
    def users(self) -> list[User]: ...
    def user(self, name: str) -> User | None: ...
    def add_user(self, name: str, role: str, password_hash: str) -> User: ...
    def set_password(self, name: str, password_hash: str, role: str | None = None) -> None: ...
    def remove_user(self, name: str) -> None: ...
    def note_login(self, name: str) -> None: ...
    def record_audit(
        self, actor: str, action: str, *, outcome: str = "ok", role: str | None = None, target: str | None = None,
        source: str | None = None, detail: str | None = None,
    ) -> int: ...
    def audit(self, limit: int = 100, actor: str | None = None) -> list[AuditEntry]: ...

    # --- derived series (gateway.enhance.finish.series_number_candidates) ---------------------------------
    def derived_series_number(self, study_uid: str, derived_series_uid: str, candidates: Sequence[int]) -> int: ...


if TYPE_CHECKING:
    from gateway.storage.sqlite_state import SqliteState

    State = SqliteState
else:
    def __getattr__(name: str) -> object:
        """`State`: the embedded default under its old name, for the call sites that construct a store
        (admin CLI, console, tests, benches). Transitional: new code names `SqliteState` where it builds a store
        and `StateStore` everywhere else. Resolved lazily because `sqlite_state` imports this module."""
        if name == "State":
            from gateway.storage.sqlite_state import SqliteState

            return SqliteState
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

