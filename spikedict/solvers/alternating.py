"""The alternating solver as a settings object: what the estimator holds for ``solver="alternating"``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from spikedict.alternating import AlternatingConfig, AlternatingRun, _is_real
from spikedict.settings import check_integer
from spikedict.solvers.base import EpochRun, FitProblem, FitResult, Solver

__all__ = ["Alternating"]

#: "auto" initial_subset: the first epoch codes this fraction of the examples, and at least this many values
#: (examples x channels x bins): a first subset with few events recovers fewer templates.
AUTO_SUBSET_FRACTION = 0.1
AUTO_SUBSET_VALUES = 40_000


class Alternating(Solver):
    """Alternating minimisation: codes of every example with the templates fixed, then the templates exactly.

    Each epoch runs the encoder (warm-started) on the examples, then solves the convex template step with the
    codes held fixed (least squares for Gaussian data, L-BFGS for counts), as described in
    :mod:`spikedict.alternating`. The fast and accurate choice for the interpretable (tied) model, in memory,
    on :class:`~spikedict.io.RecordingWindows` and in a distributed fit.

    Parameters
    ----------
    n_epochs : int
        Epochs at most (codes, then templates); the first half decays the sparsity (continuation).
    n_code_iterations : int
        Encoder iterations per epoch, warm-started from the previous codes. Raise it when the encoder is far
        from converged at the end of an epoch (fits of long templates or low sparsity).
    n_dictionary_iterations : int
        Iterations of each template step for count families (unused by the exact Gaussian step). More make each
        template step closer to exact at a proportional cost.
    template_step : {"auto", "lbfgs", "newton"}
        ``"auto"``: least squares for Gaussian data with 1-D templates, else L-BFGS; see
        :class:`spikedict.alternating.AlternatingConfig`.
    continuation : float
        The sparsity starts this many times higher and decays over the first half of the epochs (1: off). It lets
        the first templates learn from the clearest events.
    reweighting : float
        ``delta`` of the reweighted l1 penalty after continuation, relative to the typical code (0: plain l1).
        Reweighting keeps events at their amplitude instead of shrinking and smearing them.
    n_spare_templates : int or "auto"
        Extra templates learned during continuation, then the most used distinct ones kept (``"auto"``: as many
        as ``n_templates``, none when the initial templates are given). More spares make a poor start less
        likely to trap a template.
    padding : int or "auto"
        Bins of room at each end of the templates while learning, so that a template learned off-centre can
        re-centre (``"auto"``: a fifth of the template length, at most what the examples leave room for; 0 with
        ``zero_edges``).
    initial_subset : float or "auto"
        Fraction of the examples coded in the first epoch, growing geometrically to all of them by the end of
        continuation (``"auto"``: a tenth, and at least 40 000 values; 1: all examples in every epoch).
    epoch_subset : float
        Fraction of the examples coded in each epoch after continuation, a fresh seeded draw each epoch (the last
        epoch codes them all); below 1 each epoch costs less, and the templates follow the draws more noisily.
    tolerance : float
        Stop once continuation is over and an epoch turned no template by more than this (``1 - |cos|``, the
        history's ``template_change``); 0 runs every epoch.
    n_restarts : int
        Initialisations (seeds ``seed``, ``seed + 1``, ...); the fit with the lowest training loss is kept.
        Dictionary learning has local optima: restarts help where events are weak.
    """

    name = "alternating"
    #: "auto" sparsity: this many noise levels of the correlated residual (reweighted l1 keeps events unbiased, so
    #: the threshold can sit at a detection level).
    auto_sparsity_multiple = 4.0

    def __init__(
        self,
        n_epochs: int = 30,
        n_code_iterations: int = 50,
        n_dictionary_iterations: int = 10,
        template_step: Literal["auto", "lbfgs", "newton"] = "auto",
        continuation: float = 5.0,
        reweighting: float = 0.3,
        n_spare_templates: int | Literal["auto"] = "auto",
        padding: int | Literal["auto"] = "auto",
        initial_subset: float | Literal["auto"] = "auto",
        epoch_subset: float = 1.0,
        tolerance: float = 1e-6,
        n_restarts: int = 1,
    ) -> None:
        self.n_epochs = n_epochs
        self.n_code_iterations = n_code_iterations
        self.n_dictionary_iterations = n_dictionary_iterations
        self.template_step = template_step
        self.continuation = continuation
        self.reweighting = reweighting
        self.n_spare_templates = n_spare_templates
        self.padding = padding
        self.initial_subset = initial_subset
        self.epoch_subset = epoch_subset
        self.tolerance = tolerance
        self.n_restarts = n_restarts

    def validate(self, *, tied: bool) -> None:
        if not tied:
            raise ValueError(
                "the alternating solver learns tied templates with the codes held fixed in the template step; "
                "an untied encoder (Encoder(tied=False), DCEA-UC) learns by back-propagation: use solver='backprop'."
            )
        for name in ("n_epochs", "n_code_iterations", "n_dictionary_iterations", "n_restarts"):
            check_integer("", name, getattr(self, name), 1)
        for name in ("n_spare_templates", "padding"):
            value = getattr(self, name)
            if value != "auto":
                try:
                    check_integer("", name, value, 0)
                except ValueError:
                    raise ValueError(f"{name} must be 'auto' or an integer >= 0, got {value!r}.") from None
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
        self._config(initial_subset=1.0, padding=0, n_spare=0, seed=0, batch_size=1).validate()

    def learning_room(
        self,
        n_templates: int,
        template_shape: Sequence[int],
        signal_shape: Sequence[int],
        *,
        given_init: bool,
        zero_edges: int,
    ) -> tuple[int, int]:
        """Spare templates and padding bins; ``"auto"`` padding is at most what the examples leave room for."""
        n_spare = self.n_spare_templates
        if n_spare == "auto":
            n_spare = 0 if given_init else int(n_templates)
        padding, one_dimensional, size = self.padding, len(template_shape) == 1, int(template_shape[0])
        room = (int(signal_shape[0]) - size) // 2
        if padding == "auto":
            padding = min(size // 5, room) if one_dimensional and not zero_edges else 0
        if padding and (not one_dimensional or zero_edges):
            raise ValueError("padding applies to 1-D templates without zero_edges; set padding=0.")
        if padding > room:
            raise ValueError(
                f"padding={padding} bins at each end makes the templates {size + 2 * padding} bins long while "
                f"learning, longer than the examples ({int(signal_shape[0])} bins); use padding <= {room} or longer "
                "examples."
            )
        return int(n_spare), int(padding)

    def initial_fraction(self, data_shape: Sequence[int]) -> float:
        """The ``initial_subset`` for data of shape ``(n_examples, n_channels, *signal_shape)``."""
        if self.initial_subset != "auto":
            return float(self.initial_subset)
        n_examples, values_per_example = int(data_shape[0]), math.prod(int(n) for n in data_shape[1:])
        n_first = max(math.ceil(AUTO_SUBSET_FRACTION * n_examples), math.ceil(AUTO_SUBSET_VALUES / values_per_example))
        return min(1.0, n_first / n_examples)

    def _config(self, *, initial_subset: float, padding: int, n_spare: int, seed: int, batch_size: int, **more: Any):
        return AlternatingConfig(
            n_iterations=int(self.n_epochs),
            n_code_iterations=int(self.n_code_iterations),
            n_dictionary_iterations=int(self.n_dictionary_iterations),
            template_step=self.template_step,
            continuation=float(self.continuation),
            n_continuation_iterations=int(self.n_epochs) // 2,
            reweighting=float(self.reweighting),
            padding=padding,
            n_spare_templates=n_spare,
            initial_subset=initial_subset,
            epoch_subset=float(self.epoch_subset),
            seed=seed,
            tolerance=float(self.tolerance),
            batch_size=batch_size,
            **more,
        )

    def start(self, problem: FitProblem) -> EpochRun:
        model = problem.model
        config = self._config(
            initial_subset=self.initial_fraction(problem.data.shape),
            padding=problem.padding,
            n_spare=model.n_templates - problem.n_templates,
            seed=problem.seed,
            batch_size=problem.batch_size,
            device=problem.device,
            checkpoint_path=problem.checkpoint_path,
        )
        return _CutRun(model, problem.data, problem.sparsity, config, problem.n_templates)


class _CutRun(AlternatingRun):
    """The alternating run that ends with its templates cut back to their size (the padding removed)."""

    def finish(self, stop_reason: str, history: list[dict[str, Any]]) -> FitResult:
        result = super().finish(stop_reason, history)
        padding = self.config.padding
        if padding:
            with torch.no_grad():
                cut = self.model.templates.detach()[..., padding : self.model.templates.shape[-1] - padding]
                self.model.templates = torch.nn.Parameter(cut.clone(), requires_grad=True)
        return result
