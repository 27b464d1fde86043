"""`evaluate --lopo`: leave-one-patient-out evaluation of a training recipe against the oracle baselines.

Why: the corpus has a handful of real patients per modality, so a fixed test split of one or two images
cannot tell models apart (one CT slice decides the ranking). Here every real patient (averaged templates and
the real-noise pair left out) is held out in turn: a model is trained on all the others with the same recipe
as the shipped weights (optionally fewer epochs, stated in the report), then scored on the held-out
patient's slices under the standard degradation, beside the product's `nlm` (h from the estimated noise),
NLM with its h tuned on that image and BM3D given the true noise (both oracles: upper bounds of what those
baselines can do; MR also with the Rician bias correction). The report gives the mean over patients and the worst and best patient, so the spread is seen.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enhancers import corpus, degrade, registry
from enhancers.baselines import baselines_for
from enhancers.corpus import Slice
from enhancers.metrics import foreground_psnr, score
from enhancers.models import register_shipped
from enhancers.pipeline import Pipeline
from enhancers.training import CTSimCache, TrainOptions, default_cache_dir, stable_seed, train

#: The degradation each modality is judged under (the issue's "CT low dose" and "MR Rician 5 %").
LOPO_DEGRADATION: dict[str, str] = {"CT": "ct-i0-2e4", "MR": "mr-rician-0.05"}
INPUT = "(degraded input)"


@dataclass
class Fold:
    """One held-out patient: mean PSNR (and foreground PSNR) over its slices, per method."""

    patient: str
    slices: int
    psnr: dict[str, float] = field(default_factory=dict)
    psnr_fg: dict[str, float] = field(default_factory=dict)


def patients(group: str, manifest: Path) -> list[str]:
    """The real patients of a modality group, over every split (no templates, no real-noise pair)."""
    out: list[str] = []
    for e in corpus.read_manifest(manifest):
        opts = e.get("options", {})
        real = e["included"] and e["group"] == group and not opts.get("template") and not opts.get("pair")
        if real and e["patient"] not in out:
            out.append(e["patient"])
    return out


def _slices_of(patient: str, group: str, manifest: Path, per_source: int) -> list[Slice]:
    out: list[Slice] = []
    for split in corpus.SPLITS:
        got = corpus.load_split(split, (group,), path=manifest, max_per_source=per_source, denoise=True)
        out += [s for s in got if s.patient == patient]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_lopo(
    group: str,
    *,
    model: str,
    manifest: Path,
    epochs: int | None,
    seed: int,
    threads: int | None,
    per_source: int,
    baselines: bool,
) -> list[Fold]:
    """Train one fold per patient and score it with the baselines; returns the folds in patient order."""
    deg = degrade.standard(LOPO_DEGRADATION[group])
    cache = CTSimCache(default_cache_dir())
    folds: list[Fold] = []
    for patient in patients(group, manifest):
        name = f"lopo-{model}-{group.lower()}-{_slug(patient)}"
        with tempfile.TemporaryDirectory(prefix="lopo-") as tmp:
            train(
                TrainOptions(
                    model=model,
                    modalities=(group,),
                    name=name,
                    epochs=epochs,
                    seed=seed,
                    threads=threads,
                    holdout=patient,
                    out=Path(tmp),
                    corpus_manifest=manifest,
                    quiet=True,
                    command=f"evaluate --lopo fold {patient}",
                )
            )
            register_shipped(Path(tmp))
            try:
                pipe = Pipeline(name, device="cpu", threads=threads)
                folds.append(
                    _score_fold(patient, group, pipe, deg, cache, manifest, per_source, seed, baselines)
                )
            finally:
                registry.unregister(name)
        f = folds[-1]
        _progress(
            f"lopo {group} {patient:<22} "
            + "  ".join(f"{k} {v:.2f}" for k, v in (f.psnr_fg if group == "MR" else f.psnr).items())
        )
    return folds


def _score_fold(
    patient: str,
    group: str,
    pipe: Pipeline,
    deg: degrade.Degradation,
    cache: CTSimCache,
    manifest: Path,
    per_source: int,
    seed: int,
    baselines: bool,
) -> Fold:
    slices = _slices_of(patient, group, manifest, per_source)
    scores: dict[str, list[tuple[float, float]]] = {}
    nlm = Pipeline("nlm", device="cpu", threads=pipe.threads)

    def add(method: str, clean: np.ndarray, out: np.ndarray) -> None:
        scores.setdefault(method, []).append(
            (score(group, clean, out).psnr, foreground_psnr(group, clean, out))
        )

    for sl in slices:
        if group == "CT":
            degraded = cache.get(sl, float(deg.params["i0"]), 0, salt=f"lopo{seed}")
            clean = cache.reference(sl)
        else:
            rng = np.random.default_rng(stable_seed("lopo", seed, sl.key, deg.name))
            degraded = degrade.apply(
                deg, sl.pixels, rng=rng, value_range=sl.value_range, pixel_mm=sl.pixel_mm
            )
            clean = sl.pixels
        add(INPUT, clean, degraded)
        add("model", clean, pipe.run(degraded, modality=group, value_range=sl.value_range))
        # the product's own NLM (h from the series noise estimate, no oracle): what a site gets without a model
        add("nlm", clean, nlm.run(degraded, modality=group, value_range=sl.value_range))
        if baselines:
            for bname, fn in baselines_for(group).items():
                add(bname, clean, fn(clean, degraded, group, sl.value_range))
    return Fold(
        patient,
        len(slices),
        {k: float(np.mean([p for p, _ in v])) for k, v in scores.items()},
        {k: float(np.mean([f for _, f in v])) for k, v in scores.items()},
    )


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def lopo_markdown(group: str, model: str, folds: list[Fold], epochs: int | None) -> list[str]:
    """The leave-one-patient-out section: per patient, then mean / min / max and the margin over baselines."""
    if not folds:
        return []
    metric = "foreground PSNR" if group == "MR" else "PSNR"
    values = [f.psnr_fg if group == "MR" else f.psnr for f in folds]
    methods = list(values[0])
    lines = [
        f"## {group} leave-one-patient-out: `{model}` recipe, {LOPO_DEGRADATION[group]}, {metric} (dB)",
        "",
        f"{len(folds)} folds (one per real patient); each fold trained on all other patients"
        + (f" for {epochs} epochs" if epochs else " with the shipped recipe")
        + "; baselines are oracles (tuned on the held-out image with the clean reference).",
        "",
        "| patient | slices | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for f, v in zip(folds, values, strict=True):
        lines.append(f"| {f.patient} | {f.slices} | " + " | ".join(f"{v[m]:.2f}" for m in methods) + " |")
    for label, fn in (("mean", np.mean), ("worst patient", np.min), ("best patient", np.max)):
        lines.append(
            f"| **{label}** | | " + " | ".join(f"{fn([v[m] for v in values]):.2f}" for m in methods) + " |"
        )
    base = [m for m in methods if m.endswith("(oracle)")]
    if base:
        margins = [v["model"] - max(v[m] for m in base) for v in values]
        lines += [
            "",
            (
                f"Margin of the model over the strongest oracle baseline, per patient: mean {np.mean(margins):+.2f} dB, "
                f"worst {min(margins):+.2f} dB, best {max(margins):+.2f} dB."
            ),
        ]
    lines.append("")
    return lines


def lopo_csv_rows(group: str, folds: list[Fold]) -> list[list[str]]:
    """Rows (modality, patient, method, psnr, foreground psnr) for lopo.csv."""
    rows = []
    for f in folds:
        for m in f.psnr:
            fg = f.psnr_fg.get(m, math.nan)
            rows.append([group, f.patient, m, f"{f.psnr[m]:.3f}", f"{fg:.3f}"])
    return rows
