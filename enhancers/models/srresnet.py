"""SRResNet, the SRGAN generator (Ledig et al., CVPR 2017), for 2x super-resolution.

The paper's generator: a 9x9 head with PReLU, B residual blocks (3x3 conv, batch norm, PReLU, 3x3 conv, batch
norm, identity skip), a 3x3 conv + batch norm with a long skip, one sub-pixel (pixel shuffle) 2x upsampling
stage with PReLU, and a 9x9 output conv. The paper uses B = 16 blocks of 64 features; the shipped weights use
fewer (their card says how many) to fit a CPU training budget. Trained with an L1 loss only it is a plain
regression model; with the optional adversarial loss the card sets `hallucination_risk`, because a GAN
generator is rewarded for plausible texture that may not be in the patient's data. `scale` 4 stacks two
pixel-shuffle stages, as the paper's 4x generator does (scale 2 keeps the original single-stage layout, so the
shipped 2x weights still load).

`upsample` = "nearest" or "resize" replaces each pixel-shuffle stage by a 2x upsampling (nearest neighbour, or
bilinear) followed by a 3x3 conv: the resize-convolution of Odena et al., "Deconvolution and checkerboard
artifacts", Distill 2016 (`ncdn` does the same in its decoder). Why: a pixel-shuffle stage computes each of the
four output phases with its own filter, so any difference between those filters is a period-2 pattern in every
output (period 4 after two stages); the first shipped 4x weights left a grid of 0.055 noise sigmas on native
radiographs (limit 0.05). After a resize one filter serves every output pixel, so a constant input gives a
constant output whatever the weights. Nearest, as Odena recommends, is the one the 4x radiograph model uses:
with the srresnet4x recipe (8 x 200 steps) the bilinear one hardly left bicubic (training L1 0.00284 against
0.00257 for shuffle; +0.01 dB on the held-out chest CR), nearest reached 0.00265 and +0.09 dB with a native grid
of 0.027 (likely because bilinear's triangle filter attenuates, before any weight sees it, the high frequencies
the model has to build). Same cost as the shuffle: a F -> F conv on 4x the pixels equals its F -> 4F conv.
The key's absence means "shuffle", the layout of the weights trained before it existed.
"""

from __future__ import annotations

import torch
from torch import nn

from enhancers.classical import bicubic_up
from enhancers.models.arch import Architecture, register_architecture


class _Block(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1),
            nn.BatchNorm2d(features),
            nn.PReLU(features),
            nn.Conv2d(features, features, 3, padding=1),
            nn.BatchNorm2d(features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class SRResNet(nn.Module):
    """(B, 1, H, W) -> (B, 1, sH, sW), s = `scale` (2 or 4). `bicubic_skip` adds the bicubic image to the
    output (off in the paper). `residual_scale` multiplies the network's output before that sum: the detail
    bicubic misses on a radiograph is ~0.5 % of full scale, and at scale 1 every Adam step moved the output by
    far more than that (see `enhancers.models.variants`)."""

    def __init__(
        self,
        blocks: int = 16,
        features: int = 64,
        bicubic_skip: bool = False,
        scale: int = 2,
        residual_scale: float = 1.0,
        upsample: str = "shuffle",
    ):
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"SRResNet scale must be 2 or 4, got {scale}")
        if upsample not in ("shuffle", "resize", "nearest"):
            raise ValueError(f"SRResNet upsample must be 'shuffle', 'resize' or 'nearest', got {upsample!r}")
        if not residual_scale > 0:
            raise ValueError(f"SRResNet residual_scale must be > 0, got {residual_scale}")
        self.bicubic_skip = bicubic_skip
        self.scale = scale
        self.residual_scale = float(residual_scale)
        self.head = nn.Sequential(nn.Conv2d(1, features, 9, padding=4), nn.PReLU(features))
        self.blocks = nn.Sequential(*[_Block(features) for _ in range(blocks)])
        self.fuse = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.BatchNorm2d(features))
        stage: list[nn.Module] = []
        for _ in range(scale // 2):
            if upsample == "shuffle":
                stage += [nn.Conv2d(features, features * 4, 3, padding=1), nn.PixelShuffle(2)]
            else:
                stage += [
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
                    if upsample == "resize"
                    else nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(features, features, 3, padding=1),
                ]
            stage.append(nn.PReLU(features))
        self.up = nn.Sequential(*stage)
        self.tail = nn.Conv2d(features, 1, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        feat = head + self.fuse(self.blocks(head))
        out: torch.Tensor = self.tail(self.up(feat))
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return out + bicubic_up(x, self.scale) if self.bicubic_skip else out


register_architecture(
    Architecture(
        name="srresnet",
        task="sr2x",
        build=SRResNet,
        config={"blocks": 16, "features": 64, "bicubic_skip": False},
        halo=32,
        description="SRGAN generator (SRResNet): residual blocks with BN/PReLU, pixel-shuffle 2x",
        paper="Ledig et al., Photo-Realistic Single Image Super-Resolution Using a GAN, CVPR 2017",
    )
)
