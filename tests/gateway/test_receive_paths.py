"""The receiver's two C-STORE paths store the same bytes: the fast path (gateway.dimse.fast.pdata) and pynetdicom's
EVT_C_STORE, which serves when the fast path is off (`compat.FAST_PATH` false: another pynetdicom version, or an
association whose acceptance took too long). dcmtk storescu is the peer; with the fast path off for the whole
process, the gateway's own sender (stock `send_c_store`) is the peer of the stock receiver too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.dimse.fast import netopts, pdata
from gateway.dimse.scu import Peer, send_files
from gateway.receive.scp import Receiver
from gateway.settings import Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State
from tests.peers import storescu
from tests.realdata import make_series


@contextmanager
def _receiver(var_dir: Path, *, fast: bool) -> Iterator[Receiver]:
    settings = Settings(host="127.0.0.1", port=0, var_dir=var_dir, min_free_mb=0)
    state = State(settings.state_db)
    receiver = Receiver(settings, state, LocalSpool(settings.spool_dir))
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


def test_with_the_fast_path_off_stock_pynetdicom_sends_and_stores_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What compat promises when it turns the fast path off: admission, then stock associations both ways."""
    files = make_series("693_UNCR.dcm", 3, tmp_path / "in", seed="off")
    with _receiver(tmp_path / "fast", fast=True) as receiver:
        storescu(receiver.port, files, called_aet="ENHANCE_GW")
    upgraded: list[bool] = []
    real_upgrade = netopts.upgrade

    def spy(assoc: object) -> bool:
        upgraded.append(real_upgrade(assoc))  # type: ignore[arg-type]
        return upgraded[-1]

    monkeypatch.setattr(netopts, "FAST_PATH", False)
    monkeypatch.setattr(netopts, "upgrade", spy)
    with _receiver(tmp_path / "off", fast=True) as receiver:
        result = send_files(Peer("ENHANCE_GW", "127.0.0.1", receiver.port, "OFF_SCU"), files)
    assert result.sent == 3
    assert upgraded and not any(upgraded)  # the SCU's and the SCP's associations stayed stock
    fast_files = _spooled(tmp_path / "fast")
    assert len(fast_files) == 3
    assert _spooled(tmp_path / "off") == fast_files
