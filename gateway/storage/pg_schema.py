"""The PostgreSQL schema of the state store as numbered migrations, applied under an advisory lock.

Why numbered migrations and not the SQLite store's "add what is missing" at open: several nodes share one
database, and may run different releases for the length of a rolling upgrade. A `schema_version` row per applied
migration says exactly what a database holds; a node whose code is older than the database refuses to start
instead of writing rows it does not understand. Why `pg_advisory_lock`: two nodes starting together would
otherwise both see version N and both run N+1 (a duplicate `CREATE TABLE` fails, a duplicate `ALTER` may not).
The lock is taken on a dedicated connection, and each migration runs in its own transaction with its version
row, so a migration is applied whole or not at all.

Append a migration to add a column or a table; never edit one that was released (a database that applied it
would not apply the change).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg

from gateway.errors import StateError

#: Key of the session-level advisory lock that serialises migrations (any constant, the same on every node).
MIGRATION_LOCK = 0x656E_6877_6D69_6772  # "enhwmigr"

#: Times are epoch seconds in DOUBLE PRECISION, as the SQLite store keeps them (REAL): both stores return the
#: same dataclasses, and the console and CLI format one kind of timestamp. `owner` is a worker id
#: (`gateway.storage.lease`: host:pid:random), since a bare pid means nothing on a database shared by machines.
_V1 = """
CREATE TABLE series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX series_study ON series(study_uid);
CREATE INDEX series_last_at ON series(last_at);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    state TEXT NOT NULL,
    failed_stage TEXT,
    enhancer TEXT,
    enhancer_version TEXT,
    device TEXT,
    only_destination TEXT,
    reprocess INTEGER NOT NULL DEFAULT 0,
    derived_series_uid TEXT,
    instance_count INTEGER NOT NULL,
    derived_count INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at DOUBLE PRECISION,
    error TEXT,
    skip_reason TEXT,
    psnr DOUBLE PRECISION,
    ssim DOUBLE PRECISION,
    enhance_seconds DOUBLE PRECISION,
    owner TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    strength DOUBLE PRECISION,
    noise_sigma DOUBLE PRECISION,
    noise_method TEXT,
    qa_verdict TEXT,
    qa_action TEXT,
    qa_reasons TEXT,
    dr_psnr DOUBLE PRECISION,
    dr_ssim DOUBLE PRECISION,
    reviewed_at DOUBLE PRECISION,
    study_group TEXT,
    lease_expires_at DOUBLE PRECISION
);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_series ON jobs(series_uid);
CREATE INDEX jobs_study ON jobs(study_uid);
CREATE INDEX jobs_group ON jobs(study_group) WHERE study_group IS NOT NULL;
CREATE TABLE instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    job_id BIGINT REFERENCES jobs(id),
    purged_at DOUBLE PRECISION
);
CREATE INDEX instances_unassigned ON instances(series_uid) WHERE job_id IS NULL;
CREATE INDEX instances_series ON instances(series_uid);
CREATE INDEX instances_study ON instances(study_uid);
CREATE INDEX instances_job ON instances(job_id);
CREATE TABLE job_members (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    sop_uid TEXT NOT NULL REFERENCES instances(sop_uid),
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE deliveries (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    delivered_at DOUBLE PRECISION,
    PRIMARY KEY (job_id, destination)
);
CREATE INDEX deliveries_pending ON deliveries(next_try_at) WHERE state = 'pending';
CREATE TABLE destination_health (
    destination TEXT PRIMARY KEY,
    last_success_at DOUBLE PRECISION,
    last_failure_at DOUBLE PRECISION,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_login_at DOUBLE PRECISION
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    source TEXT,
    detail TEXT
);
CREATE INDEX audit_at ON audit(at);
CREATE TABLE derived_series_numbers (
    derived_series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    number INTEGER NOT NULL,
    UNIQUE (study_uid, number)
);
"""

#: Rows store keys, not paths: the spool maps (study, series, SOP) to its file, so a row's path could only go
#: stale (a spool moved to shared storage) or be read around the spool. A node of the release before still writes
#: the column and cannot record an instance once this is applied (by `db upgrade` or the first new node to start):
#: stop those nodes first. (No release shipped migration 1 alone, so no rolling upgrade crosses this one.)
_V2 = """
ALTER TABLE instances DROP COLUMN path;
"""

#: Migration N is MIGRATIONS[N - 1]; append only.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
LATEST = len(MIGRATIONS)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


def redact(url: str) -> str:
    """The URL with its password replaced by `***` (in the authority or as a `password=` parameter): what logs,
    error messages and `db status` print."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        "password=***" if kv.split("=", 1)[0].lower() == "password" else kv for kv in parts.query.split("&")
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: str) -> str | None:
    """What is wrong with a `[state] url` (None: nothing): the scheme, then libpq's own parse of the rest."""
    scheme = urlsplit(url).scheme
    if scheme not in ("postgresql", "postgres"):
        return f"scheme {scheme or '(none)'!r} is not postgresql://"
    for host in urlsplit(url).netloc.rpartition("@")[2].split(","):  # libpq takes h1:p1,h2:p2 for failover
        port = host.rpartition(":")[2] if ":" in host and not host.endswith("]") else "5432"
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"port {port!r} is not a TCP port"
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        return str(exc).replace(url, redact(url)).strip()
    return None


@dataclass(frozen=True)
class SchemaStatus:
    version: int            # highest applied migration (0: an empty database)
    latest: int             # highest migration this code knows
    applied_at: float | None

    @property
    def pending(self) -> int:
        return max(0, self.latest - self.version)


def _connect(url: str, connect_timeout: float) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, round(connect_timeout)), application_name="enhance-gateway"
        )
    except psycopg.OperationalError as exc:
        raise StateError(f"cannot reach the state database {redact(url)}: {exc}".strip()) from exc


def _version(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, float | None]:
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0, None
    row = conn.execute("SELECT version, applied_at FROM schema_version ORDER BY version DESC LIMIT 1").fetchone()
    return (0, None) if row is None else (int(str(row[0])), float(str(row[1])))


def status(url: str, connect_timeout: float = 10.0) -> SchemaStatus:
    """Which migrations the database has (no lock, changes nothing)."""
    with _connect(url, connect_timeout) as conn:
        try:
            version, at = _version(conn)
        except psycopg.Error as exc:
            raise StateError(f"cannot read the schema version of {redact(url)}: {exc}") from exc
    return SchemaStatus(version, LATEST, at)


def upgrade(url: str, connect_timeout: float = 10.0) -> list[int]:
    """Apply the migrations the database lacks, in order, under the advisory lock; the versions applied.

    Idempotent: a second call (or a second node waiting on the lock) finds nothing to do. A database newer than
    this code raises StateError: an older node must not write into a schema it does not know.
    """
    applied: list[int] = []
    with _connect(url, connect_timeout) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            try:
                conn.execute(_VERSION_TABLE)
                version, _ = _version(conn)
                if version > LATEST:
                    raise StateError(too_new(url, version))
                for number in range(version + 1, LATEST + 1):
                    with conn.transaction():
                        conn.execute(MIGRATIONS[number - 1])
                        conn.execute(
                            "INSERT INTO schema_version(version, applied_at) VALUES (%s, %s)", (number, time.time())
                        )
                    applied.append(number)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        except psycopg.Error as exc:
            raise StateError(f"cannot migrate the state database {redact(url)}: {exc}") from exc
    return applied


def too_new(url: str, version: int) -> str:
    return (
        f"the state database {redact(url)} has schema version {version}, newer than this gateway knows"
        f" ({LATEST}): upgrade the gateway on this node to the release the others run"
    )


def require_current(url: str, connect_timeout: float = 10.0) -> None:
    """For commands that must not change the database: StateError unless it is at this code's version."""
    now = status(url, connect_timeout)
    if now.version == 0:
        raise StateError(f"no gateway schema in {redact(url)}: wrong [state] url, or run `enhance-gateway db upgrade`")
    if now.version > LATEST:
        raise StateError(too_new(url, now.version))
    if now.pending:
        raise StateError(
            f"the state database {redact(url)} is at schema version {now.version}, this gateway needs {LATEST}:"
            " run `enhance-gateway db upgrade`"
        )
