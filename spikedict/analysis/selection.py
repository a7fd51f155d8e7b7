"""Choosing the model: how many templates, how long, how sparse, by cross-validated held-out likelihood.

Folds are over examples (held-out trials, or held-out groups of ``M`` pooled trials): a fitted dictionary
is applied to the held-out examples with :meth:`~spikedict.SpikeDictionary.transform` /
:meth:`~spikedict.SpikeDictionary.predict_rate` (the encoder infers their codes with the learned templates
held fixed) and the held-out counts are scored with the family's log-likelihood per bin. With ``blocks`` the
examples are first cut into time blocks and the folds run over blocks (for few long recordings).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from spikedict.analysis._data import as_analysis_data, example_folds, time_blocks
from spikedict.analysis.compare import evaluate_heldout
from spikedict.analysis.metrics import DEFAULT_CLIP
from spikedict.estimator import SpikeDictionary
from spikedict.families import Family

__all__ = ["ModelSelection", "select_model"]

SCORE = "heldout_log_likelihood_per_bin"


@dataclass
class ModelSelection:
    """Result of :func:`select_model`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per setting and fold: ``setting`` (index of the setting), one column per grid parameter,
        ``fold``, ``n_train_examples``, ``n_heldout_examples``, ``heldout_log_likelihood_per_bin``,
        ``heldout_deviance_per_bin``, ``heldout_pseudo_r2``, ``fit_seconds``.
    summary : pandas.DataFrame
        One row per setting: the grid parameters, ``mean_heldout_log_likelihood_per_bin``,
        ``sem_heldout_log_likelihood_per_bin`` (standard error over folds), ``mean_heldout_pseudo_r2``,
        ``mean_fit_seconds`` and ``rank`` (1 = best).
    best_params : dict
        The grid setting with the highest mean held-out log-likelihood per bin.
    best_score : float
        Its mean held-out log-likelihood per bin.
    best_estimator : SpikeDictionary or None
        Refitted with ``best_params`` on all the data (None with ``refit=False``).
    grid : dict
        The grid that was searched.
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    best_params: dict[str, Any]
    best_score: float
    best_estimator: SpikeDictionary | None
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def plot(self, x: str | None = None, ax: Any = None) -> Any:
        """Cross-validated held-out log-likelihood against one grid parameter; see
        :func:`spikedict.plotting.plot_model_selection`."""
        from spikedict.plotting import plot_model_selection

        return plot_model_selection(self, x=x, ax=ax)


def _check_grid(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any]) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            "grid must be a non-empty dict of parameter name -> list of values, e.g. "
            "{'n_templates': [2, 3, 4]}; got "
            + (repr(grid) if not isinstance(grid, Mapping) else "an empty dict")
            + "."
        )
    both = [name for name in grid if name in fixed]
    if both:
        raise ValueError(f"parameter(s) {both} are both in the grid and fixed; give each in one place.")
    checked = {}
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
            raise TypeError(f"grid[{name!r}] must be a list of values, got {values!r}; write [{values!r}].")
        values = list(values)
        if not values:
            raise ValueError(f"grid[{name!r}] is empty; give at least one value.")
        checked[name] = values
    try:
        _estimator(fixed, {name: values[0] for name, values in checked.items()})
    except ValueError as error:
        raise ValueError(
            f"the grid or the fixed parameters name a setting that SpikeDictionary does not take: {error} "
            "Nested settings are reached with '__', e.g. solver__n_epochs or encoder__n_iterations."
        ) from None
    return checked


def _estimator(params: Mapping[str, Any], setting: Mapping[str, Any]) -> SpikeDictionary:
    """An estimator with the fixed ``params`` and one grid ``setting`` (``__`` reaches nested settings)."""
    return SpikeDictionary().set_params(**copy.deepcopy({**params, **setting}))  # settings objects of its own


def select_model(
    data: Any,
    grid: Mapping[str, Sequence[Any]],
    cv: int = 3,
    *,
    blocks: int | None = None,
    evaluation_family: str | Family | None = None,
    seed: int = 0,
    refit: bool = True,
    clip: float = DEFAULT_CLIP,
    infer_codes_from: Literal["heldout", "other_trials", "split_spikes"] = "heldout",
    **estimator_params: Any,
) -> ModelSelection:
    """Score every setting of a parameter grid by cross-validated held-out log-likelihood per bin.

    Parameters
    ----------
    data : array of shape (n_examples, n_channels, n_bins), SimulatedCounts or counts object
    grid : dict of str -> list
        SpikeDictionary parameters and the values to try, e.g. ``{"n_templates": [2, 3, 4],
        "sparsity": [0.05, 0.1]}``, nested settings with ``__`` (``"solver__n_epochs": [20, 40]``); every
        combination is a setting. It is the grid scikit-learn's ``GridSearchCV`` takes.
    cv : int
        Number of folds (>= 2, at most the number of examples, or of blocks).
    blocks : int, optional
        Cut each example into this many time blocks and fold over blocks instead of examples
        (:func:`~spikedict.analysis.time_blocks`). The refit uses the uncut data.
    evaluation_family : {"binomial", "poisson", "gaussian"}, Family or None
        Family in which held-out counts are scored (matters when the grid varies ``family``). Default: the
        data's own if known (SimulatedCounts), else the estimator's ``family`` (default binomial).
    seed : int
        Seeds the folds; the estimator's seed is ``estimator_params["seed"]`` (default 0), the same for
        every setting and fold.
    refit : bool
        Refit the best setting on all the data as ``best_estimator``.
    clip : float
        See :func:`~spikedict.analysis.log_likelihood_per_bin`.
    infer_codes_from : {"heldout", "other_trials", "split_spikes"}
        Where held-out codes come from (see :func:`~spikedict.analysis.evaluate_heldout`). With ``"heldout"``
        the encoder sees the counts it is scored on, which favours weak sparsity and many templates;
        ``"other_trials"`` (binomial data) scores trials the encoder never saw and is the fairer choice;
        ``"split_spikes"`` does the same for Poisson counts too (each spike to one half or the other).
    **estimator_params
        Fixed SpikeDictionary parameters (``n_trials``, ``solver__n_epochs``, ...). ``progress`` defaults to
        False.

    Returns
    -------
    ModelSelection

    Examples
    --------
    >>> from spikedict.simulate import paper_templates, simulate_counts
    >>> simulation = simulate_counts(paper_templates(20), n_examples=4, n_bins=200, n_trials=30, seed=0)
    >>> result = select_model(simulation, {"n_templates": [1, 3]}, cv=2, template_size=20, solver__n_epochs=1,
    ...                       encoder__n_iterations=20)
    >>> result.summary["n_templates"].tolist(), len(result.table)
    ([1, 3], 4)
    >>> result.best_params["n_templates"] in (1, 3)
    True
    """
    analysis_data = as_analysis_data(data)
    params = {"progress": False, **estimator_params}
    grid = _check_grid(grid, params)
    folded = time_blocks(analysis_data, blocks) if blocks is not None else analysis_data
    folds = example_folds(folded.n_examples, cv, seed)
    if evaluation_family is None and folded.family is None:
        evaluation_family = params.get("family", "binomial")
    names = list(grid)
    settings = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    records = []
    for index, setting in enumerate(settings):
        for fold, (train_index, heldout_index) in enumerate(folds):
            train, heldout = folded.subset(train_index), folded.subset(heldout_index)
            model = _estimator(params, setting)
            start = time.perf_counter()
            model.fit(train)
            fit_seconds = time.perf_counter() - start
            family = evaluation_family
            if isinstance(family, Family):
                family = family.select(torch.as_tensor(heldout_index))
            scores = evaluate_heldout(
                model, heldout, family, train=train, clip=clip, infer_codes_from=infer_codes_from, split_seed=seed
            )
            records.append(
                {
                    "setting": index,
                    **setting,
                    "fold": fold,
                    "n_train_examples": len(train_index),
                    "n_heldout_examples": len(heldout_index),
                    SCORE: scores[SCORE],
                    "heldout_deviance_per_bin": scores["heldout_deviance_per_bin"],
                    "heldout_pseudo_r2": scores["heldout_pseudo_r2"],
                    "fit_seconds": fit_seconds,
                }
            )
    table = pd.DataFrame.from_records(records)
    grouped = table.groupby("setting", sort=True)
    summary = pd.DataFrame.from_records([{"setting": index, **setting} for index, setting in enumerate(settings)])
    summary[f"mean_{SCORE}"] = grouped[SCORE].mean().to_numpy()
    summary[f"sem_{SCORE}"] = (grouped[SCORE].std(ddof=1) / np.sqrt(len(folds))).to_numpy()
    summary["mean_heldout_pseudo_r2"] = grouped["heldout_pseudo_r2"].mean().to_numpy()
    summary["mean_fit_seconds"] = grouped["fit_seconds"].mean().to_numpy()
    summary["rank"] = summary[f"mean_{SCORE}"].rank(ascending=False, method="min").astype(int)
    best = int(np.argmax(summary[f"mean_{SCORE}"].to_numpy()))
    best_params = dict(settings[best])
    best_estimator = _estimator(params, best_params).fit(analysis_data) if refit else None
    return ModelSelection(
        table=table,
        summary=summary,
        best_params=best_params,
        best_score=float(summary[f"mean_{SCORE}"].iloc[best]),
        best_estimator=best_estimator,
        grid=grid,
    )
