"""The training / validation / test corpus: real images only, split by source (patient), never by patch.

Why a manifest in the repository (`enhancers/data/manifest.json`): the split must be fixed, reviewable and
reproducible, and a model card must be able to say exactly which data trained it (the card records the
manifest's sha256, and each source's own sha256 is checked when it is loaded, so a changed file is an error,
not a silent change of the corpus). Every candidate image is listed, including the ones left out (other
encodings of the same pixels, derived maps), with the reason, so a reader sees what was considered.

Sources: pydicom's test files and the `pydicom-data` package (read with pydicom, modality LUT applied here;
`enhancers` never imports the gateway's DICOM code); the Debian `mricron-data` T1 volumes (read with
SimpleITK, axial slices); a real 108-slice head CT inside Debian `invesalius-examples`' `Cranium.inv3` (a tar.gz
of `matrix.dat` + `main.plist`, read where the package installs it: it is GPL-2 and never copied here); the
real T1 head of Debian `insighttoolkit5-examples`; dipy's bundled real T1 slice and b=0 volume; and the two b=5
acquisitions of one slab taken 4 s apart in Debian `heudiconv`'s test data (the real-noise pair). All sources
of one patient share a `patient` key and hence one split. Digitally reconstructed radiographs projected from
the head CT (`kind` drr, option `synthetic`) add radiograph-like training images for X-ray super-resolution
and deblurring; they stay in their CT patient's split, never serve denoising, and nothing is evaluated on them.

Averaged templates (Colin27 is the mean of 27 scans, INIA19 a population template) are smooth: they carry
the option `template` and are never used as noise-free truth for denoising (`load_split(..., denoise=True)`
leaves them out), only for super-resolution.

Why this split: CT_small (a 128x128, small field-of-view image) was first the CT validation image, but its
simulated low-dose noise is far weaker than on full-FOV slices (the projection misses the body outside the
field of view) and its pixel scale is unlike the others, so it picked the wrong epochs; the full-FOV abdomen
now validates and CT_small trains. The corpus is small (a few CT, MR and CR patients), so it is used the way small medical datasets are: many
random patches and fresh noise realisations per clean slice for training, whole slices for validation and
test. X-ray has only two radiographs (one for training, one for test), so X-ray validation uses the CT and
MR validation slices as proxy images with the X-ray noise model; the card of an X-ray model says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from enhancers.degrade import ct_clean

CORPUS_DIR = Path(__file__).resolve().parent / "data"
MANIFEST_PATH = CORPUS_DIR / "manifest.json"
MANIFEST_FORMAT = 1
SPLITS: tuple[str, ...] = ("train", "validation", "test")
MRICRON_DIR = "/usr/share/mricron/templates"
INVESALIUS_CRANIUM = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"
ITK_DATA_DIR = "/usr/share/doc/insighttoolkit5-examples/examples/Data"
HEUDICONV_PAIR_DIR = "/usr/lib/python3/dist-packages/heudiconv/tests/data/b0dwiForFmap"
#: Where each Debian package installs what the corpus reads (for the error that says what to install).
_PACKAGE_OF: dict[str, str] = {
    MRICRON_DIR: "the Debian package mricron-data",
    INVESALIUS_CRANIUM: "the Debian package invesalius-examples",
    ITK_DATA_DIR: "the Debian package insighttoolkit5-examples",
    HEUDICONV_PAIR_DIR: "the Debian package heudiconv",
}


class CorpusError(RuntimeError):
    """The corpus manifest or one of its sources is missing or not what the manifest records."""


@dataclass(frozen=True)
class Slice:
    """One clean 2-D image of the corpus, in modality values (HU, MR units, X-ray stored values)."""

    source: str
    patient: str
    group: str
    split: str
    index: int
    pixels: npt.NDArray[np.float32]
    value_range: tuple[float, float]
    pixel_mm: float

    @property
    def key(self) -> str:
        return f"{self.source}#{self.index}"


# The curated definition the manifest is written from: (id, kind, file, group, patient, split, options, note).
# Sources of one patient always share one split.
_DEFINITION: list[tuple[str, str, str, str, str, str, dict[str, Any], str]] = [
    ("ct-693", "dicom", "693_UNCR.dcm", "CT", "CQ500-CT-310", "test", {}, "head CT, 5 mm, CQ500"),
    ("ct-pancreas", "dicom", "explicit_VR-UN.dcm", "CT", "PANCREAS_0001", "validation", {}, "abdomen CT"),
    ("ct-small", "dicom", "CT_small.dcm", "CT", "1CT1", "train", {}, "thorax CT, 128x128, small FOV"),
    (
        "ct-skullbase",
        "dicom",
        "J2K_pixelrep_mismatch.dcm",
        "CT",
        "JXD191021006",
        "train",
        {},
        "head CT, skull base",
    ),
    ("ct-spine", "dicom", "bad_sequence.dcm", "CT", "b2cbe507f250", "train", {}, "CT, vertebra, small FOV"),
    ("mr-shoulder", "dicom", "MR2_UNCR.dcm", "MR", "5MR2", "test", {}, "shoulder MR, 1024x1024"),
    ("mr-abdomen", "dicom", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR", "021234567", "test", {}, "abdomen MR"),
    (
        "mr-head-emri",
        "dicom",
        "emri_small.dcm",
        "MR",
        "emri_small",
        "validation",
        {},
        "enhanced MR, 10 frames",
    ),
    ("mr-small", "dicom", "MR_small.dcm", "MR", "4MR1", "train", {}, "MR, 64x64"),
    (
        "mr-colin27-ch2better",
        "nifti",
        f"{MRICRON_DIR}/ch2better.nii.gz",
        "MR",
        "colin27",
        "train",
        {"step": 8, "lo": 0.2, "hi": 0.8, "template": True},
        "Colin27 T1 (average of 27 scans), 0.5 mm",
    ),
    (
        "mr-colin27-ch2",
        "nifti",
        f"{MRICRON_DIR}/ch2.nii.gz",
        "MR",
        "colin27",
        "train",
        {"step": 6, "lo": 0.2, "hi": 0.8, "template": True},
        "Colin27 T1, 1 mm",
    ),
    (
        "mr-inia19",
        "nifti",
        f"{MRICRON_DIR}/inia19-t1-brain.nii.gz",
        "MR",
        "inia19",
        "validation",
        {"step": 12, "lo": 0.25, "hi": 0.75, "template": True},
        "INIA19 rhesus macaque T1 template, brain extracted",
    ),
    (
        "ct-cranium",
        "inv3",
        INVESALIUS_CRANIUM,
        "CT",
        "ProMED-CT-0051",
        "train",
        {"step": 3},
        "head CT, 108 slices 256x256, InVesalius example",
    ),
    (
        "mr-dipy-t1",
        "npy",
        "dipy:t1_coronal_slice.npy",
        "MR",
        "dipy-t1",
        "train",
        {},
        "T1 coronal slice, dipy",
    ),
    (
        "mr-fmri-nibabel",
        "nibabel",
        "nibabel:example4d.nii.gz",
        "MR",
        "nibabel-example4d",
        "train",
        {"step": 2},
        "EPI fMRI, first of two volumes, 128x96, nibabel's test data",
    ),
    (
        "mr-dipy-s0",
        "nibabel",
        "dipy:S0_10slices.nii.gz",
        "MR",
        "dipy-s0",
        "train",
        {},
        "b=0 diffusion volume, 10 slices, dipy",
    ),
    (
        "mr-itk-t1",
        "nifti",
        f"{ITK_DATA_DIR}/KmeansTest_T1UCharRaw.nii.gz",
        "MR",
        "itk-kmeans-t1",
        "validation",
        {"step": 6, "lo": 0.25, "hi": 0.75},
        "T1 head, 8 bit, ITK examples",
    ),
    (
        "mr-pair-a",
        "dicom",
        f"{HEUDICONV_PAIR_DIR}/b0dwi_for_fmap+00001.dcm",
        "MR",
        "heudiconv-b0dwi",
        "test",
        {"pair": "mr-pair-b"},
        "b=5 diffusion mosaic, first of two acquisitions 4 s apart (real-noise pair)",
    ),
    (
        "mr-pair-b",
        "dicom",
        f"{HEUDICONV_PAIR_DIR}/b0dwi_for_fmap+00002.dcm",
        "MR",
        "heudiconv-b0dwi",
        "test",
        {"pair": "mr-pair-a"},
        "b=5 diffusion mosaic, second of two acquisitions 4 s apart (real-noise pair)",
    ),
    ("xr-chest", "dicom", "RG1_UNCR.dcm", "XR", "9RG1", "test", {}, "chest CR, 15 bit, MONOCHROME1"),
    ("xr-leg", "dicom", "RG3_UNCR.dcm", "XR", "11RG3", "train", {}, "extremity CR, 10 bit, MONOCHROME1"),
    (
        "xr-drr-cranium",
        "drr",
        INVESALIUS_CRANIUM,
        "XR",
        "ProMED-CT-0051",
        "train",
        {"synthetic": True, "views": 12},
        (
            "SYNTHETIC: digitally reconstructed radiographs (parallel projections, 12 views over 180 degrees) of "
            "the ct-cranium head CT; same patient, same split"
        ),
    ),
]

# Considered and left out, with the reason (listed in the manifest with included = false).
_EXCLUDED: list[tuple[str, str, str, str]] = [
    ("693_UNCI.dcm", "CT", "CQ500-CT-310", "same pixels as 693_UNCR.dcm (other encoding)"),
    ("693_J2KR.dcm", "CT", "CQ500-CT-310", "same pixels as 693_UNCR.dcm (other encoding)"),
    ("693_J2KI.dcm", "CT", "CQ500-CT-310", "lossy re-encoding of 693_UNCR.dcm"),
    ("eCT_Supplemental.dcm", "CT", "0010", "derived perfusion map (rCBF), not an anatomical CT image"),
    ("MR2_UNCI.dcm", "MR", "5MR2", "same pixels as MR2_UNCR.dcm"),
    ("MR2_J2KR.dcm", "MR", "5MR2", "same pixels as MR2_UNCR.dcm"),
    ("MR2_J2KI.dcm", "MR", "5MR2", "lossy re-encoding of MR2_UNCR.dcm"),
    (
        "examples_overlay.dcm",
        "MR",
        "021234567",
        "same patient and image as MR-SIEMENS-DICOM-WithOverlays.dcm",
    ),
    ("MR_small_RLE.dcm", "MR", "4MR1", "same pixels as MR_small.dcm"),
    ("RG1_UNCI.dcm", "XR", "9RG1", "same pixels as RG1_UNCR.dcm"),
    ("RG1_J2KR.dcm", "XR", "9RG1", "same pixels as RG1_UNCR.dcm"),
    ("RG1_J2KI.dcm", "XR", "9RG1", "lossy re-encoding of RG1_UNCR.dcm"),
    ("RG3_UNCI.dcm", "XR", "11RG3", "same pixels as RG3_UNCR.dcm"),
    ("RG3_J2KR.dcm", "XR", "11RG3", "same pixels as RG3_UNCR.dcm"),
    ("RG3_J2KI.dcm", "XR", "11RG3", "lossy re-encoding of RG3_UNCR.dcm"),
    (
        "dicomdirtests/77654033/CR1/6154",
        "XR",
        "77654033",
        "16x16 CR thumbnails of a DICOMDIR test (CR1-CR3): too small to hold anatomy",
    ),
    (
        "RTImageStorage.dcm",
        "XR",
        "0123456789",
        "pynetdicom's RT portal image: a phantom (one dark disc on a flat field), no anatomy",
    ),
    (
        f"{MRICRON_DIR}/ch2bet.nii.gz",
        "MR",
        "colin27",
        "brain-extracted copy of ch2 (same patient as the train split)",
    ),
]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Python packages whose bundled data files the corpus reads (`package:name`), and where they keep them.
_PACKAGE_DATA: dict[str, str] = {"dipy": "data/files", "nibabel": "tests/data"}


def resolve(kind: str, file: str) -> Path:
    """The local path of a source: a pydicom test file by base name, `dipy:NAME` or `nibabel:NAME` (files
    those packages bundle), or an absolute path."""
    package, sep, rel = file.partition(":")
    if sep and package in _PACKAGE_DATA:
        import importlib

        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise CorpusError(
                f"{file} needs the files bundled with {package}; pip install {package}"
            ) from exc
        return Path(str(module.__file__)).parent / _PACKAGE_DATA[package] / rel
    if kind == "dicom" and file == "RTImageStorage.dcm":
        import pynetdicom

        return Path(str(pynetdicom.__file__)).parent / "tests" / "dicom_files" / file
    if kind == "dicom" and file.startswith("dicomdirtests/"):
        import pydicom

        return Path(str(pydicom.__file__)).parent / "data" / "test_files" / file
    if kind == "dicom" and "/" not in file:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(file)
        if found is None:
            raise CorpusError(
                f"{file} is not in pydicom's test files nor pydicom-data; pip install pydicom-data"
            )
        return Path(str(found))
    path = Path(file)
    if not path.exists():
        package = next((p for d, p in _PACKAGE_OF.items() if file.startswith(d)), "the package that ships it")
        raise CorpusError(f"{path} is missing; install {package}")
    return path


def build_manifest() -> dict[str, Any]:
    """The manifest from the curated definition, with every file's sha256."""
    sources: list[dict[str, Any]] = []
    for sid, kind, file, group, patient, split, opts, note in _DEFINITION:
        sources.append(
            {
                "id": sid,
                "kind": kind,
                "file": file,
                "group": group,
                "patient": patient,
                "split": split,
                "options": opts,
                "note": note,
                "included": True,
                "sha256": _sha256(resolve(kind, file)),
            }
        )
    for file, group, patient, reason in _EXCLUDED:
        kind = "nifti" if file.endswith(".nii.gz") else "dicom"
        split = next((s[5] for s in _DEFINITION if s[4] == patient), "none")
        sources.append(
            {
                "id": f"excluded:{Path(file).name}",
                "kind": kind,
                "file": file,
                "group": group,
                "patient": patient,
                "split": split,
                "options": {},
                "note": reason,
                "included": False,
                "sha256": _sha256(resolve(kind, file)),
            }
        )
    return {
        "format": MANIFEST_FORMAT,
        "rule": "split by patient: all sources of one patient are in one split; patches never cross splits",
        "sources": sources,
    }


def write_manifest(path: Path = MANIFEST_PATH) -> str:
    """Write the manifest (sorted, stable JSON); return its sha256."""
    from enhancers.store import write_json

    write_json(path, build_manifest())
    return _sha256(path)


def manifest_sha256(path: Path = MANIFEST_PATH) -> str:
    """sha256 of the manifest file, recorded in model cards."""
    return _sha256(path)


def read_manifest(path: Path = MANIFEST_PATH) -> list[dict[str, Any]]:
    """The sources of the manifest; CorpusError if it is missing or malformed, or splits leak a patient."""
    if not path.is_file():
        raise CorpusError(
            f"corpus manifest {path} is missing; recreate it with `python -m enhancers.corpus --write`"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != MANIFEST_FORMAT:
        raise CorpusError(f"{path} is not a format-{MANIFEST_FORMAT} corpus manifest")
    sources: list[dict[str, Any]] = data["sources"]
    check_split_by_patient(sources)
    return sources


def check_split_by_patient(sources: list[dict[str, Any]]) -> None:
    """Raise CorpusError when one patient appears in two splits, or a split name is unknown."""
    seen: dict[tuple[str, str], str] = {}
    for s in sources:
        if s["included"] and s["split"] not in SPLITS:
            raise CorpusError(f"source {s['id']} has unknown split {s['split']!r}")
        key = (s["group"], s["patient"])
        if s["included"]:
            prev = seen.setdefault(key, s["split"])
            if prev != s["split"]:
                raise CorpusError(f"patient {s['patient']} ({s['group']}) is in both {prev} and {s['split']}")
    for s in sources:  # a synthetic image (DRR) follows its patient's real data into the same split
        if s["included"] and s.get("options", {}).get("synthetic"):
            for other in sources:
                if other["included"] and other["patient"] == s["patient"] and other["split"] != s["split"]:
                    raise CorpusError(
                        f"synthetic source {s['id']} is in {s['split']} but its patient {s['patient']} has "
                        f"{other['id']} in {other['split']}"
                    )
    for s in sources:
        if not s["included"]:
            split = seen.get((s["group"], s["patient"]))
            if split is not None and split != s["split"]:
                raise CorpusError(
                    f"excluded source {s['id']} names split {s['split']} but its patient is in {split}"
                )


def _dicom_frames(path: Path) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """Modality values (N, H, W) of a DICOM file, the range its stored bits map to, and the pixel size."""
    import pydicom

    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if seq in ds and ds[seq].value:
            group = ds[seq].value[0]
            if "PixelValueTransformationSequence" in group:
                pvt = group.PixelValueTransformationSequence[0]
                slope = float(pvt.get("RescaleSlope", slope))
                intercept = float(pvt.get("RescaleIntercept", intercept))
            if "PixelMeasuresSequence" in group and spacing is None:
                spacing = group.PixelMeasuresSequence[0].get("PixelSpacing")
    bits = int(ds.BitsStored)
    stored = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.PixelRepresentation) == 1 else (0, 2**bits - 1)
    )
    ends = sorted((stored[0] * slope + intercept, stored[1] * slope + intercept))
    if raw.ndim == 2:
        raw = raw[None]
    pixel_mm = float(spacing[0]) if spacing and float(spacing[0]) > 0 else 0.7
    values = (raw * slope + intercept).astype(np.float32)
    return values, (float(ends[0]), float(ends[1])), pixel_mm


def _nifti_slices(
    path: Path, opts: dict[str, Any]
) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """Axial slices of a NIfTI volume (every `step`-th between fractions `lo` and `hi`, enough foreground)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    vol = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    vol = np.flip(vol, axis=1)  # image rows top = anterior, as radiologists view axial slices
    z = vol.shape[0]
    lo, hi, step = (
        int(z * float(opts.get("lo", 0.2))),
        int(z * float(opts.get("hi", 0.8))),
        int(opts.get("step", 8)),
    )
    vmax = float(vol.max())
    picked = [
        vol[i]
        for i in range(lo, hi, step)
        if float(np.mean(vol[i] > 0.1 * vmax)) >= float(opts.get("min_foreground", 0.15))
    ]
    if not picked:
        raise CorpusError(f"no slice of {path} has enough foreground")
    spacing = float(img.GetSpacing()[0])  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(np.stack(picked)), (0.0, vmax), spacing


def _inv3_slices(
    path: Path, opts: dict[str, Any]
) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """Every `step`-th slice of an InVesalius project (tar.gz: `main.plist` describes the int16 `matrix.dat`)."""
    import plistlib
    import tarfile

    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        meta_fh = tar.extractfile(members["main.plist"])
        data_fh = tar.extractfile(members["matrix.dat"])
        if meta_fh is None or data_fh is None:
            raise CorpusError(f"{path} has no main.plist or matrix.dat")
        meta = plistlib.loads(meta_fh.read())
        raw = data_fh.read()
    shape = tuple(int(v) for v in meta["matrix"]["shape"])
    vol = np.frombuffer(raw, dtype=np.dtype(str(meta["matrix"]["dtype"])).newbyteorder("<")).reshape(shape)
    step = int(opts.get("step", 1))
    picked = np.ascontiguousarray(vol[::step].astype(np.float32))
    lo, hi = (float(v) for v in meta.get("scalar_range", (-1024, 3071)))
    return picked, (lo, hi), float(meta["spacing"][0])


#: DRR intensities are written on a 12-bit scale, MONOCHROME1-like as the corpus's real CRs store them
#: (bone = low values): 4095 * (1 - line integral / its maximum over the views).
DRR_FULL_SCALE = 4095.0


def _drr_images(path: Path, opts: dict[str, Any]) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """Digitally reconstructed radiographs of an InVesalius CT volume: parallel projections of the linear
    attenuation (HU -> mu at 60-70 keV) at `views` angles over 180 degrees about the patient's long axis.

    Why: the corpus has two real radiographs; a CT volume of a real patient projects to radiograph-like images
    with real anatomy (bone edges, air gaps, soft-tissue gradients) for the super-resolution and deblurring
    models to learn from. They are marked `synthetic` in the manifest, are never evaluated on, and keep the CT
    patient's split. Slices are resampled to square pixels (z spacing / in-plane spacing), head up.
    """
    from scipy import ndimage

    from enhancers.degrade import hu_to_mu

    vol, _, pixel_mm = _inv3_slices(path, {"step": 1})
    mu = hu_to_mu(np.clip(vol, -1024.0, None)).astype(np.float32)  # (z, y, x)
    z_mm = float(opts.get("z_mm", 1.5))
    views = int(opts.get("views", 12))
    projections = []
    for k in range(views):
        angle = 180.0 * k / views
        rotated = ndimage.rotate(mu, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
        line = rotated.sum(axis=1) * pixel_mm  # (z, x): integral of mu along the beam (y), dimensionless
        line = ndimage.zoom(line, (z_mm / pixel_mm, 1.0), order=1)
        projections.append(line[::-1])  # InVesalius stores slices feet first: put the head up
    stack = np.stack(projections).astype(np.float64)
    out = DRR_FULL_SCALE * (1.0 - stack / float(stack.max()))
    return out.astype(np.float32), (0.0, DRR_FULL_SCALE), pixel_mm


def _array_slices(
    kind: str, path: Path, opts: dict[str, Any]
) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """A 2-D .npy slice, or a NIfTI volume read with nibabel (whose direction cosines ITK refuses), as slices."""
    if kind == "npy":
        vol = np.load(path).astype(np.float32)[None]
    else:
        import nibabel

        data = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)  # type: ignore[attr-defined]
        data = data.reshape(data.shape[:3]) if data.ndim == 3 or data.shape[3] == 1 else data[..., 0]
        vol = np.ascontiguousarray(np.rot90(np.moveaxis(data, 2, 0), axes=(1, 2)))
    step = int(opts.get("step", 1))
    vol = np.ascontiguousarray(vol[::step])
    return vol, (0.0, float(vol.max())), float(opts.get("pixel_mm", 1.0))


def load_source(entry: dict[str, Any], *, verify: bool = True) -> list[Slice]:
    """The clean slices of one manifest source (sha256-checked when `verify`)."""
    path = resolve(entry["kind"], entry["file"])
    if verify:
        actual = _sha256(path)
        if actual != entry["sha256"]:
            raise CorpusError(
                f"{path} has sha256 {actual}, the corpus manifest records {entry['sha256']}: the installed data "
                f"differs from the one the models were trained on; reinstall it or rewrite the manifest"
            )
    opts = entry.get("options", {})
    if entry["kind"] == "dicom":
        values, vrange, pixel_mm = _dicom_frames(path)
    elif entry["kind"] == "inv3":
        values, vrange, pixel_mm = _inv3_slices(path, opts)
    elif entry["kind"] == "drr":
        values, vrange, pixel_mm = _drr_images(path, opts)
    elif entry["kind"] in ("npy", "nibabel"):
        values, vrange, pixel_mm = _array_slices(entry["kind"], path, opts)
    else:
        values, vrange, pixel_mm = _nifti_slices(path, opts)
    out: list[Slice] = []
    for i, frame in enumerate(values):
        pixels = (
            ct_clean(frame)
            if entry["group"] == "CT"
            else np.clip(frame, vrange[0], vrange[1]).astype(np.float32)
        )
        out.append(
            Slice(
                source=entry["id"],
                patient=entry["patient"],
                group=entry["group"],
                split=entry["split"],
                index=i,
                pixels=pixels,
                value_range=vrange if entry["group"] != "CT" else (max(vrange[0], -1024.0), vrange[1]),
                pixel_mm=pixel_mm,
            )
        )
    return out


def load_split(
    split: str,
    groups: tuple[str, ...],
    *,
    path: Path = MANIFEST_PATH,
    max_per_source: int | None = None,
    denoise: bool = False,
    keep_synthetic: bool | None = None,
) -> list[Slice]:
    """All clean slices of `split` for the modality groups `groups` (at most `max_per_source` per source).

    `denoise=True` leaves out averaged templates (never noise-free truth) and the real-noise pair (scored
    against each other by `evaluate --native`, not as clean references). Synthetic images (the DRRs) are kept
    with `keep_synthetic`; unless it is given, only when not `denoise` (they have no real noise to learn to leave
    alone; they serve super-resolution, and the X-ray denoiser's recipe that asks for them as noise-free truth).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    keep = not denoise if keep_synthetic is None else keep_synthetic
    slices: list[Slice] = []
    for entry in read_manifest(path):
        opts = entry.get("options", {})
        if (denoise and (opts.get("template") or opts.get("pair"))) or (opts.get("synthetic") and not keep):
            continue
        if entry["included"] and entry["split"] == split and entry["group"] in groups:
            got = load_source(entry)
            if max_per_source is not None and len(got) > max_per_source:
                idx = np.linspace(0, len(got) - 1, max_per_source).round().astype(int)
                got = [got[i] for i in idx]
            slices.extend(got)
    return slices


def main(argv: list[str] | None = None) -> int:
    """`python -m enhancers.corpus --write` rewrites the manifest; without it, prints the split summary."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m enhancers.corpus")
    parser.add_argument("--write", action="store_true", help="rewrite enhancers/data/manifest.json")
    args = parser.parse_args(argv)
    if args.write:
        print(write_manifest())
    for entry in read_manifest():
        if entry["included"]:
            n = len(load_source(entry))
            print(
                f"{entry['split']:<10} {entry['group']}  {entry['id']:<24} {n:>3} slice(s)  {entry['note']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
