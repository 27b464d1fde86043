"""The fitted linear filters (`enhancers.models.wiener`, `enhancers.training.fit_least_squares`): the closed-form
fit finds a known filter exactly, phase by phase; any weights keep an image's mean and add no phase grid; the
`train` command fits them on real radiographs only for deblurring; the shipped deblur filter beats the tuned
unsharp mask by the issue's 1 dB on the held-out chest CR."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enhancers import corpus, degrade, registry
from enhancers.cli import main as cli_main
from enhancers.metrics import score
from enhancers.models.wiener import LinearRestorer
from enhancers.pipeline import Pipeline
from enhancers.training import _Pair, fit_least_squares


def _leg(size: int) -> np.ndarray:
    """A patch of the real training CR (RG3) scaled to [0, 1]: real grain and anatomy."""
    (leg,) = [s for s in corpus.load_split("train", ("XR",)) if s.source == "xr-leg"]
    lo, hi = leg.value_range
    return np.ascontiguousarray((leg.pixels[600 : 600 + size, 600 : 600 + size] - lo) / (hi - lo)).astype(
        np.float32
    )


class _FixedPairs:
    """What `fit_least_squares` reads of a sampler: pairs that `refresh` leaves as they are, equal weights."""

    def __init__(self, pairs: list[_Pair]) -> None:
        self.pairs = pairs

    def refresh(self) -> None:
        pass

    def pixel_weights(self) -> list[float]:
        return [1.0 / (len(self.pairs) * p.tgt.size) for p in self.pairs]


@pytest.mark.parametrize("scale", [1, 2])
def test_the_fit_recovers_a_known_filter_per_phase(scale: int) -> None:
    """Targets made from a real CR patch by known 5x5 filters that each sum to 1 (one per output phase,
    pixel-shuffled as `LinearRestorer` orders them) are fitted back exactly: a wrong phase order, padding or
    constraint fails here."""
    inp = _leg(96)
    rng = np.random.default_rng(0)
    true = rng.normal(0.0, 0.3, size=(scale * scale, 1, 5, 5))
    true[:, :, 2, 2] += 1.0
    true /= true.sum(axis=(1, 2, 3), keepdims=True)
    x = torch.from_numpy(inp)[None, None]
    tgt = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), torch.from_numpy(true).float())
    tgt = F.pixel_shuffle(tgt, scale) if scale > 1 else tgt
    module = LinearRestorer(5, scale)
    mse = fit_least_squares(module, _FixedPairs([_Pair(inp, tgt[0, 0].numpy(), "XR", "p", 0.0)]), 1)  # type: ignore[arg-type]
    assert mse < 1e-9
    np.testing.assert_allclose(module.kernels().detach().numpy(), true, atol=2e-3)  # float32 targets


@pytest.mark.parametrize("scale", [1, 4])
def test_any_weights_keep_the_mean_and_add_no_phase_grid(scale: int) -> None:
    """Each phase's filter is divided by its sum, so even weights rounded to float16 (as shipped) map a flat
    image to the same flat image in every phase."""
    module = LinearRestorer(11, scale)
    with torch.no_grad():
        module.weight.copy_(torch.randn_like(module.weight).half().float() * 0.1 + 1.0 / 121)
    with torch.no_grad():
        out = module(torch.full((1, 1, 24, 24), 0.37))
    assert out.shape[-1] == 24 * scale
    assert float((out - 0.37).abs().max()) < 1e-5


def test_train_fits_the_deblur_filter_on_real_radiographs_only(tmp_path: Path) -> None:
    """`train --model wiener-deblur`: one least-squares solve, no DRRs (noise-free, they teach an inverse filter
    that amplifies a real acquisition's noise: fitted on them, -8.6 dB against the tuned mask on the chest), and
    the card says how it was fitted."""
    with redirect_stdout(io.StringIO()):
        code = cli_main(
            [
                "train", "--model", "wiener-deblur", "--modality", "XR", "--name", "t-wiener", "--epochs", "1",
                "--threads", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path),
            ]
        )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "t-wiener.card.json").read_text())
    assert card["training"]["train_sources"] == ["xr-leg"]
    assert card["training"]["optimiser"].startswith("closed-form least squares")
    assert card["params"] == 15 * 15 and card["task"] == "deblur"


def test_shipped_deblur_filter_beats_the_tuned_unsharp_mask_by_1_db_on_the_held_out_chest() -> None:
    """The issue's deblur target, on a crop of the held-out chest CR acquired blurred (blur 1.5 px, then noise at
    its own level): measured +1.9 dB over the tuned unsharp mask here and over the five crops of
    docs/evaluation-xray.md. It is the X-ray deblur default."""
    (chest,) = [s for s in corpus.load_split("test", ("XR",)) if s.source == "xr-chest"]
    clean = np.ascontiguousarray(chest.pixels[700:956, 500:756])
    acquired = degrade.apply(
        degrade.standard("deblur-1.5"), clean, rng=np.random.default_rng(0), value_range=chest.value_range
    )

    def psnr(name: str) -> float:
        out = Pipeline(name, device="cpu").run(acquired, modality="CR", value_range=chest.value_range)
        return score("XR", clean, out).psnr

    assert psnr("wiener-deblur-xr") > psnr("unsharp-deblur") + 1.0
    assert registry.default_enhancer("CR", "deblur") == "wiener-deblur-xr"
