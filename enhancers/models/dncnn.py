"""DnCNN (Zhang, Zuo, Chen, Meng, Zhang, IEEE TIP 2017): residual learning of the noise.

Conv + ReLU, then (depth - 2) x (conv + batch norm + ReLU), then conv; the network predicts the noise and the
output is input - noise. The paper uses depth 17 and 64 features on full-resolution patches.

`unshuffle` = 2 runs the same body on the 4 polyphase sub-images (pixel unshuffle, as FFDNet does, Zhang et
al. 2018): 4x fewer pixels per layer and a 2x larger receptive field for the same depth, which is what lets a
DnCNN-class network be trained on a 2-core CPU and still see the long streaks of low-dose CT noise. The
shipped cards say which variant each weight file is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


class DnCNN(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) = input - predicted noise."""

    def __init__(self, depth: int = 17, features: int = 64, unshuffle: int = 1, batch_norm: bool = True):
        super().__init__()
        if depth < 3:
            raise ValueError("DnCNN depth must be >= 3")
        if unshuffle not in (1, 2, 4):
            raise ValueError("unshuffle must be 1, 2 or 4")
        self.unshuffle = unshuffle
        ch = unshuffle * unshuffle
        layers: list[nn.Module] = [nn.Conv2d(ch, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(features, ch, 3, padding=1))
        self.body = nn.Sequential(*layers)
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.unshuffle
        if r == 1:
            out: torch.Tensor = x - self.body(x)
            return out
        h, w = x.shape[-2:]
        ph, pw = (-h) % r, (-w) % r
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        noise = F.pixel_shuffle(self.body(F.pixel_unshuffle(xp, r)), r)
        out = xp - noise
        return out[..., :h, :w]


register_architecture(
    Architecture(
        name="dncnn",
        task="denoise",
        build=DnCNN,
        config={"depth": 17, "features": 64, "unshuffle": 1, "batch_norm": True},
        halo=40,
        description="DnCNN residual denoiser (optionally on pixel-unshuffled sub-images, FFDNet style)",
        paper="Zhang et al., Beyond a Gaussian Denoiser, IEEE TIP 2017; Zhang et al., FFDNet, IEEE TIP 2018",
    )
)
