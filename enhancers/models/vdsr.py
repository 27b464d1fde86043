"""VDSR (Kim, Lee, Lee, CVPR 2016): very deep residual super-resolution.

Faithful to the paper: 20 convolution layers of 3x3 with 64 filters, ReLU between them, zero padding that
keeps the size, and global residual learning: the network predicts the difference between the
bicubic-upsampled slice and the high-resolution one. The receptive field is 41x41 high-resolution pixels.
`scale` (default 2) is the pre-interpolation factor (VDSR handles several scales with one network).
"""

from __future__ import annotations

import torch
from torch import nn

from enhancers.classical import bicubic_up
from enhancers.models.arch import Architecture, register_architecture


class VDSR(nn.Module):
    """(B, 1, H, W) low-resolution -> (B, 1, sH, sW) = bicubic + predicted residual, s = `scale`."""

    def __init__(self, depth: int = 20, features: int = 64, scale: int = 2):
        super().__init__()
        self.scale = scale
        if depth < 3:
            raise ValueError("VDSR depth must be >= 3")
        layers: list[nn.Module] = [nn.Conv2d(1, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.normal_(last.weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = bicubic_up(x, self.scale)
        out: torch.Tensor = up + self.body(up)
        return out


register_architecture(
    Architecture(
        name="vdsr",
        task="sr2x",
        build=VDSR,
        config={"depth": 20, "features": 64},
        halo=16,
        description="VDSR, 20 layers 3x3x64, residual over bicubic",
        paper="Kim et al., Accurate Image Super-Resolution Using Very Deep Convolutional Networks, CVPR 2016",
    )
)
