"""Two CPU processes (gloo), each holding its share of the examples, take the template step of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from spikedict import distributed
from spikedict._template_steps import lbfgs_template_step, least_squares_template_step, newton_template_step
from spikedict.families import Binomial, Gaussian, Poisson
from spikedict.model import DCEA, decode

N_BINS, SIZE, N_TEMPLATES, N_CHANNELS = 300, 20, 3, 2

# (name, step, family, n_examples, learn_baseline, smoothness)
CASES = [
    ("poisson-lbfgs", "lbfgs", "poisson", 8, True, 0.0),
    ("poisson-newton", "newton", "poisson", 8, True, 0.0),
    ("binomial-lbfgs", "lbfgs", "binomial", 8, True, 1e-3),
    ("binomial-newton", "newton", "binomial", 8, True, 1e-3),
    ("binomial-newton-fixed-baseline", "newton", "binomial", 8, False, 0.0),
    ("gaussian-least-squares", "least_squares", "gaussian", 8, True, 1e-3),
    ("gaussian-least-squares-fixed-baseline", "least_squares", "gaussian", 8, False, 0.0),
    ("poisson-newton-one-example", "newton", "poisson", 1, True, 0.0),  # the second process holds no example
]


def make_family(name: str, n_examples: int):
    if name == "binomial":  # per-example trials: each process takes the trials of its rows
        return Binomial(np.arange(n_examples) % 3 * 5 + 20)
    return {"poisson": Poisson(), "gaussian": Gaussian()}[name]


def make_problem(family_name: str, n_examples: int, learn_baseline: bool, smoothness: float):
    """A float64 model started away from the templates that made the data, the data, and sparse codes.

    The last template has no events at all; the second has events in examples 0 and 2 only (both held by
    the first of two processes), so which templates have events must be decided over all processes.
    """
    generator = torch.Generator().manual_seed(7)
    family = make_family(family_name, n_examples)
    model = DCEA(
        N_TEMPLATES,
        N_CHANNELS,
        SIZE,
        family,
        learn_baseline=learn_baseline,
        smoothness=smoothness,
        generator=generator,
    ).double()
    n_codes = N_BINS - SIZE + 1
    shape = (n_examples, N_TEMPLATES, n_codes)
    codes = torch.rand(shape, generator=generator, dtype=torch.float64) * 2
    codes *= torch.rand(shape, generator=generator, dtype=torch.float64) < 0.03
    codes[:, 2] = 0.0
    codes[1::2, 1] = 0.0
    codes[4:, 1] = 0.0
    with torch.no_grad():
        eta = decode(codes, model.templates.double(), signal_shape=(N_BINS,)) - 1.0
        if family_name == "gaussian":
            y = eta + 0.3 * torch.randn(eta.shape, generator=generator, dtype=torch.float64)
        else:
            y = family.sample(eta, generator=generator).double()
        model.templates.add_(0.2 * torch.randn(model.templates.shape, generator=generator, dtype=torch.float64))
        model.baseline.fill_(-0.5)
    return model, y, codes, family


def run_step(case, rows: torch.Tensor | None = None, reduce=None) -> tuple[np.ndarray, np.ndarray, int]:
    """The case's template step on ``rows`` of the examples (all of them without); (templates, baseline, its)."""
    _, step, family_name, n_examples, learn_baseline, smoothness = case
    model, y, codes, family = make_problem(family_name, n_examples, learn_baseline, smoothness)
    if rows is not None:
        y, codes, family = y[rows], codes[rows], family.select(rows)
    if step == "least_squares":
        least_squares_template_step(model, y, codes, family, batch_size=3, reduce=reduce)
        iterations = 1
    elif step == "newton":
        iterations = newton_template_step(model, y, codes, family, n_iterations=10, batch_size=3, reduce=reduce)
    else:
        iterations = lbfgs_template_step(model, y, codes, family, n_iterations=10, batch_size=3, reduce=reduce)
    return model.templates.detach().numpy().copy(), model.baseline.detach().numpy().copy(), iterations


RANK_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from spikedict import distributed
    sys.path.insert(0, "tests")
    from test_template_steps_distributed import CASES, run_step
    # processes that took different steps would wait for each other's collectives: fail instead
    rank, world = distributed.init_from_environment(backend="gloo", timeout_seconds=60)
    results = {}
    for case in CASES:
        rows = distributed.shard(torch.arange(case[3]))
        templates, baseline, iterations = run_step(case, rows, reduce=distributed.all_reduce_tensor)
        results[case[0] + ".templates"] = templates
        results[case[0] + ".baseline"] = baseline
        results[case[0] + ".iterations"] = np.array(iterations)
    np.savez(sys.argv[1] + f".rank{rank}.npz", **results)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # no gloo threads left running at exit
    """
)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
def test_shared_examples_give_every_process_the_step_of_one(tmp_path):
    root = Path(__file__).resolve().parent.parent
    script, output = tmp_path / "rank.py", tmp_path / "steps"
    script.write_text(RANK_SCRIPT)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        str(script),
        str(output),
    ]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    result = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = [np.load(f"{output}.rank{rank}.npz") for rank in range(2)]
    for case in CASES:
        name = case[0]
        templates, baseline, iterations = run_step(case)  # one process, all the examples
        start, *_ = make_problem(*case[2:])
        for rank in ranks:
            for key, expected in (("templates", templates), ("baseline", baseline)):
                difference = np.abs(rank[f"{name}.{key}"] - expected).max()
                assert difference <= 1e-5 * np.abs(expected).max(), (name, key, difference)
            assert int(rank[f"{name}.iterations"]) == iterations, name
        # every process computes the same sums, hence the same steps, to the last bit
        for key in ("templates", "baseline"):
            np.testing.assert_array_equal(ranks[0][f"{name}.{key}"], ranks[1][f"{name}.{key}"])
        # the step moved the templates with events (the second: events on one process only) and kept the third
        initial = start.templates.detach().numpy()
        assert np.abs(templates[:2] - initial[:2]).max(axis=(1, 2)).min() > 1e-3, name
        np.testing.assert_allclose(templates[2], initial[2], rtol=0, atol=1e-12, err_msg=name)


def test_without_a_process_group_the_reduction_changes_nothing():
    case = CASES[1]
    alone = run_step(case)
    reduced = run_step(case, reduce=lambda tensor: tensor)  # what all_reduce_tensor does without a group
    for a, b in zip(alone, reduced):
        np.testing.assert_array_equal(a, b)
    tensor = torch.arange(3.0)
    assert distributed.all_reduce_tensor(tensor) is tensor and torch.equal(tensor, torch.arange(3.0))
    with pytest.raises(ValueError, match="op must be"):
        distributed.all_reduce_tensor(tensor, op="mean")
