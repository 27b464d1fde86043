"""The registry of enhancers: one name -> one description (`EnhancerInfo`) and one factory.

Why a registry and not an if/elif factory: the gateway's routing rules, the CLI (`models`, `evaluate`) and the
tests all need the same list of what exists, with the same metadata, and new models are added by registering
them in their own file (as BasicSR does), never by editing a central switch. A duplicate name is an error,
because two enhancers under one name would make a routing rule or a provenance tag ambiguous.

The built-in enhancers (classical filters and the shipped models) are registered lazily, the first time the
registry is queried, so importing `enhancers.registry` stays cheap and free of import cycles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from enhancers.base import Enhancer

TASKS: tuple[str, ...] = ("denoise", "sr2x", "sr4x", "deblur")
#: Output matrix size / input matrix size per task (`deblur` restores sharpness at the same matrix).
TASK_SCALE: dict[str, int] = {"denoise": 1, "sr2x": 2, "sr4x": 4, "deblur": 1}
MODALITY_GROUPS: tuple[str, ...] = ("CT", "MR", "XR")
KINDS: tuple[str, ...] = ("classical", "model")

# DICOM Modality values that are projection radiography: they share the X-ray normalisation and models.
XRAY_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "MG", "RG", "XA", "RF", "PX", "IO", "DR"})

#: The safe default for anything we know nothing about: a classical filter never invents structure.
SAFE_DEFAULT: dict[str, str] = {
    "denoise": "nlm",
    "sr2x": "bicubic",
    "sr4x": "bicubic4x",
    "deblur": "unsharp-deblur",
}

#: The defaults per modality group and task: (fast, quality), a trained model or a classical one. A name is
#: used only if it is registered (its weights are present) and carries no hallucination risk; otherwise
#: `SAFE_DEFAULT` applies. The plain default is the *fast* variant: it beats `nlm` and is faster than it on a
#: CPU, so switching a site from the classical default never slows it down; the quality variant (several
#: times slower on CPU, meant for GPU sites) is `default_enhancer(..., quality=True)` or a routing rule.
#: For sr2x fastsr is both: it beat vdsr and srresnet on the test split (docs/evaluation.md).
#: The denoise defaults are the noise-conditioned `ncdn-*` (docs/evaluation.md, docs/lopo.md): the only models
#: that meet the native "do no harm" targets on every real image. They replaced `fastdn-*` (a grid on CT, voids
#: on MR) and `drunet-*` (blind: full strength on standard-dose images, removing anatomy). The quality
#: denoisers are the same weights run as a self-ensemble (`-x8`, enhancers.models.ensemble: 8 passes) where
#: that gained more than 0.1 dB on held-out patients (docs/lopo.md): CT +0.29 (2 folds), MR +0.12 (5 folds, +0.08 to +0.17); on the
#: held-out chest CR ncdn-xr-x8 gained +0.09 and +0.00 dB, so XR keeps one pass.
DEFAULTS: dict[tuple[str, str], tuple[str, str]] = {
    ("CT", "denoise"): ("ncdn-ct", "ncdn-ct-x8"),
    ("MR", "denoise"): ("ncdn-mr", "ncdn-mr-x8"),
    ("XR", "denoise"): ("ncdn-xr", "ncdn-xr"),
    ("CT", "sr2x"): ("fastsr", "fastsr"),
    ("MR", "sr2x"): ("fastsr", "fastsr"),
    # Radiographs (issue 14, docs/evaluation-xray.md): models trained on the real CR (SR: + DRRs), judged on a held-out
    # real chest CR. A model is the default only where it beat the baseline there by more than 0.1 dB:
    # fastsr-xr (+0.26 dB over bicubic, the best and fastest of the three sr2x models); wiener-deblur-xr, the
    # linear filter fitted on the real training CR (+1.92 dB over the tuned unsharp mask on blurred acquisitions,
    # 5 of 5 crops, native checks passed, as fast as the mask: 21 vs 16 ms per 384x384 crop), where
    # drunet-deblur-xr gained +0.39 (+1.52 retrained on the real CR only). srresnet4x-xr (+0.21 dB over
    # bicubic4x, 5 of 5 crops, native grid 0.014) is the sr4x quality default and bicubic4x, 60x faster, the fast
    # one (wiener-sr4x-xr: +0.11, 4 of 5 crops). The adversarial `srgan4x-xr` is never a default whatever it
    # scores.
    ("XR", "sr2x"): ("fastsr-xr", "fastsr-xr"),
    ("XR", "sr4x"): ("bicubic4x", "srresnet4x-xr"),
    ("XR", "deblur"): ("wiener-deblur-xr", "wiener-deblur-xr"),
}


class UnknownEnhancerError(KeyError):
    """Raised for a name that is not registered; the message lists the names that are."""

    def __str__(self) -> str:  # KeyError's default str() wraps the message in quotes
        return str(self.args[0]) if self.args else "unknown enhancer"


@dataclass(frozen=True)
class EnhancerInfo:
    """What an enhancer is, for routing, provenance tags, model cards and the `models` table.

    `weights_sha256` and `params` are empty/zero for classical filters. `hallucination_risk` is True for any
    model trained with an adversarial loss (it may synthesise plausible structure that is not in the data),
    and such a model is never chosen as a default.
    """

    name: str
    version: str
    task: str
    modalities: tuple[str, ...]
    kind: str
    weights_sha256: str
    params: int
    hallucination_risk: bool = False
    description: str = ""
    #: One plain-language line for the console: what it does, when to use it, how fast (no jargon).
    summary: str = ""
    #: A display filter (CLAHE, unsharp masking): it changes intensities on purpose; never a denoiser, never
    #: a default, listed apart.
    display_filter: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"enhancer name {self.name!r} must be a non-empty string without outer spaces")
        if self.task not in TASKS:
            raise ValueError(f"enhancer {self.name!r}: task {self.task!r} is not one of {', '.join(TASKS)}")
        bad = [m for m in self.modalities if m not in MODALITY_GROUPS]
        if bad or not self.modalities:
            raise ValueError(
                f"enhancer {self.name!r}: modalities {self.modalities!r} must be a non-empty subset of "
                f"{MODALITY_GROUPS}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"enhancer {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "classical" and (self.weights_sha256 or self.params):
            raise ValueError(f"classical enhancer {self.name!r} cannot have weights or parameters")
        if self.kind == "model" and len(self.weights_sha256) != 64:
            raise ValueError(f"model {self.name!r} needs the 64-hex-digit sha256 of its weights")

    @property
    def scale(self) -> int:
        """Output matrix size / input matrix size (2 for `sr2x`, 4 for `sr4x`, 1 otherwise)."""
        return TASK_SCALE[self.task]


Factory = Callable[[], "Enhancer"]


@dataclass(frozen=True)
class _Entry:
    info: EnhancerInfo
    factory: Factory


_LOCK = threading.RLock()
_ENTRIES: dict[str, _Entry] = {}
_BUILTINS_LOADED = False


@overload
def register(info: EnhancerInfo, factory: None = None) -> Callable[[Factory], Factory]: ...
@overload
def register(info: EnhancerInfo, factory: Factory) -> Factory: ...
def register(info: EnhancerInfo, factory: Factory | None = None) -> Factory | Callable[[Factory], Factory]:
    """Register `factory` (a zero-argument callable returning an `Enhancer`) under `info.name`.

    Usable as a function, `register(info, factory)`, or as a decorator, `@register(info)`. Raises ValueError
    naming the enhancer when the name is already taken.
    """

    def _add(fn: Factory) -> Factory:
        with _LOCK:
            if info.name in _ENTRIES:
                raise ValueError(
                    f"an enhancer named {info.name!r} is already registered; pick another name "
                    f"or unregister({info.name!r}) first"
                )
            _ENTRIES[info.name] = _Entry(info, fn)
        return fn

    if factory is None:
        return _add
    return _add(factory)


def unregister(name: str) -> None:
    """Remove `name` from the registry (for tests and plugins that replace an entry on purpose)."""
    with _LOCK:
        if name not in _ENTRIES:
            raise _unknown(name)
        del _ENTRIES[name]


def _ensure_builtins() -> None:
    """Import the modules that register the built-in enhancers, once."""
    global _BUILTINS_LOADED
    with _LOCK:
        if _BUILTINS_LOADED:
            return
        _BUILTINS_LOADED = True
        import enhancers.classical
        import enhancers.models  # noqa: F401  (registers the shipped weights)


def _unknown(name: str) -> UnknownEnhancerError:
    known = ", ".join(sorted(_ENTRIES)) or "(none)"
    return UnknownEnhancerError(f"no enhancer named {name!r}; known enhancers: {known}")


def names() -> list[str]:
    """All registered names, sorted."""
    _ensure_builtins()
    with _LOCK:
        return sorted(_ENTRIES)


def info(name: str) -> EnhancerInfo:
    """The `EnhancerInfo` of `name`; UnknownEnhancerError (a KeyError) listing the known names otherwise."""
    _ensure_builtins()
    with _LOCK:
        entry = _ENTRIES.get(name)
        if entry is None:
            raise _unknown(name)
        return entry.info


def infos() -> list[EnhancerInfo]:
    """The `EnhancerInfo` of every registered enhancer, sorted by name."""
    _ensure_builtins()
    with _LOCK:
        return [_ENTRIES[n].info for n in sorted(_ENTRIES)]


def create(name: str) -> Enhancer:
    """A new instance of the enhancer `name` (models load and verify their weights here)."""
    _ensure_builtins()
    with _LOCK:
        entry = _ENTRIES.get(name)
        if entry is None:
            raise _unknown(name)
    return entry.factory()


def modality_group(modality: str) -> str | None:
    """Map a DICOM Modality (CT, MR, CR, DX, MG, ...) to the group its models are trained for, or None."""
    m = (modality or "").strip().upper()
    if m in ("CT", "MR"):
        return m
    if m in XRAY_MODALITIES or m == "XR":
        return "XR"
    return None


def default_enhancer(modality: str, task: str = "denoise", *, quality: bool = False) -> str:
    """The enhancer the gateway uses for `modality` and `task` when no routing rule names one.

    `modality` is the DICOM Modality (CR, DX, MG, RG, XA map to the X-ray models). A trained model is the
    default only when its weights are shipped, it covers the modality and task, and it carries no
    hallucination risk; anything else, including an unknown modality, gets the classical safe default
    (`nlm` / `bicubic`). `quality=True` picks the quality variant instead of the fast one.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    group = modality_group(modality)
    if group is not None:
        pair = DEFAULTS.get((group, task))
        if pair is not None:
            candidate = pair[1] if quality else pair[0]
            _ensure_builtins()
            with _LOCK:
                entry = _ENTRIES.get(candidate)
            if (
                entry is not None
                and not entry.info.hallucination_risk
                and group in entry.info.modalities
                and entry.info.task == task
            ):
                return candidate
    return SAFE_DEFAULT[task]
