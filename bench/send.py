"""Send benchmark: the gateway's sender path (`gateway.dimse.scu.send_files`) vs dcmtk `storescu`.

Both send the same N real 512x512 CT files on one association to the same tuned dcmtk `storescp`
(TCP_NODELAY, 128 KiB PDUs), one after the other, repeated; medians of instances/s and the ratio
gateway/storescu are printed. `send_files` runs in this process exactly as the sender thread calls it
(association, presentation contexts from the files, one C-STORE per file, status checks, release);
storescu's time includes starting its process, which is part of what a site running it would pay.

    .venv/bin/python -m bench.send --n 200 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from bench.common import LOOPBACK, TunedStoreSCP, fmt_runs, median, push, scratch, series
from gateway.dimse.fast.compat import configure_process
from gateway.dimse.scu import Peer, send_files


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _cpu() -> float:
    """This process's CPU seconds, all threads (send_files, its DUL and reactor threads); not storescp's."""
    times = os.times()
    return times.user + times.system


def run(n: int, repeat: int) -> tuple[list[float], list[float], list[float]]:
    files = series(n, "send")
    peer_rates: list[float] = []
    gateway_rates: list[float] = []
    cpu_ms: list[float] = []
    out = scratch("send-storescp-")
    try:
        with TunedStoreSCP(out) as scp:
            peer = Peer(scp.aet, LOOPBACK, scp.port, calling_aet="ENHANCE_GW")
            send_files(peer, files[:2])  # warm imports and the file cache outside the timed runs
            for rep in range(repeat):
                _clear(out)
                os.sync()
                peer_rates.append(n / push(scp.port, scp.aet, [files]))
                _clear(out)
                os.sync()
                cpu_before = _cpu()
                started = time.perf_counter()
                result = send_files(peer, files)
                seconds = time.perf_counter() - started
                cpu_ms.append(1000.0 * (_cpu() - cpu_before) / n)
                if result.sent != n:
                    raise RuntimeError(f"send_files sent {result.sent} of {n}")
                gateway_rates.append(n / seconds)
                print(
                    f"  rep {rep + 1}: storescu {peer_rates[-1]:.0f}/s  send_files {gateway_rates[-1]:.0f}/s"
                    f" ({cpu_ms[-1]:.2f} ms CPU per instance)",
                    flush=True,
                )
            if len(scp.received()) != n:
                raise RuntimeError(f"storescp holds {len(scp.received())} of {n} files after the last run")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return peer_rates, gateway_rates, cpu_ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="instances per run")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; medians are reported")
    args = parser.parse_args(argv)
    configure_process()  # pynetdicom's process-wide flags, as the service sets them at start
    print(f"send benchmark: {os.cpu_count()} CPUs, {args.n} x 512x512 CT, repeat={args.repeat}")
    peer, gateway, cpu_ms = run(args.n, args.repeat)
    ratios = [g / p for g, p in zip(gateway, peer, strict=True)]
    print()
    print(f"{'N':>5} {'storescu/s':>10} {'send_files/s':>12} {'ratio':>6} {'cpu ms':>7}  runs (send_files/s)")
    print(
        f"{args.n:>5} {median(peer):>10.0f} {median(gateway):>12.0f} {median(ratios):>6.2f} {median(cpu_ms):>7.2f}"
        f"  {fmt_runs(gateway)}"
    )
    print("cpu ms: CPU time of the sending process per instance (send_files and its pynetdicom threads)")


if __name__ == "__main__":
    main()
