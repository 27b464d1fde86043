"""The `train`, `evaluate` and `models` subcommands, added to the gateway's CLI by `add_commands`.

Why they live here and not in `gateway/admin/cli.py`: they are about models, not the service, and must work on a
workstation without a gateway configuration. The gateway's CLI calls `add_commands(subparsers)`; until the
console script is wired, `python -m enhancers.cli ...` runs the same handlers. Heavy imports (torch training,
evaluation, pydicom) happen inside the handlers so `enhance-gateway --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enhancers import registry
from enhancers.registry import MODALITY_GROUPS, TASKS


def _modalities(text: str) -> tuple[str, ...]:
    mods = tuple(m.strip().upper() for m in text.split(",") if m.strip())
    bad = [m for m in mods if m not in MODALITY_GROUPS]
    if bad or not mods:
        raise argparse.ArgumentTypeError(
            f"modality must be one or more of {', '.join(MODALITY_GROUPS)} (comma separated)"
        )
    return mods


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `train`, `evaluate` and `models`, each with `func` set to a handler returning an exit code."""
    tr = subparsers.add_parser(
        "train",
        help="train a model on the corpus's training split and write weights, model card and manifest entry",
        description="Train an architecture on patches of the training split (seeded), validate on the validation "
        "split after every epoch, keep the best weights, and write NAME.pt, NAME.card.json and the manifest entry.",
    )
    tr.add_argument(
        "--model",
        required=True,
        help="architecture: ncdn, srcnn, vdsr, unet, srresnet, dncnn, drunet, fastdn, fastsr, srresnet4x, "
        "srcnn-deblur, drunet-deblur, or a linear filter fitted in closed form: wiener-deblur, wiener-sr2x, "
        "wiener-sr4x",
    )
    tr.add_argument(
        "--task", choices=TASKS, default=None, help="denoise, sr2x, sr4x or deblur (default: the architecture's)"
    )
    tr.add_argument("--modality", type=_modalities, required=True, help="CT, MR, XR or a comma list (CT,MR)")
    tr.add_argument(
        "--name", default=None, help="enhancer name (default: MODEL-modality, or MODEL for several)"
    )
    tr.add_argument("--epochs", type=int, default=None, help="epochs (default: the architecture's recipe)")
    tr.add_argument("--steps", type=int, default=None, help="optimiser steps per epoch (default: recipe)")
    tr.add_argument("--patch", type=int, default=None, help="training patch side in output pixels")
    tr.add_argument("--batch", type=int, default=None, help="patches per optimiser step")
    tr.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tr.add_argument("--seed", type=int, default=0, help="random seed (patches, noise, initialisation)")
    tr.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    tr.add_argument("--config", default=None, help="JSON object overriding the architecture config")
    tr.add_argument(
        "--adversarial",
        action="store_true",
        help="add an adversarial + discriminator-feature loss (srresnet, srresnet4x; sets hallucination_risk)",
    )
    tr.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (.pt of the same architecture), e.g. the L1 generator for the SRGAN variant",
    )
    tr.add_argument("--out", type=Path, default=None, help="weights directory (default: enhancers/weights)")
    tr.add_argument(
        "--corpus", type=Path, default=None, help="corpus manifest (default: enhancers/data/manifest.json)"
    )
    tr.add_argument("--max-val-slices", type=int, default=None, help="cap on validation slices (speed)")
    tr.add_argument(
        "--all-patients",
        action="store_true",
        help="train on every patient of every split (the shipped denoisers; the last epoch is kept, and "
        "`evaluate --lopo` measures the recipe leave-one-patient-out)",
    )
    tr.add_argument(
        "--holdout",
        default=None,
        metavar="PATIENT",
        help="train on every patient of every split but this one (a leave-one-patient-out fold; the last epoch "
        "is kept): how a model whose modality has too few real patients for a validation split is trained so "
        "that the held-out patient's images stay an honest test",
    )
    tr.add_argument(
        "--mr-background-weight",
        type=float,
        default=None,
        help="MR denoisers: loss weight of the background (1 on the anatomy; 1 = unweighted; default: the "
        "recipe's); below 1 the epoch is also picked by validation foreground PSNR",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)

    ev = subparsers.add_parser(
        "evaluate",
        help="score every applicable model and baseline on the test split (or DICOM files) per degradation",
        description="Apply each degradation to the clean test images, run every applicable enhancer, and write "
        "a markdown and a CSV table (PSNR/SSIM with the data range stated, ms per slice) and PNG figures.",
    )
    ev.add_argument(
        "--modality", type=_modalities, default=MODALITY_GROUPS, help="CT, MR, XR or a comma list"
    )
    ev.add_argument(
        "--task", choices=TASKS, default=None, help="denoise, sr2x, sr4x or deblur (default: denoise and sr2x)"
    )
    ev.add_argument(
        "--images",
        type=Path,
        default=None,
        help="a directory of DICOM files to use instead of the test split",
    )
    ev.add_argument(
        "--out", type=Path, default=Path("evaluation"), help="output directory for tables and figures"
    )
    ev.add_argument("--enhancers", default=None, help="comma list restricting the enhancers to run")
    ev.add_argument("--max-slices", type=int, default=None, help="cap on slices per source image (speed)")
    ev.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    ev.add_argument("--threads", type=int, default=None, help="CPU threads")
    ev.add_argument("--seed", type=int, default=1234, help="seed of the simulated degradations")
    ev.add_argument(
        "--corpus", type=Path, default=None, help="corpus manifest (default: enhancers/data/manifest.json)"
    )
    ev.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    ev.add_argument(
        "--baselines",
        action="store_true",
        help="add the oracle-tuned baselines (NLM with the best h, BM3D with the true noise; MR also with Rician "
        "bias correction): slow (BM3D ~10 s per 512x512 slice)",
    )
    ev.add_argument(
        "--native",
        action="store_true",
        help="also run the default denoisers on real images at their own noise (no simulation): low-pass "
        "residual, voids, grid, bias per image, crops input|output|difference, and the real-noise MR pair",
    )
    ev.add_argument("--native-only", action="store_true", help="only the --native part")
    ev.add_argument(
        "--lopo",
        action="store_true",
        help="instead: leave-one-patient-out for CT and MR, one training per real patient (slow: minutes per "
        "fold), against the oracle baselines; writes lopo.md and lopo.csv",
    )
    ev.add_argument(
        "--lopo-model", default="ncdn", help="architecture whose recipe --lopo trains (default ncdn)"
    )
    ev.add_argument("--lopo-epochs", type=int, default=None, help="epochs per fold (default: the recipe's)")
    ev.add_argument(
        "--xray",
        action="store_true",
        help="instead: radiograph super-resolution (sr2x, sr4x) and deblurring on the held-out real radiograph "
        "(crops; PSNR/SSIM/MSE/L1 vs bicubic and tuned unsharp, error maps, grid checks); writes "
        "evaluation-xray.md/.csv and evaluation-xray-figures/ (use --task to run one task)",
    )
    ev.set_defaults(func=_evaluate)

    mo = subparsers.add_parser("models", help="list registered enhancers", description="List the registry.")
    mo.add_argument("--json", action="store_true", help="JSON instead of a table")
    mo.set_defaults(func=_models)


def _defaults() -> dict[tuple[str, str], str]:
    """(modality/task label, enhancer) pairs: the plain defaults, and the quality ones marked with a '+'."""
    out: dict[tuple[str, str], str] = {}
    for m in MODALITY_GROUPS:
        for t in TASKS:
            out[(m, t)] = registry.default_enhancer(m, t)
            quality = registry.default_enhancer(m, t, quality=True)
            if quality != out[(m, t)]:
                out[(m, f"{t}+quality")] = quality
    return out


def _models(args: argparse.Namespace) -> int:
    defaults = _defaults()
    metas = registry.infos()
    default_for = {
        meta.name: sorted(f"{m}/{t}" for (m, t), n in defaults.items() if n == meta.name) for meta in metas
    }
    if args.json:
        rows = [
            {
                "name": meta.name,
                "version": meta.version,
                "task": meta.task,
                "modalities": list(meta.modalities),
                "kind": meta.kind,
                "default_for": default_for[meta.name],
                "params": meta.params,
                "weights_sha256": meta.weights_sha256,
                "hallucination_risk": meta.hallucination_risk,
                "description": meta.description,
            }
            for meta in metas
        ]
        print(json.dumps(rows, indent=2))
        return 0
    header = ["name", "task", "modalities", "kind", "default for", "params", "weights sha256", "risk"]
    table: list[list[str]] = [
        [
            meta.name,
            meta.task,
            ",".join(meta.modalities),
            meta.kind,
            ",".join(default_for[meta.name]) or "-",
            str(meta.params),
            meta.weights_sha256[:12] or "-",
            "HALLUCINATION" if meta.hallucination_risk else "-",
        ]
        for meta in metas
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    from enhancers.corpus import CorpusError
    from enhancers.store import WeightsError
    from enhancers.training import TrainOptions, train

    try:
        result = train(TrainOptions.from_namespace(args))
    except (ValueError, TypeError, KeyError, CorpusError, WeightsError, OSError) as exc:
        return _fail(exc)
    print(json.dumps(result, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from enhancers.corpus import CorpusError
    from enhancers.evaluation import EvalOptions, evaluate
    from enhancers.store import WeightsError

    try:
        evaluate(EvalOptions.from_namespace(args))
    except (ValueError, TypeError, KeyError, CorpusError, WeightsError, OSError) as exc:
        return _fail(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m enhancers.cli {train,evaluate,models} ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m enhancers.cli", description="enhancers: train, evaluate, list"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
