"""Ground truth on demand: template shapes, sparse codes, and counts drawn from an exponential family.

Everything is seeded: the same ``seed`` gives the same codes and counts.

Examples
--------
>>> from spikedict.simulate import paper_templates, simulate_counts
>>> simulation = simulate_counts(paper_templates(), n_examples=4, n_bins=500, family="binomial",
...                              n_trials=30, seed=0)
>>> simulation.counts.shape, int(simulation.counts.max()) <= 30
((4, 1, 500), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spikedict.families import Binomial, Family, get_family
from spikedict.model import code_shape, decode

__all__ = ["SimulatedCounts", "paper_templates", "simulate_codes", "simulate_counts"]


def _unit_norm(templates: np.ndarray) -> np.ndarray:
    norms = np.sqrt((templates.reshape(templates.shape[0], -1) ** 2).sum(axis=1))
    return templates / norms.reshape((-1,) + (1,) * (templates.ndim - 1))


def paper_templates(template_size: int = 50) -> np.ndarray:
    """The three templates of the DCEA paper's spike simulation, unit l2 norm.

    A one-period square wave (+1 then -1), a one-period triangle wave (-1 at the edges, +1 in the middle)
    and a two-cycle cosine: zero-mean shapes, mutually orthogonal without shift, so that the comparison
    measures learning and not the confusion of near-collinear templates.

    Returns
    -------
    ndarray, shape (3, 1, template_size)
    """
    if template_size < 4:
        raise ValueError(f"template_size must be at least 4 bins to hold the paper's shapes, got {template_size}.")
    phase = (np.arange(template_size) + 0.5) / template_size
    square = np.where(phase < 0.5, 1.0, -1.0)
    triangle = 1.0 - 4.0 * np.abs(phase - 0.5)
    cosine = np.cos(2 * np.pi * 2 * phase)
    return _unit_norm(np.stack([square, triangle, cosine])[:, None, :])


def simulate_codes(
    n_examples: int,
    n_templates: int,
    n_code_bins: int,
    *,
    event_rate: float = 0.01,
    amplitude_range: tuple[float, float] = (1.0, 2.0),
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Sparse non-negative codes: events at random positions with uniform random amplitudes.

    Parameters
    ----------
    n_examples, n_templates, n_code_bins : int
    event_rate : float
        Probability of an event per code bin and template.
    amplitude_range : (float, float)
        Amplitudes are uniform in this interval.
    seed : int or numpy Generator

    Returns
    -------
    ndarray, shape (n_examples, n_templates, n_code_bins)
    """
    if not 0 <= event_rate <= 1:
        raise ValueError(f"event_rate is a probability per bin and must lie in [0, 1], got {event_rate}.")
    rng = np.random.default_rng(seed)
    shape = (n_examples, n_templates, n_code_bins)
    events = rng.random(shape) < event_rate
    low, high = amplitude_range
    return events * rng.uniform(low, high, size=shape)


@dataclass
class SimulatedCounts:
    """Counts simulated from known templates and codes.

    Attributes
    ----------
    counts : ndarray, shape (n_examples, n_channels, n_bins)
    templates : ndarray, shape (n_templates, n_channels, template_size)
    codes : ndarray, shape (n_examples, n_templates, n_code_bins)
    linear_predictor : ndarray, shape (n_examples, n_channels, n_bins)
        ``eta``, the natural parameter of every bin.
    rates : ndarray, shape (n_examples, n_channels, n_bins)
        Expected counts per bin (``n_trials * p`` for binomial).
    baseline : ndarray, shape (n_channels,)
    family : Family
    """

    counts: np.ndarray
    templates: np.ndarray
    codes: np.ndarray
    linear_predictor: np.ndarray
    rates: np.ndarray
    baseline: np.ndarray
    family: Family

    @property
    def n_trials(self) -> int | np.ndarray | None:
        """Trials pooled per example (binomial family), else None."""
        return self.family.n_trials if isinstance(self.family, Binomial) else None


def simulate_counts(
    templates: np.ndarray,
    n_examples: int = 100,
    n_bins: int = 2000,
    family: str | Family = "binomial",
    *,
    n_trials: int | None = None,
    baseline: float | np.ndarray = -2.0,
    event_rate: float = 0.01,
    amplitude_range: tuple[float, float] = (1.0, 2.0),
    noise_std: float | None = None,
    seed: int | None = 0,
) -> SimulatedCounts:
    """Simulate data ``y ~ family(mean = f^-1(sum_c templates_c * codes_c + baseline))``.

    Parameters
    ----------
    templates : ndarray, shape (n_templates, n_channels, template_size)
    n_examples, n_bins : int
    family : str or Family
        ``"binomial"`` (needs ``n_trials``), ``"poisson"`` or ``"gaussian"``.
    n_trials : int, optional
        Trials per example for the binomial family (30 in the paper).
    baseline : float or ndarray of shape (n_channels,)
        Per-channel baseline of the linear predictor (log-odds or log-rate per bin).
    event_rate, amplitude_range :
        See :func:`simulate_codes`.
    noise_std : float, optional
        Noise standard deviation for the Gaussian family (default 1).
    seed : int

    Returns
    -------
    SimulatedCounts
    """
    templates = np.asarray(templates, dtype=np.float64)
    if family == "binomial" and n_trials is None:
        raise ValueError("the binomial family needs n_trials, the number of repeated trials per example (e.g. 30).")
    family = get_family(family, n_trials=n_trials, std=noise_std)
    rng = np.random.default_rng(seed)
    n_templates, n_channels, template_size = templates.shape
    (n_code_bins,) = code_shape((n_bins,), (template_size,))
    codes = simulate_codes(
        n_examples, n_templates, n_code_bins, event_rate=event_rate, amplitude_range=amplitude_range, seed=rng
    )
    baseline = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (n_channels,)).copy()
    with torch.no_grad():
        eta = decode(torch.from_numpy(codes), torch.from_numpy(templates)) + torch.from_numpy(baseline)[None, :, None]
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        counts = family.sample(eta, generator=generator)
        rates = family.mean(eta)
    return SimulatedCounts(
        counts=counts.numpy(),
        templates=templates,
        codes=codes,
        linear_predictor=eta.numpy(),
        rates=rates.numpy(),
        baseline=baseline,
        family=family,
    )
