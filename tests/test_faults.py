"""Faults: a fit killed at any moment resumes to the uninterrupted result; files are written atomically; a loss
that turns non-finite stops the fit with an error naming the likely cause and keeps the last good checkpoint.

The kill tests run the fits in child processes (one thread each, so that the arithmetic, and with it the result,
does not depend on how the work is split) and kill one with SIGKILL in the middle of an epoch, or half-way through
writing a checkpoint. Crashes of the other writers are simulated in-process: the writer writes half its file and
raises.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_model

import spikedict.training as training
from spikedict import SpikeDictionary
from spikedict._atomic import atomic_path
from spikedict._divergence import diverged, encoder_failed
from spikedict.families import get_family
from spikedict.images import load_denoiser, save_denoiser
from spikedict.io import read_recording, write_recording
from spikedict.model import DCEA
from spikedict.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Fits in a fresh interpreter, one after the other: the problem of conftest.binomial_counts,
# SpikeDictionary(**params).fit(counts, resume) (nested params such as solver__n_epochs set with set_params), each
# model saved to its "out"; optionally killed (SIGKILL) half-way
# through writing the checkpoint of one epoch. (Starting an interpreter costs more than these fits: torch, and
# torch._dynamo that the first optimiser imports.)
CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from spikedict import SpikeDictionary
from spikedict.simulate import paper_templates, simulate_counts
job = json.loads(sys.argv[1])
if job["kill_while_writing_epoch"]:
    import io, os, signal
    save = torch.save
    def save_half_then_die(payload, handle, *args, **kwargs):
        if payload.get("epoch") == job["kill_while_writing_epoch"]:
            buffer = io.BytesIO()
            save(payload, buffer)
            handle.write(buffer.getvalue()[: buffer.tell() // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        save(payload, handle, *args, **kwargs)
    torch.save = save_half_then_die
simulation = simulate_counts(paper_templates(20), n_examples=8, n_bins=300, n_trials=30, event_rate=0.02, seed=1)
for task in job["fits"]:
    params = dict(task["params"])
    nested = {key: params.pop(key) for key in list(params) if "__" in key}
    model = SpikeDictionary(**params).set_params(**nested).fit(simulation.counts, resume=task["resume"])
    model.save(task["out"])
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SMALL = {"n_templates": 3, "template_size": 20, "n_trials": 30, "seed": 0, "progress": False, "device": "cpu"}

# Epochs of about 0.05 s on one core, so that the kill (after the third epoch) lands well inside the fit; the
# alternating fit is killed during continuation, with its spare templates (dropped after epoch 8), and the
# back-propagation fit keeps a validation split, so its best state travels through the checkpoint too.
KILL_SETTINGS = {
    "alternating": {"solver": "alternating", "solver__n_epochs": 16, "solver__n_code_iterations": 100},
    "backprop": {
        "solver": "backprop",
        "solver__n_epochs": 20,
        "solver__n_code_iterations": 100,
        "solver__validation_fraction": 0.25,
    },
}


def fit_in_child(
    tmp_path: Path, name: str, fits: dict[str, dict], resume: bool = False, kill_while_writing_epoch: int = 0
) -> tuple[subprocess.Popen, dict[str, Path]]:
    """Start a child that fits ``SpikeDictionary(**SMALL, **params)`` for each ``label: params`` of ``fits``.

    Returns the child and, per label, the file its model is saved to (``NAME-LABEL.safetensors``).
    """
    outs = {label: tmp_path / f"{name}-{label}.safetensors" for label in fits}
    job = {
        "fits": [
            {"params": {**SMALL, **params}, "resume": resume, "out": str(outs[label])} for label, params in fits.items()
        ],
        "kill_while_writing_epoch": kill_while_writing_epoch,
    }
    log = open(tmp_path / f"{name}.log", "wb")  # the child keeps its own descriptor
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        cwd=ROOT,
        env={**os.environ, **ONE_THREAD},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return child, outs


def wait(child: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    assert child.returncode == 0, f"the fit failed:\n{log.read_text()}"


def kill_mid_epoch(child: subprocess.Popen, checkpoint: Path, log: Path, timeout: float = 300) -> float:
    """Time one epoch from two checkpoint writes, then SIGKILL the child half an epoch after the next one.

    Returns the measured epoch duration in seconds.
    """
    deadline = time.monotonic() + timeout
    seen, written = None, []
    while len(written) < 3:
        if child.poll() is not None:
            raise AssertionError(f"the fit ended before it could be killed:\n{log.read_text()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the fit wrote no checkpoints in time")
        try:
            status = checkpoint.stat()
            stamp = (status.st_ino, status.st_mtime_ns)  # every write is a new file renamed into place
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            written.append(time.monotonic())
        time.sleep(0.002)
    epoch = written[2] - written[1]
    time.sleep(epoch / 2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return epoch


def same_fit(a: SpikeDictionary, b: SpikeDictionary) -> dict[str, float]:
    """Largest absolute differences between two fitted models."""
    columns = [c for c in a.history_.columns if c != "seconds"]
    return {
        "templates": float(np.abs(a.templates_ - b.templates_).max()),
        "baseline": float(np.abs(a.baseline_ - b.baseline_).max()),
        "history": float(np.nanmax(np.abs(a.history_[columns].to_numpy() - b.history_[columns].to_numpy()))),
        "sparsity": abs(a.sparsity_ - b.sparsity_),
    }


# ------------------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_fit_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    checkpoints = {solver: tmp_path / f"{solver}.pt" for solver in KILL_SETTINGS}
    with_checkpoint = {
        solver: {**s, "checkpoint_path": str(checkpoints[solver])} for solver, s in KILL_SETTINGS.items()
    }
    # The uninterrupted fits (without checkpoints) run in one child beside the ones that are killed.
    straight, straight_outs = fit_in_child(tmp_path, "straight", KILL_SETTINGS)
    finished = {}
    for solver in KILL_SETTINGS:
        killed, outs = fit_in_child(tmp_path, f"killed-{solver}", {solver: with_checkpoint[solver]})
        kill_mid_epoch(killed, checkpoints[solver], tmp_path / f"killed-{solver}.log")
        assert killed.returncode == -signal.SIGKILL
        assert not outs[solver].exists(), "the killed fit finished"
        finished[solver] = load_checkpoint(checkpoints[solver])["epoch"]
        assert 2 <= finished[solver] < KILL_SETTINGS[solver]["solver__n_epochs"]

    resumed, resumed_outs = fit_in_child(tmp_path, "resumed", with_checkpoint, resume=True)
    wait(resumed, tmp_path / "resumed.log")
    wait(straight, tmp_path / "straight.log")
    for solver, settings in KILL_SETTINGS.items():
        a, b = SpikeDictionary.load(straight_outs[solver]), SpikeDictionary.load(resumed_outs[solver])
        # the same epochs as the uninterrupted fit: all of them, or up to where the tolerance stopped both
        assert b.history_["epoch"].tolist() == a.history_["epoch"].tolist() == list(range(1, len(a.history_) + 1))
        assert b.stop_reason_ == a.stop_reason_ and finished[solver] < len(a.history_) <= settings["solver__n_epochs"]
        differences = same_fit(a, b)
        print(f"{solver}: killed after epoch {finished[solver]}; resumed minus uninterrupted: {differences}")
        assert all(value == 0.0 for value in differences.values()), (solver, differences)


# ------------------------------------------------------------------------------ killed mid-write
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_fit_killed_while_writing_a_checkpoint_keeps_the_previous_one(binomial_counts, tmp_path):
    settings = {
        "solver": "alternating",
        "solver__n_epochs": 4,
        "solver__n_code_iterations": 50,
        "checkpoint_path": str(tmp_path / "checkpoint.pt"),
    }
    # torch.save writes half of the third checkpoint, then the process is killed, as by a power cut.
    killed, outs = fit_in_child(tmp_path, "killed", {"fit": settings}, kill_while_writing_epoch=3)
    killed.wait(300)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not outs["fit"].exists()
    stray = [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint-")]
    assert len(stray) == 1 and stray[0].endswith(".tmp.pt")  # the half-written file, under another name
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2

    resumed = small_model(**settings).fit(binomial_counts, resume=True)
    straight = small_model(**{**settings, "checkpoint_path": None}).fit(binomial_counts)
    assert resumed.history_["epoch"].tolist() == [1, 2, 3, 4]
    assert all(value == 0.0 for value in same_fit(resumed, straight).values())


@pytest.mark.parametrize(
    "settings",
    [
        {"solver": "alternating", "solver__n_epochs": 4},
        # Stops early after 4 of 40 epochs; resuming its last checkpoint used to run on for 5 more epochs.
        {
            "solver": "backprop",
            "solver__n_epochs": 40,
            "solver__learning_rate": 0.05,
            "solver__validation_fraction": 0.25,
            "solver__patience": 2,
        },
    ],
    ids=["alternating", "backprop-early-stopping"],
)
def test_fit_killed_after_its_last_checkpoint_resumes_to_the_same_result(settings, binomial_counts, tmp_path):
    # A kill between the last checkpoint and the end of fit (e.g. while the model is saved) leaves the checkpoint
    # of a finished fit: resuming it must change nothing.
    settings = {**settings, "checkpoint_path": str(tmp_path / "checkpoint.pt")}
    finished = small_model(**settings).fit(binomial_counts)
    resumed = small_model(**settings).fit(binomial_counts, resume=True)
    if "solver__patience" in settings:
        assert finished.stop_reason_ == "early_stopping" and len(finished.history_) < settings["solver__n_epochs"]
    assert resumed.stop_reason_ == finished.stop_reason_ and len(resumed.history_) == len(finished.history_)
    assert all(value == 0.0 for value in same_fit(resumed, finished).values())


# ------------------------------------------------------------------------------ non-finite losses
def checkpoint_is_good(path: Path, epoch: int) -> None:
    """The checkpoint at ``path`` loads, holds ``epoch`` finished epochs and only finite numbers."""
    payload = load_checkpoint(path)
    assert payload["epoch"] == epoch
    # one layout for every solver: the back-propagation solver's parameters are its state's model_state
    state = payload["state"].get("model_state", payload["state"])
    assert all(bool(torch.isfinite(value).all()) for value in state.values() if isinstance(value, torch.Tensor))
    history = payload["history"]
    assert [row["epoch"] for row in history] == list(range(1, epoch + 1))
    assert all(math.isfinite(row["train_loss"]) for row in history)


@pytest.mark.parametrize(("solver", "stage"), [("alternating", "iteration 3"), ("backprop", "epoch 3")])
def test_encoder_divergence_names_the_step_size_and_keeps_the_checkpoint(
    binomial_counts, tmp_path, monkeypatch, solver, stage
):
    path = tmp_path / "checkpoint.pt"
    # The Gaussian family (the paper's mismatch control): its residual is linear in the codes, so a step above
    # 2 / ||H||^2 makes FISTA's iterates grow geometrically until they overflow.
    settings = {"family": "gaussian", "solver": solver, "solver__n_epochs": 4, "checkpoint_path": str(path)}
    straight = small_model(**{**settings, "checkpoint_path": None}).fit(binomial_counts)
    update_step_size = DCEA.update_step_size
    calls = []
    first_bad_call = 3 if solver == "alternating" else 4  # backprop's first call sets the step of the warm-up

    def ten_times_too_large_from_epoch_3(self, *args, **kwargs):
        step = update_step_size(self, *args, **kwargs)
        calls.append(step)
        if len(calls) >= first_bad_call:
            step *= 10.0
            self.step_size.fill_(step)
        return step

    monkeypatch.setattr(DCEA, "update_step_size", ten_times_too_large_from_epoch_3)
    with pytest.raises(FloatingPointError) as error:
        small_model(**settings).fit(binomial_counts)
    message = str(error.value)
    assert re.match(
        rf"the (training )?loss became (nan|inf) at {stage}\. Likely cause: the encoder diverged: its step ", message
    )
    assert "too large for this family and data" in message
    assert f"after epoch 2, and the checkpoint {str(path)!r} keeps them" in message and "resume=True" in message
    checkpoint_is_good(path, 2)

    monkeypatch.undo()
    resumed = small_model(**settings).fit(binomial_counts, resume=True)
    assert all(value == 0.0 for value in same_fit(resumed, straight).values())


@pytest.mark.parametrize(
    ("batch_size", "message"),
    [
        (4, r"the training loss became nan at epoch 3\. Likely cause: a learning rate too high for this data"),
        # One batch per epoch: the step that breaks the parameters is the last of the epoch; the epoch must not
        # be checkpointed (it was, before the parameters were checked at the end of each epoch).
        (10, r"the model's parameters became non-finite at epoch 3\. Likely cause: a learning rate too high for"),
    ],
)
def test_backprop_divergence_names_the_learning_rate_and_keeps_the_checkpoint(
    binomial_counts, tmp_path, monkeypatch, batch_size, message
):
    path = tmp_path / "checkpoint.pt"
    settings = {
        "solver": "backprop",
        "solver__n_epochs": 4,
        "solver__batch_size": batch_size,
        "checkpoint_path": str(path),
    }
    straight = small_model(**{**settings, "checkpoint_path": None}).fit(binomial_counts)
    steps_per_epoch = math.ceil(len(binomial_counts) / batch_size)
    adam_step = torch.optim.Adam.step
    steps = []

    def step_to_nan_in_epoch_3(self, *args, **kwargs):
        result = adam_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 2 * steps_per_epoch + 1:  # as a far too large learning rate would
            with torch.no_grad():
                for parameter in self.param_groups[0]["params"]:
                    parameter.fill_(math.nan)
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step_to_nan_in_epoch_3)
    with pytest.raises(FloatingPointError, match=message) as error:
        small_model(**settings).fit(binomial_counts)
    assert "Lower learning_rate (e.g. to 0.001)" in str(error.value) and "encoder's step size" in str(error.value)
    assert f"after epoch 2, and the checkpoint {str(path)!r} keeps them" in str(error.value)
    checkpoint_is_good(path, 2)

    monkeypatch.undo()
    resumed = small_model(**settings).fit(binomial_counts, resume=True)
    assert all(value == 0.0 for value in same_fit(resumed, straight).values())


def test_encoder_failed_tells_the_encoder_from_the_parameters():
    model = DCEA(1, 1, 3, get_family("poisson"), generator=torch.Generator().manual_seed(0))
    y = torch.ones((1, 1, 10))

    def loss(codes):
        return float(model.family.negative_log_likelihood(y, model.decode(codes, (10,))).mean())

    codes = torch.zeros((1, 1, 8))
    assert not encoder_failed(model, codes, loss)  # fine codes
    assert encoder_failed(model, codes + math.inf, loss)  # non-finite codes
    assert encoder_failed(model, codes + 1e3, loss)  # finite codes that overflow the rate: too large a step
    with torch.no_grad():
        model.baseline.fill_(1e3)
    assert not encoder_failed(model, codes, loss)  # the baseline overflows even at zero codes
    with torch.no_grad():
        model.templates.fill_(math.nan)
    assert not encoder_failed(model, codes + math.inf, loss)  # non-finite parameters: their update did it
    message = str(
        diverged(
            "the loss",
            math.inf,
            "iteration 1",
            encoder_diverged=False,
            step_size=0.1,
            learning_rate=None,
            finished=0,
            checkpoint_path=None,
        )
    )
    assert message.startswith("the loss became inf at iteration 1. Likely cause: the template step took the templates")
    assert message.endswith("No epoch finished; the model holds its initial parameters.")


# ---------------------------------------------------------------------------------- atomic writes
class SimulatedCrash(OSError):
    pass


def half_then_crash(write, path_of):
    """``write`` that writes its file completely, cuts it to half its length, then raises: a crash mid-write."""

    def crashing(*args, **kwargs):
        write(*args, **kwargs)
        target = Path(path_of(args, kwargs))
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        raise SimulatedCrash(28, "No space left on device (simulated)")

    return crashing


def torch_save_half_then_crash(payload, handle, *args, **kwargs):
    buffer = io.BytesIO()
    TORCH_SAVE(payload, buffer, *args, **kwargs)
    handle.write(buffer.getvalue()[: buffer.tell() // 2])
    raise SimulatedCrash(28, "No space left on device (simulated)")


TORCH_SAVE = torch.save


@pytest.fixture(scope="module")
def fitted(binomial_counts) -> SpikeDictionary:
    return small_model(solver__n_epochs=1, solver__n_code_iterations=10, encoder__n_iterations=10).fit(binomial_counts)


def _checkpoint_case(version: int):
    return {"format": training.CHECKPOINT_FORMAT, "version": 1, "epoch": version, "value": torch.arange(version)}


def _negated(model: SpikeDictionary) -> SpikeDictionary:
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model_.templates.neg_()
    other._set_fitted_arrays()
    return other


def _recording(version: int):
    import neo
    import quantities as pq

    block = neo.Block(name=f"version {version}")
    block.segments.append(neo.Segment())
    block.segments[0].spiketrains.append(neo.SpikeTrain(np.arange(1, version + 2) * 0.1 * pq.s, t_stop=1 * pq.s))
    return block


def _denoiser(version: int):
    from spikedict.images import DnCNN

    return DnCNN(peak=float(version), depth=2, width=4)


# name -> (file, write(path, version, model), read(path) -> comparable, (module, attribute) of the writer, crashing)
WRITERS = {
    "checkpoint": (
        "checkpoint.pt",
        lambda path, version, _: training.save_checkpoint(path, _checkpoint_case(version)),
        lambda path: load_checkpoint(path)["epoch"],
        (torch, "save"),
        lambda original: torch_save_half_then_crash,
    ),
    "model": (
        "model.safetensors",
        lambda path, version, model: (model if version == 1 else _negated(model)).save(path),
        lambda path: SpikeDictionary.load(path).templates_.sum(),
        ("safetensors.torch", "save_file"),
        lambda original: half_then_crash(original, lambda args, kwargs: args[1]),
    ),
    "recording": (
        "recording.mat",
        lambda path, version, _: write_recording(_recording(version), path),
        lambda path: read_recording(path).name,
        ("scipy.io", "savemat"),
        lambda original: half_then_crash(original, lambda args, kwargs: args[0]),
    ),
    "denoiser": (
        "denoiser.safetensors",
        lambda path, version, _: save_denoiser(_denoiser(version), path),
        lambda path: load_denoiser(path).settings["peak"],
        ("safetensors.torch", "save_file"),
        lambda original: half_then_crash(original, lambda args, kwargs: args[1]),
    ),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_crash_mid_write_leaves_the_previous_file(kind, fitted, tmp_path, monkeypatch):
    name, write, read, (module, attribute), crashing = WRITERS[kind]
    path = tmp_path / name
    write(path, 1, fitted)
    before = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    target = importlib.import_module(module) if isinstance(module, str) else module
    monkeypatch.setattr(target, attribute, crashing(getattr(target, attribute)))
    with pytest.raises(SimulatedCrash):
        write(path, 2, fitted)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no truncated file under any name
    first = read(path)
    write(path, 2, fitted)  # and the next write goes through
    assert read(path) != first


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_files_get_the_permissions_of_a_plain_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".a-")
            assert temporary.name.endswith(".tmp.json") and temporary.read_bytes() == b""
            temporary.write_text("{}")
        (tmp_path / "b.json").write_text("{}")
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE((tmp_path / "b.json").stat().st_mode)


@pytest.mark.parametrize("kind", ["checkpoint", "model"])
@pytest.mark.parametrize("length", ["empty", "one byte", "half", "all but one byte", "garbage"])
def test_a_truncated_or_corrupt_file_raises_a_clear_value_error(kind, length, fitted, tmp_path):
    if kind == "checkpoint":
        path = tmp_path / "checkpoint.pt"
        training.save_checkpoint(path, _checkpoint_case(3))
        load = load_checkpoint
        expected = [r"could not read checkpoint", "corrupt, truncated or not a spikedict checkpoint", "Delete it"]
    else:
        path = fitted.save(tmp_path / "model.safetensors")
        load = SpikeDictionary.load
        expected = ["as a spikedict model", "corrupt, truncated or not a safetensors file", "Save the model again"]
    raw = path.read_bytes()
    cut = {"empty": 0, "one byte": 1, "half": len(raw) // 2, "all but one byte": len(raw) - 1}
    data = np.random.default_rng(0).bytes(len(raw)) if length == "garbage" else raw[: cut[length]]
    path.write_bytes(data)
    with pytest.raises(ValueError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and all(part in message for part in expected), message
    assert re.search(r"\(\w+(Error|Exception)\b", message), message  # what came: the reader's error


@pytest.fixture(scope="module")
def fitted_folder(tmp_path_factory) -> tuple[Path, Path]:
    """A small simulated recording and the output folder of ``spikedict fit`` on it."""
    import matplotlib
    import quantities as pq

    from spikedict.simulate import simulate_spikes

    matplotlib.use("Agg")
    folder = tmp_path_factory.mktemp("cli")
    simulation = simulate_spikes(n_examples=3, n_bins=200, n_trials=5, template_size=20, bin_size=1 * pq.ms, seed=3)
    write_recording(simulation.block, folder / "study.mat")
    fit_recording_quickly(folder / "study.mat", folder / "out")
    return folder / "study.mat", folder / "out"


def fit_recording_quickly(recording: Path, out: Path, resume: bool = False):
    from spikedict.workflow import fit_recording

    out.mkdir(exist_ok=True)
    settings = {"solver": "alternating", "solver__n_code_iterations": 5, "encoder__n_iterations": 5}
    return fit_recording(
        str(recording), out, n_epochs=2, device="cpu", progress=False, resume=resume, estimator_params=settings
    )


def _read(name: str, path: Path):
    if name.endswith(".json"):
        return json.loads(path.read_text())
    if name.endswith(".npz"):
        with np.load(path) as arrays:
            return arrays["templates"]
    if name.endswith(".csv"):
        return pd.read_csv(path)
    return SpikeDictionary.load(path).templates_


# file -> the writer that a crash interrupts, and which argument is the file it writes
CLI_WRITERS = {
    "settings.json": (Path, "write_text", 0),
    "model.safetensors": ("safetensors.torch", "save_file", 1),
    "templates.npz": (np, "savez", 0),
    "summary.csv": (pd.DataFrame, "to_csv", 1),  # the first table the report writes
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI_WRITERS))
def test_fit_outputs_survive_a_crash_mid_write(name, fitted_folder, tmp_path, monkeypatch):
    recording, original = fitted_folder
    out = tmp_path / "out"
    shutil.copytree(original, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    module, attribute, argument = CLI_WRITERS[name]
    target = importlib.import_module(module) if isinstance(module, str) else module
    writer = getattr(target, attribute)
    monkeypatch.setattr(target, attribute, half_then_crash(writer, lambda args, kwargs: args[argument]))
    with pytest.raises(SimulatedCrash):
        fit_recording_quickly(recording, out)
    monkeypatch.undo()

    assert (out / name).read_bytes() == before[name]
    _read(name, out / name)
    left = {path.name for path in out.iterdir()}
    checkpoint = set() if name == "settings.json" else {"checkpoint.pt"}  # the fit ran: its checkpoint stays
    assert left == set(before) | checkpoint, left ^ set(before)
    if checkpoint:  # the command with --resume finishes the job from the checkpoint of the last epoch
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
        result = fit_recording_quickly(recording, out, resume=True)
        assert len(result.model.history_) == 2 and not (out / "checkpoint.pt").exists()
        np.testing.assert_array_equal(_read("templates.npz", out / "templates.npz"), result.model.templates_)
