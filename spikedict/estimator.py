"""``SpikeDictionary``: learn convolutional rate templates from spike counts, scikit-learn style.

Examples
--------
>>> from spikedict import SpikeDictionary
>>> from spikedict.simulate import paper_templates, simulate_counts
>>> simulation = simulate_counts(paper_templates(), n_examples=20, n_bins=400, n_trials=30, seed=0)
>>> model = SpikeDictionary(n_templates=3, template_size=50, n_trials=30, n_epochs=2, seed=0)
>>> model.fit(simulation.counts).templates_.shape
(3, 1, 50)
>>> model.predict_rate(simulation.counts).shape
(20, 1, 400)
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from spikedict import distributed
from spikedict._atomic import atomic_path
from spikedict.alternating import AlternatingConfig, _is_real, fit_alternating
from spikedict.families import Binomial, Family, Gaussian, get_family
from spikedict.io._windows import RecordingWindows, stitch_cuts
from spikedict.model import DCEA
from spikedict.training import (
    TrainingConfig,
    TrainingResult,
    encode_in_batches,
    resolve_device,
    reweighted_thresholds,
    train,
)

__all__ = ["NotFittedError", "SpikeDictionary"]

FORMAT = "spikedict-model"
FORMAT_VERSION = 1

# "auto" sparsity: this many robust standard deviations of the correlated residual at the start of the
# fit (the noise level of H^T (y - mean) when no template is active), per solver. Chosen on the reference
# problems (benchmarks/core.py): the alternating solver's reweighted l1 keeps events unbiased, so its
# threshold can sit at a detection level; the back-propagation solver's plain l1 needs a lower one.
AUTO_SPARSITY_NOISE_MULTIPLE = {"alternating": 4.0, "backprop": 2.0}

# "auto" initial_subset: the alternating solver's first epoch codes this fraction of the examples, and at least
# this many values (examples x channels x bins). On the standard problem of benchmarks/core.py (100 x 2000 bins)
# starting on a fifth or a tenth took 0.5x to 0.75x the time of coding every example in every epoch, with errors
# within their seed-to-seed spread (the Gaussian's lower). On the recovery problems of tests/test_alternating.py
# (40 x 1000 bins, events that stand out) starting on a quarter (10 000 values) recovered fewer templates than
# coding all examples (within 0.1: binomial 2 of 10 seeds against 5, Poisson 4 of 8 against 6): the first subset
# must hold enough events, hence the floor in values. See benchmarks/README.md.
AUTO_SUBSET_FRACTION = 0.1
AUTO_SUBSET_VALUES = 40_000


@dataclass
class _Start:
    """One initialisation's fit: the model, the solver's result, the initial templates and the sparsity."""

    model: DCEA
    result: TrainingResult
    initial_templates: np.ndarray
    sparsity: float
    #: RMS of ``y - decode(codes)`` at the solver's final codes (alternating solver, Gaussian family), else None
    residual_rms: float | None = None

    @property
    def final_loss(self) -> float:
        """Training loss (mean NLL per bin) of the last finished epoch; inf if none finished."""
        history = self.result.history
        return float(history["train_loss"].iloc[-1]) if len(history) else math.inf


class NotFittedError(RuntimeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


def _to_tensor(values: Any, name: str) -> Tensor:
    if isinstance(values, Tensor):
        tensor = values.detach().cpu()
    else:
        try:
            array = np.asarray(values)
        except Exception as error:  # pragma: no cover - numpy raises many types
            raise TypeError(
                f"{name} must be an array of shape (n_examples, n_channels, n_bins), got {type(values).__name__}."
            ) from error
        numeric = np.issubdtype(array.dtype, np.number) and array.dtype.kind != "m"  # timedelta64 is a number
        if array.dtype == object or not (numeric or array.dtype == bool):
            raise TypeError(
                f"{name} must be a numeric array of shape (n_examples, n_channels, n_bins), got dtype {array.dtype}."
            )
        array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if tensor.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {tensor.dtype}.")
    converted = tensor.to(torch.get_default_dtype())
    overflow = torch.isinf(converted) & ~torch.isinf(tensor)
    if bool(overflow.any()):
        raise ValueError(
            f"{name} holds values too large for {converted.dtype} (e.g. {tensor[overflow][0].item():g}), the dtype "
            "spikedict computes in (torch.get_default_dtype()); spike counts are never this large: check the data."
        )
    return converted


def _check_scale(y: Tensor, name: str) -> None:
    """Raise ``ValueError`` if the sum of squares of ``y`` could overflow ``y.dtype`` (the loss would be inf)."""
    if y.numel() == 0:
        return
    largest = float(y.abs().max())
    limit = math.sqrt(torch.finfo(y.dtype).max / y.numel())
    if largest > limit:
        raise ValueError(
            f"{name} holds values up to {largest:g} in absolute value; with {y.numel()} values the losses overflow "
            f"{y.dtype} above {limit:.3g}. Spike counts are never this large: check the data (for real-valued "
            "data, rescale it)."
        )


def _unpack(X: Any) -> tuple[Any, Any]:
    """Split the data layer's counts object into (counts, n_trials); arrays pass through."""
    if hasattr(X, "counts") and not isinstance(X, (np.ndarray, Tensor)):
        return X.counts, getattr(X, "n_trials", None)
    return X, None


class SpikeDictionary:
    """Convolutional dictionary learning for spike counts with the DCEA network.

    The data are modelled as ``y ~ family(mean = f^-1(sum_c templates_c * codes_c + baseline))`` with
    sparse codes. ``fit`` learns unit-norm ``templates_`` (and a per-channel ``baseline_``); ``transform``
    returns the codes of new data; ``predict_rate`` the expected counts per bin.

    Parameters
    ----------
    n_templates : int
        Number of templates.
    template_size : int or (int, int)
        Template length in bins (or height and width for images).
    family : {"binomial", "poisson", "gaussian"} or Family
        Observation family. Binomial counts pool ``n_trials`` repeated trials per example.
    n_trials : int or array of shape (n_examples,), optional
        Trials per example for the binomial family; taken from the data object when it carries them.
    sparsity : float or "auto"
        l1 weight of the codes (for the NLL per trial for the binomial family). ``"auto"`` sets it to
        twice the noise level of the correlated residual at the start of the fit (see ``sparsity_``).
    n_iterations : int
        Encoder iterations per batch during training (the depth of the unrolled network).
    n_inference_iterations : int
        Encoder iterations from zero codes in ``transform``, ``predict_rate`` and ``score``.
    algorithm : {"fista", "ista"}
    nonnegative_codes : bool
        Codes >= 0 (one-sided shrinkage); False allows negative codes.
    tied : bool
        True: DCEA-C, one dictionary (interpretable templates). False: DCEA-UC, untied encoder and
        decoder with learned thresholds.
    stride : int
        Stride of the convolution.
    baseline : "learn", "estimate", float or array of shape (n_channels,)
        Per-channel baseline of the linear predictor: estimated from the data then learned, estimated
        and held fixed, or given (fixed).
    init : "data", "random" or array of shape (n_templates, n_channels, template_size)
        Initial templates: windows of the data's residual at random positions, random Gaussian, or given.
    nonnegative_templates : bool
        Constrain templates to be >= 0.
    zero_edges : int
        Samples at each end of a template held at zero.
    smoothness : float
        Weight of the squared-difference smoothness penalty on the templates.
    solver : {"auto", "alternating", "backprop"}
        How the templates are learned. ``"alternating"``: alternating minimisation over the data set
        (encoder, then a template step: exact least squares for Gaussian data with 1-D templates, L-BFGS
        otherwise), with sparsity continuation, spare templates, room for the templates to re-centre, a growing
        subset of the examples during continuation and reweighted l1 (see :mod:`spikedict.alternating`); the
        fast and accurate choice for the interpretable tied model. ``"backprop"``: stochastic training through
        the unrolled encoder (:func:`spikedict.training.train`), as in the DCEA paper; required for
        ``tied=False``.
        ``"auto"``: alternating when ``tied`` and ``backprop="none"``, else backprop.
    reweighting : float
        Alternating solver: ``delta`` of the reweighted l1 penalty relative to the typical code (0: plain l1).
    n_restarts : int
        Alternating solver: fit from this many initialisations (seeds ``seed``, ``seed + 1``, ...) and keep the
        fit with the lowest training loss (mean negative log-likelihood per bin at the final sparsity), as
        scikit-learn's ``n_init``. Dictionary learning has local optima; where events are weak the start decides
        much of the error. Costs ``n_restarts`` fits.
    continuation : float
        Alternating solver: the sparsity starts this many times higher and decays over the first half of the
        epochs (1: off).
    n_spare_templates : int or "auto"
        Alternating solver: extra templates learned during continuation, then dropped (``"auto"``: as many as
        ``n_templates``).
    padding : int or "auto"
        Alternating solver, 1-D: bins of room at each end of the templates while learning (``"auto"``: a fifth
        of ``template_size``, at most what the examples leave room for; 0 with ``zero_edges``).
    initial_subset : float or "auto"
        Alternating solver: fraction of the examples coded in the first epoch; it grows geometrically to all of
        them by the end of continuation, so the coarse early epochs cost a fraction of a pass. ``"auto"``: a
        tenth of the examples, but at least 40 000 values (examples x channels x bins or pixels), since a first
        subset with few events recovered fewer templates; 1: every example in every epoch. The examples join in a
        random order drawn with ``seed``.
    epoch_subset : float
        Alternating solver: fraction of the examples coded in each epoch after continuation, a fresh random draw
        each epoch (stochastic alternating minimisation: each epoch costs that fraction of a pass, and the
        templates are fitted to the examples it codes); the last epoch, and the one after an epoch within the
        ``tolerance``, code every example. 1 (the default) codes every example in every epoch after
        continuation. On the Gaussian standard problem of ``benchmarks/core.py``, with ``n_epochs=20,
        n_iterations=30, initial_subset=0.05, reweighting=1``, 0.5 took about 0.7 of the time of 1, for template
        errors of 0.029 to 0.038 instead of 0.023 to 0.028 (seeds 0 to 2; benchmarks/README.md). With draws the
        templates keep turning from epoch to epoch, so the ``tolerance`` rarely stops the fit early: at the
        defaults (30 epochs) 0.5 ran every epoch and was no faster than 1, which stopped after 23 or 24.
    tolerance : float
        Alternating solver: stop before ``n_epochs`` once continuation is over and an epoch turned no template by
        more than this, measured as ``1 - |cos|`` between the template before and after the epoch (the
        ``template_change`` column of ``history_``; ``stop_reason_`` is then ``"converged"``). The default 1e-6
        is a turn of about 0.0014 (in template error). 0 runs every epoch.
    n_epochs, batch_size, learning_rate, backprop, n_dictionary_steps, warm_start, validation_fraction, patience :
        Training settings, see :class:`spikedict.training.TrainingConfig`. With the alternating solver
        ``n_epochs`` counts its outer iterations (passes over the growing subset, then over all the data),
        ``n_dictionary_steps`` the iterations of each template step (``"auto"``: 10 L-BFGS iterations; unused
        by the exact Gaussian step; 1 Adam step per batch for backprop), ``batch_size`` only bounds memory, and
        ``learning_rate``, ``warm_start``, ``validation_fraction`` and ``patience`` do not apply.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds initialisation, shuffling, the validation split, the order of the growing subset and the draws of
        ``epoch_subset`` (restart ``r`` uses ``seed + r``).
    progress : bool or None
        Show a progress bar (None: only on a terminal).
    checkpoint_path : str, optional
        Checkpoint after every epoch; ``fit(X, resume=True)`` continues from it.

    Attributes
    ----------
    templates_ : ndarray, shape (n_templates, n_channels, template_size)
        Learned templates, unit l2 norm each.
    baseline_ : ndarray, shape (n_channels,)
    sparsity_ : float
        The l1 weight used.
    family_ : Family
        The family used (with ``n_trials`` resolved; for the Gaussian family ``std`` estimated from the
        training residuals so that ``score`` is a proper log-likelihood).
    history_ : pandas.DataFrame
        One row per epoch: for the alternating solver the columns of :func:`spikedict.alternating.fit_alternating`
        (among them ``template_change``, which the tolerance tests), for backprop those of
        :class:`spikedict.training.TrainingResult`.
    stop_reason_ : str
        Why the fit ended: ``"n_epochs"``, ``"converged"`` (the tolerance), ``"early_stopping"`` (backprop's
        patience) or ``"interrupted"``.
    initial_templates_ : ndarray
        Templates at the start of the fit.
    n_channels_ : int
    model_ : DCEA
        The trained network.
    """

    def __init__(
        self,
        n_templates: int = 3,
        template_size: int | Sequence[int] = 50,
        family: str | Family = "binomial",
        *,
        n_trials: int | np.ndarray | None = None,
        sparsity: float | Literal["auto"] = "auto",
        n_iterations: int = 50,
        n_inference_iterations: int = 300,
        algorithm: Literal["fista", "ista"] = "fista",
        nonnegative_codes: bool = True,
        tied: bool = True,
        stride: int = 1,
        baseline: Literal["learn", "estimate"] | float | np.ndarray = "learn",
        init: Literal["data", "random"] | np.ndarray = "data",
        nonnegative_templates: bool = False,
        zero_edges: int = 0,
        smoothness: float = 0.0,
        solver: Literal["auto", "alternating", "backprop"] = "auto",
        reweighting: float = 0.3,
        n_restarts: int = 1,
        continuation: float = 5.0,
        n_spare_templates: int | Literal["auto"] = "auto",
        padding: int | Literal["auto"] = "auto",
        initial_subset: float | Literal["auto"] = "auto",
        epoch_subset: float = 1.0,
        tolerance: float = 1e-6,
        n_epochs: int = 30,
        batch_size: int = 10,
        learning_rate: float = 0.01,
        backprop: Literal["none", "truncated", "full"] = "none",
        n_dictionary_steps: int | Literal["auto"] = "auto",
        warm_start: bool = True,
        validation_fraction: float = 0.0,
        patience: int | None = None,
        device: str = "auto",
        seed: int = 0,
        progress: bool | None = None,
        checkpoint_path: str | None = None,
    ) -> None:
        self.n_templates = n_templates
        self.template_size = template_size
        self.family = family
        self.n_trials = n_trials
        self.sparsity = sparsity
        self.n_iterations = n_iterations
        self.n_inference_iterations = n_inference_iterations
        self.algorithm = algorithm
        self.nonnegative_codes = nonnegative_codes
        self.tied = tied
        self.stride = stride
        self.baseline = baseline
        self.init = init
        self.nonnegative_templates = nonnegative_templates
        self.zero_edges = zero_edges
        self.smoothness = smoothness
        self.solver = solver
        self.reweighting = reweighting
        self.n_restarts = n_restarts
        self.continuation = continuation
        self.n_spare_templates = n_spare_templates
        self.padding = padding
        self.initial_subset = initial_subset
        self.epoch_subset = epoch_subset
        self.tolerance = tolerance
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.backprop = backprop
        self.n_dictionary_steps = n_dictionary_steps
        self.warm_start = warm_start
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.seed = seed
        self.progress = progress
        self.checkpoint_path = checkpoint_path

    # ------------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-friendly where possible)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if not _same(v, defaults[k])}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ---------------------------------------------------------------------------- checks
    def _template_shape(self) -> tuple[int, ...]:
        size = self.template_size
        if isinstance(size, (int, np.integer)):
            shape: tuple[Any, ...] = (size,)
        elif isinstance(size, np.ndarray):
            shape = tuple(size.tolist()) if size.ndim == 1 else ()
        elif isinstance(size, Sequence) and not isinstance(size, str):
            shape = tuple(size)
        else:
            shape = ()
        if not 1 <= len(shape) <= 2 or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in shape):
            raise ValueError(f"template_size must be a positive integer (bins) or (height, width), got {size!r}.")
        return tuple(int(k) for k in shape)

    def _check_settings(self) -> None:
        if not isinstance(self.n_templates, (int, np.integer)) or self.n_templates < 1:
            raise ValueError(f"n_templates must be an integer >= 1, got {self.n_templates!r}.")
        if not self.tied and self.backprop == "none":
            raise ValueError(
                "tied=False (DCEA-UC) learns its encoder weights and thresholds by back-propagation through the "
                "encoder; use backprop='truncated' or backprop='full' with it."
            )
        if not isinstance(self.n_restarts, (int, np.integer)) or self.n_restarts < 1:
            raise ValueError(f"n_restarts must be an integer >= 1, got {self.n_restarts!r}.")
        if self.solver not in ("auto", "alternating", "backprop"):
            raise ValueError(f"solver must be 'auto', 'alternating' or 'backprop', got {self.solver!r}.")
        if self.solver == "alternating" and (not self.tied or self.backprop != "none"):
            raise ValueError(
                "solver='alternating' learns tied templates with codes held fixed in the template step; it takes "
                "tied=True and backprop='none'. Use solver='backprop' for DCEA-UC or back-propagation."
            )
        if self._resolved_solver() == "alternating" and (self.validation_fraction or self.patience is not None):
            raise ValueError(
                "validation_fraction and patience belong to solver='backprop' (stochastic training); the alternating "
                "solver runs at most n_epochs passes and stops early by its tolerance. Set solver='backprop' or drop "
                "them; to choose settings on held-out data use spikedict.analysis.select_model."
            )
        for name in ("n_spare_templates", "padding"):
            value = getattr(self, name)
            if value != "auto" and not (isinstance(value, (int, np.integer)) and value >= 0):
                raise ValueError(f"{name} must be 'auto' or an integer >= 0, got {value!r}.")
        if self.initial_subset != "auto" and not (_is_real(self.initial_subset) and 0 < self.initial_subset <= 1):
            raise ValueError(
                f"initial_subset must be 'auto' or a fraction of the examples in (0, 1], got {self.initial_subset!r}; "
                "use 1 to code every example in every epoch."
            )
        if not (_is_real(self.epoch_subset) and 0 < self.epoch_subset <= 1):
            raise ValueError(
                f"epoch_subset must be a fraction of the examples in (0, 1], got {self.epoch_subset!r}; "
                "use 1 to code every example in every epoch after continuation."
            )
        if not (_is_real(self.tolerance) and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(
                f"tolerance must be a finite number >= 0, got {self.tolerance!r}: the largest change of a template "
                "in one epoch (1 - |cos|) at which the alternating solver stops; 0 runs all n_epochs."
            )
        if self.n_dictionary_steps != "auto" and not (
            isinstance(self.n_dictionary_steps, (int, np.integer)) and self.n_dictionary_steps >= 1
        ):
            raise ValueError(f"n_dictionary_steps must be 'auto' or an integer >= 1, got {self.n_dictionary_steps!r}.")
        if self.sparsity != "auto" and not (isinstance(self.sparsity, (int, float)) and self.sparsity >= 0):
            raise ValueError(f"sparsity must be a non-negative number or 'auto', got {self.sparsity!r}.")
        for name in ("n_iterations", "n_inference_iterations", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")

    def _resolve_family(self, n_trials_from_data: Any) -> Family:
        family = self.family
        if isinstance(family, Family):
            return family
        name = str(family).strip().lower()
        if name == "binomial":
            n_trials = self.n_trials if self.n_trials is not None else n_trials_from_data
            if n_trials is None:
                raise ValueError(
                    "the binomial family needs n_trials, the number of repeated trials pooled per example "
                    "(30 in the DCEA paper): pass SpikeDictionary(..., n_trials=M), or use family='poisson' "
                    "for counts without an upper bound."
                )
            return get_family(name, n_trials=n_trials)
        return get_family(name)

    def _prepare(
        self, X: Any, family: Family | None = None, *, fitting: bool = False
    ) -> tuple[Tensor | RecordingWindows, Family]:
        """Validate data and return it as a float tensor (or the windows of a long recording) with its family."""
        if isinstance(X, RecordingWindows):
            return self._prepare_windows(X, family, fitting)
        counts, n_trials = _unpack(X)
        y = _to_tensor(counts, "X")
        template_shape = self._template_shape()
        expected_ndim = 2 + len(template_shape)
        if y.ndim != expected_ndim:
            layout = (
                "(n_examples, n_channels, n_bins)"
                if len(template_shape) == 1
                else "(n_examples, n_channels, height, width)"
            )
            hint = " For a single channel add an axis: X[:, None, :]." if y.ndim == expected_ndim - 1 else ""
            raise ValueError(f"X must have {expected_ndim} dimensions {layout}, got shape {tuple(y.shape)}.{hint}")
        if y.shape[0] == 0:
            raise ValueError("X holds no examples (its first axis has length 0).")
        if y.shape[1] == 0:
            raise ValueError("X holds no channels (its second axis has length 0); pass at least one channel (unit).")
        if not fitting and y.shape[1] != self.n_channels_:
            raise ValueError(
                f"X has {y.shape[1]} channel(s) but the model was fitted on {self.n_channels_}; pass data with "
                "the same units (channels) in the same order."
            )
        for size, kernel in zip(y.shape[2:], template_shape):
            if size < kernel:
                raise ValueError(
                    f"template_size {self.template_size} is longer than the examples ({tuple(y.shape[2:])} bins); "
                    "use shorter templates or longer examples (a larger time window per example)."
                )
        if family is None:
            family = self._resolve_family(n_trials)
        elif n_trials is not None and isinstance(family, Binomial):
            family = Binomial(n_trials)
        elif isinstance(family, Binomial) and not isinstance(family.n_trials, int):
            if len(family.n_trials) != y.shape[0]:
                raise ValueError(
                    f"the model was fitted with one n_trials per example; for these {y.shape[0]} examples pass "
                    "a counts object that carries n_trials, or refit with a single n_trials."
                )
        family.validate(y, "X")
        _check_scale(y, "X")
        return y, family

    def _prepare_windows(
        self, windows: RecordingWindows, family: Family | None, fitting: bool
    ) -> tuple[RecordingWindows, Family]:
        template_shape = self._template_shape()
        if len(template_shape) != 1 or self.stride != 1:
            raise ValueError(
                "RecordingWindows hold 1-D spike counts; they need 1-D templates (template_size an integer) and "
                f"stride=1, got template_size={self.template_size!r}, stride={self.stride!r}."
            )
        if not fitting and windows.n_channels != self.n_channels_:
            raise ValueError(
                f"the recording has {windows.n_channels} channel(s) but the model was fitted on {self.n_channels_}; "
                "pass the same units (channels) in the same order."
            )
        size = template_shape[0]
        if windows.window_bins < size or windows.overlap_bins < size - 1:
            raise ValueError(
                f"windows of {windows.window_bins} bins overlapping by {windows.overlap_bins} cannot hold "
                f"templates of {size} bins: the window must be at least template_size long and the overlap at "
                f"least template_size - 1 = {size - 1} bins (a few template lengths keeps the seams invisible). "
                "Build RecordingWindows with a longer window / overlap."
            )
        if family is None:
            family = self._resolve_family(None)
        if isinstance(family, Binomial):
            n_trials = family.n_trials
            if not isinstance(n_trials, int) or float(windows.max()) > n_trials:
                raise ValueError(
                    f"binomial counts must lie in [0, n_trials]; this recording has up to {int(windows.max())} "
                    f"spikes in a bin and n_trials={n_trials!r}. One recording is one trial: use family='poisson' "
                    "for its counts."
                )
        return windows, family

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) first (or SpikeDictionary.load(path))."
            )

    # ------------------------------------------------------------------------------- fit
    def _training_config(self) -> TrainingConfig:
        return TrainingConfig(
            n_epochs=self.n_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            backprop=self.backprop,
            n_dictionary_steps=1 if self.n_dictionary_steps == "auto" else int(self.n_dictionary_steps),
            warm_start=self.warm_start,
            loss="nll",
            validation_fraction=self.validation_fraction,
            patience=self.patience,
            device=self.device,
            seed=self.seed,
            progress=self.progress,
            checkpoint_path=self.checkpoint_path,
        )

    def _initial_templates(
        self, y: Tensor, family: Family, baseline: Tensor, generator: torch.Generator, n_templates: int
    ) -> Tensor:
        shape = (n_templates, y.shape[1]) + self._template_shape()
        init = self.init
        if isinstance(init, str) and init == "random":
            return torch.randn(shape, generator=generator)
        if isinstance(init, str) and init == "data":
            # Windows of the residual at the baseline, at random examples and positions.
            examples = torch.randint(0, y.shape[0], (n_templates,), generator=generator)
            windows = []
            for example in examples.tolist():
                starts = [
                    int(torch.randint(0, s - k + 1, (1,), generator=generator)) for s, k in zip(y.shape[2:], shape[2:])
                ]
                index = (example, slice(None)) + tuple(slice(a, a + k) for a, k in zip(starts, shape[2:]))
                windows.append(family.select(torch.tensor([example])).residual(y[index][None], baseline)[0])
            templates = torch.stack(windows)
            # A window without a spike carries no shape; fill it with noise rather than zeros.
            empty = templates.flatten(1).norm(dim=1) == 0
            if bool(empty.any()):
                templates[empty] = torch.randn((int(empty.sum()),) + shape[1:], generator=generator)
            return templates
        array = np.asarray(init, dtype=np.float64)
        if array.shape != shape:
            raise ValueError(
                f"init templates must have shape {shape} (n_templates, n_channels, template_size), got {array.shape}."
            )
        if not np.all(np.isfinite(array)) or np.any(np.abs(array).reshape(shape[0], -1).sum(1) == 0):
            raise ValueError("init templates must be finite and none may be all zeros.")
        return torch.as_tensor(array, dtype=torch.get_default_dtype())

    def _initial_baseline(self, y: Tensor | RecordingWindows, family: Family) -> Tensor:
        baseline = self.baseline
        n_channels = y.shape[1]
        if isinstance(baseline, str):
            if baseline not in ("learn", "estimate"):
                raise ValueError(
                    f"baseline must be 'learn', 'estimate', a number or one number per channel, got {baseline!r}."
                )
            if isinstance(y, RecordingWindows):  # exact, from the spike counts of the whole recording
                mean = torch.as_tensor(y.mean_counts(), dtype=torch.get_default_dtype()).reshape(1, -1, 1)
                return family.link(mean).flatten()
            axes = [0] + list(range(2, y.ndim))
            mean = y.mean(dim=axes).reshape((1, -1) + (1,) * (y.ndim - 2))
            if isinstance(family, Binomial):
                mean = mean.expand((y.shape[0],) + tuple(mean.shape[1:]))
                return family.link(mean).mean(0).flatten()
            return family.link(mean).flatten()
        values = (
            np.broadcast_to(np.asarray(baseline, dtype=np.float64), (n_channels,)) if np.ndim(baseline) <= 1 else None
        )
        if values is None or not np.all(np.isfinite(values)):
            raise ValueError(
                f"baseline must be finite, one number or one per channel ({n_channels}), got {baseline!r}."
            )
        return torch.as_tensor(values.copy(), dtype=torch.get_default_dtype())

    def fit(self, X: Any, resume: bool = False) -> SpikeDictionary:
        """Learn templates and baseline from counts ``X``.

        Parameters
        ----------
        X : array or Tensor of shape (n_examples, n_channels, n_bins), a counts object, or RecordingWindows
            Spike counts (for images: ``(n_examples, n_channels, height, width)``). A counts object of
            ``spikedict.io`` (anything with ``counts`` and ``n_trials`` attributes) supplies ``n_trials``.
            :class:`spikedict.io.RecordingWindows` streams a long recording: the windows are binned a batch
            at a time, the solver is ``"backprop"`` (stochastic), and the initial templates and the ``"auto"``
            sparsity come from a seeded sample of 32 windows.
        resume : bool
            Continue an interrupted fit from ``checkpoint_path``.

        Returns
        -------
        self

        Notes
        -----
        In a process group started by ``torchrun`` (see :mod:`spikedict.distributed`) every process calls
        ``fit`` on the same data; each global batch is split between them and the gradients are averaged, so
        the templates match a one-process fit with the same ``batch_size``. Distributed fits use the
        ``"backprop"`` solver.
        """
        self._check_settings()
        y, family = self._prepare(X, fitting=True)
        streaming = isinstance(y, RecordingWindows)
        sample = y[torch.as_tensor(y.sample(32, seed=int(self.seed)))] if streaming else y
        baseline = self._initial_baseline(y, family)
        solver = self._resolved_solver(streaming)
        if self.n_restarts > 1 and solver != "alternating":
            raise ValueError(
                f"n_restarts={self.n_restarts} restarts the alternating solver; the {solver!r} solver runs one "
                "initialisation (streamed, distributed, untied or back-propagated fits). Use n_restarts=1."
            )
        starts: list[_Start] = []
        for restart in range(int(self.n_restarts)):
            seed = int(self.seed) + restart
            # A restart that had not started when the fit was interrupted has no checkpoint yet: it starts afresh.
            checkpoint = self._checkpoint_of(restart)
            resume_this = resume and (restart == 0 or (checkpoint is not None and Path(checkpoint).exists()))
            starts.append(self._fit_from(y, sample, family, baseline, solver, seed, restart, resume_this))
            if starts[-1].result.stop_reason == "interrupted":
                break
        finished = [start for start in starts if start.result.stop_reason != "interrupted"]
        chosen = min(finished or starts, key=lambda start: start.final_loss)
        model, result, sparsity = chosen.model, chosen.result, chosen.sparsity
        self.initial_templates_ = chosen.initial_templates
        self.restart_losses_ = [start.final_loss for start in starts]
        self.best_restart_ = starts.index(chosen)
        if starts[-1].result.stop_reason == "interrupted":
            epochs = f"epoch {len(starts[-1].result.history)} of {self.n_epochs}"
            if self.n_restarts > 1:
                epochs = f"restart {len(starts)} of {self.n_restarts} at {epochs}"
            kept = "the best finished restart" if finished else f"the parameters after {epochs}"
            warnings.warn(
                f"fit interrupted ({epochs}): the model holds {kept}"
                + (f"; fit(X, resume=True) continues from {self.checkpoint_path!r}." if self.checkpoint_path else "."),
                RuntimeWarning,
                stacklevel=2,
            )
        self.model_ = model
        self.sparsity_ = float(sparsity)
        self.reweighting_delta_ = result.reweighting_delta
        self.n_channels_ = int(y.shape[1])
        self.history_ = result.history
        self.stop_reason_ = result.stop_reason
        self.family_ = family
        if isinstance(family, Gaussian) and not isinstance(self.family, Family):
            # Maximum-likelihood noise level of the fit, so that score() is a proper log-likelihood: from the
            # alternating solver's final codes (which it has anyway; with its room to move, whose codes cannot
            # reach the first and last bins of padding, a little above the cut model's residual), else from
            # an inference pass.
            rms = chosen.residual_rms
            if rms is None:
                rms = float((sample - self._predict_eta(sample, family)).pow(2).mean().sqrt())
            self.family_ = Gaussian(std=max(rms, 1e-12))
            model.family = self.family_
        self._set_fitted_arrays()
        return self

    def _fit_from(
        self,
        y: Tensor | RecordingWindows,
        sample: Tensor,
        family: Family,
        baseline: Tensor,
        solver: str,
        seed: int,
        restart: int,
        resume: bool,
    ) -> _Start:
        """One fit from the initialisation drawn with ``seed`` (restart number ``restart``)."""
        generator = torch.Generator().manual_seed(seed)
        n_spare, padding = self._learning_room(solver, y.shape[2:])
        template_shape = self._template_shape()
        initial = self._initial_templates(
            sample, family, baseline.reshape((1, -1) + (1,) * (sample.ndim - 2)), generator, self.n_templates + n_spare
        )
        if padding:
            initial = torch.nn.functional.pad(initial, (padding, padding))
        model = self._build_model(self.n_templates + n_spare, y.shape[1], initial.shape[2:], family, generator)
        with torch.no_grad():
            model.templates.copy_(initial)
            model.project_templates_()
            model.baseline.copy_(baseline)
            if not model.tied:
                model.encoder_templates.copy_(model.templates)
                model.decoder_templates.copy_(model.templates)
        initial_templates = _cut(model.templates.detach().cpu(), padding)[: self.n_templates].numpy().copy()
        sparsity = self._resolve_sparsity(sample, family, model, solver)
        model.sparsity = sparsity
        if not model.tied:
            with torch.no_grad():
                model.thresholds.fill_(sparsity)

        residual_rms = None
        if solver == "alternating":
            config = AlternatingConfig(
                n_iterations=self.n_epochs,
                n_code_iterations=self.n_iterations,
                n_dictionary_iterations=10 if self.n_dictionary_steps == "auto" else int(self.n_dictionary_steps),
                continuation=self.continuation,
                n_continuation_iterations=self.n_epochs // 2,
                reweighting=self.reweighting,
                padding=padding,
                n_spare_templates=n_spare,
                initial_subset=self._initial_subset(y.shape),
                epoch_subset=float(self.epoch_subset),
                seed=seed,
                tolerance=float(self.tolerance),
                batch_size=_encoding_batch_size(model, y.shape[2:], resolve_device(self.device), y.shape[0]),
                device=self.device,
                progress=self.progress,
                checkpoint_path=self._checkpoint_of(restart),
            )
            result = fit_alternating(model, y, sparsity, config, n_templates=self.n_templates, resume=resume)
            # a fit interrupted while the subset grew, or on a draw of epoch_subset, has no (or stale) codes for
            # some examples: an inference pass instead (histories resumed from checkpoints older than the subset
            # lack the column: every example was coded)
            history = result.history
            coded = history["examples_coded"].iloc[-1] if "examples_coded" in history and len(history) else y.shape[0]
            if (
                isinstance(family, Gaussian)
                and not isinstance(self.family, Family)
                and len(history)
                and coded == y.shape[0]
            ):
                residual_rms = _residual_rms(model, y, result.codes, config.batch_size)
            if padding:  # the learned templates without their room to move
                learned = model
                model = self._build_model(self.n_templates, y.shape[1], template_shape, family, generator)
                with torch.no_grad():
                    model.templates.copy_(_cut(learned.templates.detach(), padding))
                    model.baseline.copy_(learned.baseline.detach())
                model.sparsity = sparsity
                model.to(learned.templates.device)
        else:
            result = train(model, y, self._training_config(), resume=resume)
        return _Start(model, result, initial_templates, float(sparsity), residual_rms)

    def _checkpoint_of(self, restart: int) -> str | None:
        """Checkpoint file of a restart: ``checkpoint_path`` for the first, ``<checkpoint_path>.restart<r>`` after."""
        if not self.checkpoint_path or restart == 0:
            return self.checkpoint_path
        return f"{self.checkpoint_path}.restart{restart}"

    def _resolve_sparsity(self, y: Tensor, family: Family, model: DCEA, solver: str) -> float:
        if self.sparsity != "auto":
            return float(self.sparsity)
        return AUTO_SPARSITY_NOISE_MULTIPLE[solver] * noise_level(y, family, model.baseline.detach())

    def _resolved_solver(self, streaming: bool = False) -> str:
        parallel = distributed.is_active()
        if self.solver == "alternating" and (streaming or parallel):
            raise ValueError(
                "solver='alternating' passes over the whole data set in one process; "
                + ("RecordingWindows stream a recording " if streaming else "a distributed fit shares the data ")
                + "batch by batch, which needs solver='backprop' (or 'auto')."
            )
        if self.solver != "auto":
            return self.solver
        if streaming or parallel:
            return "backprop"
        return "alternating" if self.tied and self.backprop == "none" else "backprop"

    def _initial_subset(self, data_shape: Sequence[int]) -> float:
        """The alternating solver's ``initial_subset`` for data of shape ``(n_examples, n_channels, *signal)``."""
        if self.initial_subset != "auto":
            return float(self.initial_subset)
        n_examples, values_per_example = int(data_shape[0]), math.prod(int(n) for n in data_shape[1:])
        n_first = max(math.ceil(AUTO_SUBSET_FRACTION * n_examples), math.ceil(AUTO_SUBSET_VALUES / values_per_example))
        return min(1.0, n_first / n_examples)

    def _learning_room(self, solver: str, signal_shape: Sequence[int]) -> tuple[int, int]:
        """Spare templates and padding bins of the alternating solver (none for back-propagation).

        ``"auto"`` padding is at most what the examples (``signal_shape``) leave room for.
        """
        if solver != "alternating":
            return 0, 0
        given_init = not isinstance(self.init, str)
        n_spare = self.n_spare_templates
        if n_spare == "auto":
            n_spare = 0 if given_init else int(self.n_templates)
        padding = self.padding
        one_dimensional = len(self._template_shape()) == 1
        size = self._template_shape()[0]
        room = (int(signal_shape[0]) - size) // 2
        if padding == "auto":
            padding = min(size // 5, room) if one_dimensional and not self.zero_edges else 0
        if padding and (not one_dimensional or self.zero_edges):
            raise ValueError("padding applies to 1-D templates without zero_edges; set padding=0.")
        if padding > room:
            raise ValueError(
                f"padding={padding} bins at each end makes the templates {size + 2 * padding} bins long while "
                f"learning, longer than the examples ({int(signal_shape[0])} bins); use padding <= {room} or longer "
                "examples."
            )
        return int(n_spare), int(padding)

    def _build_model(
        self, n_templates: int, n_channels: int, template_shape: Sequence[int], family: Family, generator: Any
    ) -> DCEA:
        return DCEA(
            n_templates,
            n_channels,
            tuple(template_shape),
            family,
            sparsity=0.0,
            n_iterations=self.n_iterations,
            algorithm=self.algorithm,
            nonnegative_codes=self.nonnegative_codes,
            stride=self.stride,
            tied=self.tied,
            learn_baseline=isinstance(self.baseline, str) and self.baseline == "learn",
            nonnegative_templates=self.nonnegative_templates,
            zero_edges=self.zero_edges,
            smoothness=self.smoothness,
            generator=generator,
        )

    def _set_fitted_arrays(self) -> None:
        # DCEA-UC: the decoder's weights are the templates that generate the rates.
        weights = self.model_.templates if self.model_.tied else self.model_.decoder_templates
        self.templates_ = weights.detach().cpu().numpy().copy()
        self.baseline_ = self.model_.baseline.detach().cpu().numpy().copy()

    # ------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _encode(self, y: Tensor, family: Family, *, set_step: bool = True) -> Tensor:
        if set_step:
            self.model_.update_step_size(y.shape[2:], y)
        batch_size = _encoding_batch_size(self.model_, y.shape[2:], self.model_.templates.device, y.shape[0])
        codes = encode_in_batches(self.model_, y, family, self.n_inference_iterations, batch_size=batch_size)
        delta = getattr(self, "reweighting_delta_", None)
        if delta:  # the penalty the templates were learned with: reweighted l1, started from the plain solution
            weights = reweighted_thresholds(codes, self.sparsity_, delta)
            codes = encode_in_batches(
                self.model_, y, family, self.n_inference_iterations, batch_size, initial=codes, thresholds=weights
            )
        return codes

    def _predict_eta(self, y: Tensor, family: Family) -> Tensor:
        codes = self._encode(y, family)
        with torch.no_grad():
            return self.model_.decode(codes.to(self.model_.templates.device), y.shape[2:]).cpu()

    # A long recording (RecordingWindows) is encoded window by window and stitched: each window's codes are
    # kept between the middles of its overlaps with its neighbours (stitch_cuts), and the rates are decoded
    # from the stitched codes, so they equal one decode of the whole recording's codes.
    def _windows_per_batch(self, windows: RecordingWindows) -> int:
        return _encoding_batch_size(self.model_, (windows.window_bins,), self.model_.templates.device)

    def _stitched_codes(self, windows: RecordingWindows, family: Family) -> Tensor:
        size = self._template_shape()[0]
        code_window, total = windows.window_bins - size + 1, windows.n_bins - size + 1
        cuts = stitch_cuts(windows.starts, code_window, total)
        codes = torch.zeros((1, self.model_.n_templates, total))
        # One step size for the whole recording (its largest count bounds the Poisson curvature), as in fit.
        self.model_.update_step_size((windows.window_bins,), windows)
        for first in range(0, windows.n_windows, self._windows_per_batch(windows)):
            rows = np.arange(first, min(first + self._windows_per_batch(windows), windows.n_windows))
            window_codes = self._encode(windows[rows], family, set_step=False)
            for i, k in enumerate(rows):
                offset = int(windows.starts[k])
                codes[0, :, cuts[k] : cuts[k + 1]] = window_codes[i, :, cuts[k] - offset : cuts[k + 1] - offset]
        return codes

    @torch.no_grad()
    def _stitched_eta(self, windows: RecordingWindows, codes: Tensor) -> Any:
        """Yield ``(first_bin, last_bin, eta)`` covering the recording, decoded from the stitched codes."""
        size = self._template_shape()[0]
        code_window = windows.window_bins - size + 1
        # A bin sees the codes of the size - 1 bins before it, so a window's rates are complete from bin
        # size - 1 on; the hand-over points are the code cuts moved by that much.
        cuts = stitch_cuts(windows.starts, code_window, codes.shape[-1]) + size - 1
        cuts[0], cuts[-1] = 0, windows.n_bins
        device = self.model_.templates.device
        for first in range(0, windows.n_windows, self._windows_per_batch(windows)):
            rows = np.arange(first, min(first + self._windows_per_batch(windows), windows.n_windows))
            window_codes = torch.stack([codes[0, :, windows.starts[k] : windows.starts[k] + code_window] for k in rows])
            eta = self.model_.decode(window_codes.to(device), (windows.window_bins,)).cpu()
            for i, k in enumerate(rows):
                offset = int(windows.starts[k])
                yield int(cuts[k]), int(cuts[k + 1]), eta[i : i + 1, :, cuts[k] - offset : cuts[k + 1] - offset]

    def transform(self, X: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Sparse codes of ``X``.

        Parameters
        ----------
        X : array, counts object or RecordingWindows
        out : ndarray, optional
            Array of the result's shape to write into (e.g. ``numpy.lib.format.open_memmap`` for a recording
            too long for memory).

        Returns
        -------
        ndarray, shape (n_examples, n_templates, n_code_bins)
            ``n_code_bins = n_bins - template_size + 1`` for stride 1. For RecordingWindows one example: the
            whole recording, stitched from its windows.
        """
        self._check_fitted()
        y, family = self._prepare(X, self.family_)
        codes = self._stitched_codes(y, family) if isinstance(y, RecordingWindows) else self._encode(y, family)
        return _into(codes.numpy(), out)

    def predict_rate(self, X: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Expected counts per bin, ``mean(decode(transform(X)) + baseline)``.

        Parameters
        ----------
        X : array, counts object or RecordingWindows
        out : ndarray, optional
            Array of the result's shape to write into (e.g. a memory map), filled window by window.

        Returns
        -------
        ndarray, shape (n_examples, n_channels, n_bins)
            For the binomial family, the expected number of trials with a spike (``n_trials * p``). For
            RecordingWindows one example: the whole recording.
        """
        self._check_fitted()
        y, family = self._prepare(X, self.family_)
        if not isinstance(y, RecordingWindows):
            return _into(family.to("cpu").mean(self._predict_eta(y, family)).numpy(), out)
        shape = (1, y.n_channels, y.n_bins)
        rates = np.empty(shape, dtype=np.float32) if out is None else _check_out(out, shape)
        for first, last, eta in self._stitched_eta(y, self._stitched_codes(y, family)):
            rates[:, :, first:last] = family.to("cpu").mean(eta).numpy()
        return rates

    def score(self, X: Any) -> float:
        """Mean log-likelihood per bin of ``X`` under the fitted model (higher is better)."""
        self._check_fitted()
        y, family = self._prepare(X, self.family_)
        if not isinstance(y, RecordingWindows):
            eta = self._predict_eta(y, family)
            return float(family.to("cpu").log_likelihood(y, eta).mean())
        total = 0.0
        for first, last, eta in self._stitched_eta(y, self._stitched_codes(y, family)):
            counts = torch.as_tensor(y.counts(first_bin=first, n_bins=last - first), dtype=eta.dtype)
            total += float(family.to("cpu").log_likelihood(counts, eta).double().sum())
        return total / (y.n_bins * y.n_channels)

    def fit_transform(self, X: Any) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    # ------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one ``.safetensors`` file (tensors + JSON metadata; no pickle), atomically.

        The file is written next to ``path`` under a temporary name and renamed, so an existing model at ``path``
        is replaced only by a complete one.

        Returns
        -------
        Path
            The file written (``.safetensors`` is appended if missing).
        """
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        params = {k: _jsonable(v) for k, v in self.get_params().items()}
        metadata = {
            "format": FORMAT,
            "version": str(FORMAT_VERSION),
            "params": json.dumps(params),
            "family": json.dumps(self.family_.config()),
            "fitted": json.dumps(
                {
                    "sparsity_": self.sparsity_,
                    "n_channels_": self.n_channels_,
                    "stop_reason_": self.stop_reason_,
                    "reweighting_delta_": self.reweighting_delta_,
                    "restart_losses_": getattr(self, "restart_losses_", None),
                    "best_restart_": getattr(self, "best_restart_", None),
                }
            ),
            "history": self.history_.to_json(orient="split", double_precision=15),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        tensors["initial_templates"] = torch.as_tensor(self.initial_templates_)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SpikeDictionary:
        """Read a model written by :meth:`save`. Never executes code from the file.

        Raises
        ------
        FileNotFoundError, ValueError
            Missing file; corrupt file or not a spikedict model.
        """
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            raise FileNotFoundError(
                f"{str(path)!r} is a folder; pass the model file that SpikeDictionary.save wrote (the spikedict fit "
                f"command writes {str(path / 'model.safetensors')!r})."
            )
        if not path.is_file():
            raise FileNotFoundError(f"no saved model at {str(path)!r}.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as error:
            raise ValueError(
                f"could not read {str(path)!r} as a spikedict model: the file is corrupt, truncated or not a "
                f"safetensors file ({type(error).__name__}). Save the model again with SpikeDictionary.save."
            ) from error
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} is a safetensors file but not a spikedict model (format {metadata.get('format')!r})."
            )
        if int(metadata.get("version", "0")) > FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} was written by a newer spikedict (format version {metadata['version']}); "
                "upgrade spikedict."
            )
        try:
            params = json.loads(metadata["params"])
            family = _family_from_config(json.loads(metadata["family"]))
            fitted = json.loads(metadata["fitted"])
            history = pd.read_json(io.StringIO(metadata["history"]), orient="split")
            estimator = cls(**params)
            estimator.device = device
            model = estimator._build_model(
                estimator.n_templates, int(fitted["n_channels_"]), estimator._template_shape(), family, None
            )
            model.sparsity = float(fitted["sparsity_"])
            initial = tensors.pop("initial_templates")
            model.load_state_dict(tensors)
        except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{str(path)!r} is a spikedict model whose contents do not fit together ({type(error).__name__}: "
                f"{error}); it may have been edited or written by an incompatible version."
            ) from error
        model.to(resolve_device(device))
        model.eval()
        estimator.model_ = model
        estimator.family_ = family
        estimator.sparsity_ = float(fitted["sparsity_"])
        estimator.n_channels_ = int(fitted["n_channels_"])
        estimator.stop_reason_ = fitted.get("stop_reason_", "")
        estimator.reweighting_delta_ = fitted.get("reweighting_delta_")
        estimator.restart_losses_ = fitted.get("restart_losses_")
        estimator.best_restart_ = fitted.get("best_restart_")
        estimator.history_ = history
        estimator.initial_templates_ = initial.numpy()
        estimator._set_fitted_arrays()
        return estimator


def _check_out(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}.")
    return out


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``values``, or copied into ``out`` (which must have their shape) and ``out`` returned."""
    if out is None:
        return values
    _check_out(out, values.shape)[...] = values
    return out


def _cut(templates: Tensor, padding: int) -> Tensor:
    """Templates without ``padding`` bins at each end of the last axis."""
    return templates[..., padding : templates.shape[-1] - padding] if padding else templates


def _encoding_batch_size(
    model: DCEA, signal_shape: Sequence[int], device: torch.device | str, n_examples: int | None = None
) -> int:
    """Examples per encoder call: its largest tensor (the codes, or the counts) near a bound that depends on the
    device, and the calls over ``n_examples`` examples (when given) of equal size.

    On a GPU the bound is 20 million entries: large calls keep it busy, and one call holds about ten arrays of
    that size (the encoder's codes, momentum and FFT buffers), under a GB in float32. On a CPU it is 500 000
    entries (a few MB a tensor, so that one call's FFT buffers stay in the caches): encoding 800 examples of
    2000 bins with 3 templates ran at 3.5e7 bin-iterations per second in calls of 50 or 100 examples (3e5 to
    6e5 code entries), 3.0e7 in calls of 200, 2.1e7 of 400 and 1.3e7 in one call of 800 (2 cores).
    """
    bound = 20_000_000 if torch.device(device).type == "cuda" else 500_000
    code_entries = model.n_templates * int(np.prod(model.code_shape(signal_shape)))
    count_entries = model.n_channels * int(np.prod(signal_shape))
    largest = max(1, bound // max(code_entries, count_entries, 1))
    if n_examples is None or n_examples <= largest:
        return largest if n_examples is None else max(1, n_examples)
    return math.ceil(n_examples / math.ceil(n_examples / largest))


@torch.no_grad()
def _residual_rms(model: DCEA, y: Tensor, codes: Tensor, batch_size: int) -> float:
    """Root mean square of ``y - model.decode(codes)`` over all values, a batch of examples at a time."""
    device = model.templates.device
    total = 0.0
    for first in range(0, y.shape[0], batch_size):
        batch = y[first : first + batch_size].to(device)
        eta = model.decode(codes[first : first + batch_size].to(device), batch.shape[2:])
        total += float((batch - eta).pow(2).sum(dtype=torch.float64))
    return math.sqrt(total / max(y.numel(), 1))


def noise_level(y: Tensor, family: Family, baseline: Tensor) -> float:
    """Standard deviation of the encoder's residual ``(y - mean) / residual_scale`` when no template is active.

    For count families it follows from the family's variance at the baseline; for the Gaussian family the
    noise is estimated robustly from the first differences of the data (median absolute deviation), which
    events of smooth templates barely affect. Correlating white noise with a unit-norm template keeps this
    standard deviation, so it is the natural unit of the sparsity.
    """
    if isinstance(family, Gaussian):
        differences = torch.diff(y, dim=-1).flatten()
        if differences.numel() == 0:
            return family.std
        deviation = (differences - differences.median()).abs().median()
        return max(float(1.4826 * deviation / math.sqrt(2.0)), 1e-8)
    eta = baseline.reshape((1, -1) + (1,) * (y.ndim - 2)).expand_as(y)
    variance = family.select(torch.arange(y.shape[0])).variance(eta)
    return max(float(variance.mean().sqrt()) / family.residual_scale, 1e-8)


def _family_from_config(config: dict[str, Any]) -> Family:
    config = dict(config)
    return get_family(config.pop("name"), **config)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Family):
        return value.config()["name"]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _same(a: Any, b: Any) -> bool:
    try:
        result = a == b
        return bool(np.all(result)) if not isinstance(result, bool) else result
    except Exception:
        return a is b
