"""`enhance-gateway users add|passwd|remove|list|audit`: the console's accounts, managed on the gateway host.

Why on the command line only: whoever can run this can already read the state database, so it needs no login
of its own, and there is no web page that could be tricked into making an admin. Passwords are read from the
terminal (twice, not echoed) or, for scripts, one line from standard input with `--password-stdin`; never
from an argument, which any local user could read in the process list. Each change is audited like a console
action, with `cli:<login name>` as the actor.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

ROLES = ("viewer", "admin")


def add_command(subparsers: Any) -> None:
    """Register `users` and its actions on the CLI's subparsers."""
    p = subparsers.add_parser("users", help="web console accounts: add, passwd, remove, list, audit")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    sub = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = sub.add_parser("add", help="create a user (asks for the password)")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, required=True,
                   help="viewer: jobs and trying enhancers; admin: also retry, reprocess, release, reject")
    a.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    w = sub.add_parser("passwd", help="set a new password (and optionally a new role)")
    w.add_argument("name")
    w.add_argument("--role", choices=ROLES, help="change the role too")
    w.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    r = sub.add_parser("remove", help="delete a user; their open sessions end at their next request")
    r.add_argument("name")
    ls = sub.add_parser("list", help="users, roles, last login")
    ls.add_argument("--json", action="store_true")
    au = sub.add_parser("audit", help="the newest audit records (who did what, when)")
    au.add_argument("--limit", type=int, default=50)
    au.add_argument("--user", help="only this actor")
    au.add_argument("--json", action="store_true")
    p.set_defaults(func=run_command)


def _password(args: argparse.Namespace) -> str:
    from gateway.auth import check_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise GatewayError("the two passwords differ; nothing changed")
    else:
        raise GatewayError("no terminal to ask for a password on: pipe it in with --password-stdin")
    try:
        check_password(password)
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    return password


def _actor() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def run_command(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway import settings as settings_mod
    from gateway.auth import hash_password, valid_name
    from gateway.errors import StateError
    from gateway.storage.factory import open_state

    cfg = settings_mod.load(getattr(args, "config", None))
    if args.var_dir is not None:
        cfg = cfg.with_overrides(var_dir=args.var_dir)
    state = open_state(cfg)  # `users add` may come before the first serve: it may create the store
    action = args.users_command
    try:
        if action == "list":
            users = state.users()
            if args.json:
                print(json.dumps([{k: v for k, v in asdict(u).items() if k != "password_hash"} for u in users],
                                 indent=2))
            elif not users:
                print("no users: `enhance-gateway users add NAME --role admin` creates the first admin")
            for u in [] if args.json else users:
                print(f"{u.name:24} {u.role:7} created {_when(u.created_at)}  last login {_when(u.last_login_at)}")
            return 0
        if action == "audit":
            rows = state.audit(limit=args.limit, actor=args.user)
            if args.json:
                print(json.dumps([asdict(r) for r in rows], indent=2))
            for r in [] if args.json else reversed(rows):
                print(f"{_when(r.at)} {r.actor:20} {r.role or '-':7} {r.action:10} {r.outcome:8} {r.target or '-'}"
                      f"{'  (' + r.detail + ')' if r.detail else ''}  from {r.source or '-'}")
            return 0
        if not valid_name(args.name):
            raise GatewayError(f"user name {args.name!r}: use 1-64 letters, digits, '.', '-', '_' or '@'")
        if action == "add":
            state.add_user(args.name, args.role, hash_password(_password(args)))
            detail = f"role {args.role}"
        elif action == "passwd":
            if state.user(args.name) is None:
                raise GatewayError(f"no user {args.name!r}: `enhance-gateway users list` shows who exists")
            state.set_password(args.name, hash_password(_password(args)), args.role)
            detail = f"role {args.role}" if args.role else "password"
        else:
            state.remove_user(args.name)
            detail = None
            if not any(u.role == "admin" for u in state.users()):
                print("note: no admin is left; `users add NAME --role admin` creates one", file=sys.stderr)
    except StateError as exc:
        raise GatewayError(str(exc)) from None
    actor = _actor()
    state.record_audit(actor, f"user_{action}", target=f"user {args.name}", source="cli", detail=detail)
    logs.configure(json=True)
    logs.get("gateway.users").info("web.audit", actor=actor, action=f"user_{action}", target=f"user {args.name}",
                                   outcome="ok", source="cli", detail=detail)
    print(f"user {args.name}: {'added' if action == 'add' else 'updated' if action == 'passwd' else 'removed'}",
          file=sys.stderr)
    return 0
