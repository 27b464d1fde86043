"""Train smoke run (1 epoch, a few patches, tmp dir), the card and manifest it writes, and the weights
integrity check (a tampered copy is refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from enhancers import registry
from enhancers.cli import main as cli_main
from enhancers.models import register_shipped
from enhancers.models.arch import TrainedModel
from enhancers.pipeline import Pipeline
from enhancers.store import WEIGHTS_DIR, WeightsError, read_manifest, resolved_manifest, sha256_file

Image = tuple[np.ndarray, str, tuple[float, float]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    code = cli_main(
        [
            "train",
            "--model",
            "fastdn",
            "--modality",
            "MR",
            "--name",
            "smoke-fastdn",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--patch",
            "32",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--threads",
            "1",
            "--max-val-slices",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_train_writes_weights_card_and_manifest(trained: Path) -> None:
    entry = read_manifest(trained)["smoke-fastdn"]
    weights = trained / entry["file"]
    assert weights.is_file() and sha256_file(weights) == entry["sha256"]
    assert entry["arch"] == "fastdn" and entry["task"] == "denoise" and entry["modalities"] == ["MR"]
    card = json.loads((trained / entry["card"]).read_text())
    assert card["sha256"] == entry["sha256"]
    assert len(card["data"]["corpus_manifest_sha256"]) == 64
    assert card["validation"]["history"] and card["validation"]["best_epoch"] == 1
    assert np.isfinite(card["validation"]["psnr"]) and card["hallucination_risk"] is False
    sources = set(card["training"]["train_sources"])
    assert "mr-dipy-s0" in sources
    assert (
        not {"mr-colin27-ch2better", "mr-colin27-ch2"} & sources
    )  # averaged templates are not noise-free truth
    assert not set(card["training"]["train_sources"]) & set(card["validation"]["sources"])


def test_trained_model_registers_and_runs(trained: Path, mr_slice: Image) -> None:
    names = register_shipped(trained)
    try:
        assert names == ["smoke-fastdn"]
        values, modality, value_range = mr_slice
        out = Pipeline("smoke-fastdn", device="cpu").run(values, modality=modality, value_range=value_range)
        assert out.shape == values.shape and out.dtype == np.float32
        with pytest.raises(ValueError, match="trained for MR"):
            Pipeline("smoke-fastdn", device="cpu").run(values, modality="CT", value_range=(-1024.0, 3071.0))
    finally:
        registry.unregister("smoke-fastdn")


def test_tampered_weights_are_refused(trained: Path, tmp_path: Path) -> None:
    entry = read_manifest(trained)["smoke-fastdn"]
    copy = tmp_path / entry["file"]
    shutil.copy(trained / entry["file"], copy)
    meta = registry.EnhancerInfo(
        name="tamper",
        version="1",
        task="denoise",
        modalities=("MR",),
        kind="model",
        weights_sha256=entry["sha256"],
        params=entry["params"],
    )
    TrainedModel(meta, "fastdn", entry["config"], copy)  # intact: loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        TrainedModel(meta, "fastdn", entry["config"], copy)
    with pytest.raises(WeightsError, match="missing"):
        TrainedModel(meta, "fastdn", entry["config"], tmp_path / "absent.pt")


def test_shipped_weights_match_their_manifest() -> None:
    for name, entry in resolved_manifest(WEIGHTS_DIR).items():  # variants checked with their base's file
        path = WEIGHTS_DIR / entry["file"]
        assert sha256_file(path) == entry["sha256"], name
        assert path.stat().st_size < 4 * 1024 * 1024, f"{name} weights are larger than 4 MiB"
        card = json.loads((WEIGHTS_DIR / entry["card"]).read_text())
        assert card["sha256"] == entry["sha256"]
        assert registry.info(name).weights_sha256 == entry["sha256"]
        if registry.info(name).hallucination_risk:
            assert name not in {
                registry.default_enhancer(m, t) for m in ("CT", "MR", "CR") for t in ("denoise", "sr2x")
            }


def test_adversarial_training_marks_hallucination_risk(tmp_path: Path) -> None:
    code = cli_main(
        [
            "train",
            "--model",
            "srresnet",
            "--modality",
            "MR",
            "--name",
            "smoke-gan",
            "--adversarial",
            "--config",
            '{"blocks": 1, "features": 8}',
            "--epochs",
            "1",
            "--steps",
            "1",
            "--patch",
            "32",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--max-val-slices",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    entry = read_manifest(tmp_path)["smoke-gan"]
    assert entry["hallucination_risk"] is True
    card = json.loads((tmp_path / entry["card"]).read_text())
    assert card["hallucination_risk"] is True and "adversarial" in card["training"]["loss"]
    register_shipped(tmp_path)
    try:
        assert registry.info("smoke-gan").hallucination_risk
        assert "smoke-gan" not in {
            registry.default_enhancer(m, "sr2x", quality=q) for m in ("CT", "MR") for q in (False, True)
        }
    finally:
        registry.unregister("smoke-gan")


def test_noise_conditioned_training_on_every_patient(tmp_path: Path) -> None:
    code = cli_main(
        [
            "train", "--model", "ncdn", "--modality", "MR", "--name", "smoke-ncdn", "--epochs", "1",
            "--steps", "2", "--patch", "32", "--batch", "2", "--device", "cpu", "--threads", "1",
            "--all-patients", "--out", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "smoke-ncdn.card.json").read_text())
    assert card["data"]["split_rule"].startswith("every patient")
    sources = set(card["training"]["train_sources"])
    assert {"mr-shoulder", "mr-head-emri"} <= sources  # test and validation patients train too
    assert not {"mr-pair-a", "mr-colin27-ch2"} & sources  # never the real-noise pair nor a template
    assert "left as they are" in card["training"]["degradations"]["MR"]  # the identity pairs
    names = register_shipped(tmp_path)
    try:
        pipe = Pipeline("smoke-ncdn", device="cpu")
        assert pipe.conditioned
    finally:
        for n in names:
            registry.unregister(n)


def test_xray_denoiser_holds_out_the_test_radiograph_and_learns_from_the_drrs(tmp_path: Path) -> None:
    """The ncdn-xr recipe: every patient but the chest CR's (`--holdout`), the DRRs as noise-free truth."""
    code = cli_main(
        [
            "train", "--model", "ncdn", "--modality", "XR", "--name", "smoke-ncdn-xr", "--epochs", "1",
            "--steps", "2", "--patch", "32", "--batch", "2", "--device", "cpu", "--threads", "1",
            "--holdout", "9RG1", "--out", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "smoke-ncdn-xr.card.json").read_text())
    assert card["data"]["split_rule"] == "every patient but 9RG1 (leave-one-patient-out fold)"
    sources = set(card["training"]["train_sources"])
    assert {"xr-leg", "xr-drr-cranium", "mr-shoulder"} <= sources  # CT/MR of every split as proxies
    assert "xr-chest" not in sources  # the test radiograph stays unseen
    assert card["config"]["leak"] == 0.1  # the leaky full-resolution gate (no dead channels)
    assert "DRRs as noise-free radiographs" in card["training"]["degradations"]["XR"]


def test_mr_foreground_weighted_loss(
    mr_slice: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MR recipe option: the background (outside `qa.foreground_mask` of the target) weighs 0.1 in the loss,
    the sampler hands those weights to the training loop, which uses them and picks its epoch by foreground
    PSNR. Dropping the weighting anywhere fails here."""
    from enhancers import training
    from enhancers.corpus import Slice
    from enhancers.qa import foreground_mask

    values, _, value_range = mr_slice
    sl = Slice("mr-small", "p", "MR", "train", 0, values[0], value_range, 1.0)
    mask = foreground_mask(values[0], "MR")
    assert 0.1 < mask.mean() < 0.9  # the slice has both anatomy and background
    sampler = training.PatchSampler(
        [(sl, "MR")], "denoise", np.random.default_rng(0), training.CTSimCache(None), mr_background_weight=0.1
    )
    sampler.refresh()
    pair = sampler.pairs[0]
    assert pair.weight is not None
    np.testing.assert_array_equal(pair.weight, np.where(mask, 1.0, 0.1).astype(np.float32))
    _, y, w = sampler.weighted_batch(4, 32)
    assert w is not None and w.shape == y.shape and np.isin(w.numpy(), np.float32([0.1, 1.0])).all()
    unweighted = training.PatchSampler(
        [(sl, "MR")], "denoise", np.random.default_rng(0), training.CTSimCache(None)
    )
    unweighted.refresh()
    assert unweighted.weighted_batch(2, 32)[2] is None  # the default recipe is unchanged

    # an error confined to the background costs a tenth of what it costs unweighted
    target = torch.zeros(1, 1, 4, 4)
    weight = torch.ones(1, 1, 4, 4)
    weight[..., :2, :] = 0.1
    pred = target.clone()
    pred[..., :2, :] = 1.0
    assert training.weighted_loss(pred, target, None, "l1").item() == pytest.approx(0.5)
    assert training.weighted_loss(pred, target, weight, "l1").item() == pytest.approx(0.8 / 8.8)

    seen: list[bool] = []
    real = training.weighted_loss

    def spy(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, name: str) -> torch.Tensor:
        seen.append(weight is not None and bool((weight < 1).any()))
        return real(pred, target, weight, name)

    monkeypatch.setattr(training, "weighted_loss", spy)
    code = cli_main(
        [
            "train", "--model", "ncdn", "--modality", "MR", "--name", "smoke-fg", "--epochs", "1",
            "--steps", "2", "--patch", "32", "--batch", "4", "--device", "cpu", "--threads", "1",
            "--max-val-slices", "1", "--mr-background-weight", "0.1", "--out", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0 and seen and any(seen)
    card = json.loads((tmp_path / "smoke-fg.card.json").read_text())
    assert (
        card["training"]["mr_background_weight"] == 0.1 and "foreground-weighted" in card["training"]["loss"]
    )
    assert card["validation"]["selected_by"] == "foreground PSNR"
    assert np.isfinite(card["validation"]["history"][0]["val_psnr_fg"])


def test_ncdn_trains_mr_with_the_anatomy_weighted_mse_and_ct_with_plain_l1() -> None:
    """The shipped ncdn-mr and ncdn-ct cards are reproduced by the same `train --model ncdn` command per modality."""
    from enhancers.training import resolved_recipe

    mr, ct, both = (
        resolved_recipe("ncdn", ("MR",)),
        resolved_recipe("ncdn", ("CT",)),
        resolved_recipe("ncdn", ("CT", "MR")),
    )
    assert (mr["loss"], mr["mr_background_weight"]) == ("mse", 0.1)
    assert mr["sample"] == "patient" and "sample" not in ct  # MR patients alike; CT by area (docs/lopo.md)
    assert (ct["loss"], ct["mr_background_weight"]) == ("l1", 1.0)
    assert (both["loss"], both["mr_background_weight"]) == ("l1", 1.0)
    assert "by_modality" not in mr


def test_identical_weights_saved_anywhere_have_one_sha256(tmp_path: Path) -> None:
    """Rule 8: a retraining that reproduces the tensors reproduces the manifest's hash (torch.save to a path
    named the archive inside after the randomly named temp file, so the hash changed with every save)."""
    from enhancers.store import load_verified, save_state_dict

    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.zeros(3)}
    first = save_state_dict(state, tmp_path / "a" / "model.pt")
    second = save_state_dict(state, tmp_path / "b" / "other-name.pt")
    assert first == second
    loaded = load_verified(tmp_path / "b" / "other-name.pt", first)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])


def test_patient_sampling_gives_each_patient_the_same_share(cr_crop: Image) -> None:
    """`sample="patient"`: a patient with one small slice is drawn as often as one with many large slices; by
    area (the default) it is drawn in proportion to its pixels. 400 draws over tiles of a real radiograph: a
    large patient (three 64x64 tiles) and a small one (one 48x48 tile)."""
    from enhancers import training
    from enhancers.corpus import Slice

    values, _, value_range = cr_crop
    img = values[0]
    big = [
        Slice("xr-big", "big", "XR", "train", i, img[:64, 64 * i : 64 * i + 64], value_range, 1.0)
        for i in range(3)
    ]
    small = Slice("xr-small", "small", "XR", "train", 0, img[100:148, 100:148], value_range, 1.0)
    slices = [(s, "XR") for s in [*big, small]]

    def share_of_small(sample: str) -> float:
        sampler = training.PatchSampler(
            slices, "denoise", np.random.default_rng(0), training.CTSimCache(None), sample=sample
        )
        sampler.refresh()
        w = sampler._slice_weights(sampler.pairs)
        picks = np.random.default_rng(1).choice(len(w), size=400, p=w)
        return float(np.mean(picks == 3))

    assert share_of_small("area") == pytest.approx(48 * 48 / (3 * 64 * 64 + 48 * 48), abs=0.05)  # ~0.16
    assert share_of_small("patient") == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError, match="unknown patch sampling"):
        training.PatchSampler(
            slices, "denoise", np.random.default_rng(0), training.CTSimCache(None), sample="slice"
        )
