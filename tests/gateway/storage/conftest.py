"""The state store contract runs against every implementation: one `params` entry each.

Why a factory and not one store: ownership and recovery are about several processes on one database, so a test
opens a second store (another worker, a restarted service) on the same data. PostgreSQL joins by adding a param
whose factory opens a `PostgresState` on a per-test database of the real server fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.storage.lease import LEASE_SECONDS
from gateway.storage.sqlite_state import SqliteState
from gateway.storage.state import StateStore

#: open(worker_id=None, lease_seconds=LEASE_SECONDS): a new connection to the test's one database.
OpenStore = Callable[..., StateStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    if request.param == "sqlite":
        def open_sqlite(worker_id: str | None = None, lease_seconds: float = LEASE_SECONDS) -> StateStore:
            return SqliteState(tmp_path / "state.db", worker_id=worker_id, lease_seconds=lease_seconds)

        return open_sqlite
    if request.param == "postgres":  # a fresh database of the session's real server (tests/conftest.py)
        from gateway.storage.postgres_state import PostgresState

        url = request.getfixturevalue("postgres_url")
        opened: list[PostgresState] = []

        def open_postgres(worker_id: str | None = None, lease_seconds: float = LEASE_SECONDS) -> StateStore:
            opened.append(PostgresState(url, worker_id=worker_id, lease_seconds=lease_seconds))
            return opened[-1]

        request.addfinalizer(lambda: [s.close() for s in opened])
        return open_postgres
    raise AssertionError(f"no state store implementation {request.param!r}")


@pytest.fixture
def store(open_store: OpenStore) -> StateStore:
    return open_store()
