"""Reception on the PostgreSQL store while the server crashes: dcmtk storescu gets 0xA700 (out of resources, so a
modality keeps the instance and sends it again) for as long as PostgreSQL is down, never a success for an
instance without its row; what was acknowledged before the crash is still recorded after it. The refusal is
logged as one `store.failed` line naming the unavailable database, not as an internal error with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.receive.scp import Receiver
from gateway.settings import Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.postgres_state import PostgresState
from tests.peers import storescu
from tests.realdata import make_series
from tests.servers import PostgresServer


def test_a_receiver_refuses_with_a700_while_postgresql_is_down_and_loses_nothing_acknowledged(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    before = make_series("693_UNCR.dcm", 3, tmp_path / "before", seed="pg-before")
    during = make_series("693_UNCR.dcm", 2, tmp_path / "during", seed="pg-during")
    settings = Settings(host="127.0.0.1", port=0, var_dir=tmp_path / "var", min_free_mb=0)
    state = PostgresState(postgres_url, timeout=2.0)
    receiver = Receiver(settings, state, LocalSpool(settings.spool_dir))
    receiver.start()
    try:
        storescu(receiver.port, before, called_aet="ENHANCE_GW")
        assert state.instance_count() == 3
        postgres_server.kill()
        try:
            refused = storescu(receiver.port, during, called_aet="ENHANCE_GW", check=False)
        finally:
            postgres_server.start()
        assert "Refused: OutOfResources" in refused.stdout + refused.stderr  # dcmtk names 0xA700 so
        logged = capsys.readouterr().out
        assert "store.failed" in logged and "is unavailable" in logged and "store.internal_error" not in logged
        assert state.instance_count() == 3  # the acknowledged three survived the crash; nothing else was recorded
        storescu(receiver.port, during, called_aet="ENHANCE_GW")  # the modality's retry, once the server is back
        assert state.instance_count() == 5
    finally:
        receiver.stop()
        state.close()
