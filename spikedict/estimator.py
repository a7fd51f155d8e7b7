"""``SpikeDictionary``: learn convolutional rate templates from spike counts, scikit-learn style.

Examples
--------
>>> from spikedict import SpikeDictionary
>>> from spikedict.simulate import paper_templates, simulate_counts
>>> from spikedict.solvers import Alternating
>>> simulation = simulate_counts(paper_templates(), n_examples=20, n_bins=400, n_trials=30, seed=0)
>>> model = SpikeDictionary(n_templates=3, template_size=50, n_trials=30, solver=Alternating(n_epochs=2), seed=0)
>>> model.fit(simulation.counts).templates_.shape
(3, 1, 50)
>>> model.predict_rate(simulation.counts).shape
(20, 1, 400)
>>> model.set_params(solver__n_epochs=4).solver
Alternating(n_epochs=4)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from spikedict import _inference, distributed
from spikedict._initialisation import baseline_floor, build_model, initial_baseline, initial_templates, set_start
from spikedict._validation import check_counts, check_out, check_windows, family_for, into, template_shape, unpack
from spikedict.families import Family, resolve_family
from spikedict.io._windows import RecordingWindows
from spikedict.model import DCEA
from spikedict.settings import Encoder, Settings, TemplateConstraints, transformer_tags
from spikedict.solvers import FitProblem, FitResult, Solver, get_solver, run_epochs
from spikedict.solvers._runner import warn_interrupted
from spikedict.training import resolve_device

#: What an EM fit adds (see ``_set_posterior``).
POSTERIOR_ATTRIBUTES = ("posterior_codes_", "event_probability_", "template_lower_", "template_upper_")

__all__ = ["NotFittedError", "SpikeDictionary"]


class NotFittedError(RuntimeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


class SpikeDictionary(Settings):
    """Convolutional dictionary learning for spike counts with the DCEA network.

    The data are modelled as ``y ~ family(mean = f^-1(sum_c templates_c * codes_c + baseline))`` with
    sparse codes. ``fit`` learns unit-norm ``templates_`` (and a per-channel ``baseline_``); ``transform``
    returns the codes of new data; ``predict_rate`` the expected counts per bin; ``score`` the mean
    log-likelihood per bin, so that scikit-learn's ``GridSearchCV`` can choose settings.

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
        l1 weight of the codes (for the NLL per trial for the binomial family). ``"auto"``: a multiple (the
        solver's) of the noise level of the correlated residual at the start of the fit (see ``sparsity_``).
        Raise it when templates fit noise, lower it when too few events are found.
    solver : {"auto", "em", "alternating", "backprop"} or Solver
        How the templates are learned, with its own settings (:class:`spikedict.solvers.EM`,
        :class:`spikedict.solvers.Alternating`, :class:`spikedict.solvers.Backprop`); reach them with
        ``set_params(solver__n_epochs=50)``. ``"auto"``: for binomial and Poisson counts with 1-D templates, EM
        (the marginal likelihood, started from the alternating MAP fit), except for a streamed recording
        (RecordingWindows) or a fit under ``torchrun``, which the alternating solver fits; the alternating solver
        for other tied models (Gaussian data, images); backprop for an untied encoder. ``"alternating"`` alone
        is several times faster than EM and biased where events do not stand out of the noise.
    encoder : Encoder, optional
        How codes are inferred (:class:`spikedict.settings.Encoder`: iterations at inference, FISTA or ISTA,
        non-negative codes, tied or untied weights). None: ``Encoder()``.
    stride : int
        Stride of the convolution (1 for spike trains).
    baseline : "learn", "estimate", float or array of shape (n_channels,)
        Per-channel baseline of the linear predictor: estimated from the data then learned, estimated
        and held fixed, or given (fixed).
    init : "data", "random" or array of shape (n_templates, n_channels, template_size)
        Initial templates: windows of the data's residual at random positions, random Gaussian, or given.
    constraints : TemplateConstraints, optional
        Non-negativity, edges held at zero and smoothness of the templates
        (:class:`spikedict.settings.TemplateConstraints`). None: none.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the initialisation and the solver's random draws (restart ``r`` uses ``seed + r``; a solver that
        screens ``n`` starts, EM, screens seeds ``seed + r * n`` to ``seed + r * n + n - 1`` and uses the best).
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
    solver_ : Solver
        The solver used (``solver`` resolved).
    history_ : pandas.DataFrame
        One row per epoch, with the solver's columns (always ``epoch``, ``train_loss``, ``code_density``).
    stop_reason_ : str
        ``"n_epochs"``, ``"converged"`` (the alternating solver's tolerance), ``"early_stopping"`` (backprop's
        patience) or ``"interrupted"``.
    initial_templates_ : ndarray
        Templates at the start of the fit.
    restart_losses_ : list of float
        Final training loss of each restart; ``best_restart_`` is the one kept.
    n_channels_ : int
    model_ : DCEA
        The trained network.
    posterior_codes_, event_probability_ : ndarray, shape (n_examples, n_templates, n_code_bins)
        EM fits only: the posterior mean of every training code and the probability of an event at every position,
        over the last iterations (see :meth:`events`). Not written by :meth:`save`.
    template_lower_, template_upper_ : ndarray, shape like ``templates_``
        EM fits only: a band around each template, twice the standard deviation of the unit-norm templates over
        the last iterations. Not written by :meth:`save`.
    """

    def __init__(
        self,
        n_templates: int = 3,
        template_size: int | Sequence[int] = 50,
        family: str | Family = "binomial",
        *,
        n_trials: int | np.ndarray | None = None,
        sparsity: float | Literal["auto"] = "auto",
        solver: str | Solver = "auto",
        encoder: Encoder | None = None,
        stride: int = 1,
        baseline: Literal["learn", "estimate"] | float | np.ndarray = "learn",
        init: Literal["data", "random"] | np.ndarray = "data",
        constraints: TemplateConstraints | None = None,
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
        self.solver = solver
        self.encoder = encoder
        self.stride = stride
        self.baseline = baseline
        self.init = init
        self.constraints = constraints
        self.device = device
        self.seed = seed
        self.progress = progress
        self.checkpoint_path = checkpoint_path

    # estimators are compared and hashed by identity (scikit-learn's clone checks parameters by identity)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's description of the estimator; read by scikit-learn only, which is then installed."""
        return transformer_tags()

    # ------------------------------------------------------------------------ settings
    def _settings_of(self, name: str) -> Any:
        value = getattr(self, name)
        if name == "encoder":
            return Encoder() if value is None else value
        if name == "constraints":
            return TemplateConstraints() if value is None else value
        if name == "solver":
            return get_solver(value, tied=self._settings_of("encoder").tied, counts=self._counts_in_one_dimension())
        return value

    def _counts_in_one_dimension(self) -> bool:
        """Whether the family counts spikes (binomial, Poisson) and the templates are 1-D: what the EM solver fits,
        and so what ``solver="auto"`` gives it."""
        family = self.family
        name = family.name if isinstance(family, Family) else str(family).strip().lower()
        return name in ("binomial", "poisson") and len(self._template_shape()) == 1

    def _template_shape(self) -> tuple[int, ...]:
        return template_shape(self.template_size)

    def _checked_settings(self) -> tuple[Solver, Encoder]:
        if not isinstance(self.n_templates, (int, np.integer)) or self.n_templates < 1:
            raise ValueError(f"n_templates must be an integer >= 1, got {self.n_templates!r}.")
        if self.sparsity != "auto" and not (isinstance(self.sparsity, (int, float)) and self.sparsity >= 0):
            raise ValueError(f"sparsity must be a non-negative number or 'auto', got {self.sparsity!r}.")
        if isinstance(self.baseline, str) and self.baseline not in ("learn", "estimate"):
            raise ValueError(
                f"baseline must be 'learn', 'estimate', a number or one number per channel, got {self.baseline!r}."
            )
        encoder, constraints, solver = (self._settings_of(name) for name in ("encoder", "constraints", "solver"))
        encoder.validate()
        constraints.validate()
        solver.validate(tied=encoder.tied)
        return solver, encoder

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) first (or SpikeDictionary.load(path))."
            )

    def _data(self, X: Any, family: Family | None = None) -> tuple[Tensor | RecordingWindows, Family]:
        """Validated data (a tensor, or the windows of a long recording) and its family."""
        fitting = family is None
        n_channels = None if fitting else self.n_channels_
        counts, n_trials = unpack(X)
        if family is None:
            family = resolve_family(self.family, self.n_trials, n_trials)
            n_trials = None
        if isinstance(counts, RecordingWindows):
            check_windows(counts, self._template_shape(), self.stride, family, n_channels)
            return counts, family
        y = check_counts(counts, self._template_shape(), self.template_size, n_channels)
        return y, family_for(family, n_trials, y)

    # ------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: None = None, resume: bool = False) -> SpikeDictionary:
        """Learn templates and baseline from counts ``X``.

        Parameters
        ----------
        X : array or Tensor of shape (n_examples, n_channels, n_bins), a counts object, or RecordingWindows
            Spike counts (for images: ``(n_examples, n_channels, height, width)``). A counts object of
            ``spikedict.io`` (anything with ``counts`` and ``n_trials`` attributes) supplies ``n_trials``.
            :class:`spikedict.io.RecordingWindows` streams a long recording: the windows are binned as the
            solver reads them, and the initial templates and the ``"auto"`` sparsity come from a seeded sample of
            32 windows.
        y : None
            Unused (scikit-learn's signature).
        resume : bool
            Continue an interrupted fit from ``checkpoint_path``.

        Returns
        -------
        self

        Notes
        -----
        In a process group started by ``torchrun`` (see :mod:`spikedict.distributed`) every process calls
        ``fit`` on the same data; the solver splits the work between them (the alternating solver the examples,
        back-propagation each batch) so that the templates match a one-process fit.
        """
        solver, encoder = self._checked_settings()
        data, family = self._data(X)
        streaming = isinstance(data, RecordingWindows)
        auto = isinstance(self.solver, str) and self.solver.strip().lower() == "auto"
        if auto and solver.name == "em" and (streaming or distributed.is_active()):
            solver = get_solver("alternating")  # EM fits counts in memory in one process
        sample = data[torch.as_tensor(data.sample(32, seed=int(self.seed)))] if streaming else data
        baseline = initial_baseline(self.baseline, data, family)
        fits: list[tuple[DCEA, FitResult, np.ndarray]] = []
        for restart in range(int(solver.n_restarts)):
            # A restart that had not started when the fit was interrupted has no checkpoint yet: it starts afresh.
            suffix = f".restart{restart}" if restart else ""
            checkpoint = f"{self.checkpoint_path}{suffix}" if self.checkpoint_path else None
            resume_this = resume and (restart == 0 or (checkpoint is not None and Path(checkpoint).exists()))
            seed = self._screened_seed(solver, data, sample, family, baseline, restart)
            fits.append(self._fit_once(solver, data, sample, family, baseline, seed, checkpoint, resume_this))
            if fits[-1][1].stop_reason == "interrupted":
                break
        finished = [fit for fit in fits if fit[1].stop_reason != "interrupted"]
        model, result, self.initial_templates_ = min(finished or fits, key=lambda fit: fit[1].final_loss)
        self.restart_losses_ = [fit[1].final_loss for fit in fits]
        self.best_restart_ = [fit[0] for fit in fits].index(model)
        if fits[-1][1].stop_reason == "interrupted":
            epochs = (len(fits[-1][1].history), solver.total_epochs)
            warn_interrupted(epochs, (len(fits), solver.n_restarts), bool(finished), self.checkpoint_path)
        if family.scale_from_residuals and not isinstance(self.family, Family):
            # the maximum-likelihood scale, so that score() is a proper log-likelihood
            family = model.family = _inference.fitted_scale(model, family, result, sample, encoder.n_iterations)
        floor = baseline_floor(data, family)
        if floor is not None and isinstance(self.baseline, str) and self.baseline == "learn":
            with torch.no_grad():  # a channel without spikes keeps the rate of half a spike
                model.baseline.copy_(torch.maximum(model.baseline, floor.to(model.baseline)))
        self.model_, self.family_, self.solver_ = model, family, solver
        self.sparsity_, self.reweighting_delta_ = float(model.sparsity), result.reweighting_delta
        self.n_channels_, self.history_, self.stop_reason_ = int(data.shape[1]), result.history, result.stop_reason
        self._set_fitted_arrays()
        self._set_posterior(result.posterior)
        return self

    def _set_posterior(self, posterior: Any) -> None:
        """The EM solver's posterior of the training codes and bands of the templates (other solvers: none)."""
        for name in POSTERIOR_ATTRIBUTES:
            self.__dict__.pop(name, None)
        if posterior is None:
            return
        self.posterior_codes_ = posterior.codes.numpy().copy()
        self.event_probability_ = posterior.event_probability.numpy().copy()
        self.template_lower_ = posterior.lower.numpy().copy()
        self.template_upper_ = posterior.upper.numpy().copy()

    def events(self, threshold: float = 0.5) -> pd.DataFrame:
        """The events of the training examples with their posterior probability, position and amplitude (EM fits).

        Parameters
        ----------
        threshold : float
            Keep the events whose posterior probability reaches this.

        Returns
        -------
        pandas.DataFrame
            One row per event: ``template``, ``example``, ``position`` (code bin), ``probability``, ``amplitude``
            (see :func:`spikedict.analysis.posterior_events`); ``groupby("template")`` gives a table per template.
        """
        from spikedict.analysis.metrics import posterior_events

        self._check_fitted()
        if not hasattr(self, "event_probability_"):
            raise ValueError(
                f"events() reads the codes' posterior, which only a sampling solver learns; this model was fitted "
                f"with solver {getattr(self.solver_, 'name', self.solver_)!r}. Fit with solver='em', or read the MAP "
                "codes with transform()."
            )
        return posterior_events(self.event_probability_, self.posterior_codes_, threshold)

    def _screened_seed(
        self,
        solver: Solver,
        data: Tensor | RecordingWindows,
        sample: Tensor,
        family: Family,
        baseline: Tensor,
        restart: int,
    ) -> int:
        """The seed of restart ``restart``: ``seed + restart``, or, for a solver that screens its starts (EM: its MAP
        fit from several initialisations), the seed of the screened start with the lowest training loss. Given
        initial templates (``init`` an array) leave nothing to screen: every start would begin from them."""
        screening = solver.screening()
        if screening is None or not isinstance(self.init, str):
            return int(self.seed) + restart
        screen, n_starts = screening
        seeds = [int(self.seed) + restart * n_starts + start for start in range(n_starts)]
        losses = []
        for seed in seeds:
            result = self._fit_once(screen, data, sample, family, baseline, seed, None, False)[1]
            if result.stop_reason == "interrupted":  # the screening fits keep nothing: stop the whole fit
                raise KeyboardInterrupt
            losses.append(result.final_loss)
        return seeds[losses.index(min(losses))]

    def _fit_once(
        self,
        solver: Solver,
        data: Tensor | RecordingWindows,
        sample: Tensor,
        family: Family,
        baseline: Tensor,
        seed: int,
        checkpoint: str | None,
        resume: bool,
    ) -> tuple[DCEA, FitResult, np.ndarray]:
        """One fit from the initialisation drawn with ``seed``: the model, the result and the initial templates."""
        generator = torch.Generator().manual_seed(seed)
        shape = self._template_shape()
        n_spare, padding = solver.learning_room(
            int(self.n_templates),
            shape,
            data.shape[2:],
            given_init=not isinstance(self.init, str),
            zero_edges=int(self._settings_of("constraints").zero_edges),
        )
        n_initial = int(self.n_templates) + n_spare
        initial = initial_templates(self.init, sample, family, baseline, generator, (n_initial, data.shape[1], *shape))
        if padding:
            initial = torch.nn.functional.pad(initial, (padding, padding))
        model = self._new_model(n_initial, int(data.shape[1]), initial.shape[2:], family, solver, generator)
        set_start(model, initial, baseline)
        start = model.templates.detach()[..., padding : model.templates.shape[-1] - padding]
        start = start[: self.n_templates].cpu().numpy().copy()
        # "auto": a multiple of the noise level of the correlated residual at the baseline
        at_baseline = baseline.reshape((1, -1) + (1,) * (sample.ndim - 2))
        auto = self.sparsity == "auto"
        sparsity = solver.auto_sparsity_multiple * family.noise_level(sample, at_baseline) if auto else self.sparsity
        model.set_sparsity(float(sparsity))
        batch_size = _inference.encoding_batch_size(model, data.shape[2:], resolve_device(self.device), data.shape[0])
        problem = FitProblem(model, data, family, float(sparsity), int(self.n_templates), padding, seed, self.device)
        problem.batch_size, problem.checkpoint_path = batch_size, checkpoint
        run = solver.start(problem)
        result = run_epochs(run, solver.total_epochs, checkpoint_path=checkpoint, resume=resume, progress=self.progress)
        model.eval()
        return model, result, start

    def _new_model(
        self,
        n_templates: int,
        n_channels: int,
        template_shape: Sequence[int],
        family: Family,
        solver: Solver,
        generator: torch.Generator | None = None,
    ) -> DCEA:
        """The network of these settings (random templates from ``generator``; the caller sets them)."""
        encoder, constraints = self._settings_of("encoder"), self._settings_of("constraints")
        learn_baseline = isinstance(self.baseline, str) and self.baseline == "learn"
        shape = (n_templates, n_channels, *template_shape)
        generator = torch.Generator() if generator is None else generator  # never the global random stream
        return build_model(
            shape, family, encoder, constraints, self.stride, learn_baseline, solver.n_code_iterations, generator
        )

    def _set_fitted_arrays(self) -> None:
        # DCEA-UC: the decoder's weights are the templates that generate the rates.
        weights = self.model_.templates if self.model_.tied else self.model_.decoder_templates
        self.templates_ = weights.detach().cpu().numpy().copy()
        self.baseline_ = self.model_.baseline.detach().cpu().numpy().copy()

    # ------------------------------------------------------------------------- inference
    def _codes(self, y: Tensor | RecordingWindows, family: Family) -> Tensor:
        n_iterations, delta = self._settings_of("encoder").n_iterations, self.reweighting_delta_
        if isinstance(y, RecordingWindows):
            return _inference.stitched_codes(self.model_, y, family, n_iterations, delta)
        return _inference.encode(self.model_, y, family, n_iterations, delta)

    def _predict_eta(self, y: Tensor, family: Family) -> Tensor:
        codes = self._codes(y, family)
        with torch.no_grad():
            return self.model_.decode(codes.to(self.model_.templates.device), y.shape[2:]).cpu()

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
        y, family = self._data(X, self.family_)
        return into(self._codes(y, family).numpy(), out)

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
        y, family = self._data(X, self.family_)
        if not isinstance(y, RecordingWindows):
            return into(family.to("cpu").mean(self._predict_eta(y, family)).numpy(), out)
        shape = (1, y.n_channels, y.n_bins)
        rates = np.empty(shape, dtype=np.float32) if out is None else check_out(out, shape)
        for first, last, eta in _inference.stitched_eta(self.model_, y, self._codes(y, family)):
            rates[:, :, first:last] = family.to("cpu").mean(eta).numpy()
        return rates

    def score(self, X: Any, y: None = None) -> float:
        """Mean log-likelihood per bin of ``X`` under the fitted model (higher is better)."""
        self._check_fitted()
        data, family = self._data(X, self.family_)
        if not isinstance(data, RecordingWindows):
            return float(family.to("cpu").log_likelihood(data, self._predict_eta(data, family)).mean())
        total = 0.0
        for first, last, eta in _inference.stitched_eta(self.model_, data, self._codes(data, family)):
            counts = torch.as_tensor(data.counts(first_bin=first, n_bins=last - first), dtype=eta.dtype)
            total += float(family.to("cpu").log_likelihood(counts, eta).double().sum())
        return total / (data.n_bins * data.n_channels)

    def fit_transform(self, X: Any, y: None = None) -> np.ndarray:
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
        from spikedict._model_file import save_estimator

        self._check_fitted()
        return save_estimator(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SpikeDictionary:
        """Read a model written by :meth:`save`. Never executes code from the file.

        Raises
        ------
        FileNotFoundError, ValueError
            Missing file; corrupt file or not a spikedict model.
        """
        from spikedict._model_file import load_estimator

        return load_estimator(cls, Path(path), device)
