"""The mathematics of the exponential families in :mod:`spikedict.families`.

Every family is checked against ``torch.distributions`` (log-likelihoods), against autograd (the mean is
``A'(eta)``; the gradient of the NLL is ``mean - y``), against the closed-form saturated model (deviance),
and against the standard error of its own samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from spikedict.families import FAMILIES, Binomial, Family, Gaussian, Poisson, get_family

DTYPE = torch.float64

PER_EXAMPLE_TRIALS = np.array([3, 10, 7, 1])


def make_family(key: str) -> Family:
    if key == "gaussian":
        return Gaussian(std=1.7)
    if key == "gaussian-unit":
        return Gaussian()
    if key == "binomial":
        return Binomial(n_trials=10)
    if key == "binomial-per-example":
        return Binomial(n_trials=PER_EXAMPLE_TRIALS)
    if key == "poisson":
        return Poisson()
    raise KeyError(key)


FAMILY_KEYS = ["gaussian", "gaussian-unit", "binomial", "binomial-per-example", "poisson"]


def trials_tensor(family: Family, y: torch.Tensor) -> torch.Tensor:
    """n_trials broadcastable to ``y`` (shape (n_examples, 1, 1) for per-example trials)."""
    trials = torch.as_tensor(np.asarray(family.n_trials), dtype=y.dtype)
    if trials.ndim == 1:
        trials = trials.reshape((-1,) + (1,) * (y.ndim - 1))
    return trials


def reference_distribution(family: Family, eta: torch.Tensor, y: torch.Tensor) -> D.Distribution:
    if isinstance(family, Gaussian):
        return D.Normal(eta, family.std)
    if isinstance(family, Binomial):
        return D.Binomial(total_count=trials_tensor(family, y).expand_as(eta), logits=eta)
    if isinstance(family, Poisson):
        return D.Poisson(rate=torch.exp(eta))
    raise TypeError(family)


def random_data(family: Family, seed: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded linear predictor ``eta`` of shape (4, 2, 25) and data ``y`` drawn from the family."""
    generator = torch.Generator().manual_seed(seed)
    eta = scale * torch.randn((4, 2, 25), generator=generator, dtype=DTYPE)
    y = family.sample(eta, generator=generator)
    return eta, y


# ------------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_log_likelihood_equals_torch_distributions(key):
    family = make_family(key)
    eta, y = random_data(family, seed=0)
    # Also far-from-data predictors (large |eta|) where naive formulas lose precision.
    eta = torch.cat([eta, 4.0 * eta], dim=2)
    y = torch.cat([y, y], dim=2)
    expected = reference_distribution(family, eta, y).log_prob(y)
    actual = family.log_likelihood(y, eta)
    assert actual.shape == y.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_negative_log_likelihood_is_minus_log_prob_up_to_a_constant_in_y(key):
    family = make_family(key)
    eta_a, y = random_data(family, seed=1)
    eta_b = torch.randn(eta_a.shape, generator=torch.Generator().manual_seed(2), dtype=DTYPE) * 2.0
    differences = []
    for eta in (eta_a, eta_b):
        nll = family.negative_log_likelihood(y, eta)
        log_prob = reference_distribution(family, eta, y).log_prob(y)
        # The Gaussian NLL is in natural-parameter form: std**2 * (-log_prob) up to a constant in y.
        dispersion = family.std**2 if isinstance(family, Gaussian) else 1.0
        differences.append(nll + dispersion * log_prob)
    # The difference depends on y only: the same for two unrelated predictors.
    torch.testing.assert_close(differences[0], differences[1], rtol=0, atol=1e-10)
    # ... and it is not trivially constant: the NLL does change with eta.
    assert not torch.allclose(family.negative_log_likelihood(y, eta_a), family.negative_log_likelihood(y, eta_b))


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_negative_log_likelihood_is_the_documented_formula(key):
    family = make_family(key)
    eta, y = random_data(family, seed=3)
    expected = family.log_partition(eta) - y * eta
    torch.testing.assert_close(family.negative_log_likelihood(y, eta), expected, rtol=0, atol=0)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_log_partition_closed_form(key):
    family = make_family(key)
    eta, y = random_data(family, seed=4)
    if isinstance(family, Gaussian):
        expected = eta**2 / 2
    elif isinstance(family, Binomial):
        expected = trials_tensor(family, y) * torch.log1p(torch.exp(eta))
    else:
        expected = torch.exp(eta)
    torch.testing.assert_close(family.log_partition(eta), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_mean_is_derivative_of_log_partition(key):
    family = make_family(key)
    eta, _ = random_data(family, seed=5, scale=3.0)
    eta = eta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(family.log_partition(eta).sum(), eta)
    torch.testing.assert_close(family.mean(eta.detach()), gradient, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_curvature_is_second_derivative_of_log_partition(key):
    family = make_family(key)
    eta, _ = random_data(family, seed=6, scale=3.0)
    eta = eta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(family.log_partition(eta).sum(), eta, create_graph=True)
    (second,) = torch.autograd.grad(gradient.sum(), eta)
    torch.testing.assert_close(family.curvature(eta.detach()), second, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_gradient_of_negative_log_likelihood_is_mean_minus_y(key):
    family = make_family(key)
    eta, y = random_data(family, seed=6)
    eta = eta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(family.negative_log_likelihood(y, eta).sum(), eta)
    torch.testing.assert_close(gradient, family.mean(eta.detach()) - y, rtol=1e-12, atol=1e-12)
    # The encoder's residual is the negative gradient divided by the residual scale.
    torch.testing.assert_close(family.residual(y, eta.detach()), -gradient / family.residual_scale)


def test_mean_closed_forms():
    eta = torch.linspace(-4, 4, 17, dtype=DTYPE)
    torch.testing.assert_close(Gaussian(std=3.0).mean(eta), eta)
    torch.testing.assert_close(Binomial(30).mean(eta), 30 / (1 + torch.exp(-eta)))
    torch.testing.assert_close(Poisson().mean(eta), torch.exp(eta))


# -------------------------------------------------------------------------------- deviance
def saturated_log_likelihood(family: Family, y: torch.Tensor) -> torch.Tensor:
    """Closed-form ``log p(y | mean = y)``, with 0 log 0 = 0 (independent of the family's own code)."""
    if isinstance(family, Gaussian):
        return torch.full_like(y, -0.5 * math.log(2 * math.pi * family.std**2))
    if isinstance(family, Binomial):
        trials = trials_tensor(family, y)
        proportion = y / trials
        log_coefficient = torch.lgamma(trials + 1) - torch.lgamma(y + 1) - torch.lgamma(trials - y + 1)
        return log_coefficient + torch.special.xlogy(y, proportion) + torch.special.xlogy(trials - y, 1 - proportion)
    return torch.special.xlogy(y, y) - y - torch.lgamma(y + 1)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_deviance_is_twice_the_log_likelihood_ratio_to_the_saturated_model(key):
    family = make_family(key)
    eta, y = random_data(family, seed=7)
    expected = 2 * (saturated_log_likelihood(family, y) - reference_distribution(family, eta, y).log_prob(y))
    torch.testing.assert_close(family.deviance(y, eta), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_deviance_is_nonnegative(key):
    family = make_family(key)
    eta, y = random_data(family, seed=8, scale=3.0)
    deviance = family.deviance(y, eta)
    assert torch.isfinite(deviance).all()
    assert (deviance >= -1e-12).all()
    assert deviance.sum() > 1.0  # not trivially zero


def test_deviance_vanishes_when_the_mean_equals_the_data_inside_the_support():
    # Predictors computed by hand, not with the family's own link.
    y = torch.tensor([-2.5, 0.0, 0.3, 7.0], dtype=DTYPE)
    for family in (Gaussian(), Gaussian(std=1.7)):
        torch.testing.assert_close(family.deviance(y, y), torch.zeros_like(y), rtol=0, atol=1e-12)

    trials = 10
    y = torch.arange(1, trials, dtype=DTYPE)
    eta = torch.log(y / (trials - y))
    family = Binomial(trials)
    torch.testing.assert_close(family.mean(eta), y)
    torch.testing.assert_close(family.deviance(y, eta), torch.zeros_like(y), rtol=0, atol=1e-9)

    y = torch.tensor([1.0, 2.0, 5.0, 40.0, 1000.0], dtype=DTYPE)
    torch.testing.assert_close(Poisson().deviance(y, torch.log(y)), torch.zeros_like(y), rtol=0, atol=1e-9)


def test_deviance_at_the_boundary_of_the_support_is_finite_and_exact():
    eta = torch.tensor([-40.0, -3.0, 0.0, 2.5, 40.0], dtype=DTYPE)
    trials = 10
    zeros = torch.zeros_like(eta)
    full = torch.full_like(eta, float(trials))
    binomial = Binomial(trials)
    # y = 0: the saturated log-likelihood is 0, so D = 2 * M * softplus(eta); y = M: 2 * M * softplus(-eta).
    deviance_zero = binomial.deviance(zeros, eta)
    deviance_full = binomial.deviance(full, eta)
    assert torch.isfinite(deviance_zero).all() and torch.isfinite(deviance_full).all()
    torch.testing.assert_close(deviance_zero, 2 * trials * torch.nn.functional.softplus(eta), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(deviance_full, 2 * trials * torch.nn.functional.softplus(-eta), rtol=1e-9, atol=1e-9)
    # ... and tends to 0 as the mean goes to the boundary.
    assert deviance_zero[0] < 1e-9 and deviance_full[-1] < 1e-9

    poisson = Poisson()
    eta = eta.clamp(max=15.0)  # exact Poisson (below max_log_rate)
    deviance = poisson.deviance(zeros, eta)
    assert torch.isfinite(deviance).all()
    torch.testing.assert_close(deviance, 2 * torch.exp(eta), rtol=1e-9, atol=1e-9)
    assert deviance[0] < 1e-9

    # The same holds in float32 (the default dtype of user data).
    assert torch.isfinite(binomial.deviance(zeros.float(), eta.float())).all()
    assert torch.isfinite(binomial.deviance(full.float(), eta.float())).all()
    assert torch.isfinite(poisson.deviance(zeros.float(), eta.float())).all()


# --------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_sample_is_reproducible_with_a_generator(key):
    family = make_family(key)
    eta = torch.randn((4, 2, 25), generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    first = family.sample(eta, generator=torch.Generator().manual_seed(10))
    second = family.sample(eta, generator=torch.Generator().manual_seed(10))
    other = family.sample(eta, generator=torch.Generator().manual_seed(11))
    assert first.shape == eta.shape and first.dtype == eta.dtype
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("key", ["binomial", "binomial-per-example", "poisson"])
@pytest.mark.parametrize("with_generator", [True, False])
def test_count_samples_lie_in_the_support(key, with_generator):
    family = make_family(key)
    torch.manual_seed(12)
    generator = torch.Generator().manual_seed(12) if with_generator else None
    eta = 3.0 * torch.randn((4, 2, 200), generator=torch.Generator().manual_seed(13), dtype=DTYPE)
    y = family.sample(eta, generator=generator)
    assert torch.equal(y, torch.round(y))
    assert (y >= 0).all()
    if isinstance(family, Binomial):
        trials = trials_tensor(family, y)
        assert (y <= trials).all()
        # The upper end is reached: the trials of each example are all used.
        assert torch.equal(y.amax(dim=(1, 2)), trials.flatten().expand(4))
    family.validate(y)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_sample_mean_matches_mean_within_standard_error(key):
    family = make_family(key)
    n_draws = 4000
    eta_values = torch.tensor([-2.0, -0.5, 0.0, 0.7, 2.0], dtype=DTYPE)
    # Shape (n_examples=4, n_draws, 5): the first axis carries the per-example n_trials.
    eta = eta_values.expand(4, n_draws, 5).contiguous()
    y = family.sample(eta, generator=torch.Generator().manual_seed(14))
    mean = family.mean(eta[:, :1, :])
    if isinstance(family, Gaussian):
        variance = torch.full_like(mean, family.std**2)
    elif isinstance(family, Binomial):
        p = torch.sigmoid(eta[:, :1, :])
        variance = trials_tensor(family, mean) * p * (1 - p)
    else:
        variance = mean
    standard_error = torch.sqrt(variance / n_draws)
    # 5 standard errors: a two-sided tail of 6e-7 per cell, 20 cells.
    error = (y.mean(dim=1, keepdim=True) - mean).abs()
    assert (error <= 5 * standard_error).all(), (error / standard_error).max()
    # The sample variance is also right (within 15 %: its own relative standard error is ~2-5 %).
    torch.testing.assert_close(y.var(dim=1, keepdim=True), variance, rtol=0.15, atol=1e-12)


# ---------------------------------------------------------------------- poisson numerical guard
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_is_finite_for_huge_predictors(dtype):
    family = Poisson()
    eta = torch.tensor([-1e4, -50.0, 0.0, 19.9, 20.0, 20.1, 100.0, 1e3, 1e4], dtype=dtype, requires_grad=True)
    y = torch.full_like(eta, 3.0).detach()
    for function in (
        family.mean,
        family.log_partition,
        lambda e: family.negative_log_likelihood(y, e),
        lambda e: family.log_likelihood(y, e),
        lambda e: family.deviance(y, e),
        lambda e: family.residual(y, e),
    ):
        value = function(eta)
        assert torch.isfinite(value).all(), value
        (gradient,) = torch.autograd.grad(value.sum(), eta)
        assert torch.isfinite(gradient).all(), gradient
    # Above max_log_rate the mean is capped and A continues linearly with slope exp(max_log_rate).
    cap = math.exp(family.max_log_rate)
    above = eta.detach() >= family.max_log_rate
    torch.testing.assert_close(family.mean(eta.detach())[above], torch.full_like(eta[above], cap), rtol=1e-6, atol=0)
    (gradient,) = torch.autograd.grad(family.log_partition(eta).sum(), eta)
    torch.testing.assert_close(gradient, family.mean(eta.detach()), rtol=1e-6, atol=0)
    (gradient,) = torch.autograd.grad(family.negative_log_likelihood(y, eta).sum(), eta)
    torch.testing.assert_close(gradient, family.mean(eta.detach()) - y, rtol=1e-6, atol=0)


def test_poisson_log_partition_is_continuous_at_the_cap():
    family = Poisson(max_log_rate=5.0)
    eta = torch.tensor([5.0 - 1e-9, 5.0, 5.0 + 1e-9], dtype=DTYPE)
    values = family.log_partition(eta)
    torch.testing.assert_close(values, torch.full_like(values, math.exp(5.0)), rtol=1e-8, atol=0)
    torch.testing.assert_close(
        family.log_partition(torch.tensor(7.0, dtype=DTYPE)), torch.tensor(3 * math.exp(5.0), dtype=DTYPE)
    )


def test_poisson_is_exact_below_max_log_rate():
    family = Poisson()
    generator = torch.Generator().manual_seed(15)
    eta = torch.empty(500, dtype=DTYPE).uniform_(-8.0, family.max_log_rate - 1e-3, generator=generator)
    y = torch.poisson(torch.exp(eta.clamp(max=8.0)), generator=generator)
    torch.testing.assert_close(family.mean(eta), torch.exp(eta), rtol=1e-14, atol=0)
    torch.testing.assert_close(family.log_partition(eta), torch.exp(eta), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        family.log_likelihood(y, eta), D.Poisson(torch.exp(eta)).log_prob(y), rtol=1e-12, atol=1e-9
    )


# ------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("key", FAMILY_KEYS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_validate_rejects_non_finite_data(key, bad):
    family = make_family(key)
    y = torch.ones((4, 2, 5), dtype=DTYPE)
    y[2, 1, 3] = bad
    with pytest.raises(
        ValueError, match=r"spikes must be finite, but it contains NaN or inf: 1 value\(s\).*\(2, 1, 3\)"
    ):
        family.validate(y, name="spikes")


@pytest.mark.parametrize("key", ["binomial", "binomial-per-example", "poisson"])
def test_validate_rejects_negative_counts(key):
    family = make_family(key)
    y = torch.ones((4, 2, 5), dtype=DTYPE)
    y[0, 1, 2] = -2.0
    with pytest.raises(ValueError, match=r"counts must be >= 0.*-2 at index \(0, 1, 2\)"):
        family.validate(y)


@pytest.mark.parametrize("key", ["binomial", "binomial-per-example", "poisson"])
def test_validate_rejects_fractional_counts(key):
    family = make_family(key)
    y = torch.ones((4, 2, 5), dtype=DTYPE)
    y[1, 0, 4] = 0.5
    with pytest.raises(ValueError, match=r"counts must be whole numbers.*0\.5 at index \(1, 0, 4\)"):
        family.validate(y)


def test_validate_rejects_counts_above_n_trials():
    with pytest.raises(ValueError, match=r"cannot exceed n_trials = 10.*11 at index \(0, 0, 1\)"):
        Binomial(10).validate(torch.tensor([[[3.0, 11.0, 10.0]]], dtype=DTYPE))
    # Per example: 5 trials is fine in the example with M = 10 but not in the one with M = 3.
    family = make_family("binomial-per-example")
    y = torch.zeros((4, 1, 3), dtype=DTYPE)
    y[1, 0, 0] = 10.0
    y[2, 0, 0] = 7.0
    family.validate(y)
    y[0, 0, 2] = 5.0
    with pytest.raises(ValueError, match=r"cannot exceed n_trials.*5 at index \(0, 0, 2\)"):
        family.validate(y)


def test_validate_accepts_valid_data():
    Gaussian().validate(torch.tensor([-3.2, 0.0, 1e6, -1e-9], dtype=DTYPE))
    Binomial(4).validate(torch.tensor([0.0, 1.0, 4.0]))
    Poisson().validate(torch.tensor([0.0, 1.0, 1e6]))


# --------------------------------------------------------------------------------- get_family
@pytest.mark.parametrize("name", ["gaussian", "Gaussian", "GAUSSIAN", " binomial ", "BiNoMiAl", "Poisson", "poisson"])
def test_get_family_is_case_insensitive(name):
    family = get_family(name)
    assert isinstance(family, FAMILIES[name.strip().lower()])


def test_get_family_returns_objects_unchanged():
    for family in (Gaussian(std=2.0), Binomial(7), Poisson(residual_bound=2.0)):
        assert get_family(family) is family


def test_get_family_passes_parameters():
    family = get_family("binomial", n_trials=30)
    assert isinstance(family, Binomial) and family.n_trials == 30
    assert get_family("gaussian", std=0.5).std == 0.5
    assert get_family("poisson", n_trials=None) == Poisson()
    # The config round-trips through the name and the parameters.
    for family in (Gaussian(std=2.0), Binomial(n_trials=PER_EXAMPLE_TRIALS), Poisson(max_log_rate=10.0)):
        config = family.config()
        rebuilt = get_family(config.pop("name"), **config)
        assert rebuilt == family and type(rebuilt) is type(family)


def test_get_family_accepts_config_as_keywords():
    family = Binomial(n_trials=PER_EXAMPLE_TRIALS)
    assert get_family(**family.config()) == family


def test_get_family_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown family 'negbinomial'.*'gaussian', 'binomial', 'poisson'"):
        get_family("negbinomial")
    with pytest.raises(TypeError, match="takes no parameter"):
        get_family("poisson", n_trials=3)


# --------------------------------------------------------------------- binomial construction
def test_binomial_per_example_select():
    family = Binomial(n_trials=np.array([3, 5, 7, 9]))
    assert np.array_equal(family.n_trials, [3, 5, 7, 9])
    subset = family.select(torch.tensor([1, 3]))
    assert np.array_equal(subset.n_trials, [5, 9])
    assert np.array_equal(family.select(slice(1, 3)).n_trials, [5, 7])
    assert np.array_equal(family.select(torch.tensor([True, False, False, True])).n_trials, [3, 9])
    eta = torch.zeros((2, 1, 3), dtype=DTYPE)
    torch.testing.assert_close(subset.mean(eta), torch.tensor([2.5, 4.5], dtype=DTYPE).reshape(2, 1, 1).expand(2, 1, 3))
    # A shared n_trials is unaffected by selection.
    shared = Binomial(6)
    assert shared.select(torch.tensor([0, 1])).n_trials == 6


def test_binomial_per_example_mismatch_raises():
    family = Binomial(n_trials=np.array([3, 5, 7, 9]))
    with pytest.raises(ValueError, match=r"one value per example \(4 examples\) but the data have 3 examples"):
        family.mean(torch.zeros((3, 1, 5)))
    with pytest.raises(ValueError, match="but the data have 2 examples"):
        family.validate(torch.zeros((2, 1, 5)))
    # The selected family fits the selected examples.
    subset = family.select(torch.tensor([0, 1]))
    assert torch.isfinite(subset.log_likelihood(torch.zeros((2, 1, 5)), torch.zeros((2, 1, 5)))).all()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Binomial(n_trials=0), "n_trials must be positive integers"),
        (lambda: Binomial(n_trials=2.5), "n_trials must be positive integers"),
        (lambda: Binomial(n_trials=-3), "n_trials must be positive integers"),
        (lambda: Binomial(n_trials=np.array([3, 0])), "n_trials must be positive integers"),
        (lambda: Binomial(n_trials=np.ones((2, 2))), r"one number per example \(shape \(n_examples,\)\)"),
        (lambda: Gaussian(std=0), "Gaussian std must be a positive finite number"),
        (lambda: Gaussian(std=-1.0), "Gaussian std must be a positive finite number"),
        (lambda: Gaussian(std=float("inf")), "Gaussian std must be a positive finite number"),
        (lambda: Poisson(residual_bound=0.0), "residual_bound must be positive"),
    ],
)
def test_invalid_parameters_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_counts_that_make_a_fit_say_little_are_named_with_a_fix():
    assert "every count is zero" in Poisson().data_warnings(torch.zeros(2, 1, 50))[0]
    assert Binomial(n_trials=5).data_warnings(torch.zeros(2, 1, 50))[0].startswith("every count is zero")
    saturated = torch.full((2, 1, 50), 5.0)
    saturated[0, 0, :10] = 1.0
    assert "90% of the bins hold a spike in every trial" in Binomial(n_trials=5).data_warnings(saturated)[0]
    assert "a mean of 60 spikes per bin" in Poisson().data_warnings(torch.full((1, 1, 10), 60.0))[0]
    ordinary = torch.poisson(torch.full((3, 2, 100), 2.0), generator=torch.Generator().manual_seed(0))
    assert Poisson().data_warnings(ordinary) == [] and Binomial(n_trials=30).data_warnings(ordinary) == []
    assert Gaussian().data_warnings(torch.randn(2, 1, 10)) == []
