"""The spool contract, run against every implementation: files addressed by key, never by a caller's path."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import OutOfSpaceError, SpoolError
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey, OutputKey, Spool

STUDY, SERIES = "1.2.840.1", "1.2.840.1.2"


@pytest.fixture(params=["local"])
def open_spool(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Spool]:
    if request.param == "local":
        return lambda min_free_mb=0: LocalSpool(tmp_path / "spool", min_free_mb=min_free_mb)
    raise AssertionError(f"no spool implementation {request.param!r}")


def test_originals_and_outputs_round_trip_by_key(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    a, b = InstanceKey(STUDY, SERIES, "1.2.840.1.2.1"), InstanceKey(STUDY, SERIES, "1.2.840.1.2.2")
    assert not spool.exists(a)
    assert spool.put(a, (b"meta", b"+body")) == 9  # chunks are written in turn
    spool.put(b, b"second")
    assert spool.read(a) == b"meta+body" and spool.exists(a)
    with spool.open(b) as fh:
        assert fh.read() == b"second"
    assert list(spool.list_incoming()) == [(STUDY, SERIES, [a, b])]
    out = [OutputKey(7, "1.2.9.2"), OutputKey(7, "1.2.9.1")]
    for key in out:
        spool.put(key, key.sop_uid.encode())
    spool.put(OutputKey(8, "1.2.9.3"), b"other job")
    assert spool.list_outputs(7) == sorted(out, key=lambda k: k.sop_uid)
    spool.clear_outputs(7)
    assert spool.list_outputs(7) == [] and spool.list_outputs(8) == [OutputKey(8, "1.2.9.3")]
    spool.delete(a)
    spool.delete(a)  # a missing key is not an error
    assert not spool.exists(a) and spool.exists(b)
    with pytest.raises(SpoolError):
        spool.read(a)


def test_a_key_is_made_of_uids_only() -> None:
    for bad in ("../etc", "1.2/3", "", "1" * 65, ".1.2"):
        with pytest.raises(SpoolError, match="not a valid DICOM UID"):
            InstanceKey(STUDY, SERIES, bad)
        with pytest.raises(SpoolError):
            OutputKey(1, bad)


def test_a_local_spool_hands_out_paths_only_for_streaming_and_cleans_partial_writes(tmp_path: Path) -> None:
    spool = LocalSpool(tmp_path / "spool")
    key = InstanceKey(STUDY, SERIES, "1.2.840.1.2.1")
    spool.put(key, b"x")
    path = spool.local_path(key)
    assert path is not None and path.read_bytes() == b"x" and path.is_relative_to(tmp_path / "spool")
    assert not list(spool.tmp.iterdir())  # the temp file was renamed into place
    (tmp_path / "spool" / "tmp" / "crash.part").write_bytes(b"half")  # the layout before per-process folders
    assert spool.clean_tmp() == 1


def test_clean_tmp_removes_dead_processes_partial_writes_never_a_live_ones(tmp_path: Path) -> None:
    """A shared spool: starting one process must not delete the file another live process is writing."""
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "spool"
        for pid in (gone.pid, live.pid):
            (root / "tmp" / f"{host}.{pid}").mkdir(parents=True)
            (root / "tmp" / f"{host}.{pid}" / "x.part").write_bytes(b"half")
        (root / "tmp" / "other-node.123").mkdir()  # another host, recently active: its lease rules, not ours
        (root / "tmp" / "other-node.123" / "y.part").write_bytes(b"half")
        spool = LocalSpool(root)
        assert spool.clean_tmp() == 1
        assert not (root / "tmp" / f"{host}.{gone.pid}").exists()
        assert (root / "tmp" / f"{host}.{live.pid}" / "x.part").exists()
        assert (root / "tmp" / "other-node.123" / "y.part").exists()
        shutil.rmtree(spool.tmp)  # what another node's clean_tmp does to a folder untouched for a day
        spool.put(InstanceKey(STUDY, SERIES, "1.2.840.1.2.9"), b"x")  # a quiet live process still stores
        assert spool.read(InstanceKey(STUDY, SERIES, "1.2.840.1.2.9")) == b"x"
    finally:
        live.kill()
        live.wait()


def test_put_refuses_below_the_watermark(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(min_free_mb=1e12)  # more than any disk has free
    key = InstanceKey(STUDY, SERIES, "1.2.840.1.2.1")
    with pytest.raises(OutOfSpaceError, match="min_free_mb"):
        spool.put(key, b"x")
    assert not spool.exists(key)
