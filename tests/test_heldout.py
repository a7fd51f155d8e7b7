"""Held-out prediction: the split of spikes, bits per spike, elephant's smoothing, the comparison of rate models, the
sparsity path of ``spikedict fit`` and pooling groups of consecutive trials."""

from __future__ import annotations

import math

import neo
import numpy as np
import pytest
import quantities as pq
from scipy import stats

from spikedict import SpikeDictionary
from spikedict.analysis import bits_per_spike, heldout_comparison, smoothed_rates, split_half_gain, split_spikes
from spikedict.io import bin_spiketrains
from spikedict.settings import Encoder
from spikedict.simulate import paper_templates, simulate_counts
from spikedict.solvers import Alternating


def test_thinned_poisson_halves_are_independent_poisson_at_half_the_rate():
    counts = np.random.default_rng(1).poisson(3.0, size=(40, 2, 500))
    first, second, exposure = split_spikes(counts, "poisson", seed=0)
    assert exposure == 0.5 and np.array_equal(first.counts + second.counts, counts)
    for half in (first.counts, second.counts):  # mean = variance = 1.5, within Monte-Carlo error (40 000 bins)
        assert half.mean() == pytest.approx(1.5, abs=0.03) and half.var() == pytest.approx(1.5, abs=0.06)
    correlation = np.corrcoef(first.counts.ravel(), second.counts.ravel())[0, 1]
    assert abs(correlation) < 0.02  # independent (thinning); the halves of a count would correlate otherwise
    again, _, _ = split_spikes(counts, "poisson", seed=0)
    assert np.array_equal(again.counts, first.counts)  # seeded


def test_pooled_binomial_counts_are_split_by_trials():
    simulation = simulate_counts(paper_templates(20), n_examples=3, n_bins=100, n_trials=[6, 7, 8], seed=0)
    first, second, exposure = split_spikes(simulation, "binomial")
    assert exposure == 1.0 and first.n_trials.tolist() == [3, 4, 4] and second.n_trials.tolist() == [3, 3, 4]
    assert np.array_equal(first.counts + second.counts, simulation.counts)
    assert np.all(first.counts <= first.n_trials[:, None, None])
    with pytest.raises(ValueError, match="needs count data"):
        split_spikes(simulation.counts, "gaussian")


def test_bits_per_spike_by_hand():
    counts = np.array([[[0.0, 2.0, 1.0, 0.0]]])
    rates, reference = np.array([0.2, 1.8, 1.0, 0.1]), np.full(4, 0.75)
    gain = (stats.poisson.logpmf(counts, rates).sum() - stats.poisson.logpmf(counts, reference).sum()) / 3
    assert bits_per_spike(counts, rates, reference, "poisson") == pytest.approx(gain / math.log(2), rel=1e-10)
    assert math.isnan(bits_per_spike(np.zeros((1, 1, 4)), rates, reference, "poisson"))


def test_smoothed_rates_are_elephant_gaussian_kernel_sums():
    counts = np.zeros((1, 2, 200))
    counts[0, 0, [60, 100, 101]] = [1, 2, 1]
    counts[0, 1, 0] = 1  # at the border: border correction keeps its mass
    bin_size, width = 2 * pq.ms, 6 * pq.ms
    expected = smoothed_rates(counts, bin_size, width)
    centres = (np.arange(200) + 0.5) * 2.0
    spikes = np.repeat(centres, counts[0, 0].astype(int))
    by_hand = stats.norm.pdf(centres[:, None], spikes[None, :], 6.0).sum(axis=1) * 2.0  # per ms, times 2 ms bins
    assert np.allclose(
        expected[0, 0, 20:180], by_hand[20:180], rtol=1e-3, atol=1e-6
    )  # elephant truncates the kernel's far tails
    assert expected[0, 1].sum() == pytest.approx(1.0, rel=1e-3) and expected[0, 1].argmax() == 0


@pytest.fixture(scope="module")
def binomial_fit():
    """A fit of clear events (the demo's setting: 30 pooled trials, baseline -0.5, amplitudes 3 to 5) started from
    the true templates: 30 training and 10 held-out examples, given as bare arrays (n_trials from the model)."""
    templates = paper_templates(20)
    simulation = simulate_counts(
        templates, 40, 400, "binomial", n_trials=30, baseline=-0.5, amplitude_range=(3.0, 5.0), seed=3
    )
    train, heldout = simulation.counts[:30], simulation.counts[30:]
    model = SpikeDictionary(
        3,
        20,
        "binomial",
        n_trials=30,
        init=templates,
        solver=Alternating(n_epochs=3),
        encoder=Encoder(n_iterations=100),
    )
    return model.fit(train), train, heldout


def test_a_model_of_clear_events_predicts_held_out_spikes_and_is_left_unchanged(binomial_fit):
    model, train, heldout = binomial_fit
    baseline, rates = model.baseline_.copy(), model.predict_rate(heldout)
    table = heldout_comparison(model, train, heldout, bin_size=2 * pq.ms, psth=True)
    assert table["model"].tolist() == ["spikedict", "constant rate", "PSTH", "instantaneous_rate"]
    gains = table.set_index("model")["bits_per_spike"]
    assert gains["constant rate"] == 0.0
    assert gains["spikedict"] > 0.1 and gains["spikedict"] > gains["instantaneous_rate"] > gains["PSTH"]
    assert table["setting"].iloc[-1].startswith("Gaussian kernel, sigma")
    assert "mixed with the constant rate, weight" in table["setting"].iloc[2]  # the PSTH's floor
    assert np.array_equal(model.baseline_, baseline) and np.allclose(model.predict_rate(heldout), rates)
    assert split_half_gain(model, train) > 0.1


def test_codes_that_follow_noise_score_below_a_constant_rate_on_held_out_spikes():
    """In sample, a weakly penalised fit of constant-rate counts beats the constant rate; scored on spikes its
    codes have not seen, it loses to it."""
    counts = np.random.default_rng(0).poisson(0.3, size=(24, 1, 300))
    model = SpikeDictionary(2, 10, "poisson", sparsity=0.02, solver=Alternating(n_epochs=3), seed=0)
    model.fit(counts[:18])
    in_sample = model.score(counts[:18]) - stats.poisson.logpmf(counts[:18], counts[:18].mean()).mean()
    assert in_sample > 0
    table = heldout_comparison(model, counts[:18], counts[18:])
    assert table.set_index("model").loc["spikedict", "bits_per_spike"] < 0
    assert split_half_gain(model, counts[:18]) < 0


def test_heldout_comparison_refuses_gaussian_models_and_mismatched_counts(binomial_fit):
    model, train, heldout = binomial_fit
    with pytest.raises(ValueError, match="same channels and bins"):
        heldout_comparison(model, train, heldout[:, :, :300])
    gaussian = SpikeDictionary(1, 20, "gaussian", solver=Alternating(n_epochs=1)).fit(np.ones((2, 1, 60)))
    with pytest.raises(ValueError, match="count families"):
        heldout_comparison(gaussian, np.ones((2, 1, 60)), np.ones((2, 1, 60)))


def test_sparsity_path_goes_down_while_the_split_half_gain_grows(monkeypatch):
    """_choose_sparsity: past fits without events, on while each is better than the best, stop at the first that
    is not."""
    from spikedict import workflow

    gains = {1.0: None, 0.7: 0.01, 0.5: 0.05, 0.35: 0.03, 0.25: 0.2}  # None: no events

    class Fitted:
        def __init__(self, sparsity: float) -> None:
            self.sparsity_ = sparsity

        def transform(self, counts):  # events where the gain is known
            return np.ones(1) if gains[round(self.sparsity_, 2)] is not None else np.zeros(1)

    def run_fit(estimator, counts, resume, timings):
        timings["fit"] = 1.0
        return Fitted(estimator.sparsity)

    monkeypatch.setattr(workflow, "_run_fit", run_fit)
    monkeypatch.setattr(
        workflow, "_build_estimator", lambda parameters: SpikeDictionary(sparsity=parameters["sparsity"])
    )
    monkeypatch.setattr("spikedict.analysis.split_half_gain", lambda model, counts: gains[round(model.sparsity_, 2)])
    timings = {"fit": 1.0}
    chosen = workflow._choose_sparsity(Fitted(1.0), None, {"sparsity": "auto"}, lambda message: None, timings)
    assert chosen.sparsity_ == pytest.approx(0.5) and timings["fit"] == 4.0  # 1.0, 0.7, 0.5, 0.35: stopped there
    assert chosen.sparsity_path_["sparsity"].round(2).tolist() == [1.0, 0.7, 0.5, 0.35]
    assert chosen.sparsity_path_["events"].tolist() == [False, True, True, True]


def _trials(n_trials: int) -> neo.Block:
    block = neo.Block()
    for trial in range(n_trials):
        segment = neo.Segment()
        segment.annotate(side="left" if trial % 3 else "right")
        segment.spiketrains.append(neo.SpikeTrain([1.5 + trial % 4] * pq.ms, t_stop=6 * pq.ms))
        block.segments.append(segment)
    return block


def test_pooling_groups_of_consecutive_trials():
    block = _trials(11)
    counts = bin_spiketrains(block, 1 * pq.ms, pool_size=4)
    assert counts.n_trials.tolist() == [4, 4, 3]
    assert counts.example_labels["trials"].tolist() == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10)]
    assert counts.counts[:, 0].tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]]
    by_side = bin_spiketrains(block, 1 * pq.ms, group_by="side", pool_size=4)
    assert by_side.example_labels["side"].tolist() == ["right", "left", "left"]  # conditions in order of appearance
    assert by_side.example_labels["trials"].tolist() == [(0, 3, 6, 9), (1, 2, 4, 5), (7, 8, 10)]
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="pool_size must be a whole number of trials"):
            bin_spiketrains(block, 1 * pq.ms, pool_size=bad)
    with pytest.raises(ValueError, match="need pool_trials=True"):
        bin_spiketrains(block, 1 * pq.ms, pool_size=4, pool_trials=False)


def test_a_silent_channel_keeps_the_rate_of_half_a_spike():
    """A channel without a spike in the training data would be driven to a rate of 0 (a held-out spike there then
    costs an unbounded loss); its baseline stops at half a spike over the training bins."""
    counts = np.random.default_rng(0).poisson(0.3, size=(6, 2, 200))
    counts[:, 1] = 0
    model = SpikeDictionary(1, 10, "poisson", solver=Alternating(n_epochs=2), seed=0, progress=False).fit(counts)
    assert model.baseline_[1] == pytest.approx(math.log(0.5 / (6 * 200)), abs=1e-5)
    assert model.baseline_[0] > math.log(0.2)  # an active channel is not touched


def test_model_selection_scores_spikes_its_codes_have_not_seen(binomial_fit):
    """evaluate_heldout(infer_codes_from="split_spikes") is the comparison's spikedict row, and select_model with
    it prefers the true number of templates to more of them on data of clear events."""
    from spikedict.analysis import evaluate_heldout, select_model

    model, train, heldout = binomial_fit
    scores = evaluate_heldout(model, heldout, "binomial", train=train, infer_codes_from="split_spikes")
    row = heldout_comparison(model, train, heldout).set_index("model").loc["spikedict"]
    assert scores["heldout_log_likelihood_per_bin"] == pytest.approx(row["heldout_log_likelihood_per_bin"])
    noise = np.random.default_rng(0).poisson(0.3, size=(12, 1, 200))
    selection = select_model(
        noise,
        {"sparsity": [0.02, 2.0]},
        cv=2,
        family="poisson",
        template_size=10,
        n_templates=2,
        solver__n_epochs=2,
        infer_codes_from="split_spikes",
        refit=False,
    )
    assert selection.best_params == {"sparsity": 2.0}  # codes that follow noise lose on spikes they have not seen
