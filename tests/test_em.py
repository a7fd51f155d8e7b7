"""The marginal-likelihood (EM) solver: its sampler against the exact posterior, resume, settings, a fit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import small_model
from scipy.stats import chi2

from spikedict import SpikeDictionary
from spikedict.analysis import align_templates
from spikedict.families import Binomial, Gaussian, Poisson
from spikedict.model import decode
from spikedict.solvers import EM, Alternating
from spikedict.solvers._sampling import CodePrior, CodeSampler

TEMPLATES = torch.tensor([[[0.6, 0.8, -0.3]], [[-0.2, 0.5, 0.9]]])
TEMPLATES = TEMPLATES / TEMPLATES.flatten(1).norm(dim=1)[:, None, None]
AMPLITUDES = torch.tensor([1.0, 2.5])


def exact_posterior(y, family, n_templates, prior, baseline, spacing=None, likelihood_weight=1.0):
    """Every code configuration of a tiny problem (events of a template at least ``spacing`` apart, by default a
    template), with its posterior probability (the likelihood raised to ``likelihood_weight``) by enumeration."""
    size, n_bins = TEMPLATES.shape[-1], y.shape[-1]
    n_shifts = n_bins - size + 1
    spacing = size if spacing is None else spacing
    per_template = []
    for _ in range(n_templates):
        options = []
        for n_events in range(n_shifts + 1):
            for shifts in itertools.combinations(range(n_shifts), n_events):
                if any(b - a < spacing for a, b in itertools.pairwise(shifts)):
                    continue
                options += [tuple(zip(shifts, grid)) for grid in itertools.product(range(2), repeat=n_events)]
        per_template.append(options)
    states, log_weights = [], []
    for state in itertools.product(*per_template):
        codes = torch.zeros(1, n_templates, n_shifts)
        log_prior = 0.0
        for k, events in enumerate(state):
            for shift, grid in events:
                codes[0, k, shift] = AMPLITUDES[grid]
                log_prior += float(prior.log_odds()[k] + torch.log(prior.amplitude_weights[k, grid]))
        eta = decode(codes, TEMPLATES[:n_templates], 1, (n_bins,)) + baseline
        log_weights.append(log_prior - likelihood_weight * float(family.negative_log_likelihood(y, eta).sum()))
        states.append(state)
    weights = np.exp(np.array(log_weights) - max(log_weights))
    return states, weights / weights.sum()


@pytest.mark.parametrize(
    ("family", "n_templates", "spacing", "likelihood_weight"),
    [
        (Poisson(), 1, None, 1.0),
        (Binomial(n_trials=5), 1, None, 1.0),
        (Poisson(), 2, None, 1.0),
        (Binomial(n_trials=5), 2, None, 1.0),
        (Poisson(), 2, 2, 1.0),  # events closer than a template: smaller blocks, three colours
        (Binomial(n_trials=5), 1, 1, 1.0),  # any spacing: one-shift blocks, three colours
        (Poisson(), 2, None, 0.4),  # the tempered posterior of EM's first iterations
    ],
)
def test_the_sampler_draws_from_the_exact_posterior(family, n_templates, spacing, likelihood_weight):
    y = torch.tensor([[[0.0, 3.0, 2.0, 0.0, 1.0, 4.0, 1.0]]])
    baseline = torch.tensor([-0.5])
    prior = CodePrior(torch.tensor([0.15, 0.1])[:n_templates], AMPLITUDES, torch.tensor([[0.6, 0.4], [0.3, 0.7]]))
    states, probability = exact_posterior(
        y, family, n_templates, prior, baseline.reshape(1, -1, 1), spacing, likelihood_weight
    )
    n_chains = 6000  # independent chains, one per copy of the example
    sampler = CodeSampler(
        TEMPLATES[:n_templates],
        baseline,
        y.expand(n_chains, -1, -1).contiguous(),
        family,
        torch.zeros(n_chains, n_templates, 5),
        spacing,
        likelihood_weight,
    )
    generator = torch.Generator().manual_seed(3)
    for _ in range(60):
        sampler.sweep(prior, generator)
    index = {state: i for i, state in enumerate(states)}
    counts = np.zeros(len(states))
    for chain in sampler.codes:
        state = tuple(
            tuple((int(s), int((AMPLITUDES - chain[k, s]).abs().argmin())) for s in torch.nonzero(chain[k]).flatten())
            for k in range(n_templates)
        )
        counts[index[state]] += 1  # a state outside the prior's support would raise here
    # Pearson's chi-square over the states expected at least 5 times (the rest pooled into one cell), at a
    # significance of 1e-4: a sampler with the wrong stationary distribution fails it by far at 6000 chains
    expected = probability * n_chains
    common = expected >= 5
    observed_cells = np.append(counts[common], counts[~common].sum())
    expected_cells = np.append(expected[common], expected[~common].sum())
    statistic = float(((observed_cells - expected_cells) ** 2 / np.maximum(expected_cells, 1e-12)).sum())
    assert statistic < chi2.ppf(1 - 1e-4, len(observed_cells) - 1), (statistic, len(observed_cells))


def test_the_sampler_keeps_its_rates_in_step_with_its_codes():
    y = torch.poisson(torch.full((4, 2, 60), 1.5), generator=torch.Generator().manual_seed(0))
    templates = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(1))
    prior = CodePrior(torch.tensor([0.05, 0.05]), torch.tensor([0.5, 1.0, 2.0]), torch.full((2, 3), 1 / 3))
    sampler = CodeSampler(templates, torch.tensor([0.2, 0.4]), y, Poisson(), torch.zeros(4, 2, 53))
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        acceptance = sampler.sweep(prior, generator)
        torch.testing.assert_close(sampler.eta, sampler._eta(), atol=1e-5, rtol=1e-5)
    assert 0 < acceptance <= 1 and bool((sampler.codes != 0).any())
    with pytest.raises(ValueError, match="draws the codes of count data"):
        CodeSampler(templates, torch.tensor([0.2, 0.4]), y, Gaussian(), torch.zeros(4, 2, 53))
    with pytest.raises(ValueError, match="min_spacing must lie between 1 and the template size 8"):
        CodeSampler(templates, torch.tensor([0.2, 0.4]), y, Poisson(), torch.zeros(4, 2, 53), 9)
    events = sampler.codes != 0  # events of one template at least a template apart
    for example, template in itertools.product(range(4), range(2)):
        shifts = torch.nonzero(events[example, template]).flatten()
        assert bool((torch.diff(shifts) >= 8).all())


def test_the_prior_update_returns_the_event_probability_the_events_were_drawn_with():
    """Zero templates leave the data no say: the sampler draws the prior's events (at least ``min_spacing`` apart),
    and the prior's update from them gives back the event probability they were drawn with (the hard-rod activity
    of their density), where the density itself (right without spacing) is lower by a fraction of about
    ``2 (d - 1) p``."""
    from spikedict.solvers.em import _event_probability

    n_examples, n_bins, size, spacing, probability = 40, 1000, 30, 6, 0.03
    y = torch.poisson(torch.full((n_examples, 1, n_bins), 0.5), generator=torch.Generator().manual_seed(0))
    prior = CodePrior(torch.tensor([probability], dtype=torch.float64), AMPLITUDES, torch.tensor([[0.5, 0.5]]))
    codes = torch.zeros(n_examples, 1, n_bins - size + 1)
    sampler = CodeSampler(torch.zeros(1, 1, size), torch.zeros(1), y, Poisson(), codes, spacing)
    generator = torch.Generator().manual_seed(1)
    estimates, densities = [], []
    for sweep in range(25):
        sampler.sweep(prior, generator)
        if sweep >= 5:
            estimates.append(float(_event_probability(sampler.codes, min_spacing=spacing)[0]))
            densities.append(float(_event_probability(sampler.codes)[0]))
    assert np.mean(estimates) == pytest.approx(probability, rel=0.04)
    assert np.mean(densities) < 0.9 * probability


def test_em_settings_are_checked_with_the_fix(binomial_counts):
    with pytest.raises(ValueError, match="EM n_sweeps must be an integer >= 1"):
        small_model(solver=EM(n_sweeps=0)).fit(binomial_counts)
    with pytest.raises(ValueError, match="EM averaging must be a fraction"):
        small_model(solver=EM(averaging=0)).fit(binomial_counts)
    with pytest.raises(ValueError, match=r"EM tempering must be a power of the likelihood in \(0, 1\], got 0"):
        small_model(solver=EM(tempering=0)).fit(binomial_counts)
    with pytest.raises(ValueError, match="EM n_tempered must be an integer >= 0"):
        small_model(solver=EM(n_tempered=-1)).fit(binomial_counts)
    with pytest.raises(ValueError, match="fits count data"):
        small_model(family=Gaussian(), n_trials=None, solver=EM(n_epochs=1)).fit(binomial_counts)
    model = SpikeDictionary(solver="em")
    assert model.get_params()["solver__map_fit__n_epochs"] == 30 and model.solver == "em"
    model.set_params(solver__map_fit__n_epochs=2, solver__n_epochs=3)  # the name resolved to its object
    assert model.solver == EM(n_epochs=3, map_fit=Alternating(n_epochs=2))


def test_em_tempers_its_first_iterations_and_draws_its_averaged_ones_from_the_posterior(binomial_counts):
    """The likelihood's power rises linearly from ``tempering`` to 1 over ``n_tempered`` iterations, and is 1 in the
    averaged iterations even where ``n_tempered`` reaches into them."""
    solver = EM(n_epochs=6, n_burn_in=1, map_fit=Alternating(n_epochs=1), n_starts=1, tempering=0.25, n_tempered=2)
    history = small_model(solver=solver, seed=0).fit(binomial_counts).history_
    weights = history.loc[history["phase"] == "em", "likelihood_weight"].tolist()
    assert weights == pytest.approx([0.25, 0.625, 1.0, 1.0, 1.0, 1.0])
    solver.set_params(n_tempered=5)  # the averaged iterations (the last 3) pool the third's draw: 1 from there
    history = small_model(solver=solver, seed=0).fit(binomial_counts).history_
    weights = history.loc[history["phase"] == "em", "likelihood_weight"].tolist()
    assert weights == pytest.approx([0.25, 0.625, 1.0, 1.0, 1.0, 1.0])


def test_an_interrupted_em_fit_resumes_to_the_uninterrupted_result(binomial_counts, tmp_path, monkeypatch):
    settings = {"solver": EM(n_epochs=6, n_burn_in=1, map_fit=Alternating(n_epochs=3)), "seed": 1}
    whole = small_model(**settings).fit(binomial_counts)
    assert whole.history_["phase"].tolist() == ["map"] * 3 + ["em"] * 6
    import spikedict.solvers._runner as runner

    calls = {"n": 0}
    save = runner.save_checkpoint

    def save_then_stop(path, payload):  # interrupted after the fourth epoch's checkpoint (first EM iteration)
        save(path, payload)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", save_then_stop)
    path = tmp_path / "em.ckpt"
    with pytest.warns(RuntimeWarning, match="fit interrupted"):
        small_model(**settings, checkpoint_path=str(path)).fit(binomial_counts)
    monkeypatch.setattr(runner, "save_checkpoint", save)
    resumed = small_model(**settings, checkpoint_path=str(path)).fit(binomial_counts, resume=True)
    np.testing.assert_allclose(resumed.templates_, whole.templates_, atol=1e-6)
    np.testing.assert_allclose(resumed.event_probability_, whole.event_probability_)  # the posterior's moments too
    np.testing.assert_allclose(resumed.posterior_codes_, whole.posterior_codes_, atol=1e-5)
    assert len(resumed.history_) == 9
    # the resumed run goes on tempering (its second EM iteration), then pools draws and averages
    np.testing.assert_allclose(resumed.history_["likelihood_weight"], whole.history_["likelihood_weight"])
    assert resumed.history_["likelihood_weight"].iloc[4] == pytest.approx(0.75)
    loaded = SpikeDictionary.load(whole.save(tmp_path / "em"))  # the settings travel with the model
    assert loaded.solver == whole.solver and loaded.solver_ == whole.solver_
    np.testing.assert_array_equal(loaded.templates_, whole.templates_)


@pytest.mark.slow
def test_em_improves_on_the_map_start_at_moderate_signal():
    """Binomial counts where an event moves the counts by a few standard deviations: the MAP start's templates
    are biased, and EM moves them closer to the truth."""
    from spikedict.simulate import paper_templates, simulate_counts

    simulation = simulate_counts(
        paper_templates(), n_examples=40, n_bins=1500, n_trials=20, baseline=-2.5, amplitude_range=(2.0, 4.0), seed=0
    )
    common = dict(n_templates=3, template_size=50, n_trials=20, seed=0, progress=False, device="cpu")
    em = SpikeDictionary(**common, solver=EM(n_epochs=12, n_starts=1)).fit(simulation.counts)
    history = em.history_
    map_rows = history[history["phase"] == "map"]
    assert len(map_rows) == 30 and (history["phase"] == "em").sum() == 12
    start = SpikeDictionary(**common, solver="alternating").fit(simulation.counts)  # the same MAP fit, alone
    map_error = align_templates(start.templates_, simulation.templates).mean_error
    em_error = align_templates(em.templates_, simulation.templates).mean_error
    assert em_error < map_error - 0.05, (map_error, em_error)
    assert math.isfinite(em.score(simulation.counts))


def test_the_posterior_finds_the_true_events_with_their_amplitudes_and_bands_the_templates():
    """Clear binomial events, EM started from the truth: the events with posterior probability above 1/2 are the
    true ones (each within 2 bins), their amplitudes follow the true ones, and the templates lie in their bands."""
    from spikedict.simulate import paper_templates, simulate_counts

    truth = paper_templates(30)
    simulation = simulate_counts(
        truth, 12, 600, "binomial", n_trials=30, baseline=-1.0, amplitude_range=(2.0, 4.0), event_rate=0.004, seed=2
    )
    solver = EM(n_epochs=16, n_burn_in=3, map_fit=Alternating(n_epochs=2))
    model = SpikeDictionary(3, 30, "binomial", n_trials=30, init=truth, solver=solver, seed=0, progress=False)
    model.fit(simulation.counts)
    probability = model.event_probability_
    assert probability.shape == simulation.codes.shape and probability.min() >= 0 and probability.max() <= 1
    events = model.events(threshold=0.5)
    assert events.columns.tolist() == ["template", "example", "position", "probability", "amplitude"]
    assert (events["probability"] >= 0.5).all()
    found, matched_amplitudes = 0, []
    true_events = np.argwhere(simulation.codes > 0)
    for example, template, position in true_events:
        near = events[(events["example"] == example) & (events["template"] == template)]
        near = near[(near["position"] - position).abs() <= 2]
        if len(near):
            found += 1
            matched_amplitudes.append((simulation.codes[example, template, position], near["amplitude"].iloc[0]))
    assert found >= 0.8 * len(true_events) and len(events) <= 1.25 * len(true_events), (found, len(events))
    true_amplitudes, amplitudes = np.array(matched_amplitudes).T
    assert np.corrcoef(true_amplitudes, amplitudes)[0, 1] > 0.5
    inside = (model.templates_ >= model.template_lower_) & (model.templates_ <= model.template_upper_)
    assert inside.mean() > 0.9 and (model.template_upper_ > model.template_lower_).mean() > 0.9
    map_model = SpikeDictionary(3, 30, "binomial", n_trials=30, solver=Alternating(n_epochs=1), progress=False)
    with pytest.raises(ValueError, match="only a sampling solver learns"):
        map_model.fit(simulation.counts).events()
    assert not hasattr(map_model, "event_probability_")


def test_em_restarts_are_compared_by_the_mean_loss_of_their_last_iterations(binomial_counts):
    """One EM iteration's loss is one draw's: restarts are compared by the mean over the last 5 iterations."""
    solver = EM(n_epochs=6, n_burn_in=1, map_fit=Alternating(n_epochs=2), n_restarts=2)
    model = small_model(solver=solver, seed=0).fit(binomial_counts)
    em_losses = model.history_.loc[model.history_["phase"] == "em", "train_loss"]
    assert model.restart_losses_[model.best_restart_] == pytest.approx(em_losses.iloc[-5:].mean())
    assert model.restart_losses_[model.best_restart_] == min(model.restart_losses_)


def test_em_starts_from_the_screened_map_start_with_the_lowest_loss(binomial_counts, monkeypatch):
    """EM(n_starts=3) with seed 1 fits the MAP start from seeds 1, 2, 3, and runs EM from the one whose loss is
    lowest: the same fit as EM from that seed alone."""
    map_fit = Alternating(n_epochs=2)
    seeds = [1, 2, 3]
    losses = [small_model(solver=map_fit, seed=s).fit(binomial_counts).history_["train_loss"].iloc[-1] for s in seeds]
    best = seeds[int(np.argmin(losses))]
    assert best != 1, losses  # else the screened fit would be the first start's whatever the losses
    settings = dict(n_epochs=2, n_burn_in=1, map_fit=map_fit)
    screened = small_model(solver=EM(**settings, n_starts=3), seed=1).fit(binomial_counts)
    alone = small_model(solver=EM(**settings, n_starts=1), seed=best).fit(binomial_counts)
    np.testing.assert_array_equal(screened.templates_, alone.templates_)
    # given initial templates leave nothing to screen: one fit, EM from them, as with one start
    fits = []
    original = SpikeDictionary._fit_once
    monkeypatch.setattr(SpikeDictionary, "_fit_once", lambda self, *args: fits.append(args[0]) or original(self, *args))
    init = screened.templates_
    given = [small_model(solver=EM(**settings, n_starts=n), seed=1, init=init).fit(binomial_counts) for n in (3, 1)]
    assert [solver.name for solver in fits] == ["em", "em"]
    np.testing.assert_array_equal(given[0].templates_, given[1].templates_)
    with pytest.raises(ValueError, match="EM n_starts must be an integer >= 1"):
        small_model(solver=EM(n_starts=0)).fit(binomial_counts)
    with pytest.raises(ValueError, match="EM n_draws must be an integer >= 1"):
        small_model(solver=EM(n_draws=0)).fit(binomial_counts)


def test_more_draws_per_template_step_make_the_templates_wander_less():
    """From the truth, the template step on 4 draws together leaves less of the draws' noise in the iterates than
    on one draw: the templates' bands (the spread of the averaged iterates) are narrower."""
    from spikedict.simulate import paper_templates, simulate_counts

    truth = paper_templates(30)
    simulation = simulate_counts(
        truth, 12, 600, "binomial", n_trials=30, baseline=-2.0, amplitude_range=(1.5, 3.0), event_rate=0.006, seed=3
    )
    widths = {}
    for n_draws in (1, 4):
        solver = EM(n_epochs=16, n_burn_in=3, map_fit=Alternating(n_epochs=1), n_starts=1, n_draws=n_draws)
        model = SpikeDictionary(3, 30, "binomial", n_trials=30, init=truth, solver=solver, seed=0, progress=False)
        model.fit(simulation.counts)
        widths[n_draws] = float((model.template_upper_ - model.template_lower_).mean())
    assert widths[4] < 0.8 * widths[1], widths


def test_spikedict_fit_keeps_the_map_fit_when_em_predicts_held_in_spikes_worse(binomial_counts):
    """The workflow's choice between EM and the MAP fit it started from: by split-half gain, a fit without events
    scoring below any fit with events (EM on sparse recordings could end with templates that code nothing)."""
    import pandas as pd

    from spikedict.analysis import split_half_gain
    from spikedict.workflow import _better_of

    with_events = small_model(seed=0).fit(binomial_counts)
    without_events = small_model(seed=0, sparsity=1e6).fit(binomial_counts)
    assert (with_events.transform(binomial_counts) != 0).any() and not without_events.transform(binomial_counts).any()
    said = []

    def with_paths():  # the MAP fit's path, where its gain was measured (_better_of gives EM's fit the same path)
        for fit, gain in ((with_events, split_half_gain(with_events, binomial_counts)), (without_events, -np.inf)):
            fit.sparsity_path_ = pd.DataFrame({"sparsity": [fit.sparsity_], "split_half_bits_per_spike": [gain]})

    with_paths()
    assert _better_of(without_events, with_events, binomial_counts, said.append) is with_events
    assert "kept the MAP fit's templates" in said[-1] and "(-inf)" in said[-1]
    with_paths()
    assert _better_of(with_events, without_events, binomial_counts, said.append) is with_events
    gain = split_half_gain(with_events, binomial_counts)
    assert said[-1] == f"kept EM's templates (split-half gain {gain:+.3f} bits per spike; MAP fit -inf)"
