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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikedict.families import Binomial, Family, get_family, resolve_family
from spikedict.model import code_shape, decode

__all__ = [
    "SimulatedCounts",
    "Simulation",
    "make_templates",
    "paper_templates",
    "simulate_codes",
    "simulate_counts",
    "simulate_spikes",
]


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
    min_spacing: int = 0,
    amplitude_distribution: str | Callable[[np.random.Generator, int], np.ndarray] = "uniform",
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Sparse non-negative codes: events at random positions with random amplitudes.

    Parameters
    ----------
    n_examples, n_templates, n_code_bins : int
    event_rate : float
        Probability of an event per code bin and template.
    amplitude_range : (float, float)
        ``"uniform"`` amplitudes lie in this interval; ``"exponential"`` amplitudes are
        ``low + Exponential(mean = high - low)``.
    min_spacing : int
        Minimum distance in code bins between two events of an example (any templates). Events drawn closer
        than this to an earlier kept event are dropped, so the realised event rate is below ``event_rate``.
        0 (default) keeps every event.
    amplitude_distribution : {"uniform", "exponential"} or callable
        Or a function ``(rng, size) -> amplitudes`` of shape ``(size,)``.
    seed : int or numpy Generator

    Returns
    -------
    ndarray, shape (n_examples, n_templates, n_code_bins)

    Examples
    --------
    >>> codes = simulate_codes(2, 3, 100, event_rate=0.1, min_spacing=5, seed=0)
    >>> positions = np.flatnonzero(codes[0].any(axis=0))
    >>> bool(np.all(np.diff(positions) >= 5))
    True
    """
    if not 0 <= event_rate <= 1:
        raise ValueError(f"event_rate is a probability per bin and must lie in [0, 1], got {event_rate}.")
    if not isinstance(min_spacing, (int, np.integer)) or min_spacing < 0:
        raise ValueError(f"min_spacing must be a whole number of code bins >= 0, got {min_spacing!r}.")
    rng = np.random.default_rng(seed)
    shape = (n_examples, n_templates, n_code_bins)
    events = rng.random(shape) < event_rate
    low, high = amplitude_range
    if amplitude_distribution == "uniform":
        amplitudes = rng.uniform(low, high, size=shape)
    elif amplitude_distribution == "exponential":
        amplitudes = low + rng.exponential(high - low, size=shape)
    elif callable(amplitude_distribution):
        amplitudes = np.asarray(amplitude_distribution(rng, int(np.prod(shape))), dtype=np.float64).reshape(shape)
    else:
        raise ValueError(
            f"amplitude_distribution must be 'uniform', 'exponential' or a function (rng, size) -> amplitudes, "
            f"got {amplitude_distribution!r}."
        )
    if min_spacing > 1:
        events = _thin_events(events, min_spacing)
    return events * amplitudes


def _thin_events(events: np.ndarray, min_spacing: int) -> np.ndarray:
    """Keep events (in time order, any template) at least ``min_spacing`` bins after the last kept one."""
    kept = np.zeros_like(events)
    for n in range(events.shape[0]):
        templates, positions = np.nonzero(events[n])
        order = np.argsort(positions, kind="stable")
        last = -min_spacing
        for template, position in zip(templates[order], positions[order]):
            if position - last >= min_spacing:
                kept[n, template, position] = True
                last = position
    return kept


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


def _linear_predictor(codes: np.ndarray, templates: np.ndarray, baseline: np.ndarray) -> torch.Tensor:
    """``eta = sum_c templates_c * codes_c + baseline``, shape (n_examples, n_channels, n_bins)."""
    with torch.no_grad():
        return decode(torch.from_numpy(codes), torch.from_numpy(templates)) + torch.from_numpy(baseline)[None, :, None]


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
    family = resolve_family(family, n_trials, std=noise_std)
    rng = np.random.default_rng(seed)
    n_templates, n_channels, template_size = templates.shape
    (n_code_bins,) = code_shape((n_bins,), (template_size,))
    codes = simulate_codes(
        n_examples, n_templates, n_code_bins, event_rate=event_rate, amplitude_range=amplitude_range, seed=rng
    )
    baseline = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (n_channels,)).copy()
    eta = _linear_predictor(codes, templates, baseline)
    with torch.no_grad():
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


# ------------------------------------------------------------------------------------------ templates
TEMPLATE_KINDS = ("paper", "gaussian", "sinusoid", "random")


def make_templates(
    kind: str = "paper",
    n_templates: int = 3,
    template_size: int = 50,
    *,
    n_channels: int = 1,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Ground-truth template shapes, unit l2 norm each.

    Parameters
    ----------
    kind : {"paper", "gaussian", "sinusoid", "random"}
        ``"paper"``: the DCEA paper's square, triangle and two-cycle cosine (at most 3 templates, see
        :func:`paper_templates`); ``"gaussian"``: bumps at random centres with random widths (positive shapes);
        ``"sinusoid"``: sinusoids of random frequency (1 to 3 cycles) and phase under a Hann window;
        ``"random"``: white noise smoothed with a Gaussian kernel (width a tenth of ``template_size``) under a
        Hann window.
    n_templates, template_size : int
    n_channels : int
        Channels per template; the channels of one template are drawn independently (``"paper"``: copies).
    seed : int or numpy Generator

    Returns
    -------
    ndarray, shape (n_templates, n_channels, template_size)

    Examples
    --------
    >>> templates = make_templates("gaussian", n_templates=4, template_size=30, seed=1)
    >>> templates.shape, bool(np.allclose(np.linalg.norm(templates[:, 0], axis=1), 1.0))
    ((4, 1, 30), True)
    """
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"unknown template kind {kind!r}; choose one of {list(TEMPLATE_KINDS)}.")
    if not isinstance(n_templates, (int, np.integer)) or n_templates < 1:
        raise ValueError(f"n_templates must be an integer >= 1, got {n_templates!r}.")
    if not isinstance(template_size, (int, np.integer)) or template_size < 4:
        raise ValueError(f"template_size must be an integer >= 4 bins, got {template_size!r}.")
    if kind == "paper":
        if n_templates > 3:
            raise ValueError(f"the paper has 3 template shapes, {n_templates} were asked for; use another kind.")
        templates = paper_templates(template_size)[:n_templates]
        return templates if n_channels == 1 else _unit_norm(np.repeat(templates, n_channels, axis=1))
    rng = np.random.default_rng(seed)
    time = np.arange(template_size) + 0.5
    window = np.hanning(template_size + 2)[1:-1]
    shape = (n_templates, n_channels)
    if kind == "gaussian":
        centres = rng.uniform(0.25, 0.75, size=shape + (1,)) * template_size
        widths = rng.uniform(0.05, 0.15, size=shape + (1,)) * template_size
        templates = np.exp(-0.5 * ((time - centres) / widths) ** 2)
    elif kind == "sinusoid":
        cycles = rng.uniform(1.0, 3.0, size=shape + (1,))
        phases = rng.uniform(0, 2 * np.pi, size=shape + (1,))
        templates = window * np.sin(2 * np.pi * cycles * time / template_size + phases)
    else:
        noise = rng.standard_normal(shape + (template_size,))
        width = max(template_size / 10, 1.0)
        offsets = np.arange(-3 * int(np.ceil(width)), 3 * int(np.ceil(width)) + 1)
        kernel = np.exp(-0.5 * (offsets / width) ** 2)
        smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, noise)
        templates = window * smooth
    return _unit_norm(templates)


# ------------------------------------------------------------------------------------------ spikes
@dataclass
class Simulation:
    """Spike trains simulated from known templates and codes, as Neo objects and as counts.

    Attributes
    ----------
    block : neo.Block
        Segments are trials (annotated ``example`` and ``trial``), groups are units; the ground truth is in
        ``block.annotations`` (``templates``, the non-zero codes as ``code_example``, ``code_template``,
        ``code_position``, ``code_amplitude``, ``baseline``, ``family``, ``n_trials``, ``bin_size``).
    counts : spikedict.io.SpikeCounts
        The spikes binned with ``bin_size``; for the binomial family the trials of an example are pooled,
        ``counts.counts`` of shape (n_examples, n_channels, n_bins).
    templates : ndarray, shape (n_templates, n_channels, template_size)
    codes : ndarray, shape (n_examples, n_templates, n_code_bins)
    rates : ndarray, shape (n_examples, n_channels, n_bins)
        Expected ``counts.counts`` per bin (``n_trials * p`` for binomial, ``exp(eta)`` for Poisson).
    linear_predictor : ndarray, shape (n_examples, n_channels, n_bins)
    baseline : ndarray, shape (n_channels,)
    family : Family
    """

    block: Any
    counts: Any
    templates: np.ndarray
    codes: np.ndarray
    rates: np.ndarray
    linear_predictor: np.ndarray
    baseline: np.ndarray
    family: Family

    @property
    def n_trials(self) -> np.ndarray:
        """Trials pooled per example, shape (n_examples,)."""
        return self.counts.n_trials


def simulate_spikes(
    templates: np.ndarray | str = "paper",
    n_examples: int = 10,
    n_bins: int = 500,
    family: str = "binomial",
    *,
    n_trials: int | None = None,
    n_templates: int = 3,
    template_size: int = 50,
    bin_size: Any = None,
    baseline: float | np.ndarray = -2.0,
    event_rate: float = 0.01,
    min_spacing: int = 0,
    amplitude_range: tuple[float, float] = (1.0, 2.0),
    amplitude_distribution: str | Callable[[np.random.Generator, int], np.ndarray] = "uniform",
    poisson_method: str = "bins",
    seed: int | None = 0,
) -> Simulation:
    """Simulate spike trains ``spikes ~ family(f^-1(sum_c templates_c * codes_c + baseline))`` as a Neo Block.

    Binomial: in every bin each of the ``n_trials`` repeated trials of an example spikes with probability
    ``sigmoid(eta)`` (at most one spike per trial and bin), at a uniform random time inside the bin. Poisson:
    one trial per example, ``Poisson(exp(eta))`` spikes per bin at uniform random times inside the bin
    (``poisson_method="bins"``), or spike times from elephant's ``NonStationaryPoissonProcess`` with the
    piecewise-constant rate ``exp(eta) / bin_size`` (``poisson_method="process"``).

    Parameters
    ----------
    templates : ndarray of shape (n_templates, n_channels, template_size), or str
        The templates, or a kind for :func:`make_templates` (with ``n_templates`` and ``template_size``).
    n_examples, n_bins : int
    family : {"binomial", "poisson"}
    n_trials : int, optional
        Repeated trials per example for the binomial family (default 30, as in the paper); Poisson: 1.
    n_templates, template_size : int
        Used when ``templates`` is a kind.
    bin_size : quantities.Quantity, optional
        Bin width, default 1 ms. Trial ``m`` of example ``n`` spans ``[0, n_bins * bin_size)``.
    baseline : float or ndarray of shape (n_channels,)
        Log-odds (binomial) or log expected count (Poisson) per bin with no template active.
    event_rate, min_spacing, amplitude_range, amplitude_distribution :
        See :func:`simulate_codes`.
    poisson_method : {"bins", "process"}
    seed : int
        The same seed gives the same spikes.

    Returns
    -------
    Simulation

    Examples
    --------
    >>> simulation = simulate_spikes(n_examples=2, n_bins=200, n_trials=5, template_size=20, seed=0)
    >>> simulation.counts
    SpikeCounts(n_examples=2, n_channels=1, n_bins=200, bin_size=1.0 ms, t_start=0.0 ms, n_trials=5)
    >>> len(simulation.block.segments), int(simulation.counts.counts.max()) <= 5
    (10, True)
    """
    bin_size, family_name, n_trials = _check_spike_settings(bin_size, family, n_trials, poisson_method)
    # One generator for every draw, in this order: templates (for a kind), codes, then the spikes.
    rng = np.random.default_rng(seed)
    templates = _spike_templates(templates, n_templates, template_size, rng)
    n_channels = templates.shape[1]
    (n_code_bins,) = code_shape((n_bins,), (templates.shape[2],))
    codes = simulate_codes(
        n_examples,
        templates.shape[0],
        n_code_bins,
        event_rate=event_rate,
        amplitude_range=amplitude_range,
        min_spacing=min_spacing,
        amplitude_distribution=amplitude_distribution,
        seed=rng,
    )
    baseline = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (n_channels,)).copy()
    eta, rates, family_object = _spike_rates(codes, templates, baseline, family_name, n_trials)
    spike_times = _draw_spike_times(eta, rates, family_name, n_trials, poisson_method, bin_size, rng)
    truth = {
        "family": family_name,
        "n_trials": int(n_trials),
        "templates": templates,
        "baseline": baseline,
        "event_rate": float(event_rate),
        "seed": -1 if seed is None else int(seed),
    }
    block, counts = _spike_block_and_counts(spike_times, n_bins, bin_size, codes, truth)
    return Simulation(
        block=block,
        counts=counts,
        templates=templates,
        codes=codes,
        rates=rates,
        linear_predictor=eta,
        baseline=baseline,
        family=family_object,
    )


def _check_spike_settings(
    bin_size: Any, family: str, n_trials: int | None, poisson_method: str
) -> tuple[Any, str, int]:
    """Check :func:`simulate_spikes`' settings; return the bin size, the family's name and the trials per example."""
    import quantities as pq

    bin_size = 1 * pq.ms if bin_size is None else bin_size
    if not isinstance(bin_size, pq.Quantity):
        raise TypeError(f"bin_size must be a time with units, e.g. 1 * quantities.ms, got {bin_size!r}.")
    family_name = str(family).strip().lower()
    if family_name not in ("binomial", "poisson"):
        raise ValueError(f"simulate_spikes draws spikes for family 'binomial' or 'poisson', got {family!r}.")
    if family_name == "binomial":
        n_trials = 30 if n_trials is None else n_trials
    elif n_trials not in (None, 1):
        raise ValueError(
            f"the Poisson simulation has one trial per example, got n_trials={n_trials}; ask for more examples "
            "instead (n_examples), or use family='binomial' for repeated trials."
        )
    else:
        n_trials = 1
    if not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}.")
    if poisson_method not in ("bins", "process"):
        raise ValueError(f"poisson_method must be 'bins' or 'process', got {poisson_method!r}.")
    return bin_size, family_name, n_trials


def _spike_templates(
    templates: np.ndarray | str, n_templates: int, template_size: int, rng: np.random.Generator
) -> np.ndarray:
    """The templates as a float array (n_templates, n_channels, template_size); a kind is drawn from ``rng``."""
    if isinstance(templates, str):
        templates = make_templates(templates, n_templates, template_size, seed=rng)
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 3:
        raise ValueError(f"templates must have shape (n_templates, n_channels, template_size), got {templates.shape}.")
    return templates


def _spike_rates(
    codes: np.ndarray, templates: np.ndarray, baseline: np.ndarray, family_name: str, n_trials: int
) -> tuple[np.ndarray, np.ndarray, Family]:
    """The linear predictor, the expected count per bin (pooled over trials) and the family of the simulation."""
    eta = _linear_predictor(codes, templates, baseline)
    family_object = get_family(family_name, n_trials=n_trials if family_name == "binomial" else None)
    with torch.no_grad():
        rates = family_object.mean(eta).numpy()
    return eta.numpy(), rates, family_object


def _draw_spike_times(
    eta: np.ndarray,
    rates: np.ndarray,
    family_name: str,
    n_trials: int,
    poisson_method: str,
    bin_size: Any,
    rng: np.random.Generator,
) -> list[list[list[np.ndarray]]]:
    """Draw the spike times of every example, trial and channel; ``[n][m][c]`` in the units of ``bin_size``."""
    from spikedict.io._simulated import poisson_process_times

    n_examples, n_channels, n_bins = eta.shape
    width = float(bin_size.magnitude)
    spike_times: list[list[list[np.ndarray]]] = []
    for n in range(n_examples):
        trials = []
        for _ in range(n_trials):
            channels = []
            for c in range(n_channels):
                if family_name == "binomial":
                    probability = 1.0 / (1.0 + np.exp(-eta[n, c]))
                    bins = np.flatnonzero(rng.random(n_bins) < probability)
                elif poisson_method == "bins":
                    bins = np.repeat(np.arange(n_bins), rng.poisson(rates[n, c]))
                else:
                    channels.append(poisson_process_times(rates[n, c], bin_size, rng))
                    continue
                channels.append(np.sort((bins + rng.random(bins.size)) * width))
            trials.append(channels)
        spike_times.append(trials)
    return spike_times


def _spike_block_and_counts(
    spike_times: list[list[list[np.ndarray]]], n_bins: int, bin_size: Any, codes: np.ndarray, truth: dict[str, Any]
) -> tuple[Any, Any]:
    """The Neo Block of the spike times with the ground truth, and its counts (binomial: trials pooled per example)."""
    from spikedict.io import bin_spiketrains
    from spikedict.io._simulated import build_block

    block = build_block(spike_times, n_bins * bin_size, codes, truth, bin_size=bin_size)
    if truth["family"] == "binomial":
        counts = bin_spiketrains(block, bin_size, group_by="example")
    else:
        counts = bin_spiketrains(block, bin_size)
    return block, counts
