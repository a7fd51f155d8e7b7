"""Two CPU processes (gloo) train the same templates as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_model

from spikedict import distributed

# One process per rank, run by torchrun exactly as a user would (tests/ must not need a GPU).
RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    torch.set_num_threads(1)
    from spikedict import distributed
    sys.path.insert(0, "tests"); from conftest import small_model
    rank, world = distributed.init_from_environment()
    counts = np.load(sys.argv[1])
    settings = json.loads(sys.argv[4])
    if settings.pop("float64", False):
        torch.set_default_dtype(torch.float64)
    model = small_model(**settings, checkpoint_path=sys.argv[2])
    model.fit(counts)
    np.save(sys.argv[3] + f".rank{rank}.npy", model.templates_)
    """
)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def torchrun(n_processes: int, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={n_processes}",
        f"--master-port={free_port()}",
        *arguments,
    ]
    # the checkout first, then whatever the caller's path held (packages installed with --target, say)
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


# small_model's settings of each solver's distributed fit (3 epochs)
DISTRIBUTED_FITS = {
    "backprop": {"solver": "backprop", "solver__batch_size": 4, "solver__n_epochs": 3},
    # the alternating solver runs under torchrun too: each process codes its share of the examples
    "alternating": {"solver": "alternating", "solver__n_epochs": 3},
    # in float64 the order of the sums no longer shows: the split fit is the one-process fit
    "alternating-float64": {"solver": "alternating", "solver__n_epochs": 3, "float64": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("solver", list(DISTRIBUTED_FITS))
def test_two_processes_learn_the_templates_of_one(binomial_counts, tmp_path, solver):
    root = Path(__file__).resolve().parent.parent
    data, checkpoint, output = tmp_path / "counts.npy", tmp_path / "fit.ckpt", tmp_path / "templates"
    np.save(data, binomial_counts)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    settings = DISTRIBUTED_FITS[solver]
    result = torchrun(2, str(script), str(data), str(checkpoint), str(output), json.dumps(settings), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = np.load(f"{output}.rank0.npy"), np.load(f"{output}.rank1.npy")
    np.testing.assert_array_equal(rank0, rank1)  # DDP keeps the processes in lockstep
    one_process = {key: value for key, value in settings.items() if key != "float64"}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if settings.get("float64") else previous)
    try:
        one = small_model(**one_process).fit(binomial_counts)
    finally:
        torch.set_default_dtype(previous)
    # Same global batches and averaged gradients (backprop), or the same template step on statistics summed over
    # the processes (alternating): equal up to the order of floating-point sums. The alternating solver's steps
    # amplify float32 rounding more (7.7e-5 measured; run in float64 the two fits agree to 1.6e-12).
    difference = np.abs(rank0 - one.templates_).max()
    assert difference <= {"backprop": 2e-5, "alternating": 2e-4, "alternating-float64": 1e-10}[solver], difference
    assert not np.allclose(one.initial_templates_, one.templates_, atol=1e-2)  # the fit moved them
    # Rank 0 wrote the checkpoint, after the last epoch.
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3


def test_without_a_process_group_everything_is_one_process():
    assert not distributed.is_active() and distributed.rank() == 0 and distributed.world_size() == 1
    rows = torch.arange(5)
    assert torch.equal(distributed.shard(rows), rows)
    assert torch.equal(distributed.gather_shards(rows, 5), rows)
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]


def test_joining_outside_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node 2"):
        distributed.init_from_environment()


@pytest.mark.slow
def test_the_command_line_fit_runs_under_torchrun(tmp_path):
    from spikedict import SpikeDictionary

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "fit"
    arguments = ["-m", "spikedict", "fit", "paper-binomial", "--out", str(out), "--distributed", "--quiet"]
    result = torchrun(2, *arguments, "--n-epochs", "1", "--set", "solver__n_code_iterations=10", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2 (gloo)" in result.stderr and result.stdout.count("report:") == 1  # rank 0 reports
    model = SpikeDictionary.load(out / "model.safetensors")
    assert model.templates_.shape == (3, 1, 50) and model.history_.shape[0] == 1


WINDOWS_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch, quantities as pq
    torch.set_num_threads(1)
    from spikedict import SpikeDictionary, distributed
    from spikedict.io import RecordingWindows, read_recording
    from spikedict.solvers import Backprop
    distributed.init_from_environment()
    windows = RecordingWindows(read_recording(sys.argv[1]), 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    solver = Backprop(n_epochs=2, batch_size=4, n_code_iterations=20)
    model = SpikeDictionary(3, 30, "poisson", solver=solver, progress=False, device="cpu", seed=0).fit(windows)
    if distributed.rank() == 0:
        np.save(sys.argv[2], model.templates_)
    """
)


@pytest.mark.slow
def test_two_processes_stream_a_long_recording_like_one(tmp_path):
    import neo
    import quantities as pq

    from spikedict import SpikeDictionary
    from spikedict.io import RecordingWindows, write_recording
    from spikedict.simulate import simulate_spikes
    from spikedict.solvers import Backprop

    templates = np.random.default_rng(0).normal(size=(3, 3, 30))
    templates /= np.linalg.norm(templates.reshape(3, -1), axis=1)[:, None, None]
    simulation = simulate_spikes(
        templates, n_examples=1, n_bins=12000, family="poisson", baseline=-1.5, amplitude_range=(2.0, 3.0), seed=3
    )
    block = neo.Block()
    block.segments.append(simulation.block.segments[0])
    write_recording(block, tmp_path / "long.nix")
    script = tmp_path / "windows.py"
    script.write_text(WINDOWS_SCRIPT)
    output = tmp_path / "templates.npy"
    result = torchrun(
        2, str(script), str(tmp_path / "long.nix"), str(output), cwd=Path(__file__).resolve().parent.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    windows = RecordingWindows(simulation.block.segments[0], 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    solver = Backprop(n_epochs=2, batch_size=4, n_code_iterations=20)
    one = SpikeDictionary(3, 30, "poisson", solver=solver, progress=False, device="cpu", seed=0).fit(windows)
    difference = np.abs(np.load(output) - one.templates_).max()
    assert difference <= 2e-5, difference
