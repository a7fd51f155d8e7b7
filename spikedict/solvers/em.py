"""The marginal-likelihood solver: Monte-Carlo EM over a spike-and-slab prior on the codes, started by MAP.

The l1-MAP codes of the alternating solver shrink and smear events, and a template step from biased codes stays
biased however many examples there are. Maximising the *marginal* likelihood ``log sum_x p(y | H, x) p(x)``
instead integrates over the codes. Monte-Carlo EM does it by alternating

- **E-step**: codes drawn from their posterior ``p(x | y, H)`` under a sparse spike-and-slab prior (an event
  probability per template and an amplitude distribution on a grid, events of one template at least
  ``min_spacing`` apart), by the blocked Metropolis-within-Gibbs sampler of :mod:`spikedict.solvers._sampling`
  with the family's exact likelihood, warm-started from the previous draw; in the first iterations the
  likelihood is tempered (raised to a power below 1 that rises to 1), so that the events are less tied to the
  start's templates and the templates can leave the start's optimum;
- **M-step**: the exact maximum-likelihood template (and baseline) step on the codes of the last ``n_draws``
  iterations' draws together (Monte-Carlo EM: the expected log-likelihood estimated from several draws, whose
  noise one draw alone leaves in the templates), warm-started from the current templates (L-BFGS, as the
  alternating solver's template step), and the prior re-estimated from the newest draw's events;

and averaging the templates over the last iterations (stochastic approximation: the draws' noise averages out).
Over the same iterations the drawn codes are averaged into the posterior mean of every code and the probability
of an event at every position, and the spread of the templates gives each a band (:class:`Posterior`).
The alternating MAP fit (continuation, spare templates, reweighted l1) runs first and gives the start, the prior's
amplitude range and its event rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from spikedict._template_steps import lbfgs_template_step
from spikedict.alternating import _data_loss, _is_real, template_change
from spikedict.io._windows import RecordingWindows
from spikedict.model import DCEA
from spikedict.settings import check_integer
from spikedict.solvers._sampling import CodePrior, CodeSampler
from spikedict.solvers.alternating import Alternating
from spikedict.solvers.base import EpochRun, FitProblem, FitResult, Posterior, Solver

__all__ = ["EM"]


class EM(Solver):
    """Maximum marginal likelihood by Monte-Carlo EM, for binomial and Poisson counts (see the module docstring).

    Parameters
    ----------
    n_epochs : int
        EM iterations after the MAP start (each: ``n_sweeps`` sweeps of the sampler, then the template step).
    map_fit : Alternating, optional
        The MAP fit that starts EM (its own epochs come first). None: ``Alternating()``.
    n_sweeps : int
        Sampler sweeps per EM iteration (every block of every template updated once per sweep).
    n_burn_in : int
        Sweeps from empty codes before the first template step.
    n_amplitudes : int
        Points of the amplitude grid of the prior, geometric between a fraction of the MAP start's smallest
        events and a multiple of its largest.
    n_dictionary_iterations : int
        L-BFGS iterations of each template step.
    averaging : float
        Fraction of the EM iterations, at the end, over which the templates and baseline are averaged. Larger
        values average more draws' noise away; the averaging should start once the templates have settled.
    n_restarts : int
        Whole EM fits, each from its own start; the fit with the lowest training loss (the mean over its last 5 EM
        iterations) is kept. Each restart costs a whole fit; ``n_starts`` is the cheaper way to a better start.
    n_starts : int
        Initialisations of the MAP start (restart ``r`` draws seeds ``seed + r * n_starts`` onwards) fitted and
        compared by their training loss; EM runs from the best. EM settles in the optimum its start leads to, and
        the MAP fit's loss tells the better starts apart at a fraction of an EM fit's cost (each start costs one MAP
        fit). 1, or initial templates given (``init`` an array): EM starts from the MAP fit of ``seed + r``.
    n_draws : int
        Code draws, the newest and those of the previous iterations, whose log-likelihoods the template step
        maximises together in the averaged iterations (before them, the newest draw alone, which lets the
        templates leave their start). One draw leaves its noise in the templates, which then wander around the
        optimum; more draws average it out (each costs one more pass over the data in the template step, and one
        more copy of the codes in memory). Lower it when the codes of several draws do not fit in memory.
    min_spacing : int or None
        Fewest bins between two events of one template in the prior (None: a fifth of the template size, at least
        1). Events of one kind often follow each other within a template's length; a prior that forbids it (the
        template size) leaves such events to be explained by shrunken neighbours and biases the templates. Smaller
        values let events sit closer, and the sampler updates smaller blocks in more passes (a sweep costs about
        ``(min_spacing + template_size) / min_spacing / 2`` times a sweep at the template size).
    tempering : float
        Power of the likelihood in the posterior drawn from at the first EM iteration (after an untempered
        burn-in), rising linearly to 1 over ``n_tempered`` iterations. A tempered posterior ties the events less
        to the start's templates, so that the template steps can move them further from the start's optimum; 1
        draws from the posterior itself throughout. Lower values let the templates move further, and forget more
        of the start where the data say little.
    n_tempered : int
        EM iterations over which the likelihood's power rises from ``tempering`` to 1 (0: no tempering); fewer
        where the averaged iterations begin sooner, so that every draw that the averaged iterations use (in their
        template steps and posterior outputs) comes from the posterior itself.
    """

    name = "em"

    def __init__(
        self,
        n_epochs: int = 40,
        map_fit: Alternating | None = None,
        n_sweeps: int = 2,
        n_burn_in: int = 5,
        n_amplitudes: int = 12,
        n_dictionary_iterations: int = 10,
        averaging: float = 0.5,
        n_restarts: int = 1,
        n_starts: int = 4,
        n_draws: int = 4,
        min_spacing: int | None = None,
        tempering: float = 0.5,
        n_tempered: int = 10,
    ) -> None:
        self.n_epochs = n_epochs
        self.map_fit = map_fit
        self.n_sweeps = n_sweeps
        self.n_burn_in = n_burn_in
        self.n_amplitudes = n_amplitudes
        self.n_dictionary_iterations = n_dictionary_iterations
        self.averaging = averaging
        self.n_restarts = n_restarts
        self.n_starts = n_starts
        self.n_draws = n_draws
        self.min_spacing = min_spacing
        self.tempering = tempering
        self.n_tempered = n_tempered

    def _settings_of(self, name: str) -> Any:
        value = getattr(self, name)
        return Alternating() if name == "map_fit" and value is None else value

    @property
    def n_code_iterations(self) -> int:
        """Encoder iterations of the MAP start's epochs."""
        return int(self._settings_of("map_fit").n_code_iterations)

    @property
    def auto_sparsity_multiple(self) -> float:  # type: ignore[override]
        return self._settings_of("map_fit").auto_sparsity_multiple

    @property
    def total_epochs(self) -> int:
        """The MAP start's epochs and the EM iterations."""
        return int(self._settings_of("map_fit").n_epochs) + int(self.n_epochs)

    def validate(self, *, tied: bool) -> None:
        self._settings_of("map_fit").validate(tied=tied)
        lowest = {"n_epochs": 1, "n_sweeps": 1, "n_burn_in": 0, "n_amplitudes": 2}
        names = ("n_epochs", "n_sweeps", "n_burn_in", "n_amplitudes", "n_dictionary_iterations", "n_restarts")
        for name in (*names, "n_starts", "n_draws"):
            check_integer("EM", name, getattr(self, name), lowest.get(name, 1))
        if not (_is_real(self.averaging) and 0 < self.averaging <= 1):
            raise ValueError(f"EM averaging must be a fraction in (0, 1], got {self.averaging!r}.")
        if self.min_spacing is not None:
            check_integer("EM", "min_spacing", self.min_spacing, 1)
        if not (_is_real(self.tempering) and 0 < self.tempering <= 1):
            raise ValueError(f"EM tempering must be a power of the likelihood in (0, 1], got {self.tempering!r}.")
        check_integer("EM", "n_tempered", self.n_tempered, 0)

    def screening(self) -> tuple[Solver, int] | None:
        """The MAP start, from ``n_starts`` initialisations (None for one)."""
        return (self._settings_of("map_fit"), int(self.n_starts)) if self.n_starts > 1 else None

    def learning_room(
        self,
        n_templates: int,
        template_shape: Sequence[int],
        signal_shape: Sequence[int],
        *,
        given_init: bool,
        zero_edges: int,
    ) -> tuple[int, int]:
        """The MAP start's spare templates and padding."""
        return self._settings_of("map_fit").learning_room(
            n_templates, template_shape, signal_shape, given_init=given_init, zero_edges=zero_edges
        )

    def start(self, problem: FitProblem) -> EpochRun:
        if problem.family.linear_residual:
            raise ValueError(
                "the EM solver fits count data (binomial, Poisson); for Gaussian data the alternating solver's "
                "least-squares fit is the one to use: solver='alternating'."
            )
        if isinstance(problem.data, RecordingWindows) or problem.model.templates.ndim != 3:
            raise ValueError(
                "the EM solver fits 1-D counts held in memory (not RecordingWindows, not images); use "
                "solver='alternating' for those."
            )
        return EMRun(self, problem)


class EMRun(EpochRun):
    """One EM fit: the MAP start's epochs, then the EM iterations (see :class:`EM`)."""

    def __init__(self, settings: EM, problem: FitProblem) -> None:
        self.settings, self.problem = settings, problem
        map_fit = settings._settings_of("map_fit")
        self.start_run = map_fit.start(problem)
        self.n_start = int(map_fit.n_epochs)
        self.phase = "start"
        self.start_history: list[dict[str, Any]] = []
        self.signature = {
            **self.start_run.signature,
            "solver": "em",
            "n_start_epochs": self.n_start,
            "n_amplitudes": settings.n_amplitudes,
            "n_sweeps": settings.n_sweeps,
            "n_burn_in": settings.n_burn_in,
            "min_spacing": settings.min_spacing,
            "n_draws": settings.n_draws,
            "tempering": settings.tempering,
            "n_tempered": settings.n_tempered,
            # the schedule of tempering, pooled draws and averaging depends on them
            "n_em_iterations": settings.n_epochs,
            "averaging": settings.averaging,
        }
        self.generator = torch.Generator().manual_seed(int(problem.seed) + 7919)
        self.iteration = 0
        self.sampler: CodeSampler | None = None
        self.draws: list[Tensor] = []  # the codes of the last n_draws iterations, on the CPU, newest last
        self.y: Tensor | None = None
        self.prior: CodePrior | None = None
        self.average: tuple[Tensor, Tensor] | None = None
        # running means over the averaged iterations: codes, events, unit-norm templates and their squares
        self.moments: dict[str, Tensor] | None = None
        self.n_averaged = 0
        self.delta: float | None = None

    # ---------------------------------------------------------------------------------------- phases
    @property
    def model(self) -> DCEA:
        return self.problem.model

    def _begin_em(self) -> None:
        """End the MAP start (spares dropped, padding cut) and set up the prior and the sampler from it."""
        result = self.start_run.finish("n_epochs", self.start_history)
        self.delta = result.reweighting_delta
        codes = result.codes  # of the padded templates: their amplitudes and numbers are what the prior needs
        active = codes[codes > 0]
        n_shifts = self.problem.data.shape[-1] - self.model.templates.shape[-1] + 1
        if active.numel():
            low, high = float(active.quantile(0.1)) * 0.5, float(active.max()) * 1.5
        else:  # the MAP start found no event: amplitudes 0.5 to 5 of a unit-norm template
            low, high = 0.5, 5.0
        amplitudes = torch.logspace(math.log10(low), math.log10(max(high, 2 * low)), self.settings.n_amplitudes)
        n_templates = self.model.n_templates
        self.begin(
            CodePrior(
                event_probability=_event_probability(codes, n_shifts).clamp(1e-5, 0.05),  # MAP smears events
                amplitudes=amplitudes,
                amplitude_weights=torch.full((n_templates, len(amplitudes)), 1.0 / len(amplitudes)),
            )
        )

    def begin(self, prior: CodePrior) -> None:
        """Start the EM iterations from the model's templates and baseline and from ``prior``: the sampler's chain
        from empty codes, burnt in for ``n_burn_in`` sweeps. The MAP start calls it when it ends; call it on a new
        run to start EM elsewhere (from known templates and prior, say, as ``benchmarks/em.py``'s reference)."""
        self.prior = prior
        n_shifts = self.problem.data.shape[-1] - self.model.templates.shape[-1] + 1
        self._new_sampler(torch.zeros((self.problem.data.shape[0], self.model.n_templates, n_shifts)))
        for _ in range(self.settings.n_burn_in):  # untempered: the first draws are from the start's posterior
            self.sampler.sweep(self.prior, self.generator)
        self.phase = "em"

    def _new_sampler(self, codes: Tensor) -> None:
        model, device = self.model, self.model.templates.device
        if self.y is None:  # the sampler's data, moved to the device once
            self.y = self.problem.data.to(device)
        spacing = self.settings.min_spacing
        size = model.templates.shape[-1]
        spacing = max(1, size // 5) if spacing is None else min(int(spacing), size)
        self.sampler = CodeSampler(
            model.templates.detach(),
            model.baseline.detach(),
            self.y,
            self.problem.family.to(device),
            codes.to(device),
            spacing,
        )

    # ------------------------------------------------------------------------------------------ epochs
    def run_epoch(self, epoch: int) -> dict[str, float]:
        if self.phase == "start":
            row = {**self.start_run.run_epoch(epoch), "phase": "map"}
            self.start_history.append(row)
            if epoch + 1 >= self.n_start or self.start_run.stop_reason(self.start_history):
                self._begin_em()
            return row
        return self._em_iteration(epoch)

    def _em_iteration(self, epoch: int) -> dict[str, float]:
        settings, model, sampler, prior = self.settings, self.model, self.sampler, self.prior
        assert sampler is not None and prior is not None
        before = model.templates.detach().clone()
        sampler.likelihood_weight = self._likelihood_weight()  # samplers are built untempered; set before sweeping
        acceptance = sum(sampler.sweep(prior, self.generator) for _ in range(settings.n_sweeps)) / settings.n_sweeps
        codes = sampler.codes
        problem = self.problem
        first_averaged = self._first_averaged()
        n_draws = settings.n_draws if self.iteration >= first_averaged else 1
        self.draws = [*self.draws, codes.cpu().clone()][-n_draws:]
        # the draws' log-likelihoods together: the examples once per draw
        repeated = torch.arange(problem.data.shape[0]).repeat(len(self.draws))
        lbfgs_template_step(
            model,
            problem.data[repeated],
            torch.cat(self.draws),
            problem.family.select(repeated),
            settings.n_dictionary_iterations,
            problem.batch_size,
        )
        _constrain(model)
        self._update_prior(codes)
        self._new_sampler(codes)
        self.iteration += 1
        if self.iteration > first_averaged:
            self._accumulate(codes)
        with torch.no_grad():
            loss = _data_loss(model, problem.data, codes.cpu(), problem.family, problem.batch_size, backward=False)
        n_events = float((codes != 0).sum())
        return {
            "epoch": epoch + 1,
            "phase": "em",
            "train_loss": loss,
            "code_density": n_events / max(codes.numel(), 1),
            "events_per_example": n_events / codes.shape[0],
            "acceptance": acceptance,
            "likelihood_weight": sampler.likelihood_weight,
            "template_change": template_change(before, model.templates),
        }

    def _first_averaged(self) -> int:
        """The first EM iteration (from 0) whose templates and draws are averaged."""
        settings = self.settings
        return settings.n_epochs - max(1, round(settings.averaging * settings.n_epochs))

    def _likelihood_weight(self) -> float:
        """The power of the likelihood in this EM iteration's posterior (see :class:`EM`'s ``tempering``): 1 by the
        last iteration before the averaged ones at the latest, since their template steps pool its draw."""
        n_tempered = min(int(self.settings.n_tempered), max(self._first_averaged() - 1, 0))
        if n_tempered == 0:
            return 1.0
        start = float(self.settings.tempering)
        return min(1.0, start + (1.0 - start) * self.iteration / n_tempered)

    def _update_prior(self, codes: Tensor) -> None:
        """Event probability and amplitude weights from the drawn events (one pseudo-count each)."""
        prior = self.prior
        events = codes != 0
        prior.event_probability = _event_probability(codes, min_spacing=self.sampler.spacing)
        grid = prior.amplitudes.to(codes)
        weights = torch.ones_like(prior.amplitude_weights, dtype=torch.float64)
        for k in range(codes.shape[1]):
            values = codes[:, k][events[:, k]]
            if values.numel():
                nearest = (values[:, None] - grid).abs().argmin(dim=1).cpu()
                weights[k] += torch.bincount(nearest, minlength=len(grid)).double()
        prior.amplitude_weights = (weights / weights.sum(dim=1, keepdim=True)).to(prior.amplitude_weights.dtype)

    def _accumulate(self, codes: Tensor) -> None:
        """Running means of the templates and baseline, and of the posterior's moments (codes for unit-norm
        templates, events, unit-norm templates and their squares)."""
        templates, baseline = self.model.templates.detach().cpu(), self.model.baseline.detach().cpu()
        norms = templates.flatten(1).norm(dim=1).clamp(min=1e-30)
        shape = (-1,) + (1,) * (templates.ndim - 1)
        unit = templates / norms.reshape(shape)
        codes = codes.detach().cpu()
        moments = {
            "codes": codes * norms.reshape(1, -1, 1).to(codes),
            "events": (codes != 0).to(torch.float32),
            "unit": unit,
            "unit_squared": unit**2,
        }
        weight = 1.0 / (self.n_averaged + 1)
        if self.average is None or self.moments is None:
            self.average, self.moments = (templates.clone(), baseline.clone()), moments
        else:
            self.average = (
                self.average[0] + weight * (templates - self.average[0]),
                self.average[1] + weight * (baseline - self.average[1]),
            )
            self.moments = {k: v + weight * (moments[k] - v) for k, v in self.moments.items()}
        self.n_averaged += 1

    def _posterior(self) -> Posterior | None:
        """The averaged codes, event probabilities and template bands (None before any averaged iteration)."""
        if self.moments is None:
            return None
        moments = self.moments
        spread = (moments["unit_squared"] - moments["unit"] ** 2).clamp(min=0).sqrt()
        return Posterior(
            codes=moments["codes"],
            event_probability=moments["events"],
            lower=moments["unit"] - 2 * spread,
            upper=moments["unit"] + 2 * spread,
            n_draws=self.n_averaged,
        )

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.phase == "start":
            return {"phase": "start", "start": self.start_run.state_dict(), "history": list(self.start_history)}
        prior = self.prior
        return {
            "phase": "em",
            "templates": self.model.templates.detach().cpu().clone(),
            "baseline": self.model.baseline.detach().cpu().clone(),
            "codes": self.sampler.codes.cpu().clone(),
            "draws": [draw.clone() for draw in self.draws],
            "event_probability": prior.event_probability.clone(),
            "amplitudes": prior.amplitudes.clone(),
            "amplitude_weights": prior.amplitude_weights.clone(),
            "generator": self.generator.get_state(),
            "average": None if self.average is None else tuple(t.clone() for t in self.average),
            "moments": None if self.moments is None else {k: v.clone() for k, v in self.moments.items()},
            "n_averaged": self.n_averaged,
            "iteration": self.iteration,
            "delta": self.delta,
            "history": list(self.start_history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_history = list(state["history"])
        if state["phase"] == "start":
            if self.phase != "start":
                raise RuntimeError("an EM run cannot go back to its MAP start; start a new run to resume it.")
            self.start_run.load_state_dict(state["start"])
            return
        model = self.model
        with torch.no_grad():
            model.templates = torch.nn.Parameter(state["templates"].to(model.baseline.device), requires_grad=True)
            model.baseline.copy_(state["baseline"])
        self.prior = CodePrior(state["event_probability"], state["amplitudes"], state["amplitude_weights"])
        self.generator.set_state(state["generator"])
        self.average, self.n_averaged = state["average"], state["n_averaged"]
        self.moments = state.get("moments")
        self.draws = [draw.clone() for draw in state.get("draws", [])]
        self.iteration, self.delta, self.phase = state["iteration"], state["delta"], "em"
        self._new_sampler(state["codes"])

    def stop_reason(self, history: Sequence[dict[str, Any]]) -> str | None:
        return "n_epochs" if self.phase == "em" and self.iteration >= self.settings.n_epochs else None

    def finish(self, stop_reason: str, history: list[dict[str, Any]]) -> FitResult:
        if self.phase == "start":
            return self.start_run.finish(stop_reason, history)
        model = self.model
        if self.average is not None:
            with torch.no_grad():
                model.templates.copy_(self.average[0].to(model.templates.device))
                model.baseline.copy_(self.average[1].to(model.baseline.device))
        codes = self.sampler.codes.cpu()
        norms = model.templates.detach().flatten(1).norm(dim=1).clamp(min=1e-30).cpu()
        model.project_templates_()
        model.sparsity = self.problem.sparsity
        return FitResult(
            history=pd.DataFrame(history),
            stop_reason=stop_reason,
            codes=codes * norms.reshape(1, -1, 1),
            reweighting_delta=self.delta,
            best_epoch=len(history),
            posterior=self._posterior(),
            comparison_loss=_comparison_loss(history),
        )


#: EM iterations, at the end, whose mean training loss compares restarts (one iteration's loss is one draw's).
N_COMPARED_ITERATIONS = 5


def _comparison_loss(history: list[dict[str, Any]]) -> float | None:
    """The mean training loss of the last EM iterations (None before any)."""
    losses = [float(row["train_loss"]) for row in history if row.get("phase") == "em"][-N_COMPARED_ITERATIONS:]
    return sum(losses) / len(losses) if losses else None


def _event_probability(codes: Tensor, n_shifts: int | None = None, min_spacing: int = 1) -> Tensor:
    """The prior's event probability ``p`` whose events, at least ``min_spacing`` apart, come at the rate of those
    in ``codes`` (n_examples, n_templates, shifts; with one pseudo-event and one pseudo-empty shift, over
    ``n_shifts`` shifts per example, default the codes'): shape (n_templates,), float64, on the CPU.

    Events at least ``d`` bins apart whose every allowed shift holds one with odds ``z = p / (1 - p)`` are a
    lattice gas of hard rods of length ``d``; at density ``rho`` (events per shift) its activity is
    ``z = rho (1 - (d - 1) rho)^(d - 1) / (1 - d rho)^d``, the maximum-likelihood ``z`` given the events. Setting
    ``p = rho`` instead (right only for ``d = 1``) would draw fewer events than were seen, by a factor of about
    ``1 - 2 (d - 1) rho`` per EM iteration (each event rules out ``d - 1`` shifts on either side), where the data
    say little."""
    n_shifts = codes.shape[0] * (codes.shape[-1] if n_shifts is None else n_shifts)
    density = (((codes != 0).sum(dim=(0, 2)).double() + 1) / (n_shifts + 2)).cpu()
    d = float(min_spacing)
    density = density.clamp(max=0.9 / d)  # d * rho < 1: the rods fill at most the whole line
    odds = density * (1 - (d - 1) * density) ** (d - 1) / (1 - d * density) ** d
    return odds / (1 + odds)


@torch.no_grad()
def _constrain(model: DCEA) -> None:
    """The templates' constraints (non-negative, edges at zero) without their unit norm: in EM the amplitude
    grid of the prior sets the scale."""
    if model.nonnegative_templates:
        model.templates.clamp_(min=0)
    if model.zero_edges:
        model.templates[..., : model.zero_edges] = 0
        model.templates[..., -model.zero_edges :] = 0
