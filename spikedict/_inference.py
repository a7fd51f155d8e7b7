"""Codes and linear predictors of a fitted model: in batches sized for the device, and over a long recording's
windows stitched into one.

A long recording (RecordingWindows) is encoded window by window: each window's codes are kept between the
middles of its overlaps with its neighbours (:func:`~spikedict.io._windows.stitch_cuts`), and the rates are
decoded from the stitched codes, so they equal one decode of the whole recording's codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from spikedict.families import Family
from spikedict.io._windows import RecordingWindows, stitch_cuts
from spikedict.model import DCEA
from spikedict.solvers.base import FitResult
from spikedict.training import encode_in_batches, reweighted_thresholds

__all__ = [
    "encode",
    "encoding_batch_size",
    "fitted_scale",
    "residual_rms",
    "squared_residuals",
    "stitched_codes",
    "stitched_eta",
]

#: Largest tensor of one encoder call, in entries: GPUs stay busy with large calls; on a CPU a call whose FFT
#: buffers stay in the caches is faster (see benchmarks/README.md).
_CALL_ENTRIES = {"cuda": 20_000_000, "cpu": 500_000}


def encoding_batch_size(
    model: DCEA, signal_shape: Sequence[int], device: torch.device | str, n_examples: int | None = None
) -> int:
    """Examples per encoder call: its largest tensor (the codes, or the counts) near a bound that depends on the
    device, and the calls over ``n_examples`` examples (when given) of equal size."""
    bound = _CALL_ENTRIES["cuda" if torch.device(device).type == "cuda" else "cpu"]
    code_entries = model.n_templates * int(np.prod(model.code_shape(signal_shape)))
    count_entries = model.n_channels * int(np.prod(signal_shape))
    largest = max(1, bound // max(code_entries, count_entries, 1))
    if n_examples is None or n_examples <= largest:
        return largest if n_examples is None else max(1, n_examples)
    return math.ceil(n_examples / math.ceil(n_examples / largest))


@torch.no_grad()
def encode(
    model: DCEA,
    y: Tensor,
    family: Family,
    n_iterations: int,
    delta: float | None,
    *,
    set_step: bool = True,
) -> Tensor:
    """Codes of ``y`` from zero with the model's sparsity; with ``delta``, refined under the reweighted l1
    penalty the templates were learned with (started from the plain solution)."""
    if set_step:
        model.update_step_size(y.shape[2:], y)
    batch_size = encoding_batch_size(model, y.shape[2:], model.templates.device, y.shape[0])
    codes = encode_in_batches(model, y, family, n_iterations, batch_size=batch_size)
    if delta:
        weights = reweighted_thresholds(codes, model.sparsity, delta)
        codes = encode_in_batches(model, y, family, n_iterations, batch_size, initial=codes, thresholds=weights)
    return codes


@torch.no_grad()
def squared_residuals(model: DCEA, y: Tensor, codes: Tensor, batch_size: int) -> float:
    """Sum over all values of ``(y - model.decode(codes))^2``, in float64, a batch of examples at a time."""
    device = model.templates.device
    total = 0.0
    for first in range(0, y.shape[0], batch_size):
        batch = y[first : first + batch_size].to(device)
        eta = model.decode(codes[first : first + batch_size].to(device), batch.shape[2:])
        total += float((batch - eta).pow(2).sum(dtype=torch.float64))
    return total


def residual_rms(model: DCEA, y: Tensor, codes: Tensor, batch_size: int) -> float:
    """Root mean square of ``y - model.decode(codes)`` over all values."""
    return math.sqrt(squared_residuals(model, y, codes, batch_size) / max(y.numel(), 1))


def fitted_scale(model: DCEA, family: Family, result: FitResult, sample: Tensor, n_iterations: int) -> Family:
    """``family`` with its scale fitted to the residuals of the fit (the Gaussian's maximum-likelihood ``std``):
    from the solver's final codes where it has them, else from codes inferred on ``sample``."""
    rms = result.residual_rms
    if rms is None:
        codes = encode(model, sample, family, n_iterations, result.reweighting_delta)
        rms = residual_rms(model, sample, codes, max(1, sample.shape[0]))
    return family.with_residual_rms(rms)


def _windows_per_call(model: DCEA, windows: RecordingWindows) -> int:
    return encoding_batch_size(model, (windows.window_bins,), model.templates.device)


def stitched_codes(
    model: DCEA, windows: RecordingWindows, family: Family, n_iterations: int, delta: float | None
) -> Tensor:
    """Codes of the whole recording, shape ``(1, n_templates, n_bins - template_size + 1)``."""
    size = model.template_shape[0]
    code_window, total = windows.window_bins - size + 1, windows.n_bins - size + 1
    cuts = stitch_cuts(windows.starts, code_window, total)
    codes = torch.zeros((1, model.n_templates, total))
    # One step size for the whole recording (its largest count bounds the Poisson curvature), as in fit.
    model.update_step_size((windows.window_bins,), windows)
    per_call = _windows_per_call(model, windows)
    for first in range(0, windows.n_windows, per_call):
        rows = np.arange(first, min(first + per_call, windows.n_windows))
        window_codes = encode(model, windows[rows], family, n_iterations, delta, set_step=False)
        for i, k in enumerate(rows):
            offset = int(windows.starts[k])
            codes[0, :, cuts[k] : cuts[k + 1]] = window_codes[i, :, cuts[k] - offset : cuts[k + 1] - offset]
    return codes


@torch.no_grad()
def stitched_eta(model: DCEA, windows: RecordingWindows, codes: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(first_bin, last_bin, eta)`` covering the recording, decoded from the stitched codes."""
    size = model.template_shape[0]
    code_window = windows.window_bins - size + 1
    # A bin sees the codes of the size - 1 bins before it, so a window's rates are complete from bin
    # size - 1 on; the hand-over points are the code cuts moved by that much.
    cuts = stitch_cuts(windows.starts, code_window, codes.shape[-1]) + size - 1
    cuts[0], cuts[-1] = 0, windows.n_bins
    device = model.templates.device
    per_call = _windows_per_call(model, windows)
    for first in range(0, windows.n_windows, per_call):
        rows = np.arange(first, min(first + per_call, windows.n_windows))
        window_codes = torch.stack([codes[0, :, windows.starts[k] : windows.starts[k] + code_window] for k in rows])
        eta = model.decode(window_codes.to(device), (windows.window_bins,)).cpu()
        for i, k in enumerate(rows):
            offset = int(windows.starts[k])
            yield int(cuts[k]), int(cuts[k + 1]), eta[i : i + 1, :, cuts[k] - offset : cuts[k + 1] - offset]
