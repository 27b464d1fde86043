"""Uploads: what a user sent, how far its enhancement is, and what came out; kept in memory only.

Why in memory and bounded: an uploaded DICOM file carries PHI, and the console is a place to try an enhancer,
not an archive, so nothing uploaded is written to disk and only the last few results are kept (oldest
evicted first, and after `MAX_AGE_SECONDS`). Why bounds in pixels and bytes, not only in count: one 6000 x
6000 radiograph held about 630 MB once enhanced and peaked at 5 GB while enhancing, so eight kept uploads could
starve the gateway beside the console. An upload is refused before its pixels are decoded when it has more
pixels than `[web] max_upload_megapixels` (output pixels: sr2x counts 4 times, sr4x 16), and admitted only when
its estimated memory fits under `[web] max_kept_mb` with the uploads already kept (finished ones are evicted,
oldest first, to make room; uploads still waiting are never evicted, so a full console says so). Once
enhanced, an upload drops what the pages do not need (the pixel data of the source and of the derived
dataset; the derived object stays as its Part 10 bytes). Why a background thread: enhancing a 2k x 2k radiograph takes
seconds, and the page shows a progress indicator by polling the upload's stage instead of holding a request
open. Uploads are known by a random token, never by anything taken from the file, so URLs and logs stay
free of PHI.
"""

from __future__ import annotations

import io
import queue
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_utils.classify import skip_reason
from dicom_utils.errors import DicomUtilsError
from dicom_utils.summary import safe_summary
from enhancers.registry import TASK_SCALE
from gateway import logs
from gateway.web.enhance import EnhanceError, Enhancer, Outcome, dicom_values
from gateway.web.imaging import (
    CT_PRESETS,
    auto_window,
    dicom_window,
    difference,
    difference_limit,
    is_inverted,
)

log = logs.get("gateway.web")

MAX_KEPT = 8
MAX_WAITING = 4
MAX_AGE_SECONDS = 2 * 3600.0
#: What a PNG/JPEG may be treated as (its values carry no modality); CT is absent: PNG values are not HU.
IMAGE_MODALITIES: dict[str, str] = {"XR": "X-ray (CR/DX)", "MR": "MR", "OT": "other"}

#: Patient and visit fields shown (on request) on the result page; never logged, never in a URL.
PATIENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("PatientName", "Patient name"),
    ("PatientID", "Patient ID"),
    ("PatientBirthDate", "Birth date"),
    ("PatientSex", "Sex"),
    ("AccessionNumber", "Accession number"),
    ("StudyDate", "Study date"),
    ("StudyDescription", "Study description"),
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def sentence(message: str) -> str:
    """A message as a sentence for a page: capital first letter, final period."""
    text = message.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


class UploadError(ValueError):
    """An upload refused before enhancement; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def patient_fields(ds: Dataset | None) -> list[tuple[str, str]]:
    """(label, value) of the patient/visit fields present in `ds`, for a page that needs them."""
    if ds is None:
        return []
    out = []
    for keyword, label in PATIENT_FIELDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            out.append((label, str(value)))
    return out


@dataclass
class Upload:
    """One upload and its progress. Fields written by the worker thread are read by request threads: each
    write replaces a whole value, so a reader sees either the old or the new one."""

    token: str
    kind: str  # "dicom" or "image"
    choice: str
    task: str
    modality: str
    size: int
    created: float = field(default_factory=time.time)
    stage: str = "waiting for the enhancer"
    progress: float = 0.05
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    note: str = ""
    source: Dataset | None = None
    values: npt.NDArray[np.float32] | None = None
    vrange: tuple[float, float] = (0.0, 1.0)
    source_dtype: str = "uint8"
    outcome: Outcome | None = None
    window: tuple[float, float] = (0.0, 1.0)
    window_source: str = "auto window"
    invert: bool = False
    diff_limits: list[float] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)
    memory: int = 0  # bytes: estimated until enhanced, then measured (`_held_bytes`)

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None

    def status(self) -> dict[str, object]:
        """The JSON the page polls: stage, fraction done, error, seconds so far."""
        end = self.finished or time.time()
        return {
            "id": self.token,
            "stage": self.stage,
            "progress": round(self.progress, 3),
            "done": self.done,
            "error": sentence(self.error) if self.error else None,
            "seconds": round(end - (self.started or self.created), 1),
        }


def _read_dicom(data: bytes) -> Dataset | None:
    """The dataset, or None when the bytes are not a DICOM file at all."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 - a DICOM prefix with a broken header: say so, not a traceback
        if data[128:132] == b"DICM":
            raise UploadError(f"the file has a DICOM prefix but its header cannot be read ({type(exc).__name__})")
        return None


def _read_image(
    data: bytes, check_pixels: Callable[[int], int]
) -> tuple[npt.NDArray[np.float32], tuple[float, float], str, str]:
    """A PNG/JPEG as float32 (1, H, W) grayscale values, their range, the stored dtype and a note.

    `check_pixels(width * height)` runs on the header, before the image is decoded (it raises to refuse)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_pixels(img.width * img.height)
            img.load()
            note = ""
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.int64)
                dtype = "uint16"
                arr = np.clip(arr, 0, 65535)
            else:
                if img.mode not in ("L", "1"):
                    note = f"converted from {img.mode} to grayscale"
                arr = np.asarray(img.convert("L"), dtype=np.int64)
                dtype = "uint8"
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UploadError(f"the PNG/JPEG file cannot be decoded ({exc})") from None
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise UploadError(f"the image is {arr.shape[1] if arr.ndim > 1 else 0} pixels wide: at least 8x8 needed")
    top = 65535.0 if dtype == "uint16" else 255.0
    return arr.astype(np.float32)[np.newaxis], (0.0, top), dtype, note


def _pixel_count(ds: Dataset) -> int:
    """Pixels of all frames and samples of a DICOM image, from its header (nothing decoded)."""
    def num(keyword: str, default: int) -> int:
        try:
            return max(int(ds.get(keyword, default) or default), 1)
        except (TypeError, ValueError):
            return default
    return num("Rows", 0) * num("Columns", 0) * num("NumberOfFrames", 1) * num("SamplesPerPixel", 1)


def _drop_pixels(ds: Dataset | None) -> None:
    """Remove the pixel data (and pydicom's decoded copy) from a dataset kept only for its header."""
    if ds is None:
        return
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)


def _held_bytes(upload: Upload) -> int:
    """What a finished upload still holds in memory (arrays and bytes; headers are small)."""
    total = 0 if upload.values is None else int(upload.values.nbytes)
    out = upload.outcome
    if out is not None:
        total += int(out.enhanced.nbytes) + len(out.derived_bytes or b"")
        if out.original is not upload.values:
            total += int(out.original.nbytes)
    return total + 64 * 1024


class UploadStore:
    """Keeps the last uploads and enhances them one at a time on a daemon thread.

    `max_pixels`: output pixels one upload may have; `max_bytes`: estimated memory of all kept uploads.
    """

    def __init__(self, enhancer: Enhancer, *, max_pixels: int = 30_000_000, max_bytes: int = 1 << 30) -> None:
        self.enhancer = enhancer
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Upload | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="web-enhancer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)

    def get(self, token: str) -> Upload | None:
        with self._lock:
            return self._uploads.get(token)

    def held_bytes(self) -> int:
        """Memory of the kept uploads: measured for finished ones, estimated for those still waiting."""
        with self._lock:
            return sum(u.memory for u in self._uploads.values())

    def _check_pixels(self, pixels: int, task: str) -> int:
        """The output pixel count of an upload of `pixels` input pixels; UploadError(413) above the cap."""
        factor = TASK_SCALE.get(task, 1) ** 2  # output pixels: sr2x 4x, sr4x 16x
        out = pixels * factor
        if out > self.max_pixels:
            what = f"{pixels / 1e6:.1f} megapixels" + (f", {factor} times that once super-resolved" if factor > 1 else "")
            raise UploadError(
                f"the image has {what}; this console enhances at most {self.max_pixels / 1e6:g} megapixels per "
                "upload ([web] max_upload_megapixels): crop or downsample it"
                + (", try denoise," if factor > 1 else ",") + " or ask an admin to raise the limit", 413)
        return out

    def _admit(self, upload: Upload) -> None:
        """Keep `upload` if its memory fits beside the kept ones (evicting finished uploads, oldest first)."""
        if upload.memory > self.max_bytes:
            raise UploadError(
                f"enhancing this image needs about {upload.memory >> 20} MB, more than the console keeps for all "
                f"uploads together ([web] max_kept_mb = {self.max_bytes >> 20}): use a smaller image", 413)
        with self._lock:
            self._evict()
            for token in [t for t, u in self._uploads.items() if u.done]:
                if sum(u.memory for u in self._uploads.values()) + upload.memory <= self.max_bytes:
                    break
                del self._uploads[token]
            held = sum(u.memory for u in self._uploads.values())
            if held + upload.memory > self.max_bytes:
                raise UploadError(
                    f"the console is busy with other uploads ({held >> 20} MB of the {self.max_bytes >> 20} MB it "
                    f"keeps for uploads, [web] max_kept_mb; this one needs about {upload.memory >> 20} MB): try "
                    "again when they are done", 503)
            self._uploads[upload.token] = upload
            self._evict()

    def submit(self, data: bytes, *, choice: str, task: str, image_modality: str) -> Upload:
        """Check the file, keep it and queue it; UploadError (with an HTTP status) says why it was refused."""
        if not data:
            raise UploadError("the file is empty: choose a DICOM, PNG or JPEG file", 400)
        with self._lock:
            waiting = sum(1 for u in self._uploads.values() if not u.done)
        if waiting >= MAX_WAITING:
            raise UploadError(f"{waiting} uploads are already waiting: try again when they are done", 503)
        upload = Upload(
            token=secrets.token_urlsafe(12), kind="dicom", choice=choice, task=task, modality="", size=len(data)
        )
        ds = _read_dicom(data)
        if ds is not None:
            reason = skip_reason(ds)
            if reason is not None:
                raise UploadError(
                    f"this DICOM file cannot be enhanced: {reason}. The console enhances grayscale CT, MR, CR, DX "
                    "and MG images, as the gateway does"
                )
            pixels = _pixel_count(ds)
            out = self._check_pixels(pixels, task)
            # the file (pixel data until enhanced), float32 values in and out, the derived object's bytes
            upload.memory = len(data) + pixels * 4 + out * 4 + out * 2
            upload.source = ds
            upload.modality = str(ds.get("Modality", "") or "OT").upper()
            upload.summary = safe_summary(ds)
        elif data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
            values, vrange, dtype, note = _read_image(data, lambda pixels: self._check_pixels(pixels, task))
            grown = TASK_SCALE.get(task, 1) ** 2  # input + output (+ a same-size working copy when not grown)
            upload.memory = int(values.nbytes) * (1 + grown if grown > 1 else 2)
            upload.kind = "image"
            upload.values, upload.vrange, upload.source_dtype, upload.note = values, vrange, dtype, note
            upload.modality = image_modality if image_modality in IMAGE_MODALITIES else "OT"
            upload.summary = {
                "format": "PNG" if data.startswith(_PNG_MAGIC) else "JPEG",
                "rows": int(values.shape[1]),
                "columns": int(values.shape[2]),
                "bits": 16 if dtype == "uint16" else 8,
            }
        else:
            raise UploadError(
                "this is not a DICOM file (no DICM prefix, no readable DICOM header), nor a PNG or JPEG image: "
                "upload a DICOM image (.dcm) or a PNG/JPEG",
                415,
            )
        self._admit(upload)
        log.info(
            "web.upload_received",
            upload=upload.token,
            kind=upload.kind,
            modality=upload.modality,
            bytes=len(data),
            reserved_mb=round(upload.memory / 2**20, 1),
            sop_class=upload.summary.get("sop_class"),
            transfer_syntax=upload.summary.get("transfer_syntax"),
        )
        self._queue.put(upload)
        return upload

    def _evict(self) -> None:
        now = time.time()
        for token in [t for t, u in self._uploads.items() if u.done and now - u.created > MAX_AGE_SECONDS]:
            del self._uploads[token]
        while len(self._uploads) > MAX_KEPT:
            oldest = next((t for t, u in self._uploads.items() if u.done), None)
            if oldest is None:
                break
            del self._uploads[oldest]

    def _loop(self) -> None:
        while True:
            upload = self._queue.get()
            if upload is None:
                return
            self.process(upload)

    def process(self, upload: Upload) -> None:
        """Decode, enhance, measure, derive; every failure becomes a readable `error`, never a crash."""
        upload.started = time.time()

        def progress(stage: str, fraction: float) -> None:
            upload.stage, upload.progress = stage, fraction

        try:
            if upload.source is not None:
                progress("decoding the pixels", 0.1)
                try:
                    values, vrange = dicom_values(upload.source)
                except DicomUtilsError as exc:
                    raise UploadError(f"the pixel data cannot be decoded: {exc}") from None
                upload.values, upload.vrange = values, vrange
            assert upload.values is not None
            outcome = self.enhancer.run(
                upload.values,
                upload.vrange,
                modality=upload.modality,
                choice=upload.choice,
                task=upload.task,
                source=upload.source,
                progress=progress,
            )
            progress("preparing the view", 0.97)
            upload.window = dicom_window(upload.source, upload.values[0])
            if upload.window != auto_window(upload.values[0]):
                upload.window_source = "file window"
            elif upload.modality == "CT":  # no window in the file: what a reading workstation opens CT with
                upload.window, upload.window_source = CT_PRESETS["soft tissue"], "CT soft tissue"
            upload.invert = upload.source is not None and is_inverted(upload.source)
            upload.diff_limits = [
                difference_limit(difference(upload.values[i], outcome.enhanced[i]))
                for i in range(upload.values.shape[0])
            ]
            _drop_pixels(upload.source)  # the pages read its header only
            _drop_pixels(outcome.derived)  # its Part 10 bytes are what is downloaded
            upload.outcome = outcome
            upload.memory = _held_bytes(upload)
            upload.stage, upload.progress = "done", 1.0
            log.info(
                "web.upload_enhanced",
                upload=upload.token,
                enhancer=outcome.info.name,
                version=outcome.info.version,
                task=outcome.task,
                device=outcome.device,
                modality=upload.modality,
                frames=int(upload.values.shape[0]),
                psnr=None if outcome.psnr is None else round(outcome.psnr, 2),
                ssim=None if outcome.ssim is None else round(outcome.ssim, 4),
                qa_flag=outcome.qa_flag,
                seconds=round(time.time() - upload.started, 3),
            )
        except (UploadError, EnhanceError, DicomUtilsError) as exc:
            upload.error = str(exc)
            log.warning("web.upload_failed", upload=upload.token, error=str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - a bug: tell the user; log type and frames, not the message (PHI)
            upload.error = f"the enhancement failed unexpectedly ({type(exc).__name__}); see the console's log"
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
            log.error("web.upload_crashed", upload=upload.token, error_type=type(exc).__name__, where=where[-6:])
        finally:
            upload.finished = time.time()
            if upload.error is not None:
                upload.stage = "failed"
                upload.values, upload.outcome = None, None  # an error page needs none of it
                _drop_pixels(upload.source)
                upload.memory = 64 * 1024
