"""Radiograph super-resolution and deblurring (issue 14): the data, the tasks, the shipped models' claims.

The claims are checked on the held-out real radiograph (RG1, a chest CR no model trained on), on a crop so the
test takes seconds: every shipped X-ray SR/deblur model must beat the baseline a user would pick instead
(bicubic for SR, the tuned unsharp mask for deblurring), the adversarial model must carry its flag everywhere a
user picks it and never be a default, and the DRRs must stay synthetic, on their CT patient's side of the split.
"""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from enhancers import corpus, degrade, registry
from enhancers.cli import main as cli_main
from enhancers.corpus import CorpusError, check_split_by_patient, read_manifest
from enhancers.metrics import score
from enhancers.models import build_module
from enhancers.pipeline import Pipeline
from enhancers.store import WEIGHTS_DIR

SR2X_MODELS = ("srcnn-xr", "vdsr-xr", "fastsr-xr")
SR4X_MODELS = ("srresnet4x-xr", "srgan4x-xr")
DEBLUR_MODELS = ("srcnn-deblur-xr", "drunet-deblur-xr")


@pytest.fixture(scope="module")
def chest() -> corpus.Slice:
    """The held-out real radiograph (test split), as the evaluation reads it."""
    (sl,) = [s for s in corpus.load_split("test", ("XR",)) if s.source == "xr-chest"]
    return sl


def _crop(sl: corpus.Slice) -> np.ndarray:
    return np.ascontiguousarray(sl.pixels[700:956, 500:756])  # right hilum: vessels, rib edges


def test_drrs_are_synthetic_train_only_and_follow_their_ct_patient() -> None:
    sources = read_manifest()
    (drr,) = [s for s in sources if s["id"] == "xr-drr-cranium"]
    (ct,) = [s for s in sources if s["id"] == "ct-cranium"]
    assert drr["options"]["synthetic"] is True and drr["group"] == "XR"
    assert drr["patient"] == ct["patient"] and drr["split"] == ct["split"] == "train"
    test_xr = [s for s in sources if s["included"] and s["split"] == "test" and s["group"] == "XR"]
    assert test_xr and not any(
        s.get("options", {}).get("synthetic") for s in test_xr
    )  # evaluated on real only
    moved = copy.deepcopy(sources)
    next(s for s in moved if s["id"] == "xr-drr-cranium")["split"] = "test"
    with pytest.raises(CorpusError, match="synthetic source xr-drr-cranium"):
        check_split_by_patient(moved)
    assert not [s for s in corpus.load_split("train", ("XR",), denoise=True) if s.source == "xr-drr-cranium"]


def test_drr_images_look_like_radiographs() -> None:
    (entry,) = [s for s in read_manifest() if s["id"] == "xr-drr-cranium"]
    views = corpus.load_source(entry)
    assert len(views) == 12
    img = views[0].pixels
    assert img.shape[0] > 150 and img.shape[1] == 256
    assert views[0].value_range == (0.0, corpus.DRR_FULL_SCALE)
    # MONOCHROME1-like: the skull (centre) attenuates more than the air at the border, so it is lower
    assert float(np.median(img[60:110, 100:156])) < float(np.median(img[:, :8]))


def test_area_downsampling_4x_and_the_new_degradations() -> None:
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    small = degrade.downsample_area(img, 4)
    assert small.shape == (2, 2) and small[0, 0] == pytest.approx(img[:4, :4].mean())
    assert degrade.standard("down4x-area").task == "sr4x"
    deblur = degrade.standard("deblur-1.5")
    assert deblur.task == "deblur" and deblur.params == {"sigma": 1.5, "noise": "native"}
    assert degrade.DEBLUR_TRAIN_SIGMA[0] < 1.5 < degrade.DEBLUR_TRAIN_SIGMA[1]


def _leg_patch(size: int = 256) -> tuple[np.ndarray, tuple[float, float]]:
    """A patch of the real training CR (RG3, a leg): real grain at its native level."""
    (leg,) = [s for s in corpus.load_split("train", ("XR",)) if s.source == "xr-leg"]
    return np.ascontiguousarray(leg.pixels[600 : 600 + size, 600 : 600 + size]), leg.value_range


def test_blurred_acquisition_adds_native_noise_after_the_blur_and_rounds() -> None:
    """The deblur degradation is a blurred ACQUISITION: blur, then the detector's noise at the image's own level,
    then stored integers. The first one (blur only) only attenuated the CR's grain, so a filter fitted on the
    answer got +8.7 dB over the tuned mask and a model won by amplifying the grain back. On a real CR patch:
    what it adds to the blurred image is white (noise added before the blur would be correlated ~0.9 between
    neighbours), unbiased, of the level `enhancers.noise` reads on the clean patch (measured 1.015 x: the
    rounding adds 1/12), and the result is integers inside the value range; a seed reproduces it."""
    clean, vrange = _leg_patch()
    sigma = degrade.native_noise_sigma(clean)
    assert 1.0 < sigma < 3.0  # RG3's own grain, stored values 0..1023
    out = degrade.apply(degrade.standard("deblur-1.5"), clean, rng=np.random.default_rng(7), value_range=vrange)
    np.testing.assert_array_equal(out, np.rint(out))
    assert out.min() >= vrange[0] and out.max() <= vrange[1]
    added = out.astype(np.float64) - degrade.gaussian_blur(clean, sigma=1.5)
    assert 0.97 < float(added.std()) / sigma < 1.06
    assert abs(float(added.mean())) < 0.05 * sigma
    for a, b in ((added[:, :-1], added[:, 1:]), (added[:-1], added[1:])):
        assert abs(float(np.corrcoef(a.ravel(), b.ravel())[0, 1])) < 0.05
    again = degrade.blurred_acquisition(
        clean, sigma=1.5, noise_sigma=sigma, rng=np.random.default_rng(7), value_range=vrange
    )
    np.testing.assert_array_equal(out, again)
    # training also draws grain correlated like a CR's own: the same level, neighbours correlated
    grainy = degrade.blurred_acquisition(
        clean, sigma=1.5, noise_sigma=sigma, rng=np.random.default_rng(7), value_range=vrange, noise_corr_px=0.65
    )
    added = grainy.astype(np.float64) - degrade.gaussian_blur(clean, sigma=1.5)
    assert 0.97 < float(added.std()) / sigma < 1.06
    assert float(np.corrcoef(added[:, :-1].ravel(), added[:, 1:].ravel())[0, 1]) > 0.4


def test_srresnet_scales_and_the_shipped_2x_layout() -> None:
    x = torch.rand(1, 1, 12, 10)
    assert build_module("srresnet4x")(x).shape == (1, 1, 48, 40)
    assert build_module("srcnn-deblur")(x).shape == (1, 1, 12, 10)
    assert build_module("drunet-deblur")(x).shape == (1, 1, 12, 10)
    registry.create("srresnet")  # the 2x weights still load strictly into the 2x layout


def test_srresnet4x_starts_exactly_at_bicubic_with_a_scaled_residual() -> None:
    """The first 4x weights never left bicubic: a random tail added ~4 % of full scale that training spent its
    steps cancelling, and each Adam step moved the output by more than the ~0.6 % detail to learn. A fresh
    srresnet4x must output bicubic exactly, and its residual must be scaled down (variants.srresnet4x)."""
    from enhancers.classical import bicubic_up

    torch.manual_seed(0)
    net = build_module("srresnet4x").eval()
    x = torch.rand(2, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(net(x), bicubic_up(x, 4))
    assert net.residual_scale == pytest.approx(0.01)  # type: ignore[union-attr]


#: The up-stage parameters of the pixel-shuffle layout (conv, shuffle, PReLU per stage), which every weights
#: file trained before the `upsample` key holds.
_SHUFFLE_UP_KEYS = ["up.0.weight", "up.0.bias", "up.2.weight", "up.3.weight", "up.3.bias", "up.5.weight"]


def test_srresnet_without_upsample_key_keeps_the_pixel_shuffle_layout() -> None:
    """Cards written before `upsample` existed have no such key: their config must still build the pixel-shuffle
    layout, so their weights load strictly and compute what they did. The shipped 2x card is one; a 4x config
    without the key must give the old 4x layout; the resize layout must not accept those weights."""
    card = json.loads((WEIGHTS_DIR / "srresnet.card.json").read_text())
    assert "upsample" not in card["config"]
    state = torch.load(WEIGHTS_DIR / "srresnet.pt", map_location="cpu", weights_only=True)
    old = build_module("srresnet", card["config"]).eval()
    old.load_state_dict(state, strict=True)
    explicit = build_module("srresnet", {**card["config"], "upsample": "shuffle"}).eval()
    explicit.load_state_dict(state, strict=True)
    x = torch.rand(1, 1, 24, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(old(x), explicit(x))
    with pytest.raises(RuntimeError):
        build_module("srresnet", {**card["config"], "upsample": "resize"}).load_state_dict(state, strict=True)
    keys = [k for k in build_module("srresnet4x").state_dict() if k.startswith("up.")]
    assert keys == _SHUFFLE_UP_KEYS


@pytest.mark.parametrize("upsample", ["shuffle", "resize", "nearest"])
def test_srresnet_resize_upsampling_has_no_phase_pattern_at_init(upsample: str) -> None:
    """A pixel-shuffle stage computes each output phase with its own filter, so even a constant image comes out
    with a period-2 (period-4 after two stages) pattern, the grid the shipped 4x weights left on native
    radiographs (0.055 sigma, limit 0.05). After a resize (bilinear or nearest) one filter serves every pixel: a
    constant image must stay constant whatever the (random) weights. Interior only (the borders' zero padding
    differs)."""
    from enhancers.models.srresnet import SRResNet

    for seed in range(3):
        torch.manual_seed(seed)
        net = SRResNet(blocks=2, features=16, scale=4, upsample=upsample).eval()  # random tail, no skip
        with torch.no_grad():
            out = net(torch.full((1, 1, 40, 40), 0.5))[0, 0, 48:-48, 48:-48]  # 64 x 64, beyond the field of view
        phases = out.reshape(16, 4, 16, 4).mean(dim=(0, 2))  # mean of each of the 4 x 4 output phases
        spread = float(phases.max() - phases.min())
        if upsample != "shuffle":
            assert spread < 1e-6
        else:
            assert spread > 0.01  # measured 0.09-0.15 with these seeds


@pytest.mark.parametrize("arch", ["drunet-deblur", "srcnn-deblur"])
def test_deblur_models_learn_on_a_real_radiograph_patch(arch: str) -> None:
    """The first drunet-deblur weights never left the unsharp mask (std(output - unsharp) 0.003 % of full scale
    on the training CR): the network saw only the blurred image, whose detail to restore is ~0.1 % of the
    intensities it also carries, and the recipe's L1 sign gradient of a correction that is mostly the
    reference's noise averaged to nothing, while each step of its zero tail moved the output more than the
    detail. With the recipe's loss and lr, a fresh model starts exactly at the unsharp mask, does not jump far
    above it (the old model and recipe: 44x and 173x its MSE after the first two steps) and lowers the MSE on
    one real CR patch (RG3, training split, a blurred acquisition as training makes it) within 20 Adam steps.
    srcnn-deblur's first weights (correction at scale 1) never left the mask either: on blurred-acquisition
    patches scale 1 jumped to 3x (lr 3e-4) and 8x (1e-3) the mask's MSE; its correction is now scaled by 0.01."""
    from enhancers.base import normalisation_for
    from enhancers.classical import UNSHARP_DEBLUR, unsharp
    from enhancers.training import RECIPES, weighted_loss

    (leg,) = [s for s in corpus.load_split("train", ("XR",)) if s.source == "xr-leg"]
    clean = np.ascontiguousarray(leg.pixels[600:728, 600:728])
    blurred = degrade.apply(
        degrade.standard("deblur-1.5"), clean, rng=np.random.default_rng(0), value_range=leg.value_range
    )
    norm = normalisation_for("XR", blurred[None], leg.value_range)
    x = torch.from_numpy(norm.forward(blurred))[None, None]
    y = torch.from_numpy(norm.forward(clean))[None, None]
    recipe = RECIPES[arch]
    torch.manual_seed(0)
    net = build_module(arch)
    with torch.no_grad():
        start = net(x)
    ref = unsharp(x[0, 0].numpy(), radius=UNSHARP_DEBLUR[0], amount=UNSHARP_DEBLUR[1])
    assert np.abs(start[0, 0].numpy() - ref).max() < 1e-5  # starts at the classical baseline
    base = float(((start - y) ** 2).mean())
    opt = torch.optim.Adam(net.parameters(), lr=float(recipe["lr"]))
    ratios = []
    for _ in range(20):
        loss = weighted_loss(net(x), y, None, str(recipe["loss"]))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        with torch.no_grad():
            ratios.append(float(((net(x) - y) ** 2).mean()) / base)
    assert max(ratios) < 1.5, ratios  # measured: at most 1.04 (drunet), 1.02 (srcnn); the old: 44x then 173x
    # below the mask by the last steps; measured 0.992 (drunet), 0.9988 (srcnn); the old recipe: 1.3 to 2.6
    assert float(np.mean(ratios[-5:])) < {"drunet-deblur": 0.996, "srcnn-deblur": 0.9995}[arch], ratios


def test_deblur_fitted_filter_stays_under_the_noise_ceiling_of_the_blurred_acquisition() -> None:
    """With the noise after the blur, the reference's grain is lost and the noise ceiling holds: the
    least-squares filter fitted on the answer stays below it on a real CR patch (RG3; measured 49.97 dB, ceiling
    52.89) and still above the tuned mask (47.36). On the first, noise-free blur the same filter passed that
    "ceiling" by 6.3 dB (59.20): the blur had destroyed nothing, so the ceiling was wrong there, which is why
    that evaluation rewarded restoring the grain. The fit reproduces an identity exactly."""
    from enhancers.classical import UNSHARP_DEBLUR, unsharp
    from enhancers.xray import UNRECOVERABLE_NOISE, oracle_linear

    clean, (lo, hi) = _leg_patch()
    np.testing.assert_allclose(oracle_linear(clean, clean, size=5), clean, rtol=0, atol=1e-3 * float(np.ptp(clean)))
    sigma = degrade.native_noise_sigma(clean)
    mse = sigma**2 * UNRECOVERABLE_NOISE["deblur"] / float(np.ptp(clean)) ** 2
    ceiling = 10.0 * np.log10(1.0 / mse)
    acquired = degrade.apply(degrade.standard("deblur-1.5"), clean, rng=np.random.default_rng(0), value_range=(lo, hi))
    sharp = unsharp((acquired - lo) / (hi - lo), radius=UNSHARP_DEBLUR[0], amount=UNSHARP_DEBLUR[1]) * (hi - lo) + lo
    fitted = score("XR", clean, oracle_linear(acquired, clean)).psnr
    assert score("XR", clean, sharp.astype(np.float32)).psnr < fitted < ceiling - 1.0
    noise_free = score("XR", clean, oracle_linear(degrade.gaussian_blur(clean, sigma=1.5), clean)).psnr
    assert noise_free > ceiling + 3.0


def test_the_sr_fitted_filter_is_one_filter_per_output_phase() -> None:
    """For SR, an upsampling made of one filter per output phase (here each phase a gain and an offset of its
    own) is found exactly, phase by phase."""
    from enhancers.xray import oracle_linear

    clean, _ = _leg_patch(128)
    low = degrade.downsample_area(clean, 4)
    phased = np.zeros_like(clean)
    for dy in range(4):
        for dx in range(4):
            phased[dy::4, dx::4] = (1 + dy + 4 * dx) * low + 10 * dx
    np.testing.assert_allclose(oracle_linear(low, phased, 5, 4), phased, rtol=0, atol=1e-3 * float(np.ptp(low)))


def test_tasks_scale_and_safe_defaults() -> None:
    assert registry.TASK_SCALE == {"denoise": 1, "sr2x": 2, "sr4x": 4, "deblur": 1}
    assert registry.info("bicubic4x").scale == 4 and registry.info("unsharp-deblur").task == "deblur"
    assert registry.default_enhancer("CT", "sr4x") == "bicubic4x"
    assert registry.default_enhancer("MR", "deblur") == "unsharp-deblur"
    # radiographs: the fitted linear filter beat the mask by 1.9 dB on the held-out CR at the mask's speed
    assert registry.default_enhancer("CR", "deblur") == "wiener-deblur-xr"
    assert registry.default_enhancer("DX", "deblur", quality=True) == "wiener-deblur-xr"
    out = Pipeline("bicubic4x", device="cpu").run(
        np.ones((8, 6), np.float32), modality="CR", value_range=(0, 2)
    )
    assert out.shape == (32, 24)


def test_dicom_utils_task_tables_agree_with_the_registry() -> None:
    """dicom_utils may not import enhancers, so it keeps its own copy of the tasks and their scales: a task
    added on one side only would derive objects with the wrong matrix or refuse a registered task."""
    from dicom_utils import derive, enhancement

    assert derive.TASK_SCALE == registry.TASK_SCALE
    assert set(enhancement.TASKS) == set(registry.TASKS)
    assert set(derive.DERIVATION_CODES) == set(registry.TASKS)


def test_adversarial_model_flagged_never_default_and_said_where_picked() -> None:
    meta = registry.info("srgan4x-xr")
    assert meta.hallucination_risk and meta.task == "sr4x"
    for modality in ("CR", "DX", "MG", "CT", "MR"):
        for quality in (False, True):
            assert registry.default_enhancer(modality, "sr4x", quality=quality) != "srgan4x-xr"
    # the L1 model gains +0.21 dB on the held-out CR at 60x bicubic's time: the quality default only
    assert registry.default_enhancer("DX", "sr4x") == "bicubic4x"
    assert registry.default_enhancer("CR", "sr4x", quality=True) == "srresnet4x-xr"
    assert registry.default_enhancer("CR", "sr2x") == "fastsr-xr"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(["models"]) == 0
    (line,) = [ln for ln in buf.getvalue().splitlines() if ln.startswith("srgan4x-xr ")]
    assert "HALLUCINATION" in line
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(buf.getvalue())}
    assert (
        rows["srgan4x-xr"]["hallucination_risk"] is True
        and rows["srresnet4x-xr"]["hallucination_risk"] is False
    )
    card = json.loads((WEIGHTS_DIR / "srgan4x-xr.card.json").read_text())
    assert card["hallucination_risk"] is True and card["adversarial"] is True


def test_console_groups_new_tasks_and_shows_the_risk() -> None:
    from gateway.web.pages import enhancer_options

    html = enhancer_options(registry.infos())
    assert 'label="Super-resolution (4x)"' in html and 'label="Deblurring"' in html
    (opt,) = [part for part in html.split("<option") if 'value="srgan4x-xr"' in part]
    assert "HALLUCINATION RISK" in opt and "never a default" in opt


def _run(name: str, degraded: np.ndarray, vrange: tuple[float, float]) -> np.ndarray:
    return Pipeline(name, device="cpu").run(degraded, modality="CR", value_range=vrange)


@pytest.mark.parametrize("name", SR2X_MODELS)
def test_sr2x_models_beat_bicubic_on_held_out_radiograph(chest: corpus.Slice, name: str) -> None:
    clean = _crop(chest)
    low = degrade.downsample_area(clean, 2)
    base = score("XR", clean, _run("bicubic", low, chest.value_range)).psnr
    assert score("XR", clean, _run(name, low, chest.value_range)).psnr > base


@pytest.mark.parametrize("name", SR4X_MODELS)
def test_sr4x_models_do_no_harm_against_bicubic_on_held_out_radiograph(
    chest: corpus.Slice, name: str
) -> None:
    """Measured on this crop: +0.29 dB (L1, nearest-resize weights, patients sampled alike) over bicubic4x
    (+0.21 over the 5 crops of docs/evaluation-xray.md; +0.16 here when sampled by area); the 1 dB target is not
    met. Neither may fall below bicubic, and the L1 model must keep a real margin (the first weights tied bicubic
    at +0.003 dB: a tail that never moved)."""
    clean = _crop(chest)
    low = degrade.downsample_area(clean, 4)
    base = score("XR", clean, _run("bicubic4x", low, chest.value_range)).psnr
    got = score("XR", clean, _run(name, low, chest.value_range)).psnr
    assert got > base - 0.02
    if not registry.info(name).hallucination_risk:
        assert got > base + 0.2


@pytest.mark.parametrize("name", DEBLUR_MODELS)
def test_deblur_models_do_no_harm_against_tuned_unsharp_on_a_blurred_acquisition(
    chest: corpus.Slice, name: str
) -> None:
    """On a blurred acquisition of the held-out CR (blur, then noise at its own level: what the evaluation
    scores), measured on this crop: drunet-deblur-xr +1.26 dB over the tuned unsharp mask (+1.52 over the five
    crops of docs/evaluation-xray.md; +0.39 when the DRRs trained with the real CR), srcnn-deblur-xr +0.002 (it
    stays at the mask). Neither may fall below the mask, and drunet must keep a real margin. The weights
    trained on the noise-free blur sat on the first mask (0.5 px x 14) and score 12 dB below the retuned one
    here."""
    clean = _crop(chest)
    acquired = degrade.apply(
        degrade.standard("deblur-1.5"), clean, rng=np.random.default_rng(0), value_range=chest.value_range
    )
    base = score("XR", clean, _run("unsharp-deblur", acquired, chest.value_range)).psnr
    got = score("XR", clean, _run(name, acquired, chest.value_range)).psnr
    assert got > base - 0.05
    if name == "drunet-deblur-xr":
        assert got > base + 1.0


def test_training_sr4x_adversarial_and_deblur_smoke(tmp_path: Path) -> None:
    common = ["--modality", "XR", "--epochs", "1", "--steps", "1", "--batch", "2", "--threads", "1"]
    common += ["--max-val-slices", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    with redirect_stdout(io.StringIO()):
        assert (
            cli_main(
                [
                    "train",
                    "--model",
                    "srresnet4x",
                    "--name",
                    "t-gan",
                    "--adversarial",
                    "--patch",
                    "32",
                    *common,
                ]
            )
            == 0
        )
        assert (
            cli_main(["train", "--model", "srcnn-deblur", "--name", "t-deblur", "--patch", "32", *common])
            == 0
        )
    gan = json.loads((tmp_path / "t-gan.card.json").read_text())
    assert (
        gan["task"] == "sr4x"
        and gan["hallucination_risk"] is True
        and "adversarial" in gan["training"]["loss"]
    )
    assert (
        "xr-drr-cranium" in gan["training"]["train_sources"]
        and "xr-chest" not in gan["training"]["train_sources"]
    )
    deblur = json.loads((tmp_path / "t-deblur.card.json").read_text())
    assert deblur["task"] == "deblur" and deblur["validation"]["baseline"] == "unsharp-deblur"
    assert deblur["training"]["degradations"]["XR"].startswith("Gaussian blur")
