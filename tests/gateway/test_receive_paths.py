"""The receiver's two C-STORE paths store the same bytes: the fast path (gateway.dimse.fast.pdata) and pynetdicom's
EVT_C_STORE, which serves when the fast path is off (another pynetdicom version, or an association whose
acceptance took too long). dcmtk storescu is the peer for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.dimse.fast import pdata
from gateway.receive.scp import Receiver
from gateway.settings import Settings
from gateway.storage.spool import Spool
from gateway.storage.state import State
from tests.peers import storescu
from tests.realdata import make_series


@contextmanager
def _receiver(var_dir: Path, *, fast: bool) -> Iterator[Receiver]:
    settings = Settings(host="127.0.0.1", port=0, var_dir=var_dir, min_free_mb=0)
    state = State(settings.state_db)
    receiver = Receiver(settings, state, Spool(settings.spool_dir))
    if not fast:
        receiver.ae.store_sink = None  # pynetdicom's EVT_C_STORE handler takes every store
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
        state.close()


def _spooled(var_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (var_dir / "spool" / "incoming").rglob("*.dcm")}


def test_both_paths_store_identical_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed="paths")
    routed: list[int] = []
    real = pdata.PDataRouter._store

    def spy(self: pdata.PDataRouter, *args: object) -> None:
        routed.append(1)
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pdata.PDataRouter, "_store", spy)
    for fast in (True, False):
        with _receiver(tmp_path / ("fast" if fast else "stock"), fast=fast) as receiver:
            storescu(receiver.port, files, called_aet="ENHANCE_GW")
    assert len(routed) == 3  # the fast receiver took all three, the stock one none
    fast_files, stock_files = _spooled(tmp_path / "fast"), _spooled(tmp_path / "stock")
    assert len(fast_files) == 3
    assert fast_files == stock_files
