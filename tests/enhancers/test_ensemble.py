"""The self-ensemble (`-x8` quality variants): exact transforms, shared weights, and a gain on a real slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from enhancers import registry
from enhancers.degrade import mr_rician
from enhancers.metrics import foreground_psnr
from enhancers.models.ensemble import SelfEnsemble
from enhancers.pipeline import Pipeline
from enhancers.store import MANIFEST_NAME, WeightsError, read_manifest, resolved_manifest
from tests.enhancers.conftest import load_modality_values


def _lopsided(scale: int = 1) -> nn.Module:
    """A module whose output depends on orientation: an asymmetric kernel on both channels (after an
    upsampling for scale 2), so each transform gives a different answer and a wrong undo shows."""
    conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(18, dtype=torch.float32).reshape(1, 2, 3, 3) / 50.0)
    layers: list[nn.Module] = [nn.Upsample(scale_factor=scale, mode="nearest")] if scale > 1 else []
    return nn.Sequential(*layers, conv).eval()


def _patch() -> np.ndarray:
    values, _, _ = load_modality_values("MR_small.dcm")  # a real 64x64 MR slice
    img = values[0, :40, :56] / float(values.max())
    return np.stack([img, img**2])  # the second channel varies too: it must turn with the first


@pytest.mark.parametrize("size", [2, 4, 8])
@pytest.mark.parametrize("scale", [1, 2])
def test_ensemble_is_the_mean_of_the_undone_transforms(size: int, scale: int) -> None:
    x = _patch()  # (2, 40, 56): not square, so a quarter turn that is not undone changes the shape
    module = _lopsided(scale)
    members = {2: [(0, False), (0, True)], 4: [(k, f) for k in (0, 2) for f in (False, True)]}.get(
        size, [(k, f) for k in range(4) for f in (False, True)]
    )
    expected = []
    for k, flip in members:
        t = x[:, :, ::-1] if flip else x
        t = np.rot90(t, k, axes=(1, 2))
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(t))[None])[0, 0].numpy()
        out = np.rot90(out, -k)
        expected.append(out[:, ::-1] if flip else out)
    with torch.no_grad():
        got = SelfEnsemble(module, size)(torch.from_numpy(x)[None])[0, 0].numpy()
    assert got.shape == (40 * scale, 56 * scale)
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-5)
    with torch.no_grad():
        single = module(torch.from_numpy(x)[None])[0, 0].numpy()
    assert np.abs(got - single).max() > 1e-3  # the transforms matter for this module


def test_ensemble_size_is_checked() -> None:
    with pytest.raises(ValueError, match="self-ensemble size 3"):
        SelfEnsemble(nn.Identity(), 3)


def test_variants_share_their_base_and_are_the_quality_defaults_where_they_gained() -> None:
    raw, shipped = read_manifest(), resolved_manifest()
    for group in ("ct", "mr", "xr"):
        base, variant = f"ncdn-{group}", f"ncdn-{group}-x8"
        assert set(raw[variant]) == {"base", "self_ensemble", "description", "summary"}
        assert shipped[variant]["sha256"] == shipped[base]["sha256"]
        assert shipped[variant]["file"] == shipped[base]["file"]
        assert registry.info(variant).weights_sha256 == registry.info(base).weights_sha256
        assert registry.info(variant).version == registry.info(base).version
        assert isinstance(registry.create(variant).module, SelfEnsemble)  # type: ignore[attr-defined]
    # CT and MR gained > 0.1 dB held out (docs/lopo.md): the quality defaults; XR +0.09/+0.00: one pass
    assert registry.default_enhancer("CT", "denoise", quality=True) == "ncdn-ct-x8"
    assert registry.default_enhancer("MR", "denoise", quality=True) == "ncdn-mr-x8"
    assert registry.default_enhancer("CR", "denoise", quality=True) == "ncdn-xr"
    assert registry.default_enhancer("MR", "denoise") == "ncdn-mr"  # the plain default stays one pass


def test_a_variant_without_its_base_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"format": 1, "models": {"x-x8": {"base": "x", "self_ensemble": 8}}})
    )
    with pytest.raises(WeightsError, match="names base 'x'"):
        resolved_manifest(tmp_path)


def test_a_variant_with_an_unknown_ensemble_size_is_refused_at_registration(tmp_path: Path) -> None:
    from enhancers.models import register_shipped

    models = {"ncdn-mr": read_manifest()["ncdn-mr"], "test-x3": {"base": "ncdn-mr", "self_ensemble": 3}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": 1, "models": models}))
    with pytest.raises(WeightsError, match="self_ensemble 3"):
        register_shipped(tmp_path)
    assert "test-x3" not in registry.names()


def test_x8_removes_more_noise_than_one_pass_on_a_real_mr_slice() -> None:
    values, modality, vrange = load_modality_values("MR2_UNCR.dcm")  # the shoulder, a 320x320 crop
    clean = np.ascontiguousarray(values[0, 352:672, 352:672])
    noisy = mr_rician(clean, sigma_fraction=0.05, rng=np.random.default_rng(0))
    scores = {}
    for name in ("ncdn-mr", "ncdn-mr-x8"):
        out = Pipeline(name, device="cpu").run(noisy, modality=modality, value_range=vrange)
        scores[name] = foreground_psnr("MR", clean, out)
    assert scores["ncdn-mr-x8"] > scores["ncdn-mr"] + 0.05, scores
