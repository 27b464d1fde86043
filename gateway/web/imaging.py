"""Pixels to pictures for the console: window/level, difference maps and PNG encoding.

Why on the server: the browser gets plain 8-bit PNGs rendered from the modality values with the window the
user chose, so what the radiologist sees is computed from the same float values the gateway measured (a
browser canvas cannot hold 16-bit CT values), and the comparison PNG that can be downloaded is pixel for pixel
what the page showed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from dicom_utils.enhancement import Task
from gateway.enhance.finish import to_input_grid

FloatArray = npt.NDArray[np.float32]
ByteImage = npt.NDArray[np.uint8]

#: Window presets offered for CT (center, width in HU), as on a reading workstation.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def auto_window(values: npt.NDArray[np.floating]) -> tuple[float, float]:
    """Center/width covering the 0.5th to 99.5th percentile: a readable default when the file has none."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [0.5, 99.5])
    width = float(hi - lo)
    if not math.isfinite(width) or width <= 0:
        width = 1.0
    return float(lo + hi) / 2.0, width


def _first_number(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        items = list(value)  # type: ignore[call-overload]
        if not items:
            return None
        value = items[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def dicom_window(ds: Dataset | None, values: npt.NDArray[np.floating]) -> tuple[float, float]:
    """The file's own first VOI window (Window Center/Width) when it has a usable one, else `auto_window`."""
    if ds is not None:
        center = _first_number(ds.get("WindowCenter"))
        width = _first_number(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 1:
            return center, width
    return auto_window(values)


def is_inverted(ds: Dataset | None) -> bool:
    """MONOCHROME1 images display with high values dark (the pixels are not inverted; the display is)."""
    return ds is not None and str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def window(values: npt.NDArray[np.floating], center: float, width: float, *, invert: bool = False) -> ByteImage:
    """Linear window/level to 8 bits: center - width/2 is black, center + width/2 is white (reversed if invert)."""
    width = max(float(width), 1e-6)
    scaled = (np.asarray(values, dtype=np.float32) - (center - width / 2.0)) * (255.0 / width)
    out: ByteImage = np.clip(scaled, 0.0, 255.0).astype(np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def difference(original: npt.NDArray[np.floating], enhanced: npt.NDArray[np.floating]) -> FloatArray:
    """Enhanced minus original on the original's grid (a super-resolved image is area-averaged back first)."""
    before = np.asarray(original, dtype=np.float32)
    after = np.asarray(enhanced, dtype=np.float32)
    if after.shape != before.shape:
        factor = max(1, round(after.shape[-1] / max(before.shape[-1], 1)))  # 2 for sr2x, 4 for sr4x
        after = to_input_grid(after, {2: Task.SR2X, 4: Task.SR4X}.get(factor, Task.DENOISE))
        h = min(after.shape[-2], before.shape[-2])
        w = min(after.shape[-1], before.shape[-1])
        after, before = after[..., :h, :w], before[..., :h, :w]
    out: FloatArray = after - before
    return out


def difference_limit(diff: npt.NDArray[np.floating]) -> float:
    """The |difference| shown at full black/white: its 99.5th percentile, so a few outliers do not flatten it."""
    limit = float(np.percentile(np.abs(np.asarray(diff, dtype=np.float64)), 99.5))
    return limit if math.isfinite(limit) and limit > 0 else 1.0


def difference_image(diff: npt.NDArray[np.floating], limit: float) -> ByteImage:
    """Mid-grey is no change; white is enhanced brighter by `limit` or more, black darker."""
    return window(diff, 0.0, 2.0 * max(limit, 1e-6))


def png(image: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]) -> bytes:
    """Encode a 2-D 8- or 16-bit grayscale array (or an RGB uint8 array) as PNG."""
    arr = np.ascontiguousarray(image)
    if arr.dtype == np.uint16:
        pil = Image.fromarray(arr.astype(np.uint16))
    else:
        pil = Image.fromarray(arr.astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # speed over size: the console runs on loopback
    return buf.getvalue()


def comparison(panels: Sequence[tuple[str, ByteImage]], caption: Sequence[str], panel_side: int = 768) -> bytes:
    """One PNG: the panels side by side at one size (titles above, caption lines on top), for reports.

    Every panel is scaled to the same box (at most `panel_side` pixels on its longer side), so a
    super-resolved image lines up with its input.
    """
    first = panels[0][1]
    h, w = first.shape[:2]
    scale = min(panel_side / max(h, w), 4.0)
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    font = ImageFont.load_default()
    line_h, pad = 16, 8
    top = pad + line_h * len(caption) + pad + line_h
    canvas = Image.new("RGB", (pad + len(panels) * (pw + pad), top + ph + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(caption):
        draw.text((pad, pad + i * line_h), text, fill=(235, 235, 235), font=font)
    for i, (title, image) in enumerate(panels):
        x = pad + i * (pw + pad)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
        canvas.paste(Image.fromarray(image).convert("RGB").resize((pw, ph), resample), (x, top))
        draw.text((x, top - line_h), title, fill=(255, 210, 120), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
