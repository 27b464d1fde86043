"""`enhance-gateway`: the command line of the gateway (serve, status, jobs, studies, held, release, reject, retry,
reprocess, purge, push, echo, config, web, users, models).

Why options work before and after the subcommand: admins type `enhance-gateway status --config FILE` as often
as `enhance-gateway --config FILE status`, and `make run CONFIG=...` appends it after `serve`. So the shared
options live on parent parsers that every subparser takes (`--config` with a suppressed default, so that a
value given before the subcommand is not reset by the subparser).

Why the configuration is resolved here and said on stderr: `settings.discover` picks the file (`--config`,
$ENHANCE_GW_CONFIG, ./config/gateway.toml, /etc/enhance-gateway/gateway.toml, the packaged default); an admin
must see which one, and loudly when none was found. Commands that read the gateway's state (status, jobs,
studies, held, the console and the actions on existing jobs) refuse to start on a var_dir without a state
database instead of creating an empty one: an empty listing from a wrong --config looks like a lost queue.

Why lazy imports in the handlers: `--help`, `status` and `push` must answer fast and must not load torch.
Output: tables for people, `--json` for scripts; timestamps in ISO 8601 local time with the UTC offset; job
ids are integers everywhere. Exit codes: 0 success, 1 a handled error (message on stderr) or an incomplete
`push`, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.storage.state import JOB_STATES, JobState

if TYPE_CHECKING:
    from gateway.settings import Settings
    from gateway.storage.state import Job, StateStore


def iso(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 in local time with its offset (`2026-11-30T01:02:03+01:00`), None as None."""
    return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Dataclasses to dicts, and every `*_at` timestamp to `iso()`: what `--json` prints."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {
            k: iso(v) if k.endswith("_at") and isinstance(v, (int, float)) else jsonable(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2, default=str))


def _settings(args: argparse.Namespace) -> Settings:
    from gateway import settings

    loaded = settings.load(args.config)
    return loaded.with_overrides(port=getattr(args, "port", None), var_dir=getattr(args, "var_dir", None))


def open_state(cfg: Settings) -> StateStore:
    """The gateway's existing state store; GatewayError when there is none (never creates var/ or state.db).

    For every command but `serve` and `users`: a missing database means a wrong --config or var_dir far more
    often than a gateway that never ran, and an empty new one would hide that.
    """
    from gateway.storage.state import State

    if cfg.state.url:  # PostgreSQL: the schema must be there and current, else StateError says so
        from gateway.storage.factory import open_state as open_store
        return open_store(cfg, create=False)
    if not cfg.state_db.is_file():
        raise GatewayError(
            f"no state database at {cfg.state_db.absolute()}: wrong --config or var_dir? (config"
            f" {cfg.source_file}; `serve` creates it on its first start)"
        )
    return State(cfg.state_db)


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s" if secs < 120 else f"{secs / 60:.0f}m" if secs < 7200 else f"{secs / 3600:.1f}h"


def _when(ts: float | None) -> str:
    return "never" if ts is None else f"{iso(ts)} ({_age(ts)} ago)"


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.enhance import routing
    from gateway.service import Gateway, parse_roles

    logs.configure()
    cfg = _settings(args)
    routing.load_plugins(cfg.plugins)
    routing.validate(cfg.routes)
    for warning in routing.hallucination_risks(cfg.routes):
        logs.get("gateway.routing").warning("route.hallucination_risk", detail=warning)
    for warning in routing.strength_risks(cfg.routes):
        logs.get("gateway.routing").warning("route.strength_risk", detail=warning)
    Gateway(cfg, parse_roles(args.role)).serve()
    return 0


def _destinations(cfg: Settings, state: StateStore) -> list[dict[str, Any]]:
    """Every configured destination with its health, also those not yet delivered to (no health row yet)."""
    health = {h.destination: h for h in state.destination_health()}
    out = []
    for dest in cfg.destinations:
        h = health.pop(dest.name, None)
        where = str(dest.path) if dest.type == "folder" else dest.url or f"{dest.ae_title}@{dest.host}:{dest.port}"
        out.append({
            "destination": dest.name, "type": dest.type, "target": where, "configured": True,
            "last_success_at": h.last_success_at if h else None, "last_failure_at": h.last_failure_at if h else None,
            "consecutive_failures": h.consecutive_failures if h else 0,
        })
    for name, h in health.items():  # delivered to once, since removed from the configuration
        out.append({"destination": name, "type": None, "target": None, "configured": False} | {
            k: v for k, v in asdict(h).items() if k != "destination"})
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.storage.local_spool import LocalSpool

    cfg = _settings(args)
    state = open_state(cfg)
    counts = state.counts()
    oldest = state.oldest_waiting()
    destinations = _destinations(cfg, state)
    spool = LocalSpool(cfg.spool_dir)
    verdicts = state.qa_verdict_counts()
    report = {
        "config": str(cfg.source_file),
        "counts": counts,
        "instances": state.instance_count(),
        "oldest_waiting": None if oldest is None else {
            "id": oldest.id, "state": oldest.state, "created_at": oldest.created_at,
            "age_seconds": round(time.time() - oldest.created_at)},
        "destinations": destinations,
        "qa_verdicts": verdicts,
        "free_mb": round(spool.free_mb()),
        "min_free_mb": cfg.min_free_mb,
    }
    if args.json:
        _print_json(report)
        return 0
    busy = {k: v for k, v in counts.items() if v}
    print("jobs:      " + ("  ".join(f"{k}={v}" for k, v in busy.items()) if busy else "no jobs yet"))
    print("QA:        " + "  ".join(f"{k}={v}" for k, v in verdicts.items())
          + (f"  ({counts['held']} held: `enhance-gateway held`)" if counts.get("held") else ""))
    print(f"instances: {report['instances']}")
    if oldest:
        print(f"oldest waiting job: {oldest.id} ({oldest.state}, created {_when(oldest.created_at)})")
    for d in destinations:
        kind = f"{d['type']} {d['target']}" if d["configured"] else "no longer configured"
        failures = f", {d['consecutive_failures']} consecutive failures" if d["consecutive_failures"] else ""
        print(f"destination {d['destination']} ({kind}): last success {_when(d['last_success_at'])}{failures}")
    print(f"disk: {report['free_mb']} MB free under {cfg.var_dir} (watermark {cfg.min_free_mb} MB)")
    return 0


def _series_descriptions(cfg: Settings, state: StateStore, jobs: Sequence[Job]) -> dict[int, str]:
    """Series Description of each job's series, read from one of its spooled originals ("" when purged)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from gateway.errors import SpoolError
    from gateway.storage.local_spool import LocalSpool

    spool = LocalSpool(cfg.spool_dir)
    out: dict[int, str] = {}
    for job in jobs:
        out[job.id] = ""
        for inst in state.job_instances(job.id)[:1]:
            try:
                with spool.open(inst.key) as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["SeriesDescription"])
            except (SpoolError, InvalidDicomError):
                continue  # purged or unreadable: the listing still shows the job
            out[job.id] = str(ds.get("SeriesDescription", "") or "")
    return out


def _job_rows(cfg: Settings, state: StateStore, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    descriptions = _series_descriptions(cfg, state, jobs)
    return [asdict(j) | {"series_description": descriptions[j.id], "age_seconds": round(time.time() - j.created_at)}
            for j in jobs]


def _print_jobs(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'id':>6} {'state':9} {'mod':4} {'series':20} {'n':>5} {'enhancer':12} {'QA':4} {'tries':>5} {'age':>6}"
          "  error / skip reason / QA reasons")
    for j in rows:
        detail = j["error"] or j["skip_reason"] or (j["qa_reasons"] if j["qa_verdict"] in ("WARN", "FAIL") else "")
        print(
            f"{j['id']:>6} {j['state']:9} {j['modality']:4} {(j['series_description'] or '-')[:20]:20}"
            f" {j['instance_count']:>5} {j['enhancer'] or '-':12} {j['qa_verdict'] or '-':4} {j['attempts']:>5}"
            f" {_age(j['created_at']):>6}  {detail or ''}".rstrip()
        )


def cmd_jobs(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    state = open_state(cfg)
    if args.action == "show" and args.job is None:
        raise GatewayError("jobs show needs a job id: enhance-gateway jobs show 12")
    show = args.job if args.action == "show" else args.show
    if show is not None:
        job = state.job(show)
        (row,) = _job_rows(cfg, state, [job])
        _print_json(row | {"deliveries": [asdict(d) for d in state.deliveries(job.id)]})
        return 0
    rows = _job_rows(cfg, state, state.jobs(state=args.state, study_uid=args.study, limit=args.limit))
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no jobs" + (f" in state {args.state}" if args.state else "") + (" of that study" if args.study else ""))
    else:
        _print_jobs(rows)
    return 0


def cmd_held(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    state = open_state(cfg)
    rows = _job_rows(cfg, state, state.jobs(state=JobState.HELD, limit=100000))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no held jobs")
        return 0
    for j in rows:
        print(f"job {j['id']}: {j['modality']} {j['series_description'] or '-'} ({j['instance_count']} instances),"
              f" {j['enhancer']}, QA {j['qa_verdict']}, held since {_when(j['updated_at'])}")
        print(f"    series {j['series_uid']}")
        print(f"    {j['qa_reasons']}")
    print("release JOB delivers a held job as it is; reject JOB drops its outputs (originals stay)", file=sys.stderr)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.admin.ops import release

    logs.configure(json=True)
    cfg = _settings(args)
    job = release(cfg, open_state(cfg), args.job)
    print(f"job {job.id}: released, queued for delivery ({job.qa_verdict}: {job.qa_reasons})", file=sys.stderr)
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.admin.ops import reject

    logs.configure(json=True)
    cfg = _settings(args)
    job = reject(cfg, open_state(cfg), args.job)
    print(f"job {job.id}: rejected, its outputs removed (the originals are kept)", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    state = open_state(cfg)
    ids = [j.id for j in state.jobs(state=JobState.DEAD, limit=100000)] if args.dead else [args.job]
    if args.dead and not ids:
        print("no dead jobs: nothing to retry")
        return 0
    for job_id in ids:
        print(f"job {job_id}: re-queued as {state.retry(job_id)}")
    return 0


def _peer_of(cfg: Settings, name: str) -> Any:
    from gateway.dimse.scu import Peer

    for dest in cfg.destinations:
        if dest.name == name:
            if dest.type != "dicom":
                raise GatewayError(f"destination {name!r} is a {dest.type} destination; echo needs a dicom one")
            return Peer.for_destination(dest, cfg.ae_title)
    raise GatewayError(f"no destination named {name!r}; configured: {', '.join(d.name for d in cfg.destinations)}")


def cmd_echo(args: argparse.Namespace) -> int:
    from gateway.dimse import scu as dicomnet
    from gateway.dimse.fast.compat import configure_process
    configure_process()
    cfg = _settings(args)
    peer = _peer_of(cfg, args.destination)
    seconds = dicomnet.echo(peer)
    print(f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: success in {seconds * 1000:.0f} ms")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.admin.push import push
    from gateway.dimse.fast.compat import configure_process
    from gateway.dimse.scu import Peer
    logs.quiet_pynetdicom()
    configure_process()

    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        raise GatewayError(f"--to {args.to!r}: expected HOST:PORT, e.g. 127.0.0.1:11112")
    report = push(Peer(args.aet, host, int(port), args.calling_aet), args.paths)
    if args.json:
        _print_json(report)
        return 0 if report.complete else 1
    rate = len(report.sent) / report.seconds if report.seconds else 0.0
    repaired = f"; {len(report.repaired)} without preamble/File Meta sent as Part 10" if report.repaired else ""
    print(f"sent {len(report.sent)} instances ({report.bytes / 1e6:.1f} MB) in {report.seconds:.2f} s"
          f" ({rate:.0f}/s){repaired}")
    for title, items in (("skipped", report.skipped), ("not stored", report.failed)):
        if items:
            print(f"{title}: {len(items)} file(s)", file=sys.stderr)
            for item in items:
                print(f"  {item.path}: {item.reason}", file=sys.stderr)
    return 0 if report.complete else 1


def cmd_studies(args: argparse.Namespace) -> int:
    cfg = _settings(args)
    since = time.time() - args.since * 3600 if args.since else 0.0
    studies = open_state(cfg).studies(since)
    if args.json:
        _print_json(studies)
        return 0
    if not studies:
        print("no studies" + (f" in the last {args.since:g} h" if args.since else ""))
    for s in studies:
        print(f"{s.study_uid}  series={s.series} instances={s.instances} last={_when(s.last_at)}")
        for j in s.jobs:
            print(f"    job {j.id:>5} {j.state:9} {j.enhancer or '-':12} -> {j.derived_series_uid or '-'}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from gateway.admin.ops import reprocess
    from gateway.dimse.fast.compat import configure_process

    configure_process()  # purged originals may come back by C-GET/C-MOVE
    cfg = _settings(args)
    for r in reprocess(cfg, open_state(cfg), args.study_uid, series_uid=args.series, enhancer=args.enhancer,
                       destination=args.to, strength=args.strength):
        if r.retrieved:
            print(f"series {r.series_uid}: retrieved {r.retrieved} purged originals from {r.source}")
        print(f"series {r.series_uid}: job {r.job_id} queued ({r.instances} instances)")
        if r.warning:
            print(f"warning: series {r.series_uid}: {r.warning}", file=sys.stderr)
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway.admin.ops import purge

    cfg = _settings(args)
    done = purge(cfg, open_state(cfg), args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {done.originals} originals ({done.bytes / 1e6:.1f} MB) and the outputs of {done.jobs} finished jobs")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.enhance import routing
    file = args.file or args.config
    cfg = settings.load(file)
    routing.load_plugins(cfg.plugins)
    routing.validate(cfg.routes)
    print(json.dumps(settings.redacted(cfg), indent=2, default=str))  # never a password or token
    for warning in routing.hallucination_risks(cfg.routes) + routing.strength_risks(cfg.routes):
        print(f"{file}: warning: {warning}", file=sys.stderr)
    print(f"{file}: OK", file=sys.stderr)
    return 0


def _common_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parent parsers: --config (every command that reads the configuration), --var-dir, --json."""
    config = argparse.ArgumentParser(add_help=False)
    _add_config(config)
    var_dir = argparse.ArgumentParser(add_help=False)
    var_dir.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="JSON (timestamps ISO 8601) instead of a table")
    return config, var_dir, as_json


_CONFIG_HELP = ("TOML file (default: $ENHANCE_GW_CONFIG, else ./config/gateway.toml, else "
                "/etc/enhance-gateway/gateway.toml, else the defaults shipped in the package)")


def _add_config(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subparser must not reset a --config given before the subcommand to its default
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE", help=_CONFIG_HELP)
    p.set_defaults(needs_config=True)


def _adopt(p: argparse.ArgumentParser, *, needs_state: bool) -> None:
    """Give a subcommand registered by another module (web, users and theirs) the common --config, down its
    own subcommands, and say whether it needs an existing state database."""
    try:
        _add_config(p)
    except argparse.ArgumentError:  # it has a --config of its own
        return
    p.set_defaults(needs_state=needs_state)
    for action in p._actions:  # argparse keeps a parser's subcommands in its (private) actions list
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _adopt(child, needs_state=needs_state)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enhance-gateway",
        description="DICOM enhancement gateway: receive, enhance, send a derived series back to PACS.",
    )
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config, var_dir, as_json = _common_options()
    state = [config, var_dir]  # commands on the gateway's existing state (see open_state)

    p = sub.add_parser("serve", parents=[config, var_dir],
                       help="run the gateway in the foreground (SIGTERM stops it cleanly)")
    p.add_argument("--port", type=int, help="override gateway.port")
    p.add_argument("--role", default="receive,complete,enhance,send", metavar="ROLES",
                   help="what this process does, comma-separated: receive (C-STORE and STOW-RS), complete (series"
                        " -> jobs), enhance (worker processes), send (deliveries); default all four. Several"
                        " processes on several machines share one PostgreSQL state ([state] url) and one spool:"
                        " docs/scale-out.md")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", parents=[*state, as_json],
                       help="jobs per state, oldest waiting job, every destination's health, disk")
    p.set_defaults(func=cmd_status, needs_state=True)

    p = sub.add_parser("jobs", parents=[*state, as_json],
                       help="list jobs; `jobs show JOB` (or --show JOB) for one job with its deliveries")
    p.add_argument("action", nargs="?", choices=["show"], help="show one job")
    p.add_argument("job", nargs="?", type=int, help="job id (with show)")
    p.add_argument("--state", choices=[str(s) for s in JOB_STATES])
    p.add_argument("--study", help="StudyInstanceUID")
    p.add_argument("--show", type=int, metavar="JOB")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs, needs_state=True)

    p = sub.add_parser("retry", parents=state, help="re-queue a failed/dead job, or every dead job with --dead")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("job", nargs="?", type=int, help="job id")
    group.add_argument("--dead", action="store_true", help="every dead job")
    p.set_defaults(func=cmd_retry, needs_state=True)

    p = sub.add_parser("studies", parents=[*state, as_json],
                       help="studies seen, their series, and what was derived and sent")
    p.add_argument("--since", type=float, metavar="HOURS", help="only studies received in the last HOURS")
    p.set_defaults(func=cmd_studies, needs_state=True)

    p = sub.add_parser(
        "reprocess", parents=state,
        help="re-run enhancement of a study from the spooled originals (C-GET from [[sources]] when purged)",
    )
    p.add_argument("study_uid", metavar="STUDY_UID")
    p.add_argument("--series", metavar="UID", help="only this series")
    p.add_argument("--enhancer", metavar="NAME", help="instead of the routed enhancer (a new derived series)")
    p.add_argument("--to", metavar="DEST", help="deliver to this destination only")
    p.add_argument("--strength", type=float, metavar="S",
                   help="instead of the route's strength (0 = as received, 1 = remove the estimated noise, max 2)")
    p.set_defaults(func=cmd_reprocess, needs_state=True)

    p = sub.add_parser("held", parents=[*state, as_json], help="jobs the QA gate held, with the reasons")
    p.set_defaults(func=cmd_held, needs_state=True)

    p = sub.add_parser("release", parents=state, help="deliver a held job as it is (its QA marker stays)")
    p.add_argument("job", type=int, help="job id (`held` lists them)")
    p.set_defaults(func=cmd_release, needs_state=True)

    p = sub.add_parser("reject", parents=state,
                       help="drop a held job's outputs; the originals stay, the job ends rejected")
    p.add_argument("job", type=int, help="job id (`held` lists them)")
    p.set_defaults(func=cmd_reject, needs_state=True)

    p = sub.add_parser("purge", parents=state, help="remove originals and outputs of finished jobs past retention")
    p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(func=cmd_purge, needs_state=True)

    p = sub.add_parser("push", parents=[as_json],
                       help="C-STORE DICOM files (files or folders, with or without File Meta) to a DICOM node;"
                       " exit 1 unless every file was stored")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--aet", default="ENHANCE_GW", help="called AE title (default ENHANCE_GW)")
    p.add_argument("--calling-aet", default="PUSHSCU", help="our AE title (default PUSHSCU)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("echo", parents=[config], help="C-ECHO a configured dicom destination")
    p.add_argument("destination", help="destination name from the config")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", parents=[config],
                        help="validate a config file (default: the one --config or discovery picks) and print"
                        " the effective settings")
    c.add_argument("file", type=Path, nargs="?")
    c.set_defaults(func=cmd_config_check)

    from enhancers.cli import add_commands
    from gateway.web.command import add_command as add_web_command
    from gateway.web.users import add_command as add_users_command

    add_web_command(sub)
    _adopt(sub.choices["web"], needs_state=True)  # the console reads the gateway's state: same rule as status
    add_users_command(sub)
    _adopt(sub.choices["users"], needs_state=False)  # `users add` may run before the first serve
    add_commands(sub)
    from gateway.admin.db import add_command as add_db_command
    add_db_command(sub)
    _adopt(sub.choices["db"], needs_state=False)  # `db upgrade` is what creates a PostgreSQL schema
    return parser


def _prepare(args: argparse.Namespace) -> None:
    """Resolve the configuration file (and say which) and check the state database the command needs."""
    from gateway import settings

    if getattr(args, "needs_config", False) and not getattr(args, "file", None):
        choice = settings.discover(args.config)
        print(choice.describe(), file=sys.stderr)
        args.config = choice.path
    if getattr(args, "needs_state", False):
        open_state(_settings(args)).close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except GatewayError as exc:
        print(f"enhance-gateway: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`jobs | head`): the Python docs' recipe. Point stdout at devnull so the
        # interpreter's final flush does not raise again, and exit 1 as Python does on EPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
