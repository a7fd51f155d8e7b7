"""Can these templates be trusted? A parametric bootstrap of a fit: simulate from it, refit, compare.

On a recording there is no ground truth. What can be checked is whether the fitted model, were it the truth,
would be recovered by the same fit from data like the recording: the same examples, channels, bins and trials,
the fitted baseline, each template's fitted event rate and amplitudes. :func:`template_bootstrap` simulates
``n_simulations`` such data sets, refits each with the fit's settings, aligns the refitted templates to the
fitted ones and reports, per template, the distribution of the error. A template whose median error is above
the threshold is not recoverable at this signal and data size: the fitted one may be mostly noise. The spread of
the aligned refits gives each template a band.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from spikedict.analysis._data import _carried_n_trials, as_analysis_data
from spikedict.analysis.alignment import align_templates
from spikedict.families import Binomial
from spikedict.model import decode

__all__ = ["TemplateBootstrap", "recoverability", "template_bootstrap"]

#: A template whose median bootstrap error is above this is flagged as not recoverable.
RECOVERABLE_ERROR = 0.3


@dataclass
class TemplateBootstrap:
    """What :func:`template_bootstrap` found.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per fitted template: ``template``, ``n_events`` (in the fitted codes), ``event_rate`` (events per
        code position), ``median_amplitude``, ``median_error`` and ``q90_error`` of the refits against the fitted
        template, ``recoverable`` (median error at most the threshold).
    refits : ndarray, shape (n_simulations, n_templates, n_channels, template_size)
        The refitted templates matched to each fitted one (sign and shift aligned; unit norm).
    errors : ndarray, shape (n_simulations, n_templates)
    lower, upper : ndarray, shape (n_templates, n_channels, template_size)
        Bounds of the band that holds ``coverage`` of the aligned refits in every bin (quantiles).
    """

    table: pd.DataFrame
    refits: np.ndarray
    errors: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def _events(codes: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per template: the share of code positions with an event, and the events' amplitudes."""
    active = codes != 0
    rates = active.mean(axis=(0, 2))
    amplitudes = [codes[:, j][active[:, j]] for j in range(codes.shape[1])]
    return rates, amplitudes


def _simulated_codes(shape: tuple[int, ...], rates: np.ndarray, amplitudes: list[np.ndarray], rng: Any) -> np.ndarray:
    """Codes with each template's events at its fitted rate, at random positions, amplitudes drawn from its own."""
    codes = np.zeros(shape)
    for j, (rate, values) in enumerate(zip(rates, amplitudes)):
        if len(values) == 0:
            continue
        active = rng.random((shape[0], shape[2])) < rate
        codes[:, j][active] = rng.choice(values, size=int(active.sum()))
    return codes


def _refit_estimator(model: Any, seed: int, solver: Any = None) -> Any:
    """An unfitted copy of ``model``'s settings: its fitted sparsity, another seed, ``solver`` (None: its own)."""
    params = model.get_params(deep=False)
    if solver is not None:
        params["solver"] = solver
    estimator = copy.deepcopy(type(model)().set_params(**params))
    return estimator.set_params(sparsity=float(model.sparsity_), seed=seed, progress=False, checkpoint_path=None)


def template_bootstrap(
    model: Any,
    counts: Any,
    n_simulations: int = 5,
    seed: int = 0,
    *,
    threshold: float = RECOVERABLE_ERROR,
    coverage: float = 0.9,
    progress: bool | None = False,
    solver: Any = None,
) -> TemplateBootstrap:
    """Simulate data sets from a fitted model, refit each the same way, and measure how well each template returns.

    Parameters
    ----------
    model : SpikeDictionary
        Fitted on ``counts`` (binomial or Poisson family, tied 1-D templates).
    counts : array of shape (n_examples, n_channels, n_bins) or counts object
        The data it was fitted on: the simulations have their shape and trials.
    n_simulations : int
        Simulated data sets (refits); each costs one fit at the fitted sparsity.
    seed : int
        Seeds the simulations; refit ``s`` uses the model's seed plus ``s + 1`` (its own start).
    threshold : float
        A template whose median error is above this is flagged as not recoverable.
    coverage : float
        Share of the refits inside the band ``[lower, upper]``, in every bin.
    progress : bool or None
        Progress bar over the refits (None: on a terminal).
    solver : str, Solver or None
        The refits' solver (None: the model's own). ``spikedict fit`` refits an EM model with EM from one MAP
        start (``EM(n_starts=1)``) instead of the best of four. A solver other than the fit's answers another
        question: the alternating solver's refits of an EM fit predict the MAP fit's error, not EM's.

    Returns
    -------
    TemplateBootstrap

    Raises
    ------
    ValueError
        For a Gaussian model, settings out of range, or counts of other channels or bins than the fit's.
    """
    from spikedict.solvers._runner import show_progress

    if model.family_.name not in ("binomial", "poisson"):
        raise ValueError(f"the recoverability check simulates counts; the model's family is {model.family_.name!r}.")
    if not isinstance(n_simulations, (int, np.integer)) or isinstance(n_simulations, bool) or n_simulations < 1:
        raise ValueError(f"n_simulations must be a whole number >= 1, got {n_simulations!r}.")
    if not 0 < coverage < 1 or not 0 < threshold <= 1:
        raise ValueError(f"coverage must lie in (0, 1) and threshold in (0, 1], got {coverage} and {threshold}.")
    data = as_analysis_data(counts)
    templates = np.asarray(model.templates_, dtype=np.float64)
    if templates.ndim != 3 or data.counts.shape[1] != templates.shape[1]:
        raise ValueError(
            f"counts must have the fit's {templates.shape[1]} channel(s) and 1-D templates; got counts of shape "
            f"{data.counts.shape} and templates of shape {templates.shape}."
        )
    codes = np.asarray(model.transform(counts), dtype=np.float64)
    rates, amplitudes = _events(codes)
    trials = _carried_n_trials(data) if isinstance(model.family_, Binomial) else None
    family = model.family_ if trials is None else Binomial(trials)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    base_seed = int(model.seed) if isinstance(model.seed, (int, np.integer)) else 0
    n_templates = templates.shape[0]
    refits = np.zeros((n_simulations, *templates.shape))
    errors = np.ones((n_simulations, n_templates))
    from tqdm.auto import tqdm

    # without any event there is nothing to simulate: every template is flagged (error 1) without refits
    n_refits = n_simulations if any(len(values) for values in amplitudes) else 0
    for s in tqdm(range(n_refits), desc="recoverability", disable=not show_progress(progress)):
        simulated_codes = _simulated_codes(codes.shape, rates, amplitudes, rng)
        with torch.no_grad():
            eta = decode(torch.from_numpy(simulated_codes), torch.from_numpy(templates))
            eta = eta + torch.as_tensor(model.baseline_, dtype=eta.dtype)[None, :, None]
            simulated = family.sample(eta, generator).numpy()
        refit = _refit_estimator(model, base_seed + s + 1, solver)
        refit.fit(simulated if trials is None else _with_trials(simulated, trials))
        alignment = align_templates(refit.templates_, templates)
        for row in alignment.table.itertuples(index=False):
            errors[s, int(row.true_index)] = float(row.error)
        refits[s] = alignment.aligned
    silent = np.array([len(values) == 0 for values in amplitudes])
    errors[:, silent] = 1.0  # a template without events has nothing to recover: its match in a refit is chance
    lower, upper = np.quantile(refits, [(1 - coverage) / 2, (1 + coverage) / 2], axis=0)
    table = pd.DataFrame(
        {
            "template": np.arange(n_templates),
            "n_events": [len(values) for values in amplitudes],
            "event_rate": rates,
            "median_amplitude": [float(np.median(values)) if len(values) else 0.0 for values in amplitudes],
            "median_error": np.median(errors, axis=0),
            "q90_error": np.quantile(errors, 0.9, axis=0),
        }
    )
    table["recoverable"] = (table["median_error"] <= threshold) & (table["n_events"] > 0)
    return TemplateBootstrap(table=table, refits=refits, errors=errors, lower=lower, upper=upper)


def _with_trials(counts: np.ndarray, trials: Any) -> Any:
    from spikedict.analysis._data import AnalysisData

    return AnalysisData(counts=counts, n_trials=trials)


def recoverability(model: Any, counts: Any, n_simulations: int = 5, seed: int = 0, **options: Any) -> pd.DataFrame:
    """Per template, how well the fit would recover it from data like ``counts`` (a parametric bootstrap).

    See :func:`template_bootstrap`, whose ``table`` this returns; ``options`` go to it (``threshold``,
    ``coverage``, ``progress``).

    Returns
    -------
    pandas.DataFrame
        Columns ``template``, ``n_events``, ``event_rate``, ``median_amplitude``, ``median_error``,
        ``q90_error`` and ``recoverable``.
    """
    return template_bootstrap(model, counts, n_simulations, seed, **options).table
