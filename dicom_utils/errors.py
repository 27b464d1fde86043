"""Errors raised by dicom_utils.

Why a hierarchy of its own: the gateway's worker must tell "this instance can never be enhanced" (bad pixels,
unsupported encoding: mark the job failed with a readable reason, do not retry) from bugs. Every exception here
carries a message that says what was wrong with which instance and how an admin can fix it, in the manner of
pydicom's own errors.
"""

from __future__ import annotations


class DicomUtilsError(Exception):
    """Base class: anything dicom_utils refuses to do, with a message that names the fix."""


class PixelDecodeError(DicomUtilsError):
    """The pixel data of an instance cannot be turned into modality values.

    The message names the SOP Instance UID, the transfer syntax, the photometric interpretation and the likely
    cause (truncated file, missing decoder plugin, colour image), so that a log line alone is enough to act on.
    """


class PixelEncodeError(DicomUtilsError):
    """Values cannot be turned back into stored pixels (wrong shape, NaN/inf from a model, unsupported depth)."""


class DerivationError(DicomUtilsError):
    """A derived instance cannot be built from the given source and enhanced values (e.g. shape mismatch)."""


class InvalidInstance(DicomUtilsError, ValueError):
    """An encoded data set cannot be stored as an instance: the message says which element or attribute is wrong."""


class SopClassMismatch(InvalidInstance):
    """The data set's SOP Class UID is not the one its C-STORE request (or STOW-RS part) announced."""
