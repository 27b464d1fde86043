"""The `web` command line: options and handler, importable without loading torch.

Why its own module: `enhance-gateway --help`, `status` and `push` must answer fast, so the CLI may import
this at parser-build time; the console itself (numpy, torch through the enhancers) is imported only when the
command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def add_options(p: argparse.ArgumentParser) -> None:
    """The console's own options (also used by `python -m gateway.web`)."""
    p.add_argument("--host", default=None,
                   help=f"address to bind (default [web] host, else {DEFAULT_HOST}: this machine only; another "
                   "address needs [web] cert and key)")
    p.add_argument("--port", dest="web_port", metavar="PORT", type=int, default=None,
                   help=f"TCP port (default [web] port, else {DEFAULT_PORT})")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir (the gateway's state and spool)")
    p.set_defaults(func=run_command)


def add_command(subparsers: Any) -> None:
    """Register `web` on the CLI's subparsers (`enhance-gateway web --port 8080`)."""
    add_options(subparsers.add_parser(
        "web", help="serve the web console (upload and compare, jobs), on 127.0.0.1 by default"
    ))


def run_command(args: argparse.Namespace) -> int:
    """`enhance-gateway web`: load the settings like every other command, then serve until SIGTERM/Ctrl-C."""
    from gateway import settings as settings_mod
    from gateway.web.app import serve

    cfg = settings_mod.load(getattr(args, "config", None))
    var_dir: Path | None = getattr(args, "var_dir", None)
    if var_dir is not None:
        cfg = cfg.with_overrides(var_dir=var_dir)
    host = args.host if args.host is not None else cfg.web.host
    port = args.web_port if args.web_port is not None else cfg.web.port
    if not 0 <= port <= 65535:
        raise GatewayError(f"--port {port}: a TCP port is an integer from 0 to 65535")
    try:
        serve(cfg, host, port)
    except OSError as exc:
        raise GatewayError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port ([web] port)"
        ) from None
    return 0
