"""Shared small simulated problems for the estimator, training and CLI tests."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from spikedict import SpikeDictionary
from spikedict.simulate import paper_templates, simulate_counts

# The file formats of optional extras: their tests are skipped where the extra is not installed (the README's
# test command installs both).
NIX_INSTALLED = importlib.util.find_spec("nixio") is not None
NEEDS_NIX = pytest.mark.skipif(not NIX_INSTALLED, reason="the nix extra is not installed")
NEEDS_NWB = pytest.mark.skipif(importlib.util.find_spec("pynwb") is None, reason="the nwb extra is not installed")

# The problems here are tiny: one intra-op thread is faster than two and does not oversubscribe the cores
# when the suite runs beside other work (two threads on a busy two-core machine were ~15x slower).
torch.set_num_threads(1)

N_TRIALS = 30
TEMPLATE_SIZE = 20


def small_model(**overrides) -> SpikeDictionary:
    """A quick estimator for the small problems below (test files import it from here)."""
    settings = dict(
        n_templates=3,
        template_size=TEMPLATE_SIZE,
        n_trials=N_TRIALS,
        n_epochs=3,
        n_inference_iterations=100,
        seed=0,
        progress=False,
        device="cpu",
    )
    settings.update(overrides)
    return SpikeDictionary(**settings)


@pytest.fixture(scope="session")
def true_templates() -> np.ndarray:
    return paper_templates(TEMPLATE_SIZE)


@pytest.fixture(scope="session")
def binomial_simulation(true_templates):
    """8 examples x 300 bins of binomial counts (M = 30) from the paper's three shapes."""
    return simulate_counts(true_templates, n_examples=8, n_bins=300, n_trials=N_TRIALS, event_rate=0.02, seed=1)


@pytest.fixture(scope="session")
def binomial_counts(binomial_simulation) -> np.ndarray:
    return binomial_simulation.counts


@pytest.fixture(scope="session")
def poisson_simulation(true_templates):
    """8 examples x 300 bins of Poisson counts whose events stand out (amplitudes 3 to 5 over log-rate -1).

    At the standard problem's amplitudes (1 to 2) a 3-epoch fit of this little data finds next to no events.
    """
    return simulate_counts(
        true_templates,
        n_examples=8,
        n_bins=300,
        family="poisson",
        baseline=-1.0,
        event_rate=0.02,
        amplitude_range=(3.0, 5.0),
        seed=2,
    )


@pytest.fixture(scope="session")
def poisson_counts(poisson_simulation) -> np.ndarray:
    return poisson_simulation.counts
