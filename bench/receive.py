"""Receive benchmark: dcmtk storescu pushes N real 512x512 CT instances to the gateway and to dcmtk storescp.

Prints instances/s for each receiver and the ratio gateway/storescp, for one association and for 4
concurrent storescu senders (the series split round-robin between them). Each repetition measures the peer
and then the gateway back to back; the medians over repetitions are reported.

Why the gateway config is what it is: enhancer `gaussian` (the cheapest) and stable_seconds = 3600, so no
series becomes a job and no enhancement competes with reception while it is timed. The gateway still does
all it must per instance: parse the headers, write temp file + fsync + rename + fsync of the directory,
commit a SQLite row (see State.record_instance), and only then acknowledge. storescp does none of the syncing; that
is part of what the ratio shows.

Also printed: the durability floor, i.e. instances/s of the gateway's own LocalSpool.put +
State.record_instance alone (no network, same disk, same process), measured in each repetition right after
the gateway. On one association the gateway can never beat it: it is the ceiling that the house rule
(acknowledge only what is durable) sets on this machine's disk, and its ratio to storescp shows how much of
the gap is fsync latency rather than networking.

    .venv/bin/python -m bench.receive --n 200 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import GATEWAY_AET, TunedStoreSCP, fmt_runs, gateway, median, push, scratch, series, split
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey
from gateway.storage.state import State


@dataclass
class Figures:
    """Instances/s per repetition for one receiver and one sender count."""

    peer: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # gateway process CPU per instance received

    def ratios(self) -> list[float]:
        return [g / p for g, p in zip(self.gateway, self.peer, strict=True)]

    def ceilings(self) -> list[float]:
        """Per repetition, the rate the gateway would reach if its only costs beyond storescp's were the
        durable store: each instance then takes storescp's time plus the floor's, 1 / (1/peer + 1/floor)."""
        return [1.0 / (1.0 / p + 1.0 / f) for p, f in zip(self.peer, self.floor, strict=True)]


def measure_peer(files_groups: list[list[Path]], n: int, fork: bool) -> float:
    out = scratch("storescp-")
    try:
        with TunedStoreSCP(out, fork=fork) as scp:
            os.sync()
            seconds = push(scp.port, scp.aet, files_groups)
            received = len(scp.received())
        if received != n:
            raise RuntimeError(f"storescp stored {received} of {n} instances")
        return n / seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def durability_floor(template: Path, threads: int, count: int = 100) -> float:
    """Instances/s of the per-instance durable store alone, from `threads` threads sharing one Spool and State.

    Temp file, fsync, rename, fsync of the directory, SQLite commit (State.record_instance): what the SCP does
    per instance before it may acknowledge, with the same objects it uses, so the figure is the ceiling the
    disk sets for 1 or N concurrent associations.
    """
    root = scratch("floor-")
    try:
        spool = LocalSpool(root / "spool", min_free_mb=0)
        state = State(root / "state.db")
        data = template.read_bytes()

        def store(indexes: range) -> None:
            for i in indexes:
                sop = f"1.2.826.0.1.3680043.10.1.{i}"
                key = InstanceKey("1.2.826.0.1.3680043.10.2", "1.2.826.0.1.3680043.10.3", sop)
                spool.put(key, data)
                state.record_instance(
                    sop_uid=sop,
                    series_uid="1.2.826.0.1.3680043.10.3",
                    study_uid="1.2.826.0.1.3680043.10.2",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    modality="CT",
                    size=len(data),
                    calling_aet="BENCH",
                )

        os.sync()
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(store, [range(t, count, threads) for t in range(threads)]))
        seconds = time.perf_counter() - started
        state.close()
        return count / seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_config(root: Path) -> dict[str, object]:
    return {
        "destinations": [{"name": "archive", "type": "folder", "path": str(root / "archive")}],
        "routes": [{"enhancer": "gaussian"}],
        "stable_seconds": 3600.0,
    }


def run(n: int, senders: int, repeat: int) -> dict[int, Figures]:
    single = series(n, "recv1")
    multi = [f for g in range(senders) for f in series(n // senders, f"recv{senders}-{g}")]
    groups_multi = split(multi, senders)
    figures = {1: Figures(), senders: Figures()}
    for rep in range(repeat):
        root = scratch("gw-recv-")
        try:
            with gateway(root, **gateway_config(root)) as gw:
                for count, groups in ((1, [single]), (senders, groups_multi)):
                    total = sum(len(g) for g in groups)
                    figures[count].peer.append(measure_peer(groups, total, fork=count > 1))
                    os.sync()
                    cpu_before = process_cpu_seconds(gw.pid())
                    seconds = push(gw.port, GATEWAY_AET, groups)
                    cpu = process_cpu_seconds(gw.pid()) - cpu_before
                    figures[count].gateway.append(total / seconds)
                    figures[count].cpu_ms.append(1000.0 * cpu / total)
                    figures[count].floor.append(durability_floor(single[0], count))
                    print(
                        f"  rep {rep + 1} senders={count}: storescp {figures[count].peer[-1]:.0f}/s"
                        f"  gateway {figures[count].gateway[-1]:.0f}/s ({figures[count].cpu_ms[-1]:.2f} ms CPU"
                        f" per instance)  durability floor {figures[count].floor[-1]:.0f}/s",
                        flush=True,
                    )
                state = gw.proc.state()
                stored = state.instance_count()
                state.close()
                if stored != n + len(multi):
                    raise RuntimeError(f"gateway recorded {stored} instances, expected {n + len(multi)}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[200], help="instances per run (e.g. 200 1000)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent storescu processes (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported")
    args = parser.parse_args(argv)
    print(f"receive benchmark: {os.cpu_count()} CPUs, 512x512 CT from 693_UNCR.dcm, repeat={args.repeat}")
    rows = []
    for n in args.n:
        print(f"N={n}", flush=True)
        for count, fig in run(n, args.senders, args.repeat).items():
            rows.append((n, count, fig))
    print()
    print(
        f"{'N':>5} {'senders':>7} {'storescp/s':>11} {'gateway/s':>10} {'ratio':>6} {'cpu ms':>7}"
        f" {'floor/s':>8} {'floor/storescp':>14} {'ceiling/s':>10} {'gateway/ceiling':>15}  runs (gateway/s)"
    )
    for n, count, fig in rows:
        floor_ratio = median([f / p for f, p in zip(fig.floor, fig.peer, strict=True)])
        of_ceiling = median([g / c for g, c in zip(fig.gateway, fig.ceilings(), strict=True)])
        print(
            f"{n:>5} {count:>7} {median(fig.peer):>11.0f} {median(fig.gateway):>10.0f} {median(fig.ratios()):>6.2f}"
            f" {median(fig.cpu_ms):>7.2f} {median(fig.floor):>8.0f} {floor_ratio:>14.2f}"
            f" {median(fig.ceilings()):>10.0f} {of_ceiling:>15.2f}  {fmt_runs(fig.gateway)}"
        )
    print("cpu ms: the gateway process's CPU time per instance received (all threads)")
    print("floor: only the durable store per instance, from as many threads as senders (module docstring)")
    print("ceiling: 1 / (1/storescp + 1/floor), storescp's per-instance time plus the durable store's; a")
    print("  receiver that acknowledges only what is durable cannot beat it, so ratio >= 0.5 needs floor >= storescp")


if __name__ == "__main__":
    main()
