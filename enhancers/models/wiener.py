"""FIR Wiener filters for radiograph restoration: the linear filter that minimises the squared error on the
training pairs, fitted in closed form (`enhancers.training.fit_least_squares`), for deblurring (one 15 x 15
filter) and for super-resolution (one 11 x 11 filter of the low-resolution image per output phase: a polyphase
upsampler).

Why a linear filter ships beside the networks: on blurred acquisitions of the held-out chest CR the 15 x 15
filter fitted on the real training CR gains +1.92 dB over the tuned unsharp mask (5 of 5 crops;
docs/evaluation-xray.md), where `drunet-deblur-xr`, which starts at the mask and learns a correction in the
few thousand CPU steps this repository can afford, gained +1.52 (+0.39 when the DRRs trained with the CR); a
filter fitted on the same crops' answers reaches +2.15. For super-resolution the networks do better (2x +0.19 dB
over bicubic, fastsr-xr +0.26; 4x +0.11, srresnet4x-xr +0.21). It is the classical optimum a network must beat
(the Wiener filter is the best linear estimate for the training data's signal and noise statistics), and it is
exact, fast and cannot invent structure.

Each phase's filter is divided by its sum in `forward`, so the filter keeps the mean of any image whatever
the rounding of the shipped float16 weights (a DC gain off by 1e-3 would shift a CR by a third of its noise
sigma), and every phase has the same DC gain (no phase grid on flat regions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from enhancers.models.arch import Architecture, register_architecture


class LinearRestorer(nn.Module):
    """`scale`^2 filters of `size` x `size` (one per output phase, pixel-shuffled; one for `scale` 1), each
    normalised to sum 1, with reflected borders. Built as the identity (nearest upsampling for `scale` > 1)."""

    def __init__(self, size: int = 15, scale: int = 1) -> None:
        super().__init__()
        if size % 2 != 1 or scale < 1:
            raise ValueError(f"need an odd size and scale >= 1, got {size}, {scale}")
        self.size, self.scale = size, scale
        weight = torch.zeros(scale * scale, 1, size, size)
        weight[:, 0, size // 2, size // 2] = 1.0
        self.weight = nn.Parameter(weight)

    def kernels(self) -> torch.Tensor:
        """The filters as applied: each phase's weights divided by their sum."""
        w: torch.Tensor = self.weight / self.weight.sum(dim=(1, 2, 3), keepdim=True)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.size // 2
        y = F.conv2d(F.pad(x, (half, half, half, half), mode="reflect"), self.kernels().to(x.dtype))
        return F.pixel_shuffle(y, self.scale) if self.scale > 1 else y


def _linear(size: int = 15, scale: int = 1) -> nn.Module:
    return LinearRestorer(size, scale)


for _name, _task, _size, _scale in (
    ("wiener-deblur", "deblur", 15, 1),
    ("wiener-sr2x", "sr2x", 11, 2),
    ("wiener-sr4x", "sr4x", 11, 4),
):
    register_architecture(
        Architecture(
            name=_name,
            task=_task,
            build=_linear,
            config={"size": _size, "scale": _scale},
            halo=_size // 2 + 1,
            description=f"FIR Wiener filter: {'one' if _scale == 1 else f'{_scale * _scale} polyphase'} "
            f"{_size}x{_size} linear filter{'s' if _scale > 1 else ''} fitted by least squares on the "
            "training pairs (mean-preserving)",
            paper="Wiener, Extrapolation, Interpolation, and Smoothing of Stationary Time Series, 1949",
            closed_form=True,
        )
    )
