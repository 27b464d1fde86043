"""`enhance-gateway db status|upgrade`: the state database's schema version, and applying the pending migrations.

Why a command as well as the migration at start-up: on a shared PostgreSQL the admin upgrades the schema once,
before rolling the new release over the nodes (a node older than the schema refuses to start; one newer than
it migrates under the advisory lock anyway). The embedded SQLite store migrates itself when opened, so for it
`upgrade` just opens and closes it, and `status` says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, StateError


def add_command(subparsers: Any) -> None:
    """Register `db` and its actions on the CLI's subparsers (the CLI adds --config)."""
    p = subparsers.add_parser("db", help="state database: schema status, upgrade (migrations)")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir (the SQLite store lives there)")
    sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    s = sub.add_parser("status", help="where the state lives, its schema version and the pending migrations")
    s.add_argument("--json", action="store_true")
    sub.add_parser("upgrade", help="apply the pending migrations (safe while other nodes run or upgrade)")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from gateway import settings as settings_mod
    from gateway.storage import factory, pg_schema

    cfg = settings_mod.load(getattr(args, "config", None))
    if args.var_dir is not None:
        cfg = cfg.with_overrides(var_dir=args.var_dir)
    where = factory.describe(cfg)
    url = cfg.state.url
    try:
        if args.db_command == "upgrade":
            if url:
                applied = pg_schema.upgrade(url)
                done = f"applied migration(s) {', '.join(map(str, applied))}" if applied else "already up to date"
                print(f"{where}: {done} (schema version {pg_schema.LATEST})")
            else:
                factory.open_state(cfg).close()  # SQLite adds what an older version lacks when it opens
                print(f"{where}: up to date (SQLite migrates itself when opened)")
            return 0
        if url:
            now = pg_schema.status(url)
            row: dict[str, Any] = {"store": "postgresql", "where": where, "version": now.version,
                                   "latest": now.latest, "pending": now.pending, "applied_at": now.applied_at}
        else:
            row = {"store": "sqlite", "where": where, "exists": cfg.state_db.is_file()}
    except StateError as exc:
        raise GatewayError(str(exc)) from None
    if args.json:
        print(json.dumps(row, indent=2))
    elif url:
        advice = (" (newer than this gateway: upgrade the gateway)" if row["version"] > row["latest"] else
                  f": {row['pending']} pending, `enhance-gateway db upgrade` applies them" if row["pending"] else
                  ": up to date")
        print(f"{where}: schema version {row['version']} of {row['latest']}{advice}")
    else:
        print(f"{where}: {'exists' if row['exists'] else 'not created yet (`serve` creates it)'};"
              " SQLite migrates itself when opened")
    return 0
