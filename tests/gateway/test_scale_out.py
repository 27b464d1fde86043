"""Scale-out with real servers: two receivers behind HAProxy, two enhance workers, a completion+send node, one
PostgreSQL state and one spool folder shared by all (docs/scale-out.md).

What is proved: every instance dcmtk pushed (four series at once, through the load balancer) is derived and
delivered exactly once, also when an enhance worker is killed with SIGKILL in the middle of a job (another
worker resumes it), when a receiver is killed in the middle of an association (the modality's resend goes
through the other receiver; the instances the dead one acknowledged are kept, and both halves make one job)
and when PostgreSQL itself is killed and restarted while series are flowing (reception refuses with 0xA700
while it is down, the sender's retry is stored, nothing acknowledged is lost).
"Exactly once" is counted at a dcmtk storescp destination, which logs every C-STORE it receives (a PACS such
as Orthanc silently ignores a resent instance, so it cannot show a duplicate); Orthanc is the second
destination, the PACS a site would run.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.storage.state import JobState
from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import Orthanc, PeerCommandError, StoreSCP, storescu
from tests.realdata import make_series
from tests.servers import HAProxy, PostgresServer

SERIES = 4
PER_SERIES = 3
#: What each destination receives per series: its derived images and the SR report that travels with them.
SENT_PER_SERIES = PER_SERIES + 1


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its children (a node that dies takes its worker processes with it)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    for child in [*children, str(pid)]:
        subprocess.run(["kill", "-9", child], check=False)


def _received_stores(scp: StoreSCP) -> int:
    """C-STORE requests the storescp destination received (a resent instance counts again)."""
    return scp.log_path.read_text(errors="replace").count("Received Store Request")


class Site:
    """The processes of one scale-out site on this machine, each in its own folder, sharing state and spool."""

    def __init__(self, root: Path, url: str, orthanc: Orthanc, scp: StoreSCP) -> None:
        self.root = root
        common: dict[str, Any] = {
            "destinations": [
                {"name": "pacs", "type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                 "port": orthanc.dicom_port},
                {"name": "counter", "type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port},
            ],
            "routes": [{"enhancer": "test-slow"}],
            "enhance": {"plugins": ["tests.gateway.slow_enhancers"], "batch_size": 1},
            "state": {"url": url, "lease_seconds": 5},
            "gateway": {"spool_dir": str(root / "shared-spool")},
            "sender": {"base_seconds": 0.5, "cap_seconds": 2},
            "qa": {"enabled": False},
        }
        for name in ("r1", "r2", "w1", "w2", "hub"):
            (root / name).mkdir()
        self.receivers = [GatewayProcess(root / f"r{i}", roles="receive", **common) for i in (1, 2)]
        self.workers = [GatewayProcess(root / f"w{i}", roles="enhance", **common) for i in (1, 2)]
        self.hub = GatewayProcess(root / "hub", roles="complete,send", **common)
        self.proxy: HAProxy | None = None

    def start(self) -> None:
        for gw in [*self.receivers, *self.workers, self.hub]:
            gw.start()
        self.proxy = HAProxy([r.port for r in self.receivers], self.root).start()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for gw in [*self.receivers, *self.workers, self.hub]:
            gw.kill_quietly()

    def push(self, files_per_series: list[list[Path]], retry_for: float = 0.0) -> None:
        """Four storescu processes at once through the load balancer, one association per series.

        `retry_for`: seconds during which a refused push is sent again, as a modality's retry queue does.
        """
        assert self.proxy is not None
        port = self.proxy.port
        errors: list[BaseException] = []

        def one(files: list[Path]) -> None:
            deadline = time.monotonic() + retry_for
            while True:
                try:
                    storescu(port, files, called_aet="ENHANCE_GW")
                    return
                except PeerCommandError as exc:
                    if time.monotonic() >= deadline:
                        errors.append(exc)
                        return
                    time.sleep(1.0)

        threads = [threading.Thread(target=one, args=(f,)) for f in files_per_series]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors

    def jobs(self) -> list[Any]:
        return self.hub.state().jobs()


@pytest.fixture
def site(tmp_path: Path, postgres_url: str, orthanc: Orthanc, storescp: StoreSCP) -> Iterator[Site]:
    s = Site(tmp_path, postgres_url, orthanc, storescp)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _series(tmp_path: Path, tag: str) -> list[list[Path]]:
    return [make_series("CT_small.dcm", PER_SERIES, tmp_path / f"{tag}{i}", seed=f"scale-{tag}-{i}")
            for i in range(SERIES)]


def test_four_series_through_haproxy_are_delivered_once_although_a_worker_is_killed_mid_job(
    tmp_path: Path, site: Site, orthanc: Orthanc, storescp: StoreSCP
) -> None:
    site.push(_series(tmp_path, "a"))
    assert site.hub.state().instance_count() == SERIES * PER_SERIES  # every acknowledged instance recorded
    accepted = [sum(1 for e in r.events() if e.get("event") == "association.accepted") for r in site.receivers]
    assert sorted(accepted) == [2, 2]  # round robin: each receiver took two of the four associations

    victim = site.workers[0]
    assert victim.proc is not None
    children = set(subprocess.run(["pgrep", "-P", str(victim.proc.pid)], capture_output=True, text=True,
                                  check=False).stdout.split())

    def victim_mid_job() -> bool:
        return any(j.state == JobState.ENHANCING and j.owner and j.owner.split(":")[1] in children
                   for j in site.jobs())

    wait_for(victim_mid_job, 60, "the first worker to be in the middle of a job")
    _kill_tree(victim.proc.pid)

    def all_done() -> list[Any] | None:
        jobs = site.jobs()
        return jobs if len(jobs) == SERIES and all(j.state == JobState.DONE for j in jobs) else None

    jobs = wait_for(all_done, 120, f"{SERIES} jobs done; hub log:\n{site.hub.log_text()[-2000:]}")
    assert all(j.instance_count == PER_SERIES and j.derived_count == PER_SERIES for j in jobs)
    assert any(j.attempts >= 1 for j in jobs) or any(
        e.get("event") == "lease.recovered" for w in site.workers[1:] for e in w.events()
    )
    total = SERIES * SENT_PER_SERIES
    wait_for(lambda: orthanc.count_instances() >= total, 60, "the derived series in Orthanc")
    storescp.wait_for(total)
    assert orthanc.count_instances() == total
    assert _received_stores(storescp) == total  # exactly once: no instance was sent twice


def test_postgresql_killed_mid_flow_loses_nothing_acknowledged(
    tmp_path: Path, site: Site, postgres_server: PostgresServer, orthanc: Orthanc, storescp: StoreSCP
) -> None:
    first, second = _series(tmp_path, "b")[:2], _series(tmp_path, "c")[:2]
    site.push(first)
    postgres_server.kill()
    try:
        # while the state is down, reception refuses (0xA700): storescu reports it, nothing is acknowledged
        refused = subprocess.run(
            ["storescu", "-aec", "ENHANCE_GW", "127.0.0.1", str(site.proxy.port), str(second[0][0])],  # type: ignore[union-attr]
            capture_output=True, text=True, check=False, timeout=60,
        )
        assert "0xa700" in (refused.stdout + refused.stderr).lower() or refused.returncode != 0
    finally:
        postgres_server.start()
    site.push(second, retry_for=60)  # refused (0xA700) until the receivers' pools reconnect, then stored
    total = 4 * SENT_PER_SERIES

    def all_done() -> list[Any] | None:
        jobs = site.jobs()
        return jobs if len(jobs) == 4 and all(j.state == JobState.DONE for j in jobs) else None

    wait_for(all_done, 180, f"4 jobs done after the restart; hub log:\n{site.hub.log_text()[-2000:]}")
    storescp.wait_for(total)
    wait_for(lambda: orthanc.count_instances() >= total, 60, "the derived series in Orthanc")
    assert orthanc.count_instances() == total
    assert _received_stores(storescp) == total


def test_a_receiver_killed_mid_association_loses_nothing_and_the_retry_goes_through_the_other(
    tmp_path: Path, site: Site, orthanc: Orthanc, storescp: StoreSCP
) -> None:
    from pydicom import dcmread
    from pynetdicom import AE

    files = make_series("CT_small.dcm", 6, tmp_path / "m", seed="scale-mid-association")
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assert site.proxy is not None
    assoc = ae.associate("127.0.0.1", site.proxy.port, ae_title="ENHANCE_GW")
    assert assoc.is_established
    for ds in datasets[:3]:  # acknowledged by the receiver HAProxy chose
        assert assoc.send_c_store(ds).Status == 0x0000

    def serving() -> GatewayProcess | None:
        return next((r for r in site.receivers
                     if any(e.get("event") == "association.accepted" for e in r.events())), None)

    victim = wait_for(serving, 30, "the receiver serving the association")
    assert victim.proc is not None
    _kill_tree(victim.proc.pid)  # mid-association: three instances acknowledged, three not yet sent
    status = assoc.send_c_store(datasets[3]) if assoc.is_established else None
    assert status is None or "Status" not in status  # no answer: the association died with the receiver
    assoc.abort()

    site.push([files], retry_for=60)  # the modality resends the series; HAProxy routes it to the survivor
    survivor = next(r for r in site.receivers if r is not victim)
    assert any(e.get("event") == "association.accepted" for e in survivor.events())

    def done() -> list[Any] | None:
        jobs = site.jobs()
        return jobs if len(jobs) == 1 and jobs[0].state == JobState.DONE else None

    (job,) = wait_for(done, 120, f"one job done; hub log:\n{site.hub.log_text()[-2000:]}")
    assert job.instance_count == 6  # the three acknowledged by the dead receiver and the three resent: one job
    total = 6 + 1
    storescp.wait_for(total)
    wait_for(lambda: orthanc.count_instances() >= total, 60, "the derived series in Orthanc")
    assert orthanc.count_instances() == total
    assert _received_stores(storescp) == total
