"""Task variants of existing architectures: the same code, trained for another task or scale (issue 14).

Why a file of variants instead of new architectures: SRCNN, SRResNet and DRUNet are already here, one file each;
what changes for radiograph 4x super-resolution and deblurring is the task (which decides the output size, the
degradation `train` simulates and the Derivation Code of the derived object) and the default config, not the
network. Registering them as named architectures keeps `train --model NAME` and the weights manifest's `arch`
field one-to-one, so a model card always says exactly which code and config made its weights.

- `srresnet4x`: the SRGAN generator with its two pixel-shuffle stages (the paper's 4x), trained with L1
  (SRResNet) or, with `train --adversarial`, with the adversarial + feature loss (the SRGAN variant, flagged
  `hallucination_risk`). A bicubic skip is on: with a CPU training budget it learns the residual bicubic misses
  instead of the whole image, which converges in minutes rather than hours.
- `srcnn-deblur`: the seed's SRCNN 9-1-5 at the image's own size (no interpolation) on Gaussian-blurred images,
  with the global skip so it learns the missing detail.
- `drunet-deblur`: the stronger deblurring model: DRUNet's multi-scale residual U-Net (receptive field ~100 px
  against SRCNN's 13), which is what a blur spread over several pixels needs.
"""

from __future__ import annotations

from enhancers.models.arch import Architecture, register_architecture
from enhancers.models.drunet import DRUNet
from enhancers.models.srcnn import SRCNN
from enhancers.models.srresnet import SRResNet

register_architecture(
    Architecture(
        name="srresnet4x",
        task="sr4x",
        build=SRResNet,
        config={"blocks": 6, "features": 48, "bicubic_skip": True, "scale": 4},
        halo=16,
        description="SRResNet 4x: residual blocks with BN/PReLU, two pixel-shuffle 2x stages, bicubic skip",
        paper="Ledig et al., Photo-Realistic Single Image Super-Resolution Using a GAN, CVPR 2017",
    )
)

register_architecture(
    Architecture(
        name="srcnn-deblur",
        task="deblur",
        build=SRCNN,
        config={"f1": 64, "f2": 32, "k1": 9, "k2": 1, "k3": 5, "residual": True, "scale": 1},
        halo=8,
        description="SRCNN 9-1-5, 64/32 filters, at the image's own size on blurred images (global skip)",
        paper="Dong et al., Image Super-Resolution Using Deep Convolutional Networks, TPAMI 2016",
    )
)

register_architecture(
    Architecture(
        name="drunet-deblur",
        task="deblur",
        build=DRUNet,
        config={"features": 24, "levels": 3, "blocks": 2},
        halo=48,
        description="DRUNet (U-Net of residual blocks, no BN, global residual) trained to undo Gaussian blur",
        paper="Zhang et al., Plug-and-Play Image Restoration with Deep Denoiser Prior, IEEE TPAMI 2021",
    )
)
