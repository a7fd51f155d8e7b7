"""The start of a fit: initial templates and baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikedict.families import Family
from spikedict.io._windows import RecordingWindows
from spikedict.model import DCEA
from spikedict.settings import Encoder, TemplateConstraints

__all__ = ["build_model", "initial_baseline", "initial_templates", "set_start"]


def initial_templates(
    init: Any,
    y: Tensor,
    family: Family,
    baseline: Tensor,
    generator: torch.Generator,
    shape: tuple[int, ...],
) -> Tensor:
    """Templates of ``shape`` (n_templates, n_channels, *template_shape) to start from.

    ``init``: ``"data"`` (windows of the residual at the baseline, at random examples and positions of ``y``),
    ``"random"`` (Gaussian), or the templates themselves (checked).
    """
    if isinstance(init, str) and init == "random":
        return torch.randn(shape, generator=generator)
    if isinstance(init, str) and init == "data":
        baseline = baseline.reshape((1, -1) + (1,) * (y.ndim - 2))
        examples = torch.randint(0, y.shape[0], (shape[0],), generator=generator)
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
    if isinstance(init, str):
        raise ValueError(f"init must be 'data', 'random' or an array of templates, got {init!r}.")
    array = np.asarray(init, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(
            f"init templates must have shape {shape} (n_templates, n_channels, template_size), got {array.shape}."
        )
    if not np.all(np.isfinite(array)) or np.any(np.abs(array).reshape(shape[0], -1).sum(1) == 0):
        raise ValueError("init templates must be finite and none may be all zeros.")
    return torch.as_tensor(array, dtype=torch.get_default_dtype())


def baseline_floor(y: Tensor | RecordingWindows, family: Family) -> Tensor | None:
    """Per-channel lowest baseline of a count fit: the natural parameter of half a spike over all of ``y``'s bins.

    A channel without spikes would otherwise be driven towards a rate of 0, at which one spike in new data costs an
    unbounded loss; half a spike is the usual pseudo-count. None for the Gaussian family and for windows.
    """
    if family.name == "gaussian" or isinstance(y, RecordingWindows):
        return None
    n_values = y.shape[0] * int(np.prod(y.shape[2:]))
    return family.baseline_from_mean(torch.full((y.shape[1],), 0.5 / n_values, dtype=y.dtype), y.shape[0])


def initial_baseline(baseline: Any, y: Tensor | RecordingWindows, family: Family) -> Tensor:
    """Per-channel baseline, shape (n_channels,): ``"learn"`` / ``"estimate"`` from the mean counts of ``y``, or
    the given number(s) (checked)."""
    n_channels = y.shape[1]
    if isinstance(baseline, str):
        if isinstance(y, RecordingWindows):  # exact, from the spike counts of the whole recording
            mean = torch.as_tensor(y.mean_counts(), dtype=torch.get_default_dtype())
        else:
            mean = y.mean(dim=[0] + list(range(2, y.ndim)))
        start = family.baseline_from_mean(mean, y.shape[0])
        floor = baseline_floor(y, family)
        return start if floor is None else torch.maximum(start, floor.to(start.dtype))
    values = np.broadcast_to(np.asarray(baseline, dtype=np.float64), (n_channels,)) if np.ndim(baseline) <= 1 else None
    if values is None or not np.all(np.isfinite(values)):
        raise ValueError(f"baseline must be finite, one number or one per channel ({n_channels}), got {baseline!r}.")
    return torch.as_tensor(values.copy(), dtype=torch.get_default_dtype())


def build_model(
    shape: tuple[int, ...],
    family: Family,
    encoder: Encoder,
    constraints: TemplateConstraints,
    stride: int,
    learn_baseline: bool,
    n_code_iterations: int,
    generator: torch.Generator,
) -> DCEA:
    """The network for templates of ``shape`` (n_templates, n_channels, *template_shape) with these settings; its
    templates are drawn from ``generator`` (see :func:`set_start`)."""
    return DCEA(
        shape[0],
        shape[1],
        tuple(shape[2:]),
        family,
        sparsity=0.0,
        n_iterations=int(n_code_iterations),
        algorithm=encoder.algorithm,
        nonnegative_codes=encoder.nonnegative_codes,
        stride=stride,
        tied=encoder.tied,
        learn_baseline=learn_baseline,
        nonnegative_templates=constraints.nonnegative,
        zero_edges=constraints.zero_edges,
        smoothness=constraints.smoothness,
        generator=generator,
    )


@torch.no_grad()
def set_start(model: DCEA, templates: Tensor, baseline: Tensor) -> None:
    """Give ``model`` its initial templates (projected onto its constraints, unit norm) and baseline; an untied
    model's encoder and decoder weights start from the same templates."""
    model.templates.copy_(templates)
    model.project_templates_()
    model.baseline.copy_(baseline)
    if not model.tied:
        model.encoder_templates.copy_(model.templates)
        model.decoder_templates.copy_(model.templates)
