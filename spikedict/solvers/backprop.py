"""The back-propagation solver as a settings object: what the estimator holds for ``solver="backprop"``."""

from __future__ import annotations

from typing import Literal

from spikedict.settings import check_integer
from spikedict.solvers.base import EpochRun, FitProblem, Solver
from spikedict.training import BackpropRun, TrainingConfig

__all__ = ["Backprop"]


class Backprop(Solver):
    """Stochastic training through the unrolled encoder with Adam, as in the DCEA paper.

    Needed for the untied model (``Encoder(tied=False)``, DCEA-UC) and for back-propagation through the encoder;
    the alternating solver is faster and more accurate for tied templates. See :func:`spikedict.training.train`.

    Parameters
    ----------
    n_epochs : int
        Passes over the training examples at most.
    n_code_iterations : int
        Encoder iterations per batch (the depth of the unrolled network).
    batch_size : int
        Examples per optimiser step.
    learning_rate : float
        Adam's initial learning rate (annealed to 1% of it by a cosine schedule). Lower it when the loss
        diverges.
    backprop : {"none", "truncated", "full"}
        How gradients flow through the encoder: codes as constants (alternating minimisation by gradient
        steps), through the last few iterations, or through all of them.
    n_dictionary_steps : int
        Optimiser steps on each batch with its codes held fixed (``backprop="none"``).
    warm_start : bool
        Start each example's encoder from its codes of the previous epoch.
    validation_fraction : float
        Fraction of the examples held out to monitor the loss (0: none); the fit ends with the parameters of the
        best epoch.
    patience : int or None
        Stop after this many epochs without improvement of the monitored loss (None: run all epochs).
    n_restarts : int
        Initialisations (seeds ``seed``, ``seed + 1``, ...); the fit with the lowest training loss is kept.
    """

    name = "backprop"
    #: "auto" sparsity: this many noise levels of the correlated residual (plain l1 needs a lower threshold).
    auto_sparsity_multiple = 2.0

    def __init__(
        self,
        n_epochs: int = 30,
        n_code_iterations: int = 50,
        batch_size: int = 10,
        learning_rate: float = 0.01,
        backprop: Literal["none", "truncated", "full"] = "none",
        n_dictionary_steps: int = 1,
        warm_start: bool = True,
        validation_fraction: float = 0.0,
        patience: int | None = None,
        n_restarts: int = 1,
    ) -> None:
        self.n_epochs = n_epochs
        self.n_code_iterations = n_code_iterations
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.backprop = backprop
        self.n_dictionary_steps = n_dictionary_steps
        self.warm_start = warm_start
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.n_restarts = n_restarts

    def validate(self, *, tied: bool) -> None:
        if not tied and self.backprop == "none":
            raise ValueError(
                "an untied encoder (Encoder(tied=False), DCEA-UC) learns its weights and thresholds by "
                "back-propagation through the encoder; use Backprop(backprop='truncated') or backprop='full'."
            )
        for name in ("n_code_iterations", "n_restarts"):
            check_integer("", name, getattr(self, name), 1)
        self.config().validate()

    def config(self, **more: object) -> TrainingConfig:
        """The :class:`~spikedict.training.TrainingConfig` of these settings (``more``: device, seed, ...)."""
        return TrainingConfig(
            n_epochs=self.n_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            backprop=self.backprop,
            n_dictionary_steps=self.n_dictionary_steps,
            warm_start=self.warm_start,
            validation_fraction=self.validation_fraction,
            patience=self.patience,
            **more,
        )

    def start(self, problem: FitProblem) -> EpochRun:
        problem.model.n_iterations = int(self.n_code_iterations)
        config = self.config(device=problem.device, seed=problem.seed, checkpoint_path=problem.checkpoint_path)
        return BackpropRun(problem.model, problem.data, config)
