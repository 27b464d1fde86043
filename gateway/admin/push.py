"""`enhance-gateway push`: send files and folders to a DICOM node, as dcmtk's storescu would, and say what was
not sent.

Why its own rules: an admin pushes whatever a CD, a modality export or another archive left on disk. Many of
those files have no 128-byte preamble, or no File Meta at all (raw data sets, as older modalities wrote them);
storescu sends them, so push does too: such a file is read with pydicom's `force=True` and, when it parses
as an instance (SOP Class and Instance UIDs present), sent from a Part 10 copy in a temporary folder. Anything
else is skipped with its reason; a refused or unreadable file never stops the others, and the caller learns
from `PushReport.complete` whether every file was stored.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dimse.scu import Peer, store_each

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index of a medium, not an instance to store


@dataclass(frozen=True)
class NotSent:
    path: Path
    reason: str


@dataclass
class PushReport:
    """What `push` did: files stored, files skipped before sending (not DICOM), files the peer did not store."""

    sent: list[Path] = field(default_factory=list)
    repaired: list[Path] = field(default_factory=list)  # sent from a Part 10 copy (no preamble, no File Meta)
    skipped: list[NotSent] = field(default_factory=list)
    failed: list[NotSent] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every file found was stored (what the exit code says)."""
        return not self.skipped and not self.failed


def _files(paths: Sequence[Path], report: PushReport) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(x for x in p.rglob("*") if x.is_file())
        elif p.is_file():
            yield p
        else:
            report.skipped.append(NotSent(p, "no such file or folder"))


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_part10(path: Path) -> str | None:
    """Why a file with the preamble cannot be sent as it is (None when it can)."""
    try:
        meta = read_file_meta_info(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for a damaged header; report it
        return f"damaged File Meta: {exc}"
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if not _UID.match(sop_class) or not _UID.match(str(meta.get("TransferSyntaxUID", "") or "")):
        return "File Meta lacks the SOP class or transfer syntax UID"
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return "a DICOMDIR (the index of a medium, not an instance)"
    return None


def _part10_copy(path: Path, out: Path) -> str | None:
    """Write a Part 10 copy of a file without preamble or File Meta to `out`; why not, when it is no instance."""
    try:
        ds = pydicom.dcmread(path, force=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    except Exception as exc:  # noqa: BLE001 - force=True on a non-DICOM file fails in many ways; all mean "skip"
        return f"not DICOM: no File Meta, and it does not parse as a data set ({type(exc).__name__})"
    if not _UID.match(sop_class) or not _UID.match(sop_uid):
        return "not DICOM: no File Meta, and no SOP Class/Instance UID in it"
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return "a DICOMDIR (the index of a medium, not an instance)"
    meta = FileMetaDataset(getattr(ds, "file_meta", None) or FileMetaDataset())
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta = meta
    try:
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - an element pydicom cannot encode again: skip this file, say why
        return f"no File Meta, and it cannot be rewritten as a Part 10 file: {exc}"
    return None


def push(peer: Peer, paths: Sequence[Path], *, timeout: float = 60.0) -> PushReport:
    """Send every file under `paths` to `peer` on one association; report each file that was not stored.

    Raises DeliveryError (from `store_each`) only when the peer cannot be reached at all.
    """
    report = PushReport()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="enhance-gw-push-") as tmp:
        to_send: list[tuple[Path, Path]] = []  # (the file named, the file sent)
        for i, path in enumerate(_files(paths, report)):
            sent_from = path
            problem = _check_part10(path) if _has_preamble(path) else "no preamble"
            if problem is not None:  # no preamble, or a File Meta without UIDs: what the data set itself says
                sent_from = Path(tmp) / f"{i:07d}.dcm"
                retried = _part10_copy(path, sent_from)
                if retried is None:
                    report.repaired.append(path)
                problem = retried if retried is None or problem == "no preamble" else problem
            if problem is None:
                to_send.append((path, sent_from))
            else:
                report.skipped.append(NotSent(path, problem))
        named = {sent_from: path for path, sent_from in to_send}
        for outcome in store_each(peer, [s for _, s in to_send], timeout=timeout) if to_send else []:
            original = named[outcome.path]
            if outcome.ok:
                report.sent.append(original)
                report.bytes += outcome.path.stat().st_size
            else:
                report.failed.append(NotSent(original, outcome.problem))
    report.seconds = time.monotonic() - started
    return report
