"""`[state] url` and `enhance-gateway db status|upgrade` as an admin runs them, against the real PostgreSQL of
the session (`postgres_url`), with the password kept out of every line printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import settings
from gateway.errors import ConfigError, StateError
from gateway.storage import pg_schema
from gateway.storage.factory import describe, open_state
from gateway.storage.postgres_state import PostgresState
from gateway.storage.sqlite_state import SqliteState

REPO = Path(__file__).resolve().parents[3]
SECRET = "pw-never-printed"  # the test cluster trusts loopback, so any password connects


def _config(tmp_path: Path, url: str | None) -> Path:
    state = f'[state]\nurl = "{url}"\n' if url else ""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nvar_dir = "{tmp_path / "var"}"\n'
        '[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{var_dir}/archive"\n' + state
    )
    return path


def _db(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.admin.cli", "db", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def _with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")


def test_db_status_and_upgrade_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    config = _config(tmp_path, _with_password(postgres_url))
    before = _db(config, "status")
    assert before.returncode == 0, before.stderr
    assert f"schema version 0 of {pg_schema.LATEST}" in before.stdout and "db upgrade" in before.stdout
    up = _db(config, "upgrade")
    assert up.returncode == 0, up.stderr
    assert "applied migration(s) 1" in up.stdout
    again = _db(config, "upgrade")
    assert "already up to date" in again.stdout
    status = json.loads(_db(config, "status", "--json").stdout)
    assert (status["store"], status["version"], status["pending"]) == ("postgresql", pg_schema.LATEST, 0)
    for run in (before, up, again):
        assert SECRET not in run.stdout + run.stderr and "postgres:***@127.0.0.1" in run.stdout


def test_db_commands_on_the_embedded_sqlite_store(tmp_path: Path) -> None:
    config = _config(tmp_path, None)
    assert "not created yet" in _db(config, "status").stdout
    assert "up to date" in _db(config, "upgrade").stdout
    assert json.loads(_db(config, "status", "--json").stdout)["exists"] is True


def test_an_unreachable_database_is_one_clear_line_without_the_password(tmp_path: Path) -> None:
    from tests.peers import free_port

    run = _db(_config(tmp_path, f"postgresql://gw:{SECRET}@127.0.0.1:{free_port()}/state"), "status")
    assert run.returncode == 1 and "cannot reach the state database" in run.stderr
    assert SECRET not in run.stdout + run.stderr and "Traceback" not in run.stderr


def test_state_url_picks_the_store_and_is_validated(tmp_path: Path, postgres_url: str) -> None:
    cfg = settings.load(_config(tmp_path, _with_password(postgres_url)))
    assert cfg.state.url == _with_password(postgres_url) and SECRET not in repr(cfg.state)
    assert SECRET not in describe(cfg) and describe(cfg).startswith("PostgreSQL postgresql://postgres:***@")
    with pytest.raises(StateError, match="db upgrade"):
        open_state(cfg, create=False)  # a read-only command never creates the schema
    store = open_state(cfg)
    try:
        assert isinstance(store, PostgresState) and store.lease_seconds == cfg.state.lease_seconds
    finally:
        store.close()
    embedded = settings.load(_config(tmp_path, None))
    with pytest.raises(StateError, match="no state database"):
        open_state(embedded, create=False)
    sqlite = open_state(embedded)
    assert isinstance(sqlite, SqliteState) and describe(embedded) == f"SQLite {embedded.state_db}"
    sqlite.close()
    for bad in ("mysql://u@h/db", "postgresql://h:notaport/db", "not a url", 5):
        with pytest.raises(ConfigError, match=r"state\.url"):
            settings.parse({"destinations": [{"name": "a", "type": "folder", "path": "/tmp/a"}],
                            "state": {"url": bad}})
