"""Supervised training of the image denoisers on patches of the training images (never the test images)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from spikedict.images._data import sample_patches, training_images
from spikedict.images._models import DnCNN, ImageDCEA
from spikedict.solvers import FitResult
from spikedict.training import TrainingConfig, scheduled_learning_rate, train

__all__ = ["make_training_set", "train_dcea", "train_dncnn"]


def make_training_set(
    peak: float,
    n_patches: int,
    patch_size: int = 64,
    images: Sequence[np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Noisy photon counts and their clean means for random patches of the training images.

    Each training image is scaled to its own peak (``Q = max(image) / peak``, as for the test images),
    patches are drawn with random flips and rotations, and one Poisson draw is taken per patch.

    Returns
    -------
    counts, rates : Tensor of float32, shape (n_patches, 1, patch_size, patch_size)
    """
    images = training_images() if images is None else list(images)
    rates_images = [image * (peak / image.max()) for image in images]
    rng = np.random.default_rng(seed)
    rates = sample_patches(rates_images, n_patches, patch_size, flips=True, generator=rng)
    counts = rng.poisson(rates).astype(np.float64)
    as_tensor = lambda a: torch.as_tensor(a[:, None], dtype=torch.float32)  # noqa: E731
    return as_tensor(counts), as_tensor(rates)


def train_dcea(
    model: ImageDCEA,
    counts: Tensor,
    rates: Tensor,
    n_epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> FitResult:
    """Supervised MSE training (``exp(eta)`` against the clean mean counts) with :func:`spikedict.training.train`.

    Back-propagation through all unrolled iterations, no warm start (every patch is encoded from zero,
    as at test time). The baseline starts at the log of the mean clean rate.
    """
    with torch.no_grad():
        model.baseline.fill_(math.log(float(rates.mean())))
    config = TrainingConfig(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        backprop="full",
        warm_start=False,
        n_warmup_iterations=0,
        loss="mse",
        device="cpu",
        seed=seed,
        progress=progress,
    )
    return train(model, counts, config, target=rates)


def train_dncnn(
    model: DnCNN,
    counts: Tensor,
    rates: Tensor,
    n_epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    log: bool = False,
) -> list[float]:
    """Adam on the MSE of the predicted mean counts, cosine-annealed learning rate; returns the loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = TrainingConfig(n_epochs=n_epochs, learning_rate=learning_rate)  # the cosine schedule of train()
    losses = []
    model.train()
    for epoch in range(n_epochs):
        started = time.perf_counter()
        rate = scheduled_learning_rate(schedule, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        order = torch.randperm(counts.shape[0], generator=generator)
        total = 0.0
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            loss = ((model(counts[rows]) - rates[rows]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / counts.shape[0])
        if log:
            print(f"dncnn epoch {epoch + 1}: loss {losses[-1]:.5f} ({time.perf_counter() - started:.1f} s)", flush=True)
    model.eval()
    return losses
