"""The spool seam: stored DICOM files addressed by key, never by path, plus the durable-write rules.

Why keys: a site that outgrows one machine shares its spool (NFS/CephFS today, object storage later), and a
path stored in a row or built by a caller is true on one machine only. Originals are keyed by their (study,
series, SOP) UIDs, derived objects by (job, SOP); `LocalSpool` (a POSIX folder) is the implementation today.
Only `gateway.storage` turns a key into a location; callers `put`, `open`, `exists`, `delete` and
`list_outputs`, and the streaming sender, which sends files by path, asks `local_path` (None where the spool
has no local files).

Durability: a C-STORE is acknowledged only once `put` returned, and `put` returns only once the bytes are
durable: temp file + fsync + atomic rename + fsync of the directory (`write_atomic`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.errors import OutOfSpaceError, SpoolError

_UID_RE = re.compile(r"^[0-9.]{1,64}$")


def check_uid(uid: str) -> str:
    """UIDs become parts of a key (a folder, an object name): anything that is not a UID is refused."""
    if not _UID_RE.match(uid) or uid.startswith(".") or ".." in uid:
        raise SpoolError(f"{uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return uid


@dataclass(frozen=True)
class InstanceKey:
    """An original as received: valid UIDs by construction (SpoolError otherwise)."""

    study_uid: str
    series_uid: str
    sop_uid: str

    def __post_init__(self) -> None:
        for uid in (self.study_uid, self.series_uid, self.sop_uid):
            check_uid(uid)


@dataclass(frozen=True)
class OutputKey:
    """A derived object (or report) of a job, waiting for delivery."""

    job_id: int
    sop_uid: str

    def __post_init__(self) -> None:
        check_uid(self.sop_uid)


SpoolKey = InstanceKey | OutputKey

#: What a durable write takes: one buffer, or several written one after the other (File Meta + data set), so
#: that a caller never joins them into a second in-memory copy of an instance.
Chunks = bytes | bytearray | memoryview | tuple[bytes | bytearray | memoryview, ...]


class Spool(Protocol):
    """Stored files by key. Every `put` is durable when it returns; reads of a missing key raise SpoolError."""

    min_free_mb: float

    def put(self, key: SpoolKey, data: Chunks) -> int:
        """Store `data` durably under `key` (replacing it); returns the bytes written. OutOfSpaceError below the
        watermark or on a full disk: callers wait for space instead of failing work."""
        ...

    def open(self, key: SpoolKey) -> BinaryIO: ...
    def read(self, key: SpoolKey) -> bytes: ...
    def exists(self, key: SpoolKey) -> bool: ...
    def delete(self, key: SpoolKey) -> None:
        """Remove the file under `key`; a missing one is not an error."""
        ...

    def list_outputs(self, job_id: int) -> list[OutputKey]:
        """The derived objects stored for a job, by SOP Instance UID."""
        ...

    def clear_outputs(self, job_id: int) -> None: ...
    def list_incoming(self) -> Iterator[tuple[str, str, list[InstanceKey]]]:
        """(study UID, series UID, its originals) for every series stored (what reconciliation walks)."""
        ...

    def local_path(self, key: SpoolKey) -> Path | None:
        """Where the file of `key` lies on this machine (the streaming sender sends by path), or None."""
        ...

    def clean_tmp(self) -> int: ...
    def free_mb(self) -> float: ...
    def check_space(self, incoming_bytes: int = 0) -> None: ...
    def check_health(self) -> None: ...


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
