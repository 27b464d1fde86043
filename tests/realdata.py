"""Real DICOM data for tests: pydicom's test files, the pydicom-data package, and series built from them.

Why: the house rule is real images only. A multi-slice series is built from one real slice by giving each
copy new Study/Series/SOP UIDs (deterministic per test) and a distinct Instance Number and slice position,
so the pixels stay those of a real patient while the gateway sees a proper series.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


def testfile(name: str) -> Path:
    """Path of a file from pydicom's test files or pydicom-data, by base name; fails loudly if absent."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not in pydicom's test files nor pydicom-data; pip install pydicom-data")
    return Path(str(path))


testfile.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, despite its name


def make_series(
    source: str,
    count: int,
    out_dir: Path,
    *,
    seed: str = "series",
    transfer_syntax: str | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write `count` instances of one new series built from the real file `source` into `out_dir`.

    UIDs are derived from `seed` so a test can rebuild the same series. With `transfer_syntax` the pixel data
    is re-encoded (pydicom's encoders: RLE Lossless, or JPEG 2000 / JPEG-LS through pylibjpeg/pyjpegls when
    installed); by default the source's encoding is kept as is.
    """
    template = pydicom.dcmread(testfile(source))
    if transfer_syntax is not None and transfer_syntax != template.file_meta.TransferSyntaxUID:
        if template.file_meta.TransferSyntaxUID.is_compressed:
            template.decompress()
        template.compress(transfer_syntax)
    study = study_uid or generate_uid(entropy_srcs=[seed, "study"])
    series = generate_uid(entropy_srcs=[seed, "series"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    thickness = float(template.get("SliceThickness", 1.0) or 1.0)
    origin = [float(v) for v in template.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    for i in range(count):
        ds: Dataset = copy.deepcopy(template)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        if "ImagePositionPatient" in template:
            ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + i * thickness]
            ds.SliceLocation = origin[2] + i * thickness
        path = out_dir / f"{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
