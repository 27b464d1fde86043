"""The scale-out test servers themselves: a real PostgreSQL that survives kill -9, HAProxy spreading DICOM."""

from __future__ import annotations

from pathlib import Path

from tests.peers import StoreSCP, storescu
from tests.realdata import make_series
from tests.servers import HAProxy, PostgresServer


def test_postgres_starts_creates_databases_and_keeps_committed_rows_across_kill_9() -> None:
    with PostgresServer() as pg:
        url = pg.create_database("contract")
        assert url.endswith("/contract")
        pg.sql("CREATE TABLE t (x int)", "contract")
        pg.sql("INSERT INTO t VALUES (1), (2)", "contract")
        pg.kill()  # crash: what was committed must come back after recovery
        pg.start()
        assert pg.sql("SELECT sum(x) FROM t", "contract") == "3"


def test_haproxy_spreads_associations_over_receivers_and_skips_a_stopped_one(tmp_path: Path) -> None:
    files = make_series("CT_small.dcm", 4, tmp_path / "in", seed="haproxy")
    with StoreSCP(tmp_path / "a") as a, StoreSCP(tmp_path / "b") as b:
        proxy = HAProxy([a.port, b.port], tmp_path).start()
        try:
            for f in files:  # one association per file: round robin alternates the receivers
                storescu(proxy.port, [f], called_aet="STORESCP")
            assert len(a.wait_for(2)) == 2 and len(b.wait_for(2)) == 2
            b.stop()
            more = make_series("CT_small.dcm", 2, tmp_path / "more", seed="haproxy-2")
            for f in more:  # the health check takes b out; redispatch covers the first attempts
                storescu(proxy.port, [f], called_aet="STORESCP")
            assert len(a.wait_for(4)) == 4
        finally:
            proxy.stop()
