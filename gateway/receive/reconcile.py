"""After an unclean stop: spool originals that the state store lacks are recorded again from their headers.

Why this exists: `State.record_instance` commits without syncing the WAL (the spool file, made durable before
the C-STORE is acknowledged, is the record; the row is its index), so a power loss can drop the last rows of
instances that were acknowledged. Their files are complete (temp file, fsync, rename, fsync of the folder),
so they are read back here and recorded; completion then makes their series jobs as usual. A process crash
(kill -9, OOM killer) loses no committed row, but one that lands between the spool file's rename and its row
insert leaves a complete file without a row (that instance was never acknowledged, so the modality sends it
again too): this pass records it, and a re-sent copy is then a duplicate. Usually a crash finds nothing here
and costs one pass over the spool's folder names.

Whether the last stop was clean is told by a marker file (`RunMarker`) that exists, durably, exactly while a
gateway runs on this var_dir.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from gateway import logs
from gateway.storage.spool import Spool, fsync_dir
from gateway.storage.state import StateStore

log = logs.get("gateway.reconcile")


@dataclass
class Reconciled:
    """What one pass found: files recorded again, files that could not be read (left in place, logged)."""

    recorded: int = 0
    unreadable: int = 0


def reconcile(spool: Spool, state: StateStore) -> Reconciled:
    """Record every incoming spool file whose SOP Instance UID the state store does not know."""
    out = Reconciled()
    for study_uid, series_uid, keys in spool.list_incoming():
        known = state.recorded_sop_uids(series_uid)
        for key in keys:
            if key.sop_uid in known:
                continue
            try:
                with spool.open(key) as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True)
                    size = fh.seek(0, os.SEEK_END)
                recorded = state.record_instance(
                    sop_uid=str(ds.SOPInstanceUID),
                    series_uid=str(ds.SeriesInstanceUID),
                    study_uid=str(ds.StudyInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    modality=str(ds.get("Modality", "") or ""),
                    size=size,
                    calling_aet="",  # not in the file; the association that brought it is gone
                )
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the start
                out.unreadable += 1
                log.error("reconcile.unreadable", study_uid=study_uid, series_uid=series_uid,
                          sop_instance_uid=key.sop_uid, error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            if recorded:
                out.recorded += 1
                log.warning("reconcile.recorded", study_uid=study_uid, series_uid=series_uid, sop_instance_uid=key.sop_uid)
    return out


class RunMarker:
    """A file under var_dir that exists while a gateway runs; found at start, it means the last stop was not clean.

    Created durably (fsync of its folder) before the first association is accepted, so a power loss can
    never hide an unclean stop; removed only after the state store is closed.
    """

    def __init__(self, var_dir: Path) -> None:
        self.path = var_dir / "gateway.running"

    def begin(self) -> bool:
        """Create the marker; True when it was already there (the previous run did not stop cleanly)."""
        unclean = self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)
        return unclean

    def end(self) -> None:
        """Remove the marker after a clean stop (a marker that could not be removed only costs a reconciliation)."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)
