"""Shipped weights: the manifest, sha256 verification and safe loading.

Why: weights are code that the gateway executes on patient images, so they are loaded only from the repository
(no download at run time), only with `torch.load(..., weights_only=True)` (no pickled code), and only after
their sha256 matches the one recorded in `enhancers/weights/manifest.json` by `train`. A mismatch is an error
that says which file, both digests and how to fix it, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class WeightsError(RuntimeError):
    """Weights missing, unreadable or not matching their recorded sha256."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict[str, dict[str, Any]]:
    """The `models` mapping of the manifest (name -> entry); empty when no manifest exists yet."""
    path = weights_dir / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot read the weights manifest {path}: {exc}; restore it from the repository"
        ) from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(data.get("models"), dict)
    ):
        raise WeightsError(
            f"{path} is not a format-{MANIFEST_FORMAT} weights manifest; restore it from the repository"
        )
    models: dict[str, dict[str, Any]] = data["models"]
    return models


def resolved_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict[str, dict[str, Any]]:
    """The manifest's entries with every variant completed from the entry it names as `base`.

    Why variants: a quality variant (`ncdn-mr-x8`: the same weights run as a self-ensemble) shares its base's
    weights file, sha256, card and architecture; its entry says only what differs (`base`, `self_ensemble`,
    its description), so retraining the base can never leave the variant on stale weights.
    """
    models = read_manifest(weights_dir)
    resolved: dict[str, dict[str, Any]] = {}
    for name, entry in models.items():
        base = entry.get("base")
        if base is None:
            resolved[name] = dict(entry)
            continue
        if base not in models or "base" in models[base]:
            raise WeightsError(
                f"manifest entry {name!r} names base {base!r}, which is not a model entry of "
                f"{weights_dir / MANIFEST_NAME}; restore it from the repository"
            )
        resolved[name] = {**models[base], **{k: v for k, v in entry.items() if k != "base"}, "base": base}
    return resolved


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped files must be readable by the service user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temp file + fsync + rename), sorted keys, trailing newline."""
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def update_manifest(weights_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """Add or replace the entry `name` in the manifest of `weights_dir` (under a lock: trainings may run in
    parallel and finish together; the read-modify-write must not lose an entry)."""
    import fcntl

    weights_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(weights_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"enhancers-manifest-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        models = read_manifest(weights_dir)
        models[name] = entry
        write_json(weights_dir / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "models": models})


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> str:
    """Save a state dict (tensors only, contiguous, CPU) atomically; return its sha256.

    Serialised to memory first: `torch.save` to a path names the zip archive inside the file after that
    path, and the atomic write's temp file has a random name, so two trainings that produced identical
    tensors wrote files with different sha256s (rule 8: the manifest's hash must be reproducible).
    """
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(clean, buffer)
    _atomic_write(path, buffer.getvalue())
    return sha256_file(path)


def load_verified(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Load a state dict after checking its sha256; WeightsError with the fix otherwise."""
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} is missing; restore enhancers/weights/ from the repository or recreate it "
            f"with `enhance-gateway train`"
        )
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"weights file {path} has sha256 {actual} but the manifest records {expected_sha256}: the file was "
            f"modified or corrupted; restore it from the repository (or retrain it with `enhance-gateway train`, "
            f"which rewrites the manifest)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad archive
        raise WeightsError(f"weights file {path} cannot be loaded safely: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} is not a state dict of tensors")
    return {str(k): v for k, v in state.items()}
