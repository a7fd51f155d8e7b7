"""simulate_spikes: spike trains as a Neo Block with exact ground truth, and counts that follow the true rates."""

from __future__ import annotations

import numpy as np
import pytest
import quantities as pq

from spikedict.io import bin_spiketrains, read_recording, write_recording
from spikedict.io._simulated import ground_truth
from spikedict.simulate import Simulation, make_templates, paper_templates, simulate_codes, simulate_spikes

SMALL = dict(n_examples=3, n_bins=200, template_size=20, event_rate=0.02)


@pytest.fixture(scope="module")
def binomial():
    return simulate_spikes("paper", family="binomial", n_trials=10, seed=3, **SMALL)


def test_block_layout_and_ground_truth(binomial):
    assert isinstance(binomial, Simulation)
    block = binomial.block
    assert len(block.segments) == 3 * 10 and len(block.groups) == 1
    assert [s.annotations["example"] for s in block.segments[9:11]] == [0, 1]
    assert [s.annotations["trial"] for s in block.segments[9:11]] == [9, 0]
    assert all(len(s.spiketrains) == 1 for s in block.segments)
    assert block.groups[0].spiketrains[5] is block.segments[5].spiketrains[0]
    train = block.segments[0].spiketrains[0]
    assert train.t_stop == 200 * pq.ms and train.annotations["unit"] == "unit 0"
    truth = ground_truth(block)
    np.testing.assert_array_equal(truth["templates"], binomial.templates)
    np.testing.assert_array_equal(truth["codes"], binomial.codes)
    np.testing.assert_array_equal(truth["templates"], paper_templates(20))
    assert block.annotations["family"] == "binomial" and block.annotations["n_trials"] == 10
    assert binomial.codes.shape == (3, 3, 181) and binomial.rates.shape == (3, 1, 200)


def test_binomial_counts_are_the_pooled_bernoulli_spikes(binomial):
    counts = binomial.counts
    assert counts.counts.shape == (3, 1, 200)
    np.testing.assert_array_equal(counts.n_trials, [10, 10, 10])
    assert counts.counts.min() >= 0 and counts.counts.max() <= 10
    # One spike at most per trial and bin, so per-trial binning sums to the pooled counts.
    per_trial = bin_spiketrains(binomial.block, 1 * pq.ms)
    assert per_trial.counts.max() <= 1
    np.testing.assert_array_equal(per_trial.counts.reshape(3, 10, 1, 200).sum(axis=1), counts.counts)
    # The spike times lie inside the bins, not on their edges.
    times = np.concatenate([s.spiketrains[0].magnitude for s in binomial.block.segments])
    assert not np.any(np.isclose(times, np.round(times), rtol=0, atol=1e-12))


def test_same_seed_same_spikes():
    a = simulate_spikes("gaussian", family="binomial", n_trials=4, seed=11, **SMALL)
    b = simulate_spikes("gaussian", family="binomial", n_trials=4, seed=11, **SMALL)
    c = simulate_spikes("gaussian", family="binomial", n_trials=4, seed=12, **SMALL)
    for sa, sb in zip(a.block.segments, b.block.segments):
        np.testing.assert_array_equal(sa.spiketrains[0].magnitude, sb.spiketrains[0].magnitude)
    np.testing.assert_array_equal(a.templates, b.templates)
    assert not np.array_equal(a.counts.counts, c.counts.counts)


def z_scores(counts: np.ndarray, rates: np.ndarray, variance: np.ndarray) -> list[float]:
    """z of the summed residual overall, where the rate is high, and where it is low."""
    selections = [np.ones_like(rates, dtype=bool), rates > np.quantile(rates, 0.9), rates < np.quantile(rates, 0.5)]
    return [float((counts - rates)[s].sum() / np.sqrt(variance[s].sum())) for s in selections]


def test_binomial_empirical_rates_match_true_rates():
    # Tolerance: |z| < 4 for the summed residual (a false alarm has probability about 6e-5 per check).
    simulation = simulate_spikes(
        "paper",
        family="binomial",
        n_examples=6,
        n_bins=400,
        n_trials=30,
        template_size=20,
        event_rate=0.03,
        baseline=-1.5,
        seed=5,
    )
    rates, counts = simulation.rates, simulation.counts.counts
    probability = rates / 30
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-simulation.linear_predictor)), rtol=1e-10)
    for z in z_scores(counts, rates, 30 * probability * (1 - probability)):
        assert abs(z) < 4, z
    dispersion = ((counts - rates) ** 2).sum() / (30 * probability * (1 - probability)).sum()
    assert 0.9 < dispersion < 1.1, dispersion


@pytest.mark.parametrize("method", ["bins", "process"])
def test_poisson_empirical_rates_match_true_rates(method):
    simulation = simulate_spikes(
        "sinusoid",
        family="poisson",
        n_examples=6,
        n_bins=400,
        template_size=20,
        event_rate=0.03,
        baseline=-1.0,
        poisson_method=method,
        seed=6,
    )
    rates, counts = simulation.rates, simulation.counts.counts
    np.testing.assert_allclose(rates, np.exp(simulation.linear_predictor), rtol=1e-10)
    np.testing.assert_array_equal(simulation.counts.n_trials, np.ones(6))
    assert len(simulation.block.segments) == 6
    for z in z_scores(counts, rates, rates):
        assert abs(z) < 4, z
    dispersion = ((counts - rates) ** 2).sum() / rates.sum()
    assert 0.9 < dispersion < 1.1, dispersion


def test_poisson_process_leaves_global_random_state_alone():
    np.random.seed(0)  # noqa: NPY002 - checking that the simulator restores the legacy global state
    expected = np.random.random()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    a = simulate_spikes("random", family="poisson", poisson_method="process", seed=1, **SMALL)
    assert np.random.random() == expected  # noqa: NPY002
    b = simulate_spikes("random", family="poisson", poisson_method="process", seed=1, **SMALL)
    np.testing.assert_array_equal(a.counts.counts, b.counts.counts)


def test_written_simulation_keeps_spikes_and_truth(binomial, tmp_path):
    write_recording(binomial.block, tmp_path / "simulation.mat")
    read = read_recording(tmp_path / "simulation.mat")
    again = bin_spiketrains(read, 1 * pq.ms, group_by="example")
    np.testing.assert_array_equal(again.counts, binomial.counts.counts)
    truth = ground_truth(read)
    np.testing.assert_array_equal(truth["codes"], binomial.codes)
    np.testing.assert_allclose(truth["templates"], binomial.templates)
    np.testing.assert_allclose(truth["baseline"], binomial.baseline)


def test_fit_a_simulated_block_end_to_end():
    from spikedict import SpikeDictionary
    from spikedict.settings import Encoder
    from spikedict.solvers import Alternating

    simulation = simulate_spikes(
        "paper", family="binomial", n_examples=4, n_bins=150, n_trials=10, template_size=20, event_rate=0.02, seed=8
    )
    model = SpikeDictionary(
        n_templates=3,
        template_size=20,
        solver=Alternating(n_epochs=1, n_code_iterations=10),
        encoder=Encoder(n_iterations=10),
        progress=False,
        device="cpu",
        seed=0,
    )
    model.fit(simulation.counts)
    assert model.templates_.shape == (3, 1, 20) and np.isfinite(model.templates_).all()
    assert model.family_.config()["n_trials"] == [10, 10, 10, 10]
    assert model.predict_rate(simulation.counts).shape == (4, 1, 150)
    assert np.isfinite(model.score(simulation.counts))


@pytest.mark.parametrize("kind", ["paper", "gaussian", "sinusoid", "random"])
def test_make_templates_kinds(kind):
    templates = make_templates(kind, n_templates=3, template_size=40, n_channels=2, seed=0)
    assert templates.shape == (3, 2, 40)
    np.testing.assert_allclose(np.linalg.norm(templates.reshape(3, -1), axis=1), 1.0)
    np.testing.assert_array_equal(templates, make_templates(kind, 3, 40, n_channels=2, seed=0))
    if kind == "gaussian":
        assert templates.min() >= 0 and np.all(np.argmax(templates, axis=-1) >= 8)
    if kind in ("sinusoid", "random"):  # Hann window: the edges are small
        assert np.abs(templates[..., [0, -1]]).max() < 0.2 * np.abs(templates).max()
        # smooth: neighbouring samples are highly correlated
        flat = templates.reshape(-1, 40)
        correlation = np.mean([np.corrcoef(row[:-1], row[1:])[0, 1] for row in flat])
        assert correlation > 0.8, correlation
    if kind != "paper":
        assert not np.allclose(templates, make_templates(kind, 3, 40, n_channels=2, seed=1))


def test_make_templates_errors():
    with pytest.raises(ValueError, match="unknown template kind 'box'"):
        make_templates("box")
    with pytest.raises(ValueError, match="the paper has 3 template shapes"):
        make_templates("paper", n_templates=4)
    with pytest.raises(ValueError, match="template_size must be an integer >= 4"):
        make_templates("gaussian", template_size=2)


def test_codes_minimum_spacing_and_amplitudes():
    codes = simulate_codes(20, 3, 500, event_rate=0.05, min_spacing=10, seed=0)
    for example in codes:
        positions = np.flatnonzero(example.any(axis=0))
        assert np.all(np.diff(positions) >= 10)
        assert (example != 0).sum(axis=0).max() <= 1  # one template at a time
    assert (codes != 0).sum() > 100
    exponential = simulate_codes(
        20, 3, 500, event_rate=0.05, amplitude_range=(1.0, 3.0), amplitude_distribution="exponential", seed=0
    )
    amplitudes = exponential[exponential != 0]
    assert amplitudes.min() >= 1.0
    assert abs(amplitudes.mean() - 3.0) < 4 * 2.0 / np.sqrt(amplitudes.size)
    constant = simulate_codes(2, 3, 100, event_rate=0.1, amplitude_distribution=lambda rng, n: np.full(n, 2.5), seed=0)
    assert set(np.unique(constant)) == {0.0, 2.5}
    # Defaults unchanged: the same draws as before min_spacing existed.
    np.testing.assert_array_equal(simulate_codes(2, 3, 50, seed=4), simulate_codes(2, 3, 50, min_spacing=0, seed=4))
    with pytest.raises(ValueError, match="amplitude_distribution must be"):
        simulate_codes(2, 3, 50, amplitude_distribution="cauchy")
    with pytest.raises(ValueError, match="min_spacing must be"):
        simulate_codes(2, 3, 50, min_spacing=-1)


def test_simulate_spikes_spacing_reaches_the_block():
    simulation = simulate_spikes(
        "paper", family="binomial", n_trials=2, min_spacing=30, seed=2, **(SMALL | {"event_rate": 0.1})
    )
    for example in simulation.codes:
        assert np.all(np.diff(np.flatnonzero(example.any(axis=0))) >= 30)


def test_simulate_spikes_errors():
    with pytest.raises(ValueError, match="one trial per example"):
        simulate_spikes(family="poisson", n_trials=5, **SMALL)
    with pytest.raises(ValueError, match="'binomial' or 'poisson'"):
        simulate_spikes(family="gaussian", **SMALL)
    with pytest.raises(TypeError, match="bin_size must be a time with units"):
        simulate_spikes(bin_size=1.0, **SMALL)
    with pytest.raises(ValueError, match="poisson_method must be"):
        simulate_spikes(family="poisson", poisson_method="thinning", **SMALL)
    with pytest.raises(ValueError, match="n_trials must be an integer >= 1"):
        simulate_spikes(n_trials=0, **SMALL)


def test_bin_size_in_seconds_and_channels():
    templates = make_templates("gaussian", n_templates=2, template_size=10, n_channels=2, seed=0)
    simulation = simulate_spikes(
        templates, family="binomial", n_examples=2, n_bins=50, n_trials=3, bin_size=0.002 * pq.s, seed=0
    )
    assert simulation.counts.counts.shape == (2, 2, 50)
    assert simulation.counts.channel_names == ["unit 0", "unit 1"]
    assert simulation.block.segments[0].spiketrains[0].t_stop == 0.1 * pq.s
