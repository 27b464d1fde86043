"""`enhance-gateway`: the command line of the gateway (serve, status, jobs, held, release, reject, push, echo,
retry, config, models).

Why lazy imports in the handlers: `--help`, `status` and `push` must answer fast and must not load torch.
Every command exits 0 on success, 1 on a handled error (message on stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.storage.state import JOB_STATES, JobState


def _settings(args: argparse.Namespace) -> Any:
    from gateway import settings

    loaded = settings.load(args.config)
    return loaded.with_overrides(port=getattr(args, "port", None), var_dir=getattr(args, "var_dir", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.enhance import routing
    from gateway.service import Gateway

    logs.configure()
    cfg = _settings(args)
    routing.load_plugins(cfg.plugins)
    routing.validate(cfg.routes)
    for warning in routing.hallucination_risks(cfg.routes):
        logs.get("gateway.routing").warning("route.hallucination_risk", detail=warning)
    Gateway(cfg).serve()
    return 0


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s" if secs < 120 else f"{secs / 60:.0f}m" if secs < 7200 else f"{secs / 3600:.1f}h"


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.storage.spool import Spool
    from gateway.storage.state import State

    cfg = _settings(args)
    state = State(cfg.state_db)
    counts = state.counts()
    oldest = state.oldest_waiting()
    health = [asdict(r) for r in state.destination_health()]
    spool = Spool(cfg.spool_dir)
    report = {
        "counts": counts,
        "instances": state.instance_count(),
        "oldest_waiting": None if oldest is None else {"job": oldest.id, "state": oldest.state, "age": _age(oldest.created_at)},
        "destinations": health,
        "qa_verdicts": state.qa_verdict_counts(),
        "free_mb": round(spool.free_mb()),
        "min_free_mb": cfg.min_free_mb,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("jobs:      " + "  ".join(f"{k}={v}" for k, v in counts.items()))
    verdicts = report["qa_verdicts"]
    print("QA:        " + "  ".join(f"{k}={v}" for k, v in verdicts.items())
          + (f"  ({counts['held']} held: `enhance-gateway held`)" if counts.get("held") else ""))
    print(f"instances: {report['instances']}")
    if oldest:
        print(f"oldest waiting job: {oldest.id} ({oldest.state}, {_age(oldest.created_at)} old)")
    for h in health:
        print(
            f"destination {h['destination']}: last success {_age(h['last_success_at'])} ago,"
            f" consecutive failures {h['consecutive_failures']}"
        )
    print(f"disk: {report['free_mb']} MB free under {cfg.var_dir} (watermark {cfg.min_free_mb} MB)")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from gateway.storage.state import State

    cfg = _settings(args)
    state = State(cfg.state_db)
    if args.action == "show" and args.job is None:
        raise GatewayError("jobs show needs a job id: enhance-gateway jobs show 12")
    show = args.job if args.action == "show" else args.show
    if show is not None:
        job = state.job(show)
        data = asdict(job) | {"deliveries": [asdict(d) for d in state.deliveries(job.id)]}
        print(json.dumps(data, indent=2))
        return 0
    jobs = state.jobs(state=args.state, study_uid=args.study, limit=args.limit)
    if args.json:
        print(json.dumps([asdict(j) for j in jobs], indent=2))
        return 0
    print(f"{'id':>6} {'state':9} {'mod':4} {'n':>5} {'enhancer':12} {'QA':4} {'tries':>5}  series / error / QA")
    for j in jobs:
        detail = j.error or j.skip_reason or (j.qa_reasons if j.qa_verdict in ("WARN", "FAIL") else None)
        print(
            f"{j.id:>6} {j.state:9} {j.modality:4} {j.instance_count:>5} {j.enhancer or '-':12}"
            f" {j.qa_verdict or '-':4} {j.attempts:>5}  {detail or j.series_uid}"
        )
    return 0


def cmd_held(args: argparse.Namespace) -> int:
    from gateway.storage.state import State

    cfg = _settings(args)
    jobs = State(cfg.state_db).jobs(state=JobState.HELD, limit=100000)
    if args.json:
        print(json.dumps([asdict(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no held jobs")
        return 0
    for j in jobs:
        print(f"job {j.id}: {j.modality} {j.instance_count} instances, {j.enhancer}, QA {j.qa_verdict}, held {_age(j.updated_at)}")
        print(f"    series {j.series_uid}")
        print(f"    {j.qa_reasons}")
    print("release JOB delivers a held job as it is; reject JOB drops its outputs (originals stay)", file=sys.stderr)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.admin.ops import release
    from gateway.storage.state import State

    logs.configure(json=True)
    cfg = _settings(args)
    job = release(cfg, State(cfg.state_db), args.job)
    print(f"job {job.id}: released, queued for delivery ({job.qa_verdict}: {job.qa_reasons})", file=sys.stderr)
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.admin.ops import reject
    from gateway.storage.state import State

    logs.configure(json=True)
    cfg = _settings(args)
    job = reject(cfg, State(cfg.state_db), args.job)
    print(f"job {job.id}: rejected, its outputs removed (the originals are kept)", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from gateway.storage.state import State

    cfg = _settings(args)
    state = State(cfg.state_db)
    ids = [j.id for j in state.jobs(state=JobState.DEAD, limit=100000)] if args.dead else [args.job]
    if not ids or ids == [None]:
        print("nothing to retry", file=sys.stderr)
        return 1 if not args.dead else 0
    for job_id in ids:
        print(f"job {job_id}: re-queued as {state.retry(job_id)}")
    return 0


def _peer_of(cfg: Any, name: str) -> Any:
    from gateway.dimse.scu import Peer

    for dest in cfg.destinations:
        if dest.name == name:
            if dest.type != "dicom":
                raise GatewayError(f"destination {name!r} is a {dest.type} destination; echo needs a dicom one")
            return Peer(dest.ae_title, dest.host, dest.port, dest.calling_aet or cfg.ae_title)
    raise GatewayError(f"no destination named {name!r}; configured: {', '.join(d.name for d in cfg.destinations)}")


def cmd_echo(args: argparse.Namespace) -> int:
    from gateway.dimse import scu as dicomnet
    cfg = _settings(args)
    peer = _peer_of(cfg, args.destination)
    seconds = dicomnet.echo(peer)
    print(f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: success in {seconds * 1000:.0f} ms")
    return 0


def _dicom_files(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        candidates = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for c in candidates:
            with open(c, "rb") as fh:
                head = fh.read(132)
            if len(head) == 132 and head[128:132] == b"DICM":
                out.append(c)
    return out


def cmd_push(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.dimse import scu as dicomnet
    logs.quiet_pynetdicom()

    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        raise GatewayError(f"--to {args.to!r}: expected HOST:PORT, e.g. 127.0.0.1:11112")
    files = _dicom_files(args.paths)
    if not files:
        raise GatewayError(f"no DICOM files (with the DICM prefix) under {', '.join(map(str, args.paths))}")
    peer = dicomnet.Peer(args.aet, host, int(port), args.calling_aet)
    result = dicomnet.send_files(peer, files)
    rate = result.sent / result.seconds if result.seconds else 0.0
    print(f"sent {result.sent} instances ({result.bytes / 1e6:.1f} MB) in {result.seconds:.2f} s ({rate:.0f}/s)")
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from gateway.storage.state import State

    cfg = _settings(args)
    since = time.time() - args.since * 3600 if args.since else 0.0
    rows = [asdict(s) for s in State(cfg.state_db).studies(since)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['study_uid']}  series={row['series']} instances={row['instances']} last={_age(row['last_at'])} ago")
        for j in row["jobs"]:
            print(f"    job {j['id']:>5} {j['state']:9} {j['enhancer'] or '-':12} -> {j['derived_series_uid'] or '-'}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from gateway.admin.ops import reprocess
    from gateway.storage.state import State

    cfg = _settings(args)
    for r in reprocess(cfg, State(cfg.state_db), args.study_uid, series_uid=args.series, enhancer=args.enhancer,
                       destination=args.to, strength=args.strength):
        if r.retrieved:
            print(f"series {r.series_uid}: retrieved {r.retrieved} purged originals from {r.source}")
        print(f"series {r.series_uid}: job {r.job_id} queued ({r.instances} instances)")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway.admin.ops import purge
    from gateway.storage.state import State

    cfg = _settings(args)
    done = purge(cfg, State(cfg.state_db), args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {done.originals} originals ({done.bytes / 1e6:.1f} MB) and the outputs of {done.jobs} finished jobs")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway import settings
    from gateway.enhance import routing
    cfg = settings.load(args.file)
    routing.load_plugins(cfg.plugins)
    routing.validate(cfg.routes)
    print(json.dumps(asdict(cfg), indent=2, default=str))
    for warning in routing.hallucination_risks(cfg.routes):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enhance-gateway",
        description="DICOM enhancement gateway: receive, enhance, send a derived series back to PACS.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file (default: config/gateway.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway in the foreground (SIGTERM stops it cleanly)")
    p.add_argument("--port", type=int, help="override gateway.port")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="jobs per state, oldest waiting job, destination health, disk")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", help="list jobs; `jobs show JOB` (or --show JOB) for one job with its deliveries")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("action", nargs="?", choices=["show"], help="show one job")
    p.add_argument("job", nargs="?", type=int, help="job id (with show)")
    p.add_argument("--state", choices=[str(s) for s in JOB_STATES])
    p.add_argument("--study", help="StudyInstanceUID")
    p.add_argument("--show", type=int, metavar="JOB")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("retry", help="re-queue a failed/dead job, or every dead job with --dead")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("job", nargs="?", type=int, help="job id")
    group.add_argument("--dead", action="store_true", help="every dead job")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("studies", help="studies seen, their series, and what was derived and sent")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("--since", type=float, metavar="HOURS", help="only studies received in the last HOURS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser(
        "reprocess",
        help="re-run enhancement of a study from the spooled originals (C-GET from [[sources]] when purged)",
    )
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("study_uid", metavar="STUDY_UID")
    p.add_argument("--series", metavar="UID", help="only this series")
    p.add_argument("--enhancer", metavar="NAME", help="instead of the routed enhancer (a new derived series)")
    p.add_argument("--to", metavar="DEST", help="deliver to this destination only")
    p.add_argument("--strength", type=float, metavar="S",
                   help="instead of the route's strength (0 = as received, 1 = remove the estimated noise, max 2)")
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("held", help="jobs the QA gate held, with the reasons")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_held)

    p = sub.add_parser("release", help="deliver a held job as it is (its QA marker stays)")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("job", type=int, help="job id (`held` lists them)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("reject", help="drop a held job's outputs; the originals stay, the job ends rejected")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("job", type=int, help="job id (`held` lists them)")
    p.set_defaults(func=cmd_reject)

    p = sub.add_parser("purge", help="remove originals and outputs of finished jobs past retention")
    p.add_argument("--var-dir", type=Path, help="override gateway.var_dir")
    p.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("push", help="C-STORE DICOM files (files or folders) to a DICOM node")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--aet", default="ENHANCE_GW", help="called AE title (default ENHANCE_GW)")
    p.add_argument("--calling-aet", default="PUSHSCU", help="our AE title (default PUSHSCU)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("echo", help="C-ECHO a configured dicom destination")
    p.add_argument("destination", help="destination name from the config")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file and print the effective settings")
    c.add_argument("file", type=Path)
    c.set_defaults(func=cmd_config_check)

    from enhancers.cli import add_commands
    from gateway.web.command import add_command as add_web_command
    from gateway.web.users import add_command as add_users_command

    add_web_command(sub)
    add_users_command(sub)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"enhance-gateway: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
