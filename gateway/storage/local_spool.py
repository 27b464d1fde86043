"""The spool in a POSIX folder: keys become paths under `<var_dir>/spool/`, the only place they do.

Layout: `incoming/<study>/<series>/<sop>.dcm` (originals as received), `outgoing/<job>/<sop>.dcm` (derived
objects waiting for delivery), `tmp/<host>.<pid>/` (partial writes of one process). A shared POSIX folder
(NFS, CephFS) serves several nodes as it is: every write is temp file + fsync + rename + fsync of the folder
(`gateway.storage.spool.write_atomic`), so a reader never sees half a file.

Why a temp folder per process: on a shared spool, or with several roles as separate processes on one host, a
process that starts must remove the partial writes of its crashed predecessor but never the file another live
receiver is writing at that moment. `clean_tmp` removes the folders of processes of this host that are gone
(and any folder untouched for a day: a node that never came back), never a live one's.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.errors import OutOfSpaceError, SpoolError
from gateway.storage.lease import dead_here
from gateway.storage.spool import (
    FULL_BELOW_MB,
    Chunks,
    InstanceKey,
    OutputKey,
    SpoolKey,
    check_uid,
    chunks_size,
    ensure_space,
    write_atomic,
)

#: A temp folder of another host untouched this long belongs to a node that never came back.
STALE_TMP_SECONDS = 86400.0


class LocalSpool:
    """A spool in one POSIX folder (local, or shared by NFS/CephFS): keys map to files under `root`."""

    def __init__(self, root: Path, *, min_free_mb: float = 0) -> None:
        self.root = root
        self.min_free_mb = min_free_mb
        self.incoming = root / "incoming"
        self.outgoing = root / "outgoing"
        self.tmp = root / "tmp" / f"{socket.gethostname()}.{os.getpid()}"
        for d in (self.incoming, self.outgoing, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def _path(self, key: SpoolKey) -> Path:
        if isinstance(key, InstanceKey):
            return self.incoming / key.study_uid / key.series_uid / f"{key.sop_uid}.dcm"
        return self._outputs(key.job_id) / f"{key.sop_uid}.dcm"

    def _outputs(self, job_id: int) -> Path:
        return self.outgoing / str(int(job_id))

    def put(self, key: SpoolKey, data: Chunks) -> int:
        """Durably store `data`; refused (OutOfSpaceError) below the watermark, for originals and outputs alike."""
        size = chunks_size(data)
        self.check_space(size)
        # another node's clean_tmp removes a temp folder untouched for a day (its node looks gone): a quiet but
        # live process makes its folder again rather than refusing the next C-STORE
        self.tmp.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(key), data, self.tmp)
        return size

    def open(self, key: SpoolKey) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except OSError as exc:
            raise SpoolError(f"cannot read {key} from the spool under {self.root}: {exc.strerror or exc}") from exc

    def read(self, key: SpoolKey) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: SpoolKey) -> bool:
        return self._path(key).is_file()

    def delete(self, key: SpoolKey) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_outputs(self, job_id: int) -> list[OutputKey]:
        return [OutputKey(int(job_id), p.stem) for p in sorted(self._outputs(job_id).glob("*.dcm"))]

    def clear_outputs(self, job_id: int) -> None:
        shutil.rmtree(self._outputs(job_id), ignore_errors=True)

    def list_incoming(self) -> Iterator[tuple[str, str, list[InstanceKey]]]:
        """Every series folder under incoming/; a file or folder whose name is not a UID is not the gateway's
        (it never writes one) and is left alone."""
        for study in sorted(self.incoming.iterdir()):
            if not study.is_dir() or not _is_uid(study.name):
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir() and _is_uid(series.name):
                    keys = [InstanceKey(study.name, series.name, f.stem)
                            for f in sorted(series.glob("*.dcm")) if _is_uid(f.stem)]
                    yield study.name, series.name, keys

    def local_path(self, key: SpoolKey) -> Path | None:
        return self._path(key)

    def clean_tmp(self) -> int:
        """Remove partial writes left by crashed processes (never acknowledged); the count of files removed."""
        removed = 0
        top = self.tmp.parent
        for part in top.glob("*.part"):  # the layout before per-process folders
            part.unlink(missing_ok=True)
            removed += 1
        for folder in top.iterdir():
            if folder == self.tmp or not folder.is_dir():
                continue
            host, _, pid = folder.name.rpartition(".")
            gone = dead_here(f"{host}:{pid}:-")
            try:
                stale = time.time() - folder.stat().st_mtime > STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            if gone or stale:
                removed += sum(1 for _ in folder.glob("*.part"))
                shutil.rmtree(folder, ignore_errors=True)
        return removed

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1e6

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise OutOfSpaceError when the write would leave less than the watermark free."""
        ensure_space(self.root, incoming_bytes, self.min_free_mb)

    def check_health(self) -> None:
        """Raise OutOfSpaceError, saying how much is free, when the spool's disk is below the watermark or full.

        Why not `check_space`: with the watermark off (`min_free_mb = 0`) a full disk must still be reported;
        an admin who turned refusals off did not ask to be told `ok` at 0 MB free.
        """
        free = self.free_mb()
        if self.min_free_mb >= FULL_BELOW_MB and free < self.min_free_mb:
            raise OutOfSpaceError(
                f"less than {self.min_free_mb:g} MB free under {self.root} ({free:.1f} MB free); free space or"
                " lower gateway.min_free_mb"
            )
        if free < FULL_BELOW_MB:
            raise OutOfSpaceError(
                f"{free:.1f} MB free under {self.root}: the file system is full; free space"
                f" (gateway.min_free_mb = {self.min_free_mb:g} turns the watermark off, not this check)"
            )


def _is_uid(name: str) -> bool:
    try:
        check_uid(name)
    except SpoolError:
        return False
    return True
