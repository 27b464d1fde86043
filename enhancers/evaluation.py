"""`evaluate`: every applicable enhancer against the clean image, per modality, task and degradation.

Why it works this way: a model is only worth shipping if it beats the classical baseline on images it has
never seen, under the degradation it is meant for, by a margin larger than the noise of the measurement. So
the command takes the held-out test split of the corpus (or DICOM files the user points at), applies each
standard degradation with a fixed seed, runs every enhancer of the task that covers the modality (classical
baselines included, and the degraded input itself as the floor), and reports PSNR and SSIM against the clean
image with the data range stated, plus the time per slice on this machine. Figures show clean / degraded /
enhanced / |error| so a reader can see what the numbers mean (and spot invented structure).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from enhancers import corpus, degrade, registry
from enhancers.baselines import baselines_for
from enhancers.corpus import Slice
from enhancers.metrics import Score, foreground_psnr, score
from enhancers.pipeline import Pipeline
from enhancers.training import VAL_DEGRADATIONS, CTSimCache, default_cache_dir, stable_seed

FloatArray = npt.NDArray[np.float32]
INPUT_ROW = "(degraded input)"


@dataclass
class EvalOptions:
    """What to evaluate and where to write it."""

    modalities: tuple[str, ...] = ("CT", "MR", "XR")
    task: str | None = None
    images: Path | None = None
    out: Path = Path("evaluation")
    enhancers: tuple[str, ...] | None = None
    max_slices: int | None = None
    device: str = "cpu"
    threads: int | None = None
    seed: int = 1234
    corpus_manifest: Path | None = None
    figures: bool = True
    include_blur: bool = True
    baselines: bool = False
    native: bool = False
    native_only: bool = False
    lopo: bool = False
    lopo_model: str = "ncdn"
    lopo_epochs: int | None = None
    xray: bool = False
    command: str = ""

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvalOptions:
        argv = sys.argv[1:]
        if argv[:1] == ["evaluate"]:
            argv = argv[1:]
        return cls(
            modalities=tuple(args.modality),
            task=args.task,
            images=args.images,
            out=args.out,
            enhancers=tuple(n.strip() for n in args.enhancers.split(",")) if args.enhancers else None,
            max_slices=args.max_slices,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            corpus_manifest=args.corpus,
            figures=not args.no_figures,
            baselines=args.baselines,
            native=args.native or args.native_only,
            native_only=args.native_only,
            lopo=args.lopo,
            lopo_model=args.lopo_model,
            lopo_epochs=args.lopo_epochs,
            xray=getattr(args, "xray", False),
            command="enhance-gateway evaluate " + " ".join(argv),
        )


@dataclass
class Row:
    """One line of the table: an enhancer on one (modality, task, degradation), averaged over slices."""

    group: str
    task: str
    degradation: str
    enhancer: str
    kind: str
    slices: int
    psnr: float
    ssim: float
    ms_per_slice: float
    data_range: str
    psnr_fg: float = float("nan")
    per_slice: list[tuple[str, float, float]] = field(default_factory=list)
    per_patient: dict[str, float] = field(default_factory=dict)  # patient -> mean PSNR over its slices


def load_images_dir(directory: Path) -> list[Slice]:
    """Clean slices from the DICOM files under `directory` (Modality decides the group; others skipped)."""
    import pydicom
    import pydicom.errors

    out: list[Slice] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
            _progress(f"skipping {path.name}: not readable as DICOM ({type(exc).__name__})")
            continue
        group = registry.modality_group(str(ds.get("Modality", "")))
        if group is None or "Rows" not in ds:
            continue
        values, vrange, pixel_mm = corpus._dicom_frames(path)
        for i, frame in enumerate(values):
            pixels = degrade.ct_clean(frame) if group == "CT" else frame
            if group == "CT":
                vrange = (max(vrange[0], degrade.CT_AIR_HU), vrange[1])
            out.append(Slice(path.name, path.name, group, "test", i, pixels, vrange, pixel_mm))
    return out


def _degradations(group: str, task: str, include_blur: bool) -> list[degrade.Degradation]:
    if task in ("sr2x", "sr4x", "deblur"):
        return [degrade.standard({"sr2x": "down2x-area", "sr4x": "down4x-area", "deblur": "deblur-1.5"}[task])]
    names = list(VAL_DEGRADATIONS[group])
    if include_blur:
        names.append("blur-1.0")
    return [degrade.standard(n) for n in names]


def _enhancers(group: str, task: str, only: tuple[str, ...] | None) -> list[registry.EnhancerInfo]:
    metas = [m for m in registry.infos() if m.task == task and group in m.modalities]
    if only is not None:
        metas = [m for m in metas if m.name in only]
    return metas


def _display(
    group: str, img: npt.NDArray[np.floating], ref: npt.NDArray[np.floating]
) -> npt.NDArray[np.uint8]:
    if group == "CT":
        lo, hi = -160.0, 240.0  # soft-tissue window W400 L40: noise and texture visible
    else:
        lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
    scaled = np.clip((np.asarray(img, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)
    return (scaled * 255).astype(np.uint8)


def write_figure(
    path: Path,
    group: str,
    clean: FloatArray,
    degraded: FloatArray,
    enhanced: FloatArray,
    caption: str,
    error_range: float,
) -> None:
    """clean | degraded | enhanced | |enhanced - clean| side by side, each 256 px wide, caption below."""
    from PIL import Image, ImageDraw

    up = degraded
    if degraded.shape != clean.shape:  # sr2x/sr4x: show the low-resolution input at the output size (nearest)
        f = clean.shape[0] // degraded.shape[0]
        up = np.kron(degraded, np.ones((f, f), dtype=np.float32))[: clean.shape[0], : clean.shape[1]]
    err = np.abs(enhanced.astype(np.float64) - clean.astype(np.float64))
    err_img = (np.clip(err / max(error_range, 1e-9), 0, 1) * 255).astype(np.uint8)
    panels = [_display(group, a, clean) for a in (clean, up, enhanced)] + [err_img]
    width = 256
    height = max(1, round(clean.shape[0] * width / clean.shape[1]))
    tiles = [Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR) for p in panels]
    canvas = Image.new("L", (4 * width, height + 46), 0)
    for i, t in enumerate(tiles):
        canvas.paste(t, (i * width, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(("clean", "degraded", "enhanced", f"|error| (white = {error_range:g})")):
        draw.text((i * width + 4, 4), label, fill=255)
    for j, line in enumerate(caption.split("\n")[:3]):
        draw.text((4, height + 4 + 14 * j), line, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def evaluate(opts: EvalOptions) -> list[Row]:
    """Run the evaluation, write evaluation.md, evaluation.csv and figures under `opts.out`; return the rows.

    With `opts.lopo`, run only the leave-one-patient-out evaluation instead and write lopo.md and lopo.csv.
    """
    if opts.threads:
        torch.set_num_threads(opts.threads)
    manifest = opts.corpus_manifest or corpus.MANIFEST_PATH
    if opts.lopo:
        evaluate_lopo(opts, manifest)
        return []
    if opts.xray:  # the radiograph SR/deblur section on its own (docs/evaluation-xray.md)
        from enhancers import xray

        xray.evaluate_xray(
            opts.out,
            manifest=manifest,
            tasks=(opts.task,) if opts.task else xray.XRAY_TASKS,
            only=opts.enhancers,
            figures=opts.figures,
            seed=opts.seed,
            command=opts.command,
        )
        return []
    tasks = (opts.task,) if opts.task else ("denoise", "sr2x")
    if opts.images is not None:
        all_slices = [s for s in load_images_dir(opts.images) if s.group in opts.modalities]
        source_text = f"DICOM files under {opts.images}"
    else:
        all_slices = corpus.load_split(
            "test", opts.modalities, path=manifest, max_per_source=opts.max_slices, denoise=True
        )
        source_text = f"test split of {manifest.name} (sha256 {corpus.manifest_sha256(manifest)[:16]}...)"
    if not all_slices:
        raise ValueError("no images to evaluate for these modalities")
    cache = CTSimCache(default_cache_dir())
    rows: list[Row] = []
    pipes: dict[str, Pipeline] = {}
    figures = opts.out / "figures"
    groups = [] if opts.native_only else [g for g in ("CT", "MR", "XR") if g in opts.modalities]
    for group in groups:
        slices = [s for s in all_slices if s.group == group]
        if not slices:
            continue
        for task in tasks:
            metas = _enhancers(group, task, opts.enhancers)
            if not metas:
                continue
            for deg in _degradations(group, task, opts.include_blur):
                cases = []
                for sl in slices:
                    clean = sl.pixels
                    f = registry.TASK_SCALE[task]
                    if f > 1:
                        clean = clean[: (clean.shape[0] // f) * f, : (clean.shape[1] // f) * f]
                    if deg.name.startswith("ct-"):
                        degraded = cache.get(sl, float(deg.params["i0"]), 0, salt=f"test{opts.seed}")
                        clean = cache.reference(sl)  # the same projection + FBP without noise
                    else:
                        rng = np.random.default_rng(stable_seed("test", opts.seed, sl.key, deg.name))
                        degraded = degrade.apply(
                            deg, clean, rng=rng, value_range=sl.value_range, pixel_mm=sl.pixel_mm
                        )
                    cases.append((sl, clean, degraded))
                _progress(f"{group} {task} {deg.name}: {len(cases)} slice(s) x {len(metas)} enhancer(s)")
                inp_scores = [score(group, c, d) if task == "denoise" else None for _, c, d in cases]
                if task == "denoise":
                    rows.append(
                        _row(
                            group,
                            task,
                            deg.name,
                            INPUT_ROW,
                            "-",
                            cases,
                            [s for s in inp_scores if s is not None],
                            [0.0] * len(cases),
                            [d for _, _, d in cases],
                        )
                    )
                for meta in metas:
                    pipe = pipes.get(meta.name)
                    if pipe is None:
                        pipe = Pipeline(meta.name, device=opts.device, threads=opts.threads)
                        pipes[meta.name] = pipe
                    scores: list[Score] = []
                    times: list[float] = []
                    outs: list[FloatArray] = []
                    for k, (sl, clean, degraded) in enumerate(cases):
                        warm = degraded[:64, :64]
                        pipe.run(warm, modality=group, value_range=sl.value_range)
                        t0 = time.perf_counter()
                        out = pipe.run(degraded, modality=group, value_range=sl.value_range)
                        times.append((time.perf_counter() - t0) * 1000.0)
                        outs.append(out)
                        sc = score(group, clean, out)
                        scores.append(sc)
                        if opts.figures:
                            ref = inp_scores[k]
                            ref_txt = f" (degraded: {ref.psnr:.2f} dB / {ref.ssim:.4f})" if ref else ""
                            caption = (
                                f"{sl.source}#{sl.index}  {deg.name}  {meta.name}\n"
                                f"PSNR {sc.psnr:.2f} dB  SSIM {sc.ssim:.4f}{ref_txt}\n"
                                f"{sc.rule}"
                            )
                            write_figure(
                                figures / group / task / deg.name / f"{sl.source}-{sl.index}-{meta.name}.png",
                                group,
                                clean,
                                degraded,
                                out,
                                caption,
                                0.1 * sc.data_range,
                            )
                    rows.append(_row(group, task, deg.name, meta.name, meta.kind, cases, scores, times, outs))
                    _progress(
                        f"  {meta.name:<14} PSNR {rows[-1].psnr:6.2f} dB  SSIM {rows[-1].ssim:.4f}  "
                        f"{rows[-1].ms_per_slice:8.0f} ms/slice"
                    )
                if task == "denoise" and opts.baselines and not deg.name.startswith("blur"):
                    for bname, fn in baselines_for(group).items():
                        outs, scores, times = [], [], []
                        for sl, clean, degraded in cases:
                            t0 = time.perf_counter()
                            outs.append(fn(clean, degraded, group, sl.value_range))
                            times.append((time.perf_counter() - t0) * 1000.0)
                            scores.append(score(group, clean, outs[-1]))
                        rows.append(
                            _row(group, task, deg.name, bname, "baseline", cases, scores, times, outs)
                        )
                        _progress(
                            f"  {bname:<22} PSNR {rows[-1].psnr:6.2f} dB  fg {rows[-1].psnr_fg:6.2f} dB"
                        )
    extra = _native_section(opts, manifest, all_slices, figures) if opts.native else []
    write_tables(opts, rows, source_text, extra)
    return rows


def evaluate_lopo(opts: EvalOptions, manifest: Path) -> None:
    """`--lopo`: one fold per real patient for CT and MR (X-ray has two radiographs: no folds), lopo.md/.csv."""
    from enhancers import lopo

    opts.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Leave-one-patient-out evaluation",
        "",
        f"- command: `{opts.command or 'enhance-gateway evaluate --lopo'}`",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- corpus: {manifest.name} (sha256 {corpus.manifest_sha256(manifest)[:16]}...); seed {opts.seed}",
        "- CT scored against the noise-free projection + FBP; MR on the anatomy (foreground PSNR) and whole image",
        "",
    ]
    csv_rows: list[list[str]] = []
    for group in (g for g in ("CT", "MR") if g in opts.modalities):
        folds = lopo.run_lopo(
            group,
            model=opts.lopo_model,
            manifest=manifest,
            epochs=opts.lopo_epochs,
            seed=opts.seed,
            threads=opts.threads,
            per_source=opts.max_slices or 2,
            baselines=True,
        )
        lines += lopo.lopo_markdown(group, opts.lopo_model, folds, opts.lopo_epochs)
        csv_rows += lopo.lopo_csv_rows(group, folds)
    (opts.out / "lopo.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(opts.out / "lopo.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["modality", "patient", "method", "psnr_db", "psnr_fg_db"])
        w.writerows(csv_rows)
    print("\n".join(lines))


def _native_section(opts: EvalOptions, manifest: Path, slices: list[Slice], figures: Path) -> list[str]:
    """`--native`: the defaults and NLM on real images at native noise (corpus: every split), and the MR pair."""
    from enhancers import native

    images = (
        slices
        if opts.images is not None
        else native.native_images(manifest, opts.modalities, per_source=opts.max_slices or 3)
    )
    chosen = {
        g: list(opts.enhancers) if opts.enhancers else [*native.defaults_for(g), *native.BASELINES]
        for g in opts.modalities
    }
    fig_dir = figures / "native" if opts.figures else None
    rows = native.run_native(images, chosen, fig_dir, opts.threads)
    pair = []
    if opts.images is None and "MR" in opts.modalities:
        pair = native.run_pair(manifest, native.defaults_for("MR"), fig_dir, opts.threads)
    return native.native_markdown(rows, pair)


def _row(
    group: str,
    task: str,
    deg: str,
    name: str,
    kind: str,
    cases: list[tuple[Slice, FloatArray, FloatArray]],
    scores: list[Score],
    times: list[float],
    outs: list[FloatArray],
) -> Row:
    by_patient: dict[str, list[float]] = {}
    for c, sc in zip(cases, scores, strict=True):
        by_patient.setdefault(c[0].patient, []).append(sc.psnr)
    fg = (
        [foreground_psnr(group, c[1], o) for c, o in zip(cases, outs, strict=True)]
        if task == "denoise"
        else []
    )
    return Row(
        group=group,
        task=task,
        degradation=deg,
        enhancer=name,
        kind=kind,
        slices=len(cases),
        psnr=float(np.mean([s.psnr for s in scores])),
        ssim=float(np.mean([s.ssim for s in scores])),
        ms_per_slice=float(np.mean(times)),
        data_range=scores[0].rule,
        psnr_fg=float(np.mean(fg)) if fg else float("nan"),
        per_slice=[
            (f"{c[0].source}#{c[0].index}", s.psnr, s.ssim) for c, s in zip(cases, scores, strict=True)
        ],
        per_patient={k: float(np.mean(v)) for k, v in by_patient.items()},
    )


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def write_tables(
    opts: EvalOptions, rows: list[Row], source_text: str, extra: list[str] | None = None
) -> None:
    """evaluation.csv (one row per enhancer and degradation) and evaluation.md (grouped tables)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    with open(opts.out / "evaluation.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "modality",
                "task",
                "degradation",
                "enhancer",
                "kind",
                "slices",
                "psnr_db",
                "ssim",
                "ms_per_slice",
                "data_range",
                "psnr_fg_db",
                "patient_min_db",
                "patient_max_db",
                "per_slice",
            ]
        )
        for r in rows:
            w.writerow(
                [
                    r.group,
                    r.task,
                    r.degradation,
                    r.enhancer,
                    r.kind,
                    r.slices,
                    f"{r.psnr:.3f}",
                    f"{r.ssim:.4f}",
                    f"{r.ms_per_slice:.1f}",
                    r.data_range,
                    f"{r.psnr_fg:.3f}",
                    f"{min(r.per_patient.values()):.3f}",
                    f"{max(r.per_patient.values()):.3f}",
                    "; ".join(f"{k} {p:.2f}/{s:.4f}" for k, p, s in r.per_slice),
                ]
            )
    lines = [
        "# Evaluation",
        "",
        "Written by `enhance-gateway evaluate` (regenerate it with the command below). How to read it:",
        "",
        (
            "- Synthetic tables: simulated degradations of the held-out test images, every applicable enhancer, "
            "the degraded input as the floor. Rows marked `baseline` (with `--baselines`) are oracles: NLM with "
            "the h that scores best against the clean image, BM3D given the true noise (CT: its power spectrum), "
            "and for MR both also with the Rician bias correction (`-rc`): what an expert tuning them on this very "
            "image would get, an upper bound for those filters."
        ),
        (
            "- MR: the foreground PSNR column scores the anatomy only; whole-image MR PSNR rewards pushing the "
            "dark background's Rician floor to zero, which says nothing about denoising tissue."
        ),
        (
            "- The test split has one or two images per modality: the per-patient spread across real patients is "
            "in `docs/lopo.md` (leave-one-patient-out, `evaluate --lopo`)."
        ),
        (
            "- Models trained with `--all-patients` (the shipped `ncdn-ct` and `ncdn-mr`) have seen the test images: "
            "their rows here are in-sample. Their held-out figures are the leave-one-patient-out ones in "
            "`docs/lopo.md`. `ncdn-xr` is trained on every patient but the test chest CR's (`train --holdout`): "
            "its XR rows are held out."
        ),
        (
            "- Native section (with `--native`): real images at their own noise, nothing simulated; the checks "
            "say whether what an enhancer removed looks like noise (targets in the section)."
        ),
        (
            "- Radiograph super-resolution (2x, 4x) and deblurring, on the held-out real radiograph: "
            "[evaluation-xray.md](evaluation-xray.md) (`evaluate --xray`, its own section because it runs apart)."
        ),
        "",
        f"- command: `{opts.command or 'enhance-gateway evaluate'}`",
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- images: {source_text}",
        (
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), device {opts.device}"
        ),
        (
            f"- degradation seed: {opts.seed}; CT low dose simulated in the projection domain (720 views, FBP) and "
            "scored against the same projection + FBP without noise (so no enhancer is asked to undo the simulator)"
        ),
        (
            "- PSNR/SSIM against the clean image; CT: HU clipped to [-1000, 1000], data range 2000 HU; "
            "MR and X-ray: data range = max - min of the clean slice; SSIM: 7x7 window, mean over slices"
        ),
        "- ms/slice: wall time of `Pipeline.run` on one slice (after a warm-up), on this machine",
        "",
    ]
    key = None
    for r in rows:
        k = (r.group, r.task, r.degradation)
        if k != key:
            key = k
            lines += [
                "",
                f"## {r.group} {r.task}: {r.degradation} ({r.slices} slice(s); {r.data_range})",
                "",
                "| enhancer | kind | PSNR dB | patients min..max | foreground PSNR dB | SSIM | ms/slice |",
                "|---|---|---:|---:|---:|---:|---:|",
            ]
        ms = "-" if r.enhancer == INPUT_ROW else f"{r.ms_per_slice:.0f}"
        spread = f"{min(r.per_patient.values()):.2f}..{max(r.per_patient.values()):.2f}"
        fg = "-" if np.isnan(r.psnr_fg) else f"{r.psnr_fg:.2f}"
        lines.append(f"| {r.enhancer} | {r.kind} | {r.psnr:.2f} | {spread} | {fg} | {r.ssim:.4f} | {ms} |")
    lines += ["", *(extra or [])]
    (opts.out / "evaluation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
