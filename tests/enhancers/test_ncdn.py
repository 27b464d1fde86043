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


def test_leak_keeps_a_gradient_where_relu_has_none_and_zero_is_relu() -> None:
    """A gate channel that is negative on every pixel never learns again under ReLU (the underfit radiograph
    model); with `leak` it keeps a share of its gradient. leak 0 must be the shipped ReLU layout exactly."""
    torch.manual_seed(0)
    relu, same = build_module("ncdn", BASE), build_module("ncdn", {**BASE, "leak": 0.0})
    same.load_state_dict(relu.state_dict())
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        relu.tail.weight.normal_()
        same.tail.weight.copy_(relu.tail.weight)
        assert torch.equal(relu.eval()(x), same.eval()(x))
    grads = {}
    for leak in (0.0, 0.1):
        module = build_module("ncdn", {**BASE, "leak": leak})
        module.load_state_dict(relu.state_dict())
        with torch.no_grad():
            module.head[0].bias.fill_(-10.0)  # every head channel negative everywhere: "dead"
        module.eval()(x).sum().backward()
        grads[leak] = float(module.head[0].weight.grad.abs().sum())
    assert grads[0.0] == 0.0 and grads[0.1] > 0.0
