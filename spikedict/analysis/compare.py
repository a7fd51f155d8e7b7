"""Fit the same counts with several families (and DCEA-C / DCEA-UC), over seeds, into one tidy table.

The paper's control, "treat binomial counts as Gaussian", is ``compare_families(counts)``; sweeping a
setting of the simulation (the number of trials ``M``, the event rate) is :func:`family_study`.

How fits of different families are made comparable
---------------------------------------------------
Every fit is scored on the same **held-out examples** (whole trials, or groups of ``M`` pooled trials, never
seen in training; chosen once by ``split_seed`` and shared by every family, variant and seed). The held-out
log-likelihood is measured in the **data's family** (``evaluation_family``), not the model's: a Gaussian
density and a binomial probability of the same counts are not on the same scale (one is a density of a
continuous variable, the other a probability mass), so comparing ``model.score`` across families would
compare units, not fits. Each model instead predicts the expected count per bin of the held-out examples
(:meth:`~spikedict.SpikeDictionary.predict_rate`; for the Gaussian fit that is its linear predictor), and the
counts are scored under the data's family with that rate (a plug-in likelihood). Rates outside the support
(a Gaussian fit may predict a negative count, or more than ``M``) are clipped into it first, to
``[clip * M, (1 - clip) * M]`` for binomial counts (see :func:`~spikedict.analysis.log_likelihood_per_bin`).
For a model of the data's own family this equals ``model.score`` of the held-out examples, which is what the
table reports for it (computed by ``score``, so exactly). The model's likelihood in its own family is kept
for reference as ``model_log_likelihood_per_bin``.

Where the held-out codes come from matters (``infer_codes_from``). By default (``"heldout"``) the encoder
infers the codes of a held-out example from the very counts that are then scored, as ``model.score`` does;
a model whose codes can follow single counts is rewarded for fitting held-out noise. On binomial data the
Gaussian mismatch then *beats* the matched family by a wide margin (measured: -0.02 against -0.32 nats per bin
at M = 1, 8 x 300 bins), which says nothing about the templates. With ``"other_trials"`` the pooled trials of
each held-out example are split in two halves by binomial thinning (:func:`~spikedict.analysis.split_trials`):
codes come from one half, the other half is scored, and the matched family is ahead (0.07 to 2 nats per bin at
M = 2, 4 and 30 in the same measurements). Use ``"other_trials"`` to compare families or sparsities.

Held-out deviance and pseudo-R² are also in the data's family; the pseudo-R²'s constant-rate model is fitted
on the training examples.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from spikedict.analysis._data import as_analysis_data, heldout_split, resolve_family, split_trials
from spikedict.analysis.alignment import align_templates
from spikedict.analysis.heldout import _with_trials, predict_second_half
from spikedict.analysis.metrics import DEFAULT_CLIP, constant_rates, deviance_per_bin, log_likelihood_per_bin, pseudo_r2
from spikedict.estimator import SpikeDictionary
from spikedict.families import Binomial, Family
from spikedict.simulate import paper_templates, simulate_counts
from spikedict.solvers import get_solver

__all__ = ["compare_families", "evaluate_heldout", "family_study"]

VARIANTS = {
    "tied": "tied",
    "dcea-c": "tied",
    "constrained": "tied",
    "untied": "untied",
    "dcea-uc": "untied",
    "unconstrained": "untied",
}


def _same_family(a: Family, b: Family) -> bool:
    return type(a) is type(b)


def evaluate_heldout(
    model: SpikeDictionary,
    heldout: Any,
    evaluation_family: str | Family | None = None,
    *,
    train: Any = None,
    clip: float = DEFAULT_CLIP,
    infer_codes_from: Literal["heldout", "other_trials", "split_spikes"] = "heldout",
    split_seed: int = 0,
) -> dict[str, float]:
    """Score a fitted model on held-out examples in the data's family.

    Parameters
    ----------
    model : SpikeDictionary
        Fitted, in any family.
    heldout : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
    evaluation_family : {"binomial", "poisson", "gaussian"}, Family or None
        The data's family (None: the data's own, e.g. a SimulatedCounts' family). A Family with one
        ``n_trials`` per example must hold the held-out examples' values.
    train : same kinds as ``heldout``, optional
        Training examples; the pseudo-R²'s constant-rate model is fitted on them (default: on ``heldout``).
    clip : float
        See :func:`~spikedict.analysis.log_likelihood_per_bin`.
    infer_codes_from : {"heldout", "other_trials"}
        ``"heldout"``: the codes of a held-out example are inferred from the very counts that are scored (what
        ``model.score`` does). A flexible model (weak sparsity, or the Gaussian mismatch, whose codes can
        follow single counts) then partly fits the held-out noise and is rewarded for it. ``"other_trials"``
        (binomial data, ``M >= 2``): the pooled trials of each held-out example are split at random in two
        halves (:func:`~spikedict.analysis.split_trials`); codes are inferred from one half and the other half
        is scored with the rate scaled to its number of trials, so no scored count was seen by the encoder.
        ``"split_spikes"`` (binomial or Poisson data): the same for any counts, through
        :func:`~spikedict.analysis.split_spikes` (pooled trials split by trials, other counts thinned).
    split_seed : int
        Seeds the split of trials (or spikes) for ``"other_trials"`` and ``"split_spikes"``.

    Returns
    -------
    dict
        ``heldout_log_likelihood_per_bin`` (data's family; ``model.score(heldout)`` when the model is of that
        family), ``heldout_deviance_per_bin``, ``heldout_pseudo_r2`` and ``model_log_likelihood_per_bin``
        (``model.score(heldout)`` in the model's own family).
    """
    heldout = as_analysis_data(heldout, "heldout")
    family = resolve_family(evaluation_family, heldout, getattr(model.family_, "n_trials", None))
    own = model.score(heldout)
    exposure = 1.0  # the scored counts' rate relative to the held-out data's (thinned spikes: 0.5)
    if infer_codes_from == "heldout":
        scored, rates = heldout, model.predict_rate(heldout)
        log_likelihood = (
            own
            if _same_family(model.family_, family)
            else log_likelihood_per_bin(heldout.counts, rates, family, clip=clip)
        )
    elif infer_codes_from == "other_trials":
        if not isinstance(family, Binomial):
            raise ValueError(
                f"infer_codes_from='other_trials' splits the pooled trials of binomial counts, but the data's family "
                f"is {family.name}; use infer_codes_from='heldout'."
            )
        with_trials = replace(heldout, n_trials=family.n_trials, family=family)
        inferred, scored = split_trials(with_trials, 0.5, seed=split_seed)
        scale = np.asarray(scored.n_trials, dtype=np.float64) / np.asarray(inferred.n_trials, dtype=np.float64)
        scale = scale.reshape((-1, 1, 1)) if scale.ndim else scale
        rates = model.predict_rate(inferred) * scale
        family = scored.family
        log_likelihood = log_likelihood_per_bin(scored.counts, rates, family, clip=clip)
    elif infer_codes_from == "split_spikes":
        scored, rates, family, exposure = predict_second_half(model, heldout, family, split_seed)
        log_likelihood = log_likelihood_per_bin(scored.counts, rates, family, clip=clip)
    else:
        raise ValueError(
            f"infer_codes_from must be 'heldout', 'other_trials' or 'split_spikes', got {infer_codes_from!r}."
        )
    reference = _with_trials(as_analysis_data(train if train is not None else heldout, "train"), model)
    null_rates = constant_rates(scored.counts, family, fitted_on=reference) * exposure
    return {
        "heldout_log_likelihood_per_bin": float(log_likelihood),
        "heldout_deviance_per_bin": deviance_per_bin(scored.counts, rates, family, clip=clip),
        "heldout_pseudo_r2": pseudo_r2(scored.counts, rates, family, null_rates=null_rates, clip=clip),
        "model_log_likelihood_per_bin": float(own),
    }


def _family_label(family: str | Family) -> str:
    return family.name if isinstance(family, Family) else str(family).strip().lower()


def compare_families(
    data: Any,
    families: Sequence[str | Family] = ("binomial", "gaussian"),
    variants: Sequence[str] = ("tied",),
    seeds: Sequence[int] = (0,),
    true_templates: np.ndarray | None = None,
    validation: float | int | Sequence[int] = 0.25,
    *,
    evaluation_family: str | Family | None = None,
    split_seed: int = 0,
    max_lag: int | None = None,
    clip: float = DEFAULT_CLIP,
    infer_codes_from: Literal["heldout", "other_trials"] = "heldout",
    return_estimators: bool = False,
    **estimator_params: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, list[SpikeDictionary]]:
    """Fit the same counts with each family, variant and seed; score every fit on the same held-out examples.

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
        Spike counts. A SimulatedCounts also supplies the true templates and the data's family.
    families : sequence of {"binomial", "poisson", "gaussian"} or Family
        Families to fit. ``"gaussian"`` on count data is the paper's Gaussian mismatch.
    variants : sequence of {"tied", "untied"}
        ``"tied"``: DCEA-C (one dictionary). ``"untied"``: DCEA-UC (untied encoder/decoder, learned
        thresholds); it needs back-propagation through the encoder, so its solver defaults to
        ``"backprop"`` with ``solver__backprop="truncated"`` when not given. ``"tied"`` fits every family with
        the alternating solver when no solver is given, so that the families differ in nothing else (the
        default for counts alone, EM, cannot fit the Gaussian mismatch).
    seeds : sequence of int
        Seeds of the fits (initial templates, shuffling).
    true_templates : ndarray, shape (n_true, n_channels, true_size), optional
        Ground truth for ``template_error`` (default: ``data.templates`` if present; else the column is NaN).
    validation : float, int or sequence of int
        Held-out examples: a fraction, a number, or their indices (see
        :func:`~spikedict.analysis.heldout_split`). To hold out time blocks of long examples instead, cut
        them first with :func:`~spikedict.analysis.time_blocks`.
    evaluation_family : {"binomial", "poisson", "gaussian"}, Family or None
        The data's family, in which held-out likelihoods are measured. Default: the data's own family if
        it carries one (SimulatedCounts), else ``families[0]``.
    split_seed : int
        Seeds the choice of held-out examples (shared by all fits).
    max_lag : int or None
        Largest shift when aligning learned to true templates.
    clip : float
        Clip of predicted rates into the support (see :func:`~spikedict.analysis.log_likelihood_per_bin`).
    infer_codes_from : {"heldout", "other_trials"}
        Where held-out codes come from, see :func:`evaluate_heldout`. ``"other_trials"`` scores counts the
        encoder never saw; prefer it for comparing families or sparsities on binomial data.
    return_estimators : bool
        Also return the fitted estimators, in the order of the table's rows.
    **estimator_params
        Passed to :class:`~spikedict.SpikeDictionary` (e.g. ``sparsity``, ``n_trials``, ``solver__n_epochs``). With
        ground truth, ``n_templates`` and ``template_size`` default to the true ones. ``progress`` defaults
        to False.

    Returns
    -------
    pandas.DataFrame
        One row per (family, variant, seed): ``family``, ``variant``, ``seed``, ``evaluation_family``,
        ``matched`` (family is the data's), ``n_templates``, ``template_size``, ``n_train_examples``,
        ``n_heldout_examples``, ``template_error`` (mean aligned error, NaN without truth),
        ``heldout_log_likelihood_per_bin``, ``heldout_deviance_per_bin``, ``heldout_pseudo_r2``,
        ``model_log_likelihood_per_bin``, ``fit_seconds``, ``n_epochs_run``. With ``return_estimators``, a
        tuple ``(table, estimators)``.

    Examples
    --------
    >>> from spikedict.simulate import paper_templates, simulate_counts
    >>> simulation = simulate_counts(paper_templates(20), n_examples=4, n_bins=200, n_trials=30, seed=0)
    >>> table = compare_families(simulation, solver__n_epochs=1, encoder__n_iterations=20)
    >>> table[["family", "variant", "seed", "matched"]].values.tolist()
    [['binomial', 'tied', 0, True], ['gaussian', 'tied', 0, False]]
    """
    data = as_analysis_data(data)
    variant_names = _variant_names(families, variants, seeds)
    evaluation = _evaluation_family(data, families, evaluation_family, estimator_params.get("n_trials"))
    truth, params = _truth_and_params(data, true_templates, estimator_params)
    train_index, heldout_index = heldout_split(data.n_examples, validation, split_seed)
    train, heldout = data.subset(train_index), data.subset(heldout_index)
    heldout_family = evaluation.select(torch.as_tensor(heldout_index))

    records, estimators = [], []
    for family, variant, seed in itertools.product(families, variant_names, seeds):
        model = _build_estimator(family, seed, _variant_params(params, variant))
        start = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - start
        scores = evaluate_heldout(
            model,
            heldout,
            heldout_family,
            train=train,
            clip=clip,
            infer_codes_from=infer_codes_from,
            split_seed=split_seed,
        )
        records.append(
            {
                "family": _family_label(family),
                "variant": variant,
                "seed": int(seed),
                "evaluation_family": evaluation.name,
                "matched": _family_label(family) == evaluation.name,
                "n_templates": int(model.n_templates),
                "template_size": model.template_size,
                "n_train_examples": len(train_index),
                "n_heldout_examples": len(heldout_index),
                "template_error": _template_error(model, truth, max_lag),
                **scores,
                "fit_seconds": fit_seconds,
                "n_epochs_run": len(model.history_),
            }
        )
        estimators.append(model)
    table = pd.DataFrame.from_records(records)
    return (table, estimators) if return_estimators else table


def _variant_names(families: Sequence[Any], variants: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """Check that the grid is not empty; return the canonical name (``"tied"`` or ``"untied"``) of each variant."""
    if not len(families) or not len(variants) or not len(seeds):
        raise ValueError(
            f"families, variants and seeds must each hold at least one value, got {len(families)}, "
            f"{len(variants)} and {len(seeds)}."
        )
    variant_names = []
    for variant in variants:
        key = str(variant).strip().lower()
        if key not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; use 'tied' (DCEA-C) or 'untied' (DCEA-UC).")
        variant_names.append(VARIANTS[key])
    return variant_names


def _evaluation_family(
    data: Any, families: Sequence[str | Family], evaluation_family: str | Family | None, n_trials: Any
) -> Family:
    """Resolve every family to fit (so that a bad name fails before the first fit), and return the data's family."""
    for family in families:
        resolve_family(family, data, n_trials)
    return resolve_family(
        evaluation_family if evaluation_family is not None else (None if data.family is not None else families[0]),
        data,
        n_trials,
    )


def _truth_and_params(
    data: Any, true_templates: np.ndarray | None, estimator_params: dict[str, Any]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The true templates (or None) and the estimator parameters shared by every fit, checked."""
    truth = true_templates if true_templates is not None else data.templates
    params = {"progress": False, **estimator_params}
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float64)
        if truth.ndim != 3:
            raise ValueError(
                f"true_templates must have shape (n_templates, n_channels, template_size), got {truth.shape}."
            )
        params.setdefault("n_templates", truth.shape[0])
        params.setdefault("template_size", truth.shape[2])
        if params["n_templates"] < truth.shape[0]:
            raise ValueError(
                f"n_templates = {params['n_templates']} is fewer than the {truth.shape[0]} true templates; the "
                f"template error needs n_templates >= {truth.shape[0]}."
            )
    for name in ("family", "tied", "seed"):
        if name in params:
            raise TypeError(
                f"{name!r} is set by compare_families (families=..., variants=..., seeds=...); remove it from "
                "the estimator parameters."
            )
    return truth, params


def _variant_params(params: dict[str, Any], variant: str) -> dict[str, Any]:
    """The estimator parameters of one variant: ``"untied"`` unties the encoder and back-propagates through it (a
    solver other than back-propagation is replaced by it); ``"tied"`` takes the alternating solver unless one is
    given."""
    variant_params = copy.deepcopy(dict(params))  # settings objects of its own: set_params changes them in place
    if variant == "tied":
        variant_params.setdefault("solver", "alternating")
    elif variant == "untied":
        variant_params["encoder__tied"] = False
        if get_solver(variant_params.get("solver", "backprop"), tied=False).name != "backprop":
            variant_params["solver"] = "backprop"
        variant_params.setdefault("solver__backprop", "truncated")
    return variant_params


def _build_estimator(family: str | Family, seed: int, params: dict[str, Any]) -> SpikeDictionary:
    """The estimator of one fit of :func:`compare_families` (family, seed and the variant's parameters)."""
    return SpikeDictionary(family=family, seed=int(seed)).set_params(**params)


def _template_error(model: SpikeDictionary, truth: np.ndarray | None, max_lag: int | None) -> float:
    """Mean aligned error of the learned templates against the true ones (NaN without ground truth)."""
    error = align_templates(model.templates_, truth, max_lag=max_lag).mean_error if truth is not None else float("nan")
    return float(error)


def _default_simulation() -> dict[str, Any]:
    return {
        "templates": paper_templates(50),
        "n_examples": 20,
        "n_bins": 1000,
        "family": "binomial",
        "n_trials": 30,
        "seed": 0,
    }


def family_study(
    setting: str,
    values: Sequence[Any],
    simulate: Callable[..., Any] = simulate_counts,
    *,
    simulation_params: dict[str, Any] | None = None,
    families: Sequence[str | Family] = ("binomial", "gaussian"),
    variants: Sequence[str] = ("tied",),
    seeds: Sequence[int] = (0,),
    validation: float | int | Sequence[int] = 0.25,
    **compare_params: Any,
) -> pd.DataFrame:
    """Sweep one setting of a simulation; for each value simulate, then :func:`compare_families`.

    Parameters
    ----------
    setting : str
        Keyword of ``simulate`` to vary, e.g. ``"n_trials"`` (``M``) or ``"event_rate"``.
    values : sequence
        Values of the setting.
    simulate : callable
        ``simulate(**simulation_params, setting=value)`` returns counts (a SimulatedCounts, counts object
        or array). Default :func:`spikedict.simulate.simulate_counts`, with default parameters: the paper's
        three templates of 50 bins, 20 examples x 1000 bins, binomial, ``n_trials=30``, ``seed=0``
        (overridden by ``simulation_params``).
    simulation_params : dict, optional
        Fixed keywords of ``simulate``.
    families, variants, seeds, validation :
        See :func:`compare_families`.
    **compare_params
        Further keywords of :func:`compare_families` (``evaluation_family``, ``split_seed``, ...) and estimator
        parameters (``solver__n_epochs``, ...).

    Returns
    -------
    pandas.DataFrame
        The rows of :func:`compare_families` for every value, with ``setting`` (the name), ``value``, and a
        column named after the setting holding the value (unless that name is already a column).

    Examples
    --------
    >>> from spikedict.simulate import paper_templates
    >>> table = family_study("n_trials", [10, 30], simulation_params=dict(templates=paper_templates(20),
    ...                      n_examples=4, n_bins=200), solver__n_epochs=1, encoder__n_iterations=20)
    >>> table[["n_trials", "family"]].values.tolist()
    [[10, 'binomial'], [10, 'gaussian'], [30, 'binomial'], [30, 'gaussian']]
    """
    if not isinstance(setting, str) or not setting:
        raise TypeError(f"setting must be the name of a keyword of simulate, got {setting!r}.")
    values = list(values)
    if not values:
        raise ValueError(f"values must hold at least one value of {setting!r}, got none.")
    fixed = {**(_default_simulation() if simulate is simulate_counts else {}), **(simulation_params or {})}
    if setting == "n_trials" and "n_trials" in compare_params:
        raise ValueError(
            "n_trials is swept by the study but also given to the estimator; remove n_trials from the estimator "
            "parameters (each simulation carries its own n_trials)."
        )
    try:
        parameters = inspect.signature(simulate).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if parameters and not takes_any and setting not in parameters:
        raise ValueError(
            f"simulate takes no keyword {setting!r}; it takes {', '.join(parameters)}. Sweep one of those."
        )
    tables = []
    for value in values:
        simulated = simulate(**{**fixed, setting: value})
        table = compare_families(
            simulated, families=families, variants=variants, seeds=seeds, validation=validation, **compare_params
        )
        front = {"setting": setting, "value": value}
        if setting not in table.columns and setting not in front:
            front[setting] = value
        for position, (name, column) in enumerate(front.items()):
            table.insert(position, name, [column] * len(table))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
