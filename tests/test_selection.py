"""select_model: folds, the table and its summary, the best setting, refit; applying a dictionary to new trials."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import N_TRIALS, TEMPLATE_SIZE, small_model

from spikedict import Binomial
from spikedict.analysis import ModelSelection, example_folds, select_model
from spikedict.model import decode
from spikedict.simulate import simulate_counts

QUICK = dict(
    solver="alternating",
    solver__n_epochs=1,
    encoder__n_iterations=30,
    device="cpu",
    n_trials=N_TRIALS,
    template_size=TEMPLATE_SIZE,
)


@pytest.fixture(scope="module")
def simulation(true_templates):
    return simulate_counts(true_templates, n_examples=6, n_bins=150, n_trials=N_TRIALS, event_rate=0.02, seed=3)


@pytest.fixture(scope="module")
def selection(simulation):
    return select_model(simulation.counts, {"n_templates": [1, 3], "sparsity": [0.05, "auto"]}, cv=3, **QUICK)


def test_table_has_one_row_per_setting_and_fold(selection):
    assert isinstance(selection, ModelSelection)
    table = selection.table
    assert len(table) == 4 * 3
    assert table[["n_templates", "sparsity"]].drop_duplicates().values.tolist() == [
        [1, 0.05],
        [1, "auto"],
        [3, 0.05],
        [3, "auto"],
    ]
    assert table["fold"].tolist() == [0, 1, 2] * 4
    assert (table["n_train_examples"] == 4).all() and (table["n_heldout_examples"] == 2).all()
    assert np.isfinite(table["heldout_log_likelihood_per_bin"]).all()


def test_heldout_score_is_model_score_on_the_fold(selection, simulation):
    folds = example_folds(6, 3, seed=0)
    row = selection.table.iloc[7]  # setting 2 (n_templates 3, sparsity 0.05), fold 1
    assert (row["setting"], row["fold"]) == (2, 1)
    train, heldout = folds[1]
    model = small_model(**{**QUICK, "n_templates": 3, "sparsity": 0.05}).fit(simulation.counts[train])
    assert row["heldout_log_likelihood_per_bin"] == pytest.approx(model.score(simulation.counts[heldout]), rel=1e-6)


def test_summary_and_best(selection):
    table, summary = selection.table, selection.summary
    assert len(summary) == 4
    means = table.groupby("setting")["heldout_log_likelihood_per_bin"].mean().to_numpy()
    np.testing.assert_allclose(summary["mean_heldout_log_likelihood_per_bin"], means)
    sems = table.groupby("setting")["heldout_log_likelihood_per_bin"].std().to_numpy() / np.sqrt(3)
    np.testing.assert_allclose(summary["sem_heldout_log_likelihood_per_bin"], sems)
    best = int(np.argmax(means))
    assert summary["rank"].iloc[best] == 1
    assert sorted(summary["rank"]) == [1, 2, 3, 4]
    assert selection.best_params == {
        "n_templates": summary["n_templates"].iloc[best],
        "sparsity": summary["sparsity"].iloc[best],
    }
    assert selection.best_score == pytest.approx(means[best])


def test_best_estimator_is_refitted_on_all_data(selection, simulation):
    refit = selection.best_estimator
    assert refit.n_templates == selection.best_params["n_templates"]
    fresh = small_model(**{**QUICK, **selection.best_params}).fit(simulation.counts)
    np.testing.assert_allclose(refit.templates_, fresh.templates_, rtol=1e-5, atol=1e-6)


def test_transform_and_predict_rate_on_heldout_trials(simulation):
    model = small_model(**QUICK).fit(simulation.counts[:4])
    new = simulation.counts[4:]
    codes = model.transform(new)
    assert codes.shape == (2, 3, 150 - TEMPLATE_SIZE + 1)
    assert np.all(codes >= 0)
    eta = decode(torch.as_tensor(codes), torch.as_tensor(model.templates_), signal_shape=(150,)).numpy()
    eta = eta + model.baseline_[None, :, None]
    expected = N_TRIALS / (1 + np.exp(-eta))
    np.testing.assert_allclose(model.predict_rate(new), expected, rtol=1e-4, atol=1e-5)
    # A counts object with its own n_trials per held-out example: rate_i = M_i * sigmoid(eta_i).
    trials = np.array([N_TRIALS, N_TRIALS + 10])
    counts_object = type("Counts", (), {"counts": new, "n_trials": trials})()
    codes = model.transform(counts_object)
    eta = decode(torch.as_tensor(codes), torch.as_tensor(model.templates_), signal_shape=(150,)).numpy()
    eta = eta + model.baseline_[None, :, None]
    expected = trials[:, None, None] / (1 + np.exp(-eta))
    np.testing.assert_allclose(model.predict_rate(counts_object), expected, rtol=1e-4, atol=1e-5)


def test_time_blocks_and_evaluation_family(simulation):
    result = select_model(
        simulation, {"n_templates": [3]}, cv=2, blocks=2, refit=False, evaluation_family=Binomial(N_TRIALS), **QUICK
    )
    assert result.best_estimator is None
    assert result.table["n_heldout_examples"].tolist() == [6, 6]
    assert result.best_params == {"n_templates": 3}


def test_family_in_grid_scored_in_the_data_family(simulation):
    result = select_model(simulation, {"family": ["binomial", "gaussian"]}, cv=2, refit=False, **QUICK)
    gaussian = result.table[result.table.family == "gaussian"]
    # Gaussian fits are scored as binomial counts: a log-probability of counts, so <= 0.
    assert (gaussian["heldout_log_likelihood_per_bin"] < 0).all()
    assert result.summary["family"].tolist() == ["binomial", "gaussian"]


@pytest.mark.parametrize(
    ("grid", "kwargs", "error", "match"),
    [
        ({}, {}, ValueError, "non-empty dict"),
        ({"n_templates": []}, {}, ValueError, r"grid\['n_templates'\] is empty"),
        ({"n_template": [1]}, {}, ValueError, r"does not take"),
        ({"n_templates": 3}, {}, TypeError, r"must be a list of values"),
        ({"n_templates": [1]}, {"cv": 1}, ValueError, "cv must be an integer >= 2"),
        ({"n_templates": [1]}, {"cv": 7}, ValueError, "cv = 7 folds need at least 7 examples, got 6"),
        ({"solver__n_epochs": [1]}, {}, ValueError, "both in the grid and fixed"),
    ],
)
def test_select_model_errors(simulation, grid, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_model(simulation, grid, **{**QUICK, **kwargs})


def test_codes_from_other_trials(simulation):
    result = select_model(simulation, {"n_templates": [3]}, cv=2, refit=False, infer_codes_from="other_trials", **QUICK)
    same = select_model(simulation, {"n_templates": [3]}, cv=2, refit=False, **QUICK)
    scores = result.table["heldout_log_likelihood_per_bin"].to_numpy()
    assert np.all(np.isfinite(scores))
    # Half the trials are scored (M = 15 instead of 30): a different, smaller-magnitude log-probability.
    assert np.all(np.abs(scores) < np.abs(same.table["heldout_log_likelihood_per_bin"].to_numpy()))
