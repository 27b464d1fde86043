"""The architecture registry and the enhancer that wraps a trained module.

Why two registries: an *architecture* (`dncnn`, `srcnn`, ...) is code, one file each; an *enhancer* is an
architecture plus trained weights for given modalities (`dncnn-ct`), registered from the weights manifest. The
`train` command takes an architecture name and produces an enhancer; the gateway only sees enhancers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from enhancers.base import ModelEnhancer
from enhancers.models.ensemble import SelfEnsemble
from enhancers.registry import TASKS, EnhancerInfo
from enhancers.store import load_verified


@dataclass(frozen=True)
class Architecture:
    """A network family: how to build it, for which task, and the recipe `train` uses by default.

    `halo` is the receptive-field radius in input pixels (rounded up), used by the pipeline's tiling.
    `residual_note` documents what the network predicts (the clean image, the noise, or a bicubic residual).
    """

    name: str
    task: str
    build: Callable[..., nn.Module]
    config: dict[str, Any]
    halo: int
    description: str
    paper: str
    train_defaults: dict[str, Any] = field(default_factory=dict)
    #: True when the network takes a second input channel with the noise level (see `NOISE_LEVEL_GAIN`).
    conditioned: bool = False
    #: True for a linear filter that `train` fits in closed form (`enhancers.training.fit_least_squares`)
    #: instead of by gradient steps.
    closed_form: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"architecture {self.name!r}: task {self.task!r} is not one of {TASKS}")


ARCHITECTURES: dict[str, Architecture] = {}

#: A noise-conditioned network's second channel is the normalised noise sigma times this (typical levels are
#: then 0.01-1, the scale of the image channel), constant over the slice.
NOISE_LEVEL_GAIN = 10.0


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture; a duplicate name is a ValueError naming it."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"an architecture named {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def architecture(name: str) -> Architecture:
    """The architecture `name`; KeyError listing the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"no architecture named {name!r}; known architectures: {known}") from None


def build_module(arch_name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A fresh module of `arch_name` with its default config updated by `config`."""
    arch = architecture(arch_name)
    merged = dict(arch.config)
    merged.update(config or {})
    return arch.build(**merged)


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """In an eval-mode module, fold each BatchNorm2d that directly follows a Conv2d in an nn.Sequential into
    that convolution (the BN becomes an Identity), in place; returns the module.

    Why: at inference BN is a per-channel affine map, so the fused convolution computes the same function
    (up to float rounding) without a full pass over the activations: ~10 % of ncdn's CPU time.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return module


class TrainedModel(ModelEnhancer):
    """An architecture with verified weights, in eval mode, ready for the pipeline.

    `self_ensemble` > 1 wraps the network in `enhancers.models.ensemble.SelfEnsemble` (the `-x8` quality
    variants: the same weights, averaged over flips and quarter turns).
    """

    def __init__(
        self,
        info: EnhancerInfo,
        arch_name: str,
        config: dict[str, Any],
        weights: Path,
        self_ensemble: int = 1,
    ) -> None:
        self.info = info
        arch = architecture(arch_name)
        self.halo = arch.halo
        self.conditioned = arch.conditioned
        module = build_module(arch_name, config)
        state = load_verified(weights, info.weights_sha256)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(
                f"weights {weights} do not fit architecture {arch_name!r} with config {config}: {exc}"
            ) from exc
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        module = fold_batchnorm(module)
        self.module: torch.nn.Module = SelfEnsemble(module, self_ensemble) if self_ensemble > 1 else module
