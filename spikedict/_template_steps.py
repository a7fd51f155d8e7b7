"""Template steps of the alternating solver for 1-D templates at stride 1, built on the Gram matrix of the codes.

With the codes ``x`` held fixed, the linear predictor ``eta = b + sum_k h_k * x_k`` is linear in the templates
``h`` and the baseline ``b``, and the Gram matrix of the shifted codes, ``G[(k, s), (l, t)] = sum_n sum_u
x_k[n, u] x_l[n, u + s - t]``, is block Toeplitz: it takes one FFT of the codes to compute.

- :func:`least_squares_template_step` (identity link, Gaussian): the step is a linear system in ``G``, solved
  exactly.
- :func:`lbfgs_template_step` (binomial, Poisson; the solver's default for counts): limited-memory BFGS on
  the same design. Each iteration costs one gradient and one decode of the direction, with the codes' spectra
  computed once per step, and the step length is searched along the predictor ``eta + a * delta`` with
  element-wise passes only.
- :func:`newton_template_step` (binomial, Poisson; on request): each iteration solves the Newton system with
  the data's curvature ``A''(eta)`` replaced by its mean over the bins of each channel (``G`` times a number:
  the exact Hessian for a constant curvature, a close one where events move the rates only a little) and then
  searches the step length along that direction in the same way. Each step is far more accurate than
  L-BFGS's; on the standard problem the fits are no better for it.

Neither uses ``torch.optim``: its optimisers import ``torch._dynamo`` on construction, a cost once per process
that is a sizeable part of a short count fit (benchmarks/README.md); the alternating solver's template step
for 2-D or strided templates, which these steps do not cover, uses ``torch.optim.LBFGS``.

Across processes (``torchrun``), each process may hold a share of the examples (its rows of ``y`` and of the
codes, e.g. chosen by :func:`spikedict.distributed.shard`): pass ``reduce=spikedict.distributed.all_reduce_tensor``
to every step. Then every sum over examples that a step uses (the Gram matrix, the correlations, the data and
curvature sums, the objective's values and derivatives along a direction, which templates have events, and the
number of examples that scales the objective) is summed over the processes, every process takes the same
iterations and line-search decisions, and all end with the templates of one process holding all the examples (up
to the order of floating-point sums). Without ``reduce`` nothing is communicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from spikedict.families import Family
from spikedict.model import DCEA, _fast_length, _mix_spectra

__all__ = ["lbfgs_template_step", "least_squares_template_step", "newton_template_step"]

#: Code spectra are kept between the iterations of a step while they take less memory than this.
_SPECTRA_CACHE_BYTES = 1 << 28

#: ``reduce(tensor)`` sums a float64 tensor over the processes that share the examples, in place, and returns
#: it (:func:`spikedict.distributed.all_reduce_tensor`); None: this process holds every example.
Reduce = Callable[[Tensor], Tensor]


def _summed(reduce: Reduce | None, *parts: Tensor) -> tuple[Tensor, ...]:
    """The tensors ``parts`` (on one device) summed over the processes in float64, with one call of ``reduce``.

    Without ``reduce`` they are returned as given.
    """
    if reduce is None:
        return parts
    flat = reduce(torch.cat([part.reshape(-1).to(torch.float64) for part in parts]))
    pieces = torch.split(flat, [part.numel() for part in parts])
    return tuple(piece.reshape(part.shape) for piece, part in zip(pieces, parts))


def _summed_numbers(reduce: Reduce | None, *numbers: float) -> tuple[float, ...]:
    """Python numbers summed over the processes with one call of ``reduce`` (as given without)."""
    if reduce is None:
        return numbers
    return tuple(reduce(torch.tensor(numbers, dtype=torch.float64)).tolist())


def _chunks(n_examples: int, batch_size: int) -> list[Tensor]:
    return [torch.arange(a, min(a + batch_size, n_examples)) for a in range(0, n_examples, batch_size)]


class _ShiftedCodes:
    """The codes as the design matrix of the templates: its Gram matrix, its adjoint and its product.

    Parameters
    ----------
    codes : Tensor, shape (n_examples, n_templates, n_code_bins)
    n_bins : int
        Length of the signals.
    size : int
        Template length.
    batch_size : int
        Examples transformed at once.
    device : torch.device
    dtype : torch.dtype
        Real dtype of the transforms (float64 for exact steps, the model's for iterative ones); the Gram matrix
        and the correlations are accumulated in float64.
    reduce : callable or None
        Sums :meth:`gram` over the processes that share the examples (see ``Reduce``); None: these codes are
        all the examples. :meth:`correlate` and :meth:`decode` stay per chunk, hence per process.
    """

    def __init__(
        self,
        codes: Tensor,
        n_bins: int,
        size: int,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        reduce: Reduce | None = None,
    ) -> None:
        self.codes = codes
        self.reduce = reduce
        self.dtype = dtype
        self.n_bins = n_bins
        self.size = size
        self.device = device
        self.n_templates = codes.shape[1]
        self.n_fft = _fast_length(n_bins)  # >= the code length + size - 1: no circular wrap of the lags used
        self.chunks = _chunks(codes.shape[0], batch_size)
        n_frequencies = self.n_fft // 2 + 1
        cache_bytes = codes.shape[0] * self.n_templates * n_frequencies * 2 * dtype.itemsize
        self._cache: dict[int, Tensor] | None = {} if cache_bytes <= _SPECTRA_CACHE_BYTES else None

    def spectra(self, index: int) -> Tensor:
        """rfft of chunk ``index`` of the codes, shape (n_chunk, n_templates, n_frequencies)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        x = self.codes[self.chunks[index]].to(device=self.device, dtype=self.dtype)
        spectra = torch.fft.rfft(x, n=self.n_fft)
        if self._cache is not None:
            self._cache[index] = spectra
        return spectra

    def gram(self) -> tuple[Tensor, Tensor]:
        """``(G, code_sums)``: G of shape (n_templates * size, n_templates * size), ``code_sums[k] = sum x_k``."""
        k, size = self.n_templates, self.size
        lags = torch.zeros((k, k, 2 * size - 1), dtype=torch.float64, device=self.device)
        code_sums = torch.zeros(k, dtype=torch.float64, device=self.device)
        for index, rows in enumerate(self.chunks):
            spectra = self.spectra(index)
            conjugate = spectra.conj()
            # Products summed over examples, one template at a time (complex einsum over many tiny matrices is
            # slow on CPUs). correlation[k, l, d] = sum_n sum_u x_k[u] x_l[u + d], d = -(size - 1) .. size - 1
            products = torch.stack([(conjugate[:, j, None] * spectra).sum(0) for j in range(k)])
            correlation = torch.fft.irfft(products, n=self.n_fft).to(torch.float64)
            lags += torch.cat([correlation[..., self.n_fft - size + 1 :], correlation[..., :size]], dim=-1)
            code_sums += self.codes[rows].to(device=self.device).sum(dim=(0, 2), dtype=torch.float64)
        lags, code_sums = _summed(self.reduce, lags, code_sums)
        shift = torch.arange(size, device=self.device)
        lag_index = shift[:, None] - shift[None, :] + size - 1  # (s, t) -> lag s - t
        return lags[:, :, lag_index].permute(0, 2, 1, 3).reshape(k * size, k * size), code_sums

    def correlate(self, signal: Tensor, index: int) -> Tensor:
        """Adjoint, chunk ``index``: ``out[c, k, t] = sum_n sum_u x_k[n, u] signal_c[n, u + t]``, float64.

        ``signal`` has shape (n_chunk, n_channels, n_bins); the result (n_channels, n_templates, size).
        """
        conjugate = self.spectra(index).conj()
        signal_spectra = torch.fft.rfft(signal.to(self.dtype), n=self.n_fft)
        cross = torch.stack([(conjugate[:, j, None] * signal_spectra).sum(0) for j in range(self.n_templates)], 1)
        return torch.fft.irfft(cross, n=self.n_fft)[..., : self.size].to(torch.float64)

    def decode(self, templates: Tensor, index: int) -> Tensor:
        """``sum_k templates_k * x_k`` for chunk ``index``: (n_chunk, n_channels, n_bins), in the design's dtype."""
        template_spectra = torch.fft.rfft(templates.to(self.dtype), n=self.n_fft)  # (k, c, f)
        product = _mix_spectra(self.spectra(index), template_spectra)
        return torch.fft.irfft(product, n=self.n_fft)[..., : self.n_bins]


def _roughness(model: DCEA, size: int, scale: float, device: torch.device) -> Tensor:
    """``2 * scale * smoothness * D^T D`` (size x size), the Hessian of the smoothness penalty per template."""
    difference = torch.diff(torch.eye(size, dtype=torch.float64, device=device), dim=0)
    return 2.0 * scale * model.smoothness * (difference.T @ difference)


def _with_baseline(gram: Tensor, code_sums: Tensor, size: int, n_values_per_channel: float) -> Tensor:
    """The Gram matrix of the templates' design extended by a constant column (the baseline)."""
    border = code_sums.repeat_interleave(size)[:, None]
    corner = gram.new_full((1, 1), n_values_per_channel)
    return torch.cat([torch.cat([gram, border], 1), torch.cat([border.T, corner], 1)])


def _unknowns(model: DCEA) -> Tensor:
    """Current templates (and learned baseline) as columns per channel: (n_templates * size [+ 1], n_channels)."""
    n_templates, n_channels, size = model.templates.shape
    columns = model.templates.detach().to(torch.float64).permute(0, 2, 1).reshape(n_templates * size, n_channels)
    if model.baseline.requires_grad:
        columns = torch.cat([columns, model.baseline.detach().to(torch.float64)[None, :]])
    return columns


def _write_back(model: DCEA, columns: Tensor) -> None:
    n_templates, n_channels, size = model.templates.shape
    templates = columns[: n_templates * size].reshape(n_templates, size, n_channels).permute(0, 2, 1)
    model.templates.copy_(templates.to(model.templates.dtype))
    if model.baseline.requires_grad:
        model.baseline.copy_(columns[-1].to(model.baseline.dtype))


def _ridge(matrix: Tensor) -> float:
    """1e-10 of the largest diagonal entry: keeps a template without events where it was."""
    return 1e-10 * float(matrix.diagonal(dim1=-2, dim2=-1).max().clamp(min=1e-30))


def _unused_unknowns(
    codes: Tensor, size: int, device: torch.device, reduce: Reduce | None = None
) -> tuple[Tensor, int]:
    """``(indices, n_examples)``: the unknowns of the templates whose codes are all zero in every process
    (``size`` consecutive ones each), and the number of examples of all processes.

    Such a template is not determined by the data (the smoothness penalty alone would flatten it); the steps
    keep its current values, as a gradient step would leave it. ``reduce`` sums the codes' magnitudes and the
    counts of examples over the processes (one call); None: ``codes`` are all the examples.
    """
    magnitude = codes.abs().sum(dim=(0, 2))
    n_examples = codes.shape[0]
    if reduce is not None:
        magnitude, count = _summed(
            reduce, magnitude.to(torch.float64), torch.tensor([float(n_examples)], device=magnitude.device)
        )
        n_examples = round(float(count[0]))
    unused = torch.nonzero(magnitude == 0).flatten().to(device)
    return (unused[:, None] * size + torch.arange(size, device=device)).flatten(), n_examples


def _hold(matrix: Tensor, index: Tensor) -> None:
    """Identity rows and columns of ``matrix`` (..., n_unknowns, n_unknowns) at ``index``, in place: those
    unknowns solve to their right-hand side, uncoupled from the others."""
    matrix[..., index, :] = 0.0
    matrix[..., :, index] = 0.0
    matrix[..., index, index] = 1.0


def _check(model: DCEA, y: Tensor, codes: Tensor) -> None:
    if not (model.tied and model.templates.ndim == 3 and tuple(model.stride) == (1,)):
        raise ValueError("the Gram-matrix template steps need tied 1-D templates at stride 1.")
    expected = y.shape[-1] - model.templates.shape[-1] + 1
    if codes.shape[0] != y.shape[0] or codes.shape[1] != model.n_templates or codes.shape[-1] != expected:
        raise ValueError(
            f"codes must have shape ({y.shape[0]}, {model.n_templates}, {expected}) for data of shape "
            f"{tuple(y.shape)}, got {tuple(codes.shape)}."
        )


@torch.no_grad()
def least_squares_template_step(
    model: DCEA, y: Tensor, codes: Tensor, family: Family, batch_size: int = 1000, *, reduce: Reduce | None = None
) -> None:
    """Exact template step for an identity link (Gaussian): solve the normal equations of the templates.

    With the codes ``x`` fixed, ``0.5 ||y - b - sum_k h_k * x_k||^2 + mu ||diff(h)||^2`` (``mu`` the model's
    ``smoothness`` times the number of values and the family's residual scale, the scale of the solver's
    mean loss) is quadratic in the templates ``h`` and a learned baseline ``b``: ``G h = X^T (y - b)`` with
    the block-Toeplitz Gram matrix ``G`` of the shifted codes. The channels share ``G`` and are solved
    together. A template whose codes are all zero keeps its values (as a gradient step would leave it), and a
    ridge of 1e-10 of the largest diagonal entry toward the current templates keeps the system regular.

    Parameters
    ----------
    model : DCEA
        Tied, 1-D templates, stride 1; its templates (and baseline, if it requires grad) are replaced.
    y : Tensor, shape (n_examples, n_channels, n_bins)
    codes : Tensor, shape (n_examples, n_templates, n_bins - template_size + 1)
    family : Family
        With an identity link (``linear_residual``); its ``residual_scale`` divides the data loss.
    batch_size : int
        Examples transformed at once; sums are accumulated in float64. Besides one batch, the step holds the
        codes' spectra (up to 256 MiB, else they are recomputed).
    reduce : callable or None
        For examples shared between processes (``y`` and ``codes`` holding this process's rows):
        :func:`spikedict.distributed.all_reduce_tensor`, which sums the normal equations and the count of
        examples over the processes, so that every process solves the system of all the examples. None (the
        default): ``y`` and ``codes`` are all the examples.
    """
    if not family.linear_residual:
        raise ValueError(f"the least-squares template step needs an identity link (Gaussian), got {family!r}.")
    _check(model, y, codes)
    device = model.templates.device
    n_templates, n_channels, size = model.templates.shape
    design = _ShiftedCodes(codes, y.shape[-1], size, batch_size, device, torch.float64, reduce)
    gram, code_sums = design.gram()
    held, n_examples = _unused_unknowns(codes, size, device, reduce)
    learn_baseline = model.baseline.requires_grad
    baseline = model.baseline.detach().to(torch.float64).reshape(1, -1, 1)
    right = torch.zeros((n_channels, n_templates, size), dtype=torch.float64, device=device)
    data_sums = torch.zeros(n_channels, dtype=torch.float64, device=device)
    for index, rows in enumerate(design.chunks):
        target = y[rows].to(device=device, dtype=torch.float64)
        if not learn_baseline:
            target = target - baseline
        right += design.correlate(target, index)
        data_sums += target.sum(dim=(0, 2))
    right, data_sums = _summed(reduce, right, data_sums)
    right = right.reshape(n_channels, n_templates * size).T  # (n_unknowns, n_channels)
    system = gram.clone()
    if model.smoothness:
        n_values = n_examples * math.prod(y.shape[1:])
        system += torch.block_diag(*[_roughness(model, size, n_values * family.residual_scale, device)] * n_templates)
    if learn_baseline:
        system = _with_baseline(system, code_sums, size, float(n_examples * y.shape[-1]))
        right = torch.cat([right, data_sums[None, :]])
    current = _unknowns(model)
    _hold(system, held)
    right[held] = current[held]
    ridge = _ridge(system)
    system += ridge * torch.eye(system.shape[0], dtype=torch.float64, device=device)
    _write_back(model, torch.linalg.solve(system, right + ridge * current))


class _CountObjective:
    """The template objective of a count family on the codes' design, its gradient, and searches along a direction.

    ``sum NLL(y, b + sum_k h_k * x_k) / (n_values * residual_scale) + smoothness * ||diff(h)||^2`` over the
    unknowns ``columns`` (templates, and the baseline if learned; :func:`_unknowns`), with the codes ``x`` fixed.
    The data and the linear predictor ``eta`` of every chunk of examples stay on the model's device in its
    dtype (element-wise work there, sums in float64), with the codes' spectra (up to 256 MiB).

    With ``reduce`` (``y`` and ``codes`` this process's share of the examples), every sum over examples (the
    gradient, the mean curvature, the values and derivatives along a direction, which templates have events)
    and ``n_examples`` are those of all processes, so every process computes the same numbers.
    """

    def __init__(
        self, model: DCEA, y: Tensor, codes: Tensor, family: Family, batch_size: int, reduce: Reduce | None = None
    ) -> None:
        _check(model, y, codes)
        self.reduce = reduce
        self.device = model.templates.device
        self.n_templates, self.n_channels, self.size = model.templates.shape
        self.dtype = model.templates.dtype
        self.design = _ShiftedCodes(codes, y.shape[-1], self.size, batch_size, self.device, self.dtype, reduce)
        self.learn_baseline = bool(model.baseline.requires_grad)
        self.unused_index, self.n_examples = _unused_unknowns(codes, self.size, self.device, reduce)
        self.n_bins = y.shape[-1]
        self.scale = self.n_examples * math.prod(y.shape[1:]) * family.residual_scale
        self.n_unknowns = self.n_templates * self.size + int(self.learn_baseline)
        self.penalty_hessian = torch.zeros((self.n_unknowns,) * 2, dtype=torch.float64, device=self.device)
        if model.smoothness:
            n_template_unknowns = self.n_templates * self.size
            self.penalty_hessian[:n_template_unknowns, :n_template_unknowns] = torch.block_diag(
                *[_roughness(model, self.size, 1.0, self.device)] * self.n_templates
            )
        self.families = [family.select(rows).to(self.device) for rows in self.design.chunks]
        # contiguous chunks: slices are views of y, not copies
        self.data = [y[int(rows[0]) : int(rows[-1]) + 1].to(self.device, self.dtype) for rows in self.design.chunks]
        self.fixed_baseline = model.baseline.detach().reshape(1, -1, 1)

    def linear(self, columns: Tensor, index: int) -> Tensor:
        """``sum_k h_k * x_k`` (``+ b`` if learned) of chunk ``index`` for unknowns ``columns``."""
        templates = columns[: self.n_templates * self.size].reshape(self.n_templates, self.size, self.n_channels)
        eta = self.design.decode(templates.permute(0, 2, 1), index)
        return eta + columns[-1].to(self.dtype).reshape(1, -1, 1) if self.learn_baseline else eta

    def predictors(self, columns: Tensor) -> list[Tensor]:
        """The linear predictor of every chunk, baseline included."""
        baseline = 0.0 if self.learn_baseline else self.fixed_baseline
        return [self.linear(columns, index) + baseline for index in range(len(self.data))]

    def gradient(self, etas: list[Tensor], columns: Tensor) -> Tensor:
        """Gradient in the unknowns, (n_unknowns, n_channels), float64; zero for the templates without events."""
        residuals = [d - f.mean(e) for f, d, e in zip(self.families, self.data, etas)]
        correlation = torch.zeros(
            (self.n_channels, self.n_templates, self.size), dtype=torch.float64, device=self.device
        )
        sums = torch.zeros(self.n_channels, dtype=torch.float64, device=self.device)
        for index, residual in enumerate(residuals):
            correlation += self.design.correlate(residual, index)
            if self.learn_baseline:
                sums += residual.sum(dim=(0, 2), dtype=torch.float64)
        correlation, sums = _summed(self.reduce, correlation, sums)
        gradient = -correlation.reshape(self.n_channels, self.n_templates * self.size).T / self.scale
        if self.learn_baseline:
            gradient = torch.cat([gradient, -sums[None, :] / self.scale])
        gradient = gradient + self.penalty_hessian @ columns
        gradient[self.unused_index] = 0.0
        return gradient

    def mean_curvature(self, etas: list[Tensor]) -> Tensor:
        """``A''(eta)`` averaged over each channel's bins, on the objective's scale: (n_channels,)."""
        curvature = torch.zeros(self.n_channels, dtype=torch.float64, device=self.device)
        for family, eta in zip(self.families, etas):
            curvature += family.curvature(eta).sum(dim=(0, 2), dtype=torch.float64)
        (curvature,) = _summed(self.reduce, curvature)
        return curvature / (self.n_examples * self.n_bins * self.scale)

    def value(self, etas: list[Tensor], columns: Tensor) -> float:
        total = sum(
            float(f.negative_log_likelihood(d, e).sum(dtype=torch.float64))
            for f, d, e in zip(self.families, self.data, etas)
        )
        (total,) = _summed_numbers(self.reduce, total)
        return total / self.scale + 0.5 * float((columns * (self.penalty_hessian @ columns)).sum())

    def along(
        self, step: float, etas: list[Tensor], deltas: list[Tensor], columns: Tensor, direction: Tensor
    ) -> tuple[float, float, float]:
        """Objective and its first two derivatives in the step length at ``columns + step * direction``."""
        value = first = second = 0.0
        for family, data, eta, delta in zip(self.families, self.data, etas, deltas):
            moved = eta + step * delta
            value += float(family.negative_log_likelihood(data, moved).sum(dtype=torch.float64))
            first += float(((family.mean(moved) - data) * delta).sum(dtype=torch.float64))
            second += float((family.curvature(moved) * delta * delta).sum(dtype=torch.float64))
        value, first, second = _summed_numbers(self.reduce, value, first, second)
        moved_columns = columns + step * direction
        bent = self.penalty_hessian @ direction
        value = value / self.scale + 0.5 * float((moved_columns * (self.penalty_hessian @ moved_columns)).sum())
        first = first / self.scale + float((moved_columns * bent).sum())
        second = second / self.scale + float((direction * bent).sum())
        return value, first, second

    def _value_at(
        self, step: float, etas: list[Tensor], deltas: list[Tensor], columns: Tensor, direction: Tensor
    ) -> float:
        return self.value([e + step * d for e, d in zip(etas, deltas)], columns + step * direction)

    def search(
        self,
        etas: list[Tensor],
        deltas: list[Tensor],
        columns: Tensor,
        direction: Tensor,
        start_value: float,
        first_step: float | None = 1.0,
        refine: bool = True,
    ) -> tuple[float, float]:
        """``(step, value)`` of the lowest objective found along ``direction``.

        It tries ``first_step`` (None: the one-dimensional Newton step from 0) and, with ``refine`` or if that
        does not lower the objective, one Newton correction of it in the step length (within a factor 4); else
        it halves ``first_step``. ``(0, start_value)`` if no step lowers the objective. A trial costs element-wise
        passes only: the predictor moves along ``eta + step * delta``.
        """
        if first_step is None:
            _, first, second = self.along(0.0, etas, deltas, columns, direction)
            if not (math.isfinite(first) and math.isfinite(second) and second > 0 and first < 0):
                return 0.0, start_value
            first_step = -first / second
        if not refine:
            value = self._value_at(first_step, etas, deltas, columns, direction)
            if math.isfinite(value) and value < start_value:
                return first_step, value
        best_step, best_value = 0.0, start_value
        value, first, second = self.along(first_step, etas, deltas, columns, direction)
        if math.isfinite(value) and math.isfinite(first) and math.isfinite(second):
            if value < best_value:
                best_step, best_value = first_step, value
            if second > 0:
                step = min(max(first_step - first / second, 0.25 * first_step), 4.0 * first_step)
                value = self._value_at(step, etas, deltas, columns, direction)
                if math.isfinite(value) and value < best_value:
                    best_step, best_value = step, value
        step = first_step
        while best_step == 0.0 and step > 1e-8 * first_step:
            step *= 0.5
            value = self._value_at(step, etas, deltas, columns, direction)
            if math.isfinite(value) and value < best_value:
                best_step, best_value = step, value
        return best_step, best_value


#: ``direction_of(objective, etas, columns, gradient) -> (direction, first step length or None)``
_DirectionRule = Callable[[_CountObjective, list[Tensor], Tensor, Tensor], tuple[Tensor, float | None]]


def _run_count_step(
    model: DCEA,
    y: Tensor,
    codes: Tensor,
    family: Family,
    direction_of: _DirectionRule,
    n_iterations: int,
    batch_size: int,
    tolerance: float,
    on_move: Callable[[Tensor, Tensor], None] | None = None,
    refine: bool = True,
    reduce: Reduce | None = None,
) -> int:
    """The iterations the count steps share: gradient, direction, stopping test, line search, move.

    ``direction_of`` gives a descent direction and the step length to try first; ``on_move(move,
    gradient_change)`` hears of each move with the gradient's change over it (the L-BFGS memory); ``refine``
    is passed to :meth:`_CountObjective.search`; ``reduce`` to :class:`_CountObjective` (every number the
    iterations decide on is then the same in every process). Returns the number of iterations that moved the
    unknowns.
    """
    objective = _CountObjective(model, y, codes, family, batch_size, reduce)
    columns = _unknowns(model)  # (n_unknowns, n_channels)
    etas = objective.predictors(columns)
    value = objective.value(etas, columns)
    previous: tuple[Tensor, Tensor] | None = None  # (last move, gradient before it)
    iterations_run = 0
    for _ in range(n_iterations):
        gradient = objective.gradient(etas, columns)
        if previous is not None and on_move is not None:
            on_move(previous[0], gradient - previous[1])
        direction, first_step = direction_of(objective, etas, columns, gradient)
        # The decrease a quadratic model along the direction predicts (half the Newton decrement for Newton's):
        # robust to the rounding of the objective's value, which in float32 hides changes below ~1e-8 of it.
        slope = float((gradient * direction).sum())
        if first_step is None:  # the step length comes from the search; only a flat start stops here
            if slope >= 0.0:
                break
        elif -0.5 * slope * first_step <= tolerance * max(abs(value), 1e-30):
            break
        deltas = [objective.linear(direction, index) for index in range(len(etas))]
        step, new_value = objective.search(etas, deltas, columns, direction, value, first_step, refine)
        if step == 0.0:
            break
        columns = columns + step * direction
        etas = [e + step * delta for e, delta in zip(etas, deltas)]
        value = new_value
        previous = (step * direction, gradient)
        iterations_run += 1
    _write_back(model, columns)
    return iterations_run


@torch.no_grad()
def newton_template_step(
    model: DCEA,
    y: Tensor,
    codes: Tensor,
    family: Family,
    n_iterations: int = 10,
    batch_size: int = 1000,
    tolerance: float = 1e-10,
    *,
    reduce: Reduce | None = None,
) -> int:
    """Template step for count families: Newton with the curvature averaged over the bins, exact line search.

    Minimises ``sum NLL(y, b + sum_k h_k * x_k) / (n_values * residual_scale) + smoothness * ||diff(h)||^2``
    (the alternating solver's template objective) over the templates ``h`` and a learned baseline ``b``, with
    the codes ``x`` fixed. Each iteration

    1. takes the gradient (the codes correlated with the residuals ``y - mean(eta)``);
    2. solves, per channel, the Newton system whose Hessian ``X^T diag(A''(eta)) X`` has ``A''(eta)`` (the
       family's ``variance``) replaced by its mean over that channel's bins: ``mean(A'') * G``, with the Gram
       matrix ``G`` of the shifted codes computed once per step, plus the penalty's Hessian;
    3. minimises the objective along that direction by one-dimensional Newton on the step length (the
       predictor moves along ``eta + a * delta``, so a trial costs element-wise passes only), halving the
       step until the objective decreases if Newton's does not.

    It stops after ``n_iterations``, or once the decrease that the Newton model predicts is below ``tolerance``
    times the objective, or when no step lowers it. Templates whose codes are all zero keep their values. An
    identity link (Gaussian) gets the exact :func:`least_squares_template_step` instead.

    Parameters
    ----------
    model : DCEA
        Tied, 1-D templates, stride 1; its templates (and baseline, if it requires grad) are replaced.
    y : Tensor, shape (n_examples, n_channels, n_bins)
    codes : Tensor, shape (n_examples, n_templates, n_bins - template_size + 1)
    family : Family
        A family whose ``variance`` is ``A''`` (binomial, Poisson); ``family.select(rows)`` gives the family
        of a batch of examples (per-example binomial trials), so with examples shared between processes it
        is the family of this process's rows.
    n_iterations : int
    batch_size : int
        Examples transformed at once. The step keeps the linear predictor and the direction of every example
        (twice the data's size, in the model's dtype) and the codes' spectra (up to 256 MiB) on the model's
        device.
    tolerance : float
        Relative predicted decrease at which to stop (0: run all ``n_iterations``).
    reduce : callable or None
        For examples shared between processes (``y``, ``codes`` and ``family`` holding this process's rows):
        :func:`spikedict.distributed.all_reduce_tensor`, which sums every quantity the iterations use over the
        processes, so that every process takes the same iterations and ends with the templates of all the
        examples. None (the default): ``y`` and ``codes`` are all the examples.

    Returns
    -------
    int
        Iterations that moved the templates (1 for an identity link, solved exactly).
    """
    if family.linear_residual:
        least_squares_template_step(model, y, codes, family, batch_size, reduce=reduce)
        return 1
    gram: list[Tensor] = []

    def newton_direction(
        objective: _CountObjective, etas: list[Tensor], columns: Tensor, gradient: Tensor
    ) -> tuple[Tensor, float]:
        if not gram:
            matrix, code_sums = objective.design.gram()
            if objective.learn_baseline:
                matrix = _with_baseline(
                    matrix, code_sums, objective.size, float(objective.n_examples * objective.n_bins)
                )
            gram.append(matrix)
        curvature = objective.mean_curvature(etas)
        hessians = curvature.reshape(-1, 1, 1) * gram[0] + objective.penalty_hessian  # (c, n_unknowns, n_unknowns)
        _hold(hessians, objective.unused_index)  # their gradient is zero: they stay
        identity = torch.eye(objective.n_unknowns, dtype=torch.float64, device=objective.device)
        hessians = hessians + _ridge(hessians) * identity
        return -torch.linalg.solve(hessians, gradient.T.unsqueeze(-1)).squeeze(-1).T, 1.0

    return _run_count_step(
        model, y, codes, family, newton_direction, n_iterations, batch_size, tolerance, reduce=reduce
    )


@torch.no_grad()
def lbfgs_template_step(
    model: DCEA,
    y: Tensor,
    codes: Tensor,
    family: Family,
    n_iterations: int = 10,
    batch_size: int = 1000,
    tolerance: float = 1e-10,
    history_size: int = 10,
    *,
    reduce: Reduce | None = None,
) -> int:
    """Template step for count families: L-BFGS on the codes' design, with a line search in the step length.

    The same objective as :func:`newton_template_step`, minimised by limited-memory BFGS (two-loop recursion
    over the last ``history_size`` moves, initial scaling ``s.y / y.y``). The first direction is the negative
    gradient, scaled by the one-dimensional Newton step along it; later ones take the quasi-Newton step whole
    when it lowers the objective, as ``torch.optim.LBFGS`` does, and search the step length only when it does
    not. Searching every step further lowered the objective faster but, early in a fit, when the templates have
    a few events each, fitted those events' noise so that the next code steps found no events (see
    benchmarks/README.md). Each iteration costs one gradient and one decode of the direction (the codes'
    spectra are computed once per step), and there is no ``torch.optim`` import.

    Parameters
    ----------
    model, y, codes, family, n_iterations, batch_size, tolerance
        As for :func:`newton_template_step`.
    history_size : int
        Moves remembered.
    reduce : callable or None
        As for :func:`newton_template_step`: :func:`spikedict.distributed.all_reduce_tensor` where each
        process holds a share of the examples, None (the default) where ``y`` and ``codes`` are all of them.

    Returns
    -------
    int
        Iterations that moved the templates.
    """
    moves: list[tuple[Tensor, Tensor, float]] = []  # (s, y, 1 / s.y), oldest first

    def remember(move: Tensor, gradient_change: Tensor) -> None:
        curvature = float((move * gradient_change).sum())
        if curvature > 1e-10 * float(move.norm() * gradient_change.norm()):
            moves.append((move, gradient_change, 1.0 / curvature))
            del moves[:-history_size]

    def lbfgs_direction(
        objective: _CountObjective, etas: list[Tensor], columns: Tensor, gradient: Tensor
    ) -> tuple[Tensor, float | None]:
        if not moves:
            return -gradient, None
        q = gradient.clone()
        weights = []
        for move, change, inverse in reversed(moves):
            weight = inverse * float((move * q).sum())
            q -= weight * change
            weights.append(weight)
        _, change, inverse = moves[-1]
        r = q / (inverse * float((change * change).sum()))  # initial Hessian (s.y / y.y) I
        for (move, change, inverse), weight in zip(moves, reversed(weights)):
            r += (weight - inverse * float((change * r).sum())) * move
        return -r, 1.0

    return _run_count_step(
        model,
        y,
        codes,
        family,
        lbfgs_direction,
        n_iterations,
        batch_size,
        tolerance,
        on_move=remember,
        refine=False,
        reduce=reduce,
    )
