"""A sequence item longer than its sequence (issue 15, defect 8): refused with 0xC210 and the reason, over a real
association (pynetdicom as the modality, sending the bytes verbatim) to the SCP on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from structlog.testing import capture_logs

from bench.drills.badinput import associate, body_of, fresh_instance, store_raw, with_item_overrun
from dicom_utils.nesting import nesting_problem
from gateway.receive.scp import Receiver
from gateway.settings import parse
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.8.1", "1.2.826.0.1.3680043.8.498.8.2"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    settings = parse({"gateway": {"host": "127.0.0.1", "port": 0, "var_dir": str(tmp_path / "var"), "min_free_mb": 0},
                      "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}]},
                     environ={})
    settings.var_dir.mkdir()
    scp = Receiver(settings, State(settings.state_db), LocalSpool(settings.spool_dir))
    scp.start()
    yield scp
    scp.stop(grace=1.0)
    scp.state.close()


def _send(receiver: Receiver, overrun: int, name: str, scratch: Path) -> tuple[int | None, pydicom.Dataset]:
    ds = fresh_instance(name, STUDY, SERIES)
    meta = ds.file_meta
    assoc = associate(receiver.port, [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])])
    assert assoc.is_established
    try:
        return store_raw(assoc, meta, with_item_overrun(body_of(ds), overrun), scratch), ds
    finally:
        assoc.release()


def test_an_item_longer_than_its_sequence_is_refused_with_the_reason(receiver: Receiver, tmp_path: Path) -> None:
    with capture_logs() as logs:
        status, ds = _send(receiver, 20, "overrun", tmp_path)
    assert status == 0xC210
    (refused,) = [e for e in logs if e["event"] == "store.refused"]
    assert "item 1 of sequence (0008,1140) declares 54 bytes but the sequence has only 34 left" in refused["reason"]
    assert receiver.state.instance_purged(str(ds.SOPInstanceUID)) is None


def test_the_same_sequence_well_formed_is_stored(receiver: Receiver, tmp_path: Path) -> None:
    status, ds = _send(receiver, 0, "well-formed", tmp_path)
    assert status == 0x0000
    assert receiver.state.instance_purged(str(ds.SOPInstanceUID)) is not None


def test_an_element_longer_than_its_item_is_named_and_real_files_pass() -> None:
    ds = fresh_instance("element", STUDY, SERIES)
    body = bytearray(with_item_overrun(body_of(ds), 0))
    at = body.index(b"\x08\x00\x50\x11UI")  # the item's Referenced SOP Class UID: claim 8 bytes more
    body[at + 6] += 8
    assert "element (0008,1150) declares 34 bytes but its item 1 of (0008,1140) has only 26 left" in (
        nesting_problem(bytes(body), implicit_vr=False) or "")
    for name in ("693_UNCR.dcm", "rtplan.dcm", "emri_small_jpeg_2k_lossless.dcm", "MR_small_bigendian.dcm"):
        real = pydicom.dcmread(pydicom.data.get_testdata_file(name))
        syntax = real.file_meta.TransferSyntaxUID
        assert nesting_problem(body_of(real), implicit_vr=syntax.is_implicit_VR,
                               little_endian=syntax.is_little_endian) is None, name


def test_a_specific_character_set_that_is_not_text_is_refused(receiver: Receiver, tmp_path: Path) -> None:
    """The fuzz drill's find: (0008,0005) with VR SS passed the header scan and was stored, unreadable later."""
    ds = fresh_instance("charset", STUDY, SERIES)
    body = bytearray(body_of(ds))
    at = body.index(b"\x08\x00\x05\x00CS")
    body[at + 4 : at + 6] = b"SS"
    meta = ds.file_meta
    assoc = associate(receiver.port, [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])])
    try:
        assert store_raw(assoc, meta, bytes(body), tmp_path) == 0xC210
    finally:
        assoc.release()
    assert receiver.state.instance_purged(str(ds.SOPInstanceUID)) is None
