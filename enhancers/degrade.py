"""Simulated degradations of clean images: the inputs of training and evaluation.

Why simulate: there are no paired low-dose / full-dose or low-res / high-res acquisitions of the same patient
in an offline corpus, but physically modelled degradations of real clean images give exact pairs with a known
ground truth. Each function takes modality values (HU, MR magnitude, X-ray stored values), returns float32 of
the same kind, and draws its randomness only from the `rng` it is given, so a seed reproduces it exactly.

Standard levels (used by `evaluate` and the shipped training recipes) are in `STANDARD`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.transform import iradon, radon

FloatArray = npt.NDArray[np.float32]

#: Linear attenuation coefficient of water, 1/mm, at about 70 keV effective energy (a 120 kVp CT beam).
MU_WATER_PER_MM = 0.0192
#: CT values below this are padding outside the field of view (e.g. -3024), treated as air.
CT_AIR_HU = -1024.0


def hu_to_mu(hu: npt.NDArray[np.floating], mu_water: float = MU_WATER_PER_MM) -> npt.NDArray[np.float64]:
    """HU -> linear attenuation (1/mm): mu = mu_water * (1 + HU / 1000), clipped at 0 (air)."""
    return np.clip(mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def mu_to_hu(mu: npt.NDArray[np.floating], mu_water: float = MU_WATER_PER_MM) -> npt.NDArray[np.float64]:
    """Linear attenuation (1/mm) -> HU: 1000 * (mu / mu_water - 1)."""
    return 1000.0 * (np.asarray(mu, dtype=np.float64) / mu_water - 1.0)


def ct_clean(hu: npt.NDArray[np.floating]) -> FloatArray:
    """The clean CT reference: padding below -1024 HU set to -1024 (air), as a scanner would measure it."""
    return np.maximum(np.asarray(hu, dtype=np.float32), np.float32(CT_AIR_HU))


@dataclass
class CTProjector:
    """Parallel-beam geometry for one slice size: forward projection, FBP, and a cache of clean sinograms.

    `n_angles` views over 180 degrees; `pixel_mm` converts the line integrals to the physical path length, so
    the photon statistics depend on the real size of the patient (take it from PixelSpacing).
    """

    n_angles: int = 720
    _cache: dict[tuple[int, bytes], npt.NDArray[np.float64]] = field(default_factory=dict, repr=False)

    @property
    def theta(self) -> npt.NDArray[np.float64]:
        return np.linspace(0.0, 180.0, self.n_angles, endpoint=False)

    def project(self, mu: npt.NDArray[np.float64], pixel_mm: float) -> npt.NDArray[np.float64]:
        """Line integrals (dimensionless) of mu over every ray; the square-padded slice is projected."""
        sq = _pad_square(mu)
        key = (sq.shape[0], hashlib.sha256(f"{pixel_mm}:{self.n_angles}:".encode() + sq.tobytes()).digest())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        sino: npt.NDArray[np.float64] = (
            np.asarray(
                radon(sq, theta=self.theta, circle=False),  # type: ignore[no-untyped-call]
                dtype=np.float64,
            )
            * pixel_mm
        )
        self._cache[key] = sino
        return sino

    def reconstruct(
        self, sinogram: npt.NDArray[np.float64], size: int, pixel_mm: float
    ) -> npt.NDArray[np.float64]:
        """Filtered back projection (ramp filter) of line integrals -> mu (1/mm) on a size x size grid."""
        rec = iradon(  # type: ignore[no-untyped-call]
            sinogram / pixel_mm, theta=self.theta, circle=False, filter_name="ramp", output_size=size
        )
        return np.asarray(rec, dtype=np.float64)


def _pad_square(img: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    h, w = img.shape
    n = max(h, w)
    out = np.zeros((n, n), dtype=np.float64)
    y0, x0 = (n - h) // 2, (n - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = img
    return out


def ct_low_dose(
    hu: npt.NDArray[np.floating],
    *,
    i0: float,
    rng: np.random.Generator,
    pixel_mm: float = 0.7,
    electronic_sigma: float = 0.0,
    projector: CTProjector | None = None,
    mu_water: float = MU_WATER_PER_MM,
) -> FloatArray:
    """Low-dose CT simulated in the projection domain.

    HU -> mu (water mu 0.0192/mm) -> parallel-beam line integrals p (skimage `radon`, `projector.n_angles` views, 720 by default) ->
    detected counts N ~ Poisson(i0 * exp(-p)) (+ Gaussian electronic noise of `electronic_sigma` counts),
    floored at 1 count -> p' = -log(N / i0) -> filtered back projection (ramp) -> HU. Lower `i0` (incident
    photons per ray) means fewer counts and more noise, with the streaks along high-attenuation paths that
    image-domain Gaussian noise lacks. Standard levels: 1e5 (mild), 2e4 (low dose).
    Returns float32 HU of the same shape.
    """
    if i0 <= 0:
        raise ValueError(f"i0 must be > 0 photons, got {i0}")
    arr = np.asarray(hu, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"ct_low_dose takes one 2-D slice, got shape {arr.shape}")
    proj = projector or CTProjector()
    mu = hu_to_mu(arr, mu_water)
    sino = proj.project(mu, pixel_mm)
    counts = rng.poisson(i0 * np.exp(-sino)).astype(np.float64)
    if electronic_sigma > 0:
        counts = counts + rng.normal(0.0, electronic_sigma, counts.shape)
    counts = np.maximum(counts, 1.0)
    noisy = -np.log(counts / i0)
    size = max(arr.shape)
    rec = proj.reconstruct(noisy, size, pixel_mm)
    h, w = arr.shape
    y0, x0 = (size - h) // 2, (size - w) // 2
    return mu_to_hu(rec[y0 : y0 + h, x0 : x0 + w], mu_water).astype(np.float32)


def ct_reconstructed(
    hu: npt.NDArray[np.floating],
    *,
    pixel_mm: float = 0.7,
    projector: CTProjector | None = None,
    mu_water: float = MU_WATER_PER_MM,
) -> FloatArray:
    """The same projection and FBP as `ct_low_dose`, without noise: the reference a low-dose image is scored and
    trained against.

    Why: the discrete projector and the ramp-filtered back projection change the image by themselves (a few
    HU of offset, a slightly different sharpness): against the original slice, a perfect denoiser of
    `ct_low_dose` output would still differ by 0.5 noise sigma after a 2 px blur at mild doses. A model trained
    to undo that learns to reshape real images too (a low-frequency change and a bias on real CT at its own
    noise); trained against this reference, it learns to remove noise only.
    """
    arr = np.asarray(hu, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"ct_reconstructed takes one 2-D slice, got shape {arr.shape}")
    proj = projector or CTProjector()
    sino = proj.project(hu_to_mu(arr, mu_water), pixel_mm)
    size = max(arr.shape)
    rec = proj.reconstruct(sino, size, pixel_mm)
    h, w = arr.shape
    y0, x0 = (size - h) // 2, (size - w) // 2
    return mu_to_hu(rec[y0 : y0 + h, x0 : x0 + w], mu_water).astype(np.float32)


def mr_rician(
    image: npt.NDArray[np.floating], *, sigma_fraction: float, rng: np.random.Generator
) -> FloatArray:
    """Rician noise of MR magnitude images: |x + n1 + i n2| with n1, n2 ~ N(0, sigma), sigma = fraction * max.

    This is the distribution of a magnitude image reconstructed from complex k-space data with Gaussian
    thermal noise: biased upwards in the dark background, nearly Gaussian in bright tissue. Standard levels:
    0.03 and 0.05 of the image maximum.
    """
    if sigma_fraction < 0:
        raise ValueError(f"sigma_fraction must be >= 0, got {sigma_fraction}")
    x = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    sigma = sigma_fraction * float(x.max()) if x.size else 0.0
    n1 = rng.normal(0.0, sigma, x.shape) if sigma > 0 else 0.0
    n2 = rng.normal(0.0, sigma, x.shape) if sigma > 0 else 0.0
    return np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32)


def xray_poisson_gaussian(
    image: npt.NDArray[np.floating],
    *,
    peak_photons: float,
    read_sigma: float,
    value_range: tuple[float, float],
    rng: np.random.Generator,
) -> FloatArray:
    """Poisson-Gaussian noise of a projection radiograph (Foi et al. 2008): signal-dependent quantum noise
    plus signal-independent detector read noise.

    With s = (v - lo) / (hi - lo) the signal as a fraction of `value_range`, the noisy fraction is
    Poisson(s * peak_photons) / peak_photons + N(0, read_sigma), mapped back to stored values. Fewer
    `peak_photons` (the quanta at full scale) means more noise; `read_sigma` is a fraction of full scale.
    Standard level: peak_photons 2000, read_sigma 0.002.
    """
    if peak_photons <= 0:
        raise ValueError(f"peak_photons must be > 0, got {peak_photons}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if hi <= lo:
        raise ValueError(f"value_range must have low < high, got {value_range!r}")
    s = np.clip((np.asarray(image, dtype=np.float64) - lo) / (hi - lo), 0.0, None)
    noisy = rng.poisson(s * peak_photons) / peak_photons
    if read_sigma > 0:
        noisy = noisy + rng.normal(0.0, read_sigma, s.shape)
    return (noisy * (hi - lo) + lo).astype(np.float32)


def downsample2x_area(image: npt.NDArray[np.floating]) -> FloatArray:
    """2x area downsampling: the mean of each 2x2 block (an odd last row/column is dropped).

    The acquisition model of a detector with pixels twice as large; `sr2x` models invert it. Works on one
    slice (H, W) or a stack (N, H, W).
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :h, :w]
    out = (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 4.0
    return out.astype(np.float32)


def downsample_area(image: npt.NDArray[np.floating], factor: int) -> FloatArray:
    """`factor` x `factor` area downsampling (block mean; trailing rows/columns that do not fill a block are
    dropped): the acquisition model `sr2x` (factor 2) and `sr4x` (factor 4) invert."""
    if factor == 2:
        return downsample2x_area(image)
    x = np.asarray(image, dtype=np.float64)
    h, w = (x.shape[-2] // factor) * factor, (x.shape[-1] // factor) * factor
    x = x[..., :h, :w]
    out: FloatArray = x.reshape(x.shape[:-2] + (h // factor, factor, w // factor, factor)).mean(axis=(-3, -1))
    return out.astype(np.float32)


def gaussian_blur(image: npt.NDArray[np.floating], *, sigma: float) -> FloatArray:
    """Gaussian blur of `sigma` pixels (reflecting borders): the seed project's "low quality" image."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    x = np.asarray(image, dtype=np.float32)
    if sigma == 0:
        return x.copy()
    return np.asarray(ndimage.gaussian_filter(x, sigma=sigma, mode="reflect"), dtype=np.float32)


def blurred_acquisition(
    image: npt.NDArray[np.floating],
    *,
    sigma: float,
    noise_sigma: float,
    rng: np.random.Generator,
    value_range: tuple[float, float],
    noise_corr_px: float = 0.0,
) -> FloatArray:
    """A blurred radiograph as a detector stores it: the scene blurred by a Gaussian of `sigma` px, then white
    Gaussian noise of `noise_sigma` (stored-value units) added AFTER the blur, then rounded to integers and
    clipped to `value_range` (what the detector can store). With `noise_corr_px` > 0 the noise is white noise
    smoothed by a Gaussian of that width and scaled back to `noise_sigma`: grain correlated over neighbouring
    pixels, as a CR's own (training draws it; the evaluation's standard level is white).

    Why not `gaussian_blur` alone: the blur of a radiograph happens before detection (focal spot, motion,
    scatter, the phosphor's spread), and the detector adds its noise to the blurred signal, then stores
    integers. A blur applied to a real image without noise afterwards only attenuates that image's own grain:
    every frequency survives, scaled down, so a linear filter fitted on the answer got 8.7 dB over the tuned
    unsharp mask on the held-out chest CR, and a model "won" by amplifying the grain back (a model that does
    that also adds a grid and a bias to real images). With the noise added after the blur, what the blur
    pushed below the noise is gone, as on a real blurred acquisition.

    `noise_sigma` is the image's own native level (`enhancers.noise.estimate_noise` of the clean image, see
    `native_noise_sigma`): the blurred acquisition is as noisy as the sharp one the detector would have made.
    White Gaussian rather than Poisson-Gaussian: the estimator gives one level per image, and CR/DX stored
    values are log-compressed exposure, so a Poisson law on the stored values would have the wrong form anyway.
    """
    lo, hi = float(value_range[0]), float(value_range[1])
    if hi <= lo:
        raise ValueError(f"value_range must have low < high, got {value_range!r}")
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    x = gaussian_blur(image, sigma=sigma).astype(np.float64)
    if noise_sigma > 0:
        noise = rng.normal(0.0, 1.0, x.shape)
        if noise_corr_px > 0:
            noise = ndimage.gaussian_filter(noise, noise_corr_px, mode="wrap")
            noise /= max(float(noise.std()), 1e-12)
        x = x + noise_sigma * noise
    return np.clip(np.rint(x), np.ceil(lo), np.floor(hi)).astype(np.float32)


def native_noise_sigma(image: npt.NDArray[np.floating]) -> float:
    """The noise sigma of a clean radiograph at its own noise (`enhancers.noise.estimate_noise`, X-ray rule):
    the level `blurred_acquisition` adds after the blur."""
    from enhancers.noise import estimate_noise

    return float(estimate_noise(np.asarray(image, dtype=np.float32), "XR").sigma)


@dataclass(frozen=True)
class Degradation:
    """A named degradation at a standard level, for a task and a modality group."""

    name: str
    task: str
    group: str
    params: dict[str, Any]
    description: str


#: The standard levels used by `evaluate` and the shipped recipes.
STANDARD: tuple[Degradation, ...] = (
    Degradation(
        "ct-i0-1e5", "denoise", "CT", {"i0": 1e5}, "CT low dose, I0 = 1e5 photons/ray, 720 views, FBP"
    ),
    Degradation(
        "ct-i0-2e4", "denoise", "CT", {"i0": 2e4}, "CT low dose, I0 = 2e4 photons/ray, 720 views, FBP"
    ),
    Degradation(
        "mr-rician-0.03", "denoise", "MR", {"sigma_fraction": 0.03}, "MR Rician noise, sigma 3% of max"
    ),
    Degradation(
        "mr-rician-0.05", "denoise", "MR", {"sigma_fraction": 0.05}, "MR Rician noise, sigma 5% of max"
    ),
    Degradation(
        "xr-pg-2000",
        "denoise",
        "XR",
        {"peak_photons": 2000.0, "read_sigma": 0.002},
        "X-ray Poisson-Gaussian, 2000 quanta at full scale, read noise 0.2% of full scale",
    ),
    Degradation(
        "blur-1.0", "denoise", "ANY", {"sigma": 1.0}, "Gaussian blur, sigma 1 px (seed's low quality)"
    ),
    Degradation("down2x-area", "sr2x", "ANY", {}, "2x area downsampling (2x2 mean)"),
    Degradation("down4x-area", "sr4x", "ANY", {}, "4x area downsampling (4x4 mean)"),
    Degradation(
        "deblur-1.5",
        "deblur",
        "ANY",
        {"sigma": 1.5, "noise": "native"},
        "Gaussian blur, sigma 1.5 px, then Gaussian noise at the image's own estimated level, rounded to "
        "integers (a blurred acquisition: `blurred_acquisition`)",
    ),
)

#: The `deblur` training blur: sigma drawn uniformly in this range (pixels), so a model is not tuned to one
#: exact blur; the evaluation's 1.5 px lies inside it.
DEBLUR_TRAIN_SIGMA: tuple[float, float] = (0.8, 2.2)


def standard(name: str) -> Degradation:
    """The standard degradation `name`; KeyError listing the names otherwise."""
    for d in STANDARD:
        if d.name == name:
            return d
    raise KeyError(f"no standard degradation {name!r}; known: {', '.join(d.name for d in STANDARD)}")


def apply(
    deg: Degradation,
    clean: npt.NDArray[np.floating],
    *,
    rng: np.random.Generator,
    value_range: tuple[float, float],
    pixel_mm: float = 0.7,
    projector: CTProjector | None = None,
    noise_sigma: float | None = None,
) -> FloatArray:
    """Apply a standard degradation to one clean slice (modality values). `noise_sigma`: the native noise level
    a degradation with `"noise": "native"` adds (deblur); None estimates it on `clean` (`native_noise_sigma`),
    training passes its cached per-slice estimate."""
    if deg.name.startswith("ct-"):
        return ct_low_dose(clean, i0=float(deg.params["i0"]), rng=rng, pixel_mm=pixel_mm, projector=projector)
    if deg.name.startswith("mr-rician"):
        return mr_rician(clean, sigma_fraction=float(deg.params["sigma_fraction"]), rng=rng)
    if deg.name.startswith("xr-pg"):
        return xray_poisson_gaussian(
            clean,
            peak_photons=float(deg.params["peak_photons"]),
            read_sigma=float(deg.params["read_sigma"]),
            value_range=value_range,
            rng=rng,
        )
    if deg.params.get("noise") == "native":
        return blurred_acquisition(
            clean,
            sigma=float(deg.params["sigma"]),
            noise_sigma=native_noise_sigma(clean) if noise_sigma is None else noise_sigma,
            rng=rng,
            value_range=value_range,
        )
    if deg.name.startswith(("blur", "deblur")):
        return gaussian_blur(clean, sigma=float(deg.params["sigma"]))
    if deg.name == "down2x-area":
        return downsample2x_area(clean)
    if deg.name == "down4x-area":
        return downsample_area(clean, 4)
    raise KeyError(f"no rule to apply degradation {deg.name!r}")
