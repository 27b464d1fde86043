"""`evaluate --native`: every default denoiser on real images at their own noise, and on a real-noise MR pair.

Why: synthetic noise on a clean image says how well an enhancer removes *that* noise; it does not say what
it does to a real series at its real dose, which is all a radiologist will ever see. Here nothing is
simulated. Each real image of the corpus (every split; averaged templates left out) goes through the
modality's default enhancer(s) and the classical baselines, and the four "do no harm" checks of
`enhancers.qa` (low-pass residual, voids, grid, bias, in units of the image's estimated noise) are reported
per image, with PNG crops input | output | input - output at native resolution (1 image pixel = 1 PNG pixel)
for a person to look at.

The real-noise pair: two acquisitions of one slab 4 s apart (heudiconv's b=5 mosaics). Denoising the first
and scoring it against the second measures real denoising without any clean reference: for independent
noise, MSE(output, B) = MSE(output, truth) + var(noise of B), so the ranking of enhancers is the ranking
against the truth. Scored on the anatomy (foreground mask of B) with B's range.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from enhancers import corpus, registry
from enhancers.corpus import Slice
from enhancers.noise import NoiseEstimate, estimate_noise, rician_correct
from enhancers.pipeline import Pipeline
from enhancers.qa import SliceChecks, foreground_mask, slice_checks

FloatArray = npt.NDArray[np.float32]
#: The targets of the "do no harm" issue, per check (worst image): low-pass residual, voids, grid, |bias|.
TARGETS: dict[str, float] = {"lowpass": 0.35, "voids": 0.001, "grid": 0.05, "bias": 0.3}
BASELINES: tuple[str, ...] = ("nlm",)
CROP = 192


@dataclass
class NativeRow:
    """One enhancer on one real image at its native noise."""

    group: str
    source: str
    split: str
    enhancer: str
    sigma: float
    checks: SliceChecks
    ms: float

    def passes(self) -> bool:
        c = self.checks
        return (
            c.lowpass <= TARGETS["lowpass"]
            and c.voids <= TARGETS["voids"]
            and c.grid <= TARGETS["grid"]
            and abs(c.bias) <= TARGETS["bias"]
        )


@dataclass
class PairRow:
    """One enhancer on the first acquisition of the real-noise pair, scored against the second."""

    enhancer: str
    psnr_fg: float
    note: str


def native_images(manifest: Path, groups: tuple[str, ...], per_source: int) -> list[Slice]:
    """Real images of every split (no templates, no pair), at most `per_source` slices of each source."""
    out: list[Slice] = []
    for split in corpus.SPLITS:
        out += corpus.load_split(split, groups, path=manifest, max_per_source=per_source, denoise=True)
    return out


def _window(group: str, img: FloatArray, ref: FloatArray) -> npt.NDArray[np.uint8]:
    if group == "CT":
        lo, hi = -160.0, 240.0
    else:
        lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
    return (np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def crop_box(mask: npt.NDArray[np.bool_], size: int = CROP) -> tuple[int, int, int, int]:
    """A size x size box (clipped to the image) centred on the centroid of the foreground."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = (int(ys.mean()), int(xs.mean())) if ys.size else (h // 2, w // 2)
    y0 = min(max(cy - size // 2, 0), max(h - size, 0))
    x0 = min(max(cx - size // 2, 0), max(w - size, 0))
    return y0, min(y0 + size, h), x0, min(x0 + size, w)


def write_crops(
    path: Path, group: str, before: FloatArray, after: FloatArray, sigma: float, caption: str
) -> None:
    """input | output | input - output (mid-grey = 0, black/white = -/+3 sigma), 1:1 pixels, caption below."""
    from PIL import Image, ImageDraw

    y0, y1, x0, x1 = crop_box(foreground_mask(before, group))
    a, b = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
    diff = np.clip((a.astype(np.float64) - b) / max(3.0 * sigma, 1e-9), -1, 1)
    panels = [_window(group, a, a), _window(group, b, a), ((diff + 1) * 127.5).astype(np.uint8)]
    ch, cw = a.shape
    canvas = Image.new("L", (3 * cw + 8, ch + 34), 0)
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(p), (i * (cw + 4), 0))
    draw = ImageDraw.Draw(canvas)
    for j, line in enumerate(caption.split("\n")[:2]):
        draw.text((2, ch + 3 + 14 * j), line, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def defaults_for(group: str) -> list[str]:
    """The default denoisers of a group (fast and quality), without duplicates."""
    modality = {"CT": "CT", "MR": "MR", "XR": "CR"}[group]
    names = [
        registry.default_enhancer(modality, "denoise"),
        registry.default_enhancer(modality, "denoise", quality=True),
    ]
    return list(dict.fromkeys(names))


def run_native(
    slices: list[Slice], enhancers: dict[str, list[str]], figures: Path | None, threads: int | None
) -> list[NativeRow]:
    """Every enhancer of its group on every slice at native noise; crops written under `figures`."""
    rows: list[NativeRow] = []
    pipes: dict[str, Pipeline] = {}
    for sl in slices:
        noise = estimate_noise(sl.pixels, sl.group)
        for name in enhancers.get(sl.group, []):
            pipe = pipes.get(name) or pipes.setdefault(name, Pipeline(name, device="cpu", threads=threads))
            t0 = time.perf_counter()
            out = pipe.run(sl.pixels, modality=sl.group, value_range=sl.value_range, noise=noise)
            ms = (time.perf_counter() - t0) * 1000.0
            checks = slice_checks(sl.pixels, out, sigma=noise.sigma, group=sl.group)
            rows.append(NativeRow(sl.group, sl.key, sl.split, name, noise.sigma, checks, ms))
            if figures is not None:
                c = checks
                caption = (
                    f"{sl.key} ({sl.split})  {name}  noise sigma {noise.sigma:.3g}\n"
                    f"lowpass {c.lowpass:.3f}  voids {c.voids:.4f}  grid {c.grid:.3f}  bias {c.bias:.3f}"
                )
                write_crops(
                    figures / sl.group / f"{sl.source}-{sl.index}-{name}.png",
                    sl.group,
                    sl.pixels,
                    out,
                    noise.sigma,
                    caption,
                )
            _progress(
                f"native {sl.key:<28} {name:<12} lowpass {checks.lowpass:6.3f} voids {checks.voids:.4f} "
                f"grid {checks.grid:6.3f} bias {checks.bias:6.3f}"
            )
    return rows


def _pair(manifest: Path) -> tuple[Slice, Slice] | None:
    entries = {e["id"]: e for e in corpus.read_manifest(manifest) if e["included"]}
    a, b = entries.get("mr-pair-a"), entries.get("mr-pair-b")
    if a is None or b is None:
        return None
    return corpus.load_source(a)[0], corpus.load_source(b)[0]


def run_pair(
    manifest: Path, enhancers: list[str], figures: Path | None, threads: int | None
) -> list[PairRow]:
    """Denoise acquisition A of the real-noise MR pair with each enhancer and BM3D; score against B."""
    import bm3d

    from enhancers.base import normalisation_for

    pair = _pair(manifest)
    if pair is None:
        return []
    a, b = pair
    mask = foreground_mask(b.pixels, "MR")
    rng = float(np.ptp(b.pixels[mask])) or 1.0
    noise: NoiseEstimate = estimate_noise(a.pixels, "MR")

    def fg_psnr(out: FloatArray) -> float:
        mse = float(np.mean((b.pixels[mask].astype(np.float64) - out[mask]) ** 2))
        return 10.0 * math.log10(rng * rng / mse) if mse > 0 else math.inf

    rows = [PairRow("(acquisition A as it is)", fg_psnr(a.pixels), "the floor")]
    for name in enhancers:
        out = Pipeline(name, device="cpu", threads=threads).run(
            a.pixels, modality="MR", value_range=a.value_range, noise=noise
        )
        rows.append(PairRow(name, fg_psnr(out), "estimated noise"))
        if figures is not None:
            write_crops(
                figures / "MR" / f"pair-{name}.png",
                "MR",
                a.pixels,
                out,
                noise.sigma,
                f"real-noise pair: {name} on acquisition A\nforeground PSNR vs B {rows[-1].psnr_fg:.2f} dB",
            )
    norm = normalisation_for("MR", a.pixels[None], a.value_range)
    x = norm.forward(a.pixels).astype(np.float64)
    den = norm.inverse(np.asarray(bm3d.bm3d(x, noise.sigma / norm.scale), dtype=np.float32))
    rows.append(PairRow("bm3d", fg_psnr(den), "sigma = the flat-block estimate"))
    rows.append(
        PairRow(
            "bm3d-rc",
            fg_psnr(rician_correct(den, noise.rician_sigma)),
            "+ Rician correction, background sigma",
        )
    )
    return rows


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def native_markdown(rows: list[NativeRow], pair: list[PairRow]) -> list[str]:
    """The native section of evaluation.md: worst image per enhancer against the targets, then every image."""
    lines = [
        "## Native real images (no simulated noise)",
        "",
        (
            "Checks of `enhancers.qa`, in units of each image's estimated noise sigma (`enhancers.noise`). Targets "
            f"(worst image): low-pass residual <= {TARGETS['lowpass']}, voids <= {TARGETS['voids']:.1%}, grid <= "
            f"{TARGETS['grid']}, |bias| <= {TARGETS['bias']}. Crops: `figures/native/` of the output directory (a selection is in `docs/evaluation-figures/native/`)."
        ),
        "",
        "| modality | enhancer | images | worst low-pass | worst voids | worst grid | worst abs bias | all pass | ms/image |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    keys = list(dict.fromkeys((r.group, r.enhancer) for r in rows))
    for group, name in keys:
        rs = [r for r in rows if r.group == group and r.enhancer == name and not math.isnan(r.checks.lowpass)]
        if not rs:
            continue
        lines.append(
            f"| {group} | {name} | {len(rs)} | {max(r.checks.lowpass for r in rs):.3f} | "
            f"{max(r.checks.voids for r in rs):.4%} | {max(r.checks.grid for r in rs):.3f} | "
            f"{max(abs(r.checks.bias) for r in rs):.3f} | {'yes' if all(r.passes() for r in rs) else 'NO'} | "
            f"{np.mean([r.ms for r in rs]):.0f} |"
        )
    lines += [
        "",
        "<details><summary>Every image</summary>",
        "",
        "| image | split | enhancer | noise sigma | low-pass | voids | grid | bias |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r.checks
        lines.append(
            f"| {r.source} | {r.split} | {r.enhancer} | {r.sigma:.3g} | {_fmt(c.lowpass)} | {_fmt(c.voids, 5)} | "
            f"{_fmt(c.grid)} | {_fmt(c.bias)} |"
        )
    lines += ["", "</details>", ""]
    if pair:
        lines += [
            "## Real-noise MR pair (heudiconv b=5 mosaics, 4 s apart)",
            "",
            "Acquisition A denoised, scored against acquisition B on B's anatomy (foreground PSNR, B's range).",
            "",
            "| enhancer | foreground PSNR vs B (dB) | note |",
            "|---|---:|---|",
        ]
        lines += [f"| {p.enhancer} | {p.psnr_fg:.2f} | {p.note} |" for p in pair]
        lines.append("")
    return lines
