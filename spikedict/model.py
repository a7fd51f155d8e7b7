"""The Deep Convolutional Exponential Auto-encoder as ``torch.nn.Module``.

The encoder unrolls proximal-gradient iterations for the sparse-coding problem

    min_codes  NLL(y | decode(codes) + baseline) / residual_scale + sparsity * ||codes||_1

and the decoder is the convolutional generative model ``eta = sum_c templates_c * codes_c + baseline``.
One iteration (:func:`proximal_gradient_step`) is separate from the loop that runs it
(:meth:`DCEA.encode`), so it can be tested on its own and unrolled or run to convergence.

Shapes, for a 1-D recording (2-D images add one spatial axis everywhere):

- data ``y`` and linear predictor ``eta``: ``(n_examples, n_channels, n_bins)``
- templates: ``(n_templates, n_channels, template_size)``
- codes: ``(n_examples, n_templates, n_code_bins)``, with
  ``n_code_bins = ceil((n_bins - template_size) / stride) + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedict.families import Family

__all__ = [
    "DCEA",
    "ConvolutionOperator",
    "code_shape",
    "correlate",
    "decode",
    "operator_norm_squared",
    "proximal_gradient_step",
    "shrink",
]

Algorithm = Literal["ista", "fista"]

_CONVOLUTIONS = {1: (F.conv1d, F.conv_transpose1d), 2: (F.conv2d, F.conv_transpose2d)}
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}

#: ``operator_norm_squared(method="auto")`` bounds the norm from the templates' spectra on signals at least this
#: many templates long, and uses power iteration on shorter ones. The spectral bound comes closer to the norm the
#: longer the signal is against the templates; raise this to keep power iteration for longer signals.
SPECTRAL_NORM_MIN_LENGTH = 8


def _spatial(templates: Tensor) -> int:
    n_spatial = templates.ndim - 2
    if n_spatial not in _CONVOLUTIONS:
        raise ValueError(
            "templates must have shape (n_templates, n_channels, template_size) or "
            f"(n_templates, n_channels, height, width), got shape {tuple(templates.shape)}."
        )
    return n_spatial


def _as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} value(s), got {value}.")
    return value


def code_shape(
    signal_shape: Sequence[int], template_shape: Sequence[int], stride: int | Sequence[int] = 1
) -> tuple[int, ...]:
    """Spatial shape of the codes for a signal of ``signal_shape`` (spatial axes only).

    Examples
    --------
    >>> code_shape((2000,), (50,))
    (1951,)
    >>> code_shape((64, 65), (11, 11), stride=7)
    (9, 9)
    """
    strides = _as_tuple(stride, len(signal_shape))
    shape = []
    for size, kernel, step in zip(signal_shape, template_shape, strides):
        if size < kernel:
            raise ValueError(
                f"template_size {tuple(template_shape)} is longer than the signal {tuple(signal_shape)}; "
                "use shorter templates or longer examples (a larger n_bins or a longer time window)."
            )
        shape.append(-(-(size - kernel) // step) + 1)
    return tuple(shape)


# Relative cost per point of FFT sizes with a factor 5, against sizes 2^a 3^b: a size with a factor 5 is chosen
# only where the nearest size without one is at least this factor longer. Change it only after timing FFTs of
# both kinds of size on the machines that matter (benchmarks/README.md has the timings it was set from).
_FACTOR_FIVE_COST = 1.15


def _fast_length(n: int) -> int:
    """The FFT size for ``n`` points: an even 2^a 3^b 5^c >= n, the cheapest by ``size * cost``.

    ``cost`` is ``_FACTOR_FIVE_COST`` for sizes with a factor 5, else 1: the smallest such size, unless one
    without a factor 5 is at most 15% longer (2000 -> 2048, 1500 -> 1536, 2500 -> 2592). Only even sizes are
    candidates: odd sizes are slow even when they have only small prime factors.
    """
    ceiling = max(2, 1 << (n - 1).bit_length())  # a power of two: no candidate above it can cost less
    best, best_cost = ceiling, float(ceiling)
    power5 = 1
    while power5 < ceiling:
        power35 = power5
        while power35 < ceiling:
            size = 2 * power35
            while size < n:
                size *= 2
            cost = size * (_FACTOR_FIVE_COST if size % 5 == 0 else 1.0)
            if cost < best_cost or (cost == best_cost and size < best):
                best, best_cost = size, cost
            power35 *= 3
        power5 *= 5
    return best


def _mix_spectra(spectrum: Tensor, weights: Tensor, out: Tensor | None = None) -> Tensor:
    """``sum_k spectrum[:, k] * weights[k]``: (n, k, f) spectra through (k, m, f) weights to (n, m, f).

    One broadcast product per ``k``, not torch's complex einsum/bmm, which on the CPU is much slower over many
    tiny matrices (one per frequency) than these element-wise passes. With ``out`` (no autograd) the sum
    accumulates in place there.
    """
    if out is not None:
        torch.mul(spectrum[:, 0, None], weights[0], out=out)
        for k in range(1, weights.shape[0]):
            out.addcmul_(spectrum[:, k, None], weights[k])
        return out
    total = spectrum[:, 0, None] * weights[0]
    for k in range(1, weights.shape[0]):
        total = total + spectrum[:, k, None] * weights[k]
    return total


class ConvolutionOperator:
    """The convolution ``codes -> sum_c templates_c * codes_c`` and its adjoint, for fixed templates.

    1-D templates with stride 1 use FFTs of a fixed length (the template spectra are computed once),
    which on CPUs is faster than ``conv_transpose1d``; other cases use torch's
    convolutions. Both paths compute the same linear map and are differentiable.

    Parameters
    ----------
    templates : Tensor, shape (n_templates, n_channels, *template_shape)
    signal_shape : tuple of int
        Spatial shape of the signals (``(n_bins,)`` or ``(height, width)``).
    stride : int or tuple of int
    method : {"auto", "fft", "direct"}
        ``"auto"`` picks FFTs for 1-D, stride-1 templates of at least 8 bins.
    """

    def __init__(
        self,
        templates: Tensor,
        signal_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        method: Literal["auto", "fft", "direct"] = "auto",
    ) -> None:
        self.n_spatial = _spatial(templates)
        self.templates = templates
        self.signal_shape = tuple(int(s) for s in signal_shape)
        self.stride = _as_tuple(stride, self.n_spatial)
        self.code_shape = code_shape(self.signal_shape, templates.shape[2:], self.stride)
        if method == "auto":
            use_fft = self.n_spatial == 1 and self.stride == (1,) and templates.shape[-1] >= 8
        elif method in ("fft", "direct"):
            use_fft = method == "fft"
            if use_fft and (self.n_spatial != 1 or self.stride != (1,)):
                raise ValueError("method='fft' supports 1-D templates with stride 1 only.")
        else:
            raise ValueError(f"method must be 'auto', 'fft' or 'direct', got {method!r}.")
        self.use_fft = use_fft
        if use_fft:
            self.n_fft = _fast_length(self.signal_shape[0])
            self.spectra = torch.fft.rfft(templates, n=self.n_fft)
            self.spectra_conj = self.spectra.conj().resolve_conj()
        self._derived_weights: dict[tuple[str, bool], Tensor] = {}
        self._workspace: dict[str, Tensor] = {}

    def decode(self, codes: Tensor, *, workspace: bool = False) -> Tensor:
        """``(n_examples, n_templates, *code_shape) -> (n_examples, n_channels, *signal_shape)``.

        With ``workspace`` (no autograd) the result is written into a buffer the operator keeps: a view valid
        until the next call of the same method with ``workspace``. Loops that call the operator many times then
        allocate nothing. Without FFTs (or in half precision) it allocates as usual.
        """
        if self.use_fft:
            return self._apply(
                codes, [self.spectra], self.signal_shape[0], self._workspace_name("decode", codes, workspace)
            )
        output = _CONVOLUTIONS[self.n_spatial][1](codes, self.templates, stride=self.stride)
        return output[(Ellipsis,) + tuple(slice(0, s) for s in self.signal_shape)]

    def gram(self, codes: Tensor, *, workspace: bool = False) -> Tensor:
        """``correlate(decode(codes))``, the normal operator ``H^T H``, with one forward and one inverse FFT.

        The FFT is at least as long as the signal and ``decode`` fills exactly ``signal_shape`` bins, so the two
        operators can be applied to the spectra in turn without leaving the frequency domain (no wrap-around).
        With more templates than channels the spectra go through the channels, as :meth:`decode` and
        :meth:`correlate` do; otherwise through the templates' cross-spectra ``sum_c conj(H_kc) H_lc``. Without
        FFTs it is the two operators in turn.

        Parameters
        ----------
        codes : Tensor, shape (n_examples, n_templates, *code_shape)
        workspace : bool
            Into the operator's buffers, as for :meth:`decode`.

        Returns
        -------
        Tensor, same shape as ``codes``
        """
        if not self.use_fft:
            return self.correlate(self.decode(codes))
        return self._apply(
            codes, self._gram_weights(), self.code_shape[0], self._workspace_name("gram", codes, workspace)
        )

    def _gram_weights(self) -> list[Tensor]:
        """The spectral weights of :meth:`gram`: through the channels (the decode's, then the correlate's) with
        more templates than channels, else the cross-spectra ``[k, l] = sum_c H_kc conj(H_lc)`` (code k's
        contribution to code l)."""
        if self.spectra.shape[0] > self.spectra.shape[1]:
            return [self.spectra, self._correlate_weights()]
        return [self._derived("gram", lambda: torch.einsum("kcf,lcf->klf", self.spectra, self.spectra_conj))]

    def _correlate_weights(self) -> Tensor:
        """``[c, k] = conj(H_kc)`` per frequency: the weights that mix a signal's spectrum into the codes'."""
        return self._derived("correlate", lambda: self.spectra_conj.transpose(0, 1))

    def _derived(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        """Weights derived from the spectra, computed once per autograd mode: those computed without autograd
        (an encoder's free iterations) carry no gradient to the templates, and must not serve the iterations that
        back-propagate."""
        key = (name, torch.is_grad_enabled())
        if key not in self._derived_weights:
            self._derived_weights[key] = compute().contiguous()
        return self._derived_weights[key]

    def _apply(self, values: Tensor, weights: Sequence[Tensor], length: int, name: str | None = None) -> Tensor:
        """``irfft(mix(rfft(values)))[..., :length]``, mixing through each of ``weights`` in turn (see
        :func:`_mix_spectra`). With ``name`` (no autograd), in the operator's buffers of that name: the result
        is then a view of a buffer, valid until the next call with the same name."""
        if name is None:
            spectrum = torch.fft.rfft(values, n=self.n_fft)
            for weight in weights:
                spectrum = _mix_spectra(spectrum, weight)
            return torch.fft.irfft(spectrum, n=self.n_fft)[..., :length]
        complex_dtype = _COMPLEX[values.dtype]
        n_frequencies = self.n_fft // 2 + 1
        spectrum = self._buffer(f"{name}_in", values.shape[:-1] + (n_frequencies,), complex_dtype, values.device)
        torch.fft.rfft(values, n=self.n_fft, out=spectrum)
        for index, weight in enumerate(weights):
            shape = (values.shape[0], weight.shape[1], n_frequencies)
            buffer = self._buffer(f"{name}_mixed{index}", shape, complex_dtype, values.device)
            spectrum = _mix_spectra(spectrum, weight, buffer)
        output = self._buffer(f"{name}_out", spectrum.shape[:2] + (self.n_fft,), values.dtype, values.device)
        return torch.fft.irfft(spectrum, n=self.n_fft, out=output)[..., :length]

    # Buffers for loops without autograd (the encoder's): fresh multi-megabyte arrays in every iteration leave
    # the CPU's caches and fault their pages in.
    def _buffer(self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        buffer = self._workspace.get(name)
        if buffer is None or buffer.shape != tuple(shape) or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(tuple(shape), dtype=dtype, device=device)
            self._workspace[name] = buffer
        return buffer

    def _in_place(self, values: Tensor) -> bool:
        return self.use_fft and values.dtype in _COMPLEX

    def _workspace_name(self, name: str, values: Tensor, workspace: bool) -> str | None:
        """The buffers' name of a call with ``workspace`` that can use them (FFTs, float32 or float64), else None."""
        return name if workspace and self._in_place(values) else None

    def correlate(self, signal: Tensor, *, workspace: bool = False) -> Tensor:
        """Adjoint of :meth:`decode`: ``(n_examples, n_channels, *signal_shape) -> codes shape``; ``workspace`` as
        for :meth:`decode`."""
        if self.use_fft:
            name = self._workspace_name("correlate", signal, workspace)
            return self._apply(signal, [self._correlate_weights()], self.code_shape[0], name)
        padding: list[int] = []
        for size, n_code, kernel, step in zip(
            reversed(self.signal_shape),
            reversed(self.code_shape),
            reversed(self.templates.shape[2:]),
            reversed(self.stride),
        ):
            padding += [0, (n_code - 1) * step + kernel - size]
        if any(padding):
            signal = F.pad(signal, padding)
        return _CONVOLUTIONS[self.n_spatial][0](signal, self.templates, stride=self.stride)


def decode(
    codes: Tensor, templates: Tensor, stride: int | Sequence[int] = 1, signal_shape: Sequence[int] | None = None
) -> Tensor:
    """Convolutional decoder: ``sum_c templates_c * codes_c``.

    Parameters
    ----------
    codes : Tensor, shape (n_examples, n_templates, *code_shape)
    templates : Tensor, shape (n_templates, n_channels, *template_shape)
    stride : int or tuple of int
        Distance in bins (pixels) between neighbouring code positions.
    signal_shape : tuple of int, optional
        Spatial shape of the output; the full convolution is cropped to it. Default: the full size.

    Returns
    -------
    Tensor, shape (n_examples, n_channels, *signal_shape)
    """
    n_spatial = _spatial(templates)
    if signal_shape is None:
        strides = _as_tuple(stride, n_spatial)
        signal_shape = tuple((n - 1) * s + k for n, s, k in zip(codes.shape[2:], strides, templates.shape[2:]))
    return ConvolutionOperator(templates, signal_shape, stride).decode(codes)


def correlate(signal: Tensor, templates: Tensor, stride: int | Sequence[int] = 1) -> Tensor:
    """Adjoint of :func:`decode`: cross-correlation of the signal with every template.

    Parameters
    ----------
    signal : Tensor, shape (n_examples, n_channels, *signal_shape)
    templates : Tensor, shape (n_templates, n_channels, *template_shape)
    stride : int or tuple of int

    Returns
    -------
    Tensor, shape (n_examples, n_templates, *code_shape)
    """
    return ConvolutionOperator(templates, signal.shape[2:], stride).correlate(signal)


@torch.no_grad()
def operator_norm_squared(
    templates: Tensor,
    signal_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    n_iterations: int = 50,
    generator: torch.Generator | None = None,
    method: Literal["auto", "power", "spectrum"] = "auto",
) -> float:
    """Largest eigenvalue of ``H^T H`` for the convolution with ``templates``.

    Parameters
    ----------
    templates : Tensor, shape (n_templates, n_channels, *template_shape)
    signal_shape : tuple of int
        Spatial shape of the signals the operator acts on (capped at 4096 per axis; the norm of a
        convolution grows with the length towards its limit, which a few thousand bins reach).
    stride : int or tuple of int
    n_iterations : int
        Power iterations.
    generator : torch.Generator, optional
        Source of the power iteration's random start (a fixed default seed if omitted, so results are
        reproducible).
    method : {"auto", "power", "spectrum"}
        ``"power"``: power iteration, which approaches the eigenvalue from below. ``"spectrum"`` (1-D templates
        at stride 1): the largest eigenvalue over frequencies of the templates' ``n_templates x n_templates``
        cross-spectral matrices on an FFT grid at least as long as the (capped) signal. Up to 4096 bins it is an
        upper bound (the convolution is a corner of the circulant one), closer to the eigenvalue the longer the
        signal is against the templates. On longer signals it is the 4096-point grid's maximum, which can fall
        slightly short of the norm, more so for long templates; the ``safety`` factor of
        :meth:`DCEA.update_step_size` is there to cover that. It costs one FFT of the templates instead of
        ``2 * n_iterations``; power iteration ends a little below the eigenvalue after ``n_iterations`` (raise
        them for a closer estimate). How close each method came in the cases measured is in
        ``benchmarks/README.md``.
        ``"auto"``: the spectrum for 1-D templates at stride 1 on signals at least ``SPECTRAL_NORM_MIN_LENGTH``
        templates long, else power iteration.

    Returns
    -------
    float
        ``||H||^2``, the Lipschitz constant of the gradient of ``||y - H x||^2 / 2``.
    """
    if method not in ("auto", "power", "spectrum"):
        raise ValueError(f"method must be 'auto', 'power' or 'spectrum', got {method!r}.")
    shape = tuple(min(int(s), 4096) for s in signal_shape)
    shape = tuple(max(s, k) for s, k in zip(shape, templates.shape[2:]))
    one_dimensional = _spatial(templates) == 1 and _as_tuple(stride, 1) == (1,)
    if method == "spectrum" and not one_dimensional:
        raise ValueError("method='spectrum' supports 1-D templates with stride 1 only.")
    if method == "spectrum" or (
        method == "auto" and one_dimensional and shape[0] >= SPECTRAL_NORM_MIN_LENGTH * templates.shape[-1]
    ):
        spectra = torch.fft.rfft(templates.double(), n=_fast_length(shape[0])).permute(2, 0, 1)  # (f, k, c)
        if spectra.shape[1] <= spectra.shape[2]:
            cross = spectra @ spectra.conj().transpose(1, 2)
        else:
            cross = spectra.conj().transpose(1, 2) @ spectra
        return float(torch.linalg.eigvalsh(cross).max().clamp(min=0))
    codes = code_shape(shape, templates.shape[2:], stride)
    if generator is None:
        generator = torch.Generator(device=templates.device).manual_seed(0)
    x = torch.randn(
        (1, templates.shape[0]) + codes, generator=generator, device=templates.device, dtype=templates.dtype
    )
    x /= x.norm()
    operator = ConvolutionOperator(templates, shape, stride)
    value = 0.0
    for _ in range(n_iterations):
        y = operator.gram(x)
        value = float(y.norm())
        if value == 0.0:
            return 0.0
        x = y / value
    return value


def shrink(
    values: Tensor, threshold: Tensor | float, nonnegative: bool, *, nonnegative_threshold: bool | None = None
) -> Tensor:
    """Proximal operator of ``threshold * ||x||_1`` (plus the constraint ``x >= 0`` if nonnegative).

    One-sided: ``relu(v - threshold)``; two-sided (soft threshold): ``sign(v) * relu(|v| - threshold)``.

    Parameters
    ----------
    values : Tensor
    threshold : float or Tensor broadcastable to ``values``
    nonnegative : bool
        One-sided shrinkage (``x >= 0``).
    nonnegative_threshold : bool, optional
        Whether ``threshold >= 0`` everywhere. Then the soft threshold is computed as
        ``v - clamp(v, -threshold, threshold)``: the same values in two passes over the codes instead of four.
        The two formulas differ where a threshold is negative (a learned threshold may turn negative while it
        trains), so the default is True only for a Python number that is >= 0.
    """
    if nonnegative:
        return F.relu(values - threshold)
    if nonnegative_threshold is None:
        nonnegative_threshold = not isinstance(threshold, Tensor) and threshold >= 0
    if nonnegative_threshold:
        return values - torch.clamp(values, -threshold, threshold)
    return torch.sign(values) * F.relu(values.abs() - threshold)


#: Codes as a pair: the tensor the operators transform (zero-padded to the FFT length in an encoder's
#: workspace) and the view of its first ``code_length`` bins that the element-wise updates work on.
_Codes = tuple[Tensor, Tensor]


class _EncoderIteration:
    """One proximal-gradient iteration of the DCEA encoder: ``shrink(momentum + step * gradient, step * threshold)``.

    The gradient is ``encoder.correlate(family.residual(y, dictionary.decode(momentum) + baseline))``; with
    ``normal`` (identity link, tied, FFTs) it is ``H^T residual(y, baseline) - H^T H momentum / residual_scale``,
    the data correlated once and ``H^T H`` costing two FFTs instead of four. Called with an ``out`` pair, the
    iteration writes into it and into the operators' buffers (no autograd); without, it allocates.
    """

    def __init__(
        self,
        y: Tensor,
        family: Family,
        baseline: Tensor,
        dictionary: ConvolutionOperator,
        encoder: ConvolutionOperator,
        step: float,
        step_threshold: Tensor | float,
        nonnegative: bool,
        nonnegative_threshold: bool | None,
        normal: bool,
    ) -> None:
        self.y, self.family, self.baseline = y, family, baseline
        self.dictionary, self.encoder = dictionary, encoder
        self.step, self.step_threshold = step, step_threshold
        self.nonnegative, self.nonnegative_threshold, self.normal = nonnegative, nonnegative_threshold, normal
        if normal:
            self.data_term = step * dictionary.correlate(family.residual(y, baseline.expand_as(y)))
            self.gram_step = step / family.residual_scale
            self._folded: Tensor | None = None

    def _folded_data_term(self) -> Tensor:
        """The data term minus the threshold: one-sided shrinkage in place is then ``relu`` in one pass."""
        if self._folded is None:
            self._folded = self.data_term - self.step_threshold
        return self._folded

    def __call__(self, momentum: _Codes, out: _Codes | None = None) -> _Codes:
        transformed, codes = momentum
        workspace = out is not None
        if self.normal:
            gram = self.dictionary.gram(transformed, workspace=workspace)
            if workspace:
                update = torch.sub(codes, gram, alpha=self.gram_step, out=out[1])
                if self.nonnegative:
                    return out[0], update.add_(self._folded_data_term()).relu_()
                update.add_(self.data_term)
            else:
                update = torch.sub(torch.add(codes, self.data_term), gram, alpha=self.gram_step)
        else:
            eta = self.dictionary.decode(transformed, workspace=workspace)
            eta = eta.add_(self.baseline) if workspace else eta + self.baseline
            correlation = self.encoder.correlate(self.family.residual(self.y, eta), workspace=workspace)
            update = torch.add(codes, correlation, alpha=self.step, out=None if out is None else out[1])
        if workspace and self.nonnegative:
            return out[0], update.sub_(self.step_threshold).relu_()
        shrunk = shrink(update, self.step_threshold, self.nonnegative, nonnegative_threshold=self.nonnegative_threshold)
        if workspace:
            return out[0], update.copy_(shrunk)
        return shrunk, shrunk


class _Workspace:
    """The code buffers of an encoder run without autograd: the current codes, the spare that receives the next
    ones and (FISTA) the momentum, zero-padded to the operator's FFT length so that the operators transform them
    without a padded copy; the padding stays zero."""

    def __init__(self, codes: Tensor, dictionary: ConvolutionOperator, fista: bool) -> None:
        self.pad = dictionary.n_fft - codes.shape[-1] if dictionary._in_place(codes) else 0
        self.codes = codes
        self.current, self.spare = self._pair(), self._pair()
        self.current[1].copy_(codes)
        self.momentum = self._pair() if fista else None

    def _pair(self) -> _Codes:
        codes, pad = self.codes, self.pad
        full = codes.new_zeros(codes.shape[:-1] + (codes.shape[-1] + pad,)) if pad else torch.empty_like(codes)
        return full, full[..., : codes.shape[-1]]


def _run_encoder(
    iteration: _EncoderIteration, codes: Tensor, n_iterations: int, fista: bool, workspace: bool, n_free: int = 0
) -> Tensor:
    """``n_iterations`` of ``iteration`` from ``codes`` (not modified), with FISTA momentum if ``fista``.

    With ``workspace`` (no autograd) the iterations run in reused buffers; else they allocate, and the first
    ``n_free`` run without recording gradients (truncated back-propagation).
    """
    buffers = _Workspace(codes, iteration.dictionary, fista) if workspace else None
    current: _Codes = buffers.current if buffers else (codes, codes)
    momentum = current
    grad_enabled = torch.is_grad_enabled()
    t = 1.0
    for index in range(n_iterations):
        with torch.set_grad_enabled(grad_enabled and index >= n_free):
            new = iteration(momentum, buffers.spare if buffers else None)
            if fista:
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                # new + (t - 1) / t_next * (new - current), in one pass
                weight = 1.0 + (t - 1.0) / t_next
                if buffers:
                    momentum = buffers.momentum
                    torch.lerp(current[1], new[1], weight, out=momentum[1])
                else:
                    lerped = torch.lerp(current[1], new[1], weight)
                    momentum = (lerped, lerped)
                t = t_next
            else:
                momentum = new
            if buffers:
                buffers.spare = current
            current = new
    return current[1].clone() if buffers and buffers.pad else current[1]


def proximal_gradient_step(
    codes: Tensor,
    y: Tensor,
    family: Family,
    baseline: Tensor,
    dictionary: ConvolutionOperator,
    encoder: ConvolutionOperator,
    step_size: float,
    threshold: Tensor | float,
    nonnegative: bool = True,
    nonnegative_threshold: bool | None = None,
) -> Tensor:
    """One proximal-gradient (ISTA) iteration of the DCEA encoder.

    ``codes + step_size * encoder.correlate(residual)``, shrunk by ``step_size * threshold``, where
    ``residual = family.residual(y, dictionary.decode(codes) + baseline)``.

    Parameters
    ----------
    codes : Tensor, shape (n_examples, n_templates, *code_shape)
    y : Tensor, shape (n_examples, n_channels, *signal_shape)
    family : Family
    baseline : Tensor, broadcastable to ``y``
    dictionary : ConvolutionOperator
        The templates ``H`` that model the data.
    encoder : ConvolutionOperator
        The operator whose adjoint maps residuals to codes: ``dictionary`` itself for tied weights
        (then the step is a proximal-gradient step on the l1-regularised NLL).
    step_size : float
    threshold : float or Tensor of shape (n_templates,)
        The sparsity (tied) or one learned threshold per template (untied).
    nonnegative : bool
    nonnegative_threshold : bool, optional
        Whether every threshold is >= 0 (see :func:`shrink`).

    Returns
    -------
    Tensor, same shape as ``codes``.
    """
    step_threshold = step_size * _per_template(threshold, codes.ndim)
    iteration = _EncoderIteration(
        y, family, baseline, dictionary, encoder, step_size, step_threshold, nonnegative, nonnegative_threshold, False
    )
    return iteration((codes, codes))[1]


def _per_template(threshold: Tensor | float, n_dims: int) -> Tensor | float:
    """One threshold per template, shape (n_templates,), reshaped to broadcast over codes of ``n_dims`` axes."""
    if isinstance(threshold, Tensor) and threshold.ndim == 1:
        return threshold.reshape((1, -1) + (1,) * (n_dims - 2))
    return threshold


class DCEA(nn.Module):
    """Deep Convolutional Exponential Auto-encoder.

    Parameters
    ----------
    n_templates : int
        Number of templates (dictionary elements).
    n_channels : int
        Number of channels (neurons, units, or colour channels) of the data.
    template_shape : int or tuple of int
        Template length in bins (1-D) or ``(height, width)`` (2-D).
    family : Family
        Observation family used inside the encoder.
    sparsity : float
        l1 weight ``lambda`` of the sparse-coding problem (for the NLL divided by the family's
        ``residual_scale``, i.e. per trial for the binomial family).
    n_iterations : int
        Number of unrolled encoder iterations.
    algorithm : {"fista", "ista"}
        FISTA (with momentum) or plain ISTA.
    nonnegative_codes : bool
        One-sided shrinkage (codes >= 0) if True, soft thresholding if False.
    stride : int or tuple of int
        Stride of the convolution (1 for spike trains; e.g. 7 for image patches).
    tied : bool
        True for DCEA-C (one dictionary, interpretable). False for DCEA-UC: encoder and decoder
        weights are separate parameters, initialised from the templates, and the threshold of each
        template is learned.
    learn_baseline : bool
        Whether the per-channel baseline is a trained parameter.
    nonnegative_templates : bool
        Project templates onto ``templates >= 0`` after each step.
    zero_edges : int
        Number of samples at each end of every template held at zero (templates that start and end
        at zero). 1-D only.
    smoothness : float
        Weight of the penalty ``sum ||diff(template)||^2`` returned by :meth:`penalty`.
    generator : torch.Generator, optional
        Source of the random initial templates.
    """

    def __init__(
        self,
        n_templates: int,
        n_channels: int,
        template_shape: int | Sequence[int],
        family: Family,
        *,
        sparsity: float = 0.1,
        n_iterations: int = 50,
        algorithm: Algorithm = "fista",
        nonnegative_codes: bool = True,
        stride: int | Sequence[int] = 1,
        tied: bool = True,
        learn_baseline: bool = True,
        nonnegative_templates: bool = False,
        zero_edges: int = 0,
        smoothness: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        template_shape = (template_shape,) if isinstance(template_shape, int) else tuple(template_shape)
        if n_templates < 1 or n_channels < 1 or any(k < 1 for k in template_shape):
            raise ValueError(
                f"n_templates, n_channels and template sizes must be >= 1, got n_templates={n_templates}, "
                f"n_channels={n_channels}, template_shape={template_shape}."
            )
        if algorithm not in ("ista", "fista"):
            raise ValueError(f"algorithm must be 'ista' or 'fista', got {algorithm!r}.")
        if zero_edges < 0:
            raise ValueError(f"zero_edges must be >= 0 (samples held at zero at each end), got {zero_edges}.")
        if zero_edges and len(template_shape) != 1:
            raise ValueError("zero_edges applies to 1-D templates only.")
        if 2 * zero_edges >= template_shape[0]:
            raise ValueError(
                f"zero_edges={zero_edges} leaves no free sample in templates of size {template_shape[0]}; "
                f"use zero_edges < {math.ceil(template_shape[0] / 2)}."
            )
        self.family = family
        self.sparsity = float(sparsity)
        self.n_iterations = int(n_iterations)
        self.algorithm: Algorithm = algorithm
        self.nonnegative_codes = bool(nonnegative_codes)
        self.stride = _as_tuple(stride, len(template_shape))
        self.tied = bool(tied)
        self.nonnegative_templates = bool(nonnegative_templates)
        self.zero_edges = int(zero_edges)
        self.smoothness = float(smoothness)

        shape = (n_templates, n_channels) + template_shape
        initial = torch.randn(shape, generator=generator)
        self.templates = nn.Parameter(initial)
        self.project_templates_()
        if self.tied:
            self.encoder_templates = None
            self.decoder_templates = None
            self.thresholds = None
        else:
            self.encoder_templates = nn.Parameter(self.templates.detach().clone())
            self.decoder_templates = nn.Parameter(self.templates.detach().clone())
            self.thresholds = nn.Parameter(torch.full((n_templates,), self.sparsity))
        self.baseline = nn.Parameter(torch.zeros(n_channels), requires_grad=learn_baseline)
        self.register_buffer("step_size", torch.tensor(1.0))

    # ------------------------------------------------------------------------- properties
    @property
    def n_templates(self) -> int:
        return self.templates.shape[0]

    @property
    def n_channels(self) -> int:
        return self.templates.shape[1]

    @property
    def template_shape(self) -> tuple[int, ...]:
        return tuple(self.templates.shape[2:])

    def _baseline(self, n_spatial: int) -> Tensor:
        return self.baseline.reshape((1, -1) + (1,) * n_spatial)

    # ----------------------------------------------------------------------- projection
    @torch.no_grad()
    def project_templates_(self) -> None:
        """Project the templates (and untied decoder weights) onto the constraint set, then unit l2 norm."""
        self._project(self.templates)
        if not self.tied and getattr(self, "decoder_templates", None) is not None:
            self._project(self.decoder_templates)

    def _project(self, templates: Tensor) -> None:
        if self.nonnegative_templates:
            templates.clamp_(min=0)
        if self.zero_edges:
            templates[..., : self.zero_edges] = 0
            templates[..., -self.zero_edges :] = 0
        norms = templates.flatten(1).norm(dim=1).clamp(min=torch.finfo(templates.dtype).tiny)
        templates /= norms.reshape((-1,) + (1,) * (templates.ndim - 1))

    @torch.no_grad()
    def set_sparsity(self, sparsity: float) -> None:
        """Set the l1 weight of the codes (and, untied, every template's learned threshold to it)."""
        self.sparsity = float(sparsity)
        if not self.tied:
            self.thresholds.fill_(self.sparsity)

    def penalty(self) -> Tensor:
        """Smoothness penalty ``smoothness * sum ||diff(templates)||^2`` over the template axes."""
        if self.smoothness == 0:
            return self.templates.new_zeros(())
        total = self.templates.new_zeros(())
        weights = self.templates if self.tied else self.decoder_templates
        for axis in range(2, weights.ndim):
            total = total + (torch.diff(weights, dim=axis) ** 2).sum()
        return self.smoothness * total

    @torch.no_grad()
    def update_step_size(self, signal_shape: Sequence[int], y: Tensor | None = None, safety: float = 1.05) -> float:
        """Set the encoder's step to ``1 / (safety * curvature * ||H||^2)`` and return it.

        ``||H||^2`` comes from :func:`operator_norm_squared` on the current templates (their spectra on long 1-D
        signals, else power iteration); the curvature bound comes from the family (and the data ``y`` for the
        Poisson family).
        """
        norm_squared = operator_norm_squared(self.templates, signal_shape, self.stride)
        curvature = self.family.curvature_bound(y if y is not None else self.templates.new_zeros(0))
        step = 1.0 / (safety * curvature * max(norm_squared, 1e-12))
        self.step_size.fill_(step)
        return step

    # ---------------------------------------------------------------------------- encoder
    def code_shape(self, signal_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the codes for signals of spatial shape ``signal_shape``."""
        return code_shape(signal_shape, self.template_shape, self.stride)

    def encode(
        self,
        y: Tensor,
        codes: Tensor | None = None,
        n_iterations: int | None = None,
        n_backprop_iterations: int | None = None,
        family: Family | None = None,
        thresholds: Tensor | None = None,
    ) -> Tensor:
        """Run the unrolled encoder.

        Parameters
        ----------
        y : Tensor, shape (n_examples, n_channels, *signal_shape)
        codes : Tensor, shape (n_examples, n_templates, *code_shape), optional
            Warm start; zeros by default.
        n_iterations : int, optional
            Iterations to run (default: the module's ``n_iterations``).
        n_backprop_iterations : int, optional
            Record gradients through only the last this many iterations (truncated back-propagation);
            the earlier ones run without autograd. Default: all of them.
        family : Family, optional
            Family for these examples (e.g. a per-example binomial ``n_trials`` subset).
        thresholds : Tensor, shape (n_examples, n_templates, *code_shape), optional
            One l1 weight per code entry, in place of the sparsity (weighted l1, as in reweighted-l1
            dictionary learning). Tied models only.

        Returns
        -------
        Tensor, shape (n_examples, n_templates, *code_shape)
        """
        family = self.family if family is None else family
        n_iterations = self.n_iterations if n_iterations is None else int(n_iterations)
        signal_shape = tuple(y.shape[2:])
        dtype = torch.promote_types(y.dtype, self.templates.dtype)
        if codes is None:
            codes = y.new_zeros((y.shape[0], self.n_templates) + self.code_shape(signal_shape), dtype=dtype)
        elif codes.dtype != dtype:  # a warm start of another precision: compute in the wider one
            codes = codes.to(dtype)
        baseline = self._baseline(len(signal_shape))
        dictionary = ConvolutionOperator(self.templates, signal_shape, self.stride)
        encoder = dictionary if self.tied else ConvolutionOperator(self.encoder_templates, signal_shape, self.stride)
        threshold = self.sparsity if self.tied else self.thresholds
        if thresholds is not None:
            if not self.tied:
                raise ValueError("per-entry thresholds apply to tied models only (DCEA-UC learns its own).")
            threshold = thresholds
        step = float(self.step_size)
        n_free = 0 if n_backprop_iterations is None else max(n_iterations - n_backprop_iterations, 0)

        # Identity link (Gaussian), tied, FFT convolutions: the normal-operator form of the gradient.
        normal = self.tied and family.linear_residual and dictionary.use_fft
        # Tied thresholds (the sparsity, or reweighted-l1 weights) are >= 0; learned ones may not be.
        iteration = _EncoderIteration(
            y,
            family,
            baseline,
            dictionary,
            encoder,
            step,
            step * _per_template(threshold, codes.ndim),  # once, not once per iteration
            self.nonnegative_codes,
            True if self.tied else None,
            normal,
        )
        fista = self.algorithm == "fista"
        return _run_encoder(iteration, codes, n_iterations, fista, not torch.is_grad_enabled(), n_free)

    def decode(self, codes: Tensor, signal_shape: Sequence[int] | None = None) -> Tensor:
        """Linear predictor ``eta = decode(codes) + baseline``, shape (n_examples, n_channels, *signal_shape)."""
        weights = self.templates if self.tied else self.decoder_templates
        eta = decode(codes, weights, self.stride, signal_shape)
        return eta + self._baseline(eta.ndim - 2)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Encode then decode: returns ``(eta, codes)`` for data ``y``."""
        codes = self.encode(y)
        return self.decode(codes, y.shape[2:]), codes
