"""Goodness of fit and event detection: log-likelihood per bin, deviance, pseudo-R², hits and false events.

The likelihood metrics score *predicted rates* (expected counts per bin, what
:meth:`spikedict.SpikeDictionary.predict_rate` returns) under a given family, so that any model, including
one fitted in another family (the Gaussian mismatch), is scored in the data's own family. A rate outside
the family's support (a Gaussian fit can predict a negative count, or more than ``n_trials``) is clipped
into it first (see ``clip``).

Examples
--------
>>> import numpy as np
>>> counts = np.array([[[0.0, 1.0, 2.0, 1.0]]])
>>> round(log_likelihood_per_bin(counts, np.full_like(counts, 1.0), "poisson"), 4)
-1.1733
>>> round(pseudo_r2(counts, counts, "poisson"), 4)  # the saturated model explains everything
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from spikedict.analysis._data import as_analysis_data, resolve_family
from spikedict.analysis.alignment import Alignment, align_templates
from spikedict.families import Binomial, Family, Gaussian

__all__ = [
    "constant_rates",
    "deviance_per_bin",
    "event_detection",
    "find_events",
    "log_likelihood_per_bin",
    "posterior_events",
    "pseudo_r2",
]

# Default clip of predicted rates into the open support: a fraction of n_trials for the binomial family,
# a count for the Poisson family. See log_likelihood_per_bin.
DEFAULT_CLIP = 1e-6


def _tensor(values: np.ndarray) -> torch.Tensor:
    """A float64 tensor owning a copy of ``values`` (arrays may be read-only broadcast views)."""
    return torch.from_numpy(np.array(values, dtype=np.float64, copy=True))


def _check_rates(rates: Any, counts: np.ndarray, name: str = "rates") -> np.ndarray:
    if isinstance(rates, torch.Tensor):
        rates = rates.detach().cpu().numpy()
    rates = np.asarray(rates, dtype=np.float64)
    try:
        rates = np.broadcast_to(rates, counts.shape)
    except ValueError:
        raise ValueError(
            f"{name} must have the shape of the counts {counts.shape} (n_examples, n_channels, n_bins) or "
            f"broadcast to it, got shape {rates.shape}."
        ) from None
    if not np.all(np.isfinite(rates)):
        raise ValueError(f"{name} contain NaN or inf; pass finite expected counts per bin.")
    return rates


def _natural_parameter(rates: np.ndarray, family: Family, counts: np.ndarray, clip: float) -> torch.Tensor:
    """``eta`` whose mean is ``rates``, after clipping the rates into the open support of ``family``."""
    if not 0 < clip < 0.5:
        raise ValueError(f"clip must lie in (0, 0.5), got {clip}.")
    return family.clipped_link(_tensor(rates), clip)


def _resolve(
    data: Any, rates: Any, family: str | Family | None, n_trials: Any
) -> tuple[np.ndarray, np.ndarray, Family]:
    data = as_analysis_data(data)
    rates = _check_rates(rates, data.counts)
    named_gaussian = isinstance(family, str) and family.strip().lower() == "gaussian"
    family = resolve_family(family, data, n_trials)
    if named_gaussian:
        family = Gaussian(std=max(float(np.sqrt(np.mean((data.counts - rates) ** 2))), 1e-12))
    family.validate(_tensor(data.counts), "counts")
    return data.counts, rates, family


def _per_bin(measure: str, counts: np.ndarray, rates: np.ndarray, family: Family, clip: float) -> np.ndarray:
    """``family.log_likelihood`` or ``family.deviance`` of every bin, at the clipped rates' natural parameter."""
    eta = _natural_parameter(rates, family, counts, clip)
    return getattr(family, measure)(_tensor(counts), eta).numpy()


def log_likelihood_per_bin(
    data: Any,
    rates: Any,
    family: str | Family | None = None,
    *,
    n_trials: int | np.ndarray | None = None,
    clip: float = DEFAULT_CLIP,
) -> float:
    """Mean log-likelihood per bin (and channel) of counts given predicted rates, constants included.

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
        Observed counts.
    rates : array, broadcastable to the counts' shape
        Predicted expected counts per bin (``n_trials * p`` for the binomial family).
    family : {"binomial", "poisson", "gaussian"}, Family or None
        Family to score in; None takes the data's own (a ``SimulatedCounts`` knows it). A Gaussian family
        given by name takes the maximum-likelihood noise level of these residuals, ``sqrt(mean((y - rate)^2))``;
        pass ``Gaussian(std=...)`` to fix it.
    n_trials : int or array of shape (n_examples,), optional
        Trials per example for the binomial family, if the data do not carry them.
    clip : float
        Rates are clipped into the open support before scoring: ``[clip * M, (1 - clip) * M]`` for the
        binomial family (``M = n_trials``), ``[clip, inf)`` for the Poisson family. A model predicting a
        rate of 0 where a spike occurred is thus charged ``log(clip)`` (about -13.8) for that bin instead
        of ``-inf``.

    Returns
    -------
    float
        ``mean(log p(y | rate))`` over all ``n_examples * n_channels * n_bins`` bins (higher is better).
        For a model fitted in the same family this equals :meth:`spikedict.SpikeDictionary.score`.
    """
    counts, rates, family = _resolve(data, rates, family, n_trials)
    return float(_per_bin("log_likelihood", counts, rates, family, clip).mean())


def deviance_per_bin(
    data: Any,
    rates: Any,
    family: str | Family | None = None,
    *,
    n_trials: int | np.ndarray | None = None,
    clip: float = DEFAULT_CLIP,
) -> float:
    """Mean unit deviance per bin, ``2 * (log p(y | saturated) - log p(y | rate))`` (lower is better, >= 0).

    Parameters are those of :func:`log_likelihood_per_bin`. Multiply by the number of bins for the total
    deviance.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[[0.0, 2.0]]])
    >>> round(deviance_per_bin(counts, np.array([[[1.0, 1.0]]]), "poisson"), 4)  # (2 + 2 (2 log 2 - 1)) / 2
    1.3863
    """
    counts, rates, family = _resolve(data, rates, family, n_trials)
    return float(_per_bin("deviance", counts, rates, family, clip).mean())


def constant_rates(
    data: Any,
    family: str | Family | None = None,
    *,
    fitted_on: Any = None,
    n_trials: int | np.ndarray | None = None,
) -> np.ndarray:
    """Rates of the constant-rate model per channel, fitted by maximum likelihood.

    For the binomial family the spike probability per trial and bin is constant per channel,
    ``p_c = sum(y) / sum(M)``, so an example pooling ``M_i`` trials has rate ``M_i * p_c``; for the other
    families the rate is the channel's mean count.

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
        The examples to give rates for.
    family : {"binomial", "poisson", "gaussian"}, Family or None
        None: the data's own.
    fitted_on : same kinds as ``data``, optional
        Estimate the constant on these counts (e.g. training examples) instead of ``data``.
    n_trials : int or array of shape (n_examples,), optional
        Trials per example of ``data`` for the binomial family, if the data do not carry them.

    Returns
    -------
    ndarray, shape (n_examples, n_channels, n_bins)

    Examples
    --------
    >>> import numpy as np
    >>> constant_rates(np.array([[[0.0, 2.0], [1.0, 1.0]]]), "poisson")[0].tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    data = as_analysis_data(data)
    family = resolve_family(family, data, n_trials)
    reference = data if fitted_on is None else as_analysis_data(fitted_on, "fitted_on")
    if reference.counts.shape[1] != data.counts.shape[1]:
        raise ValueError(
            f"fitted_on has {reference.counts.shape[1]} channel(s) but data has {data.counts.shape[1]}; pass counts "
            "of the same channels."
        )
    if isinstance(family, Binomial):
        if fitted_on is None:
            reference_family = family
        else:  # the reference's own n_trials, else the family's single one
            shared = family.n_trials if isinstance(family.n_trials, int) else None
            trials = reference.n_trials if reference.n_trials is not None else shared
            reference_family = resolve_family("binomial", reference, trials)
        reference_trials = np.broadcast_to(
            reference_family._trials_like(_tensor(reference.counts)).numpy(), reference.counts.shape
        )
        probability = reference.counts.sum(axis=(0, 2)) / reference_trials.sum(axis=(0, 2))
        trials = np.broadcast_to(family._trials_like(_tensor(data.counts)).numpy(), data.counts.shape)
        return trials * probability[None, :, None]
    mean = reference.counts.mean(axis=(0, 2))
    return np.broadcast_to(mean[None, :, None], data.counts.shape).copy()


def pseudo_r2(
    data: Any,
    rates: Any,
    family: str | Family | None = None,
    *,
    null_rates: Any = None,
    n_trials: int | np.ndarray | None = None,
    per_channel: bool = False,
    clip: float = DEFAULT_CLIP,
) -> float | np.ndarray:
    """Deviance-based pseudo-R², ``1 - D(model) / D(constant rate per channel)``.

    1 for a model that predicts every count exactly (the saturated model), 0 for one no better than a
    constant rate per channel, negative for one worse than that.

    Parameters
    ----------
    data, rates, family, n_trials, clip :
        See :func:`log_likelihood_per_bin`.
    null_rates : array, broadcastable to the counts' shape, optional
        Rates of the reference model. Default: :func:`constant_rates` of these counts. For held-out data
        pass the constant rates fitted on the training data (as :func:`compare_families` does).
    per_channel : bool
        Return one value per channel instead of one over all channels.

    Returns
    -------
    float, or ndarray of shape (n_channels,)
    """
    counts, rates, family = _resolve(data, rates, family, n_trials)
    if null_rates is None:
        null_rates = constant_rates(counts, family)
    null_rates = _check_rates(null_rates, counts, "null_rates")
    axes = (0, 2) if per_channel else None
    model = _per_bin("deviance", counts, rates, family, clip).sum(axis=axes)
    null = _per_bin("deviance", counts, null_rates, family, clip).sum(axis=axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - model / null
    return r2 if per_channel else float(r2)


# ------------------------------------------------------------------------------ events
def find_events(codes: np.ndarray, threshold: float = 0.0, merge_runs: bool = True) -> list[np.ndarray]:
    """Event positions in one code sequence.

    Parameters
    ----------
    codes : ndarray, shape (n_code_bins,)
    threshold : float
        A bin is active where ``codes > threshold``.
    merge_runs : bool
        One event per run of consecutive active bins, at its largest code (an encoder often spreads one
        event over neighbouring bins). False: every active bin is an event.

    Returns
    -------
    ndarray of int
        Sorted event positions (code bins).

    Examples
    --------
    >>> find_events(np.array([0.0, 1.0, 3.0, 0.0, 0.0, 2.0])).tolist()
    [2, 5]
    """
    active = np.asarray(codes) > threshold
    positions = np.flatnonzero(active)
    if not merge_runs or positions.size == 0:
        return positions
    breaks = np.flatnonzero(np.diff(positions) > 1) + 1
    runs = np.split(positions, breaks)
    return np.array([run[np.argmax(np.asarray(codes)[run])] for run in runs], dtype=np.int64)


def _match_events(true_positions: np.ndarray, detected: np.ndarray, tolerance: int) -> int:
    """Largest one-to-one matching of sorted positions within ``tolerance`` (greedy is optimal on a line)."""
    i = j = hits = 0
    while i < len(true_positions) and j < len(detected):
        difference = detected[j] - true_positions[i]
        if abs(difference) <= tolerance:
            hits += 1
            i += 1
            j += 1
        elif difference < 0:
            j += 1
        else:
            i += 1
    return hits


def event_detection(
    codes: Any,
    true_codes: Any,
    *,
    templates: np.ndarray | None = None,
    true_templates: np.ndarray | None = None,
    alignment: Alignment | None = None,
    tolerance: int = 2,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """Hit rate and false events of learned codes against true codes, per true template.

    Learned templates are matched to true ones (order, sign and lag) by ``alignment``, computed with
    :func:`align_templates` from ``templates`` and ``true_templates`` if not given, or taken as the identity
    (template ``k`` to template ``k``, lag 0, sign +1) if neither is given. A learned template ``j`` matched
    to true template ``i`` with lag ``L`` (``learned[t] = sign * true[t + L]``) places true template ``i`` at
    code bin ``q - L`` when its code is active at ``q``; events are compared at those positions. With sign -1
    the learned code is negated before thresholding, so non-negative codes of a flipped template detect
    nothing.

    True events are the bins with a true code ``> 0``; detected events are the peaks of runs of learned codes
    above ``threshold`` (:func:`find_events`). In every example, detected and true events are matched one to
    one when at most ``tolerance`` bins apart (largest matching).

    Parameters
    ----------
    codes : ndarray, shape (n_examples, n_templates, n_code_bins)
        Learned codes (:meth:`spikedict.SpikeDictionary.transform`).
    true_codes : ndarray, shape (n_examples, n_true_templates, n_true_code_bins), or SimulatedCounts
    templates : ndarray, shape (n_templates, n_channels, template_size), optional
    true_templates : ndarray, shape (n_true_templates, n_channels, true_template_size), optional
        Taken from ``true_codes`` when it is a SimulatedCounts.
    alignment : Alignment, optional
    tolerance : int
        Largest distance in bins between a true and a detected event that counts as a hit.
    threshold : float
        A learned code is active where ``sign * code > threshold``.

    Returns
    -------
    pandas.DataFrame
        One row per true template: ``true_index``, ``learned_index``, ``lag``, ``sign``, ``n_true_events``,
        ``n_detected_events``, ``n_hits``, ``n_false_events``, ``hit_rate`` (hits / true events),
        ``false_event_rate`` (false events / detected events, 0 when nothing is detected) and
        ``false_events_per_bin`` (false events / code bins examined).

    Examples
    --------
    >>> import numpy as np
    >>> true_codes = np.zeros((1, 1, 20)); true_codes[0, 0, [3, 10]] = 1.0
    >>> codes = np.zeros((1, 1, 20)); codes[0, 0, [4, 15]] = 0.5
    >>> event_detection(codes, true_codes, tolerance=1)[["n_hits", "hit_rate", "false_event_rate"]].values.tolist()
    [[1.0, 0.5, 0.5]]
    """
    if not isinstance(true_codes, np.ndarray) and hasattr(true_codes, "codes"):
        if true_templates is None:
            true_templates = getattr(true_codes, "templates", None)
        true_codes = true_codes.codes
    codes = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.float64)
    true_codes = np.asarray(true_codes, dtype=np.float64)
    if codes.ndim != 3 or true_codes.ndim != 3:
        raise ValueError(
            "codes and true_codes must have shape (n_examples, n_templates, n_code_bins), got shapes "
            f"{codes.shape} and {true_codes.shape}."
        )
    if codes.shape[0] != true_codes.shape[0]:
        raise ValueError(
            f"codes and true_codes must hold the same examples, got {codes.shape[0]} and {true_codes.shape[0]}; "
            "transform the same counts that the true codes generated."
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative integer number of bins, got {tolerance!r}.")
    if alignment is None and templates is not None and true_templates is not None:
        alignment = align_templates(templates, true_templates)
    if alignment is None:
        if codes.shape[1] != true_codes.shape[1]:
            raise ValueError(
                f"codes have {codes.shape[1]} templates and true_codes {true_codes.shape[1]}: pass templates and "
                "true_templates (or an alignment) so that learned templates can be matched to true ones."
            )
        matches = [(i, i, 0, 1) for i in range(true_codes.shape[1])]
    else:
        table = alignment.table
        if len(table) != true_codes.shape[1] or int(table["learned_index"].max()) >= codes.shape[1]:
            raise ValueError(
                f"the alignment matches {len(table)} true templates to learned indices "
                f"{table['learned_index'].tolist()}, but the codes have {codes.shape[1]} templates and the true "
                f"codes {true_codes.shape[1]}; align the templates that produced these codes."
            )
        matches = [
            (int(r.true_index), int(r.learned_index), int(r.lag), int(r.sign)) for r in table.itertuples(index=False)
        ]
    records = []
    n_code_bins = codes.shape[2]
    for true_index, learned_index, lag, sign in matches:
        n_true = n_detected = hits = 0
        for example in range(codes.shape[0]):
            true_positions = np.flatnonzero(true_codes[example, true_index] > 0)
            detected = find_events(sign * codes[example, learned_index], threshold) - lag
            n_true += len(true_positions)
            n_detected += len(detected)
            hits += _match_events(true_positions, detected, int(tolerance))
        false = n_detected - hits
        records.append(
            {
                "true_index": true_index,
                "learned_index": learned_index,
                "lag": lag,
                "sign": sign,
                "n_true_events": n_true,
                "n_detected_events": n_detected,
                "n_hits": hits,
                "n_false_events": false,
                "hit_rate": hits / n_true if n_true else float("nan"),
                "false_event_rate": false / n_detected if n_detected else 0.0,
                "false_events_per_bin": false / (codes.shape[0] * n_code_bins),
            }
        )
    return pd.DataFrame.from_records(records)


def posterior_events(
    event_probability: np.ndarray, posterior_codes: np.ndarray, threshold: float = 0.5, min_probability: float = 0.05
) -> pd.DataFrame:
    """Events from the codes' posterior: runs of positions that share one event's probability, above a threshold.

    A sampled event moves by a bin or two between draws, so its probability spreads over neighbouring positions.
    Each run of consecutive positions whose probability reaches ``min_probability`` is one candidate event: its
    probability is the run's total (at most 1), its position the probability-weighted mean, its amplitude the
    posterior mean amplitude given the event.

    Parameters
    ----------
    event_probability, posterior_codes : ndarray, shape (n_examples, n_templates, n_code_bins)
        Per position, the share of draws with an event and the posterior mean code (see
        :class:`spikedict.solvers.base.Posterior`).
    threshold : float
        Keep the events whose probability reaches this.
    min_probability : float
        Positions below this do not join a run.

    Returns
    -------
    pandas.DataFrame
        One row per event: ``template``, ``example``, ``position`` (code bin, fractional), ``probability``,
        ``amplitude``; sorted by template, example and position.

    Examples
    --------
    >>> probability = np.array([[[0.0, 0.3, 0.6, 0.0, 0.1]]])
    >>> posterior_events(probability, 2.0 * probability, threshold=0.5).round(2).to_dict("records")
    [{'template': 0, 'example': 0, 'position': 1.67, 'probability': 0.9, 'amplitude': 2.0}]
    """
    probability = np.asarray(event_probability, dtype=np.float64)
    codes = np.asarray(posterior_codes, dtype=np.float64)
    if probability.ndim != 3 or probability.shape != codes.shape:
        raise ValueError(
            f"event_probability and posterior_codes must have one shape (n_examples, n_templates, n_code_bins), got "
            f"{probability.shape} and {codes.shape}."
        )
    rows = []
    for example, template in np.ndindex(*probability.shape[:2]):
        values = probability[example, template]
        positions = np.flatnonzero(values >= min_probability)
        if positions.size == 0:
            continue
        for run in np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1):
            total = float(values[run].sum())
            if min(total, 1.0) >= threshold:
                rows.append(
                    {
                        "template": template,
                        "example": example,
                        "position": float((run * values[run]).sum() / total),
                        "probability": min(total, 1.0),
                        "amplitude": float(codes[example, template, run].sum() / total),
                    }
                )
    columns = ["template", "example", "position", "probability", "amplitude"]
    return pd.DataFrame(rows, columns=columns).sort_values(["template", "example", "position"], ignore_index=True)
