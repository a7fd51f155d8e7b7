"""The training loop: configuration, checkpoints and resume, interruption, early stopping, backprop modes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import N_TRIALS, TEMPLATE_SIZE, small_model

import spikedict.estimator as estimator_module
import spikedict.training as training
from spikedict import Binomial, TrainingConfig
from spikedict.model import DCEA
from spikedict.training import load_checkpoint, save_checkpoint, scheduled_learning_rate, train


def make_network(n_templates: int = 3, seed: int = 0) -> DCEA:
    network = DCEA(
        n_templates,
        1,
        TEMPLATE_SIZE,
        Binomial(N_TRIALS),
        sparsity=0.1,
        n_iterations=20,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        network.baseline.fill_(-2.0)
    return network


@pytest.fixture
def y(binomial_counts) -> torch.Tensor:
    return torch.as_tensor(binomial_counts, dtype=torch.float32)


def config(**overrides) -> TrainingConfig:
    settings = dict(n_epochs=3, batch_size=4, device="cpu", progress=False, seed=0)
    settings.update(overrides)
    return TrainingConfig(**settings)


# ------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_epochs": 0}, "n_epochs must be an integer >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"learning_rate": -1}, "learning_rate must be positive, got -1"),
        ({"learning_rate": float("nan")}, "learning_rate must be positive"),
        ({"backprop": "x"}, "backprop must be 'none', 'truncated' or 'full', got 'x'"),
        ({"validation_fraction": 1.0}, r"validation_fraction must lie in \[0, 1\), got 1.0"),
        ({"loss": "l1"}, "loss must be 'nll' or 'mse'"),
        ({"patience": 0}, "patience must be None or >= 1"),
    ],
)
def test_config_validate_rejects(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainingConfig(**overrides).validate()


def test_config_defaults_are_valid_and_from_dict_ignores_unknown():
    TrainingConfig().validate()
    restored = TrainingConfig.from_dict({"n_epochs": 7, "from_the_future": 1})
    assert restored.n_epochs == 7 and restored == TrainingConfig(n_epochs=7)


def test_estimator_validates_training_settings(binomial_counts):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        small_model(solver="backprop", solver__batch_size=0).fit(binomial_counts)
    # the alternating solver has no batch_size (its batches follow the device): naming one is refused
    with pytest.raises(ValueError, match="'batch_size' is not a parameter of Alternating; its parameters are"):
        small_model(solver="alternating", solver__batch_size=10)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_written_every_epoch(y, tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    seen = []

    def check(epoch, row):
        payload = load_checkpoint(path)
        seen.append((payload["epoch"], len(payload["history"])))
        torch.testing.assert_close(payload["state"]["model_state"]["templates"], network.templates.detach())

    network = make_network()
    result = train(network, y, config(checkpoint_path=str(path)), on_epoch_end=check)
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert result.stop_reason == "n_epochs" and len(result.history) == 3
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pt"]


def test_resume_equals_uninterrupted_fit(binomial_counts, tmp_path):
    straight = small_model(solver="backprop", solver__n_epochs=4, checkpoint_path=str(tmp_path / "a.pt")).fit(
        binomial_counts
    )
    first = small_model(solver="backprop", solver__n_epochs=2, checkpoint_path=str(tmp_path / "b.pt")).fit(
        binomial_counts
    )
    assert len(first.history_) == 2
    assert not np.allclose(first.templates_, straight.templates_, atol=1e-6)
    resumed = small_model(solver="backprop", solver__n_epochs=4, checkpoint_path=str(tmp_path / "b.pt")).fit(
        binomial_counts, resume=True
    )
    # Extending a finished fit keeps its epochs and continues from its parameters; the learning rate of the
    # new epochs follows the cosine schedule of the new n_epochs, so it is not the 4-epoch fit exactly.
    assert resumed.history_["epoch"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history_["train_loss"][:2], first.history_["train_loss"], rtol=1e-12)
    assert not np.allclose(resumed.templates_, first.templates_, atol=1e-6)
    expected_rates = [scheduled_learning_rate(TrainingConfig(n_epochs=4, learning_rate=0.01), e) for e in (2, 3)]
    np.testing.assert_allclose(resumed.history_["learning_rate"][2:], expected_rates)


def test_cosine_schedule_endpoints():
    config = TrainingConfig(n_epochs=5, learning_rate=0.02)
    rates = [scheduled_learning_rate(config, epoch) for epoch in range(5)]
    assert rates[0] == pytest.approx(0.02) and rates[-1] == pytest.approx(0.0002)
    assert all(np.diff(rates) < 0)
    assert scheduled_learning_rate(TrainingConfig(n_epochs=5, learning_rate_schedule="constant"), 3) == 0.01


def test_resume_from_another_configuration(binomial_counts, tmp_path):
    path = str(tmp_path / "c.pt")
    small_model(solver__n_epochs=1, checkpoint_path=path).fit(binomial_counts)
    with pytest.raises(ValueError, match=r"another configuration \(n_templates: checkpoint has 3, this fit has 4"):
        small_model(n_templates=4, solver__n_epochs=2, checkpoint_path=path).fit(binomial_counts, resume=True)
    with pytest.raises(ValueError, match=r"another configuration.*n_examples"):
        small_model(solver__n_epochs=2, checkpoint_path=path).fit(binomial_counts[:6], resume=True)


def test_resume_from_corrupt_checkpoint(binomial_counts, tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match=r"could not read checkpoint .* corrupt, truncated"):
        small_model(checkpoint_path=str(path)).fit(binomial_counts, resume=True)


def test_resume_from_foreign_torch_file(binomial_counts, tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a spikedict checkpoint"):
        small_model(checkpoint_path=str(path)).fit(binomial_counts, resume=True)


def test_resume_from_truncated_checkpoint(y, tmp_path):
    path = tmp_path / "c.pt"
    train(make_network(), y, config(n_epochs=1, checkpoint_path=str(path)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="could not read checkpoint"):
        train(make_network(), y, config(checkpoint_path=str(path)), resume=True)


def test_resume_needs_checkpoint_path(binomial_counts, y):
    with pytest.raises(ValueError, match="resume=True needs checkpoint_path"):
        small_model().fit(binomial_counts, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_path"):
        train(make_network(), y, config(), resume=True)


def test_resume_missing_checkpoint(binomial_counts, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        small_model(checkpoint_path=str(tmp_path / "absent.pt")).fit(binomial_counts, resume=True)


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_save_checkpoint_is_atomic(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": training.CHECKPOINT_FORMAT, "value": torch.arange(3)})
    before = path.read_bytes()

    def failing_save(payload, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(type(error)):
        save_checkpoint(path, {"format": training.CHECKPOINT_FORMAT, "value": torch.arange(5)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    torch.testing.assert_close(load_checkpoint(path)["value"], torch.arange(3))


# -------------------------------------------------------------------------- interruption
def test_keyboard_interrupt_keeps_last_finished_epoch(y):
    network = make_network()
    captured = {}

    def interrupt(epoch, row):
        if epoch == 2:
            captured["state"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
            raise KeyboardInterrupt

    result = train(network, y, config(n_epochs=5), on_epoch_end=interrupt)
    assert result.stop_reason == "interrupted"
    assert result.history["epoch"].tolist() == [1, 2]
    assert result.best_epoch == 2
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, captured["state"][key], rtol=0, atol=0)


def test_keyboard_interrupt_mid_epoch_restores_previous_epoch(y, monkeypatch):
    network = make_network()
    captured = {}
    calls = {"n": 0}
    original = DCEA.project_templates_

    def on_epoch_end(epoch, row):
        captured[epoch] = network.templates.detach().clone()

    def project(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2 (two batches per epoch), after its first optimiser step
            raise KeyboardInterrupt

    monkeypatch.setattr(DCEA, "project_templates_", project)
    result = train(network, y, config(n_epochs=4), on_epoch_end=on_epoch_end)
    assert result.stop_reason == "interrupted" and len(result.history) == 1
    torch.testing.assert_close(network.templates.detach(), captured[1], rtol=0, atol=0)


def _interrupting_train(at_epoch: int):
    """The estimator's epoch runner, with Ctrl-C pressed at the end of epoch ``at_epoch`` (counted from 1)."""
    real_run_epochs = estimator_module.run_epochs

    def wrapper(run, n_epochs, **kwargs):
        def interrupt(epoch, row):
            if epoch == at_epoch:
                raise KeyboardInterrupt

        return real_run_epochs(run, n_epochs, on_epoch_end=interrupt, **kwargs)

    return wrapper


def test_estimator_interrupt_warns_and_resumes(binomial_counts, tmp_path, monkeypatch):
    path = str(tmp_path / "fit.pt")
    monkeypatch.setattr(estimator_module, "run_epochs", _interrupting_train(1))
    model = small_model(solver="backprop", solver__n_epochs=3, checkpoint_path=path)
    with pytest.warns(RuntimeWarning, match=r"interrupted.*after epoch 1 of 3.*resume=True"):
        model.fit(binomial_counts)
    assert model.stop_reason_ == "interrupted" and len(model.history_) == 1
    assert model.transform(binomial_counts).shape == (8, 3, 300 - TEMPLATE_SIZE + 1)  # usable after the interrupt
    monkeypatch.undo()
    model.fit(binomial_counts, resume=True)
    straight = small_model(solver="backprop", solver__n_epochs=3).fit(binomial_counts)
    assert model.history_["epoch"].tolist() == [1, 2, 3] and model.stop_reason_ == "n_epochs"
    np.testing.assert_allclose(model.templates_, straight.templates_, atol=1e-6)


# ------------------------------------------------------------------------ early stopping
def test_early_stopping(binomial_counts):
    model = small_model(
        solver="backprop",
        solver__n_epochs=6,
        solver__validation_fraction=0.25,
        solver__patience=1,
        solver__learning_rate=1e-12,
    )
    model.fit(binomial_counts)
    assert model.stop_reason_ == "early_stopping"
    assert model.history_["epoch"].tolist() == [1, 2]
    assert np.all(np.isfinite(model.history_["validation_loss"]))


def test_validation_split_needs_examples_on_both_sides(binomial_counts):
    with pytest.raises(ValueError, match="both need at least one example"):
        small_model(solver="backprop", solver__validation_fraction=0.01).fit(binomial_counts)
    # validation_fraction and patience belong to the back-propagation solver: the alternating one has neither
    with pytest.raises(ValueError, match="'validation_fraction' is not a parameter of Alternating"):
        small_model(solver__validation_fraction=0.25).fit(binomial_counts)
    with pytest.raises(ValueError, match="'patience' is not a parameter of Alternating"):
        small_model(solver="alternating", solver__patience=1).fit(binomial_counts)


def test_patience_without_validation_runs_all_epochs_when_improving(y):
    result = train(make_network(), y, config(n_epochs=3, patience=2))
    assert result.stop_reason == "n_epochs" and len(result.history) == 3


# ------------------------------------------------------------------------ backprop modes
@pytest.mark.parametrize("backprop", ["none", "truncated", "full"])
def test_backprop_modes_decrease_loss(binomial_counts, backprop):
    model = small_model(
        solver="backprop", solver__backprop=backprop, solver__n_epochs=3, solver__n_code_iterations=20
    ).fit(binomial_counts)
    losses = model.history_["train_loss"].to_numpy()
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backprop", ["truncated", "full"])
def test_backprop_through_encoder_changes_gradients(binomial_counts, backprop):
    none = small_model(
        solver="backprop", solver__backprop="none", solver__n_epochs=1, solver__n_code_iterations=20
    ).fit(binomial_counts)
    other = small_model(
        solver="backprop", solver__backprop=backprop, solver__n_epochs=1, solver__n_code_iterations=20
    ).fit(binomial_counts)
    np.testing.assert_array_equal(none.initial_templates_, other.initial_templates_)
    assert not np.allclose(none.templates_, other.templates_, atol=1e-6), (
        f"backprop={backprop!r} trained exactly like backprop='none'"
    )


# ---------------------------------------------------------------------------------- loss
def test_mse_needs_target(y):
    with pytest.raises(ValueError, match="loss='mse' needs a target"):
        train(make_network(), y, config(loss="mse"))
    with pytest.raises(ValueError, match="target must have the shape of the data"):
        train(make_network(), y, config(loss="mse"), target=y[:, :, :10])


def test_mse_with_target(binomial_simulation, y):
    target = torch.as_tensor(binomial_simulation.rates, dtype=torch.float32)
    network = make_network()
    result = train(network, y, config(loss="mse", n_epochs=3), target=target)
    losses = result.history["train_loss"].to_numpy()
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The loss is the squared error of the predicted mean: at zero codes it is that of the baseline rate.
    with torch.no_grad():
        codes = torch.zeros((8, 3, 300 - TEMPLATE_SIZE + 1))
        baseline_error = float(((network.family.mean(network.decode(codes, (300,))) - target) ** 2).mean())
    assert losses[-1] < baseline_error


def test_non_finite_loss_keeps_last_finished_epoch(y, monkeypatch):
    network = make_network()
    state = {"epoch": 0}
    snapshots = {}
    original = Binomial.negative_log_likelihood

    def poisoned(self, counts, eta):
        value = original(self, counts, eta)
        return value * float("nan") if state["epoch"] >= 1 else value

    def on_epoch_end(epoch, row):
        state["epoch"] = epoch
        snapshots[epoch] = {k: v.detach().clone() for k, v in network.state_dict().items()}

    monkeypatch.setattr(Binomial, "negative_log_likelihood", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 2.*Lower learning_rate.*step size"):
        train(network, y, config(n_epochs=3), on_epoch_end=on_epoch_end)
    assert list(snapshots) == [1]
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key], rtol=0, atol=0)


# -------------------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(binomial_counts, y):
    with pytest.raises(ValueError, match="CUDA is not available"):
        small_model(device="cuda").fit(binomial_counts)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(make_network(), y, config(device="cuda"))


def test_bad_device(y):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda'"):
        train(make_network(), y, config(device="abacus"))


def test_auto_device_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert training.resolve_device("auto").type == expected
