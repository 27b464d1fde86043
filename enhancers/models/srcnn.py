"""SRCNN (Dong, Loy, He, Tang, ECCV 2014 / TPAMI 2016): the first CNN for single-image super-resolution.

The paper's 9-1-5 network with 64 and 32 filters, applied to the bicubic-upsampled image: patch extraction
(9x9, 64), non-linear mapping (1x1, 32), reconstruction (5x5, 1), ReLU after the first two. Faithful except
for two documented choices: 'same' zero padding (the paper trains without padding and crops, which changes
nothing inside the image), and an optional global skip from the bicubic input (`residual`, off by default;
the shipped weights say in their card whether it was on). `scale` (default 2) is the upsampling factor of
the pre-interpolation: 1 is the seed's deblurring use (the same network on a blurred image at its own size).
"""

from __future__ import annotations

import torch
from torch import nn

from enhancers.classical import bicubic_up
from enhancers.models.arch import Architecture, register_architecture


class SRCNN(nn.Module):
    """(B, 1, H, W) low-resolution -> (B, 1, sH, sW) with s = `scale`."""

    def __init__(
        self,
        f1: int = 64,
        f2: int = 32,
        k1: int = 9,
        k2: int = 1,
        k3: int = 5,
        residual: bool = False,
        scale: int = 2,
    ):
        super().__init__()
        self.residual = residual
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(1, f1, k1, padding=k1 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(f1, f2, k2, padding=k2 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(f2, 1, k3, padding=k3 // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = bicubic_up(x, self.scale)
        out: torch.Tensor = self.body(up)
        return up + out if self.residual else out


register_architecture(
    Architecture(
        name="srcnn",
        task="sr2x",
        build=SRCNN,
        config={"f1": 64, "f2": 32, "k1": 9, "k2": 1, "k3": 5, "residual": False},
        halo=12,
        description="SRCNN 9-1-5, 64/32 filters, on the bicubic-upsampled slice",
        paper="Dong et al., Image Super-Resolution Using Deep Convolutional Networks, TPAMI 2016",
    )
)
