"""DRUNet (Zhang, Li, Zuo, Zhang, Van Gool, Timofte, IEEE TPAMI 2021): a U-Net of residual blocks.

The denoiser behind "Plug-and-Play Image Restoration with Deep Denoiser Prior": a U-Net whose levels are
made of residual blocks (3x3 conv, ReLU, 3x3 conv, identity skip) without batch normalisation, 2x2 strided
convolutions down, 2x2 transposed convolutions up, and *additive* skip connections between the encoder and
decoder levels. In the paper it beats DnCNN, FFDNet and the plain U-Net at every noise level. The paper uses
4 levels of (64, 128, 256, 512) with 4 blocks each and a noise-level input map; this CPU-sized version keeps
the structure with fewer features and predicts a correction added to its input so the identity is easy to
learn. `drunet` is blind (no noise map: the seed models); `ncdrunet` takes the noise-level map as the paper
does, fed with the series estimate of `enhancers.noise` (the level is not known on clinical data, but it can be
measured). Its up path is a transposed convolution: the native-image grid check (`evaluate --native`) is what
shows whether it leaves a pattern.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class DRUNet(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) = input + predicted correction."""

    def __init__(self, features: int = 32, levels: int = 3, blocks: int = 2, in_channels: int = 1):
        super().__init__()
        if levels < 2:
            raise ValueError("DRUNet needs at least 2 levels")
        widths = [features * 2**i for i in range(levels)]
        self.levels = levels
        self.head = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(levels - 1):
            self.enc.append(nn.Sequential(*[_Res(widths[i]) for _ in range(blocks)]))
            self.down.append(nn.Conv2d(widths[i], widths[i + 1], 2, stride=2))
        self.body = nn.Sequential(*[_Res(widths[-1]) for _ in range(blocks)])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.dec.append(nn.Sequential(*[_Res(widths[i]) for _ in range(blocks)]))
        self.tail = nn.Conv2d(widths[0], 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mult = 2 ** (self.levels - 1)
        h, w = x.shape[-2:]
        ph, pw = (-h) % mult, (-w) % mult
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        y = self.head(xp)
        skips: list[torch.Tensor] = []
        for enc, down in zip(self.enc, self.down, strict=True):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = self.body(y)
        for up, dec in zip(self.up, self.dec, strict=True):
            y = dec(up(y) + skips.pop())
        out: torch.Tensor = xp[:, :1] + self.tail(y)
        return out[..., :h, :w]


register_architecture(
    Architecture(
        name="drunet",
        task="denoise",
        build=DRUNet,
        config={"features": 32, "levels": 3, "blocks": 2},
        halo=48,
        description="DRUNet: U-Net of residual blocks, additive skips, no BN, blind, global residual",
        paper="Zhang et al., Plug-and-Play Image Restoration with Deep Denoiser Prior, IEEE TPAMI 2021",
    )
)


def _conditioned(features: int = 32, levels: int = 3, blocks: int = 2) -> DRUNet:
    return DRUNet(features, levels, blocks, in_channels=2)


register_architecture(
    Architecture(
        name="ncdrunet",
        task="denoise",
        build=_conditioned,
        config={"features": 32, "levels": 3, "blocks": 2},
        halo=48,
        conditioned=True,
        description="quality denoiser: DRUNet with its noise-level map input (as in the paper), no BN",
        paper="Zhang et al., Plug-and-Play Image Restoration with Deep Denoiser Prior, IEEE TPAMI 2021",
    )
)
