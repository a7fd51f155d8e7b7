"""How well can templates be learned when the codes must be inferred? One template step from the truth.

The floor of ``core.py`` knows the true codes. A learner does not: it infers codes with its current templates
and re-estimates the templates from them. This script starts from the **true** templates and baseline, infers
the codes of the standard problem in several ways, and takes one exact maximum-likelihood template step from
each (``core.maximum_likelihood_floor`` with the inferred codes in place of the true ones). The error of that
step says what each way of inferring codes costs even in the best case, where the templates are already right:

- ``true codes``: the floor itself;
- ``l1``: the l1-regularised codes (spikedict's encoder, 1000 FISTA iterations) at several sparsities;
- ``l1 + refit``: the support of those codes with maximum-likelihood amplitudes (no shrinkage);
- ``greedy l0``: events added where the likelihood gain of one event exceeds a penalty (local maxima at least
  half a template apart), amplitudes refitted on the support after each round;
- ``posterior sample``: one draw of the codes from their posterior under the true prior (event rate and
  amplitude range of the simulation) by blocked Gibbs sampling (each template's codes in blocks of one template
  length, at most one event a block, a quadratic approximation of the log-likelihood), after ``--sweeps``.

Run::

    python benchmarks/code_bounds.py                       # binomial, seed 0
    python benchmarks/code_bounds.py --variants binomial poisson --seeds 0 1

It prints a table and writes ``benchmarks/results/code_bounds.csv``. It asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core

from spikedict.families import Gaussian
from spikedict.model import DCEA, ConvolutionOperator
from spikedict.simulate import SimulatedCounts
from spikedict.training import encode_in_batches

L1_MULTIPLES = (0.3, 0.6, 1.0)  # sparsity in noise levels (see spikedict.families.Family.noise_level)
GREEDY_PENALTIES = (3.0, 6.0, 12.0)  # nats per event
SUPPORT_ONLY = 1e6  # l1 weight that keeps a code entry at zero


def dispersion(family) -> float:
    """Factor between the family's NLL (``A(eta) - y eta``) and the negative log-likelihood in nats."""
    return family.std**2 if isinstance(family, Gaussian) else 1.0


def second_derivative(family, eta: torch.Tensor) -> torch.Tensor:
    """``A''(eta)``: the variance divided by the dispersion."""
    return family.variance(eta) / dispersion(family)


def template_step_error(simulation: SimulatedCounts, codes: torch.Tensor) -> float:
    """Error of the maximum-likelihood templates given ``codes`` (and the true baseline)."""
    with_codes = dataclasses.replace(simulation, codes=codes.double().numpy())
    return core.maximum_likelihood_floor(with_codes)[0]


def true_model(simulation: SimulatedCounts, y: torch.Tensor) -> DCEA:
    n_templates, n_channels, size = simulation.templates.shape
    model = DCEA(n_templates, n_channels, size, simulation.family, learn_baseline=False)
    with torch.no_grad():
        model.templates.copy_(torch.as_tensor(simulation.templates))
        model.baseline.copy_(torch.as_tensor(simulation.baseline))
    model.update_step_size(tuple(y.shape[2:]), y)
    return model


def refit_on_support(model: DCEA, y: torch.Tensor, codes: torch.Tensor, n_iterations: int = 300) -> torch.Tensor:
    """Maximum-likelihood non-negative amplitudes on the support of ``codes`` (zero l1 weight there)."""
    weights = torch.where(codes > 0, 0.0, SUPPORT_ONLY)
    return encode_in_batches(model, y, model.family, n_iterations, len(y), initial=codes, thresholds=weights)


def greedy_codes(model: DCEA, y: torch.Tensor, penalty: float, n_rounds: int = 10) -> torch.Tensor:
    """l0-penalised codes by rounds of greedy additions and refits (``penalty`` in nats per event)."""
    family = model.family
    templates = model.templates.detach()
    signal_shape = tuple(y.shape[2:])
    operator = ConvolutionOperator(templates, signal_shape)
    squared = ConvolutionOperator(templates**2, signal_shape)
    baseline = model.baseline.detach().reshape(1, -1, 1)
    radius = templates.shape[-1] // 2
    codes = torch.zeros((len(y), model.n_templates) + model.code_shape(signal_shape))
    for _ in range(n_rounds):
        eta = operator.decode(codes) + baseline
        score = operator.correlate(family.residual(y, eta)) * family.residual_scale
        curvature = squared.correlate(second_derivative(family, eta)).clamp(min=1e-12)
        amplitude = (score / curvature).clamp(min=0)
        # log-likelihood gain (nats) of one new event at its best amplitude, to second order
        gain = torch.where(codes > 0, 0.0, 0.5 * score * amplitude / dispersion(family))
        best, which = gain.max(dim=1)
        peaks = (best >= F.max_pool1d(best[:, None], 2 * radius + 1, 1, radius)[:, 0]) & (best > penalty)
        if not bool(peaks.any()):
            break
        added = torch.zeros_like(codes, dtype=torch.bool).scatter_(1, which[:, None], peaks[:, None])
        codes = refit_on_support(model, y, torch.where(added, amplitude.clamp(min=1e-3), codes), 100)
    return codes


def posterior_sample(
    model: DCEA, y: torch.Tensor, event_rate: float, amplitudes: tuple[float, float], n_sweeps: int, seed: int
) -> torch.Tensor:
    """Codes drawn by blocked Gibbs sampling under the simulation's prior.

    Each template's shifts are cut into blocks of one template length, at an offset drawn at each sweep; every
    other block is drawn at once given all other codes (their events cannot overlap in the data), with at most
    one event a block, at a uniform shift, with an amplitude uniform on 8 values spanning ``amplitudes``. The
    log-likelihood of one event is taken to second order around the rates without the block's events:
    ``(a <h, y - mean> - a^2 / 2 <h^2, A''>) / dispersion``, exact for Gaussian data.
    """
    family = model.family
    templates = model.templates.detach()
    signal_shape = tuple(y.shape[2:])
    size = templates.shape[-1]
    baseline = model.baseline.detach().reshape(1, -1, 1)
    operator = ConvolutionOperator(templates, signal_shape)
    singles = [ConvolutionOperator(templates[k : k + 1], signal_shape) for k in range(model.n_templates)]
    squares = [ConvolutionOperator(templates[k : k + 1] ** 2, signal_shape) for k in range(model.n_templates)]
    grid = torch.linspace(*amplitudes, 8)
    block_event = 1.0 - math.exp(-event_rate * size)  # probability of an event in a block of `size` shifts
    log_none = math.log(1.0 - block_event)
    log_each = math.log(block_event / (size * len(grid)))
    generator = torch.Generator().manual_seed(seed)
    codes = torch.zeros((len(y), model.n_templates) + model.code_shape(signal_shape))
    n_examples, _, n_sites = codes.shape
    for _ in range(n_sweeps):
        # Blocks start at offset + j * size; `lead` pads the shifts so that padded blocks start at multiples of size.
        offset = int(torch.randint(0, size, (1,), generator=generator))
        lead = (size - offset) % size
        n_blocks = -(-(n_sites + lead) // size)
        for parity in (0, 1):
            chosen = torch.arange(parity, n_blocks, 2)
            if chosen.numel() == 0:
                continue
            in_chosen = torch.zeros(n_blocks * size, dtype=torch.bool)
            in_chosen.view(n_blocks, size)[chosen] = True
            in_chosen = in_chosen[lead : lead + n_sites]
            for k in range(model.n_templates):
                codes[:, k, in_chosen] = 0.0
                eta = operator.decode(codes) + baseline
                score = singles[k].correlate(family.residual(y, eta))[:, 0] * family.residual_scale
                curvature = squares[k].correlate(second_derivative(family, eta))[:, 0]
                log_p = (grid * score[..., None] - 0.5 * grid**2 * curvature[..., None]) / dispersion(family) + log_each
                padded = log_p.new_full((n_examples, n_blocks * size, len(grid)), -torch.inf)
                padded[:, lead : lead + n_sites] = log_p
                blocks = padded.view(n_examples, n_blocks, size * len(grid))[:, chosen]
                logits = torch.cat([blocks.new_full(blocks.shape[:2] + (1,), log_none), blocks], dim=2)
                gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).clamp(min=1e-30)))
                choice = (logits + gumbel).argmax(dim=2)  # 0: no event in the block
                example, block = torch.nonzero(choice > 0, as_tuple=True)
                index = choice[example, block] - 1
                codes[example, k, chosen[block] * size + index // len(grid) - lead] = grid[index % len(grid)]
    return codes


def bounds(variant: str, seed: int, n_sweeps: int, n_examples: int = core.N_EXAMPLES) -> list[dict]:
    """Rows of the table for one variant and seed (prints each row as it comes)."""
    simulation = core.simulate(variant, seed, n_examples)
    y = torch.as_tensor(simulation.counts, dtype=torch.float32)
    model = true_model(simulation, y)
    true = torch.as_tensor(simulation.codes, dtype=torch.float32)
    rows = []

    def record(method: str, setting: str, codes: torch.Tensor, seconds: float) -> None:
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                "method": method,
                "setting": setting,
                "code_density": float((codes > 0).float().mean()),
                "true_density": float((true > 0).float().mean()),
                "template_error": template_step_error(simulation, codes),
                "inference_seconds": seconds,
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(header=len(rows) == 1, index=False), flush=True)

    record("true codes", "", true, 0.0)
    noise = simulation.family.noise_level(y, model.baseline.detach().reshape(1, -1, 1))
    for multiple in L1_MULTIPLES:
        model.sparsity = multiple * noise
        started = time.perf_counter()
        with torch.no_grad():
            codes = encode_in_batches(model, y, simulation.family, 1000, len(y))
        seconds = time.perf_counter() - started
        record("l1", f"sparsity {multiple} x noise", codes, seconds)
        with torch.no_grad():
            refitted = refit_on_support(model, y, codes)
        record("l1 + refit", f"sparsity {multiple} x noise", refitted, seconds)
    model.sparsity = 0.0
    for penalty in GREEDY_PENALTIES:
        started = time.perf_counter()
        with torch.no_grad():
            codes = greedy_codes(model, y, penalty)
        record("greedy l0", f"penalty {penalty} nats", codes, time.perf_counter() - started)
    if simulation.templates.shape[1] == 1:
        started = time.perf_counter()
        with torch.no_grad():
            codes = posterior_sample(model, y, core.EVENT_RATE, core.AMPLITUDE_RANGE, n_sweeps, seed)
        record("posterior sample", f"{n_sweeps} sweeps", codes, time.perf_counter() - started)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(core.VARIANTS), default=["binomial"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sweeps", type=int, default=4, help="Gibbs sweeps of the posterior sample")
    parser.add_argument("--n-examples", type=int, default=core.N_EXAMPLES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=core.RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        row
        for variant in args.variants
        for seed in args.seeds
        for row in bounds(variant, seed, args.sweeps, args.n_examples)
    ]
    table = pd.DataFrame(rows)
    floors = table[table.method == "true codes"].set_index(["variant", "seed"]).template_error
    table["ratio_to_floor"] = [
        error / floors[(variant, seed)] for variant, seed, error in zip(table.variant, table.seed, table.template_error)
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output_dir / "code_bounds.csv", index=False)
    print()
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
