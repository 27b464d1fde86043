"""`ncdn`'s `refine` option: full-resolution convolutions before the tail, without breaking shipped weights."""

from __future__ import annotations

import torch

from enhancers.models import build_module, count_params
from enhancers.store import WEIGHTS_DIR, read_manifest

BASE = {"f0": 16, "f1": 32, "f2": 64, "mid": 2}


def test_refine_zero_keeps_the_shipped_weights_loadable() -> None:
    """Weights shipped before `refine` existed have no such layers: they must still load strictly."""
    entry = read_manifest(WEIGHTS_DIR)["ncdn-ct"]
    state = torch.load(WEIGHTS_DIR / entry["file"], map_location="cpu", weights_only=True)
    module = build_module("ncdn", {**entry["config"], "refine": 0})
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def test_refine_adds_full_resolution_layers_and_starts_as_the_identity() -> None:
    plain, refined = build_module("ncdn", BASE), build_module("ncdn", {**BASE, "refine": 2})
    assert count_params(refined) - count_params(plain) == 2 * (16 * 16 * 9 + 16)
    x = torch.rand(1, 2, 37, 41)
    with torch.no_grad():
        out = refined.eval()(x)
    assert out.shape == (1, 1, 37, 41)
    assert torch.equal(out, x[:, :1])  # the tail starts at zero: only a correction is learnt
