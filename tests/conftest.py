"""Shared fixtures: real DICOM peers (Orthanc, dcmtk storescp) and real-image series, per test.

Why function scope: each test gets an empty PACS and an empty destination, so a test can assert exact
counts and never depends on what another test stored. Orthanc starts in well under a second and is
killed (not gracefully stopped) at teardown, so this costs little. A missing peer binary makes the fixture
raise PeerMissingError: the test fails, it is never skipped.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `import tests.peers`, `import gateway` from any working directory
    sys.path.insert(0, str(REPO_ROOT))

from tests.peers import Orthanc, StoreSCP
from tests.realdata import make_series


@pytest.fixture(scope="session", autouse=True)
def pynetdicom_process_settings() -> None:
    """pynetdicom's process-wide flags as every gateway process sets them at start, for tests that build a
    Receiver or call the SCU in-process (gateway.dimse.fast.compat.configure_process)."""
    from gateway.dimse.fast.compat import configure_process

    configure_process()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A started, empty Orthanc (AET "ORTHANC") on free loopback ports; killed after the test.

    Its storage and log live under tmp_path, so a failing test leaves `orthanc.log` to read. Register the
    gateway with `orthanc.add_modality("GATEWAY", aet, "127.0.0.1", port)` when Orthanc must send to it.
    """
    with Orthanc(tmp_path / "orthanc") as pacs:
        yield pacs


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start more Orthancs (e.g. two destinations): `orthanc_factory(aet="PACS2", modalities={...})`."""
    started: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        pacs = Orthanc(tmp_path / f"orthanc-{len(started) + 1}", **kwargs)
        started.append(pacs)
        return pacs.start()

    yield make
    for pacs in started:
        pacs.kill()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A started dcmtk storescp (AET "STORESCP") writing into tmp_path/storescp; stopped after the test."""
    with StoreSCP(tmp_path / "storescp", aet="STORESCP") as scp:
        yield scp


@pytest.fixture
def tmp_series(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., list[Path]]:
    """Build real-image series in tmp_path: `tmp_series("693_UNCR.dcm", 3, transfer_syntax=None)`.

    UIDs are seeded from the test's node id and a counter, so they are stable across runs of one test and
    different between tests and between the series of one test.
    """
    made = 0
    base_seed = re.sub(r"\W+", "_", request.node.nodeid)

    def build(source: str = "693_UNCR.dcm", count: int = 3, **kwargs: Any) -> list[Path]:
        nonlocal made
        made += 1
        kwargs.setdefault("seed", f"{base_seed}-{made}")
        return make_series(source, count, tmp_path / f"series-{made}", **kwargs)

    return build


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL cluster for the whole session (initdb costs seconds; a database costs little).

    In its own /tmp folder, not pytest's tmp_path: the `postgres` user cannot enter root's 0700 pytest folders.
    Tests that stop or kill it (`pg.kill()`) must `start()` it again before they end.
    """
    from tests.servers import PostgresServer

    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's cluster: its URL (one per test, never shared)."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    name = "t_" + re.sub(r"\W+", "_", request.node.name).lower()[-40:] + "_" + digest
    return str(postgres_server.create_database(name))
