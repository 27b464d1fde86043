"""`train`: fit an architecture on patches of the training split, validate every epoch, keep the best.

Why it is built this way:
- Patches come only from the training split of the corpus manifest (split by patient), so validation and
  test images are never seen, not even as a patch.
- Degradations are drawn fresh (MR, X-ray, SR) or from a disk cache of projection-domain simulations (CT, where
  one realisation costs a filtered back projection), over a *range* of levels around the standard ones, so the
  model is blind to the exact dose or noise level, as it must be on real data.
- Everything random (initialisation, patches, noise, augmentation) comes from `--seed`; validation uses
  fixed, seeded degradations, so epochs are comparable and a rerun reproduces the same numbers on the same
  machine.
- The weights with the best validation PSNR are kept and written with a model card and a manifest entry
  (sha256), which is what the registry loads.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from enhancers import corpus, degrade
from enhancers.base import normalisation_for
from enhancers.corpus import Slice
from enhancers.metrics import foreground_psnr, score
from enhancers.models import architecture, build_module, count_params
from enhancers.models.arch import NOISE_LEVEL_GAIN
from enhancers.models.wiener import LinearRestorer
from enhancers.noise import estimate_noise
from enhancers.pipeline import resolve_device, run_module
from enhancers.registry import TASK_SCALE
from enhancers.store import WEIGHTS_DIR, save_state_dict, update_manifest, write_json

FloatArray = npt.NDArray[np.float32]

#: The noise-conditioned recipes' degradations: a continuum of levels from none (identity pairs, see
#: `Degradations`) to strong low dose, on real images only.
CONDITIONED_DEGRADATIONS: dict[str, Any] = {
    "ct_i0": (5e3, 1e4, 2e4, 4e4, 1e5, 3e5, 1e6),
    "mr_sigma": (0.002, 0.08),
    "identity_share": 0.15,
}

#: Deblurring: the factor on each training slice's own noise level that the noise added after the blur gets,
#: drawn log-uniformly. Why a range and not the native level alone: relative to its stored range the training CR
#: (RG3, sigma 1.6 of 1023) is 2.5x less noisy than the held-out chest CR (~100 of 32767), and the DRRs are
#: noise-free. Trained at the native level only, drunet-deblur learnt to sharpen for that little noise: on the
#: chest crops it beat the unsharp mask by +1.1 dB with the noise at 0.1-0.3x the chest's own and lost 1 dB at
#: its own level (-0.97 dB over the five crops). A model must cope with the noise of radiographs it never saw,
#: as the denoisers are trained over a range of levels.
DEBLUR_NOISE: tuple[float, float] = (0.5, 4.0)
#: ... and the correlation width (px) of that noise, drawn uniformly: white up to about the grain of the CRs (the
#: residual of flat blocks correlates 0.2-0.47 between neighbours on the held-out chest CR, 0.1-0.25 on the
#: training CR: white noise smoothed by 0.5-0.7 px). Why: trained on white noise only (0.5-4x the level),
#: drunet-deblur gained +0.86 dB over the unsharp mask on the chest crops with white noise but -0.00 dB with
#: noise correlated like the CR's own (0.65 px) and -0.58 dB at 0.8 px: it had learnt to remove white noise, not
#: to deblur, and a real blurred acquisition carries the detector's grain, which is not white. Trained over both
#: ranges: +0.39 dB with white noise (the evaluation's), +0.40 to +0.57 dB with noise correlated over 0.5-0.8 px,
#: 5 of 5 crops each, and on the CR as received it changes 0.5-1.0 sigma per pixel where the white-trained model
#: changed 0.8-1.9 and raised the grain 1.2-1.3x (docs/evaluation-xray.md, enhancers.models.variants).
DEBLUR_CORR: tuple[float, float] = (0.0, 1.0)

#: How a training batch picks its slices (the recipe's `sample`): "area" draws a slice in proportion to its pixel
#: count, "patient" gives each patient the same share (`PatchSampler._slice_weights`).
SAMPLING = ("area", "patient")

#: Per-architecture training recipes (the shipped weights were trained with these unless their card says
#: otherwise). `steps` optimiser steps make one epoch. Sized for a 2-core CPU: minutes, not hours.
#: What the two deblurring recipes share: MSE at lr 1e-3 with the evaluation's blur and `DEBLUR_NOISE`/`_CORR`,
#: real radiographs only. Why no DRRs: they are noise-free at their own level, so their pairs teach a strong
#: inverse filter that amplifies a real acquisition's noise. Measured with a 15 x 15 linear filter fitted by
#: least squares on blurred acquisitions of training images and scored on the held-out chest crops, against
#: the tuned unsharp mask: fitted on the real training CR +1.90 dB, on the DRRs -8.58, on both by area -0.22.
_DEBLUR: dict[str, Any] = {
    "xr_drr": False,
    "lr": 1e-3,
    "loss": "mse",
    "config": {},
    "blur_sigma": (1.5, 1.5),
    "deblur_noise": DEBLUR_NOISE,
    "deblur_corr": DEBLUR_CORR,
}

RECIPES: dict[str, dict[str, Any]] = {
    "drunet": {"epochs": 12, "steps": 60, "patch": 64, "batch": 16, "lr": 1e-3, "loss": "l1", "config": {}},
    "ncdrunet": {
        "epochs": 12,
        "steps": 60,
        "patch": 64,
        "batch": 16,
        "lr": 1e-3,
        "loss": "l1",
        "config": {},
        **CONDITIONED_DEGRADATIONS,
    },
    "unet": {"epochs": 12, "steps": 60, "patch": 64, "batch": 16, "lr": 1e-3, "loss": "l1", "config": {}},
    "dncnn": {
        "epochs": 12,
        "steps": 60,
        "patch": 64,
        "batch": 16,
        "lr": 1e-3,
        "loss": "mse",
        "config": {"depth": 17, "features": 32, "unshuffle": 1},
    },
    "fastdn": {"epochs": 12, "steps": 100, "patch": 96, "batch": 16, "lr": 1e-3, "loss": "l1", "config": {}},
    "srcnn": {"epochs": 12, "steps": 80, "patch": 64, "batch": 16, "lr": 1e-3, "loss": "mse", "config": {}},
    "vdsr": {"epochs": 12, "steps": 50, "patch": 48, "batch": 8, "lr": 3e-4, "loss": "mse", "config": {}},
    "srresnet": {
        "epochs": 12,
        "steps": 50,
        "patch": 64,
        "batch": 8,
        "lr": 5e-4,
        "loss": "l1",
        "config": {"blocks": 8, "features": 64},
    },
    "fastsr": {"epochs": 12, "steps": 100, "patch": 96, "batch": 16, "lr": 1e-3, "loss": "l1", "config": {}},
    # X-ray super-resolution and deblurring (issue 14): large patches, because the real radiographs are few and
    # the DRRs small; sized for a few minutes each on one shared CPU thread.
    # srresnet4x: nearest 2x + conv instead of pixel shuffle (the shuffle models left a 0.055-sigma phase grid
    # on the CR as received; nearest 0.041, bilinear learnt nothing: +0.01 dB), 300 steps an epoch because the
    # loss was still falling at 200 (enhancers.models.variants). Each patient the same share of the batches
    # (`sample`): by area the leg CR was 86 % of them and the DRRs of the head CT 14 %; on the held-out chest CR
    # +0.21 dB over bicubic4x where by area +0.09, native grid 0.014 where 0.041 (docs/evaluation-xray.md).
    "srresnet4x": {
        "epochs": 8,
        "steps": 300,
        "patch": 96,
        "batch": 8,
        "lr": 1e-3,
        "loss": "l1",
        "sample": "patient",
        "config": {"upsample": "nearest"},
    },
    # srcnn-deblur: lr 1e-3 with its correction scaled by 0.01 (variants), at the evaluation's blur like
    # drunet-deblur. Why: the first weights (lr 3e-4, scale 1, blind 0.8-2.2 px) never left the unsharp mask, and
    # on four blurred-acquisition patches of the training CR scale 1 jumped to 3x (3e-4) and 8x (1e-3) the mask's
    # MSE in its first steps; at scale 0.01 it fell steadily (0.994 x after 60 steps).
    # Both deblurring recipes share `_DEBLUR` (the noise after the blur at 0.5-4x each slice's own level).
    "srcnn-deblur": {"epochs": 6, "steps": 50, "patch": 96, "batch": 16, **_DEBLUR},
    # MSE: the correction to learn was mostly the reference's own noise when the blur had no noise after it, and
    # L1's sign gradient of it averaged to nothing (the first weights, L1 at 3e-4, never left the unsharp mask;
    # see enhancers.models.variants). The blur of the evaluation (1.5 px), which is what `unsharp-deblur` was
    # tuned for on the training images: the same knowledge as the baseline. Trained blind over 0.8-2.2 px it
    # learnt to soften the mask (tuned for 1.5 px, it over-sharpens smaller blurs): at 1.5 px its correction was
    # -0.14 x the mask's where the best is +0.29 x, -0.11 dB on the held-out CR.
    "drunet-deblur": {"epochs": 12, "steps": 150, "patch": 64, "batch": 8, **_DEBLUR},
    # The fitted linear filters (enhancers.models.wiener): `epochs` = noise realisations of every training slice
    # summed into one least-squares solve (steps, patch, batch and lr unused). Super-resolution's degradation
    # (an area mean) has no noise: one realisation is the whole data.
    "wiener-deblur": {"epochs": 8, "steps": 1, "patch": 96, "batch": 1, **_DEBLUR, "lr": 0.0},
    "wiener-sr2x": {"epochs": 1, "steps": 1, "patch": 96, "batch": 1, "lr": 0.0, "loss": "mse", "config": {}},
    "wiener-sr4x": {"epochs": 1, "steps": 1, "patch": 96, "batch": 1, "lr": 0.0, "loss": "mse", "config": {}},
    "ncdn": {
        "epochs": 16,
        "steps": 100,
        "patch": 96,
        "batch": 16,
        "lr": 1e-3,
        "loss": "l1",
        "config": {},
        "mr_background_weight": 1.0,
        # MR alone (`--modality MR`): MSE weighted towards the anatomy. Why: on the leave-one-patient-out fold it
        # matched the L1 recipe (foreground 33.60 vs 33.51 dB) and it halves the dark tissue the model blanks (3.1
        # -> 1.5 % of the anatomy below half its value); on the real images its voids are 0 % where the L1
        # model's are 0.18 % (docs/lopo.md, docs/evaluation.md). Each MR patient the same share of the batches
        # (`sample`): by area the 1024 x 1024 shoulder was 58 % of them and the 64 x 64 EPI 2 %; on the held-out
        # abdomen (fold 021234567, 48 epochs) foreground PSNR 33.69 -> 34.60 dB (docs/lopo.md).
        # X-ray alone: a leaky full-resolution gate (`leak` 0.1), the DRRs joining the one real training
        # radiograph as noise-free truth, 48 epochs. Why: the 16-epoch ReLU recipe (real CRs and CT/MR proxies
        # only) left radiographs underfit: 11 of its 16 full-resolution gate channels were dead (zero on > 95 %
        # of the pixels of both CRs), on its own leg patches its L1 was 0.0026 where a 1 px Gaussian gives
        # 0.0019, and on the test chest CR at 2000 photons it scored 40.4 dB where the product's nlm gives
        # 42.4. With the DRRs and 48 epochs but ReLU at lr 3e-3 all 16 died (the output was the input). With
        # the leak (lr 1e-3): loss 0.0068 -> 0.0030 over the epochs, 11 of 16 channels positive on the CRs
        # (the others still pass a tenth of their gradient), the held-out chest hilum at 2000 photons 33.6 ->
        # 36.9 dB. Trained with `--holdout` of the chest CR's patient so that the test radiograph stays unseen
        # (no radiograph is left for a validation split).
        "by_modality": {
            "MR": {"loss": "mse", "mr_background_weight": 0.1, "sample": "patient"},
            "XR": {"epochs": 48, "xr_drr": True, "config": {"leak": 0.1}},
        },
        **CONDITIONED_DEGRADATIONS,
    },
}

#: Training degradation ranges (blind: the model must cope with any level in the range).
TRAIN_CT_I0: tuple[float, ...] = (1e4, 2e4, 2e4, 3e4, 5e4, 1e5, 1e5, 2e5)
TRAIN_CT_REALISATIONS = 2
TRAIN_MR_SIGMA: tuple[float, float] = (0.01, 0.08)
TRAIN_XR_PEAK: tuple[float, float] = (500.0, 20000.0)
TRAIN_XR_READ: tuple[float, float] = (0.0, 0.004)
#: Validation levels (fixed): the standard levels of `enhancers.degrade.STANDARD`.
VAL_DEGRADATIONS: dict[str, tuple[str, ...]] = {
    "CT": ("ct-i0-1e5", "ct-i0-2e4"),
    "MR": ("mr-rician-0.03", "mr-rician-0.05"),
    "XR": ("xr-pg-2000",),
}
#: Patches are redrawn from a fresh set of degraded slices every this many steps.
REFRESH_STEPS = 20


def default_cache_dir() -> Path:
    """Where CT simulations are cached: $ENHANCERS_CACHE, else $XDG_CACHE_HOME or ~/.cache, /enhance-gateway."""
    env = os.environ.get("ENHANCERS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enhance-gateway"


def stable_seed(*parts: object) -> int:
    """A seed that depends only on the parts' text (Python's hash() is salted per process)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode("utf-8"))


@dataclass
class TrainOptions:
    """Everything that defines a training run; recorded in the model card."""

    model: str
    modalities: tuple[str, ...]
    task: str | None = None
    name: str | None = None
    epochs: int | None = None
    steps: int | None = None
    patch: int | None = None
    batch: int | None = None
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    adversarial: bool = False
    #: Weights (.pt of the same architecture and config) to start from instead of a random initialisation:
    #: the SRGAN variant starts from its L1 generator, as in the paper.
    init: Path | None = None
    out: Path | None = None
    corpus_manifest: Path | None = None
    max_val_slices: int | None = None
    all_patients: bool = False
    holdout: str | None = None
    quiet: bool = False
    cache: Path | None = None
    command: str = ""
    #: Overrides the recipe's `mr_background_weight` (see `weighted_loss`); None: the recipe's.
    mr_background_weight: float | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainOptions:
        import json

        config = json.loads(args.config) if args.config else {}
        if not isinstance(config, dict):
            raise TypeError("--config must be a JSON object")
        return cls(
            model=args.model,
            modalities=tuple(args.modality),
            task=args.task,
            name=args.name,
            epochs=args.epochs,
            steps=args.steps,
            patch=args.patch,
            batch=args.batch,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            threads=args.threads,
            config=config,
            adversarial=args.adversarial,
            init=getattr(args, "init", None),
            out=args.out,
            corpus_manifest=args.corpus,
            max_val_slices=args.max_val_slices,
            all_patients=args.all_patients,
            holdout=getattr(args, "holdout", None),
            quiet=args.quiet,
            mr_background_weight=getattr(args, "mr_background_weight", None),
            # shell-quoted, so a card's command with `--config '{...}'` can be pasted back as it is
            command="enhance-gateway train "
            + shlex.join(sys.argv[1:] if sys.argv[1:2] != ["train"] else sys.argv[2:]),
        )


class CTSimCache:
    """Projection-domain low-dose realisations of clean CT slices, cached as .npy files (one FBP each)."""

    def __init__(self, directory: Path | None, projector: degrade.CTProjector | None = None) -> None:
        self.directory = directory
        self.projector = projector or degrade.CTProjector()

    def reference(self, sl: Slice) -> FloatArray:
        """The noise-free projection + FBP of `sl` (`degrade.ct_reconstructed`): what a low-dose case is scored
        and trained against; cached like the realisations."""
        return self._cached(f"{sl.source}-{sl.index}-ref-a{self.projector.n_angles}", sl, None)

    def get(self, sl: Slice, i0: float, realisation: int, salt: str = "train") -> FloatArray:
        key = f"{sl.source}-{sl.index}-i0{i0:g}-r{realisation}-a{self.projector.n_angles}-{salt}"
        return self._cached(key, sl, i0)

    def _cached(self, key: str, sl: Slice, i0: float | None) -> FloatArray:
        checksum = zlib.crc32(sl.pixels.tobytes())
        path = None
        if self.directory is not None:
            path = self.directory / "ct-sim" / f"{key}-{checksum:08x}.npy"
            if path.is_file():
                cached: FloatArray = np.load(path).astype(np.float32)
                return cached
        if i0 is None:
            out = degrade.ct_reconstructed(sl.pixels, pixel_mm=sl.pixel_mm, projector=self.projector)
        else:
            rng = np.random.default_rng(stable_seed(key, checksum))
            out = degrade.ct_low_dose(
                sl.pixels, i0=i0, rng=rng, pixel_mm=sl.pixel_mm, projector=self.projector
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
        return out


@dataclass
class _Pair:
    inp: FloatArray  # normalised network input (LR for sr2x)
    tgt: FloatArray  # normalised target
    bucket: str
    patient: str
    foreground: float  # normalised level above which a target pixel counts as foreground
    level: float = 0.0  # normalised noise level given to a noise-conditioned network
    weight: FloatArray | None = None  # per-pixel loss weight (target geometry); None: uniform


@dataclass(frozen=True)
class Degradations:
    """The training degradation ranges of one recipe (the blind defaults unless the recipe says otherwise).

    `identity_share`: for a noise-conditioned network, the share of training slices left as they are (target =
    input) with a level drawn between 0 and their own estimated noise: what teaches it to leave an image at
    its native noise alone, and to touch it less when a route lowers the strength.
    """

    ct_i0: tuple[float, ...] = TRAIN_CT_I0
    mr_sigma: tuple[float, float] = TRAIN_MR_SIGMA
    identity_share: float = 0.0
    #: the deblurring blur's sigma range (pixels), drawn uniformly
    blur_sigma: tuple[float, float] = degrade.DEBLUR_TRAIN_SIGMA
    #: deblurring: the noise added after the blur is the slice's own level times a factor drawn log-uniformly in
    #: this range ((1, 1): the native level only, as the evaluation)
    deblur_noise: tuple[float, float] = (1.0, 1.0)
    #: deblurring: the correlation width (px) of that noise, drawn uniformly ((0, 0): white)
    deblur_corr: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> Degradations:
        return cls(
            tuple(recipe.get("ct_i0", TRAIN_CT_I0)),
            tuple(recipe.get("mr_sigma", TRAIN_MR_SIGMA)),
            float(recipe.get("identity_share", 0.0)),
            tuple(recipe.get("blur_sigma", degrade.DEBLUR_TRAIN_SIGMA)),
            tuple(recipe.get("deblur_noise", (1.0, 1.0))),
            tuple(recipe.get("deblur_corr", (0.0, 0.0))),
        )


def noise_level(degraded: FloatArray, group: str, scale: float) -> float:
    """The normalised noise level a conditioned network is given: the series estimate / the normalisation scale.

    Training and inference use the same estimator on the image the network sees, so whatever it reads on real
    data is what the network learnt to expect.
    """
    return estimate_noise(degraded, group).sigma / scale


class PatchSampler:
    """Draws (input, target) patch batches from the training slices, refreshing degradations regularly."""

    def __init__(
        self,
        slices: list[tuple[Slice, str]],
        task: str,
        rng: np.random.Generator,
        ct_cache: CTSimCache,
        *,
        conditioned: bool = False,
        degradations: Degradations | None = None,
        mr_background_weight: float = 1.0,
        sample: str = "area",
    ) -> None:
        if not slices:
            raise ValueError("no training slices for these modalities")
        if sample not in SAMPLING:
            raise ValueError(f"unknown patch sampling {sample!r}; one of {', '.join(SAMPLING)}")
        self.slices = slices  # (slice, group it is trained as)
        self.task = task
        self.rng = rng
        self.ct_cache = ct_cache
        self.scale = TASK_SCALE[task]
        self.conditioned = conditioned
        self.degradations = degradations or Degradations()
        self.mr_background_weight = mr_background_weight
        self.sample = sample
        self.pairs: list[_Pair] = []
        self._native_sigma: dict[str, float] = {}  # deblur: each slice's own noise level, by slice key

    def _target(self, sl: Slice, group: str, identity: bool) -> FloatArray:
        """What the network must output: CT low dose is trained against its noise-free reconstruction."""
        if self.task == "denoise" and group == "CT" and sl.group == "CT" and not identity:
            return self.ct_cache.reference(sl)
        return sl.pixels

    def _degrade(self, sl: Slice, group: str) -> tuple[FloatArray, tuple[float, float]]:
        if self.task in ("sr2x", "sr4x"):
            return degrade.downsample_area(sl.pixels, self.scale), sl.value_range
        if self.task == "deblur":
            # a blurred acquisition, as the evaluation makes it: the detector's noise at the slice's own level
            # after the blur, then integers (`degrade.blurred_acquisition`: a blur alone only attenuates the
            # reference's grain, and a model learnt to amplify it back). The DRRs follow the same rule: they are
            # noise-free projections, so their level is ~0.03 % of full scale and their pairs teach the blur.
            sigma = float(self.rng.uniform(*self.degradations.blur_sigma))
            vrange = sl.value_range if sl.group == group else (float(sl.pixels.min()), float(sl.pixels.max()))
            if sl.key not in self._native_sigma:
                self._native_sigma[sl.key] = degrade.native_noise_sigma(sl.pixels)
            lo, hi = np.log(self.degradations.deblur_noise)
            level = self._native_sigma[sl.key] * float(np.exp(self.rng.uniform(lo, hi)))
            noisy = degrade.blurred_acquisition(
                sl.pixels,
                sigma=sigma,
                noise_sigma=level,
                rng=self.rng,
                value_range=vrange,
                noise_corr_px=float(self.rng.uniform(*self.degradations.deblur_corr)),
            )
            return noisy, vrange
        if group == "CT":
            i0 = float(self.rng.choice(self.degradations.ct_i0))
            k = int(self.rng.integers(TRAIN_CT_REALISATIONS))
            return self.ct_cache.get(sl, i0, k), sl.value_range
        if group == "MR":
            frac = float(self.rng.uniform(*self.degradations.mr_sigma))
            return degrade.mr_rician(sl.pixels, sigma_fraction=frac, rng=self.rng), sl.value_range
        vrange = sl.value_range if sl.group == "XR" else (float(sl.pixels.min()), float(sl.pixels.max()))
        peak = float(np.exp(self.rng.uniform(np.log(TRAIN_XR_PEAK[0]), np.log(TRAIN_XR_PEAK[1]))))
        read = float(self.rng.uniform(*TRAIN_XR_READ))
        noisy = degrade.xray_poisson_gaussian(
            sl.pixels, peak_photons=peak, read_sigma=read, value_range=vrange, rng=self.rng
        )
        return noisy, vrange

    def refresh(self) -> None:
        pairs = []
        for sl, group in self.slices:
            identity = self.conditioned and float(self.rng.random()) < self.degradations.identity_share
            if identity:
                vrange = (
                    sl.value_range if sl.group == group else (float(sl.pixels.min()), float(sl.pixels.max()))
                )
                degraded = sl.pixels
            else:
                degraded, vrange = self._degrade(sl, group)
            norm = normalisation_for(group, degraded[None], vrange)
            clean = self._target(sl, group, identity)
            if self.scale > 1:
                clean = clean[: degraded.shape[0] * self.scale, : degraded.shape[1] * self.scale]
            tgt = norm.forward(clean)
            lo, hi = float(tgt.min()), float(tgt.max())
            bucket = group if sl.group == group else f"{group}-proxy"
            level = noise_level(degraded, group, norm.scale) if self.conditioned else 0.0
            if identity:
                level *= float(self.rng.uniform(0.0, 1.0))
            weight = None
            if group == "MR" and self.task == "denoise" and self.mr_background_weight != 1.0:
                weight = foreground_weight(clean, self.mr_background_weight)
            pairs.append(
                _Pair(norm.forward(degraded), tgt, bucket, sl.patient, lo + 0.05 * (hi - lo), level, weight)
            )
        self.pairs = pairs

    def _slice_weights(self, pairs: list[_Pair]) -> npt.NDArray[np.float64]:
        """Probability of each slice of one bucket: by area, or ("patient") each patient the same share, split
        by area among its slices. Why "patient": by area one large image or one patient's many slices (the
        1024x1024 shoulder MR, 58 % of the MR pixels; the leg CR, 86 % of the radiograph pixels beside the DRRs)
        teaches the network its own texture and noise more than the others'."""
        area = np.array([p.tgt.size for p in pairs], dtype=np.float64)
        if self.sample == "patient":
            patients = [p.patient for p in pairs]
            per_patient = {q: sum(a for a, r in zip(area, patients) if r == q) for q in set(patients)}
            area = np.array([a / per_patient[q] for a, q in zip(area, patients)], dtype=np.float64)
        prob: npt.NDArray[np.float64] = area / area.sum()
        return prob

    def pixel_weights(self) -> list[float]:
        """Each pair's weight per pixel such that a sum over all pixels weighs the slices as `weighted_batch`
        draws them (buckets alike, slices by `sample` within one): what a closed-form fit sums with."""
        groups = self._by_bucket(self.pairs)
        weight = {}
        for pairs in groups.values():
            for p, prob in zip(pairs, self._slice_weights(pairs), strict=True):
                weight[id(p)] = float(prob) / (len(groups) * p.tgt.size)
        return [weight[id(p)] for p in self.pairs]

    @staticmethod
    def _by_bucket(pairs: list[_Pair]) -> dict[str, list[_Pair]]:
        """The pairs grouped by bucket, buckets in sorted order (each bucket draws the same share of a batch)."""
        return {b: [p for p in pairs if p.bucket == b] for b in sorted({p.bucket for p in pairs})}

    def batch(self, n: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = self.weighted_batch(n, patch)
        return x, y

    def weighted_batch(self, n: int, patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`batch` plus the per-pixel loss weights of the targets (None when every pair is weighted uniformly)."""
        s = self.scale
        patch = patch - patch % (2 * s)
        usable = [p for p in self.pairs if min(p.tgt.shape) >= patch]
        if not usable:
            raise ValueError(f"no training slice is at least {patch} pixels; use a smaller --patch")
        by_bucket = self._by_bucket(usable)
        buckets = list(by_bucket)
        weights = {b: self._slice_weights(ps) for b, ps in by_bucket.items()}
        inps, tgts, wts = [], [], []
        weighted = any(p.weight is not None for p in usable)
        for _ in range(n):
            b = buckets[int(self.rng.integers(len(buckets)))]
            w = weights[b]
            pair = by_bucket[b][int(self.rng.choice(len(w), p=w))]
            for attempt in range(10):
                y = int(self.rng.integers(0, (pair.tgt.shape[0] - patch) // s + 1)) * s
                x = int(self.rng.integers(0, (pair.tgt.shape[1] - patch) // s + 1)) * s
                t = pair.tgt[y : y + patch, x : x + patch]
                if float(np.mean(t > pair.foreground)) > 0.1 or attempt == 9 or self.rng.random() < 0.1:
                    break
            i = pair.inp[y // s : (y + patch) // s, x // s : (x + patch) // s]
            wt = np.ones_like(t) if pair.weight is None else pair.weight[y : y + patch, x : x + patch]
            k = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            t, i, wt = np.rot90(t, k), np.rot90(i, k), np.rot90(wt, k)
            if flip:
                t, i, wt = t[:, ::-1], i[:, ::-1], wt[:, ::-1]
            if self.conditioned:
                i = np.stack([i, np.full_like(i, pair.level * NOISE_LEVEL_GAIN)])
            inps.append(np.ascontiguousarray(i))
            tgts.append(np.ascontiguousarray(t))
            wts.append(np.ascontiguousarray(wt))
        inp = np.stack(inps)
        return (
            torch.from_numpy(inp if self.conditioned else inp[:, None]),
            torch.from_numpy(np.stack(tgts)[:, None]),
            torch.from_numpy(np.stack(wts)[:, None]) if weighted else None,
        )


def fit_least_squares(module: LinearRestorer, sampler: PatchSampler, realisations: int) -> float:
    """Set `module`'s filters to the least-squares fit of the training pairs (each phase's filter constrained
    to sum 1, the mean-preserving Wiener filter), over `realisations` fresh degradations of every training
    slice, whole images with reflected borders as `forward` pads them; returns the training MSE (normalised
    units, the mean over phases).

    Why closed form: the optimum of a linear filter is one linear solve, exact and deterministic, where Adam
    in the few thousand CPU steps of a recipe would only approach it."""
    size, s = module.size, module.scale
    half, k = size // 2, size * size
    normal = np.zeros((k, k))  # the same input windows serve every output phase
    rhs = np.zeros((s * s, k))
    energy = np.zeros(s * s)
    for _ in range(realisations):
        sampler.refresh()
        for pair, weight in zip(sampler.pairs, sampler.pixel_weights(), strict=True):
            padded = np.pad(pair.inp.astype(np.float64), half, mode="reflect")
            windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
            for y in range(0, pair.inp.shape[0], 32):  # in bands of rows: one copy of all windows is GBs
                a = windows[y : y + 32].reshape(-1, k)
                normal += weight * (a.T @ a)
                for phase in range(s * s):
                    dy, dx = divmod(phase, s)
                    t = pair.tgt[dy::s, dx::s][y : y + 32].reshape(-1).astype(np.float64)
                    rhs[phase] += weight * (a.T @ t)
                    energy[phase] += weight * float(t @ t)
    coef = np.empty((s * s, k))
    mse = []
    ones = np.ones(k)
    n = normal + np.eye(k) * 1e-9 * np.trace(normal) / k  # noise-free pairs: near-singular
    along = np.linalg.solve(n, ones)
    for phase in range(s * s):
        free = np.linalg.solve(n, rhs[phase])
        c = free - along * (ones @ free - 1.0) / (ones @ along)  # the closest filter that sums to 1
        coef[phase] = c
        mse.append((c @ normal @ c - 2.0 * c @ rhs[phase] + energy[phase]) / realisations)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(coef.reshape(s * s, 1, size, size)))
    return float(np.mean(mse))


def foreground_weight(clean: FloatArray, background_weight: float) -> FloatArray:
    """The MR loss weight map of one target: 1 on the anatomy, `background_weight` elsewhere.

    Why: on an MR magnitude image most pixels are background at the Rician floor, and a uniform loss spends the
    network's capacity on that floor (the easy dB of `score`'s whole-image PSNR) rather than on the tissue a
    reader looks at. The anatomy is `enhancers.qa.foreground_mask` of the clean target, the same mask
    foreground PSNR (`evaluate --lopo`) and the native checks use; the background keeps a small weight so the
    floor is still learnt rather than left free.
    """
    from enhancers.qa import foreground_mask

    mask = foreground_mask(clean, "MR")
    return np.where(mask, np.float32(1.0), np.float32(background_weight)).astype(np.float32)


def weighted_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, name: str
) -> torch.Tensor:
    """`name` ("mse" or "l1") of pred - target, averaged with per-pixel `weight` (sum(w e) / sum(w)); the plain
    mean when `weight` is None."""
    err = (pred - target) ** 2 if name == "mse" else (pred - target).abs()
    if weight is None:
        return err.mean()
    return (err * weight).sum() / weight.sum().clamp_min(1e-8)


@dataclass
class ValCase:
    """One fixed validation case: a clean slice, its degraded version, and how to normalise and score it."""

    key: str
    group: str  # the group the model is run as (normalisation)
    score_group: str
    degradation: str
    clean: FloatArray
    degraded: FloatArray
    value_range: tuple[float, float]


def validation_cases(
    slices: list[tuple[Slice, str]], task: str, seed: int, ct_cache: CTSimCache
) -> list[ValCase]:
    """Fixed degradations of the validation slices (seeded by slice and degradation, not by epoch)."""
    cases: list[ValCase] = []
    for sl, group in slices:
        vrange = sl.value_range if sl.group == group else (float(sl.pixels.min()), float(sl.pixels.max()))
        if task in ("sr2x", "sr4x", "deblur"):
            f = TASK_SCALE[task]
            h, w = (sl.pixels.shape[0] // f) * f, (sl.pixels.shape[1] // f) * f
            clean = sl.pixels[:h, :w]
            dname = {"sr2x": "down2x-area", "sr4x": "down4x-area", "deblur": "deblur-1.5"}[task]
            rng = np.random.default_rng(stable_seed("val", seed, sl.key, dname))
            degraded = degrade.apply(degrade.standard(dname), clean, rng=rng, value_range=vrange)
            cases.append(ValCase(sl.key, group, group, dname, clean, degraded, vrange))
            continue
        for dname in VAL_DEGRADATIONS[group]:
            deg = degrade.standard(dname)
            clean = sl.pixels
            if group == "CT":
                degraded = ct_cache.get(sl, float(deg.params["i0"]), 0, salt=f"val{seed}")
                clean = ct_cache.reference(sl)
            else:
                rng = np.random.default_rng(stable_seed("val", seed, sl.key, dname))
                degraded = degrade.apply(deg, sl.pixels, rng=rng, value_range=vrange, pixel_mm=sl.pixel_mm)
            cases.append(ValCase(sl.key, group, group, dname, clean, degraded, vrange))
    return cases


def enhance_case(
    module: nn.Module, case: ValCase, scale: int, halo: int, device: str, conditioned: bool = False
) -> FloatArray:
    """Run a live module on one case exactly as the pipeline would (normalise, estimate, tile, invert, clip)."""
    norm = normalisation_for(case.group, case.degraded[None], case.value_range)
    y = run_module(
        module,
        norm.forward(case.degraded[None]),
        scale=scale,
        tile=512,
        halo=halo,
        batch_size=4,
        device=device,
        level=noise_level(case.degraded, case.group, norm.scale) if conditioned else None,
    )
    out: FloatArray = np.clip(norm.inverse(y)[0], case.value_range[0], case.value_range[1]).astype(np.float32)
    return out


def validate(
    module: nn.Module, cases: list[ValCase], scale: int, halo: int, device: str, conditioned: bool = False
) -> tuple[float, float, float]:
    """Mean PSNR, SSIM and foreground PSNR (`metrics.foreground_psnr`) over the validation cases (each scored
    with the evaluation's data range); NaN if none."""
    if not cases:
        return math.nan, math.nan, math.nan
    module.eval()
    ps, ss, fs = [], [], []
    for case in cases:
        out = enhance_case(module, case, scale, halo, device, conditioned)
        sc = score(case.score_group, case.clean, out)
        ps.append(sc.psnr)
        ss.append(sc.ssim)
        fs.append(foreground_psnr(case.score_group, case.clean, out))
    return float(np.mean(ps)), float(np.mean(ss)), float(np.mean(fs))


def validate_classical(name: str, cases: list[ValCase]) -> tuple[float, float]:
    """Mean PSNR and SSIM of a classical baseline on the validation cases, through the pipeline."""
    from enhancers.pipeline import Pipeline

    pipe = Pipeline(name, device="cpu")
    ps, ss = [], []
    for case in cases:
        out = pipe.run(case.degraded, modality=case.group, value_range=case.value_range)
        sc = score(case.score_group, case.clean, out)
        ps.append(sc.psnr)
        ss.append(sc.ssim)
    return float(np.mean(ps)), float(np.mean(ss))


class _Discriminator(nn.Module):
    """A small patch discriminator for the optional adversarial loss (SRGAN-style, fewer layers).

    `features` also gives its intermediate activations: the SRGAN variant's perceptual loss compares the
    generator's output and the target there (feature matching, Salimans et al. 2016), because the ImageNet VGG
    the paper uses is not available offline and was never trained on radiographs anyway.
    """

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate((features, features, features * 2, features * 2, features * 4)):
            layers += [nn.Conv2d(cin, cout, 3, stride=1 + i % 2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each LeakyReLU (the perceptual loss's feature space)."""
        feats: list[torch.Tensor] = []
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return feats


#: The SRGAN variant's loss weights (ESRGAN's: Wang et al. 2018): L1 keeps the intensities anchored, the feature
#: loss asks for the target's texture statistics, the adversarial term for "looks real". Applied on top of a
#: generator initialised from the L1 model (`--init`).
GAN_WEIGHTS: dict[str, float] = {"l1": 1e-2, "feature": 1.0, "adversarial": 5e-3}


def _progress(quiet: bool, text: str, end: bool = False) -> None:
    if quiet:
        return
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text + ("\n" if end else ""))
    elif end:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _training_slices(
    groups: tuple[str, ...],
    split: str | tuple[str, ...],
    manifest: Path,
    task: str = "denoise",
    holdout: str | None = None,
    drr: bool = False,
) -> list[tuple[Slice, str]]:
    """Slices of `split` (or several) with the group each is trained as, without the patient `holdout`; with
    `drr` the DRRs as noise-free radiographs (the recipe's `xr_drr`, `resolved_xr_drr`). X-ray denoising also
    uses CT/MR slices as proxies. X-ray super-resolution and deblurring do not use proxies: they learn the
    texture of radiographs (the real CR and the DRRs), which CT/MR slices do not have; with no radiograph in the
    validation split they keep their last epoch and are judged on the real test radiograph (`evaluate --xray`)."""
    splits = (split,) if isinstance(split, str) else split
    out: list[tuple[Slice, str]] = []
    for sp in splits:
        for group in groups:
            own = corpus.load_split(sp, (group,), path=manifest, denoise=task == "denoise", keep_synthetic=drr)
            out += [(s, group) for s in own]
            if group == "XR" and task == "denoise":
                proxies = corpus.load_split(sp, ("CT", "MR"), path=manifest, denoise=True)
                out += [(s, "XR") for s in proxies]
    return [(s, g) for s, g in out if s.patient != holdout]


def resolved_xr_drr(recipe: dict[str, Any], task: str) -> bool:
    """Whether the DRRs train: the recipe's `xr_drr`; unless it says, super-resolution uses them and denoising
    does not (they have no real noise to learn to leave alone)."""
    return bool(recipe.get("xr_drr", task != "denoise"))


def resolved_recipe(arch_name: str, modalities: Sequence[str]) -> dict[str, Any]:
    """The architecture's recipe, with its `by_modality` changes when the training covers one modality only."""
    recipe = dict(RECIPES.get(arch_name, RECIPES["unet"]))
    changes = recipe.pop("by_modality", {})
    mods = {m.upper() for m in modalities}
    if len(mods) == 1:
        recipe.update(changes.get(next(iter(mods)), {}))
    return recipe


def train(opts: TrainOptions) -> dict[str, Any]:
    """Run one training; returns a summary (name, paths, best validation PSNR/SSIM, sha256)."""
    arch = architecture(opts.model)
    task = opts.task or arch.task
    if task != arch.task:
        raise ValueError(f"architecture {arch.name!r} does this task: {arch.task}; not {task}")
    if opts.adversarial and arch.name not in ("srresnet", "srresnet4x"):
        raise ValueError("--adversarial is only supported for srresnet and srresnet4x")
    recipe = resolved_recipe(arch.name, opts.modalities)
    epochs = opts.epochs or int(recipe["epochs"])
    steps = opts.steps or int(recipe["steps"])
    patch = opts.patch or int(recipe["patch"])
    batch = opts.batch or int(recipe["batch"])
    lr = opts.lr or float(recipe["lr"])
    loss_name = str(recipe["loss"])
    background_weight = float(
        opts.mr_background_weight
        if opts.mr_background_weight is not None
        else recipe.get("mr_background_weight", 1.0)
    )
    if not 0.0 <= background_weight <= 1.0:
        raise ValueError(f"the MR background weight must be in [0, 1], got {background_weight:g}")
    config = dict(arch.config)
    config.update(recipe.get("config", {}))
    config.update(opts.config)
    mods = tuple(m for m in ("CT", "MR", "XR") if m in opts.modalities)
    name = opts.name or (f"{arch.name}-{mods[0].lower()}" if len(mods) == 1 else arch.name)
    out_dir = opts.out or WEIGHTS_DIR
    manifest = opts.corpus_manifest or corpus.MANIFEST_PATH
    device = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    cache = CTSimCache(opts.cache or default_cache_dir())
    started = time.time()

    drr = resolved_xr_drr(recipe, task)
    if opts.all_patients or opts.holdout is not None:
        # every patient (but the held-out one) trains; no validation split is left to pick an epoch with, so
        # the last epoch is kept and the model is judged by `evaluate --lopo`
        train_slices = _training_slices(mods, corpus.SPLITS, manifest, task, opts.holdout, drr)
        val_slices: list[tuple[Slice, str]] = []
    else:
        train_slices = _training_slices(mods, "train", manifest, task, drr=drr)
        val_slices = _training_slices(mods, "validation", manifest, task, drr=drr)
    if opts.max_val_slices is not None:
        step_v = max(1, math.ceil(len(val_slices) / opts.max_val_slices))
        val_slices = val_slices[::step_v]
    conditioned = arch.conditioned
    sampler = PatchSampler(
        train_slices,
        task,
        rng,
        cache,
        conditioned=conditioned,
        degradations=Degradations.from_recipe(recipe),
        mr_background_weight=background_weight,
        sample=str(recipe.get("sample", "area")),
    )
    # the foreground-weighted MR recipe is also judged on the anatomy when it picks its epoch
    select_fg = background_weight != 1.0 and task == "denoise" and mods == ("MR",)
    val_cases = validation_cases(val_slices, task, opts.seed, cache)
    scale = TASK_SCALE[task]

    module = build_module(arch.name, config).to(device)
    if opts.init is not None:
        from enhancers.store import sha256_file

        state = torch.load(opts.init, map_location="cpu", weights_only=True)
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        init_text = f"{opts.init.name} (sha256 {sha256_file(opts.init)})"
    else:
        init_text = "random"
    params = count_params(module)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    total = epochs * steps
    warmup = max(1, min(100, total // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda i: (
            min(1.0, (i + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(i, total) / total)) * 0.95 + 0.05)
        ),
    )
    disc: _Discriminator | None = None
    d_opt: torch.optim.Optimizer | None = None
    if opts.adversarial:
        disc = _Discriminator().to(device)
        d_opt = torch.optim.Adam(disc.parameters(), lr=lr)

    base_psnr, base_ssim, _ = validate(
        nn.Identity() if scale == 1 else _Bicubic(scale), val_cases, scale, arch.halo, device
    )
    baseline = {"denoise": "nlm", "sr2x": "bicubic", "sr4x": "bicubic4x", "deblur": "unsharp-deblur"}[task]
    ref_psnr, ref_ssim = validate_classical(baseline, val_cases) if val_cases else (math.nan, math.nan)
    _progress(
        opts.quiet,
        f"{name}: validation baseline {baseline}: PSNR {ref_psnr:.2f} dB SSIM {ref_ssim:.4f}",
        end=True,
    )
    _progress(
        opts.quiet,
        f"{name}: {params} parameters, {len(train_slices)} train / {len(val_cases)} validation "
        f"cases; input-as-output validation PSNR {base_psnr:.2f} dB SSIM {base_ssim:.4f}",
        end=True,
    )

    history: list[dict[str, float]] = []
    best: tuple[float, float, int] = (-math.inf, 0.0, -1)
    best_selected = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    step = 0
    if arch.closed_form:
        # a linear filter: one least-squares solve over `epochs` noise realisations; no gradient steps
        assert isinstance(module, LinearRestorer)
        t0 = time.time()
        mse = fit_least_squares(module, sampler, epochs)
        vp, vs, vf = validate(module, val_cases, scale, arch.halo, device, conditioned)
        history.append(
            {
                "epoch": 1,
                "loss": mse,
                "val_psnr": vp,
                "val_ssim": vs,
                "val_psnr_fg": vf,
                "seconds": time.time() - t0,
            }
        )
        best = (vp, vs, 1)
        best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        _progress(
            opts.quiet,
            f"{name}: least-squares fit, training MSE {mse:.3g} ({time.time() - t0:.0f} s)",
            end=True,
        )
    for epoch in range(1, (0 if arch.closed_form else epochs) + 1):
        module.train()
        losses = []
        t0 = time.time()
        for s in range(steps):
            if step % REFRESH_STEPS == 0:
                sampler.refresh()
            x, y, w = sampler.weighted_batch(batch, patch)
            x, y = x.to(device), y.to(device)
            pred = module(x)
            loss = weighted_loss(pred, y, None if w is None else w.to(device), loss_name)
            if disc is not None and d_opt is not None:
                logits = disc(pred)
                adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                feat = sum(
                    (
                        F.l1_loss(a, b.detach())
                        for a, b in zip(disc.features(pred), disc.features(y), strict=True)
                    ),
                    torch.zeros((), device=device),
                )
                g_loss = (
                    GAN_WEIGHTS["l1"] * loss
                    + GAN_WEIGHTS["feature"] * feat
                    + GAN_WEIGHTS["adversarial"] * adv
                )
            else:
                g_loss = loss
            optimiser.zero_grad(set_to_none=True)
            g_loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            if disc is not None and d_opt is not None:
                real, fake = disc(y), disc(pred.detach())
                d_loss = F.binary_cross_entropy_with_logits(
                    real, torch.ones_like(real)
                ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()  # type: ignore[no-untyped-call]
                d_opt.step()
            losses.append(float(loss.item()))
            step += 1
            bar = "#" * int(20 * (s + 1) / steps)
            _progress(
                opts.quiet,
                f"{name} epoch {epoch}/{epochs} [{bar:<20}] step {s + 1}/{steps} "
                f"loss {np.mean(losses[-20:]):.3g}",
            )
        vp, vs, vf = validate(module, val_cases, scale, arch.halo, device, conditioned)
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "val_psnr": vp,
                "val_ssim": vs,
                "val_psnr_fg": vf,
                "seconds": time.time() - t0,
            }
        )
        selected = vf if select_fg else vp
        # nothing to select with, or an adversarial run (picking its best-PSNR epoch would undo what the
        # adversarial loss is there for): the last epoch is kept
        improved = selected > best_selected or not val_cases or opts.adversarial
        if improved:
            best, best_selected = (vp, vs, epoch), selected
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        _progress(
            opts.quiet,
            f"{name} epoch {epoch}/{epochs} loss {np.mean(losses):.3g} val PSNR {vp:.2f} dB "
            f"(foreground {vf:.2f}) SSIM {vs:.4f} ({time.time() - t0:.0f} s){' *best' if improved else ''}",
            end=True,
        )

    assert best_state is not None
    # Shipped weights are stored in float16 (half the size; inference runs in float32 after loading). The
    # validation numbers in the card are re-measured with exactly the rounded weights that are shipped.
    shipped = {k: (v.half() if v.is_floating_point() else v) for k, v in best_state.items()}
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in shipped.items()})
    if val_cases:
        best = (*validate(module, val_cases, scale, arch.halo, device, conditioned)[:2], best[2])
    else:
        best = (math.nan, math.nan, best[2])
    weights_path = out_dir / f"{name}.pt"
    sha = save_state_dict(shipped, weights_path)
    card_path = out_dir / f"{name}.card.json"
    hallucination = bool(opts.adversarial)
    card = {
        "name": name,
        "architecture": arch.name,
        "paper": arch.paper,
        "description": arch.description,
        "config": config,
        "task": task,
        "modalities": list(mods),
        "params": params,
        "weights_file": weights_path.name,
        "sha256": sha,
        "hallucination_risk": hallucination,
        "adversarial": bool(opts.adversarial),
        "normalisation": {
            "CT": "(HU + 1000) / 2000",
            "MR": "(v - min(p0.5, 0)) / (p99.5 - min(p0.5, 0)) per series",
            "XR": "(v - lo) / (hi - lo) of the stored-value range",
        },
        "training": {
            "command": opts.command
            or f"enhance-gateway train --model {arch.name} --modality {','.join(mods)}",
            "epochs": epochs,
            "steps_per_epoch": steps,
            "patch": patch,
            "batch": batch,
            "lr": lr,
            "lr_schedule": "none" if arch.closed_form else f"linear warm-up {warmup} steps, cosine to 5%",
            "optimiser": (
                f"closed-form least squares over {epochs} noise realisation(s) of each whole slice, each "
                "filter constrained to sum 1 (enhancers.training.fit_least_squares)"
                if arch.closed_form
                else "Adam"
            ),
            "loss": (
                f"{GAN_WEIGHTS['l1']:g} {loss_name} + {GAN_WEIGHTS['feature']:g} discriminator-feature (perceptual) "
                f"+ {GAN_WEIGHTS['adversarial']:g} adversarial"
                if opts.adversarial
                else f"{loss_name}, foreground-weighted: 1 on enhancers.qa.foreground_mask of the MR "
                f"target, {background_weight:g} on the background"
                if background_weight != 1.0
                else loss_name
            ),
            "mr_background_weight": background_weight,
            "init": init_text,
            "seed": opts.seed,
            "device": device,
            "threads": torch.get_num_threads(),
            "augmentation": "random patches, 8 dihedral transforms",
            "sampling": f"slices drawn by {recipe.get('sample', 'area')} (enhancers.training.SAMPLING)",
            "degradations": _train_degradation_text(task, mods, Degradations.from_recipe(recipe), drr),
            "train_sources": sorted({s.source for s, _ in train_slices}),
            "train_slices": len(train_slices),
            "seconds": round(time.time() - started, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "data": {
            "corpus_manifest": str(manifest.name),
            "corpus_manifest_sha256": corpus.manifest_sha256(manifest),
            "split_rule": (
                f"every patient but {opts.holdout} (leave-one-patient-out fold)"
                if opts.holdout
                else "every patient of every split (evaluated leave-one-patient-out by `evaluate --lopo`)"
                if opts.all_patients
                else "by patient (manifest)"
            ),
        },
        "validation": {
            "sources": sorted({s.source for s, _ in val_slices}),
            "cases": len(val_cases),
            "degradations": sorted({c.degradation for c in val_cases}),
            "data_range": "CT: HU clipped to [-1000, 1000], range 2000 HU; MR/XR: max - min of the clean slice",
            "input_psnr": base_psnr,
            "input_ssim": base_ssim,
            "baseline": baseline,
            "baseline_psnr": ref_psnr,
            "baseline_ssim": ref_ssim,
            "best_epoch": best[2],
            "selected_by": "foreground PSNR" if select_fg else "PSNR",
            "psnr": best[0],
            "ssim": best[1],
            "history": history,
            "note": (
                "X-ray validation uses CT/MR validation slices as proxy images (only two real radiographs exist "
                "in the corpus: one trains, one tests)"
                if task == "denoise"
                else "no radiograph in the validation split: the last epoch is kept; judged on the real test "
                "radiograph by `enhance-gateway evaluate --xray` (docs/evaluation-xray.md)"
            )
            if "XR" in mods
            else "",
        },
    }
    write_json(card_path, card)
    update_manifest(
        out_dir,
        name,
        {
            "file": weights_path.name,
            "sha256": sha,
            "arch": arch.name,
            "config": config,
            "task": task,
            "modalities": list(mods),
            "params": params,
            "version": "1.0",
            "hallucination_risk": hallucination,
            "description": f"{arch.description}; trained on {','.join(mods)}",
            "card": card_path.name,
        },
    )
    return {
        "name": name,
        "weights": str(weights_path),
        "card": str(card_path),
        "sha256": sha,
        "best_epoch": best[2],
        "val_psnr": best[0],
        "val_ssim": best[1],
        "input_val_psnr": base_psnr,
        "input_val_ssim": base_ssim,
        "baseline": baseline,
        "baseline_val_psnr": ref_psnr,
        "baseline_val_ssim": ref_ssim,
        "seconds": round(time.time() - started, 1),
    }


class _Bicubic(nn.Module):
    """The bicubic baseline as a module, for the input-as-output validation line of sr2x and sr4x."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from enhancers.classical import bicubic_up

        return bicubic_up(x, self.scale)


def _train_degradation_text(
    task: str, mods: tuple[str, ...], deg: Degradations, drr: bool = False
) -> dict[str, str]:
    if task in ("sr2x", "sr4x"):
        f = TASK_SCALE[task]
        return {m: f"{f}x area downsampling ({f}x{f} mean)" for m in mods}
    if task == "deblur":
        lo, hi = deg.blur_sigma
        blur = f"sigma {lo:g} px" if lo == hi else f"sigma uniform in [{lo:g}, {hi:g}] px"
        a, b = deg.deblur_noise
        times = "" if a == b == 1.0 else f" times a factor log-uniform in [{a:g}, {b:g}]"
        c0, c1 = deg.deblur_corr
        corr = (
            "" if c0 == c1 == 0.0 else f", correlated over a Gaussian of width uniform in [{c0:g}, {c1:g}] px"
        )
        after = f"then Gaussian noise at the slice's own level (enhancers.noise, cached per slice){times}{corr}, integers"
        return {m: f"Gaussian blur, {blur}, {after}" for m in mods}
    identity = (
        f"; {deg.identity_share:.0%} of slices left as they are (target = input) with a noise level drawn "
        "uniformly between 0 and their own estimate"
        if deg.identity_share
        else ""
    )
    text = {
        "CT": f"projection-domain low dose, I0 drawn from {list(deg.ct_i0)} "
        f"({TRAIN_CT_REALISATIONS} cached realisations each), 720 views, FBP{identity}",
        "MR": f"Rician (complex Gaussian added to the real magnitude image, target = the image at its own noise "
        f"and Rician floor), sigma uniform in {list(deg.mr_sigma)} x max{identity}",
        "XR": f"Poisson-Gaussian, peak photons log-uniform in {list(TRAIN_XR_PEAK)}, read sigma uniform in "
        f"{list(TRAIN_XR_READ)} of full scale{identity}; CT/MR training slices added as proxy images"
        + ("; the DRRs as noise-free radiographs" if drr else ""),
    }
    return {m: text[m] for m in mods}
