"""Held-out prediction of spikes: a fitted model against a constant rate, the PSTH and elephant's smoothing.

A fair held-out test needs spikes the rate models have not seen, at the same times as the spikes the rates are
inferred from (the rate follows a stimulus or an event the models do not know). :func:`split_spikes` splits the
counts of every held-out example into two independent halves; every model infers its rate from the first half
and is scored on the second:

* the fitted model: codes inferred from the first half, ``rate = mean(decode(codes) + baseline)``;
* a constant rate per channel, fitted on the training examples;
* the PSTH (peri-stimulus time histogram): the mean count of each bin over the training examples, for examples
  that are trials aligned to an event;
* elephant's ``instantaneous_rate`` of the first half, a Gaussian kernel whose width is chosen on the training
  examples (the width that best predicts their second halves from their first).

A PSTH or a smoothed rate estimated from few spikes is near 0 in places, where a single held-out spike costs a
large loss; each is mixed with the constant rate, with the weight (0 among the choices, :data:`MIXING_WEIGHTS`)
that predicts best on the training examples.

The gain over the constant rate, in bits per spike of the second half, is what :func:`heldout_comparison`
reports and what ``spikedict fit`` writes as ``heldout_bits_per_spike``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import quantities as pq
import torch

from spikedict.analysis._data import AnalysisData, _carried_n_trials, as_analysis_data, split_trials
from spikedict.analysis.metrics import constant_rates, log_likelihood_per_bin
from spikedict.families import Binomial, Family, Poisson

__all__ = [
    "bits_per_spike",
    "heldout_comparison",
    "predict_second_half",
    "smoothed_rates",
    "split_half_gain",
    "split_spikes",
]

#: Gaussian kernel widths tried by the smoothing model, in bins.
DEFAULT_WIDTHS_IN_BINS = (1, 2, 4, 8, 16, 32)
#: Weights of the constant rate mixed into the PSTH and the smoothed rate, chosen on the training examples: a rate
#: estimated from few spikes is near 0 in places, where one spike costs a large loss; mixing in the constant is
#: the simplest floor, and its weight 0 is among the choices.
MIXING_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
CONSTANT = "constant rate"
MODEL = "spikedict"
PSTH = "PSTH"
SMOOTHING = "instantaneous_rate"


def _family_of(data: AnalysisData, family: str | Family) -> Family:
    if isinstance(family, Family):
        return family
    name = str(family).strip().lower()
    if name == "binomial":
        trials = _carried_n_trials(data)
        return Binomial(1 if trials is None else trials)
    if name == "poisson":
        return Poisson()
    raise ValueError(
        f"held-out spikes are split between two halves of the counts, which needs count data ('binomial' or "
        f"'poisson'), got family {family!r}."
    )


def _with_trials(data: AnalysisData, model: Any) -> AnalysisData:
    """``data`` carrying the binomial model's single ``n_trials`` when the counts come without theirs."""
    trials = getattr(model.family_, "n_trials", None)
    if _carried_n_trials(data) is None and isinstance(trials, int):
        return replace(data, n_trials=trials)
    return data


def split_spikes(
    data: Any, family: str | Family = "poisson", seed: int = 0
) -> tuple[AnalysisData, AnalysisData, float]:
    """Split every example's counts into two independent halves with the same rate.

    Binomial examples that pool ``M >= 2`` trials are split by trials (:func:`~spikedict.analysis.split_trials`):
    each half is a binomial count of its own trials at the data's spike probability. Other counts are thinned:
    each spike goes to the first or the second half with probability 1/2, so that Poisson counts give two
    independent Poisson halves at half the rate. (Thinning single-trial binomial counts is exact only as the
    spike probability goes to 0; at the probabilities of spike counts in bins of milliseconds it is close.)

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
    family : {"binomial", "poisson"} or Family
    seed : int
        Seeds the split.

    Returns
    -------
    first, second : AnalysisData
        The halves; ``first.counts + second.counts`` equals the counts.
    exposure : float
        The halves' rate relative to the data's, for counts without trials (0.5 when thinned; 1.0 when split by
        trials, whose ``n_trials`` carry it).

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.random.default_rng(0).poisson(2.0, size=(3, 1, 50))
    >>> first, second, exposure = split_spikes(counts, "poisson")
    >>> exposure, bool(np.all(first.counts + second.counts == counts))
    (0.5, True)
    """
    data = as_analysis_data(data)
    family = _family_of(data, family)
    trials = _carried_n_trials(data)
    if isinstance(family, Binomial) and trials is None:
        trials = family.n_trials
        data = replace(data, n_trials=trials)
    if isinstance(family, Binomial) and np.all(np.asarray(trials) >= 2):
        first, second = split_trials(data, 0.5, seed=seed)
        return first, second, 1.0
    rng = np.random.default_rng(seed)
    first_counts = rng.binomial(data.counts.astype(np.int64), 0.5).astype(np.float64)
    halves = [
        AnalysisData(counts=values, n_trials=data.n_trials, family=None, templates=data.templates)
        for values in (first_counts, data.counts - first_counts)
    ]
    return halves[0], halves[1], 0.5


def _per_trial(data: AnalysisData, family: Family) -> np.ndarray:
    """Trials behind every example, shape (n_examples, 1, 1) (ones for Poisson counts)."""
    if not isinstance(family, Binomial):
        return np.ones((data.n_examples, 1, 1))
    trials = _carried_n_trials(data)
    trials = family.n_trials if trials is None else trials
    return np.broadcast_to(np.asarray(trials, dtype=np.float64).reshape(-1, 1, 1), (data.n_examples, 1, 1))


def bits_per_spike(data: Any, rates: np.ndarray, reference_rates: np.ndarray, family: str | Family) -> float:
    """Log-likelihood gain of ``rates`` over ``reference_rates`` on the counts ``data``, in bits per spike.

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins) or counts object
    rates, reference_rates : ndarray, broadcastable to the counts' shape
        Expected counts per bin of the model and of the reference (e.g. a constant rate).
    family : {"binomial", "poisson"} or Family

    Returns
    -------
    float
        ``(log p(y | rates) - log p(y | reference_rates)) / (n_spikes * log 2)``, summed over all bins; NaN when
        the counts hold no spike.
    """
    data = as_analysis_data(data)
    n_spikes = float(data.counts.sum())
    if n_spikes <= 0:
        return math.nan
    family = _family_of(data, family)
    difference = log_likelihood_per_bin(data, rates, family) - log_likelihood_per_bin(data, reference_rates, family)
    return float(difference * data.counts.size / (n_spikes * math.log(2.0)))


@contextlib.contextmanager
def _exposure(model: Any, exposure: float) -> Iterator[None]:
    """The fitted model with its baseline shifted by ``log(exposure)`` (rates scaled by it), then restored."""
    if exposure == 1.0:
        yield
        return
    baseline = model.model_.baseline
    saved = baseline.detach().clone()
    with torch.no_grad():
        baseline.add_(math.log(exposure))
    try:
        yield
    finally:
        with torch.no_grad():
            baseline.copy_(saved)


def _model_rates(model: Any, first: AnalysisData, second: AnalysisData, exposure: float, family: Family) -> np.ndarray:
    """Expected counts of ``second`` from codes inferred on ``first``."""
    with _exposure(model, exposure):
        rates = np.asarray(model.predict_rate(first), dtype=np.float64)
    return rates * _per_trial(second, family) / _per_trial(first, family)


def _psth(train: AnalysisData, second: AnalysisData, family: Family, exposure: float) -> np.ndarray:
    """The training examples' mean spikes per trial in every bin, scaled to ``second``."""
    trials = _per_trial(train, family)
    per_trial = train.counts.sum(axis=0) / float(trials.sum())
    return per_trial[None] * _per_trial(second, family) * exposure


def _mixed(rates: np.ndarray, constant: np.ndarray, weight: float) -> np.ndarray:
    return (1.0 - weight) * rates + weight * constant


def _best_weight(data: AnalysisData, rates: np.ndarray, constant: np.ndarray, family: Family) -> tuple[float, float]:
    """The mixing weight (and its log-likelihood per bin) that best predicts ``data`` from ``rates``."""
    scores = [log_likelihood_per_bin(data, _mixed(rates, constant, w), family) for w in MIXING_WEIGHTS]
    best = int(np.argmax(scores))
    return MIXING_WEIGHTS[best], scores[best]


def _psth_weight(train: AnalysisData, family: Family) -> float:
    """The PSTH's mixing weight: the PSTH of the even training examples predicting the odd ones, and back."""
    if train.n_examples < 2:
        return 0.0
    halves = [train.subset(np.arange(start, train.n_examples, 2)) for start in (0, 1)]
    scores = np.zeros(len(MIXING_WEIGHTS))
    for fitted_on, scored in (halves, halves[::-1]):
        psth = _psth(fitted_on, scored, family, 1.0)
        constant = constant_rates(scored, _scored(scored, family), fitted_on=fitted_on)
        scores += [
            log_likelihood_per_bin(scored, _mixed(psth, constant, w), _scored(scored, family)) for w in MIXING_WEIGHTS
        ]
    return MIXING_WEIGHTS[int(np.argmax(scores))]


def smoothed_rates(counts: np.ndarray, bin_size: pq.Quantity, width: pq.Quantity) -> np.ndarray:
    """Expected counts per bin from elephant's ``instantaneous_rate`` of the spikes in ``counts``.

    Each count becomes spikes at its bin's centre; ``elephant.statistics.instantaneous_rate`` with a Gaussian
    kernel of standard deviation ``width`` (border-corrected, sampled once per bin) gives the rate.

    Parameters
    ----------
    counts : ndarray, shape (n_examples, n_channels, n_bins)
    bin_size, width : quantities.Quantity
        Times.

    Returns
    -------
    ndarray, shape (n_examples, n_channels, n_bins)
        ``rate * bin_size``: the expected count per bin of data like ``counts``.
    """
    import neo
    from elephant.kernels import GaussianKernel
    from elephant.statistics import instantaneous_rate

    counts = np.asarray(counts)
    n_examples, n_channels, n_bins = counts.shape
    seconds = float(bin_size.rescale(pq.s).magnitude)
    centres = (np.arange(n_bins) + 0.5) * seconds
    kernel = GaussianKernel(width.rescale(pq.s))
    expected = np.empty(counts.shape, dtype=np.float64)
    for example in range(n_examples):
        trains = [
            neo.SpikeTrain(
                np.repeat(centres, counts[example, channel].astype(np.int64)) * pq.s,
                t_start=0 * pq.s,
                t_stop=n_bins * seconds * pq.s,
            )
            for channel in range(n_channels)
        ]
        rate = instantaneous_rate(
            trains, sampling_period=seconds * pq.s, kernel=kernel, border_correction=True, center_kernel=True
        )
        values = np.asarray(rate.rescale(pq.Hz).magnitude, dtype=np.float64)[:n_bins].T * seconds
        expected[example] = np.maximum(values, 0.0)
    return expected


def _smoothing_width(
    train: AnalysisData, family: Family, bin_size: pq.Quantity, widths: Sequence[pq.Quantity], seed: int
) -> tuple[pq.Quantity, float]:
    """The kernel width and mixing weight whose smoothing of the training examples' first halves best predicts
    their second."""
    first, second, exposure = split_spikes(train, family, seed=seed + 1)
    scale = _per_trial(second, family) / _per_trial(first, family)
    scored = _scored(second, family)
    constant = constant_rates(second, scored, fitted_on=train) * exposure
    choices = [
        (width, *_best_weight(second, smoothed_rates(first.counts, bin_size, width) * scale, constant, scored))
        for width in widths
    ]
    width, weight, _ = max(choices, key=lambda choice: choice[2])
    return width, weight


def _scored(data: AnalysisData, family: Family) -> Family:
    """The family in which ``data`` (a half) are scored."""
    if isinstance(family, Binomial):
        return Binomial(_per_trial(data, family).reshape(-1).astype(np.int64))
    return family


def heldout_comparison(
    model: Any,
    train: Any,
    heldout: Any,
    *,
    bin_size: pq.Quantity | None = None,
    widths: Sequence[pq.Quantity] | None = None,
    psth: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Held-out log-likelihood of a fitted model against a constant rate, the PSTH and smoothed spikes.

    The counts of every held-out example are split into two independent halves (:func:`split_spikes`); every
    model predicts the second half from the first (see the module's description), so no model is scored on
    spikes it has seen.

    Parameters
    ----------
    model : SpikeDictionary
        Fitted on ``train`` (binomial or Poisson family).
    train : array of shape (n_examples, n_channels, n_bins) or counts object
        The examples the model was fitted on: the constant rate, the PSTH and the kernel width come from them.
    heldout : same kinds as ``train``
        Examples none of the models has seen.
    bin_size : quantities.Quantity, optional
        Width of a bin: needed for the smoothing model (left out without it). Taken from ``heldout`` when it is
        a :class:`~spikedict.io.SpikeCounts`.
    widths : sequence of quantities.Quantity, optional
        Kernel widths to choose from (default: 1, 2, 4, ... 32 bins).
    psth : bool
        Add the PSTH: for examples that are trials aligned to an event (not pieces cut from a long recording).
    seed : int
        Seeds the splits of the counts.

    Returns
    -------
    pandas.DataFrame
        One row per rate model (``spikedict``, ``constant rate``, then ``PSTH`` and ``instantaneous_rate`` where
        computed), with columns ``model``, ``setting`` (the kernel width and the constant rate's mixing weight),
        ``heldout_log_likelihood_per_bin`` (of the second halves, per bin and channel) and ``bits_per_spike``
        (gain over the constant rate per spike of the second halves; positive: better than a constant rate).
    """
    bin_size = getattr(heldout, "bin_size", None) if bin_size is None else bin_size
    family_name = getattr(model.family_, "name", "")
    if family_name not in ("binomial", "poisson"):
        raise ValueError(
            f"held-out spikes can be split only for count families ('binomial', 'poisson'); the model's family is "
            f"{family_name!r}."
        )
    train = _with_trials(as_analysis_data(train, "train"), model)
    heldout = _with_trials(as_analysis_data(heldout, "heldout"), model)
    if train.counts.shape[1:] != heldout.counts.shape[1:]:
        raise ValueError(
            f"train and heldout must have the same channels and bins, got shapes {train.counts.shape[1:]} and "
            f"{heldout.counts.shape[1:]}."
        )
    family = _family_of(heldout, family_name)
    first, second, exposure = split_spikes(heldout, family, seed=seed)
    scored = _scored(second, family)
    constant = constant_rates(second, scored, fitted_on=train, n_trials=None) * exposure
    rates: dict[str, tuple[str, np.ndarray]] = {
        MODEL: ("", _model_rates(model, first, second, exposure, family)),
        CONSTANT: ("", constant),
    }
    if psth:
        weight = _psth_weight(train, family)
        rates[PSTH] = (
            f"mixed with the constant rate, weight {weight:g}",
            _mixed(_psth(train, second, family, exposure), constant, weight),
        )
    if bin_size is not None:
        widths = [w * bin_size for w in DEFAULT_WIDTHS_IN_BINS] if widths is None else list(widths)
        width, weight = _smoothing_width(train, family, bin_size, widths, seed)
        scale = _per_trial(second, family) / _per_trial(first, family)
        smoothed = _mixed(smoothed_rates(first.counts, bin_size, width) * scale, constant, weight)
        sigma = float(width.rescale(pq.ms).magnitude)
        setting = f"Gaussian kernel, sigma {sigma:g} ms; mixed with the constant rate, weight {weight:g}"
        rates[SMOOTHING] = (setting, smoothed)
    rows = [
        {
            "model": name,
            "setting": setting,
            "heldout_log_likelihood_per_bin": log_likelihood_per_bin(second, values, scored),
            "bits_per_spike": bits_per_spike(second, values, constant, scored),
        }
        for name, (setting, values) in rates.items()
    ]
    return pd.DataFrame(rows)


def predict_second_half(
    model: Any, data: Any, family: str | Family | None = None, seed: int = 0
) -> tuple[AnalysisData, np.ndarray, Family, float]:
    """Split ``data`` (:func:`split_spikes`) and predict the second half from codes inferred on the first.

    Returns
    -------
    second : AnalysisData
        The half that is scored.
    rates : ndarray, shape (n_examples, n_channels, n_bins)
        Its expected counts.
    family : Family
        The family it is scored in (its own ``n_trials`` for pooled binomial counts).
    exposure : float
        Its rate relative to the data's, for counts without trials (see :func:`split_spikes`).
    """
    data = _with_trials(as_analysis_data(data), model)
    family = _family_of(data, getattr(model.family_, "name", "") if family is None else family)
    first, second, exposure = split_spikes(data, family, seed=seed)
    return second, _model_rates(model, first, second, exposure, family), _scored(second, family), exposure


def split_half_gain(model: Any, data: Any, seed: int = 0) -> float:
    """Gain of a fitted model over a constant rate when it predicts half of the spikes of ``data`` from the other.

    The counts are split as by :func:`split_spikes`; codes are inferred from the first half and the second half is
    scored, against the constant rate of the counts. On the examples the model was fitted on, the templates have
    seen both halves, but no code has seen the half it is scored on: this is the score by which ``spikedict fit``
    compares sparsities without touching its held-out examples.

    Parameters
    ----------
    model : SpikeDictionary
        Fitted, binomial or Poisson family.
    data : array of shape (n_examples, n_channels, n_bins) or counts object
    seed : int
        Seeds the split.

    Returns
    -------
    float
        Bits per spike of the second half (above 0: better than a constant rate).
    """
    data = _with_trials(as_analysis_data(data), model)
    second, rates, scored, exposure = predict_second_half(model, data, seed=seed)
    constant = constant_rates(second, scored, fitted_on=data) * exposure
    return bits_per_spike(second, rates, constant, scored)
