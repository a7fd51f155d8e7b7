"""Whole-image denoising with the shipped (or any saved) model, and the ``spikedict denoise`` command's logic."""

from __future__ import annotations

import math
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch import nn

from spikedict._atomic import atomic_path
from spikedict.images._data import data_directory, read_image
from spikedict.images._models import load_denoiser, predict_rate
from spikedict.images._noise import check_image, check_peak

__all__ = ["SHIPPED_PEAKS", "denoise", "denoise_cli", "denoise_command", "shipped_model_path"]

#: Peaks of the shipped models (one model of each kind per peak).
SHIPPED_PEAKS: tuple[float, ...] = (1.0, 2.0, 4.0)
_KINDS = ("dcea-uc", "dcea-c", "dncnn")


def shipped_model_path(kind: str, peak: float) -> Path:
    """Path (without suffix) of the shipped model of ``kind`` trained at the shipped peak nearest ``peak`` (log scale).

    Examples
    --------
    >>> shipped_model_path("dcea-uc", 3.5).name
    'dcea-uc_peak4'
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown model {kind!r}; shipped models are {', '.join(map(repr, _KINDS))}, or pass a path.")
    peak = check_peak(peak)
    nearest = min(SHIPPED_PEAKS, key=lambda p: abs(math.log(p) - math.log(peak)))
    return data_directory() / "models" / f"{kind}_peak{nearest:g}"


@lru_cache(maxsize=16)
def _load_cached(path: str) -> nn.Module:
    return load_denoiser(path)


def _resolve_model(model: nn.Module | str | Path | None, peak: float) -> nn.Module:
    if isinstance(model, nn.Module):
        if not hasattr(model, "predict_rate"):
            raise TypeError(
                f"model must be one of spikedict.images' networks (ImageDCEA, DnCNN), got {type(model).__name__}."
            )
        return model
    if model is None:
        model = "dcea-uc"
    if isinstance(model, str) and model in _KINDS:
        path = shipped_model_path(model, peak)
    else:
        path = Path(model)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
    return _load_cached(str(path))


def denoise(
    image: np.ndarray, peak: float, model: nn.Module | str | Path | None = None, shifts: int | None = None
) -> np.ndarray:
    """Denoise a photon-limited image: estimate the mean photon count of every pixel.

    Parameters
    ----------
    image : array, shape (height, width)
        Photon counts (non-negative; any size, square or not, odd or even; at least 1 x 1).
    peak : float
        Expected count at the brightest pixel (the noise level); the shipped model trained at the nearest
        of 1, 2, 4 is used.
    model : ImageDCEA or DnCNN or str or path, optional
        ``"dcea-uc"`` (default), ``"dcea-c"`` or ``"dncnn"`` for the shipped models; a path to a model
        written by :func:`spikedict.images.save_denoiser`; or a network object.
    shifts : int, optional
        Number of stride offsets averaged by the DCEA models (default: all ``stride**2``).

    Returns
    -------
    ndarray, shape (height, width)
        Estimated mean counts (multiply by ``Q = max(clean) / peak`` for the intensity scale). Same dtype
        as ``image`` if it is floating point, else float64.

    Examples
    --------
    >>> counts = np.random.default_rng(0).poisson(2.0, size=(13, 20))
    >>> denoise(counts, peak=4, shifts=1).shape
    (13, 20)
    """
    counts = check_image(image, name="image (photon counts)")
    peak = check_peak(peak)
    network = _resolve_model(model, peak)
    rate = predict_rate(network, counts, shifts=shifts)
    dtype = np.asarray(image).dtype
    return rate.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


def denoise_command(
    image_path: str | Path, peak: float, model_path: str | Path | None, out_path: str | Path | None
) -> int:
    """``spikedict denoise IMAGE --peak P [--model PATH] [--out FILE]``: denoise an image file of photon counts.

    ``IMAGE``: PNG / TIFF / JPEG (values as stored) or ``.npy``, holding photon counts. ``--model``: a
    shipped name (``dcea-uc``, ``dcea-c``, ``dncnn``) or a saved model path (default: shipped DCEA-UC).
    ``--out``: ``.npy`` (the estimated mean counts, float32) or ``.png`` (8-bit, counts scaled by
    ``255 / peak`` and clipped); default ``IMAGE_denoised.npy`` next to the input. Returns the exit status.
    """
    image_path = Path(image_path)
    counts = read_image(image_path)
    started = time.perf_counter()
    estimate = denoise(counts, peak, model=model_path)
    seconds = time.perf_counter() - started
    out = Path(out_path) if out_path else image_path.with_name(image_path.stem + "_denoised.npy")
    if out.suffix.lower() not in (".npy", ".png"):
        raise ValueError(f"--out must end in .npy or .png, got {str(out)!r}.")
    with atomic_path(out) as temporary:
        if out.suffix.lower() == ".npy":
            np.save(temporary, estimate.astype(np.float32))
        else:
            from PIL import Image

            scaled = np.clip(np.rint(estimate * (255.0 / float(peak))), 0, 255).astype(np.uint8)
            Image.fromarray(scaled).save(temporary)
    print(
        f"denoised {image_path.name} ({counts.shape[0]} x {counts.shape[1]}, peak {float(peak):g}, "
        f"{model_path or 'dcea-uc'}) in {seconds:.1f} s -> {out}",
        file=sys.stdout,
    )
    return 0


def denoise_cli(arguments: object) -> int:
    """Argparse-free wrapper: ``denoise_command(arguments.image, arguments.peak, arguments.model, arguments.out)``."""
    return denoise_command(
        arguments.image, arguments.peak, getattr(arguments, "model", None), getattr(arguments, "out", None)
    )
