"""The one place that decides which state store a process opens: PostgreSQL when `[state] url` is set, else the
embedded SQLite file under var_dir.

Why one function: the service, its workers, the console and the admin commands must all open the same store; a
call site that built `SqliteState` by itself would silently run a node on its own private queue beside a shared
PostgreSQL one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import StateError
from gateway.storage.state import StateStore

if TYPE_CHECKING:
    from gateway.settings import Settings


def open_state(settings: Settings, *, create: bool = True, worker_id: str | None = None) -> StateStore:
    """The configured store. `create` False (read-only commands): never create anything; the SQLite file must
    exist, the PostgreSQL schema must be current (StateError saying what to do otherwise)."""
    url = settings.state.url
    lease = settings.state.lease_seconds
    if url:  # psycopg is imported only where PostgreSQL is configured
        from gateway.storage.postgres_state import PostgresState

        return PostgresState(url, worker_id=worker_id, lease_seconds=lease, migrate=create)
    if not create and not settings.state_db.is_file():
        raise StateError(f"no state database at {settings.state_db.absolute()}: wrong --config or var_dir?")
    from gateway.storage.sqlite_state import SqliteState

    return SqliteState(settings.state_db, worker_id=worker_id, lease_seconds=lease)


def describe(settings: Settings) -> str:
    """Where the state lives, for logs and `db status`: the PostgreSQL URL without its password, or the file."""
    url = settings.state.url
    if url:
        from gateway.storage.pg_schema import redact

        return f"PostgreSQL {redact(url)}"
    return f"SQLite {settings.state_db}"
