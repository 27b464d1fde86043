"""`python -m gateway.web --config FILE --port 8080`: the console without the `enhance-gateway` CLI.

Why: until the CLI carries a `web` subcommand, and for a systemd unit that runs the console on its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import GatewayError
from gateway.web.command import add_options, run_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.web", description="the enhance-gateway web console")
    parser.add_argument("--config", type=Path, default=None, help="TOML file (default: config/gateway.toml)")
    add_options(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except GatewayError as exc:
        print(f"gateway.web: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
