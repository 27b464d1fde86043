"""Memory benchmark: peak RSS of each gateway process for 200-, 1000- and 2000-slice series.

Each size gets a fresh gateway (peak RSS is a high-water mark: it never goes down). The series is pushed
with storescu, enhanced (`gaussian` by default: the cheapest, so the flow is quick; memory is about how
slices stream, not about the filter) and delivered to a dcmtk storescp; then VmHWM is read from
/proc/<pid>/status for the service process and each of its child processes (the spawned enhancement
worker, multiprocessing's resource tracker). The target: flat in series size, within 20% from 200 to
2000 slices, because slices stream through the worker in batches and the SCP/sender handle one instance
at a time. Also printed: VmHWM of a tuned dcmtk storescp that received the same series, as a reference.

    .venv/bin/python -m bench.memory --n 200 1000 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench.common import TunedStoreSCP, dicom_destination, gateway, push, run_flow, scratch, series


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (scans /proc: /proc/<pid>/task/<pid>/children is not always built in)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def _label(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    if "spawn_main" in cmdline:
        return "worker"
    return Path(cmdline.split(" ", 1)[0]).name or str(pid)


def peaks(pid: int) -> dict[str, int]:
    """VmHWM (KiB) of the service and each child, labelled; several workers get numbered labels."""
    out = {"service": _status_kib(pid, "VmHWM")}
    for kid in _children(pid):
        label = _label(kid)
        name, i = label, 2
        while name in out:
            name, i = f"{label}{i}", i + 1
        out[name] = _status_kib(kid, "VmHWM")
    return out


def measure(n: int, enhancer: str) -> tuple[dict[str, int], int]:
    files = series(n, "mem")
    root = scratch("gw-mem-")
    try:
        with TunedStoreSCP(root / "pacs") as scp:
            config = {
                "destinations": [dicom_destination(scp)],
                "routes": [{"enhancer": enhancer}],
                "stable_seconds": 2.0,
            }
            with gateway(root / "gw", **config) as gw:  # type: ignore[arg-type]
                run_flow(gw, scp, files, timeout=3600.0)
                result = peaks(gw.pid())
        # storescp without --fork serves the association in its own process: its VmHWM is the receiver's.
        with TunedStoreSCP(root / "ref") as ref:
            push(ref.port, ref.aet, [files])
            storescp_peak = _status_kib(ref.pid, "VmHWM")
        return result, storescp_peak
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[200, 1000, 2000], help="series sizes")
    parser.add_argument("--enhancer", default="gaussian", help="route every series to this enhancer")
    args = parser.parse_args(argv)
    print(f"memory benchmark: {os.cpu_count()} CPUs, enhancer {args.enhancer}, peak RSS (VmHWM) in MiB")
    rows = []
    for n in args.n:
        result, ref = measure(n, args.enhancer)
        rows.append((n, result, ref))
        print(f"  N={n}: " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in result.items()) + f", storescp {ref / 1024:.0f}",
              flush=True)  # fmt: skip
    labels = sorted({k for _, r, _ in rows for k in r}, key=lambda k: (k != "service", k != "worker", k))
    print()
    print(f"{'N':>5} " + " ".join(f"{k:>16}" for k in labels) + f" {'storescp':>9}")
    for n, result, ref in rows:
        print(f"{n:>5} " + " ".join(f"{result.get(k, 0) / 1024:>16.0f}" for k in labels) + f" {ref / 1024:>9.0f}")
    first, last = rows[0], rows[-1]
    for k in labels:
        a, b = first[1].get(k, 0), last[1].get(k, 0)
        if a:
            print(f"{k}: {last[0]} vs {first[0]} slices: {100.0 * (b - a) / a:+.0f}%")


if __name__ == "__main__":
    main()
