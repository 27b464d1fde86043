"""U-Net denoiser (Ronneberger et al., MICCAI 2015) with a global residual, as in FBPConvNet (Jin et al. 2017).

An encoder-decoder with skip connections: at each level two 3x3 conv + batch norm + ReLU, 2x2 max pooling
down, 2x2 transposed convolution up, concatenation with the encoder features of the same level, and a 1x1
output conv. As in FBPConvNet (a U-Net for CT reconstructed by filtered back projection) the network predicts
a correction added to its input, which keeps the identity easy to learn. Inputs whose size is not a multiple
of 2^(levels-1) are reflect-padded and cropped back, so any slice size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) = input + predicted correction."""

    def __init__(self, features: int = 32, levels: int = 3):
        super().__init__()
        if levels < 2:
            raise ValueError("U-Net needs at least 2 levels")
        widths = [features * 2**i for i in range(levels)]
        self.levels = levels
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_double(cin, w))
            cin = w
        self.upconv = nn.ModuleList()
        self.updouble = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.upconv.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.updouble.append(_double(2 * w_lo, w_lo))
        self.out = nn.Conv2d(widths[0], 1, 1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mult = 2 ** (self.levels - 1)
        h, w = x.shape[-2:]
        ph, pw = (-h) % mult, (-w) % mult
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        skips: list[torch.Tensor] = []
        y = xp
        for i, block in enumerate(self.down):
            y = block(y)
            if i < self.levels - 1:
                skips.append(y)
                y = F.max_pool2d(y, 2)
        for up, block in zip(self.upconv, self.updouble, strict=True):
            y = block(torch.cat([up(y), skips.pop()], dim=1))
        out: torch.Tensor = xp + self.out(y)
        return out[..., :h, :w]


register_architecture(
    Architecture(
        name="unet",
        task="denoise",
        build=UNet,
        config={"features": 32, "levels": 3},
        halo=32,
        description="U-Net denoiser, 3 levels from 32 features, global residual (FBPConvNet style)",
        paper="Ronneberger et al., U-Net, MICCAI 2015; Jin et al., FBPConvNet, IEEE TIP 2017",
    )
)
