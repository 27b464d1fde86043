"""Model architectures (one per file) and the registration of the shipped, trained weights.

Importing this package registers every architecture, then one enhancer per entry of
`enhancers/weights/manifest.json` (name, architecture, config, task, modalities, sha256). Weights are loaded
and verified only when an enhancer is created, so listing the registry never reads a weights file.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

# variants: the sr4x and deblur task variants of srresnet, srcnn and drunet; wiener: the fitted linear filters
from enhancers.models import (  # noqa: F401
    dncnn,
    drunet,
    fastdn,
    fastsr,
    ncdn,
    srcnn,
    srresnet,
    unet,
    variants,
    vdsr,
    wiener,
)
from enhancers.models.arch import ARCHITECTURES, TrainedModel, architecture, build_module, count_params
from enhancers.models.ensemble import ENSEMBLE_SIZES
from enhancers.registry import EnhancerInfo, register
from enhancers.store import WEIGHTS_DIR, WeightsError, resolved_manifest

__all__ = [
    "ARCHITECTURES",
    "architecture",
    "build_module",
    "count_params",
    "info_from_entry",
    "register_shipped",
]


def info_from_entry(name: str, entry: dict[str, Any]) -> EnhancerInfo:
    """The registry description of one manifest entry.

    Why the version carries the weights' sha256 prefix ("1.0+e2378a72"): the derived series and SOP Instance
    UIDs are derived from (source UID, enhancer, version), so retrained weights must give new UIDs; a PACS
    that already holds the old output would otherwise receive different pixels under the same UIDs, and keep
    the old ones. Retraining then never depends on someone remembering to bump the manifest's version.
    """
    return EnhancerInfo(
        name=name,
        version=f"{entry.get('version', '1')}+{str(entry['sha256'])[:8]}",
        task=str(entry["task"]),
        modalities=tuple(str(m) for m in entry["modalities"]),
        kind="model",
        weights_sha256=str(entry["sha256"]),
        params=int(entry["params"]),
        hallucination_risk=bool(entry.get("hallucination_risk", False)),
        description=str(entry.get("description", "")),
        summary=str(entry.get("summary", "")),
    )


def register_shipped(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Register every model of the manifest in `weights_dir` (variants completed from their base, see
    `enhancers.store.resolved_manifest`); return their names. Every entry is checked before any is
    registered (an unknown architecture or ensemble size), so a bad manifest registers nothing."""
    entries: list[tuple[EnhancerInfo, partial[TrainedModel]]] = []
    for name, entry in sorted(resolved_manifest(weights_dir).items()):
        meta = info_from_entry(name, entry)
        arch_name = str(entry["arch"])
        architecture(arch_name)  # KeyError naming the known architectures
        ensemble = int(entry.get("self_ensemble", 1))
        if ensemble not in ENSEMBLE_SIZES:
            raise WeightsError(
                f"manifest entry {name!r}: self_ensemble {ensemble} is not one of {ENSEMBLE_SIZES}"
            )
        config = dict(entry.get("config", {}))
        path = weights_dir / str(entry["file"])
        entries.append((meta, partial(TrainedModel, meta, arch_name, config, path, ensemble)))
    for meta, factory in entries:
        register(meta, factory)
    return [meta.name for meta, _ in entries]


register_shipped()
