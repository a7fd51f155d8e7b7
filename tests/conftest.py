"""Shared small simulated problems for the estimator, training and CLI tests."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from spikedict import SpikeDictionary
from spikedict.settings import Encoder
from spikedict.simulate import paper_templates, simulate_counts
from spikedict.solvers import Solver

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
    """A quick estimator for the small problems below (test files import it from here).

    ``overrides`` are constructor parameters or nested ones (``solver__n_epochs=2``, ``encoder__tied=False``,
    ``constraints__zero_edges=2``), set with ``set_params`` after construction. Unless ``solver`` is given, a tied
    model's is the alternating solver (``"auto"`` would be EM for counts). Unless ``solver`` (``encoder``) is given
    as an object, the solver runs 3 epochs and the encoder 100 iterations at inference.
    """
    settings = dict(
        n_templates=3,
        template_size=TEMPLATE_SIZE,
        n_trials=N_TRIALS,
        seed=0,
        progress=False,
        device="cpu",
    )
    nested = {}
    for key, value in overrides.items():
        (nested if "__" in key else settings)[key] = value
    if not isinstance(settings.get("encoder"), Encoder):
        nested.setdefault("encoder__n_iterations", 100)
    encoder = settings.get("encoder")
    tied = encoder.tied if isinstance(encoder, Encoder) else nested.get("encoder__tied", True)
    if tied:  # these problems test the alternating solver unless told otherwise (EM, "auto" for counts, is slower)
        settings.setdefault("solver", "alternating")
    if not isinstance(settings.get("solver"), Solver):
        nested.setdefault("solver__n_epochs", 3)
    model = SpikeDictionary(**settings)
    # the encoder (tied or not) first: it decides which solver a string such as "auto" stands for
    model.set_params(**{key: value for key, value in nested.items() if not key.startswith("solver__")})
    return model.set_params(**{key: value for key, value in nested.items() if key.startswith("solver__")})


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
