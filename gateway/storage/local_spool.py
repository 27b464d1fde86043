"""The spool: the only code that touches stored files (paths out, bytes in).

Why: a C-STORE is acknowledged only once its bytes are durable, so every write here is temp file + fsync +
atomic rename + fsync of the directory. Sites that move the spool to S3-compatible storage swap this module.

Layout under `<var_dir>/spool/`: `incoming/<study>/<series>/<sop>.dcm` (originals as received),
`outgoing/<job>/<sop>.dcm` (derived objects waiting for delivery), `tmp/` (partial writes, cleaned at start).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import OutOfSpaceError, SpoolError

_UID_RE = re.compile(r"^[0-9.]{1,64}$")


def _safe(uid: str) -> str:
    """UIDs become path components; anything that is not a UID must never escape the spool."""
    if not _UID_RE.match(uid) or uid.startswith(".") or ".." in uid:
        raise SpoolError(f"{uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return uid


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Below this much free space a file system is full for the gateway whatever the watermark: not one more CT
#: slice (~0.5 MB) fits. `/healthz` reports it even when `min_free_mb = 0` turns the watermark off.
FULL_BELOW_MB = 1.0


def ensure_space(path: Path, incoming_bytes: int, min_free_mb: float) -> None:
    """Raise OutOfSpaceError when writing `incoming_bytes` under `path` would leave less than `min_free_mb` free.

    Why one function for every write path (received originals, derived files, reports, folder deliveries):
    the watermark exists so that the disk never fills, and any writer that skips it fills it for the others
    (reception included). `min_free_mb = 0` turns it off; a real ENOSPC is then reported as OutOfSpaceError too.
    """
    if not min_free_mb:
        return
    free_mb = shutil.disk_usage(path).free / 1e6
    if free_mb - incoming_bytes / 1e6 < min_free_mb:
        raise OutOfSpaceError(
            f"less than {min_free_mb:g} MB would stay free under {path} ({free_mb:.1f} MB free); free space"
            " or lower gateway.min_free_mb"
        )


#: What a durable write takes: one buffer, or several written one after the other (File Meta + data set), so
#: that a caller never joins them into a second in-memory copy of an instance.
Chunks = bytes | bytearray | memoryview | tuple[bytes | bytearray | memoryview, ...]


def chunks_size(data: Chunks) -> int:
    """The bytes `write_atomic` will write for `data`."""
    return sum(len(part) for part in data) if isinstance(data, tuple) else len(data)


def write_atomic(final: Path, data: Chunks, tmp_dir: Path) -> None:
    """Write `data` to `final` durably: temp file in `tmp_dir` (same filesystem), fsync, rename, fsync dir.

    A full disk (ENOSPC, EDQUOT) raises OutOfSpaceError, so callers wait for space instead of failing work.
    """
    tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.writelines(data if isinstance(data, tuple) else (data,))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpaceError(f"could not write {final}: {exc.strerror or exc}; free space") from exc
        raise SpoolError(f"could not write {final}: {exc.strerror or exc}") from exc


class Spool:
    """Paths and durable writes under one root."""

    def __init__(self, root: Path, *, min_free_mb: float = 0) -> None:
        self.root = root
        self.min_free_mb = min_free_mb
        self.incoming = root / "incoming"
        self.outgoing = root / "outgoing"
        self.tmp = root / "tmp"
        for d in (self.incoming, self.outgoing, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def clean_tmp(self) -> int:
        """Remove partial writes left by a crash; they were never acknowledged."""
        removed = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            removed += 1
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

    def incoming_series(self) -> Iterator[tuple[str, str, list[Path]]]:
        """(study UID, series UID, its .dcm files) for every series folder under incoming/."""
        for study in sorted(self.incoming.iterdir()):
            if not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield study.name, series.name, sorted(series.glob("*.dcm"))

    def incoming_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.incoming / _safe(study_uid) / _safe(series_uid) / f"{_safe(sop_uid)}.dcm"

    def store_incoming(self, study_uid: str, series_uid: str, sop_uid: str, data: Chunks) -> Path:
        """Durably store a received instance (a complete DICOM file, preamble and meta included)."""
        self.check_space(chunks_size(data))
        path = self.incoming_path(study_uid, series_uid, sop_uid)
        write_atomic(path, data, self.tmp)
        return path

    def outgoing_dir(self, job_id: int) -> Path:
        return self.outgoing / str(int(job_id))

    def store_outgoing(self, job_id: int, sop_uid: str, data: bytes) -> Path:
        """Durably store a derived object; refused (OutOfSpaceError) below the watermark like reception."""
        self.check_space(len(data))
        path = self.outgoing_dir(job_id) / f"{_safe(sop_uid)}.dcm"
        write_atomic(path, data, self.tmp)
        return path

    def outgoing_files(self, job_id: int) -> list[Path]:
        return sorted(self.outgoing_dir(job_id).glob("*.dcm"))

    def clear_outgoing(self, job_id: int) -> None:
        shutil.rmtree(self.outgoing_dir(job_id), ignore_errors=True)

    def read(self, path: str | Path) -> bytes:
        return Path(path).read_bytes()
