"""A bare SCP with the gateway's C-STORE fast path and a test's own store sink, for the pdata/store_scu tests.

Why not the whole gateway: these tests need to choose each status the SCP answers (or withhold it), which
the real receiver never does on purpose; the network layer under test is the same `netopts.TunedAE`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.dimse.fast import compat, netopts
from gateway.dimse.fast.pdata import StoreSink


@contextmanager
def fast_scp(
    sink: StoreSink, *, ae_title: str, syntaxes: Sequence[str] = (ExplicitVRLittleEndian,), max_pdu: int = 0
) -> Iterator[int]:
    """Serve CT Image Storage (and Verification) on a free loopback port; yields the port."""
    if not compat.FAST_PATH:  # inside the pinned range the fast path must work: fail; outside, pip refuses anyway
        (pytest.fail if compat.IN_TESTED_RANGE else pytest.skip)(f"the fast path is off: {compat.REASON}")
    ae = netopts.TunedAE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.add_supported_context(CTImageStorage, list(syntaxes))
    ae.add_supported_context(Verification)
    ae.store_sink = sink
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
