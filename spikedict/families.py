"""Exponential families of observations: the link between a linear predictor and the data.

Every family implements the same contract (:class:`Family`): given the linear predictor ``eta`` (the
natural parameter) it returns the mean of the data, the log-partition ``A(eta)``, the negative
log-likelihood ``A(eta) - y * eta`` (up to a constant in ``y``), the full log-likelihood, the deviance,
samples, and checks that data lie in the family's support. The encoder of the DCEA network needs only
:meth:`Family.residual` and :meth:`Family.curvature_bound`, so model code never asks which family it holds.

=========  ==============================  =====================  =====================
family     data ``y``                      mean ``A'(eta)``       ``A(eta)``
=========  ==============================  =====================  =====================
gaussian   real                            ``eta``                ``eta**2 / 2``
binomial   counts ``0..M`` (``M`` trials)  ``M * sigmoid(eta)``   ``M * softplus(eta)``
poisson    counts ``0, 1, 2, ...``         ``exp(eta)``           ``exp(eta)``
=========  ==============================  =====================  =====================

Names are resolved in one place, :func:`get_family`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FAMILIES",
    "Binomial",
    "Family",
    "Gaussian",
    "Poisson",
    "get_family",
    "resolve_family",
]


def _as_tensor(values: Any, like: Tensor | None = None) -> Tensor:
    if isinstance(values, Tensor):
        return values
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(np.asarray(values), dtype=dtype, device=device)


def _describe(values: Tensor, mask: Tensor, limit: int = 3) -> str:
    """Describe the first offending entries of ``values`` selected by ``mask``."""
    positions = torch.nonzero(mask)[:limit]
    shown = ", ".join(f"{values[tuple(p.tolist())].item():g} at index {tuple(p.tolist())}" for p in positions)
    count = int(mask.sum().item())
    return f"{count} value(s), e.g. {shown}"


def _check_finite(y: Tensor, name: str) -> None:
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        raise ValueError(
            f"{name} must be finite, but it contains NaN or inf: {_describe(y, bad)}. "
            "Remove or impute the missing bins before fitting (for example drop the affected trials)."
        )


class Family(ABC):
    """Contract of an exponential family with natural parameter ``eta``.

    Subclasses implement :meth:`mean`, :meth:`log_partition`, :meth:`log_likelihood`,
    :meth:`sample`, :meth:`link` and :meth:`validate`. Everything else follows from those.

    Attributes
    ----------
    name : str
        The name under which :func:`get_family` finds the family.
    """

    name: str = ""

    # ------------------------------------------------------------------ the mathematics
    @abstractmethod
    def mean(self, eta: Tensor) -> Tensor:
        """Mean of the data, the inverse link ``A'(eta)``; same shape as ``eta``."""

    @abstractmethod
    def log_partition(self, eta: Tensor) -> Tensor:
        """Log-partition ``A(eta)`` elementwise; same shape as ``eta``."""

    @abstractmethod
    def variance(self, eta: Tensor) -> Tensor:
        """Variance of the data at ``eta`` (``A''(eta)`` times the dispersion); same shape as ``eta``."""

    def curvature(self, eta: Tensor) -> Tensor:
        """``A''(eta)``, the second derivative of ``negative_log_likelihood`` in ``eta``; same shape as ``eta``.

        The variance for the count families (dispersion 1). Poisson above ``max_log_rate``, where ``A`` turns
        linear, keeps the variance at the cap, so that curvature-based template steps stay bounded.
        """
        return self.variance(eta)

    @abstractmethod
    def log_likelihood(self, y: Tensor, eta: Tensor) -> Tensor:
        """Full log-likelihood ``log p(y | eta)`` elementwise, constants included."""

    @abstractmethod
    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw data with natural parameter ``eta``; same shape as ``eta``."""

    @abstractmethod
    def link(self, mean: Tensor) -> Tensor:
        """Natural parameter whose mean is ``mean`` (clipped into the open support)."""

    @abstractmethod
    def validate(self, y: Tensor, name: str = "counts") -> None:
        """Raise ``ValueError`` if ``y`` is not in the family's support."""

    def negative_log_likelihood(self, y: Tensor, eta: Tensor) -> Tensor:
        """Negative log-likelihood up to a constant in ``y``: ``A(eta) - y * eta``, elementwise.

        Parameters
        ----------
        y : Tensor
            Observations, any shape.
        eta : Tensor
            Linear predictor, broadcastable to ``y``.

        Returns
        -------
        Tensor
            Same shape as ``y``. Its gradient in ``eta`` is ``mean(eta) - y``.
        """
        return self.log_partition(eta) - y * eta

    def deviance(self, y: Tensor, eta: Tensor) -> Tensor:
        """Unit deviance ``2 * (log p(y | saturated) - log p(y | eta))``, elementwise, >= 0."""
        saturated = self.log_likelihood(y, self.link_saturated(y))
        return 2.0 * (saturated - self.log_likelihood(y, eta))

    def link_saturated(self, y: Tensor) -> Tensor:
        """Natural parameter of the saturated model (mean equal to the data)."""
        return self.link(y)

    # ---------------------------------------------------------------- what the encoder needs
    #: True when ``residual(y, eta)`` is ``(y - eta) / residual_scale`` (identity link): the encoder then
    #: correlates the data once and applies ``H^T H`` in the frequency domain at each iteration.
    linear_residual: bool = False

    @property
    def residual_scale(self) -> float:
        """Scale that divides the residual so that step sizes do not depend on ``n_trials``."""
        return 1.0

    def residual(self, y: Tensor, eta: Tensor) -> Tensor:
        """Scaled negative gradient of the NLL in ``eta``: ``(y - mean(eta)) / residual_scale``."""
        return (y - self.mean(eta)) / self.residual_scale

    def curvature_bound(self, y: Tensor) -> float:
        """Upper bound on ``A''(eta) / residual_scale`` in the region the encoder visits.

        The encoder's step size is ``1 / (curvature_bound * ||H||^2)``.
        """
        return 1.0

    def clipped_link(self, mean: Tensor, clip: float) -> Tensor:
        """The natural parameter of ``mean`` after clipping it ``clip`` inside the open support of the mean (so
        that a predicted rate of 0, or of every trial, keeps a finite log-likelihood)."""
        return self.link(mean)

    def data_warnings(self, y: Tensor) -> list[str]:
        """What about counts ``y`` makes a fit say little, each with what to try (empty if nothing)."""
        if y.numel() and not bool(y.any()):
            return [
                "every count is zero: there is no spike to learn templates from. Check the recording's units and "
                "time window (t_start, t_stop), or choose other units."
            ]
        return []

    # ------------------------------------------------------------------- what a fit needs
    #: True when the family has a scale that a fit estimates from its residuals (the Gaussian's ``std``).
    scale_from_residuals: bool = False

    def with_residual_rms(self, rms: float) -> Family:
        """The family with its scale fitted to residuals of root mean square ``rms`` (unchanged without a scale)."""
        return self

    def noise_level(self, y: Tensor, baseline: Tensor) -> float:
        """Standard deviation of the encoder's residual ``(y - mean) / residual_scale`` with no template active.

        Correlating white noise with a unit-norm template keeps this standard deviation, so it is the natural
        unit of the sparsity. Count families take it from their variance at ``baseline`` (shape broadcastable
        to ``y``).
        """
        eta = baseline.expand_as(y)
        variance = self.select(torch.arange(y.shape[0])).variance(eta)
        return max(float(variance.mean().sqrt()) / self.residual_scale, 1e-8)

    def baseline_from_mean(self, mean: Tensor, n_examples: int) -> Tensor:
        """Per-channel natural parameter of the mean count per bin ``mean`` (shape (n_channels,)) over the
        ``n_examples`` examples the family covers."""
        return self.link(mean.reshape(1, -1, 1)).flatten()

    # ---------------------------------------------------------------------------- plumbing
    def select(self, index: Tensor | slice) -> Family:
        """The family for a subset of examples (differs only where parameters vary per example)."""
        return self

    def to(self, device: torch.device | str) -> Family:
        """The family with its tensors on ``device``."""
        return self

    def config(self) -> dict[str, Any]:
        """JSON-serialisable parameters; ``get_family(**config)`` rebuilds the family."""
        return {"name": self.name}

    def __repr__(self) -> str:
        parameters = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({parameters})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Family) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(repr(self))


class Gaussian(Family):
    """Gaussian observations with identity link, ``y ~ Normal(eta, std**2)``.

    Parameters
    ----------
    std : float, default 1.0
        Standard deviation of the noise. It enters :meth:`log_likelihood`, :meth:`variance` and
        :meth:`deviance`; :meth:`negative_log_likelihood` is kept in natural-parameter form
        ``eta**2 / 2 - y * eta`` (the dispersion ``std**2`` is a constant factor that the encoder's
        sparsity absorbs), i.e. it equals ``-std**2 * log_prob`` up to a constant in ``y``.

    Examples
    --------
    >>> import torch
    >>> Gaussian().negative_log_likelihood(torch.tensor(1.0), torch.tensor(3.0))
    tensor(1.5000)
    """

    name = "gaussian"
    linear_residual = True

    def __init__(self, std: float = 1.0) -> None:
        std = float(std)
        if not std > 0 or not math.isfinite(std):
            raise ValueError(f"Gaussian std must be a positive finite number, got {std}.")
        self.std = std

    def mean(self, eta: Tensor) -> Tensor:
        return eta

    def log_partition(self, eta: Tensor) -> Tensor:
        return 0.5 * eta**2

    def variance(self, eta: Tensor) -> Tensor:
        return torch.full_like(eta, self.std**2)

    def curvature(self, eta: Tensor) -> Tensor:
        return torch.ones_like(eta)  # A = eta**2 / 2 whatever the std (the dispersion)

    def log_likelihood(self, y: Tensor, eta: Tensor) -> Tensor:
        variance = self.std**2
        return -0.5 * (y - eta) ** 2 / variance - 0.5 * math.log(2 * math.pi * variance)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(eta.shape, generator=generator, dtype=eta.dtype, device=eta.device)
        return eta + self.std * noise

    def link(self, mean: Tensor) -> Tensor:
        return mean

    def deviance(self, y: Tensor, eta: Tensor) -> Tensor:
        return (y - eta) ** 2 / self.std**2

    def validate(self, y: Tensor, name: str = "counts") -> None:
        _check_finite(y, name)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "std": self.std}

    scale_from_residuals = True

    def with_residual_rms(self, rms: float) -> Gaussian:
        """The maximum-likelihood noise level: ``Gaussian(std=rms)``."""
        return Gaussian(std=max(float(rms), 1e-12))

    def noise_level(self, y: Tensor, baseline: Tensor) -> float:
        """Robust noise level from the first differences of the data (median absolute deviation), which events
        of smooth templates barely affect."""
        differences = torch.diff(y, dim=-1).flatten()
        if differences.numel() == 0:
            return self.std
        deviation = (differences - differences.median()).abs().median()
        return max(float(1.4826 * deviation / math.sqrt(2.0)), 1e-8)


class Binomial(Family):
    """Binomial counts out of ``n_trials`` repeated trials, logit link.

    One example pools ``M = n_trials`` repetitions of a trial; ``y`` in each bin is the number of
    repetitions with a spike in that bin, so ``0 <= y <= M``.

    Parameters
    ----------
    n_trials : int or array of shape (n_examples,)
        Number of trials ``M`` pooled in each example; one value for all, or one per example.

    Examples
    --------
    >>> import torch
    >>> Binomial(n_trials=30).mean(torch.tensor([0.0]))
    tensor([15.])
    """

    name = "binomial"

    def __init__(self, n_trials: int | np.ndarray | Tensor = 1) -> None:
        try:
            values = torch.as_tensor(np.asarray(n_trials.cpu() if isinstance(n_trials, Tensor) else n_trials))
        except (TypeError, ValueError, OverflowError) as error:  # object arrays, ints beyond 64 bits, ragged lists
            raise ValueError(
                f"n_trials must be a positive integer or one per example (shape (n_examples,)), got {n_trials!r}."
            ) from error
        if values.ndim > 1 or values.numel() == 0:
            raise ValueError(
                f"n_trials must be one number or one number per example (shape (n_examples,)), "
                f"got shape {tuple(values.shape)}."
            )
        as_float = values.to(torch.float64)
        finite = bool(torch.isfinite(as_float.to(torch.get_default_dtype())).all())
        if not finite or not bool(torch.all(as_float >= 1)) or not bool(torch.all(as_float == torch.round(as_float))):
            raise ValueError(
                f"n_trials must be positive integers (the number of repeated trials pooled per example), "
                f"got {values.tolist() if values.numel() < 6 else values}."
            )
        self._n_trials = as_float.to(torch.get_default_dtype())

    @property
    def n_trials(self) -> int | np.ndarray:
        """Trials per example: an int if shared by all examples, else an array ``(n_examples,)``."""
        if self._n_trials.ndim == 0:
            return int(self._n_trials.item())
        return self._n_trials.cpu().numpy().astype(np.int64)

    def _trials_like(self, reference: Tensor) -> Tensor:
        trials = self._n_trials.to(device=reference.device, dtype=reference.dtype)
        if trials.ndim == 1 and reference.ndim > 0:
            if reference.shape[0] != trials.shape[0]:
                raise ValueError(
                    f"n_trials has one value per example ({trials.shape[0]} examples) but the data have "
                    f"{reference.shape[0]} examples; pass n_trials for exactly these examples."
                )
            trials = trials.reshape((-1,) + (1,) * (reference.ndim - 1))
        return trials

    @property
    def residual_scale(self) -> float:
        return float(self._n_trials.max().item())

    def residual(self, y: Tensor, eta: Tensor) -> Tensor:
        # Per-example M: the gradient (y - M sigmoid(eta)) divided by the largest M keeps one step
        # size valid for every example.
        return (y - self.mean(eta)) / self.residual_scale

    def curvature_bound(self, y: Tensor) -> float:
        return 0.25

    def mean(self, eta: Tensor) -> Tensor:
        return self._trials_like(eta) * torch.sigmoid(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return self._trials_like(eta) * F.softplus(eta)

    def variance(self, eta: Tensor) -> Tensor:
        probability = torch.sigmoid(eta)
        return self._trials_like(eta) * probability * (1 - probability)

    def log_likelihood(self, y: Tensor, eta: Tensor) -> Tensor:
        trials = self._trials_like(y)
        log_binomial_coefficient = torch.lgamma(trials + 1) - torch.lgamma(y + 1) - torch.lgamma(trials - y + 1)
        return log_binomial_coefficient - self.negative_log_likelihood(y, eta)

    def link_saturated(self, y: Tensor) -> Tensor:
        # The saturated log-likelihood is finite at y = 0 and y = M; clipping the proportion gives
        # it to float precision without producing inf * 0.
        proportion = y / self._trials_like(y)
        eps = 1e-12 if y.dtype == torch.float64 else 1e-6
        proportion = proportion.clamp(eps, 1 - eps)
        return torch.log(proportion) - torch.log1p(-proportion)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        trials = self._trials_like(eta).expand_as(eta)
        probabilities = torch.sigmoid(eta)
        if generator is None:
            return torch.binomial(trials, probabilities)
        # torch.binomial does not take a generator; sum Bernoulli draws of the largest M instead.
        largest = int(trials.max().item())
        uniform = torch.rand((largest,) + tuple(eta.shape), generator=generator, dtype=eta.dtype, device=eta.device)
        counts = (uniform < probabilities).to(eta.dtype)
        within = torch.arange(largest, device=eta.device, dtype=eta.dtype).reshape((-1,) + (1,) * eta.ndim)
        return (counts * (within < trials)).sum(0)

    def link(self, mean: Tensor) -> Tensor:
        return self.link_saturated(mean)

    def validate(self, y: Tensor, name: str = "counts") -> None:
        _check_finite(y, name)
        negative = y < 0
        if bool(negative.any()):
            raise ValueError(
                f"binomial {name} must be >= 0 (number of trials with a spike in a bin), "
                f"got negative counts: {_describe(y, negative)}. Pass spike counts, not rates or "
                "baseline-subtracted data."
            )
        fractional = y != torch.round(y)
        if bool(fractional.any()):
            raise ValueError(
                f"binomial {name} must be whole numbers, got {_describe(y, fractional)}. If the data are "
                "trial-averaged proportions, multiply them by n_trials; for real-valued data use "
                "family='gaussian'."
            )
        trials = self._trials_like(y)
        above = y > trials
        if bool(above.any()):
            raise ValueError(
                f"binomial {name} cannot exceed n_trials = {self.n_trials}, got {_describe(y, above)}. "
                "Set n_trials to the number of repeated trials pooled per example, or use a smaller "
                "bin_size so that no trial spikes twice in one bin."
            )

    def select(self, index: Tensor | slice) -> Binomial:
        if self._n_trials.ndim == 0:
            return self
        selected = Binomial.__new__(Binomial)
        selected._n_trials = self._n_trials[index.cpu() if isinstance(index, Tensor) else index]
        return selected

    def to(self, device: torch.device | str) -> Binomial:
        moved = Binomial.__new__(Binomial)
        moved._n_trials = self._n_trials.to(device)
        return moved

    def clipped_link(self, mean: Tensor, clip: float) -> Tensor:
        probability = (mean / self._trials_like(mean)).clamp(clip, 1 - clip)
        return torch.log(probability) - torch.log1p(-probability)

    def data_warnings(self, y: Tensor) -> list[str]:
        found = super().data_warnings(y)
        saturated = float((y >= self._trials_like(y)).double().mean()) if y.numel() else 0.0
        if saturated >= 0.2:
            found.append(
                f"{saturated:.0%} of the bins hold a spike in every trial (counts at n_trials = {self.n_trials}): "
                "at this bin size the binomial counts saturate and hide the rate's shape. Use a smaller bin size, "
                "or family='poisson'."
            )
        return found

    def baseline_from_mean(self, mean: Tensor, n_examples: int) -> Tensor:
        """The natural parameter of ``mean`` for each example's ``n_trials``, averaged over the examples."""
        per_example = mean.reshape(1, -1, 1).expand(n_examples, -1, 1)
        return self.select(torch.arange(n_examples)).link(per_example).mean(0).flatten()

    def config(self) -> dict[str, Any]:
        trials = self.n_trials
        return {"name": self.name, "n_trials": trials if isinstance(trials, int) else trials.tolist()}


class Poisson(Family):
    """Poisson counts with log link, ``y ~ Poisson(exp(eta))``.

    ``exp`` is continued linearly above ``max_log_rate`` (the mean stays ``exp(max_log_rate)`` and
    ``A`` grows linearly), so the encoder and the loss never produce inf or NaN for finite input;
    below it the family is exactly Poisson.

    Parameters
    ----------
    max_log_rate : float, default 20.0
        Log of the largest expected count per bin treated exactly (``exp(20)`` is about 5e8).
    residual_bound : float or None, default None
        If given, the encoder's residual is passed through ``ELU(residual, alpha=residual_bound)``
        as in the DCEA paper's image experiments: negative residuals saturate at ``-residual_bound``.
        This stabilises a fixed step at large rates but changes the fixed point, so the default
        solves the Poisson l1 problem exactly.

    Examples
    --------
    >>> import torch
    >>> Poisson().mean(torch.tensor([0.0, 1000.0])).isfinite().all()
    tensor(True)
    """

    name = "poisson"

    def __init__(self, max_log_rate: float = 20.0, residual_bound: float | None = None) -> None:
        self.max_log_rate = float(max_log_rate)
        if residual_bound is not None and not residual_bound > 0:
            raise ValueError(f"residual_bound must be positive or None, got {residual_bound}.")
        self.residual_bound = None if residual_bound is None else float(residual_bound)

    def mean(self, eta: Tensor) -> Tensor:
        return torch.exp(eta.clamp(max=self.max_log_rate))

    def log_partition(self, eta: Tensor) -> Tensor:
        capped = eta.clamp(max=self.max_log_rate)
        return torch.exp(capped) * (1 + eta - capped)

    def variance(self, eta: Tensor) -> Tensor:
        return self.mean(eta)

    def log_likelihood(self, y: Tensor, eta: Tensor) -> Tensor:
        return -self.negative_log_likelihood(y, eta) - torch.lgamma(y + 1)

    def link_saturated(self, y: Tensor) -> Tensor:
        # y log y -> 0 at y = 0: a very negative eta gives the limit without inf * 0.
        floor = -1e4 if y.dtype == torch.float64 else -80.0
        return torch.log(y).clamp(min=floor)

    def residual(self, y: Tensor, eta: Tensor) -> Tensor:
        residual = y - self.mean(eta)
        if self.residual_bound is not None:
            residual = F.elu(residual, alpha=self.residual_bound)
        return residual

    def curvature_bound(self, y: Tensor) -> float:
        # A''(eta) = rate; near the solution the rate follows the data. The largest count bounds
        # it where the encoder settles; the floor of 1 covers sparse data whose counts are 0 or 1.
        return max(1.0, float(y.max().item()) if y.numel() else 1.0)

    def sample(self, eta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.poisson(self.mean(eta), generator=generator)

    def data_warnings(self, y: Tensor) -> list[str]:
        found = super().data_warnings(y)
        mean = float(y.double().mean()) if y.numel() else 0.0
        if mean > 50:
            found.append(
                f"the counts are large (a mean of {mean:.3g} spikes per bin): bins this wide blur events shorter "
                "than a bin. Use a smaller bin size."
            )
        return found

    def clipped_link(self, mean: Tensor, clip: float) -> Tensor:
        return torch.log(mean.clamp(min=clip))

    def link(self, mean: Tensor) -> Tensor:
        return self.link_saturated(mean)

    def validate(self, y: Tensor, name: str = "counts") -> None:
        _check_finite(y, name)
        negative = y < 0
        if bool(negative.any()):
            raise ValueError(
                f"poisson {name} must be >= 0 (spike counts per bin), got negative counts: "
                f"{_describe(y, negative)}. Pass spike counts, not rates or baseline-subtracted data."
            )
        fractional = y != torch.round(y)
        if bool(fractional.any()):
            raise ValueError(
                f"poisson {name} must be whole numbers, got {_describe(y, fractional)}. Pass spike counts "
                "per bin; for real-valued data use family='gaussian'."
            )

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "max_log_rate": self.max_log_rate, "residual_bound": self.residual_bound}


FAMILIES: dict[str, type[Family]] = {"gaussian": Gaussian, "binomial": Binomial, "poisson": Poisson}


def resolve_family(
    family: str | Family, n_trials: Any = None, n_trials_from_data: Any = None, **parameters: Any
) -> Family:
    """The family a fit or an evaluation uses: a name resolved with the binomial family's ``n_trials`` (given, else
    the data's); ``parameters`` go to the family's constructor (e.g. the Gaussian's ``std``).

    Raises
    ------
    ValueError
        For the binomial family without ``n_trials`` from either source.
    """
    if isinstance(family, Family):
        return family
    name = str(family).strip().lower()
    if name != "binomial":
        return get_family(name, **parameters)
    n_trials = n_trials if n_trials is not None else n_trials_from_data
    if n_trials is None:
        raise ValueError(
            "the binomial family needs n_trials, the number of repeated trials pooled per example (30 in the DCEA "
            "paper): pass n_trials=M (e.g. SpikeDictionary(..., n_trials=M)) or data that carry it (SpikeCounts, "
            "SimulatedCounts), or use family='poisson' for counts without an upper bound."
        )
    return get_family(name, n_trials=n_trials, **parameters)


def get_family(name: str | Family, **parameters: Any) -> Family:
    """Resolve a family given by name (or return it unchanged if it is already a :class:`Family`).

    Parameters
    ----------
    name : str or Family
        ``"gaussian"``, ``"binomial"`` or ``"poisson"`` (case-insensitive), or a family object
        (returned unchanged). ``get_family(**family.config())`` rebuilds a family.
    **parameters
        Passed to the family's constructor, e.g. ``n_trials=30`` for the binomial family.
        Parameters the family does not take (and that are None) are ignored.

    Returns
    -------
    Family

    Examples
    --------
    >>> get_family("binomial", n_trials=30)
    Binomial(n_trials=30)
    """
    if isinstance(name, Family):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"family must be a name ({', '.join(repr(n) for n in FAMILIES)}) or a Family object, "
            f"got {type(name).__name__}."
        )
    key = name.strip().lower()
    if key not in FAMILIES:
        raise ValueError(
            f"unknown family {name!r}; valid names are {', '.join(repr(n) for n in FAMILIES)}, or pass a Family object."
        )
    cls = FAMILIES[key]
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k, v in parameters.items() if k not in accepted and v is not None]
    if unknown:
        raise TypeError(f"family {key!r} takes no parameter(s) {unknown}; it takes {list(accepted)[1:]}.")
    return cls(**{k: v for k, v in parameters.items() if k in accepted and v is not None})
