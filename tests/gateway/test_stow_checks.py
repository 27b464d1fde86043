"""STOW-RS takes the SCP's checks, all of them: what a C-STORE refuses, a STOW-RS part must not get stored."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom

from bench.drills.badinput import body_of, fresh_instance, with_item_overrun
from gateway.dicomweb import InstanceSink
from gateway.scp import CANNOT_UNDERSTAND
from gateway.spool import Spool
from gateway.state import State

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.8.1", "1.2.826.0.1.3680043.8.498.8.2"


def _part10(ds: pydicom.Dataset, body: bytes) -> bytes:
    """A Part 10 file: preamble, File Meta of `ds`, then `body` verbatim."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    whole = out.getvalue()
    return whole[: len(whole) - len(body_of(ds))] + body


def test_a_part_with_an_item_longer_than_its_sequence_is_refused(tmp_path: Path) -> None:
    """Issue 15, defect 8: the SCP refuses this with 0xC210; STOW-RS stored it (pydicom clips the item)."""
    state = State(tmp_path / "state.db")
    sink = InstanceSink(state, Spool(tmp_path / "spool"))
    ds = fresh_instance("stow-overrun", STUDY, SERIES)
    try:
        outcome = sink.accept(_part10(ds, with_item_overrun(body_of(ds), 20)), None, "token")
        assert outcome.status == CANNOT_UNDERSTAND, outcome
        assert "malformed sequence" in outcome.reason
        assert state.instance_purged(str(ds.SOPInstanceUID)) is None  # never recorded
        well_formed = fresh_instance("stow-well-formed", STUDY, SERIES)
        assert sink.accept(_part10(well_formed, with_item_overrun(body_of(well_formed), 0)), None, "token").status == 0
    finally:
        state.close()
