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
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from spikedict import distributed
from spikedict._atomic import atomic_path
from spikedict._divergence import diverged, encoder_failed, parameters_finite
from spikedict.model import DCEA

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "encode_in_batches",
    "load_checkpoint",
    "resolve_device",
    "reweighted_thresholds",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "spikedict-checkpoint"
CHECKPOINT_VERSION = 1


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


@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``learning_rate``, ``train_loss``, ``validation_loss`` (NaN without a split),
        ``step_size``, ``code_density`` (fraction of non-zero codes), ``seconds``.
    best_epoch : int
        Epoch whose parameters the model holds at the end.
    stop_reason : str
        ``"n_epochs"``, ``"early_stopping"``, ``"converged"`` (the alternating solver's tolerance) or ``"interrupted"``.
    codes : Tensor or None
        Warm-start codes of the training examples after the last epoch (shape of ``encode``'s output).
    reweighting_delta : float or None
        ``delta`` of the reweighted l1 penalty the alternating solver ended with (None without reweighting).
    """

    history: pd.DataFrame
    best_epoch: int
    stop_reason: str
    codes: Tensor | None = None
    validation_index: Tensor | None = field(default=None, repr=False)
    reweighting_delta: float | None = None


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically: a temporary file in the same folder, then rename.

    A crash while writing leaves the previous checkpoint intact and never a truncated file under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing code (``weights_only``).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is corrupt, truncated, or not a spikedict checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; fit without resume to start one.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"could not read checkpoint {str(path)!r}: the file is corrupt, truncated or not a spikedict "
            f"checkpoint ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Delete it and fit again without resume."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a spikedict checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "pass the checkpoint_path that a previous fit wrote."
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')}, newer than this spikedict "
            f"understands ({CHECKPOINT_VERSION}); upgrade spikedict."
        )
    return payload


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


def _check_signature(saved: dict[str, Any], expected: dict[str, Any], path: str | os.PathLike) -> None:
    differences = [
        f"{k}: checkpoint has {saved.get(k)!r}, this fit has {v!r}" for k, v in expected.items() if saved.get(k) != v
    ]
    if differences:
        raise ValueError(
            f"checkpoint {str(path)!r} comes from another configuration ({'; '.join(differences)}). "
            "Fit with the same settings and data to resume, or choose a new checkpoint_path."
        )


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


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def train(
    model: DCEA,
    y: Tensor,
    config: TrainingConfig | None = None,
    *,
    target: Tensor | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainingResult:
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
        Called as ``on_epoch_end(epoch, row)`` after each epoch with that epoch's history row.

    Returns
    -------
    TrainingResult
    """
    config = config or TrainingConfig()
    config.validate()
    if config.loss == "mse" and target is None:
        raise ValueError("loss='mse' needs a target of the same shape as the data (e.g. the clean signal).")
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target must have the shape of the data {tuple(y.shape)}, got {tuple(target.shape)}.")
    if resume and not config.checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path: the file that the interrupted fit wrote.")

    device = resolve_device(config.device)
    model.to(device)
    family = model.family.to(device)
    model.family = family
    n_examples = y.shape[0]
    signal_shape = tuple(y.shape[2:])
    is_main = distributed.rank() == 0

    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n_examples, generator=generator)
    n_validation = int(round(config.validation_fraction * n_examples))
    if config.validation_fraction > 0 and (n_validation == 0 or n_validation == n_examples):
        raise ValueError(
            f"validation_fraction={config.validation_fraction} of {n_examples} examples leaves "
            f"{n_validation} for validation and {n_examples - n_validation} for training; both need at least "
            "one example. Use more examples or validation_fraction=0."
        )
    validation_index = order[:n_validation].sort().values
    train_index = order[n_validation:].sort().values

    step = _TrainingStep(model, config)
    runner = _parallel(step, model, device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    codes_store: Tensor | None = None
    history: list[dict[str, float]] = []
    best_loss = math.inf
    best_epoch = 0
    best_state = copy.deepcopy(model.state_dict())
    start_epoch = 0

    signature = {**model_signature(model), "n_examples": n_examples, "signal_shape": list(signal_shape)}
    if resume:
        payload = load_checkpoint(config.checkpoint_path)
        _check_signature(payload["signature"], signature, config.checkpoint_path)
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        generator.set_state(payload["generator_state"])
        codes_store = payload.get("codes")
        history = [dict(row) for row in payload["history"]]
        best_loss, best_epoch = payload["best_loss"], payload["best_epoch"]
        best_state = payload["best_state"]
        start_epoch = payload["epoch"]
    if config.warm_start and codes_store is None:
        codes_store = _warm_up(model, y, train_index, family, config)

    monitored = "validation_loss" if n_validation else "train_loss"
    stale_epochs = 0  # epochs since the best one, recomputed from the history on resume
    for row in history:
        if row["epoch"] == best_epoch:
            stale_epochs = 0
        elif row["epoch"] > best_epoch:
            stale_epochs += 1

    stop_reason = "n_epochs"
    if config.patience is not None and stale_epochs >= config.patience:  # the checkpointed fit had stopped early
        stop_reason, start_epoch = "early_stopping", config.n_epochs
    last_good_state = copy.deepcopy(model.state_dict())
    bar = tqdm(
        range(start_epoch, config.n_epochs),
        initial=start_epoch,
        total=config.n_epochs,
        disable=not (is_main and _show_progress(config.progress)),
        desc="fit",
        unit="epoch",
    )
    try:
        for epoch in bar:
            started = time.perf_counter()
            model.train()
            model.update_step_size(signal_shape, y)
            learning_rate = scheduled_learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            permutation = torch.randperm(len(train_index), generator=generator)
            total, count, nonzero, entries = 0.0, 0, 0, 0
            for first in range(0, len(permutation), config.batch_size):
                # The global batch; with several processes each takes its share and DDP averages the gradients.
                positions = permutation[first : first + config.batch_size]
                local = distributed.shard(positions)
                rows = train_index[local]
                batch = y[rows].to(device)
                batch_family = family.select(rows.to(device))
                initial = codes_store[local].to(device) if config.warm_start else None
                batch_target = target[rows].to(device) if target is not None else None
                weight = len(local) * distributed.world_size() / len(positions)
                codes = None
                for _ in range(config.n_dictionary_steps):
                    loss, codes = runner(batch, batch_family, batch_target, initial, codes, weight)
                    if not distributed.all_finite(loss):
                        raise diverged(
                            "the training loss",
                            loss.item(),
                            f"epoch {epoch + 1}",
                            encoder_diverged=encoder_failed(
                                model,
                                step.last_codes,
                                partial(
                                    _batch_loss, model, batch, family=batch_family, config=config, target=batch_target
                                ),
                            ),
                            step_size=float(model.step_size),
                            learning_rate=config.learning_rate,
                            finished=len(history),
                            checkpoint_path=config.checkpoint_path,
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    model.project_templates_()
                    if config.backprop != "none":
                        codes = None  # re-encoded through the updated encoder at the next step
                if config.warm_start:
                    gathered = distributed.gather_shards(step.last_codes.detach(), len(positions))
                    codes_store[positions] = gathered.to(codes_store.device)
                total += step.last_loss * len(local)
                count += len(local)
                nonzero += int((step.last_codes != 0).sum())
                entries += step.last_codes.numel()
            total, count, nonzero, entries = distributed.all_reduce_sum([total, count, nonzero, entries])
            if not parameters_finite(model):  # the last step of the epoch diverged: keep it out of the checkpoint
                raise diverged(
                    "the model's parameters",
                    None,
                    f"epoch {epoch + 1}",
                    encoder_diverged=False,  # the codes gave a finite loss: an optimiser step did it
                    step_size=float(model.step_size),
                    learning_rate=config.learning_rate,
                    finished=len(history),
                    checkpoint_path=config.checkpoint_path,
                )
            row = {
                "epoch": epoch + 1,
                "learning_rate": learning_rate,
                "train_loss": total / max(count, 1),
                "validation_loss": math.nan,
                "step_size": float(model.step_size),
                "code_density": nonzero / max(entries, 1),
                "seconds": 0.0,
            }
            if n_validation:
                row["validation_loss"] = evaluate_loss(model, y, config, family, target, rows=validation_index)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            current = row[monitored]
            if current < best_loss - config.min_improvement * abs(best_loss if math.isfinite(best_loss) else current):
                best_loss, best_epoch, stale_epochs = current, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale_epochs += 1
            last_good_state = copy.deepcopy(model.state_dict())
            bar.set_postfix({monitored: f"{current:.5g}"})
            if config.checkpoint_path and is_main:
                save_checkpoint(
                    config.checkpoint_path,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "version": CHECKPOINT_VERSION,
                        "epoch": epoch + 1,
                        "signature": signature,
                        "config": asdict(config),
                        "model_state": model.state_dict(),
                        "optimizer_state": optimizer.state_dict(),
                        "generator_state": generator.get_state(),
                        "codes": codes_store,
                        "history": history,
                        "best_loss": best_loss,
                        "best_epoch": best_epoch,
                        "best_state": best_state,
                    },
                )
            distributed.barrier()  # no process runs ahead of the checkpoint it may have to resume from
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
            if config.patience is not None and stale_epochs >= config.patience:
                stop_reason = "early_stopping"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        model.load_state_dict(last_good_state)
    except FloatingPointError:
        model.load_state_dict(last_good_state)
        raise
    finally:
        bar.close()

    if stop_reason != "interrupted" and (n_validation or config.patience is not None):
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    frame = pd.DataFrame(
        history,
        columns=["epoch", "learning_rate", "train_loss", "validation_loss", "step_size", "code_density", "seconds"],
    )
    return TrainingResult(
        history=frame,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        codes=codes_store,
        validation_index=validation_index,
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
