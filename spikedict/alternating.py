"""Alternating minimisation for convolutional dictionary learning with exponential-family data.

The tied DCEA (DCEA-C) minimises ``NLL(y | H x + baseline) + sparsity * ||x||_1`` over codes ``x`` and unit-norm
templates ``H``. Back-propagating through the unrolled encoder with a stochastic optimiser
(:func:`spikedict.training.train`) is one way to do it; this module is the faster and more accurate way on a CPU
for the interpretable model. Each iteration over the data set (or, early on, a growing subset of its examples)

1. **codes**: runs the same unrolled encoder (FISTA, warm-started from the previous codes) with the current
   templates;
2. **templates**: solves the convex problem in the templates (and the baseline, if learned) with the codes held
   fixed: exactly by least squares for an identity link (Gaussian data, 1-D templates;
   :func:`least_squares_template_step`), else by L-BFGS (:func:`lbfgs_template_step` for 1-D templates; or,
   on request, Newton iterations on the Gram matrix of the codes: :func:`newton_template_step`); then
   rescales each template to unit norm and its codes by the inverse factor, which leaves the rates unchanged.

Five devices turn the plain scheme into one that finds the templates from a random start:

- **Continuation**: the sparsity starts at ``continuation`` times its final value and decays geometrically over
  the first ``n_continuation_iterations``, so the first templates are learned from the clearest events only.
- **Spare templates**: ``n_spare_templates`` more templates than asked for are learned during continuation; then
  the most used ones that are not shifted copies of one another are kept. A template that started in a poor
  place is dropped instead of trapping the fit in a local minimum.
- **Room to move**: templates are learned ``padding`` bins longer at each end; after every iteration each is
  cut back to the window of ``template_size`` bins that holds most of its energy, re-centred, and its codes
  shifted to match. A template learned a few bins off-centre grows its missing part into the padding instead of
  staying truncated.
- **A growing subset**: the first iteration codes a random ``initial_subset`` fraction of the examples and fits
  the templates to them; the fraction grows geometrically to all examples by the end of continuation (the
  examples join in a fixed random order and keep their codes). The coarse early iterations, with the spare
  templates, cost a fraction of a pass over the data, as in mini-batch dictionary learning (Mairal et al.,
  2010); the iterations after continuation use every example, unless ``epoch_subset`` is below 1: then each
  of them but the last codes a fresh random draw of that fraction of the examples and fits the templates to
  it (stochastic alternating minimisation), and the last codes every example (as does the one after an
  iteration within the ``tolerance``, so that the fit can stop on it).
- **Reweighted l1** (Candès, Wakin and Boyd, 2008): after continuation, the weight of each code entry is
  ``sparsity * delta / (|x| + delta)`` with ``x`` the previous codes. Events keep their amplitude instead of
  being shrunk, and an event is no longer smeared over neighbouring shifts (the l1 solution spreads it when the
  template is smooth), which is what biases the templates of plain l1 dictionary learning.

On count data, an example whose warm start fits worse than zero codes (loss plus penalty) starts the code step
from zero: after the spare templates are dropped, the codes of the kept ones can leave rates that the dropped
ones held down, and a fixed-step encoder started there can diverge.

With a ``tolerance`` the fit ends before ``n_iterations`` once an iteration after continuation has turned no
template by more than it (:func:`template_change`). Each iteration can be checkpointed atomically; ``resume``
continues from the last finished iteration (or stops at once if that one met the tolerance), and a
``KeyboardInterrupt`` keeps the state after the last finished iteration.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from spikedict import distributed
from spikedict._divergence import diverged, encoder_failed
from spikedict._inference import squared_residuals
from spikedict._template_steps import (
    Reduce,
    _chunks,
    lbfgs_template_step,
    least_squares_template_step,
    newton_template_step,
)
from spikedict.families import Family
from spikedict.model import DCEA, ConvolutionOperator
from spikedict.solvers._runner import run_epochs
from spikedict.solvers.base import EpochRun, FitResult
from spikedict.training import encode_in_batches, resolve_device, reweighted_thresholds

__all__ = [
    "AlternatingConfig",
    "AlternatingRun",
    "crop_templates",
    "fit_alternating",
    "lbfgs_template_step",
    "least_squares_template_step",
    "newton_template_step",
    "shift_codes",
    "spare_template_choice",
    "subset_rows",
    "template_change",
]


@dataclass
class AlternatingConfig:
    """Settings of :func:`fit_alternating`.

    Attributes
    ----------
    n_iterations : int
        Outer iterations (codes, then templates).
    n_code_iterations : int
        Encoder (FISTA) iterations per outer iteration, warm-started.
    n_dictionary_iterations : int
        Iterations of the template step (L-BFGS or Newton; the exact Gaussian step needs none).
    template_step : {"auto", "lbfgs", "newton"}
        How the templates are updated with the codes fixed. ``"auto"``: exactly by least squares for an
        identity link (Gaussian) with 1-D templates at stride 1, else L-BFGS. ``"lbfgs"``: always L-BFGS (for
        1-D templates at stride 1 the solver's own, :func:`lbfgs_template_step`; else ``torch.optim.LBFGS``).
        ``"newton"``: Newton iterations on the codes' Gram matrix for any family (1-D templates at stride 1;
        :func:`newton_template_step`): each step far more accurate than L-BFGS's, fits of the standard problem
        no better.
    continuation : float
        Initial sparsity as a multiple of the final one (1 disables continuation).
    n_continuation_iterations : int
        Outer iterations over which the sparsity decays to its final value.
    reweighting : float
        ``delta`` of the reweighted l1 penalty, as a fraction of the median non-zero code after continuation;
        0 keeps the plain l1 penalty throughout.
    padding : int
        Bins of room at each end of the (1-D) templates; 0 for none.
    n_spare_templates : int
        Extra templates learned during continuation and dropped at its end.
    initial_subset : float
        Fraction of the examples coded (and fitted by the template step) in the first iteration, in (0, 1]. It
        grows geometrically to 1 over the continuation iterations (and by the last iteration in any case); 1, or
        no continuation iterations, uses every example in every iteration.
    epoch_subset : float
        Fraction of the examples coded (and fitted by the template step) in each iteration after the growing
        subset has reached every example, in (0, 1]: a fresh random draw each iteration. The last iteration, and
        the one after an iteration that met the ``tolerance``, code every example, so the fit ends on codes of
        every example. 1 codes every example in every iteration after continuation.
    seed : int
        Seed of the random order in which the examples join the subset, and of the draws of ``epoch_subset``.
    tolerance : float
        Stop early once continuation is over (the spare templates dropped, every example coded, one iteration of
        the final penalty run) and an iteration has changed no template by more than this: ``1 - |cos|`` of
        the angle between a template before and after the iteration (see :func:`template_change`). 0 runs every
        iteration.
    batch_size : int
        Examples encoded at once (it bounds memory only). The Newton template step also keeps
        about twice the data on the model's device (see :mod:`spikedict._template_steps`).
    device : str
    progress : bool or None
        tqdm bar; None shows it on a terminal only.
    checkpoint_path : str or None
    """

    n_iterations: int = 30
    n_code_iterations: int = 50
    n_dictionary_iterations: int = 10
    template_step: str = "auto"
    continuation: float = 5.0
    n_continuation_iterations: int = 15
    reweighting: float = 0.3
    padding: int = 0
    n_spare_templates: int = 0
    initial_subset: float = 1.0
    epoch_subset: float = 1.0
    seed: int = 0
    tolerance: float = 0.0
    batch_size: int = 1000
    device: str = "auto"
    progress: bool | None = None
    checkpoint_path: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        checks = [
            (self.n_iterations >= 1, "n_iterations must be >= 1"),
            (self.n_code_iterations >= 1, "n_code_iterations must be >= 1"),
            (self.n_dictionary_iterations >= 1, "n_dictionary_iterations must be >= 1"),
            (self.template_step in ("auto", "lbfgs", "newton"), "template_step must be 'auto', 'lbfgs' or 'newton'"),
            (self.continuation >= 1, "continuation must be >= 1 (1 disables it)"),
            (self.n_continuation_iterations >= 0, "n_continuation_iterations must be >= 0"),
            (self.reweighting >= 0, "reweighting must be >= 0 (0 disables it)"),
            (self.padding >= 0, "padding must be >= 0"),
            (self.n_spare_templates >= 0, "n_spare_templates must be >= 0"),
            (
                _is_real(self.initial_subset) and 0 < self.initial_subset <= 1,
                "initial_subset must be a number in (0, 1]",
            ),
            (_is_real(self.epoch_subset) and 0 < self.epoch_subset <= 1, "epoch_subset must be a number in (0, 1]"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (
                _is_real(self.tolerance) and math.isfinite(self.tolerance) and self.tolerance >= 0,
                "tolerance must be a finite number >= 0 (0 runs every iteration)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {asdict(self)}.")


# ------------------------------------------------------------------------------------------- helpers
def _is_real(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def shift_codes(codes: Tensor, shift: int) -> Tensor:
    """Codes moved ``shift`` bins later along the last axis (earlier if negative), zero-filled.

    If template ``h'(u) = h(u + shift)``, then ``decode(shift_codes(x, shift), h')`` equals ``decode(x, h)``
    wherever no event falls off the ends.
    """
    if shift == 0:
        return codes.clone()
    out = torch.zeros_like(codes)
    if shift > 0:
        out[..., shift:] = codes[..., :-shift]
    else:
        out[..., :shift] = codes[..., -shift:]
    return out


def template_change(before: Tensor, after: Tensor) -> float:
    """Largest ``1 - |cos|`` over templates between two sets of templates of the same shape.

    About half the squared angle (in radians) by which the template that moved most turned: 1e-6 is a turn of
    about 0.0014, a template error ``sqrt(1 - cos^2)`` of about 0.0014 between the two. Computed in float64.

    Parameters
    ----------
    before, after : Tensor, shape (n_templates, n_channels, *template_shape)

    Returns
    -------
    float
        In [0, 1]; 1 for a template of zero norm.
    """
    before, after = before.detach().double().flatten(1), after.detach().double().flatten(1)
    norms = before.norm(dim=1) * after.norm(dim=1)
    cosines = ((before * after).sum(1) / norms).nan_to_num(0.0).abs()
    return float((1 - cosines).clamp(min=0, max=1).max())


def crop_templates(templates: Tensor, codes: Tensor, padding: int) -> tuple[Tensor, Tensor]:
    """Re-centre padded 1-D templates on their window of highest energy.

    Parameters
    ----------
    templates : Tensor, shape (n_templates, n_channels, template_size + 2 * padding)
    codes : Tensor, shape (n_examples, n_templates, n_code_bins)
    padding : int

    Returns
    -------
    (templates, codes)
        The templates with the best window of ``template_size`` bins moved to the middle and zeros around it,
        and the codes shifted so that the decoded signal is unchanged up to the energy that was cut.
    """
    size = templates.shape[-1] - 2 * padding
    energy = (templates**2).sum(dim=1)
    cumulative = F.pad(energy.cumsum(dim=1), (1, 0))
    starts = (cumulative[:, size:] - cumulative[:, :-size]).argmax(dim=1).tolist()
    cropped = torch.zeros_like(templates)
    codes = codes.clone()
    for index, start in enumerate(starts):
        cropped[index, :, padding : padding + size] = templates[index, :, start : start + size]
        codes[:, index] = shift_codes(codes[:, index], start - padding)
    return cropped, codes


def spare_template_choice(templates: Tensor, usage: Tensor, n_keep: int, max_similarity: float = 0.7) -> list[int]:
    """Indices of the ``n_keep`` templates to keep: the most used that are not shifted copies of a kept one.

    Parameters
    ----------
    templates : Tensor, shape (n_templates, n_channels, *template_shape)
        1-D or 2-D.
    usage : Tensor, shape (n_templates,)
        How much each template explains (e.g. the sum of its codes times its norm).
    n_keep : int
    max_similarity : float
        Largest absolute normalised cross-correlation (over all lags) allowed between two kept templates;
        if too few templates pass, the most used of the rest fill the gap.

    Returns
    -------
    list of int, in order of decreasing usage.
    """
    unit = templates / templates.flatten(1).norm(dim=1).clamp(min=1e-12).reshape((-1,) + (1,) * (templates.ndim - 1))
    convolution = F.conv1d if templates.ndim == 3 else F.conv2d
    padding = tuple(size - 1 for size in templates.shape[2:])
    order = usage.argsort(descending=True).tolist()
    kept: list[int] = []
    for index in order:
        similar = any(
            float(convolution(unit[index : index + 1], unit[other : other + 1], padding=padding).abs().max())
            > max_similarity
            for other in kept
        )
        if not similar:
            kept.append(index)
        if len(kept) == n_keep:
            return kept
    return kept + [index for index in order if index not in kept][: n_keep - len(kept)]


def subset_rows(
    n_examples: int, config: AlternatingConfig, iteration: int, previous_change: float = math.nan
) -> Tensor | None:
    """The examples coded at ``iteration`` (sorted), or None for all of them.

    While the subset grows, the fraction is ``initial_subset ** (1 - iteration / horizon)`` (at least one
    example), with ``horizon`` the continuation iterations but at most ``n_iterations - 1``, so that the last
    iteration codes every example. The examples join in the order of a random permutation drawn with
    ``config.seed``, so each subset holds the previous one, and a resumed fit sees the same subsets.

    From ``horizon`` on, with ``config.epoch_subset`` below 1, each iteration but the last codes
    ``ceil(epoch_subset * n_examples)`` examples, a draw seeded by ``config.seed`` and the iteration, so that a
    resumed fit sees the same draws; an iteration whose predecessor turned no template by more than the
    tolerance (``previous_change``) codes every example, so that the fit can end on it.
    """
    horizon = min(config.n_continuation_iterations, config.n_iterations - 1)
    if horizon <= 0 or iteration >= horizon:
        settled = config.tolerance > 0 and previous_change <= config.tolerance
        if config.epoch_subset >= 1 or iteration >= config.n_iterations - 1 or settled:
            return None
        n_rows = math.ceil(config.epoch_subset * n_examples - 1e-9)
        if n_rows >= n_examples:
            return None
        # any integer seed (torch takes 64 bits), a different stream per iteration
        generator = torch.Generator().manual_seed((config.seed * 1_000_003 + iteration) % 2**63)
        return torch.randperm(n_examples, generator=generator)[:n_rows].sort().values
    if config.initial_subset >= 1:
        return None
    progress = iteration / horizon
    # the tolerance keeps a fraction given as n_first / n_examples from rounding up to n_first + 1
    n_rows = max(1, math.ceil(config.initial_subset ** (1.0 - progress) * n_examples - 1e-9))
    if n_rows >= n_examples:
        return None
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(config.seed))
    return order[:n_rows].sort().values


def _sparsity_at(final: float, start: float, config: AlternatingConfig, iteration: int) -> float:
    """Geometric decay from ``start`` to ``final`` over the continuation iterations."""
    if config.n_continuation_iterations == 0 or start <= final:
        return final
    progress = min(iteration / config.n_continuation_iterations, 1.0)
    return final * (start / final) ** (1.0 - progress)


@torch.no_grad()
def largest_useful_sparsity(model: DCEA, y: Tensor, family: Family, batch_size: int) -> float:
    """``max H^T residual`` at zero codes (``max |.|`` for two-sided codes): above it every code stays zero."""
    device = model.templates.device
    operator = ConvolutionOperator(model.templates, tuple(y.shape[2:]), model.stride)
    baseline = model.baseline.reshape((1, -1) + (1,) * (y.ndim - 2))
    largest = 0.0
    for rows in _chunks(y.shape[0], batch_size):
        batch = y[rows].to(device)
        residual = family.select(rows).to(device).residual(batch, baseline.expand_as(batch))
        gradient = operator.correlate(residual)
        largest = max(largest, float(gradient.max() if model.nonnegative_codes else gradient.abs().max()))
    return largest


# -------------------------------------------------------------------------------------------- steps
def _data_loss(
    model: DCEA, y: Tensor, codes: Tensor, family: Family, batch_size: int, backward: bool, n_values: int | None = None
) -> float:
    """Mean NLL per bin (divided by the family's residual scale), gradients accumulated chunk by chunk.

    ``n_values`` divides the sum instead of ``y.numel()`` (a process's share of a distributed fit).
    """
    device = model.templates.device
    total = 0.0
    n_values = y.numel() if n_values is None else n_values
    for rows in _chunks(y.shape[0], batch_size):
        batch = y[rows].to(device)
        eta = model.decode(codes[rows].to(device), batch.shape[2:])
        loss = family.select(rows).to(device).negative_log_likelihood(batch, eta).sum()
        loss = loss / (n_values * family.residual_scale)
        if backward:
            loss.backward()
        total += float(loss.detach())
    return total


def _template_step(
    model: DCEA, y: Tensor, codes: Tensor, family: Family, config: AlternatingConfig, reduce: Reduce | None = None
) -> None:
    """Minimise the data loss plus the smoothness penalty over the templates (and a learned baseline).

    See ``AlternatingConfig.template_step``: by default exactly by least squares for Gaussian data with 1-D
    templates at stride 1, else L-BFGS (the solver's own for 1-D templates at stride 1; see
    :mod:`spikedict._template_steps`).
    """
    gram_step = model.templates.ndim == 3 and tuple(model.stride) == (1,)
    if config.template_step == "newton" and not gram_step:
        raise ValueError("template_step='newton' needs 1-D templates at stride 1; use 'auto' or 'lbfgs'.")
    if reduce is not None and not gram_step:
        raise ValueError(
            "a distributed alternating fit needs 1-D templates at stride 1 (its template steps sum their statistics "
            "over the processes); fit 2-D or strided templates in one process, or with solver='backprop'."
        )
    shared = {} if reduce is None else {"reduce": reduce}
    if config.template_step == "newton":
        newton_template_step(model, y, codes, family, config.n_dictionary_iterations, config.batch_size, **shared)
    elif config.template_step == "auto" and gram_step and family.linear_residual:
        least_squares_template_step(model, y, codes, family, config.batch_size, **shared)
    elif gram_step:
        lbfgs_template_step(model, y, codes, family, config.n_dictionary_iterations, config.batch_size, **shared)
    else:
        _lbfgs_template_step(model, y, codes, family, config)


def _lbfgs_template_step(model: DCEA, y: Tensor, codes: Tensor, family: Family, config: AlternatingConfig) -> None:
    """The template step by ``torch.optim.LBFGS`` (strong Wolfe line search), any templates."""
    parameters = [p for p in (model.templates, model.baseline) if p.requires_grad]
    optimizer = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=config.n_dictionary_iterations,
        history_size=10,
        tolerance_grad=0.0,  # the loss is a mean per bin: tiny gradients are not convergence; max_iter decides
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    # L-BFGS's line search squares gradients and loss differences, which overflows float32 once the gradients
    # pass ~1e9 (Gaussian data in the 1e5s). The objective is divided by the l1 norm of its first gradient (when
    # above 1): L-BFGS's iterates do not depend on that scale, since its first step is gradient / ||gradient||_1.
    scale: list[float] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        total = _data_loss(model, y, codes, family, config.batch_size, backward=True)
        penalty = model.penalty()
        if penalty.requires_grad:
            penalty.backward()
        gradients = [p.grad for p in parameters if p.grad is not None]
        if not scale:
            scale.append(max(1.0, sum(float(g.abs().sum()) for g in gradients)))
        for gradient in gradients:
            gradient.div_(scale[0])
        return torch.tensor((total + float(penalty.detach())) / scale[0], dtype=parameters[0].dtype)

    optimizer.step(closure)


@torch.no_grad()
def _safe_warm_start(
    model: DCEA, y: Tensor, family: Family, codes: Tensor, weights: Tensor | float, batch_size: int
) -> Tensor:
    """The warm start with zero codes for the examples it fits worse than zero codes do.

    A working encoder lowers ``NLL / residual_scale + sum(weights * |codes|)`` below its value at zero codes.
    A warm start above that value is far from the solution: after the spare templates are dropped, the kept
    templates' codes can leave rates that the dropped ones held down (on Poisson counts at high contrast the
    loss rose by orders of magnitude), and a fixed-step encoder started there diverged.
    Such examples start from zero instead, as the first iteration did. With an identity link (Gaussian) the
    objective is quadratic, the encoder's step is safe from any start, and the warm start is kept.
    """
    if family.linear_residual or not bool(codes.any()):
        return codes
    device = model.templates.device
    restart = torch.zeros(codes.shape[0], dtype=torch.bool)
    for rows in _chunks(y.shape[0], batch_size):
        batch, start = y[rows].to(device), codes[rows].to(device)
        batch_family = family.select(rows).to(device)
        penalty = (weights[rows].to(device) if isinstance(weights, Tensor) else weights) * start.abs()
        at_start = batch_family.negative_log_likelihood(batch, model.decode(start, batch.shape[2:]))
        # on the scale of the encoder's objective for this batch (its family's residual scale, e.g. the batch's
        # largest number of binomial trials), as encode_in_batches gives it the same batches
        scale = batch_family.residual_scale
        at_start = at_start.flatten(1).sum(1, dtype=torch.float64) / scale
        at_start = at_start + penalty.flatten(1).sum(1, dtype=torch.float64)
        baseline = model.baseline.detach().reshape((1, -1) + (1,) * (batch.ndim - 2)).expand_as(batch)
        at_zero = batch_family.negative_log_likelihood(batch, baseline).flatten(1).sum(1, dtype=torch.float64)
        restart[rows] = (~torch.isfinite(at_start) | (at_start > at_zero / scale)).cpu()
    if not bool(restart.any()):
        return codes
    codes = codes.clone()
    codes[restart] = 0.0
    return codes


@torch.no_grad()
def _normalise(model: DCEA, codes: Tensor) -> Tensor:
    """Project the templates onto their constraints and unit norm; rescale the codes to keep the rates."""
    norms = model.templates.flatten(1).norm(dim=1).clamp(min=torch.finfo(model.templates.dtype).tiny)
    model.project_templates_()
    return codes * norms.to(codes.device).reshape((1, -1) + (1,) * (codes.ndim - 2))


def _drop_spare_templates(model: DCEA, codes: Tensor, n_keep: int, reduce: Reduce | None = None) -> Tensor:
    """Keep the ``n_keep`` most used templates that are not shifted copies of one another (and their codes).

    ``reduce`` sums the usage over the processes of a distributed fit, so that all keep the same templates.
    """
    usage = codes.abs().sum(dim=tuple(axis for axis in range(codes.ndim) if axis != 1), dtype=torch.float64)
    if reduce is not None:
        usage = reduce(usage)
    keep = spare_template_choice(model.templates.detach().cpu(), usage, n_keep)
    with torch.no_grad():
        model.templates = torch.nn.Parameter(model.templates.detach()[keep].clone())
    return codes[:, keep].clone()


# ---------------------------------------------------------------------------------------- the loop
def _converged(row: dict[str, Any], config: AlternatingConfig, n_examples: int, spares_dropped: bool) -> bool:
    """Whether the iteration of history ``row`` ends the fit by ``config.tolerance``: past continuation, every
    example coded, the spare templates dropped, and no template turned by more than the tolerance."""
    return (
        config.tolerance > 0
        and row["epoch"] > config.n_continuation_iterations
        and row.get("examples_coded", n_examples) == n_examples
        and spares_dropped
        and row.get("template_change", math.nan) <= config.tolerance
    )


class _Share:
    """This process's examples of the data (all of them outside a distributed fit), indexed like the data.

    ``share[rows]`` is ``data[local[rows]]``; ``shape[0]`` counts the local examples. Tensors and
    :class:`~spikedict.io.RecordingWindows` alike: rows are read when indexed.
    """

    def __init__(self, data: Any, local: Tensor) -> None:
        self.data, self.local = data, local
        self.shape = (len(local),) + tuple(data.shape[1:])
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> Tensor:
        rows = self.local[index]
        if isinstance(rows, Tensor) and rows.ndim == 0:
            rows = rows[None]
        return self.data[rows]

    def numel(self) -> int:
        return math.prod(self.shape)

    def max(self) -> Tensor:
        return self.data.max()


class AlternatingRun(EpochRun):
    """One fit by alternating minimisation, epoch by epoch (see :func:`fit_alternating`).

    In a distributed fit (:mod:`spikedict.distributed`) each process codes its share of the examples
    (:func:`spikedict.distributed.shard`) and keeps their codes; the template step sums its statistics over the
    processes, so every process holds the same templates, those of a one-process fit.
    """

    def __init__(self, model: DCEA, y: Any, sparsity: float, config: AlternatingConfig, n_keep: int) -> None:
        config.validate()
        if not model.tied:
            raise ValueError("alternating minimisation learns tied templates (DCEA-C); train DCEA-UC with backprop.")
        if not 1 <= n_keep <= model.n_templates:
            raise ValueError(f"n_templates must lie in [1, {model.n_templates}], got {n_keep}.")
        self.device = resolve_device(config.device)
        model.to(self.device)
        model.family = model.family.to(self.device)
        self.model, self.y, self.family = model, y, model.family
        self.sparsity, self.config, self.n_keep = float(sparsity), config, int(n_keep)
        self.n_examples, self.signal_shape = int(y.shape[0]), tuple(y.shape[2:])
        self.local = distributed.shard(torch.arange(self.n_examples))
        self.share = _Share(y, self.local) if distributed.is_active() else y
        self.share_family = self.family.select(self.local) if distributed.is_active() else self.family
        self.reduce = distributed.all_reduce_tensor if distributed.is_active() else None
        self.signature = {
            "solver": "alternating",
            "n_channels": model.n_channels,
            "template_shape": list(model.template_shape),
            "n_templates": self.n_keep,
            "n_spare_templates": config.n_spare_templates,
            "family": self.family.config(),
            "n_examples": self.n_examples,
            "signal_shape": list(self.signal_shape),
            # the growing subset's schedule: a resumed fit must see the same subsets
            "initial_subset": config.initial_subset,
            "epoch_subset": config.epoch_subset,
            "subset_seed": config.seed if min(config.initial_subset, config.epoch_subset) < 1 else None,
            # with draws, the tolerance decides which iterations code every example
            "subset_tolerance": config.tolerance if config.epoch_subset < 1 else None,
        }
        self.codes = torch.zeros(
            (len(self.local), model.n_templates) + model.code_shape(self.signal_shape), dtype=model.templates.dtype
        )
        # Continuation starts where some events are still coded: at most half the largest useful sparsity.
        largest = largest_useful_sparsity(model, y, self.family, config.batch_size)
        self.start = max(self.sparsity, min(config.continuation * self.sparsity, 0.5 * largest))
        self.delta: float | None = None
        self.last_change = math.nan  # of the last epoch: an epoch after one within the tolerance codes every example

    # ----------------------------------------------------------------------------------- state
    def _all_codes(self) -> Tensor:
        return distributed.gather_shards(self.codes, self.n_examples)

    def state_dict(self) -> dict[str, Any]:
        return {
            "templates": self.model.templates.detach().cpu().clone(),
            "baseline": self.model.baseline.detach().cpu().clone(),
            "codes": self._all_codes().detach().cpu().clone(),
            "start": self.start,
            "delta": self.delta,
            "last_change": self.last_change,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model
        with torch.no_grad():
            if state["templates"].shape != model.templates.shape:
                model.templates = torch.nn.Parameter(state["templates"].to(self.device), requires_grad=True)
            else:
                model.templates.copy_(state["templates"].to(self.device))
            model.baseline.copy_(state["baseline"].to(self.device))
        self.codes = state["codes"][self.local].clone()
        self.start, self.delta, self.last_change = state["start"], state["delta"], state["last_change"]

    def stop_reason(self, history: Any) -> str | None:
        converged = _converged(history[-1], self.config, self.n_examples, self.model.n_templates == self.n_keep)
        return "converged" if converged else None

    # ----------------------------------------------------------------------------------- epoch
    def _weights(self, epoch: int) -> tuple[float, Tensor | float]:
        """The l1 weight of this epoch and the per-entry weights of the codes (reweighted l1 after continuation)."""
        config = self.config
        current = _sparsity_at(self.sparsity, self.start, config, epoch)
        if config.reweighting <= 0 or epoch < config.n_continuation_iterations:
            return current, current
        if self.delta is None:
            codes = self._all_codes()
            active = codes[codes != 0].abs()
            typical = float(active.median()) if active.numel() else 1.0
            self.delta = max(config.reweighting * typical, 1e-6)
        return current, reweighted_thresholds(self.codes, current, self.delta)

    def _local_rows(self, rows: Tensor | None) -> Tensor | None:
        """Positions in this process's codes of the examples ``rows`` (None: all of them)."""
        if rows is None or not distributed.is_active():
            return rows
        return torch.isin(self.local, rows).nonzero().flatten()

    def _loss(self, codes: Tensor) -> float:
        """Mean NLL per bin of every example (summed over the processes) at ``codes`` of this process's examples."""
        with torch.no_grad():
            local = _data_loss(
                self.model, self.share, codes, self.share_family, self.config.batch_size, False, n_values=self.y.numel()
            )
        return distributed.all_reduce_sum([local])[0]

    def run_epoch(self, epoch: int) -> dict[str, float]:
        model, config = self.model, self.config
        before = model.templates.detach().clone()
        current, weights = self._weights(epoch)
        step = model.update_step_size(self.signal_shape, self.y)
        model.sparsity = current
        rows = subset_rows(self.n_examples, config, epoch, self.last_change)
        positions = self._local_rows(rows)
        if positions is None:
            part, part_family, part_codes, part_weights = self.share, self.share_family, self.codes, weights
        else:
            part = _Share(self.share, positions)
            part_family = self.share_family.select(positions)
            part_codes = self.codes[positions]
            part_weights = weights[positions] if isinstance(weights, Tensor) else weights
        part_codes = _safe_warm_start(model, part, part_family, part_codes, part_weights, config.batch_size)
        encoded = encode_in_batches(
            model,
            part,
            part_family,
            config.n_code_iterations,
            config.batch_size,
            initial=part_codes,
            thresholds=part_weights,
        )
        _template_step(model, part, encoded, part_family, config, self.reduce)
        if positions is None:
            self.codes = encoded
        else:
            self.codes[positions] = encoded
        self.codes = _normalise(model, self.codes)
        if config.padding:
            with torch.no_grad():
                templates, self.codes = crop_templates(model.templates.detach().cpu(), self.codes, config.padding)
                model.templates.copy_(templates.to(self.device))
            self.codes = _normalise(model, self.codes)  # the cut-off energy: unit norm inside the window again
        if model.n_templates > self.n_keep and epoch + 1 >= min(
            config.n_continuation_iterations, config.n_iterations - 1
        ):
            self.codes = _drop_spare_templates(model, self.codes, self.n_keep, self.reduce)
        loss = self._loss(self.codes)
        if not math.isfinite(loss):
            self._diverged(epoch, loss, before, encoded, part, part_family, step)
        change = template_change(before, model.templates) if before.shape == model.templates.shape else math.nan
        self.last_change = change
        coded = self.codes if positions is None else self.codes[positions]
        nonzero, entries, magnitude = distributed.all_reduce_sum(
            [float((coded != 0).sum()), float(coded.numel()), float(self.codes.abs().sum())]
        )
        return {
            "epoch": epoch + 1,
            "sparsity": current,
            "train_loss": loss,
            "validation_loss": math.nan,  # the same columns as the back-propagation solver's history
            "objective": loss + current * magnitude / self.y.numel(),
            "step_size": step,
            "code_density": nonzero / max(entries, 1.0),
            "examples_coded": self.n_examples if rows is None else len(rows),
            "template_change": change,
        }

    def _diverged(
        self, epoch: int, loss: float, before: Tensor, encoded: Tensor, part: Any, family: Family, step: float
    ) -> None:
        """Raise the diagnosis of a non-finite loss: did the encoder or the template step fail?"""
        with torch.no_grad():  # the templates the encoder used
            self.model.templates = torch.nn.Parameter(before.clone(), requires_grad=True)
        raise diverged(
            "the loss",
            loss,
            f"iteration {epoch + 1}",
            encoder_diverged=encoder_failed(
                self.model, encoded, lambda c: _data_loss(self.model, part, c, family, self.config.batch_size, False)
            ),
            step_size=step,
            learning_rate=None,
            finished=epoch,
            checkpoint_path=self.config.checkpoint_path,
        )

    def finish(self, stop_reason: str, history: list[dict[str, Any]]) -> FitResult:
        if self.model.n_templates > self.n_keep:  # interrupted before the spares were dropped
            self.codes = _drop_spare_templates(self.model, self.codes, self.n_keep, self.reduce)
        self.model.sparsity = self.sparsity
        return FitResult(
            history=pd.DataFrame(history),
            stop_reason=stop_reason,
            codes=self._all_codes(),
            reweighting_delta=self.delta,
            best_epoch=len(history),
            residual_rms=self._residual_rms(history),
        )

    @torch.no_grad()
    def _residual_rms(self, history: list[dict[str, Any]]) -> float | None:
        """RMS of ``y - decode(codes)`` for a family with a fitted scale (Gaussian), if every example has codes
        of the last epoch (not so after an interruption while the subset grew, or on a draw of epoch_subset)."""
        if not (self.family.scale_from_residuals and history):
            return None
        if history[-1].get("examples_coded", self.n_examples) != self.n_examples:
            return None
        total = squared_residuals(self.model, self.share, self.codes, self.config.batch_size)
        return math.sqrt(distributed.all_reduce_sum([total])[0] / max(self.y.numel(), 1))


def fit_alternating(
    model: DCEA,
    y: Tensor,
    sparsity: float,
    config: AlternatingConfig | None = None,
    *,
    n_templates: int | None = None,
    resume: bool = False,
    on_iteration_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Learn the templates (and a learned baseline) of a tied ``model`` by alternating minimisation.

    Parameters
    ----------
    model : DCEA
        Tied; its templates are the initial ones (``n_templates + n_spare_templates`` of them, with
        ``config.padding`` bins of room at each end). They are replaced in place; at the end the model holds
        ``n_templates`` templates, still padded (cut them with ``model.templates[..., padding:-padding]``).
    y : Tensor, shape (n_examples, n_channels, *signal_shape), or RecordingWindows
        Validated data.
    sparsity : float
        Final l1 weight (for the NLL divided by the family's residual scale).
    config : AlternatingConfig, optional
    n_templates : int, optional
        Templates to keep when the spare ones are dropped (default: all of the model's minus the spares).
    resume : bool
        Continue from ``config.checkpoint_path``.
    on_iteration_end : callable, optional
        Called as ``on_iteration_end(iteration, row)`` after each iteration (counted from 1) with its history row.

    Returns
    -------
    FitResult
        ``history`` has one row per iteration: ``epoch``, ``sparsity``, ``train_loss`` (mean NLL per bin of all
        examples: those not yet in the growing subset at zero codes, those outside a draw at their last codes),
        ``objective`` (loss plus the l1 term per bin), ``step_size``, ``code_density`` (of the examples coded),
        ``examples_coded`` (the size of the growing subset, or of the draw of ``epoch_subset``),
        ``template_change`` (:func:`template_change` over the iteration; NaN where the spare templates were
        dropped), ``seconds``; ``codes`` are the final codes of every example. ``stop_reason`` is
        ``"n_epochs"``, ``"converged"`` (``config.tolerance``) or ``"interrupted"``.
    """
    config = config or AlternatingConfig()
    n_keep = model.n_templates - config.n_spare_templates if n_templates is None else int(n_templates)
    run = AlternatingRun(model, y, sparsity, config, n_keep)
    return run_epochs(
        run,
        config.n_iterations,
        checkpoint_path=config.checkpoint_path,
        resume=resume,
        progress=config.progress,
        on_epoch_end=on_iteration_end,
    )
