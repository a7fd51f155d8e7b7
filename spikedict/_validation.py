"""Checks of the data handed to :class:`~spikedict.SpikeDictionary`: what was expected, what came, the fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikedict.families import Binomial, Family
from spikedict.io._windows import RecordingWindows

__all__ = ["as_tensor", "check_counts", "check_out", "check_windows", "family_for", "into", "template_shape", "unpack"]


def as_tensor(values: Any, name: str) -> Tensor:
    """``values`` as a tensor of the default dtype; ``TypeError`` / ``ValueError`` for what cannot be counts."""
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


def unpack(X: Any) -> tuple[Any, Any]:
    """Split the data layer's counts object into (counts, n_trials); arrays pass through."""
    if hasattr(X, "counts") and not isinstance(X, (np.ndarray, Tensor, RecordingWindows)):
        return X.counts, getattr(X, "n_trials", None)
    return X, None


def check_counts(
    counts: Any, template_shape: Sequence[int], template_size: Any, n_channels: int | None, name: str = "X"
) -> Tensor:
    """The counts as a tensor of shape ``(n_examples, n_channels, *signal_shape)`` fit for templates of
    ``template_shape`` (``n_channels``: the fitted model's, None when fitting)."""
    y = as_tensor(counts, name)
    expected_ndim = 2 + len(template_shape)
    if y.ndim != expected_ndim:
        layout = (
            "(n_examples, n_channels, n_bins)"
            if len(template_shape) == 1
            else "(n_examples, n_channels, height, width)"
        )
        hint = " For a single channel add an axis: X[:, None, :]." if y.ndim == expected_ndim - 1 else ""
        raise ValueError(f"{name} must have {expected_ndim} dimensions {layout}, got shape {tuple(y.shape)}.{hint}")
    if y.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (its first axis has length 0).")
    if y.shape[1] == 0:
        raise ValueError(f"{name} holds no channels (its second axis has length 0); pass at least one channel (unit).")
    if n_channels is not None and y.shape[1] != n_channels:
        raise ValueError(
            f"{name} has {y.shape[1]} channel(s) but the model was fitted on {n_channels}; pass data with "
            "the same units (channels) in the same order."
        )
    for size, kernel in zip(y.shape[2:], template_shape):
        if size < kernel:
            raise ValueError(
                f"template_size {template_size} is longer than the examples ({tuple(y.shape[2:])} bins); "
                "use shorter templates or longer examples (a larger time window per example)."
            )
    return y


def family_for(family: Family, n_trials: Any, y: Tensor) -> Family:
    """The ``family`` for the examples of ``y`` (with the data's own ``n_trials`` where it brings them), after
    checking that ``y`` lies in its support and that the losses cannot overflow."""
    if n_trials is not None and isinstance(family, Binomial):
        family = Binomial(n_trials)
    elif isinstance(family, Binomial) and not isinstance(family.n_trials, int) and len(family.n_trials) != y.shape[0]:
        raise ValueError(
            f"the model was fitted with one n_trials per example; for these {y.shape[0]} examples pass "
            "a counts object that carries n_trials, or refit with a single n_trials."
        )
    family.validate(y, "X")
    _check_scale(y, "X")
    return family


def check_windows(
    windows: RecordingWindows, template_shape: Sequence[int], stride: Any, family: Family, n_channels: int | None
) -> None:
    """Raise ``ValueError`` where a long recording's windows cannot be fitted with these templates and family."""
    if len(template_shape) != 1 or stride != 1:
        raise ValueError(
            "RecordingWindows hold 1-D spike counts; they need 1-D templates (template_size an integer) and "
            f"stride=1, got template_size={tuple(template_shape)!r}, stride={stride!r}."
        )
    if n_channels is not None and windows.n_channels != n_channels:
        raise ValueError(
            f"the recording has {windows.n_channels} channel(s) but the model was fitted on {n_channels}; "
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
    if isinstance(family, Binomial):
        n_trials = family.n_trials
        if not isinstance(n_trials, int) or float(windows.max()) > n_trials:
            raise ValueError(
                f"binomial counts must lie in [0, n_trials]; this recording has up to {int(windows.max())} "
                f"spikes in a bin and n_trials={n_trials!r}. One recording is one trial: use family='poisson' "
                "for its counts."
            )


def template_shape(size: Any) -> tuple[int, ...]:
    """``template_size`` as a shape: ``(n_bins,)`` or ``(height, width)``; ``ValueError`` otherwise."""
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


def check_out(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``out`` if it has ``shape``, else ``ValueError``."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}.")
    return out


def into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``values``, or copied into ``out`` (which must have their shape) and ``out`` returned."""
    if out is None:
        return values
    check_out(out, values.shape)[...] = values
    return out
