"""`fastsr`: a tiny 2x super-resolution network for CPU-only sites.

Why this shape: the same small U-body as `fastdn` (no convolution on the full-resolution grid: the input is
pixel-unshuffled into its 4 polyphase sub-images, the work is done at 1/2 and 1/4 of the input resolution,
with batch norm, which is what made such small networks train in a few hundred steps in our trials), then a
sub-pixel output (ESPCN, Shi et al. 2016) that emits the 2x image directly from the 1/2-resolution grid as a
residual over bicubic interpolation (VDSR's global residual), so it only learns the detail bicubic misses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from enhancers.classical import bicubic_up2
from enhancers.models.arch import Architecture, register_architecture
from enhancers.models.fastdn import UnshuffledUBody


class FastSR(UnshuffledUBody):
    """(B, 1, H, W) -> (B, 1, 2H, 2W) = bicubic + predicted detail."""

    def __init__(self, f1: int = 32, f2: int = 64, mid: int = 2):
        super().__init__(f1, f2, mid, tail_channels=16)  # 16 = (2 unshuffle x 2 upscale)^2 sub-pixel outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = self.padded(x)
        out: torch.Tensor = bicubic_up2(xp) + F.pixel_shuffle(self.correction(xp), 4)
        return out[..., : 2 * h, : 2 * w]


register_architecture(
    Architecture(
        name="fastsr",
        task="sr2x",
        build=FastSR,
        config={"f1": 32, "f2": 64, "mid": 2},
        halo=24,
        description="fast 2x SR: tiny U-body on the unshuffled grid, sub-pixel output, residual over bicubic",
        paper="sub-pixel output after Shi et al. (ESPCN, CVPR 2016); residual over bicubic after VDSR (2016)",
    )
)
