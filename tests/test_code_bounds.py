"""benchmarks/code_bounds.py: its code inference is what it says it is."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import code_bounds

from spikedict.families import Gaussian
from spikedict.model import DCEA


def _model(templates: torch.Tensor, family, baseline: float = 0.0) -> DCEA:
    model = DCEA(templates.shape[0], templates.shape[1], templates.shape[2], family, learn_baseline=False)
    with torch.no_grad():
        model.templates.copy_(templates)
        model.baseline.fill_(baseline)
    return model


def test_posterior_sample_draws_the_exact_posterior_of_one_event():
    """Gaussian data, one possible shift per example: the quadratic log-likelihood is exact, so the draws must
    follow the posterior over {no event} and the amplitude grid, computed here by hand."""
    size, std, n_examples = 12, 0.5, 20000
    template = torch.sin(torch.linspace(0, math.pi, size)).reshape(1, 1, size)
    template = template / template.norm()
    family = Gaussian(std=std)
    model = _model(template, family)
    generator = torch.Generator().manual_seed(0)
    true_amplitude = 1.5
    y = (true_amplitude * template + std * torch.randn((1, 1, size), generator=generator)).expand(n_examples, 1, size)
    event_rate, amplitudes = 0.5, (1.0, 2.0)
    draws = code_bounds.posterior_sample(model, y.contiguous(), event_rate, amplitudes, n_sweeps=1, seed=1)
    assert draws.shape == (n_examples, 1, 1)

    grid = torch.linspace(*amplitudes, 8)
    block_event = 1.0 - math.exp(-event_rate * size)
    log_each = math.log(block_event / (size * 8))  # one shift of the block's 12, one amplitude of 8
    log_prior = torch.cat([torch.tensor([math.log(1 - block_event)]), torch.full((8,), log_each)])
    values = torch.cat([torch.zeros(1), grid])
    log_likelihood = torch.stack([-((y[0] - a * template[0]) ** 2).sum() / (2 * std**2) for a in values])
    posterior = torch.softmax(log_prior + log_likelihood, dim=0)
    observed = torch.stack([(draws.flatten() == value).float().mean() for value in values])
    standard_error = (posterior * (1 - posterior) / n_examples).sqrt()
    assert float(observed.sum()) == pytest.approx(1.0)  # every draw is 0 or a grid amplitude
    assert torch.all((observed - posterior).abs() <= 5 * standard_error + 1e-4), (observed, posterior)
    # The data, not the prior, decide: no event is unlikely, and the amplitude is uncertain over several values.
    assert float(posterior[0]) < 0.2 and int((posterior > 0.05).sum()) >= 3, posterior


def test_greedy_codes_find_separated_events_exactly():
    """Noise-free Gaussian data: every event found at its shift with its amplitude, and nothing else."""
    size, n_bins = 10, 200
    templates = torch.randn((2, 1, size), generator=torch.Generator().manual_seed(2))
    templates = templates / templates.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    codes = torch.zeros((1, 2, n_bins - size + 1))
    for template, shift, amplitude in [(0, 5, 2.0), (1, 40, 1.5), (0, 90, 3.0), (1, 150, 2.5)]:
        codes[0, template, shift] = amplitude
    model = _model(templates, Gaussian(std=0.01))
    y = model.decode(codes).detach()
    model.update_step_size((n_bins,), y)
    model.sparsity = 0.0
    found = code_bounds.greedy_codes(model, y, penalty=10.0)
    torch.testing.assert_close(found, codes, atol=1e-3, rtol=1e-3)


def test_tiny_run_writes_every_method(tmp_path):
    assert code_bounds.main(["--n-examples", "4", "--sweeps", "1", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "code_bounds.csv")
    assert set(table.method) == {"true codes", "l1", "l1 + refit", "greedy l0", "posterior sample"}
    assert np.isfinite(table.template_error).all()
    assert table.loc[table.method == "true codes", "ratio_to_floor"].item() == 1.0
