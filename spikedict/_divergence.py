"""The error both solvers raise when a fit diverges: a loss or a parameter that is no longer finite.

The message names the likely cause from what the caller found still finite: if the encoder's output (its codes, or
the loss at them) is not, the encoder diverged and its step size is too large for the data; otherwise a template
update stepped too far (the learning rate of back-propagation, the template step of the alternating solver). It
then says what the model holds and how to continue from the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["diverged", "encoder_failed", "parameters_finite"]


def parameters_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())


@torch.no_grad()
def encoder_failed(model: torch.nn.Module, codes: Tensor, loss: Callable[[Tensor], float | Tensor]) -> bool:
    """Whether the encoder, rather than the parameters, made the loss non-finite.

    ``model`` holds the parameters the encoder used and ``loss(codes)`` is the data loss at given codes. The
    encoder failed if its codes are not finite, or fit the data worse than zero codes (non-finite or larger
    loss) while the loss at zero codes is finite: a working encoder lowers ``loss + sparsity * ||codes||_1``
    below its value at zero. Non-finite parameters, or a non-finite loss at zero codes (the baseline), point at
    the parameter update instead.
    """
    if not parameters_finite(model):
        return False
    if not bool(torch.isfinite(codes).all()):
        return True
    at_zero = float(loss(torch.zeros_like(codes)))
    if not math.isfinite(at_zero):
        return False
    at_codes = float(loss(codes))
    return not math.isfinite(at_codes) or at_codes > at_zero


def diverged(
    quantity: str,
    value: float | None,
    stage: str,
    *,
    encoder_diverged: bool,
    step_size: float,
    learning_rate: float | None,
    finished: int,
    checkpoint_path: str | None,
) -> FloatingPointError:
    """The ``FloatingPointError`` for a fit that diverged (returned, to be raised by the caller).

    Parameters
    ----------
    quantity : str
        What stopped being finite, e.g. ``"the training loss"``.
    value : float or None
        Its value (nan, inf), if it is a number.
    stage : str
        Where, e.g. ``"epoch 3"``.
    encoder_diverged : bool
        Whether the encoder's output was already not finite (its codes, or the loss at them with the templates it
        used).
    step_size : float
        The encoder's step size at that point.
    learning_rate : float or None
        The learning-rate setting (None for the alternating solver, which has none).
    finished : int
        Epochs (iterations) finished before; the model holds their result.
    checkpoint_path : str or None
    """
    became = f"became {value}" if value is not None else "became non-finite"
    step = f" ({step_size:.3g})" if math.isfinite(step_size) else ""
    if encoder_diverged:
        cause = (
            f"the encoder diverged: its step size {step_size:.3g} is too large for this family and data. The step "
            "is 1 / (curvature bound x ||H||^2), and the Poisson family's bound comes from the largest count, so "
            "rates far above every count make it too large. Check the data for extreme counts or outliers, or "
            "raise the sparsity"
        )
        if learning_rate is not None:
            cause += (
                "; the step is set at the start of each epoch, so a smaller learning_rate (now "
                f"{learning_rate:g}), which changes the templates less within an epoch, may help too"
            )
    elif learning_rate is not None:
        cause = (
            f"a learning rate too high for this data (learning_rate={learning_rate:g}): an optimiser step took the "
            f"templates or the baseline out of range. Lower learning_rate (e.g. to {learning_rate / 10:g}); if that "
            f"does not help, the encoder's step size{step} is too large for the data: check it for extreme counts"
        )
    else:
        cause = (
            "the template step took the templates or the baseline out of range (the encoder's codes were "
            "fine). Check the data for extreme counts or outliers, or use fewer n_dictionary_steps"
        )
    if finished:
        kept = f"The model holds the parameters after epoch {finished}"
        if checkpoint_path:
            kept += (
                f", and the checkpoint {str(checkpoint_path)!r} keeps them: remove the cause and continue with "
                "fit(X, resume=True)."
            )
        else:
            kept += "; set checkpoint_path to be able to continue a fit from its last good epoch."
    else:
        kept = "No epoch finished; the model holds its initial parameters."
    return FloatingPointError(f"{quantity} {became} at {stage}. Likely cause: {cause}. {kept}")
