"""In-process receiving for tests and benchmarks that drive a `Worker` directly (no network)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from gateway.storage.spool import InstanceKey, Spool
from gateway.storage.state import StateStore


def receive(state: StateStore, spool: Spool, files: list[Path]) -> int:
    """Store real files as the SCP would (spool file, then its row) and make their series a queued job.

    Returns the job's id. Why one helper: the worker tests and bench/worker_job.py must receive exactly as
    the SCP records (modality from the file, a stable series), not each in its own slightly different way.
    """
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        spool.put(InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID), data)
        state.record_instance(
            sop_uid=ds.SOPInstanceUID, series_uid=ds.SeriesInstanceUID, study_uid=ds.StudyInstanceUID,
            sop_class_uid=ds.SOPClassUID, modality=str(ds.Modality), size=len(data), calling_aet="TEST", now=0.0,
        )
    (job_id,) = state.make_jobs_for_stable_series(1.0, now=10.0)
    return job_id
