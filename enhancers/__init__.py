"""Enhancers: tensor-in / tensor-out image enhancement for the gateway (denoising and 2x super-resolution).

The package knows nothing of DICOM networking or of the gateway; the worker hands it float32 slices in
modality units and gets enhanced slices back. Public API:

- `enhancers.registry`: `EnhancerInfo`, `register`, `names`, `info`, `infos`, `default_enhancer`.
- `enhancers.pipeline.Pipeline(name, device=..., batch_size=..., tile=..., threads=...).run(slices,
  modality=..., value_range=...)`: the inference path (normalisation, batching, device, autocast, tiling).
- `enhancers.metrics`: `psnr`, `ssim` (and `score`, the evaluation's per-modality data-range rule).
- `enhancers.degrade`: the simulated degradations (CT low dose in the projection domain, MR Rician,
  X-ray Poisson-Gaussian, 2x area downsampling, Gaussian blur).
- `enhancers.corpus`: the split-by-patient corpus manifest (`enhancers/data/manifest.json`).
- `enhancers.cli.add_commands`: the `train`, `evaluate` and `models` subcommands of `enhance-gateway`.

Shipped weights live in `enhancers/weights/` with `manifest.json` (sha256) and one model card per weight;
`docs/evaluation.md` has the evaluation table and the command lines that produced it.
"""
