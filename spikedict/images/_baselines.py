"""Classical baseline: the Anscombe transform, a Gaussian denoiser (BM3D if installed), the exact unbiased inverse."""

from __future__ import annotations

import numpy as np

from spikedict.images._noise import anscombe, check_image, inverse_anscombe

__all__ = ["anscombe_denoise", "has_bm3d"]


def has_bm3d() -> bool:
    """Whether the optional ``bm3d`` package imports."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def anscombe_denoise(counts: np.ndarray, peak: float | None = None, method: str = "auto") -> np.ndarray:
    """Estimated mean counts by Anscombe transform, Gaussian denoising at unit noise, exact unbiased inverse.

    Parameters
    ----------
    counts : array, shape (height, width)
        Photon counts.
    peak : float, optional
        Unused (the transform needs no noise level); accepted so every denoiser has the same signature.
    method : {"auto", "bm3d", "gaussian"}
        ``"bm3d"`` (the ``bm3d`` package, ``sigma_psd=1``), ``"gaussian"`` (a Gaussian filter of width
        1.5 pixels, the simple stand-in), ``"auto"``: BM3D if installed, else the Gaussian filter.

    Returns
    -------
    ndarray of float64, shape (height, width)
    """
    counts = check_image(counts, name="counts")
    if method == "auto":
        method = "bm3d" if has_bm3d() else "gaussian"
    transformed = anscombe(counts)
    if method == "bm3d":
        import bm3d

        smoothed = np.asarray(bm3d.bm3d(transformed, sigma_psd=1.0), dtype=np.float64)
    elif method == "gaussian":
        from scipy.ndimage import gaussian_filter

        smoothed = gaussian_filter(transformed, sigma=1.5, mode="reflect")
    else:
        raise ValueError(f"method must be 'auto', 'bm3d' or 'gaussian', got {method!r}.")
    return inverse_anscombe(smoothed)
