"""Poisson noise at a peak, PSNR, and the Anscombe variance-stabilising transform with its exact unbiased inverse."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "anscombe",
    "check_image",
    "check_peak",
    "inverse_anscombe",
    "mean_psnr",
    "poisson_noise",
    "psnr",
]


def check_image(image: np.ndarray, name: str = "image", nonnegative: bool = True) -> np.ndarray:
    """Validate a 2-D grayscale image and return it as a float64 array.

    Raises
    ------
    ValueError
        If it is not 2-D, not finite, negative (with ``nonnegative``), or smaller than 1 x 1.
    """
    array = np.asarray(image)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}; pass a 2-D grayscale image.")
    if array.ndim != 2:
        hint = (
            " For a colour image convert it to grayscale first (e.g. skimage.color.rgb2gray)."
            if array.ndim == 3 and array.shape[-1] in (3, 4)
            else ""
        )
        raise ValueError(
            f"{name} must be a 2-D grayscale array of shape (height, width), got shape {array.shape}.{hint}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass an image of at least 1 x 1 pixels.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} must be finite, but it contains {int((~np.isfinite(array)).sum())} NaN or inf value(s)."
        )
    if nonnegative and (array < 0).any():
        raise ValueError(
            f"{name} must be >= 0 (intensities or photon counts), got minimum {array.min():g} at "
            f"{np.unravel_index(array.argmin(), array.shape)}. Pass intensities, not baseline-subtracted data."
        )
    return array


def check_peak(peak: float) -> float:
    """Return ``peak`` as a positive finite float, or raise ``ValueError``."""
    try:
        value = float(peak)
    except (TypeError, ValueError):
        raise ValueError(f"peak must be a positive number (e.g. 1, 2 or 4), got {peak!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"peak must be a positive number (e.g. 1, 2 or 4), got {peak!r}.")
    return value


def poisson_noise(
    image: np.ndarray, peak: float, generator: np.random.Generator | int | None = None
) -> tuple[np.ndarray, float]:
    """Photon-limited observation of ``image`` at a peak: ``Q = max(image) / peak``, ``y ~ Poisson(image / Q)``.

    Parameters
    ----------
    image : array, shape (height, width)
        Clean, non-negative intensities with a positive maximum.
    peak : float
        Expected photon count at the brightest pixel (1, 2 and 4 in the DCEA paper).
    generator : numpy.random.Generator or int or None
        Source of randomness (an int seeds a new generator; None draws fresh entropy).

    Returns
    -------
    counts : ndarray of float64, shape (height, width)
        Whole-number photon counts ``y``.
    scale : float
        ``Q``; ``scale * counts`` is the noisy image back on the scale of ``image``.

    Examples
    --------
    >>> counts, scale = poisson_noise(np.full((2, 3), 255.0), peak=4, generator=0)
    >>> counts.shape, scale
    ((2, 3), 63.75)
    """
    image = check_image(image)
    peak = check_peak(peak)
    maximum = float(image.max())
    if maximum <= 0:
        raise ValueError("image is all zeros; Q = max(image) / peak needs a positive maximum.")
    scale = maximum / peak
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    counts = rng.poisson(image / scale).astype(np.float64)
    return counts, scale


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, with the peak taken as the clean image's maximum (as in the DCEA paper).

    ``10 log10(max(clean)^2 / mean((estimate - clean)^2))``.

    Parameters
    ----------
    estimate, clean : array, shape (height, width)

    Examples
    --------
    >>> round(psnr(np.array([[1.0, 3.0]]), np.array([[2.0, 4.0]])), 4)  # 10 log10(16 / 1)
    12.0412
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    clean = np.asarray(clean, dtype=np.float64)
    if estimate.shape != clean.shape:
        raise ValueError(f"estimate and clean must have the same shape, got {estimate.shape} and {clean.shape}.")
    mse = float(np.mean((estimate - clean) ** 2))
    peak = float(clean.max())
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def mean_psnr(
    denoiser: Callable[[np.ndarray, float], np.ndarray],
    clean: np.ndarray,
    peak: float,
    n_draws: int = 5,
    seed: int = 0,
) -> float:
    """PSNR of ``Q * denoiser(counts, peak)`` against ``clean``, averaged over ``n_draws`` noise draws.

    ``denoiser`` maps photon counts (shape (height, width)) to the estimated mean counts.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_draws):
        counts, scale = poisson_noise(clean, peak, rng)
        values.append(psnr(scale * np.asarray(denoiser(counts, peak)), clean))
    return float(np.mean(values))


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Anscombe transform ``2 sqrt(y + 3/8)``: Poisson counts become approximately Gaussian with unit variance."""
    return 2.0 * np.sqrt(np.asarray(counts, dtype=np.float64) + 3.0 / 8.0)


def inverse_anscombe(transformed: np.ndarray) -> np.ndarray:
    """Exact unbiased inverse of the Anscombe transform, closed-form approximation (Mäkitalo & Foi, 2011).

    ``I(D) = D^2/4 + sqrt(3/2) D^-1 / 4 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8``, with ``D`` floored at
    ``2 sqrt(3/8)`` (the transform of a zero count), below which the expansion is not meaningful.

    Examples
    --------
    >>> # Large D: about D^2/4 - 1/8, above the algebraic inverse (D/2)^2 - 3/8 = 100 by about 1/4
    >>> float(inverse_anscombe(anscombe(np.array(100.0))).round(2))
    100.26
    """
    d = np.maximum(np.asarray(transformed, dtype=np.float64), 2.0 * math.sqrt(3.0 / 8.0))
    root = math.sqrt(1.5)
    value = 0.25 * d**2 + 0.25 * root / d - 11.0 / 8.0 / d**2 + 0.625 * root / d**3 - 0.125
    return np.maximum(value, 0.0)
