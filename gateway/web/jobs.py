"""What the jobs pages show: jobs from the state store, files from the spool, thumbnails of a few slices.

Why through `State` and `Spool` only: they are the seams that let the gateway move to PostgreSQL and an object
store; the console must keep working then, so it never opens the database or walks spool folders itself.
Thumbnails pair an original (`Instance.path`) with its derived instance, found by the deterministic derived
SOP Instance UID that the worker gave it, and are drawn with the original's window so the two compare.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_utils import private_tags
from dicom_utils.derive import derived_sop_uid
from dicom_utils.errors import DicomUtilsError
from dicom_utils.pixels import modality_frames
from gateway.errors import GatewayError
from gateway.storage.spool import Spool
from gateway.storage.state import Delivery, Instance, Job, State
from gateway.web import imaging

THUMBS_PER_JOB = 4
THUMB_SIDE = 256


@dataclass(frozen=True)
class Thumb:
    """One slice shown on the job page: which instance, whether both files are still there, its metrics."""

    index: int
    instance_number: str
    has_original: bool
    has_derived: bool
    block: dict[str, object] | None


@dataclass(frozen=True)
class JobView:
    """Everything the job page shows about one job."""

    job: Job
    deliveries: list[Delivery]
    thumbs: list[Thumb]
    derived_files: int
    header: Dataset | None


def pick(count: int, wanted: int = THUMBS_PER_JOB) -> list[int]:
    """Up to `wanted` indexes spread evenly over `count` items, first and last included."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _read(spool: Spool, path: str | None, *, pixels: bool) -> Dataset | None:
    """A spooled file, or None when it is gone (purged, delivered and cleaned) or unreadable."""
    if path is None:
        return None
    try:
        return pydicom.dcmread(io.BytesIO(spool.read(path)), stop_before_pixels=not pixels)
    except (OSError, GatewayError, pydicom.errors.InvalidDicomError):
        return None


def _derived_path(spool: Spool, job: Job, inst: Instance, outgoing: dict[str, str]) -> str | None:
    if not job.enhancer or not job.enhancer_version:
        return None
    return outgoing.get(derived_sop_uid(inst.sop_uid, job.enhancer, job.enhancer_version) + ".dcm")


def _outgoing(spool: Spool, job_id: int) -> dict[str, str]:
    return {p.name: str(p) for p in spool.outgoing_files(job_id)}


def job_view(state: State, spool: Spool, job_id: int) -> JobView:
    """Gather a job, its deliveries and a few slices (StateError when there is no such job)."""
    job = state.job(job_id)
    instances = state.job_instances(job_id)
    outgoing = _outgoing(spool, job_id)
    thumbs: list[Thumb] = []
    header: Dataset | None = None
    for index in pick(len(instances)):
        inst = instances[index]
        original = _read(spool, inst.path, pixels=False)
        derived_path = _derived_path(spool, job, inst, outgoing)
        derived = _read(spool, derived_path, pixels=False)
        header = header or original
        block: dict[str, object] | None = None
        if derived is not None:
            try:
                block = private_tags.read_block(derived)
            except KeyError:
                block = None
        number = original.get("InstanceNumber", "") if original is not None else ""
        thumbs.append(Thumb(index, str(number or "?"), original is not None, derived is not None, block))
    return JobView(job, state.deliveries(job_id), thumbs, len(outgoing), header)


def thumbnail_png(state: State, spool: Spool, job_id: int, index: int, kind: str) -> bytes | None:
    """PNG thumbnail of instance `index` of a job, `kind` "original" or "derived"; None when not available.

    Both are drawn with the original's window (its own Window Center/Width, else its percentiles), so a
    difference in brightness on the page is a difference in the pixels.
    """
    job = state.job(job_id)
    instances = state.job_instances(job_id)
    if not 0 <= index < len(instances):
        return None
    inst = instances[index]
    original = _read(spool, inst.path, pixels=True)
    if original is None:
        return None
    try:
        before = modality_frames(original)
    except DicomUtilsError:
        return None
    middle = before.shape[0] // 2
    center, width = imaging.dicom_window(original, before[middle])
    invert = imaging.is_inverted(original)
    if kind == "original":
        values = before[middle]
    else:
        derived = _read(spool, _derived_path(spool, job, inst, _outgoing(spool, job_id)), pixels=True)
        if derived is None:
            return None
        try:
            values = modality_frames(derived)[middle]
        except (DicomUtilsError, IndexError):
            return None
    image = imaging.window(np.asarray(values), center, width, invert=invert)
    return imaging.png(imaging.thumbnail(image, THUMB_SIDE))
