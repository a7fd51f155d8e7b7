"""Metrics: log-likelihood per bin, deviance and pseudo-R² against hand computations; event detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from spikedict import Binomial, Gaussian, Poisson
from spikedict.analysis import (
    align_templates,
    constant_rates,
    deviance_per_bin,
    event_detection,
    find_events,
    log_likelihood_per_bin,
    pseudo_r2,
)
from spikedict.model import decode
from spikedict.simulate import simulate_counts

M = 5


@pytest.fixture(scope="module")
def binomial_data():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, M + 1, size=(3, 2, 40)).astype(float)
    rates = rng.uniform(0.2, M - 0.2, size=counts.shape)
    return counts, rates


def test_binomial_log_likelihood_matches_scipy(binomial_data):
    counts, rates = binomial_data
    expected = stats.binom.logpmf(counts, M, rates / M).mean()
    assert log_likelihood_per_bin(counts, rates, "binomial", n_trials=M) == pytest.approx(expected, rel=1e-10)
    assert log_likelihood_per_bin(counts, rates, Binomial(M)) == pytest.approx(expected, rel=1e-10)


def test_binomial_with_one_n_trials_per_example():
    trials = np.array([2, 4])
    counts = np.array([[[0.0, 1.0, 2.0]], [[4.0, 3.0, 0.0]]])
    rates = np.array([[[0.5, 1.0, 1.5]], [[3.0, 2.0, 1.0]]])
    expected = stats.binom.logpmf(counts, trials[:, None, None], rates / trials[:, None, None]).mean()
    assert log_likelihood_per_bin(counts, rates, "binomial", n_trials=trials) == pytest.approx(expected)


def test_poisson_and_gaussian_log_likelihood():
    counts = np.array([[[0.0, 1.0, 3.0, 2.0]]])
    rates = np.array([[[0.5, 1.5, 2.0, 2.5]]])
    assert log_likelihood_per_bin(counts, rates, "poisson") == pytest.approx(stats.poisson.logpmf(counts, rates).mean())
    # A Gaussian named without std takes the maximum-likelihood std of the residuals.
    std = np.sqrt(np.mean((counts - rates) ** 2))
    expected = stats.norm.logpdf(counts, rates, std).mean()
    assert log_likelihood_per_bin(counts, rates, "gaussian") == pytest.approx(expected)
    fixed = stats.norm.logpdf(counts, rates, 2.0).mean()
    assert log_likelihood_per_bin(counts, rates, Gaussian(std=2.0)) == pytest.approx(fixed)


def test_rates_outside_the_support_are_clipped():
    counts = np.array([[[1.0, 0.0, 5.0]]])
    rates = np.array([[[-2.0, 7.0, 5.0]]])  # below 0, above M, at M
    p = np.clip(rates / M, 1e-3, 1 - 1e-3)
    expected = stats.binom.logpmf(counts, M, p).mean()
    assert log_likelihood_per_bin(counts, rates, "binomial", n_trials=M, clip=1e-3) == pytest.approx(expected)
    expected_poisson = stats.poisson.logpmf(counts, np.maximum(rates, 1e-6)).mean()
    assert log_likelihood_per_bin(counts, rates, "poisson") == pytest.approx(expected_poisson)


def test_family_taken_from_simulated_counts(true_templates):
    simulation = simulate_counts(true_templates, n_examples=2, n_bins=100, n_trials=M, seed=3)
    expected = stats.binom.logpmf(simulation.counts, M, simulation.rates / M).mean()
    assert log_likelihood_per_bin(simulation, simulation.rates) == pytest.approx(expected, rel=1e-6)
    # torch tensors work as well
    tensor_value = log_likelihood_per_bin(
        torch.as_tensor(simulation.counts), torch.as_tensor(simulation.rates), Binomial(M)
    )
    assert tensor_value == pytest.approx(expected, rel=1e-6)


def test_deviance_per_bin_by_hand():
    counts = np.array([[[0.0, 2.0, 5.0]]])
    rates = np.array([[[1.0, 2.5, 4.0]]])
    with np.errstate(divide="ignore", invalid="ignore"):
        poisson_terms = 2 * (np.where(counts > 0, counts * np.log(counts / rates), 0.0) - (counts - rates))
        y, mu = counts, rates
        binomial_terms = 2 * (
            np.where(y > 0, y * np.log(y / mu), 0.0) + np.where(y < M, (M - y) * np.log((M - y) / (M - mu)), 0.0)
        )
    assert deviance_per_bin(counts, rates, "poisson") == pytest.approx(poisson_terms.mean(), rel=1e-8)
    assert deviance_per_bin(counts, rates, "binomial", n_trials=M) == pytest.approx(binomial_terms.mean(), rel=1e-6)
    assert deviance_per_bin(counts, counts + 1e-9, "poisson") == pytest.approx(0.0, abs=1e-6)


def test_constant_rates():
    counts = np.array([[[0.0, 2.0], [1.0, 1.0]], [[4.0, 2.0], [0.0, 0.0]]])
    np.testing.assert_allclose(constant_rates(counts, "poisson")[:, :, 0], [[2.0, 0.5], [2.0, 0.5]])
    # Binomial with per-example trials: p = sum(y) / sum(M) per channel; rate_i = M_i p.
    trials = np.array([2, 4])
    rates = constant_rates(counts, "binomial", n_trials=trials)
    p = np.array([8.0 / 12.0, 2.0 / 12.0])
    np.testing.assert_allclose(rates[:, :, 1], trials[:, None] * p[None, :])
    # fitted_on: the constant comes from other examples
    np.testing.assert_allclose(constant_rates(counts[:1], "poisson", fitted_on=counts[1:])[0, :, 0], [3.0, 0.0])


def test_pseudo_r2_by_hand():
    counts = np.array([[[0.0, 1.0, 4.0, 3.0], [2.0, 2.0, 1.0, 3.0]]])
    rates = np.array([[[0.5, 1.0, 3.0, 3.5], [2.0, 2.0, 2.0, 2.0]]])

    def unit(y, mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * (np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))

    null = np.broadcast_to(counts.mean(axis=2, keepdims=True), counts.shape)
    per_channel = 1 - unit(counts, rates).sum(axis=(0, 2)) / unit(counts, null).sum(axis=(0, 2))
    overall = 1 - unit(counts, rates).sum() / unit(counts, null).sum()
    assert pseudo_r2(counts, rates, "poisson") == pytest.approx(overall)
    np.testing.assert_allclose(pseudo_r2(counts, rates, "poisson", per_channel=True), per_channel)
    # The second channel's rate is its constant: pseudo-R² exactly 0 there.
    assert pseudo_r2(counts, rates, "poisson", per_channel=True)[1] == pytest.approx(0.0, abs=1e-12)
    assert pseudo_r2(counts, counts, "poisson") == pytest.approx(1.0)
    assert pseudo_r2(counts, rates, "poisson", null_rates=rates) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: log_likelihood_per_bin(np.ones((1, 1, 4)), np.ones((1, 1, 3)), "poisson"),
            ValueError,
            r"rates must have the shape of the counts \(1, 1, 4\).*got shape \(1, 1, 3\)",
        ),
        (
            lambda: log_likelihood_per_bin(np.ones((1, 1, 4)), np.ones((1, 1, 4)), "negbin"),
            ValueError,
            "unknown family 'negbin'",
        ),
        (
            lambda: log_likelihood_per_bin(np.ones((1, 1, 4)), np.ones((1, 1, 4)), "binomial"),
            ValueError,
            "needs n_trials",
        ),
        (
            lambda: log_likelihood_per_bin(np.ones((1, 1, 4)), np.ones((1, 1, 4))),
            ValueError,
            "family of the data is not known",
        ),
        (
            lambda: log_likelihood_per_bin(np.ones((1, 4)), np.ones((1, 4)), "poisson"),
            ValueError,
            r"add an axis: counts\[:, None, :\]",
        ),
        (
            lambda: log_likelihood_per_bin(np.full((1, 1, 2), 0.5), np.ones((1, 1, 2)), "poisson"),
            ValueError,
            "whole numbers",
        ),
        (
            lambda: log_likelihood_per_bin(np.ones((1, 1, 2)), np.array([[[1.0, np.nan]]]), "poisson"),
            ValueError,
            "NaN or inf",
        ),
        (
            lambda: pseudo_r2(np.ones((1, 1, 2)), np.ones((1, 1, 2)), "poisson", null_rates=np.ones(3)),
            ValueError,
            "null_rates must have the shape",
        ),
    ],
)
def test_metric_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- events
def test_find_events():
    codes = np.array([0.0, 0.2, 0.9, 0.1, 0.0, 0.0, 0.3, 0.0, 1.0])
    assert find_events(codes).tolist() == [2, 6, 8]
    assert find_events(codes, threshold=0.25).tolist() == [2, 6, 8]
    assert find_events(codes, threshold=0.5).tolist() == [2, 8]
    assert find_events(codes, merge_runs=False).tolist() == [1, 2, 3, 6, 8]
    assert find_events(np.zeros(5)).tolist() == []


def test_event_detection_by_hand():
    true_codes = np.zeros((2, 1, 30))
    true_codes[0, 0, [5, 12, 20]] = 1.0
    true_codes[1, 0, [3]] = 2.0
    codes = np.zeros((2, 1, 30))
    codes[0, 0, [6, 7]] = [0.5, 0.2]  # one run -> one event at 6, a hit of 5 (within 1)
    codes[0, 0, [11, 13]] = 0.4  # two events around 12: one hit, one false (one-to-one)
    codes[0, 0, 25] = 0.3  # false
    codes[1, 0, 9] = 0.3  # false: 6 bins from the true event at 3, which is missed
    table = event_detection(codes, true_codes, tolerance=1)
    row = table.iloc[0]
    assert (row.n_true_events, row.n_detected_events, row.n_hits, row.n_false_events) == (4, 5, 2, 3)
    assert row.hit_rate == pytest.approx(0.5)
    assert row.false_event_rate == pytest.approx(3 / 5)
    assert row.false_events_per_bin == pytest.approx(3 / 60)
    # A wider tolerance turns the event at 9 into a hit of 3 and the one at 25 into a hit of 20.
    wide = event_detection(codes, true_codes, tolerance=6).iloc[0]
    assert (wide.n_hits, wide.n_false_events) == (4, 1)


def test_event_detection_through_alignment_of_order_sign_and_lag():
    """Learned templates permuted, sign-flipped and shifted; codes that decode to the same signal hit every event."""
    size, pad, n_bins = 16, 4, 200
    rng = np.random.default_rng(1)
    true_templates = np.zeros((2, 1, size))
    true_templates[:, :, pad:-pad] = rng.standard_normal((2, 1, size - 2 * pad))
    true_templates /= np.linalg.norm(true_templates.reshape(2, -1), axis=1)[:, None, None]
    n_code_bins = n_bins - size + 1
    true_codes = np.zeros((3, 2, n_code_bins))
    for example in range(3):
        for k in range(2):
            true_codes[example, k, rng.choice(np.arange(10, n_code_bins - 10, 5), 4, replace=False)] = 1.0
    # learned[0] = -true[1] shifted right by 2 bins, learned[1] = true[0] shifted left by 3.
    shifts, signs, permutation = [2, -3], [-1, 1], [1, 0]
    learned_templates = np.stack(
        [s * np.roll(true_templates[p], d, axis=-1) for p, s, d in zip(permutation, signs, shifts)]
    )
    learned_codes = np.stack([np.roll(true_codes[:, p], -d, axis=-1) for p, d in zip(permutation, shifts)], axis=1)
    # The learned codes (with sign folded into the template) generate exactly the true signal.
    signal = decode(torch.as_tensor(true_codes), torch.as_tensor(true_templates))
    learned_signal = decode(
        torch.as_tensor(learned_codes), torch.as_tensor(learned_templates * np.array(signs)[:, None, None])
    )
    np.testing.assert_allclose(learned_signal.numpy(), signal.numpy(), atol=1e-10)
    # With the sign flipped codes (two-sided) the events are found at the right places.
    signed_codes = learned_codes * np.array(signs)[None, :, None]
    alignment = align_templates(learned_templates, true_templates)
    table = event_detection(signed_codes, true_codes, alignment=alignment, tolerance=0)
    assert table["learned_index"].tolist() == [1, 0]
    np.testing.assert_allclose(table["hit_rate"], 1.0)
    np.testing.assert_allclose(table["false_event_rate"], 0.0)
    same = event_detection(
        signed_codes, true_codes, templates=learned_templates, true_templates=true_templates, tolerance=0
    )
    assert same.equals(table)
    # Ignoring the lag, nothing matches at tolerance 0.
    unaligned = event_detection(signed_codes[:, permutation], true_codes, tolerance=0)
    assert unaligned["n_hits"].sum() == 0
    # Non-negative codes of a sign-flipped template detect nothing for it.
    positive = event_detection(np.abs(learned_codes), true_codes, alignment=alignment, tolerance=0)
    assert positive.loc[positive.sign == -1, "n_detected_events"].tolist() == [0]
    assert positive.loc[positive.sign == 1, "hit_rate"].tolist() == [1.0]


def test_event_detection_from_simulated_counts(true_templates):
    simulation = simulate_counts(true_templates, n_examples=2, n_bins=200, n_trials=M, seed=4)
    table = event_detection(simulation.codes, simulation, tolerance=0)
    np.testing.assert_allclose(table["hit_rate"], 1.0)
    assert table["n_false_events"].sum() == 0
    assert table["n_true_events"].tolist() == (simulation.codes > 0).sum(axis=(0, 2)).tolist()


def test_event_detection_errors():
    with pytest.raises(ValueError, match="same examples, got 2 and 3"):
        event_detection(np.zeros((2, 1, 5)), np.zeros((3, 1, 5)))
    with pytest.raises(ValueError, match="codes have 2 templates and true_codes 1"):
        event_detection(np.zeros((1, 2, 5)), np.zeros((1, 1, 5)))
    with pytest.raises(ValueError, match="tolerance must be a non-negative integer"):
        event_detection(np.zeros((1, 1, 5)), np.zeros((1, 1, 5)), tolerance=-1)
    with pytest.raises(ValueError, match=r"shape \(n_examples, n_templates, n_code_bins\)"):
        event_detection(np.zeros((1, 5)), np.zeros((1, 1, 5)))


def test_poisson_family_object_passes_through():
    counts = np.array([[[1.0, 2.0]]])
    assert log_likelihood_per_bin(counts, counts, Poisson()) == pytest.approx(
        stats.poisson.logpmf(counts, counts).mean()
    )
