"""What the job pages show: jobs from the state store, files from the spool, the values of any slice.

Why through `State` and `Spool` only: they are the seams that let the gateway move to PostgreSQL and an object
store; the console must keep working then, so it never opens the database or walks spool folders itself.
A slice pairs an original with its derived instance, found by the deterministic derived SOP Instance UID that
the worker gave it. Why the page gets modality values (float32, HU for CT) rather than rendered PNGs: a
radiologist judges denoising by the value under the cursor and the mean/std of a region, which grey levels of a
windowed PNG cannot give; the page windows the values itself, so window/level costs no request.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from dicom_utils import private_tags
from dicom_utils.derive import derived_sop_uid
from dicom_utils.errors import DicomUtilsError
from dicom_utils.pixels import modality_frames
from gateway.errors import GatewayError
from gateway.storage.spool import InstanceKey, OutputKey, Spool, SpoolKey
from gateway.storage.state import Delivery, Instance, Job, StateStore
from gateway.web import imaging

#: The largest slice whose values the page may fetch (float32 bytes: 8k x 8k radiograph = 256 MB is refused).
MAX_SLICE_PIXELS = 6000 * 6000


@dataclass(frozen=True)
class JobView:
    """Everything the job page shows about one job (the slices themselves are fetched one by one)."""

    job: Job
    deliveries: list[Delivery]
    count: int
    derived_files: int
    header: Dataset | None


def _read(spool: Spool, key: SpoolKey | None, *, pixels: bool) -> Dataset | None:
    """A spooled file, or None when it is gone (purged, delivered and cleaned) or unreadable."""
    if key is None:
        return None
    try:
        return pydicom.dcmread(io.BytesIO(spool.read(key)), stop_before_pixels=not pixels)
    except (OSError, GatewayError, pydicom.errors.InvalidDicomError):
        return None


def _original(inst: Instance) -> InstanceKey:
    return InstanceKey(inst.study_uid, inst.series_uid, inst.sop_uid)


def _derived(job: Job, inst: Instance) -> OutputKey | None:
    """The derived instance's key: the worker names it by a deterministic UID of the source and the enhancer."""
    if not job.enhancer or not job.enhancer_version:
        return None
    return OutputKey(job.id, derived_sop_uid(inst.sop_uid, job.enhancer, job.enhancer_version))


def job_view(state: StateStore, spool: Spool, job_id: int) -> JobView:
    """Gather a job, its deliveries and the header of its first original (StateError when there is no such job)."""
    job = state.job(job_id)
    instances = state.job_instances(job_id)
    header = next((ds for ds in (_read(spool, _original(i), pixels=False) for i in instances[:3]) if ds is not None),
                  None)
    return JobView(job, state.deliveries(job_id), len(instances), len(spool.list_outputs(job_id)), header)


def _values(ds: Dataset | None) -> npt.NDArray[np.float32] | None:
    """The middle frame's modality values (HU for CT), or None when the pixels cannot be decoded or are too big."""
    if ds is None or int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) > MAX_SLICE_PIXELS:
        return None
    try:
        frames = modality_frames(ds)
    except (DicomUtilsError, ValueError):
        return None
    return np.ascontiguousarray(frames[frames.shape[0] // 2], dtype=np.float32)


def _instance(state: StateStore, job_id: int, index: int) -> tuple[Job, Instance] | None:
    job = state.job(job_id)
    instances = state.job_instances(job_id)
    return (job, instances[index]) if 0 <= index < len(instances) else None


def slice_info(state: StateStore, spool: Spool, job_id: int, index: int) -> dict[str, object] | None:
    """What the viewer needs to show slice `index`: its size per kind, the original's window and unit, and the
    derived instance's per-slice metrics; None when there is no such slice."""
    found = _instance(state, job_id, index)
    if found is None:
        return None
    job, inst = found
    original = _read(spool, _original(inst), pixels=True)
    derived = _read(spool, _derived(job, inst), pixels=False)
    info: dict[str, object] = {"index": index, "instance_number": None, "original": None, "derived": None,
                               "unit": "HU" if job.modality == "CT" else "", "metrics": None}
    values = _values(original)
    if original is not None and values is not None:
        center, width = imaging.dicom_window(original, values)
        info.update(instance_number=str(original.get("InstanceNumber", "") or ""),
                    original={"rows": values.shape[0], "columns": values.shape[1]},
                    window={"center": center, "width": width, "invert": imaging.is_inverted(original)})
    if derived is not None:
        info["derived"] = {"rows": int(derived.Rows), "columns": int(derived.Columns)}
        try:
            block = private_tags.read_block(derived)
            info["metrics"] = {k: block.get(k) for k in ("psnr", "ssim", "qa_flag")}
        except KeyError:
            pass
    return info


def slice_values(state: StateStore, spool: Spool, job_id: int, index: int, kind: str) -> npt.NDArray[np.float32] | None:
    """The modality values of slice `index`, `kind` "original" or "derived"; None when not available."""
    found = _instance(state, job_id, index)
    if found is None:
        return None
    job, inst = found
    return _values(_read(spool, _original(inst) if kind == "original" else _derived(job, inst), pixels=True))
