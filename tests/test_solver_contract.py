"""The solver contract and the one epoch runner: resume, stops, interruption, divergence, checkpoint checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import small_model

from spikedict import SpikeDictionary
from spikedict.analysis import compare_families
from spikedict.families import Binomial, Gaussian, Poisson
from spikedict.settings import Encoder
from spikedict.solvers import Alternating, Backprop, EpochRun, FitResult, get_solver, run_epochs
from spikedict.solvers._runner import CHECKPOINT_FORMAT, save_checkpoint


class CountingRun(EpochRun):
    """A run whose state is one number that each epoch adds ``step`` to; it converges at ``target``."""

    def __init__(self, step: float = 1.0, target: float = math.inf, fail_at: int | None = None, stop_at: int = -1):
        self.value, self.step, self.target, self.fail_at, self.stop_at = 0.0, step, target, fail_at, stop_at
        self.signature = {"solver": "counting", "step": step}
        self.finished_with: str | None = None

    def run_epoch(self, epoch: int) -> dict[str, float]:
        self.value += self.step  # the state changes before the failure is noticed
        if epoch == self.fail_at:
            raise FloatingPointError("diverged")
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        return {"epoch": epoch + 1, "train_loss": -self.value, "code_density": 0.5}

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]

    def stop_reason(self, history):
        return "converged" if self.value >= self.target else None

    def finish(self, stop_reason, history) -> FitResult:
        import pandas as pd

        self.finished_with = stop_reason
        return FitResult(history=pd.DataFrame(history), stop_reason=stop_reason, best_epoch=len(history))


def test_the_runner_runs_epochs_and_stops_on_the_runs_reason(tmp_path):
    result = run_epochs(CountingRun(), 4)
    assert result.stop_reason == "n_epochs" and result.history["epoch"].tolist() == [1, 2, 3, 4]
    assert "seconds" in result.history and result.final_loss == -4.0
    converged = run_epochs(CountingRun(target=3), 10)
    assert converged.stop_reason == "converged" and len(converged.history) == 3


def test_resuming_continues_from_the_checkpoint_to_the_uninterrupted_result(tmp_path):
    path = tmp_path / "fit.ckpt"
    interrupted = CountingRun(stop_at=2)
    result = run_epochs(interrupted, 5, checkpoint_path=path)
    assert result.stop_reason == "interrupted" and interrupted.value == 2.0  # the last finished epoch's state
    resumed = CountingRun()
    again = run_epochs(resumed, 5, checkpoint_path=path, resume=True)
    assert again.history["epoch"].tolist() == [1, 2, 3, 4, 5] and resumed.value == 5.0
    # a checkpoint of a fit that had converged stops at once, with the same result
    run_epochs(CountingRun(target=2), 5, checkpoint_path=path)
    stopped = CountingRun(target=2)
    assert run_epochs(stopped, 5, checkpoint_path=path, resume=True).stop_reason == "converged"
    assert stopped.value == 2.0 and stopped.finished_with == "converged"


def test_a_diverged_epoch_restores_the_last_finished_state():
    run = CountingRun(fail_at=2)
    with pytest.raises(FloatingPointError):
        run_epochs(run, 5)
    assert run.value == 2.0


def test_checkpoints_of_another_fit_or_an_older_layout_are_refused(tmp_path):
    path = tmp_path / "fit.ckpt"
    run_epochs(CountingRun(step=1.0), 2, checkpoint_path=path)
    with pytest.raises(ValueError, match=r"another configuration \(step: checkpoint has 1.0, this fit has 2.0\)"):
        run_epochs(CountingRun(step=2.0), 3, checkpoint_path=path, resume=True)
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "version": 1, "epoch": 2, "model_state": {}})
    with pytest.raises(ValueError, match=r"written by an earlier spikedict.*fit again without resume"):
        run_epochs(CountingRun(), 3, checkpoint_path=path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_path"):
        run_epochs(CountingRun(), 3, resume=True)


def test_solver_names_resolve_to_objects_and_unknown_ones_are_refused():
    assert get_solver("auto") == Alternating() and get_solver("auto", tied=False) == Backprop()
    given = Alternating(n_epochs=3)
    assert get_solver(given) is given
    with pytest.raises(ValueError, match="solver must be 'auto', 'alternating', 'backprop', 'em' or a Solver object"):
        get_solver("adam")


def test_nested_settings_apply_the_encoders_before_resolving_the_solver():
    # "auto" is backprop for an untied encoder: the order of the keys does not matter
    model = SpikeDictionary().set_params(solver__backprop="truncated", encoder__tied=False)
    assert model.solver == Backprop(backprop="truncated") and model.encoder == Encoder(tied=False)


def test_settings_are_checked_by_fit_with_the_fix():
    with pytest.raises(ValueError, match="learns by back-propagation: use solver='backprop'"):
        small_model(solver="alternating", encoder=Encoder(tied=False)).fit(np.zeros((2, 1, 100)))
    with pytest.raises(ValueError, match="epoch_subset must be a fraction"):
        small_model(solver=Alternating(epoch_subset=2)).fit(np.zeros((2, 1, 100)))


def test_compare_families_leaves_the_callers_settings_alone(binomial_counts):
    encoder, solver = Encoder(n_iterations=20), Alternating(n_epochs=1)
    table = compare_families(
        binomial_counts[:4],
        families=["binomial"],
        variants=["tied", "untied"],
        n_trials=30,
        template_size=20,
        n_templates=2,
        encoder=encoder,
        solver=solver,
    )
    assert table["variant"].tolist() == ["tied", "untied"]
    assert encoder == Encoder(n_iterations=20) and solver == Alternating(n_epochs=1)


@pytest.mark.parametrize("family", [Binomial(n_trials=10), Poisson(), Gaussian(std=2.0)])
def test_the_clipped_link_inverts_the_mean_inside_the_support(family):
    eta = torch.linspace(-3, 2, 11, dtype=torch.float64).reshape(1, 1, -1)
    mean = family.mean(eta)
    torch.testing.assert_close(family.clipped_link(mean, 1e-9), eta)
    if not isinstance(family, Gaussian):  # rates at the edges of the support stay finite
        edges = torch.zeros_like(mean) if isinstance(family, Poisson) else torch.full_like(mean, 10.0)
        assert torch.isfinite(family.clipped_link(edges, 1e-3)).all()
