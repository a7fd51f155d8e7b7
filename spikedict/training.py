"""Training a :class:`~spikedict.model.DCEA`: a small typed configuration and the loop.

The loop minimises the family's negative log-likelihood of the decoded data (unsupervised dictionary
learning) or the squared error between the predicted mean and a target (supervised denoising). After each
optimiser step the templates are projected back onto their constraint set (unit norm, and optionally
non-negative or zero at the edges).

Three ways to differentiate through the encoder are offered (``TrainingConfig.backprop``):

- ``"full"``: back-propagate through every unrolled iteration (the DCEA paper).
- ``"truncated"``: only through the last ``n_backprop_iterations`` iterations.
- ``"none"``: codes are treated as constants. At a converged encoder this is the exact gradient of
  ``min_codes NLL + sparsity * ||codes||_1`` in the templates (envelope theorem), i.e. alternating
  minimisation; with warm-started codes it is the fastest on a CPU.

With ``warm_start`` the codes of each training example are kept between epochs and the encoder starts
from them, so the encoder keeps converging across epochs instead of restarting from zero.

Every epoch can be checkpointed (atomically: written to a temporary file, then renamed); ``resume``
continues from the last checkpoint with the same random stream, so an interrupted fit loses at most the
epoch in progress. A ``KeyboardInterrupt`` stops the loop and leaves the model as it was after the last
finished epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from spikedict import distributed
from spikedict._divergence import diverged, encoder_failed, parameters_finite
from spikedict.model import DCEA
from spikedict.solvers._runner import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    run_epochs,
    save_checkpoint,
)
from spikedict.solvers.base import EpochRun, FitResult

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "BackpropRun",
    "TrainingConfig",
    "encode_in_batches",
    "load_checkpoint",
    "resolve_device",
    "reweighted_thresholds",
    "save_checkpoint",
    "train",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is checked and returned.

    In a distributed run (see :mod:`spikedict.distributed`) ``"cuda"`` is this process's GPU (``LOCAL_RANK``).

    Raises
    ------
    ValueError
        If CUDA is asked for but not available.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and distributed.is_active():  # one GPU per process
        device = f"cuda:{distributed.local_rank()}"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available on this machine; "
            "use device='cpu' or device='auto'."
        )
    return resolved


@dataclass
class TrainingConfig:
    """Settings of the training loop.

    Attributes
    ----------
    n_epochs : int
        Maximum number of passes over the training examples.
    batch_size : int
        Examples per optimiser step.
    learning_rate : float
        Adam's (initial) learning rate.
    learning_rate_schedule : {"cosine", "constant"}
        ``"cosine"`` anneals the learning rate to 1% of ``learning_rate`` over ``n_epochs`` (per epoch).
        Adam moves every template coordinate by about the learning rate at each step whatever the size
        of its gradient, so a constant rate leaves templates jittering by that much; annealing removes
        the jitter while keeping large early steps.
    backprop : {"none", "truncated", "full"}
        How gradients flow through the encoder (see the module docstring).
    n_backprop_iterations : int
        Iterations back-propagated through with ``backprop="truncated"``.
    n_dictionary_steps : int
        Optimiser steps on each batch with its codes held fixed (``backprop="none"`` only): the
        dictionary update of alternating minimisation, which is cheap next to the encoder.
    warm_start : bool
        Start each training example's encoder from its codes of the previous epoch.
    n_warmup_iterations : int
        With ``warm_start``, encoder iterations run once on all training examples before the first
        epoch, so that the first template updates see converged codes rather than near-zero ones.
    loss : {"nll", "mse"}
        Family negative log-likelihood of the data (unsupervised) or squared error of the predicted
        mean against a target (supervised).
    validation_fraction : float
        Fraction of the examples held out (chosen with ``seed``) to monitor the loss and stop early.
    patience : int or None
        Stop after this many epochs without an improvement of the monitored loss (validation loss if
        there is a validation split, else training loss) by at least ``min_improvement`` (relative).
        None: run all epochs.
    min_improvement : float
        Relative improvement that counts for ``patience``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : int
        Seeds the shuffling and the validation split.
    progress : bool or None
        Show a tqdm progress bar; None shows it only when standard error is a terminal.
    checkpoint_path : str or None
        Where to write a checkpoint after every epoch (None: no checkpoint).
    """

    n_epochs: int = 50
    batch_size: int = 10
    learning_rate: float = 0.01
    learning_rate_schedule: Literal["cosine", "constant"] = "cosine"
    backprop: Literal["none", "truncated", "full"] = "none"
    n_backprop_iterations: int = 5
    n_dictionary_steps: int = 1
    warm_start: bool = True
    n_warmup_iterations: int = 200
    loss: Literal["nll", "mse"] = "nll"
    validation_fraction: float = 0.0
    patience: int | None = None
    min_improvement: float = 1e-4
    device: str = "auto"
    seed: int = 0
    progress: bool | None = None
    checkpoint_path: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        checks: list[tuple[bool, str]] = [
            (
                isinstance(self.n_epochs, int) and self.n_epochs >= 1,
                f"n_epochs must be an integer >= 1, got {self.n_epochs!r}",
            ),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"batch_size must be an integer >= 1, got {self.batch_size!r}",
            ),
            (
                self.learning_rate > 0 and math.isfinite(self.learning_rate),
                f"learning_rate must be positive, got {self.learning_rate!r}",
            ),
            (
                self.backprop in ("none", "truncated", "full"),
                f"backprop must be 'none', 'truncated' or 'full', got {self.backprop!r}",
            ),
            (
                self.n_backprop_iterations >= 1,
                f"n_backprop_iterations must be >= 1, got {self.n_backprop_iterations!r}",
            ),
            (self.loss in ("nll", "mse"), f"loss must be 'nll' or 'mse', got {self.loss!r}"),
            (
                0 <= self.validation_fraction < 1,
                f"validation_fraction must lie in [0, 1), got {self.validation_fraction!r}",
            ),
            (self.patience is None or self.patience >= 1, f"patience must be None or >= 1, got {self.patience!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message + ".")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# -------------------------------------------------------------------------------- the loop
def _batch_loss(
    model: DCEA,
    y: Tensor,
    codes: Tensor,
    family: Any,
    config: TrainingConfig,
    target: Tensor | None,
) -> Tensor:
    eta = model.decode(codes, y.shape[2:])
    if config.loss == "mse":
        return ((family.mean(eta) - target) ** 2).mean()
    return family.negative_log_likelihood(y, eta).mean() / family.residual_scale


def _encode(model: DCEA, y: Tensor, initial: Tensor | None, family: Any, config: TrainingConfig, grad: bool) -> Tensor:
    if not grad or config.backprop == "none":
        with torch.no_grad():
            return model.encode(y, codes=initial, family=family)
    truncated = config.n_backprop_iterations if config.backprop == "truncated" else None
    return model.encode(y, codes=initial, family=family, n_backprop_iterations=truncated)


def scheduled_learning_rate(config: TrainingConfig, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based): constant, or cosine from the rate to 1% of it.

    A closed form of the epoch and ``n_epochs``, so a resumed fit follows the schedule of its settings.
    """
    if config.learning_rate_schedule == "constant" or config.n_epochs <= 1:
        return config.learning_rate
    floor = 0.01 * config.learning_rate
    progress = epoch / (config.n_epochs - 1)
    return floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def encode_in_batches(
    model: DCEA,
    y: Tensor,
    family: Any,
    n_iterations: int | None = None,
    batch_size: int = 100,
    rows: Tensor | None = None,
    *,
    initial: Tensor | None = None,
    thresholds: Tensor | float | None = None,
) -> Tensor:
    """Codes of the examples ``y[rows]`` (all by default), encoded ``batch_size`` at a time on the model's device.

    Parameters
    ----------
    initial : Tensor, shape (len(rows), n_templates, *code_shape), optional
        Warm start (zeros by default).
    thresholds : Tensor of the same shape, or float, optional
        Per-entry l1 weights (reweighted l1) in place of the model's sparsity.

    Returns
    -------
    Tensor on the CPU, shape (len(rows), n_templates, *code_shape)
    """
    device = model.templates.device
    rows = torch.arange(y.shape[0]) if rows is None else rows
    outputs = []
    for first in range(0, len(rows), batch_size):
        part = slice(first, first + batch_size)
        batch_rows = rows[part]
        outputs.append(
            model.encode(
                y[batch_rows].to(device),
                codes=None if initial is None else initial[part].to(device),
                n_iterations=n_iterations,
                family=family.select(batch_rows).to(device),
                thresholds=thresholds[part].to(device) if isinstance(thresholds, Tensor) else None,
            ).cpu()
        )
    if not outputs:
        return torch.zeros((0, model.n_templates) + model.code_shape(tuple(y.shape[2:])))
    return torch.cat(outputs)


def reweighted_thresholds(codes: Tensor, sparsity: float, delta: float) -> Tensor:
    """Weights of the reweighted l1 penalty: ``sparsity * delta / (|codes| + delta)``, one per code entry."""
    return sparsity * delta / (codes.abs() + delta)


def _warm_up(model: DCEA, y: Tensor, train_index: Tensor, family: Any, config: TrainingConfig) -> Tensor:
    """Initial codes of the training examples: ``n_warmup_iterations`` encoder iterations from zero."""
    if config.n_warmup_iterations == 0:
        return torch.zeros((len(train_index), model.n_templates) + model.code_shape(tuple(y.shape[2:])))
    model.update_step_size(y.shape[2:], y)
    local = distributed.shard(torch.arange(len(train_index)))
    codes = encode_in_batches(
        model, y, family, config.n_warmup_iterations, batch_size=config.batch_size * 10, rows=train_index[local]
    )
    return distributed.gather_shards(codes, len(train_index))


def model_signature(model: DCEA) -> dict[str, Any]:
    """What must agree between a checkpoint and the model it is loaded into."""
    return {
        "n_templates": model.n_templates,
        "n_channels": model.n_channels,
        "template_shape": list(model.template_shape),
        "stride": list(model.stride),
        "tied": model.tied,
        "family": model.family.config(),
    }


class BackpropRun(EpochRun):
    """One fit by stochastic training through the unrolled encoder, epoch by epoch (see :func:`train`)."""

    def __init__(self, model: DCEA, y: Tensor, config: TrainingConfig, target: Tensor | None = None) -> None:
        config.validate()
        if config.loss == "mse" and target is None:
            raise ValueError("loss='mse' needs a target of the same shape as the data (e.g. the clean signal).")
        if target is not None and target.shape != y.shape:
            raise ValueError(f"target must have the shape of the data {tuple(y.shape)}, got {tuple(target.shape)}.")
        self.device = resolve_device(config.device)
        model.to(self.device)
        model.family = model.family.to(self.device)
        self.model, self.y, self.config, self.target, self.family = model, y, config, target, model.family
        n_examples = y.shape[0]
        self.generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(n_examples, generator=self.generator)
        n_validation = int(round(config.validation_fraction * n_examples))
        if config.validation_fraction > 0 and (n_validation == 0 or n_validation == n_examples):
            raise ValueError(
                f"validation_fraction={config.validation_fraction} of {n_examples} examples leaves "
                f"{n_validation} for validation and {n_examples - n_validation} for training; both need at least "
                "one example. Use more examples or validation_fraction=0."
            )
        self.validation_index = order[:n_validation].sort().values
        self.train_index = order[n_validation:].sort().values
        self.monitored = "validation_loss" if n_validation else "train_loss"
        self.step = _TrainingStep(model, config)
        self.runner = _parallel(self.step, model, self.device)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
        self.signature = {
            "solver": "backprop",
            **model_signature(model),
            "n_examples": n_examples,
            "signal_shape": list(y.shape[2:]),
        }
        self.codes_store: Tensor | None = None
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_state = copy.deepcopy(model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "generator_state": self.generator.get_state(),
                "codes": self.codes_store,
                "best_loss": self.best_loss,
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.generator.set_state(state["generator_state"])
        self.codes_store = state["codes"]
        self.best_loss, self.best_epoch, self.best_state = state["best_loss"], state["best_epoch"], state["best_state"]

    def stop_reason(self, history: Any) -> str | None:
        patience = self.config.patience
        stale_epochs = sum(1 for row in history if row["epoch"] > self.best_epoch)
        return "early_stopping" if patience is not None and stale_epochs >= patience else None

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        return {self.monitored: f"{row[self.monitored]:.5g}"}

    def _batch(self, positions: Tensor, epoch: int, learning_rate: float) -> tuple[float, int, int, int]:
        """Optimiser steps on one global batch (this process's share); returns its loss and code sums."""
        model, config, step = self.model, self.config, self.step
        local = distributed.shard(positions)
        rows = self.train_index[local]
        batch = self.y[rows].to(self.device)
        batch_family = self.family.select(rows.to(self.device))
        initial = self.codes_store[local].to(self.device) if config.warm_start else None
        batch_target = self.target[rows].to(self.device) if self.target is not None else None
        weight = len(local) * distributed.world_size() / len(positions)
        codes = None
        for _ in range(config.n_dictionary_steps):
            loss, codes = self.runner(batch, batch_family, batch_target, initial, codes, weight)
            if not distributed.all_finite(loss):
                raise diverged(
                    "the training loss",
                    loss.item(),
                    f"epoch {epoch + 1}",
                    encoder_diverged=encoder_failed(
                        model,
                        step.last_codes,
                        partial(_batch_loss, model, batch, family=batch_family, config=config, target=batch_target),
                    ),
                    step_size=float(model.step_size),
                    learning_rate=config.learning_rate,
                    finished=epoch,
                    checkpoint_path=config.checkpoint_path,
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            model.project_templates_()
            if config.backprop != "none":
                codes = None  # re-encoded through the updated encoder at the next step
        if config.warm_start:
            gathered = distributed.gather_shards(step.last_codes.detach(), len(positions))
            self.codes_store[positions] = gathered.to(self.codes_store.device)
        return step.last_loss * len(local), len(local), int((step.last_codes != 0).sum()), step.last_codes.numel()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        model, config = self.model, self.config
        if config.warm_start and self.codes_store is None:  # the first epoch starts from the warm-up codes
            self.codes_store = _warm_up(model, self.y, self.train_index, self.family, config)
        model.train()
        model.update_step_size(tuple(self.y.shape[2:]), self.y)
        learning_rate = scheduled_learning_rate(config, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        permutation = torch.randperm(len(self.train_index), generator=self.generator)
        sums = [0.0, 0, 0, 0]
        for first in range(0, len(permutation), config.batch_size):
            # The global batch; with several processes each takes its share and DDP averages the gradients.
            batch_sums = self._batch(permutation[first : first + config.batch_size], epoch, learning_rate)
            sums = [a + b for a, b in zip(sums, batch_sums)]
        total, count, nonzero, entries = distributed.all_reduce_sum(sums)
        if not parameters_finite(model):  # the last step of the epoch diverged: keep it out of the checkpoint
            raise diverged(
                "the model's parameters",
                None,
                f"epoch {epoch + 1}",
                encoder_diverged=False,  # the codes gave a finite loss: an optimiser step did it
                step_size=float(model.step_size),
                learning_rate=config.learning_rate,
                finished=epoch,
                checkpoint_path=config.checkpoint_path,
            )
        row = {
            "epoch": epoch + 1,
            "learning_rate": learning_rate,
            "train_loss": total / max(count, 1),
            "validation_loss": math.nan,
            "step_size": float(model.step_size),
            "code_density": nonzero / max(entries, 1),
        }
        if len(self.validation_index):
            row["validation_loss"] = evaluate_loss(
                model, self.y, config, self.family, self.target, rows=self.validation_index
            )
        current = row[self.monitored]
        reference = abs(self.best_loss if math.isfinite(self.best_loss) else current)
        if current < self.best_loss - config.min_improvement * reference:
            self.best_loss, self.best_epoch = current, epoch + 1
            self.best_state = copy.deepcopy(model.state_dict())
        return row

    def finish(self, stop_reason: str, history: list[dict[str, Any]]) -> FitResult:
        best_epoch = self.best_epoch
        if stop_reason != "interrupted" and (len(self.validation_index) or self.config.patience is not None):
            self.model.load_state_dict(self.best_state)
        else:
            best_epoch = len(history)
        self.model.eval()
        columns = ["epoch", "learning_rate", "train_loss", "validation_loss", "step_size", "code_density", "seconds"]
        return FitResult(
            history=pd.DataFrame(history, columns=columns),
            stop_reason=stop_reason,
            codes=self.codes_store,
            best_epoch=best_epoch,
            validation_index=self.validation_index,
        )


def train(
    model: DCEA,
    y: Tensor,
    config: TrainingConfig | None = None,
    *,
    target: Tensor | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on data ``y``.

    Parameters
    ----------
    model : DCEA
        Its ``family`` must cover all of ``y`` (e.g. per-example binomial ``n_trials``).
    y : Tensor, shape (n_examples, n_channels, *signal_shape)
        Validated data; kept where it is and moved to the device one batch at a time.
    config : TrainingConfig, optional
    target : Tensor, optional
        Same shape as ``y``; required for ``loss="mse"``.
    resume : bool
        Continue from ``config.checkpoint_path`` (which must exist and match the model and data).
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, row)`` after each epoch (counted from 1) with that epoch's history row.

    Returns
    -------
    FitResult
        ``history`` has one row per epoch: ``epoch``, ``learning_rate``, ``train_loss``, ``validation_loss`` (NaN
        without a split), ``step_size``, ``code_density`` (fraction of non-zero codes), ``seconds``. With a
        validation split or ``patience`` the model ends with the parameters of ``best_epoch``; ``codes`` are the
        warm-start codes of the training examples.
    """
    config = config or TrainingConfig()
    run = BackpropRun(model, y, config, target)
    return run_epochs(
        run,
        config.n_epochs,
        checkpoint_path=config.checkpoint_path,
        resume=resume,
        progress=config.progress,
        on_epoch_end=on_epoch_end,
    )


class _TrainingStep(torch.nn.Module):
    """One optimiser step's forward pass: encode the batch (unless its codes are given) and return the loss.

    Wrapping the model in this module lets DistributedDataParallel see the whole step (the encoder too, when
    gradients flow through it), so its gradient hooks fire once per backward.
    """

    def __init__(self, model: DCEA, config: TrainingConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.last_codes: Tensor = torch.zeros(0)
        self.last_loss = 0.0

    def forward(
        self,
        batch: Tensor,
        family: Any,
        target: Tensor | None,
        initial: Tensor | None,
        codes: Tensor | None,
        weight: float,
    ) -> tuple[Tensor, Tensor]:
        if batch.shape[0] == 0:  # a process without examples in a short last batch still joins the reduction
            self.last_codes = batch.new_zeros((0, self.model.n_templates) + self.model.code_shape(batch.shape[2:]))
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return zero + self.model.penalty(), self.last_codes
        if codes is None:
            codes = _encode(self.model, batch, initial, family, self.config, grad=True)
        self.last_codes = codes
        data_loss = _batch_loss(self.model, batch, codes, family, self.config, target)
        penalty = self.model.penalty()
        self.last_loss = float(data_loss.detach() + penalty.detach())
        return data_loss * weight + penalty, codes


def _parallel(step: _TrainingStep, model: DCEA, device: torch.device) -> torch.nn.Module:
    """The step itself, or wrapped in DistributedDataParallel when several processes train together."""
    if not distributed.is_active():
        return step
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The step size (the only buffer) is recomputed identically in every process: no need to sync it per step.
    # torch >= 2.12 spells that forward_sync_buffers and deprecates broadcast_buffers.
    parameters = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=not model.tied,  # DCEA-UC keeps its unused tied templates
        **{no_sync: False},
    )


@torch.no_grad()
def evaluate_loss(
    model: DCEA,
    y: Tensor,
    config: TrainingConfig,
    family: Any | None = None,
    target: Tensor | None = None,
    rows: Tensor | None = None,
) -> float:
    """Mean loss of ``model`` on the examples ``y[rows]`` (all by default; encoder from zero codes).

    Batch by batch without gradients; in a distributed run the rows are shared between the processes.
    """
    family = model.family if family is None else family
    device = model.templates.device
    rows = torch.arange(y.shape[0]) if rows is None else rows
    rows = distributed.shard(rows)
    total, count = 0.0, 0
    for first in range(0, len(rows), config.batch_size):
        batch_rows = rows[first : first + config.batch_size]
        batch = y[batch_rows].to(device)
        batch_family = family.select(batch_rows.to(device))
        codes = model.encode(batch, family=batch_family)
        batch_target = target[batch_rows].to(device) if target is not None else None
        total += float(_batch_loss(model, batch, codes, batch_family, config, batch_target)) * len(batch_rows)
        count += len(batch_rows)
    total, count = distributed.all_reduce_sum([total, count])
    return total / max(count, 1)
