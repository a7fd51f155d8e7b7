"""Denoising networks for photon-limited images: 2-D DCEA-C / DCEA-UC with shift-averaging, a DnCNN-style CNN.

Every network here maps photon counts ``y`` (shape ``(n_images, 1, height, width)``) to the estimated mean
counts ``E[y] = image / Q`` and is trained for one peak. Saved as safetensors (weights) + JSON (settings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from spikedict._atomic import atomic_path, write_text_atomic
from spikedict.families import Poisson
from spikedict.model import DCEA

__all__ = [
    "DnCNN",
    "ImageDCEA",
    "ModelKind",
    "load_denoiser",
    "n_parameters",
    "predict_rate",
    "save_denoiser",
    "shift_average",
]

ModelKind = Literal["dcea-c", "dcea-uc", "dncnn"]
MODEL_FORMAT = "spikedict-image-denoiser"
MODEL_VERSION = 1


def n_parameters(model: nn.Module) -> int:
    """Number of trainable scalars of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ImageDCEA(DCEA):
    """2-D DCEA for Poisson images at one peak: strided 2-D templates, ISTA, ELU-stabilised Poisson residual.

    A :class:`~spikedict.model.DCEA` with ``family=Poisson(residual_bound=residual_bound)`` and one channel,
    whose encoder step is ``step_scale / (safety * peak * ||H||^2)``: the Poisson curvature (the rate) is
    about ``peak`` at the brightest pixels, so the step does not shrink with the largest noisy count as
    :meth:`DCEA.update_step_size` would make it. Templates start as the lowest-frequency 2-D DCT atoms.

    The residual is ``ELU(y - exp(eta), alpha=residual_bound)`` with ``alpha = 1`` by default, not the
    paper's ``alpha = peak``: torch's ELU has slope ``alpha`` just below zero, so ``alpha = peak`` weights
    over-estimates ``peak`` times more than under-estimates and biases the fixed point down; ``alpha = 1`` is
    the identity near zero and still saturates overshoots, which is the stabilisation the ELU is there for.

    Parameters
    ----------
    peak : float
        Peak of the photon counts the network is trained for (the ELU's ``alpha``).
    tied : bool
        True: DCEA-C (one dictionary, fixed ``sparsity``). False: DCEA-UC (untied encoder / decoder
        weights, one learned threshold per template).
    n_templates, template_size, stride, n_iterations, sparsity
        As in :class:`~spikedict.model.DCEA` (the paper: 169, 11, 7, 15; 64 templates by default here
        to train on a CPU).
    step_scale : float
        Multiplies the encoder's step.
    residual_bound : float or None
        ``alpha`` of the ELU on the Poisson residual (None: the plain residual).
    seed : int
        Seed of the random initial templates.
    """

    def __init__(
        self,
        peak: float,
        tied: bool = True,
        n_templates: int = 64,
        template_size: int = 11,
        stride: int = 7,
        n_iterations: int = 15,
        sparsity: float = 0.05,
        step_scale: float = 1.0,
        residual_bound: float | None = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            n_templates,
            1,
            (template_size, template_size),
            Poisson(residual_bound=residual_bound),
            sparsity=sparsity,
            n_iterations=n_iterations,
            algorithm="ista",
            nonnegative_codes=False,
            stride=stride,
            tied=tied,
            generator=torch.Generator().manual_seed(seed),
        )
        self.peak = float(peak)
        self.step_scale = float(step_scale)
        with torch.no_grad():
            self.templates.copy_(dct_templates(n_templates, template_size))
            if not tied:
                self.encoder_templates.copy_(self.templates)
                self.decoder_templates.copy_(self.templates)
        self.settings = {
            "kind": "dcea-c" if tied else "dcea-uc",
            "step_scale": self.step_scale,
            "residual_bound": residual_bound,
            "peak": self.peak,
            "n_templates": n_templates,
            "template_size": template_size,
            "stride": stride,
            "n_iterations": n_iterations,
            "sparsity": sparsity,
        }

    @torch.no_grad()
    def update_step_size(self, signal_shape: Any, y: Tensor | None = None, safety: float = 1.05) -> float:
        norm_squared = max(float(_norm_squared(self.templates, self.stride)), 1e-12)
        step = self.step_scale / (safety * self.peak * norm_squared)
        self.step_size.fill_(step)
        return step

    def predict_rate(self, counts: Tensor) -> Tensor:
        """Estimated mean counts on one stride grid (no shift-averaging), shape of ``counts``."""
        eta = self.decode(self.encode(counts), counts.shape[2:])
        return self.family.mean(eta)


def dct_templates(n_templates: int, template_size: int) -> Tensor:
    """The ``n_templates`` lowest-frequency 2-D DCT-II atoms of ``template_size`` x ``template_size`` (unit norm).

    Returns
    -------
    Tensor, shape (n_templates, 1, template_size, template_size)
    """
    k = template_size
    if n_templates > k * k:
        raise ValueError(f"at most {k * k} DCT templates of size {k}, got n_templates={n_templates}.")
    grid = torch.arange(k, dtype=torch.float64)
    basis = torch.stack([torch.cos(math.pi * (grid + 0.5) * u / k) for u in range(k)])  # (k, k)
    order = sorted(((u, v) for u in range(k) for v in range(k)), key=lambda uv: (uv[0] + uv[1], max(uv), uv))
    atoms = torch.stack([torch.outer(basis[u], basis[v]) for u, v in order[:n_templates]])
    atoms = atoms / atoms.flatten(1).norm(dim=1)[:, None, None]
    return atoms[:, None].float()


def _norm_squared(templates: Tensor, stride: tuple[int, ...]) -> float:
    from spikedict.model import operator_norm_squared

    return operator_norm_squared(templates.detach(), (64, 64), stride, n_iterations=30)


class DnCNN(nn.Module):
    """DnCNN-style residual CNN (Zhang et al. 2017) without batch normalisation, for one peak.

    ``rate = peak * (x - net(x))`` with ``x = counts / peak``: ``depth`` 3x3 convolutions of ``width``
    channels with ReLU between them, zero padding (the output has the input's shape).
    """

    def __init__(self, peak: float, depth: int = 13, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"DnCNN needs depth >= 2 and width >= 1, got depth={depth}, width={width}.")
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
                    module.bias.zero_()
            self.net[-1].weight.mul_(0.1)
        self.peak = float(peak)
        self.settings = {"kind": "dncnn", "peak": self.peak, "depth": depth, "width": width}

    def forward(self, counts: Tensor) -> Tensor:
        """Estimated mean counts, ``(n_images, 1, height, width) -> same shape``."""
        x = counts / self.peak
        return self.peak * (x - self.net(x))

    def predict_rate(self, counts: Tensor) -> Tensor:
        """Same as calling the network: estimated mean counts, shape of ``counts``."""
        return self(counts)


@torch.no_grad()
def shift_average(
    model: ImageDCEA, counts: np.ndarray, shifts: int | None = None, chunk: int = 7, seed: int = 0
) -> np.ndarray:
    """Shift-averaged DCEA estimate of the mean counts of a whole image.

    The image is padded symmetrically by ``template_size - 1`` pixels (plus the shift), the network runs
    on every one of the ``stride**2`` offsets of its stride grid, and the un-shifted outputs are averaged
    (the DCEA paper's shift-averaging, which removes the blocking of a strided dictionary).

    Parameters
    ----------
    model : ImageDCEA
    counts : array, shape (height, width)
    shifts : int or None
        Number of grid offsets to average (all ``stride**2`` by default). Fewer, for speed: a square
        number ``m**2`` takes an evenly spaced ``m x m`` sub-grid of offsets, any other number is drawn
        at random with ``seed``.
    chunk : int
        Offsets processed per batch (memory).

    Returns
    -------
    ndarray of float64, shape (height, width)
    """
    s = int(model.stride[0])
    margin = int(model.template_shape[0]) - 1
    height, width = counts.shape
    before = margin + s - 1
    padded = np.pad(counts, ((before, margin), (before, margin)), mode="symmetric")
    offsets = [(i, j) for i in range(s) for j in range(s)]
    root = math.isqrt(int(shifts)) if shifts is not None else 0
    if shifts is not None and shifts < len(offsets) and root * root == shifts:
        grid = sorted({int(v) for v in np.floor(np.arange(root) * s / root)})
        offsets = [(i, j) for i in grid for j in grid]
    elif shifts is not None and shifts < len(offsets):
        rng = np.random.default_rng(seed)
        offsets = [offsets[k] for k in np.sort(rng.choice(len(offsets), size=max(int(shifts), 1), replace=False))]
    dtype = model.templates.dtype
    device = model.templates.device
    total = np.zeros((height, width))
    for first in range(0, len(offsets), chunk):
        group = offsets[first : first + chunk]
        batch = np.stack([padded[i : i + height + 2 * margin, j : j + width + 2 * margin] for i, j in group])
        rate = model.predict_rate(torch.as_tensor(batch[:, None], dtype=dtype, device=device)).cpu().numpy()
        for k, (i, j) in enumerate(group):
            total += rate[k, 0, before - i : before - i + height, before - j : before - j + width]
    return total / len(offsets)


@torch.no_grad()
def predict_rate(model: nn.Module, counts: np.ndarray, shifts: int | None = None) -> np.ndarray:
    """Estimated mean counts of a whole image (shape (height, width)) with any of the networks here."""
    model.eval()
    if isinstance(model, ImageDCEA):
        return shift_average(model, counts, shifts=shifts)
    dtype = next(model.parameters()).dtype
    margin = 8
    padded = np.pad(counts, margin, mode="symmetric")
    rate = model.predict_rate(torch.as_tensor(padded[None, None], dtype=dtype)).numpy()[0, 0]
    return np.maximum(rate[margin:-margin, margin:-margin], 0.0)


def _build(settings: dict[str, Any]) -> nn.Module:
    kind = settings["kind"]
    if kind in ("dcea-c", "dcea-uc"):
        return ImageDCEA(
            settings["peak"],
            tied=kind == "dcea-c",
            n_templates=int(settings["n_templates"]),
            template_size=int(settings["template_size"]),
            stride=int(settings["stride"]),
            n_iterations=int(settings["n_iterations"]),
            sparsity=float(settings["sparsity"]),
            step_scale=float(settings.get("step_scale", 1.0)),
            residual_bound=settings.get("residual_bound", 1.0),
        )
    if kind == "dncnn":
        return DnCNN(settings["peak"], depth=int(settings["depth"]), width=int(settings["width"]))
    raise ValueError(f"unknown model kind {kind!r}; expected 'dcea-c', 'dcea-uc' or 'dncnn'.")


def save_denoiser(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``path`` (safetensors weights) and ``path`` with suffix ``.json`` (its settings).

    Each file is written atomically (a temporary file, then a rename), the weights first.

    Returns the path of the weights.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    settings = {"format": MODEL_FORMAT, "version": MODEL_VERSION, **model.settings}
    settings["n_parameters"] = n_parameters(model)
    if extra:
        settings["training"] = extra
    with atomic_path(path) as temporary:
        save_file(state, str(temporary))
    write_text_atomic(path.with_suffix(".json"), json.dumps(settings, indent=2) + "\n")
    return path


def load_denoiser(path: str | Path) -> nn.Module:
    """Load a model written by :func:`save_denoiser` (``.safetensors`` + ``.json``; never pickle).

    Raises
    ------
    FileNotFoundError
        If the weights or the JSON settings are missing.
    ValueError
        If either file is corrupt or they do not belong together.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    meta = path.with_suffix(".json")
    for file in (weights, meta):
        if not file.is_file():
            raise FileNotFoundError(
                f"no model file at {str(file)!r}; a model is a pair NAME.safetensors + NAME.json written by "
                "spikedict.images.save_denoiser (train one with benchmarks/train_image_models.py)."
            )
    try:
        settings = json.loads(meta.read_text())
        if not isinstance(settings, dict) or settings.get("format") != MODEL_FORMAT:
            raise ValueError(f"format is not {MODEL_FORMAT!r}")
        model = _build(settings)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(meta)!r} is not a valid spikedict image-denoiser description ({type(error).__name__}: {error}); "
            "use the JSON written by save_denoiser next to its .safetensors file."
        ) from None
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"could not load the weights {str(weights)!r}: the file is corrupt, truncated or belongs to another "
            f"model ({type(error).__name__}: {first}). Re-download or retrain it."
        ) from None
    model.eval()
    return model
