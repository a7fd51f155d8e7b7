"""The solver contract: what the estimator and the epoch runner ask of a solver.

A :class:`Solver` is a settings object (its constructor stores them; scikit-learn's parameter protocol
works on it) that knows how to learn templates. For one fit it makes an :class:`EpochRun` from a
:class:`FitProblem`: the run holds the state of that fit and answers the epoch runner
(:func:`spikedict.solvers.run_epochs`), which owns everything the solvers share: resume from a checkpoint and
the check that the checkpoint belongs to this fit, the last good state kept for Ctrl-C and for a diverged
epoch, the progress bar, the history, and the order of collective calls in a distributed fit.

A run is asked, in this order:

1. ``signature`` (a dict that a checkpoint must match to be resumed);
2. ``load_state_dict(state)`` when resuming, else nothing (the run starts from the problem's model);
3. ``stop_reason(history)`` with the resumed history (a fit that had stopped stays stopped);
4. for each epoch: ``run_epoch(epoch) -> row`` (one history row; ``FloatingPointError`` when it diverged),
   ``state_dict()`` (every process calls it: a distributed run may gather its codes there), then
   ``stop_reason(history)``;
5. ``finish(stop_reason, history) -> FitResult`` once, also after an interruption (the runner has restored the
   last good state first).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import Tensor

from spikedict.families import Family
from spikedict.model import DCEA
from spikedict.settings import Settings

__all__ = ["EpochRun", "FitProblem", "FitResult", "Solver"]


@dataclass
class FitProblem:
    """One fit as the estimator hands it to a solver.

    Attributes
    ----------
    model : DCEA
        Built with ``n_templates + n_spare`` templates of ``template_shape + 2 * padding`` bins (see
        :meth:`Solver.learning_room`), its initial templates, baseline and family set; the solver trains it in
        place.
    data : Tensor of shape (n_examples, n_channels, *signal_shape), or RecordingWindows
        Validated data. In a distributed fit every process passes all of it; the solver takes its share.
    family : Family
        Covers every example of ``data``.
    sparsity : float
        Final l1 weight of the codes.
    n_templates : int
        Templates the fit ends with (spares dropped).
    padding : int
        Bins of room at each end of the model's templates, cut off at the end of the fit.
    seed : int
        Seed of the solver's random draws.
    device : str
    batch_size : int
        Examples encoded at once (it bounds memory).
    checkpoint_path : str or None
        Where the runner keeps the fit's checkpoint (named in the diagnosis of a diverged epoch).
    """

    model: DCEA
    data: Any
    family: Family
    sparsity: float
    n_templates: int
    padding: int = 0
    seed: int = 0
    device: str = "auto"
    batch_size: int = 100
    checkpoint_path: str | None = None


@dataclass
class Posterior:
    """The codes' posterior and the templates' spread, averaged over a sampling solver's last iterations.

    Attributes
    ----------
    codes : Tensor, shape (n_examples, n_templates, n_code_bins)
        Posterior mean of every code (for unit-norm templates).
    event_probability : Tensor, shape (n_examples, n_templates, n_code_bins)
        Share of the draws with an event at each position.
    lower, upper : Tensor, shape (n_templates, n_channels, *template_shape)
        Mean of the unit-norm templates over the iterations, minus and plus twice their standard deviation.
    n_draws : int
        Draws (iterations) averaged.
    """

    codes: Tensor
    event_probability: Tensor
    lower: Tensor
    upper: Tensor
    n_draws: int


@dataclass
class FitResult:
    """What a run ends with.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per finished epoch (columns depend on the solver; ``epoch``, ``train_loss``, ``code_density`` and
        ``seconds`` always).
    stop_reason : str
        ``"n_epochs"``, ``"converged"``, ``"early_stopping"`` or ``"interrupted"``.
    codes : Tensor or None
        Codes of every training example at the end, if the solver keeps them.
    reweighting_delta : float or None
        ``delta`` of the reweighted l1 penalty the codes were inferred with (None: plain l1).
    best_epoch : int
        Epoch whose parameters the model holds.
    validation_index : Tensor or None
        Examples the solver held out to monitor its loss (None: none).
    residual_rms : float or None
        Root mean square of the data minus the decoded codes at the end, for a family whose scale is fitted from
        its residuals (Gaussian), where the solver has codes of every example (None: the estimator infers them).
    posterior : Posterior or None
        What a sampling solver (EM) learned of the codes' posterior over its last iterations (None: the others).
    comparison_loss : float or None
        The loss by which restarts are compared, where the solver's last epoch alone is a noisy one (EM: the mean
        over its last iterations, each from one draw of the codes); None: the last epoch's training loss.
    """

    history: pd.DataFrame
    stop_reason: str
    codes: Tensor | None = None
    reweighting_delta: float | None = None
    best_epoch: int = 0
    validation_index: Tensor | None = None
    residual_rms: float | None = None
    posterior: Posterior | None = None
    comparison_loss: float | None = None

    @property
    def final_loss(self) -> float:
        """The loss restarts are compared by: ``comparison_loss`` if the solver gave one, else the training loss of
        the last finished epoch (inf if none finished)."""
        if self.comparison_loss is not None:
            return float(self.comparison_loss)
        return float(self.history["train_loss"].iloc[-1]) if len(self.history) else math.inf


class EpochRun(ABC):
    """The state of one fit and its epochs (see the module docstring for the order of calls)."""

    #: What a checkpoint must match to be resumed into this run.
    signature: dict[str, Any]

    @abstractmethod
    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Run epoch ``epoch`` (0-based) and return its history row (``seconds`` is filled in by the runner)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last finished epoch (tensors on the CPU, copies)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state of :meth:`state_dict`."""

    def stop_reason(self, history: Sequence[dict[str, Any]]) -> str | None:
        """Why the fit ends after the last row of ``history`` (None: go on). Default: never early."""
        return None

    @abstractmethod
    def finish(self, stop_reason: str, history: list[dict[str, Any]]) -> FitResult:
        """The result, with the model in its final form."""

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        """Values shown next to the progress bar after an epoch."""
        return {"loss": f"{row['train_loss']:.4g}", "density": f"{row.get('code_density', math.nan):.3g}"}


class Solver(Settings, ABC):
    """A way to learn the templates: its settings, and the run it makes for one fit.

    Subclasses take their settings as constructor keywords (stored unchanged, checked by :meth:`validate`).
    """

    #: The shorthand that names the solver (``SpikeDictionary(solver="alternating")``).
    name: str = ""
    #: Epochs at most.
    n_epochs: int
    #: Encoder iterations per epoch (or per batch) while learning.
    n_code_iterations: int
    #: Initialisations the estimator fits, keeping the one with the lowest training loss.
    n_restarts: int

    def validate(self, *, tied: bool) -> None:
        """Raise ``ValueError`` naming the first setting out of range (``tied``: the estimator's encoder)."""

    def learning_room(
        self,
        n_templates: int,
        template_shape: Sequence[int],
        signal_shape: Sequence[int],
        *,
        given_init: bool,
        zero_edges: int,
    ) -> tuple[int, int]:
        """``(n_spare, padding)``: extra templates and bins at each end the model is built with (default none).

        ``given_init``: the initial templates were given; ``zero_edges``: bins at each end held at zero.
        """
        return 0, 0

    def screening(self) -> tuple[Solver, int] | None:
        """``(solver, n_starts)``: a cheap solver whose fits from ``n_starts`` initialisations are compared by their
        training loss before each fit, which then starts from the best of them (default: None, no screening)."""
        return None

    @property
    def total_epochs(self) -> int:
        """Epochs the runner runs at most (a solver that starts with another's epochs counts them too)."""
        return int(self.n_epochs)

    #: Multiple of the noise level of the correlated residual that the "auto" sparsity is set to.
    auto_sparsity_multiple: float = 2.0

    @abstractmethod
    def start(self, problem: FitProblem) -> EpochRun:
        """The run of one fit."""
