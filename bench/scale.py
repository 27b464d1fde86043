"""Scale-out benchmark (issue 17): several gateway processes sharing one PostgreSQL state, against the single node.

Four parts, each a ratio measured in this one run:

1. Enhancement throughput with 1, 2 and 4 enhance worker processes (`serve --role enhance`, one worker child
   each) on one PostgreSQL database and one shared spool, for a cheap enhancer (`gaussian`: the coordination
   overhead shows) and for the CT default model (`ncdn-ct`). The series are pushed once through one receiver
   (`--role receive`) first; then the workers start, and only when each has logged `worker.started` does a
   completion + send node (`--role complete,send`) turn every series into a job in one pass. The time is read
   from the state: from the first job's `created_at` (or the last worker's start, whichever is later) to the
   last job's `finished_at` (delivered to a folder destination). The peer: the same series through the
   single-node default (SQLite, one process with every role, one worker), timed the same way.
2. Reception through HAProxy (TCP mode, round robin) with 1 and 2 receivers (`--role receive`, PostgreSQL
   state, shared spool), 4 concurrent storescu senders; dcmtk's storescp --fork behind the same proxy is
   the reference.
3. Per-job coordination cost on the two `StateStore` implementations, in this process: claim, set enhancer,
   lease renewal, finish, delivery claim, delivery success, settle, each timed for N jobs (median, p95).
4. What the figures predict for a 4-GPU, 2-receiver site (the assumptions are printed with it).

Why PostgreSQL runs with fsync=on here (tests/servers.py runs its throw-away clusters with fsync=off): SQLite
syncs its commits (synchronous=FULL), so a PostgreSQL that does not would win by skipping the disk.
Why the QA gate is off in part 1 (as in tests/gateway/test_scale_out.py): it adds the same per-series work
(DEGRADE_RESTORE runs the enhancer on 3 more slices) whatever the state store, and would hide the
coordination cost this part is about.

    .venv/bin/python -m bench.scale
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import GATEWAY_AET, TunedStoreSCP, iso_to_epoch, median, push, scratch, series, split
from gateway.storage.postgres_state import PostgresState
from gateway.storage.sqlite_state import SqliteState
from gateway.storage.state import JobState, StateStore
from tests.gateway.harness import GatewayProcess, wait_for
from tests.servers import HAProxy, PostgresServer

STABLE = 1.0  # stable_seconds: the series are complete before the completion node starts (part 1)
DESTINATION = "archive"
#: bench/README.md, issue 19 (CPU figures): the worker's single derive thread needs ~36 ms per 512x512 slice,
#: about 27.6 slices/s per worker process whatever the GPU does.
WORKER_HOST_CEILING = 27.6
#: bench/README.md, H100 (third session): Pipeline.run of the CT denoisers on the GPU, batch 8 (drunet-ct 187,
#: fastdn-ct 249 slices/s); ncdn-ct was not measured on a GPU: the lower figure is assumed.
GPU_PIPELINE_RATE = 187.0


# --- part 1: enhancement throughput -----------------------------------------------------------------------


@dataclass
class Throughput:
    backend: str
    workers: int
    enhancer: str
    jobs: int
    slices: int
    seconds: float  # first job queued (or last worker started) -> last job done
    busy: float  # sum of the jobs' enhance_seconds (the worker's own time per job)

    @property
    def rate(self) -> float:
        return self.slices / self.seconds

    @property
    def idle_share(self) -> float:
        """The share of the workers' wall time not inside a job: waiting, claiming, finishing, delivery."""
        return max(0.0, 1.0 - self.busy / (self.workers * self.seconds))


def series_set(tag: str, count: int, slices: int) -> list[Path]:
    """`count` series of `slices` real 512x512 CT slices each (cached by bench.common.series)."""
    return [p for i in range(count) for p in series(slices, f"scale-{tag}-{i}")]


def site_config(root: Path, enhancer: str, url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "destinations": [{"name": DESTINATION, "type": "folder", "path": str(root / "archive")}],
        "routes": [{"enhancer": enhancer}],
        "stable_seconds": STABLE,
        "qa": {"enabled": False},
        "enhance": {"workers": 1, "batch_size": 4, "threads": 1},
    }
    if url is not None:
        config["state"] = {"url": url}
        config["gateway"] = {"spool_dir": str(root / "shared-spool")}
    return config


def worker_started(proc: GatewayProcess) -> float | None:
    stamps = [iso_to_epoch(e["timestamp"]) for e in proc.events() if e.get("event") == "worker.started"]
    return max(stamps) if stamps else None


def read_jobs(proc: GatewayProcess) -> list[Any]:
    store = proc.state()
    try:
        return store.jobs()
    finally:
        if proc.state_url is None:  # a SQLite store per call; the PostgreSQL one is kept (and closed at the end)
            store.close()


def wait_done(proc: GatewayProcess, count: int, timeout: float) -> list[Any]:
    def done() -> list[Any] | None:
        jobs = read_jobs(proc)
        stuck = [j for j in jobs if j.state in (JobState.FAILED, JobState.DEAD, JobState.HELD)]
        if stuck:
            raise RuntimeError(f"job {stuck[0].id} is {stuck[0].state}: {stuck[0].error}")
        return jobs if len(jobs) == count and all(j.state == JobState.DONE for j in jobs) else None

    jobs: list[Any] = wait_for(done, timeout, f"{count} jobs done; log:\n{proc.log_text()[-2000:]}", interval=0.25)
    return jobs


def measure(jobs: list[Any], started: Sequence[float], backend: str, workers: int, enhancer: str) -> Throughput:
    begin = max([min(j.created_at for j in jobs), *started])
    end = max(j.finished_at for j in jobs)
    return Throughput(backend, workers, enhancer, len(jobs), sum(j.instance_count for j in jobs), end - begin,
                      sum(j.enhance_seconds or 0.0 for j in jobs))


@contextlib.contextmanager
def processes() -> Iterator[list[GatewayProcess]]:
    """Every gateway process started in the block is killed at its end, also when a step fails."""
    procs: list[GatewayProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill_quietly()
            if proc.state_url is not None and proc._pg is not None:  # the harness's open store
                proc._pg.close()


def receive_once(root: Path, config: dict[str, Any], files: Sequence[Path], procs: list[GatewayProcess]) -> None:
    """Push every series through one receiver, check each instance is recorded, stop the receiver."""
    receiver = GatewayProcess(root, roles="receive", **config)
    procs.append(receiver)
    receiver.start()
    push(receiver.port, GATEWAY_AET, [files])
    store = receiver.state()
    recorded = store.instance_count()
    if receiver.state_url is None:
        store.close()
    if recorded != len(files):
        raise RuntimeError(f"the receiver recorded {recorded} of {len(files)} instances")
    receiver.stop()


def run_postgres(pg: PostgresServer, workers: int, enhancer: str, files: Sequence[Path], jobs: int,
                 timeout: float) -> Throughput:
    root = scratch("scale-pg-")
    url = pg.create_database(f"scale_{enhancer.replace('-', '_')}_{workers}")
    config = site_config(root, enhancer, url)
    try:
        with processes() as procs:
            (root / "r").mkdir()
            receive_once(root / "r", config, files, procs)
            pool = []
            for i in range(workers):
                (root / f"w{i}").mkdir()
                pool.append(GatewayProcess(root / f"w{i}", roles="enhance", **config))
            procs.extend(pool)
            for proc in pool:
                proc.start()
            started = [wait_for(lambda p=p: worker_started(p), 180, "a worker to start") for p in pool]
            (root / "hub").mkdir()
            hub = GatewayProcess(root / "hub", roles="complete,send", **config)
            procs.append(hub)
            hub.start()
            done = wait_done(hub, jobs, timeout)
            return measure(done, started, "PostgreSQL", workers, enhancer)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_sqlite(enhancer: str, files: Sequence[Path], jobs: int, timeout: float) -> Throughput:
    """The single-node default: one process with every role, its worker child, SQLite under var_dir."""
    root = scratch("scale-sqlite-")
    config = site_config(root, enhancer, None)
    try:
        with processes() as procs:
            receive_once(root, config, files, procs)
            node = GatewayProcess(root, **config)  # same var_dir: the state and spool the receiver filled
            procs.append(node)
            node.start()
            started = wait_for(lambda: worker_started(node), 180, "the worker to start")
            done = wait_done(node, jobs, timeout)
            return measure(done, [started], "SQLite", 1, enhancer)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def enhancement(pg: PostgresServer, plans: Sequence[tuple[str, int, int]], worker_counts: Sequence[int],
                timeout: float) -> list[Throughput]:
    results = []
    for enhancer, count, slices in plans:
        files = series_set(enhancer, count, slices)
        print(f"  {enhancer}: {count} series x {slices} slices", flush=True)
        t0 = time.monotonic()
        runs = [run_sqlite(enhancer, files, count, timeout)]
        print(f"    SQLite, 1 worker: {runs[-1].rate:.1f} slices/s (site {time.monotonic() - t0:.0f} s)", flush=True)
        for n in worker_counts:
            t0 = time.monotonic()
            runs.append(run_postgres(pg, n, enhancer, files, count, timeout))
            print(f"    PostgreSQL, {n} worker(s): {runs[-1].rate:.1f} slices/s (site {time.monotonic() - t0:.0f} s)",
                  flush=True)
        results += runs
    return results


# --- part 2: reception through HAProxy ----------------------------------------------------------------------


@dataclass
class Reception:
    receivers: int
    rates: list[float]  # instances/s per repetition
    peer: list[float]  # storescp --fork behind the same proxy, same repetition


def reception(pg: PostgresServer, n: int, senders: int, repeat: int) -> list[Reception]:
    root = scratch("scale-recv-")
    url = pg.create_database("scale_receive")
    config = {
        "destinations": [{"name": DESTINATION, "type": "folder", "path": str(root / "archive")}],
        "routes": [{"enhancer": "gaussian"}],
        "stable_seconds": 3600.0,
        "state": {"url": url},
        "gateway": {"spool_dir": str(root / "shared-spool")},
    }
    results = {1: Reception(1, [], []), 2: Reception(2, [], [])}
    expected = 0
    try:
        with processes() as procs:
            for i in (1, 2):
                (root / f"r{i}").mkdir()
                procs.append(GatewayProcess(root / f"r{i}", roles="receive", **config).start())
            for rep in range(repeat):
                for count in (1, 2):
                    groups = split([p for g in range(senders)
                                    for p in series(n // senders, f"scale-recv-{rep}-{count}-{g}")], senders)
                    total = sum(len(g) for g in groups)
                    results[count].peer.append(proxied_storescp(root, groups, total, count))
                    (root / "proxy").mkdir(exist_ok=True)
                    with HAProxy([p.port for p in procs[:count]], root / "proxy") as proxy:
                        time.sleep(1.0)  # the first health checks
                        os.sync()
                        seconds = push(proxy.port, GATEWAY_AET, groups)
                    expected += total
                    results[count].rates.append(total / seconds)
                    print(f"  rep {rep + 1}, {count} receiver(s): {results[count].rates[-1]:.0f} instances/s"
                          f" (storescp --fork behind the proxy: {results[count].peer[-1]:.0f}/s)", flush=True)
            recorded = procs[0].state().instance_count()
            if recorded != expected:
                raise RuntimeError(f"the receivers recorded {recorded} of {expected} instances")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return list(results.values())


def proxied_storescp(root: Path, groups: list[list[Path]], total: int, backends: int) -> float:
    """dcmtk's storescp --fork behind HAProxy: the same proxy hop, no durability, as many backends as receivers."""
    out = root / "storescp"
    scps = [TunedStoreSCP(out / str(i), fork=True).start() for i in range(backends)]
    try:
        (root / "peer-proxy").mkdir(exist_ok=True)
        with HAProxy([s.port for s in scps], root / "peer-proxy") as proxy:
            time.sleep(1.0)
            os.sync()
            seconds = push(proxy.port, scps[0].aet, groups)
        received = sum(len(s.received()) for s in scps)
    finally:
        for s in scps:
            s.stop()
        shutil.rmtree(out, ignore_errors=True)
    if received != total:
        raise RuntimeError(f"storescp stored {received} of {total} instances")
    return total / seconds


# --- part 3: per-job coordination cost ----------------------------------------------------------------------

OPS = ("claim", "set enhancer", "renew lease", "finish", "claim delivery", "delivery ok", "settle")
RECORD = "record instance"  # per received instance, not per job: reception's share of the database's load
STORES = ("SQLite", "PostgreSQL", "PostgreSQL fsync=off")


def coordination(store: StateStore, jobs: int) -> dict[str, list[float]]:
    """Milliseconds of each state transition a job goes through, for `jobs` one-instance jobs, in job order;
    and of `record_instance` (what a receiver commits per instance before it acknowledges)."""
    times: dict[str, list[float]] = {op: [] for op in (*OPS, RECORD)}

    def timed(op: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        value = call(*args, **kwargs)
        times[op].append(1000.0 * (time.perf_counter() - t0))
        return value

    now = time.time() - 10.0
    for i in range(jobs):
        timed(RECORD, store.record_instance, sop_uid=f"1.2.826.0.1.3680043.10.9.{i}",
              series_uid=f"1.2.826.0.1.3680043.10.8.{i}", study_uid="1.2.826.0.1.3680043.10.7",
              sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT", size=1, calling_aet="BENCH", now=now)
    store.make_jobs_for_stable_series(1.0)
    for _ in range(jobs):
        job = timed("claim", store.claim_job, JobState.QUEUED, JobState.ENHANCING)
        if job is None:
            raise RuntimeError("no job to claim")
        timed("set enhancer", store.set_job_enhancer, job.id, "gaussian", "1", f"2.25.{job.id}", "cpu")
        if not timed("renew lease", store.renew_lease, job.id, store.worker_id):
            raise RuntimeError("lease not renewed")
        timed("finish", store.finish_enhancement, job.id, destinations=[DESTINATION], derived_count=1, psnr=None,
              ssim=None, seconds=0.1)
        claimed = timed("claim delivery", store.claim_delivery, DESTINATION)
        if claimed is None or claimed[0].id != job.id:
            raise RuntimeError("the delivery just made due was not claimed")
        timed("delivery ok", store.delivery_succeeded, job.id, DESTINATION)
        if timed("settle", store.settle_job, job.id) != JobState.DONE:
            raise RuntimeError(f"job {job.id} did not settle as done")
    return times


def p95(values: Sequence[float]) -> float:
    return float(statistics.quantiles(values, n=20)[-1]) if len(values) > 1 else values[0]


def set_fsync(pg: PostgresServer, on: bool) -> None:
    """Restart the server with fsync on or off (its command line sets it, which ALTER SYSTEM cannot override)."""
    if pg.fsync != on:
        pg.stop()
        pg.fsync = on
        pg.start()


def coordination_all(pg: PostgresServer, jobs: int) -> dict[str, dict[str, list[float]]]:
    """SQLite, PostgreSQL as benchmarked (fsync=on), and PostgreSQL with fsync=off (what the commits' flush costs)."""
    root = scratch("scale-coord-")
    times = {}
    try:
        sqlite = SqliteState(root / "state.db")
        try:
            times["SQLite"] = coordination(sqlite, jobs)
        finally:
            sqlite.close()
        for name, fsync in (("PostgreSQL", True), ("PostgreSQL fsync=off", False)):
            set_fsync(pg, fsync)
            postgres = PostgresState(pg.create_database(f"scale_coordination_{int(fsync)}"))
            try:
                times[name] = coordination(postgres, jobs)
            finally:
                postgres.close()
    finally:
        set_fsync(pg, True)
        shutil.rmtree(root, ignore_errors=True)
    return times


# --- report ----------------------------------------------------------------------------------------------------


def print_enhancement(results: list[Throughput]) -> None:
    print(f"{'enhancer':<9} {'state':<11} {'workers':>7} {'jobs':>5} {'slices':>6} {'seconds':>8} {'slices/s':>9}"
          f" {'x 1 worker':>10} {'x SQLite':>8} {'idle share':>10} {'job ms/slice':>12}")
    for enhancer in dict.fromkeys(r.enhancer for r in results):
        rows = [r for r in results if r.enhancer == enhancer]
        lite = next(r for r in rows if r.backend == "SQLite")
        one = next(r for r in rows if r.backend == "PostgreSQL" and r.workers == 1)
        for r in rows:
            scale = f"{r.rate / one.rate:.2f}" if r.backend == "PostgreSQL" else ""
            print(f"{enhancer:<9} {r.backend:<11} {r.workers:>7} {r.jobs:>5} {r.slices:>6} {r.seconds:>8.2f}"
                  f" {r.rate:>9.2f} {scale:>10} {r.rate / lite.rate:>8.2f} {r.idle_share:>10.0%}"
                  f" {1000 * r.busy / r.slices:>12.0f}")
    print("seconds: first job queued (or the last worker started, if later) -> last job done, from the state")
    print("idle share: 1 - (sum of the jobs' enhance_seconds) / (workers x seconds): time outside a job")
    print("job ms/slice: the jobs' enhance_seconds per slice; it grows with the workers when they share the CPU")


def print_reception(results: list[Reception]) -> None:
    one = median(results[0].rates)
    print(f"{'receivers':>9} {'instances/s':>11} {'x 1 receiver':>12} {'storescp/s':>10} {'x storescp':>10}  runs")
    for r in results:
        print(f"{r.receivers:>9} {median(r.rates):>11.0f} {median(r.rates) / one:>12.2f} {median(r.peer):>10.0f}"
              f" {median(r.rates) / median(r.peer):>10.2f}  [{', '.join(f'{v:.0f}' for v in r.rates)}]")


def print_coordination(times: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """The table (median / p95 per store); returns each store's per-job total (the median of the per-job sums,
    which exceeds the sum of the medians when a slow commit lands in most jobs), in ms."""
    print(f"{'operation':<15}" + "".join(f" {name + ' med / p95':>30}" for name in STORES) + f" {'PG/SQLite':>9}")
    totals = {}
    for store in STORES:
        per_job = [sum(vals) for vals in zip(*(times[store][op] for op in OPS), strict=True)]
        times[store]["per job (sum)"] = per_job
        totals[store] = median(per_job)
    for op in (*OPS, "per job (sum)", RECORD):
        cells = "".join(f" {median(times[s][op]):>22.2f} / {p95(times[s][op]):>5.2f}" for s in STORES)
        print(f"{op:<15}{cells} {median(times['PostgreSQL'][op]) / median(times['SQLite'][op]):>9.2f}")
    print(f"'{RECORD}': per received instance (one commit before the C-STORE is acknowledged), not part of a job")
    return totals


def print_prediction(enhance: list[Throughput], receive: list[Reception], coord: dict[str, float],
                     record_ms: float, series_slices: int) -> None:
    per_worker = min(GPU_PIPELINE_RATE, WORKER_HOST_CEILING)
    job_seconds = series_slices / per_worker
    coord_s = coord["PostgreSQL"] / 1000.0
    site = 4 * per_worker / (1.0 + coord_s / job_seconds)
    one_receiver = median(receive[0].rates)
    two_here = median(receive[1].rates)
    cheap = {r.workers: r for r in enhance if r.backend == "PostgreSQL" and r.enhancer == "gaussian"}
    first = cheap[min(cheap)]
    print(f"assumed per GPU worker: min(GPU Pipeline.run {GPU_PIPELINE_RATE:.0f} slices/s (H100, drunet-ct;"
          f" ncdn-ct not measured on a GPU), worker host ceiling {WORKER_HOST_CEILING} slices/s (issue 19:"
          f" one derive thread, ~36 ms per slice)) = {per_worker:.1f} slices/s, one worker process per GPU with"
          f" >= 2 free cores each")
    print(f"coordination per job on PostgreSQL: {coord['PostgreSQL']:.1f} ms (median, fsync=on) against"
          f" {job_seconds:.1f} s of work for a {series_slices}-slice series: {coord_s / job_seconds:.2%}")
    print(f"4 GPU workers: ~{site:.0f} slices/s = {site / series_slices * 3600:.0f} series of {series_slices}"
          f" slices per hour, assuming linear scaling (claims use SKIP LOCKED: no worker waits for another)")
    print("  here, on 2 shared cores, the cheap enhancer went " + ", ".join(
        f"{n} worker{'s' if n > 1 else ''} {r.rate / first.rate:.2f}x (idle share {r.idle_share:.0%}, {1000 * r.busy / r.slices:.0f} ms"
        f" per slice in a job)" for n, r in sorted(cheap.items()))
        + ": the workers were busy inside their jobs, which slowed as they shared the CPU; waiting on the"
          " database would show as idle share")
    print(f"2 receivers on their own machines: ~{2 * one_receiver:.0f} instances/s (2 x the 1-receiver rate"
          f" here, {one_receiver:.0f}/s; on this one machine and disk 2 receivers gave {two_here:.0f}/s)")
    bound = "enhancement" if site < 2 * one_receiver else "reception"
    print(f"so such a site is {bound}-bound: it enhances ~{site:.0f} slices/s while it can receive"
          f" ~{2 * one_receiver:.0f}/s; a burst above {site:.0f} slices/s waits in the spool")
    print(f"PostgreSQL's load: one synced commit per received instance ({record_ms:.1f} ms each from one session"
          f" here), i.e. ~{2 * one_receiver:.0f} commits/s at full reception, against"
          f" ~{site / series_slices * len(OPS):.1f}/s for job coordination: size its WAL disk for reception")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cheap", type=int, nargs=2, default=[24, 4], metavar=("SERIES", "SLICES"),
                        help="gaussian: series and slices per series (part 1)")
    parser.add_argument("--model", type=int, nargs=2, default=[8, 4], metavar=("SERIES", "SLICES"),
                        help="ncdn-ct: series and slices per series (part 1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="enhance processes (part 1)")
    parser.add_argument("--receive-n", type=int, default=200, help="instances per reception run (part 2)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent storescu processes (part 2)")
    parser.add_argument("--repeat", type=int, default=2, help="reception repetitions; medians (part 2)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs timed per state store (part 3)")
    parser.add_argument("--site-series", type=int, default=200, help="slices per series for the prediction")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a run's jobs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"scale-out benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}: {os.cpu_count()} CPUs,"
          f" load average {os.getloadavg()[0]:.1f} at the start; 512x512 CT from 693_UNCR.dcm, enhancers on CPU")
    with PostgresServer(fsync=True) as pg:
        print(f"PostgreSQL {pg.sql('SHOW server_version')}, fsync={pg.sql('SHOW fsync')},"
              f" synchronous_commit={pg.sql('SHOW synchronous_commit')}")
        print("\n1. enhancement throughput (QA gate off; folder destination)", flush=True)
        enhance = enhancement(pg, [("gaussian", *args.cheap), ("ncdn-ct", *args.model)], args.workers,
                              args.timeout)
        print("\n2. reception through HAProxy", flush=True)
        receive = reception(pg, args.receive_n, args.senders, args.repeat)
        print(f"\n3. coordination per job, {args.jobs} jobs per store, in this process", flush=True)
        coord_times = coordination_all(pg, args.jobs)
    print("\n=== results ===\n")
    print("1. enhancement throughput")
    print_enhancement(enhance)
    print(f"\n2. reception through HAProxy, {args.senders} concurrent storescu, {args.receive_n} instances per run")
    print_reception(receive)
    print("\n3. coordination per job (ms)")
    coord = print_coordination(coord_times)
    print("\n4. prediction for a 4-GPU, 2-receiver site")
    print_prediction(enhance, receive, coord, median(coord_times["PostgreSQL"][RECORD]), args.site_series)
    print(f"\nnotes: {os.cpu_count()} cores shared with other work (models were being trained on this machine;"
          f" load average {os.getloadavg()[0]:.1f} at the end): the figures are indicative, the ratios within"
          f" one run are what count. No GPU. Whole run {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
