"""`fastdn`: a tiny U-Net denoiser for CPU-only sites (at least 8 slices/s at 512x512 on 2 cores).

Why this shape: on a CPU, convolutions with few channels at full resolution are memory-bound and slow, while
32-64 channel convolutions on a smaller grid run near peak. So no convolution touches the full-resolution grid:
the slice is pixel-unshuffled into its 4 polyphase sub-images (as FFDNet does) and the work is done at 1/2
and 1/4 resolution (a strided 2x2 convolution down, a transposed 2x2 up, an additive skip as in DRUNet), with
batch norm, which in our trials made the
difference between a network that learns in a few hundred steps and one that does not move (plain
pixel-unshuffled CNNs of the same cost stalled). The network predicts a correction added to its input.
About 10 k multiply-adds per pixel, about 1/25 of the seed U-Net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UnshuffledUBody(nn.Module):
    """The body `fastdn` and `fastsr` share: unshuffle, work at 1/2 and 1/4 resolution, a zero-initialised tail.

    Subclasses choose the tail's channel count and what the tail's output is added to. The attribute names
    are the weights' keys: renaming one would orphan the shipped weights.
    """

    def __init__(self, f1: int, f2: int, mid: int, tail_channels: int):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(4, f1, 3, padding=1), nn.ReLU(inplace=True))
        self.enc1 = _cbr(f1, f1)
        self.down = nn.Sequential(nn.Conv2d(f1, f2, 2, stride=2), nn.ReLU(inplace=True))
        self.mid = nn.Sequential(*[_cbr(f2, f2) for _ in range(mid)])
        self.up = nn.ConvTranspose2d(f2, f1, 2, stride=2)
        self.dec1 = _cbr(f1, f1)
        self.tail = nn.Conv2d(f1, tail_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity (or bicubic): only the correction is learnt
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """`x` reflect-padded to a multiple of 4 (two halvings)."""
        ph, pw = (-x.shape[-2]) % 4, (-x.shape[-1]) % 4
        return F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x

    def correction(self, xp: torch.Tensor) -> torch.Tensor:
        """The tail's output on the 1/2-resolution grid for a padded input."""
        h1 = self.enc1(self.head(F.pixel_unshuffle(xp, 2)))
        h2 = self.mid(self.down(h1))
        out: torch.Tensor = self.tail(self.dec1(self.up(h2) + h1))
        return out


class FastDenoiser(UnshuffledUBody):
    """(B, 1, H, W) -> (B, 1, H, W) = input + predicted correction."""

    def __init__(self, f1: int = 32, f2: int = 64, mid: int = 2):
        super().__init__(f1, f2, mid, tail_channels=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = self.padded(x)
        out: torch.Tensor = xp + F.pixel_shuffle(self.correction(xp), 2)
        return out[..., :h, :w]


register_architecture(
    Architecture(
        name="fastdn",
        task="denoise",
        build=FastDenoiser,
        config={"f1": 32, "f2": 64, "mid": 2},
        halo=24,
        description="fast denoiser: tiny U-Net working at 1/2 and 1/4 resolution (CPU >= 8 slices/s at 512x512)",
        paper="after U-Net (Ronneberger 2015) and DRUNet (Zhang 2021), sized for CPU throughput",
    )
)
