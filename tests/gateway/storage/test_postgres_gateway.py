"""The whole gateway on PostgreSQL (`[state] url`): the service, its enhancement worker process, the sender and the
admin commands all open the configured store through `gateway.storage.factory`, so a series pushed with dcmtk is
received, enhanced and delivered with every row in PostgreSQL and no SQLite file anywhere under var_dir."""

from __future__ import annotations

import json
from pathlib import Path

from tests.gateway.harness import GatewayProcess, wait_for
from tests.peers import storescu
from tests.realdata import make_series


def test_a_series_goes_through_a_gateway_whose_state_is_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed="pg-gateway")
    archive = tmp_path / "archive"
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": str(archive)}],
                        routes=[{"enhancer": "gaussian"}], state={"url": postgres_url})
    gw.start()
    try:
        storescu(gw.port, files, called_aet="ENHANCE_GW")
        (job,) = gw.wait_jobs({"done"}, 1)
        assert (job.instance_count, job.derived_count, job.enhancer) == (3, 3, "gaussian")
        assert len(wait_for(lambda: list(archive.rglob("*.dcm")) if len(list(archive.rglob("*.dcm"))) == 3 else None,
                            60, "3 derived files in the archive")) == 3
        status = json.loads(gw.cli("status", "--json").stdout)
        assert (status["counts"]["done"], status["instances"]) == (1, 3)
        starting = [e for e in gw.events() if e.get("event") == "gateway.starting"]
        assert starting and starting[0]["state"].startswith("PostgreSQL postgresql://")
    finally:
        gw.stop()
    assert not list(gw.var_dir.rglob("*.db")), "a process opened SQLite instead of the configured PostgreSQL"
