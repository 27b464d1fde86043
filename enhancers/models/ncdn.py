"""`ncdn`: a noise-conditioned denoiser without a phase grid, sized for CPUs (>= 8 slices/s at 512x512, 2 cores).

Why it replaced `fastdn` as the default:
- **Noise-conditioned** (as FFDNet and DRUNet): a second input channel holds the series' noise level (the
  estimate of `enhancers.noise`, in normalised units, times `LEVEL_GAIN`). It is trained over a continuum of
  levels from the image's own native noise to strong low-dose noise, including pairs with no added noise
  whose level is drawn at or below the native one and whose target is the input itself. So an image at
  normal dose is touched lightly, a low-dose one strongly. A route's `strength` above 1 multiplies the level
  (FFDNet's documented use of its noise map); below 1 the pipeline blends the output with the input.
- **No phase grid**: `fastdn` pixel-unshuffled the slice and predicted its four polyphase sub-images
  separately, which left a period-2 pattern on real images. Here a full-resolution head and tail bracket the
  work done at 1/2 and 1/4 resolution; going down is a strided 3x3 convolution (overlapping windows, not a
  polyphase split), coming up is bilinear interpolation followed by a convolution (Odena et al., 2016:
  resize-convolution instead of transposed convolution avoids checkerboards), and each level adds its skip.
- Batch norm in the low-resolution body (it made small CPU-sized U-Nets train in a few hundred steps); the
  tail starts at zero, so the untrained network is the identity and only a correction is learnt.
About 11 k multiply-adds per pixel.
- `refine` (default 0): that many 3x3 convolutions at full resolution between the skip sum and the tail. Why:
  without them the only full-resolution work is the head and the tail, so the finest-scale correction is a
  gated sum of 16 linear 3x3 filters of the input plus interpolated (smooth) coarse features. On MR Rician 5 %
  most of what the model left above BM3D-rc's error was in the finest band (error within 1 px of Gaussian:
  9.8 vs 8.2 on the abdomen test slice), i.e. noise let through at full resolution (issue 12). Measured: with
  `refine` 2 (+2.3 k multiply-adds per pixel each) the same 48-epoch MR recipe scored lower, not higher (test
  split 33.22 vs 33.38 dB foreground at Rician 5 %, docs/lopo.md "full-resolution refinement"), so no shipped
  model uses it; it stays so that result can be rerun (`train --config '{"refine": 2}'`).
- `leak` (default 0: ReLU): the negative slope of the full-resolution activations (head and gate). Why: with
  ReLU the radiograph model lost 11 of its 16 gate channels for good (negative on > 95 % of every CR's pixels,
  so no gradient ever revived them) and underfit; at 0.1 they keep a tenth of their gradient and `ncdn-xr`
  learnt to denoise (enhancers.training, the recipe's X-ray comment). The CT and MR weights keep ReLU: most of
  their channels are alive, and on the MR leave-one-patient-out fold (patient 021234567, the shipped recipe,
  48 epochs) leak 0.1 scored lower: foreground PSNR at Rician 5 % 33.23 against 33.69 dB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _gate(leak: float) -> nn.Module:
    """The full-resolution activation: ReLU, or leaky with `leak` (the shipped CT/MR weights use ReLU)."""
    return nn.LeakyReLU(leak, inplace=True) if leak else nn.ReLU(inplace=True)


class NoiseConditionedDenoiser(nn.Module):
    """(B, 2, H, W) [image, noise-level map] -> (B, 1, H, W) = image + predicted correction."""

    def __init__(
        self, f0: int = 16, f1: int = 32, f2: int = 64, mid: int = 2, refine: int = 0, leak: float = 0.0
    ):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(2, f0, 3, padding=1), _gate(leak))
        self.down1 = _cbr(f0, f1, stride=2)
        self.enc1 = _cbr(f1, f1)
        self.down2 = _cbr(f1, f2, stride=2)
        self.mid = nn.Sequential(*[_cbr(f2, f2) for _ in range(mid)])
        self.up2 = nn.Conv2d(f2, f1, 1)
        self.dec1 = _cbr(f1, f1)
        self.up1 = nn.Conv2d(f1, f0, 1)
        self.refine = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(f0, f0, 3, padding=1), nn.ReLU(inplace=True)) for _ in range(refine)]
        )
        self.gate = _gate(leak)
        self.tail = nn.Conv2d(f0, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        h0 = self.head(xp)
        h1 = self.enc1(self.down1(h0))
        h2 = self.mid(self.down2(h1))
        u1 = F.interpolate(self.up2(h2), size=h1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.dec1(u1.add_(h1))
        u0 = F.interpolate(self.up1(d1), size=h0.shape[-2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = xp[:, :1] + self.tail(self.refine(self.gate(u0.add_(h0))))
        return out[..., :h, :w]


register_architecture(
    Architecture(
        name="ncdn",
        task="denoise",
        build=NoiseConditionedDenoiser,
        config={"f0": 16, "f1": 32, "f2": 64, "mid": 2},
        halo=32,
        conditioned=True,
        description="noise-conditioned denoiser: full-resolution head and tail, U-body at 1/2 and 1/4, no grid",
        paper="noise-level map input after FFDNet (Zhang 2018) and DRUNet (Zhang 2021); resize-convolution "
        "upsampling after Odena et al. 2016",
    )
)
