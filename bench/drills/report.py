"""Run the fault drills at full size and print one table: drill, runs, acknowledged, delivered, lost, duplicates,
errors seen (plus derived, same-UID re-sends and a verdict), then every broken promise with its evidence.

    .venv/bin/python -m bench.drills.report                 # everything, sizes from issue 6 (~10 min)
    .venv/bin/python -m bench.drills.report --only kill --slices 40 --kills 3

Why a script and not only tests: the CI tests run small versions of the same drills to catch regressions;
this is the reliability report a site asks for before trusting the gateway with its studies. Exit status 1
when any drill found a broken promise, so it can gate a release.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python bench/drills/report.py` as well as `python -m bench.drills.report`
    sys.path.insert(0, str(REPO))

from bench.drills import badinput, destination, disk, fuzz, kill
from bench.drills.common import DrillResult, format_table

DRILLS = ("kill", "destination", "disk", "badinput", "fuzz")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=DRILLS, default=list(DRILLS), help="drills to run")
    parser.add_argument("--slices", type=int, default=200, help="kill drill: slices in the series (200)")
    parser.add_argument("--kills", type=int, default=10, help="kill drill: SIGKILL points (10)")
    parser.add_argument("--seed", type=int, default=6, help="seed of the kill points and of the fuzz run (6)")
    parser.add_argument("--dest-slices", type=int, default=200, help="destination drill: slices per series (200)")
    parser.add_argument("--down-seconds", type=float, default=10.0, help="destination drill: outage length (10)")
    parser.add_argument("--disk-slices", type=int, default=60, help="disk drill: slices per series (60)")
    parser.add_argument("--disk-mb", type=int, default=64, help="disk drill: tmpfs size in MB (64)")
    parser.add_argument("--good-slices", type=int, default=5, help="bad input/fuzz: good series size (5)")
    parser.add_argument("--fuzz", type=int, default=500, help="fuzz drill: inputs to try (500)")
    parser.add_argument("--stall-seconds", type=float, default=75.0,
                        help="bad input: wait for a stalled half PDU to be dropped (75; 0 skips the case)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the drills' files here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> dict[str, Callable[[Path], DrillResult]]:
    """The selected drills, each a function of its working folder."""
    table: dict[str, Callable[[Path], DrillResult]] = {
        "kill": lambda w: kill.kill_drill(w, slices=args.slices, kills=args.kills, seed=args.seed),
        "destination": lambda w: destination.destination_drill(w, slices=args.dest_slices,
                                                               down_seconds=args.down_seconds),
        "disk": lambda w: disk.disk_full_drill(w, slices=args.disk_slices, fs_mb=args.disk_mb),
        "badinput": lambda w: badinput.bad_input_drill(w, slices=args.good_slices, stall_seconds=args.stall_seconds),
        "fuzz": lambda w: fuzz.fuzz_drill(w, examples=args.fuzz, seed=args.seed, slices=args.good_slices),
    }
    return {name: table[name] for name in DRILLS if name in args.only}


def run_one(name: str, drill: Callable[[Path], DrillResult], work: Path) -> DrillResult:
    """Run a drill; a crash of the drill itself becomes a failed row instead of ending the report."""
    print(f"-- {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        result = drill(work / name)
    except Exception as exc:  # noqa: BLE001 - the report must still print the other drills
        result = DrillResult(name)
        result.failures.append(f"drill crashed: {type(exc).__name__}: {exc}")
        result.details["traceback"] = traceback.format_exc()
    result.seconds = result.seconds or time.monotonic() - started
    print(f"-- {name}: {'PASS' if result.passed else 'FAIL'} in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the drills provoke its error logs on purpose
    warnings.filterwarnings("ignore", module="pydicom")
    own_dir = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="drills-")) if own_dir else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results: list[DrillResult] = []
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        for name, drill in plan(args).items():
            results.append(run_one(name, drill, work))
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Fault drills, {began}, {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}")
    print(" ".join(["command:", "python -m bench.drills.report", *(argv if argv is not None else sys.argv[1:])]))
    print()
    print(format_table(results))
    for r in results:
        print(f"\n[{r.drill}] {'PASS' if r.passed else 'FAIL'} in {r.seconds:.0f} s")
        for failure in r.failures:
            print(f"  FAILURE: {failure}")
        for key, value in r.details.items():
            if key != "traceback":
                print(f"  {key}: {value}")
        if "traceback" in r.details:
            print(r.details["traceback"])
    if args.json:
        args.json.write_text(json.dumps([
            {**{k: getattr(r, k) for k in ("drill", "runs", "acknowledged", "derived", "delivered", "lost",
                                           "duplicates", "resent", "failures", "seconds")},
             "errors": dict(r.errors), "details": {k: str(v) for k, v in r.details.items()}}
            for r in results
        ], indent=2))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
