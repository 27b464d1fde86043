"""The gateway's error hierarchy: one base class so the CLI can print a clean message and exit non-zero.

Why: an admin reading a message at 3 a.m. needs what was wrong and how to fix it, not a traceback.
"""

from __future__ import annotations

import errno
import sqlite3

from pydicom.errors import InvalidDicomError

from dicom_utils.errors import DicomUtilsError
from enhancers.registry import UnknownEnhancerError


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file or an override is invalid; the message names the key and the fix."""


class StateError(GatewayError):
    """The state store refused an operation (unknown job, wrong state for the request)."""


class SpoolError(GatewayError):
    """A file could not be written to or read from the spool."""


class OutOfSpaceError(SpoolError):
    """Free disk under `var_dir` fell below the configured watermark; reception must refuse (0xA700)."""


class DeliveryError(GatewayError):
    """A destination refused or could not be reached; the sender retries with backoff."""


class PermanentError(GatewayError):
    """Retrying cannot help: the input or the request itself is wrong, not the moment.

    The job ends `failed` at once with this message, no automatic retry, one log line; an admin fixes the
    cause (or not) and runs `enhance-gateway retry`.
    """


class UndecodableSeriesError(PermanentError):
    """Not one instance of a series can be decoded; the same bytes will not decode on the next try either."""


class EnhancerMismatchError(PermanentError):
    """The enhancer asked for (by `reprocess --enhancer` or the console) is not made for the series' modality."""


#: Exceptions that say the data or the request is wrong, whichever module raised them: dicom_utils refuses an
#: instance (bad pixels, unsupported encoding), pydicom cannot parse a stored file, an enhancer is unknown.
_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError, DicomUtilsError, InvalidDicomError, UnknownEnhancerError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (a SpoolError wrapping an OSError, ...)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or its cause) says the disk is full: the watermark, ENOSPC/EDQUOT, SQLite's SQLITE_FULL.

    Why: a full disk is the one failure where the right answer is to wait, never to count an attempt (the
    job would die of an outage that an admin fixes by deleting a file) nor to log a traceback per try.
    """
    for item in _chain(exc):
        if isinstance(item, OutOfSpaceError):
            return True
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(item, sqlite3.OperationalError) and (
            getattr(item, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(item)
        ):
            return True
    return False


def is_permanent(exc: BaseException) -> bool:
    """True when retrying the same job cannot succeed (see `PermanentError`); a full disk never is."""
    return not is_disk_full(exc) and isinstance(exc, _PERMANENT)


def describe(exc: BaseException) -> str:
    """`Type: message`, at most 300 characters: what a log line or a job's error column shows."""
    return f"{type(exc).__name__}: {exc}"[:300]
