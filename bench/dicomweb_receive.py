"""STOW-RS reception: the gateway's `[dicomweb]` receiver against Orthanc's DICOMweb plugin, in the same run.

Why Orthanc: it is the STOW-RS server sites already run beside a gateway (Debian `orthanc-dicomweb`), on the
same disk. Both get the same N real CT slices from the same client (dicomweb-client, `--batch` instances per
request), alternately, `--repeat` times; medians are printed with the ratio. The gateway pays its usual
durability per instance (checks, temp file + fsync + rename + fsync of the folder, the state row) before
it answers; Orthanc writes its storage area and its SQLite index.

    .venv/bin/python -m bench.dicomweb_receive --n 200 --batch 20 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

from bench.common import fmt_runs, median, series
from tests.gateway.harness import GatewayProcess, wait_for
from tests.gateway.test_dicomweb import ORTHANC_DICOMWEB, _listening
from tests.peers import Orthanc, free_port

TOKEN = "bench-token-0123456789abcdef"


def _push(url: str, files: list[Path], batch: int, headers: dict[str, str] | None = None) -> float:
    """Seconds to STOW all files in requests of `batch` instances (files read before the clock starts)."""
    datasets = [pydicom.dcmread(f) for f in files]
    client = DICOMwebClient(url, headers=headers)
    client.set_http_retry_params(retry=False)
    began = time.perf_counter()
    for i in range(0, len(datasets), batch):
        answer = client.store_instances(datasets[i:i + batch])
        if answer.get("FailedSOPSequence"):
            raise SystemExit(f"{url}: instances refused: {answer.FailedSOPSequence}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stow-"))
    gw_times, orthanc_times = [], []
    try:
        for run in range(args.repeat):
            files = series(args.n, seed=f"stow-bench-{run}")  # new UIDs each run: nothing is a duplicate
            port = free_port()
            (work / f"gw{run}").mkdir()
            gw = GatewayProcess(work / f"gw{run}", destinations=[{"name": "a", "type": "folder", "path": "{var_dir}/a"}],
                                stable_seconds=3600, dicomweb={"enabled": True, "port": port, "tokens": [TOKEN]})
            gw.start()
            try:
                wait_for(lambda p=port: _listening(p), 30, "the STOW-RS port")
                gw_times.append(_push(f"http://127.0.0.1:{port}/dicomweb", files, args.batch,
                                      {"Authorization": f"Bearer {TOKEN}"}))
            finally:
                gw.stop()
            with Orthanc(work / f"orthanc{run}", config={"Plugins": [str(ORTHANC_DICOMWEB)],
                                                         "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}) as pacs:
                orthanc_times.append(_push(f"{pacs.url}/dicom-web", files, args.batch))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gw_rate, peer_rate = args.n / median(gw_times), args.n / median(orthanc_times)
    print(f"STOW-RS, {args.n} CT slices 512x512, {args.batch} per request, {args.repeat} runs (medians)")
    print(f"  gateway  {gw_rate:7.1f} instances/s   runs {fmt_runs(gw_times)}")
    print(f"  Orthanc  {peer_rate:7.1f} instances/s   runs {fmt_runs(orthanc_times)}")
    print(f"  ratio gateway/Orthanc {gw_rate / peer_rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
