"""PHI-free facts about an instance, for logs and metrics labels.

Why an allow-list: the house rule is that no patient name, id, birth date, accession number or other PHI ever
reaches the logs. Building the summary from a fixed list of technical attributes (never "everything but the
PHI") means a new or private attribute can never leak by accident.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_utils.classify import sop_class_name
from dicom_utils.pixels import number_of_frames, transfer_syntax_name

_UID_KEYS = {
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}


def safe_summary(ds: Dataset) -> dict[str, object]:
    """Study/Series/SOP Instance UIDs, modality, SOP class name, rows, columns, frames, transfer syntax name,
    photometric interpretation. Missing values are None. Never any patient or visit identifier.
    """
    summary: dict[str, object] = {}
    for key, keyword in _UID_KEYS.items():
        value = ds.get(keyword)
        summary[key] = str(value) if value else None
    modality = ds.get("Modality")
    summary["modality"] = str(modality) if modality else None
    summary["sop_class"] = sop_class_name(ds)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    summary["rows"] = int(rows) if rows not in (None, "") else None
    summary["columns"] = int(cols) if cols not in (None, "") else None
    summary["frames"] = number_of_frames(ds)
    summary["transfer_syntax"] = transfer_syntax_name(ds)
    photometric = ds.get("PhotometricInterpretation")
    summary["photometric_interpretation"] = str(photometric) if photometric else None
    return summary
