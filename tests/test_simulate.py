"""Ground-truth simulation: the paper's templates, sparse codes and counts."""

from __future__ import annotations

import numpy as np
import pytest

from spikedict import Binomial, Gaussian, Poisson
from spikedict.simulate import SimulatedCounts, paper_templates, simulate_codes, simulate_counts


@pytest.mark.parametrize("size", [4, 20, 50, 51])
def test_paper_templates_shapes_and_norm(size):
    templates = paper_templates(size)
    assert templates.shape == (3, 1, size)
    np.testing.assert_allclose(np.linalg.norm(templates.reshape(3, -1), axis=1), 1.0, rtol=1e-12)


def test_paper_template_shapes():
    square, triangle, cosine = paper_templates(50)[:, 0, :]
    # One-period square wave: +c over the first half, -c over the second.
    np.testing.assert_allclose(square[:25], 1 / np.sqrt(50))
    np.testing.assert_allclose(square[25:], -1 / np.sqrt(50))
    # Triangle: even about the middle, linear ramps from the edges up to a peak in the middle, zero mean.
    np.testing.assert_allclose(triangle[::-1], triangle, atol=1e-12)
    assert np.argmax(triangle) in (24, 25) and np.argmin(triangle) in (0, 49)
    np.testing.assert_allclose(np.diff(triangle[:25]), np.diff(triangle[:25])[0], rtol=1e-9)
    assert abs(triangle.sum()) < 1e-12
    # The three shapes are mutually orthogonal without shift.
    np.testing.assert_allclose(paper_templates(50)[:, 0, :] @ paper_templates(50)[:, 0, :].T, np.eye(3), atol=1e-12)
    # Two-cycle cosine: even about the middle, four sign changes.
    np.testing.assert_allclose(cosine[::-1], cosine, atol=1e-12)
    assert np.count_nonzero(np.diff(np.sign(cosine))) == 4
    phase = (np.arange(50) + 0.5) / 50
    np.testing.assert_allclose(cosine, np.cos(4 * np.pi * phase) / np.linalg.norm(np.cos(4 * np.pi * phase)))


def test_paper_templates_too_short():
    with pytest.raises(ValueError, match="at least 4 bins"):
        paper_templates(3)


def test_simulation_reproducible_and_seeded():
    templates = paper_templates(20)
    a = simulate_counts(templates, n_examples=4, n_bins=200, n_trials=30, seed=7)
    b = simulate_counts(templates, n_examples=4, n_bins=200, n_trials=30, seed=7)
    c = simulate_counts(templates, n_examples=4, n_bins=200, n_trials=30, seed=8)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert not np.array_equal(a.counts, c.counts)
    assert not np.array_equal(a.codes, c.codes)


def test_simulation_fields_and_shapes():
    templates = paper_templates(20)
    simulation = simulate_counts(templates, n_examples=5, n_bins=200, n_trials=30, baseline=-1.5, seed=0)
    assert isinstance(simulation, SimulatedCounts)
    assert simulation.counts.shape == simulation.rates.shape == simulation.linear_predictor.shape == (5, 1, 200)
    assert simulation.codes.shape == (5, 3, 181)
    np.testing.assert_array_equal(simulation.templates, templates)
    np.testing.assert_array_equal(simulation.baseline, [-1.5])
    assert simulation.family == Binomial(30) and simulation.n_trials == 30


def test_linear_predictor_is_convolution_plus_baseline():
    templates = paper_templates(20)
    simulation = simulate_counts(templates, n_examples=3, n_bins=150, n_trials=30, baseline=-1.0, seed=1)
    expected = np.full((3, 1, 150), -1.0)
    for n in range(3):
        for k in range(3):
            expected[n, 0] += np.convolve(simulation.codes[n, k], templates[k, 0], mode="full")
    np.testing.assert_allclose(simulation.linear_predictor, expected, atol=1e-10)
    np.testing.assert_allclose(simulation.rates, 30 / (1 + np.exp(-expected)), rtol=1e-10)


def test_binomial_counts_are_integers_within_trials():
    simulation = simulate_counts(paper_templates(20), n_examples=10, n_bins=500, n_trials=7, baseline=1.0, seed=2)
    counts = simulation.counts
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.min() >= 0 and counts.max() <= 7
    assert counts.max() == 7  # high rates reach the bound


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_counts_mean_matches_rates(family):
    simulation = simulate_counts(
        paper_templates(20),
        n_examples=40,
        n_bins=500,
        family=family,
        n_trials=30 if family == "binomial" else None,
        baseline=-1.0,
        event_rate=0.03,
        seed=3,
    )
    rates, counts = simulation.rates, simulation.counts
    variance = rates * (1 - rates / 30) if family == "binomial" else rates
    # Overall: the sum of (counts - rates) over all bins is within 4 standard errors of 0.
    z = (counts - rates).sum() / np.sqrt(variance.sum())
    assert abs(z) < 4, z
    # Also where the templates are active (high rate) and where they are not.
    for selection in (rates > np.quantile(rates, 0.9), rates < np.quantile(rates, 0.5)):
        z = (counts - rates)[selection].sum() / np.sqrt(variance[selection].sum())
        assert abs(z) < 4, z
    # And the variance: binomial / Poisson, not over-dispersed.
    ratio = ((counts - rates) ** 2).sum() / variance.sum()
    assert 0.95 < ratio < 1.05, ratio


def test_poisson_rates_and_family():
    simulation = simulate_counts(paper_templates(20), n_examples=3, n_bins=200, family="poisson", seed=4)
    assert isinstance(simulation.family, Poisson) and simulation.n_trials is None
    np.testing.assert_allclose(simulation.rates, np.exp(simulation.linear_predictor), rtol=1e-10)
    np.testing.assert_array_equal(simulation.counts, np.round(simulation.counts))
    assert simulation.counts.min() >= 0


def test_gaussian_noise_level():
    simulation = simulate_counts(
        paper_templates(20), n_examples=10, n_bins=500, family="gaussian", baseline=0.0, noise_std=0.25, seed=5
    )
    assert isinstance(simulation.family, Gaussian) and simulation.family.std == 0.25
    noise = simulation.counts - simulation.rates
    assert abs(noise.std() - 0.25) < 0.01
    assert abs(noise.mean()) < 4 * 0.25 / np.sqrt(noise.size)


def test_code_density_matches_event_rate():
    codes = simulate_codes(20, 3, 1000, event_rate=0.02, amplitude_range=(1.0, 2.0), seed=6)
    assert codes.shape == (20, 3, 1000)
    active = codes != 0
    density = active.mean()
    standard_error = np.sqrt(0.02 * 0.98 / codes.size)
    assert abs(density - 0.02) < 4 * standard_error, density
    assert codes.min() >= 0
    assert codes[active].min() >= 1.0 and codes[active].max() < 2.0
    assert abs(codes[active].mean() - 1.5) < 4 * np.sqrt(1 / 12 / active.sum())


def test_simulated_codes_follow_event_rate():
    simulation = simulate_counts(paper_templates(20), n_examples=20, n_bins=1000, n_trials=30, event_rate=0.005, seed=9)
    density = (simulation.codes != 0).mean()
    assert abs(density - 0.005) < 4 * np.sqrt(0.005 * 0.995 / simulation.codes.size)


@pytest.mark.parametrize("event_rate", [-0.1, 1.5])
def test_event_rate_out_of_range(event_rate):
    with pytest.raises(ValueError, match=r"event_rate is a probability .* \[0, 1\]"):
        simulate_codes(2, 3, 10, event_rate=event_rate)


def test_binomial_simulation_rejects_bad_n_trials():
    with pytest.raises(ValueError, match="n_trials must be positive integers"):
        simulate_counts(paper_templates(20), n_examples=2, n_bins=100, n_trials=0)
