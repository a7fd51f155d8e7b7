"""Codes drawn from their posterior: the E-step of the marginal-likelihood (EM) solver.

The prior of the codes of template ``k`` is a sparse spike-and-slab point process on the shifts: an event at
each shift with probability ``event_probability[k]``, amplitudes drawn from a distribution on a grid
(``amplitude_weights[k]`` over ``amplitudes``), and events of one template at least ``min_spacing`` bins apart
(a hard core; by default ``template_size``: one template cannot explain the same bins twice). Given the templates
and the baseline, the posterior of the codes is sampled by **blocked Metropolis-within-Gibbs**:

- the shifts of one template are cut into blocks of ``min_spacing`` shifts at an offset drawn at each sweep; one
  block holds at most one event. The blocks are coloured so that blocks of one colour (every ``n_colours``-th
  block, ``n_colours = ceil((min_spacing + template_size - 1) / min_spacing)``: every other block for the default
  spacing) do not share a bin of the data, and all of them (in every example) are updated at once, given the other
  templates' codes and the other colours' events;
- in a block, a candidate (no event, or an event at one shift with one amplitude) is proposed from a quadratic
  approximation of the log-likelihood around the rates without the block's own event (two correlations of the
  data with the template, as in a Newton step), and accepted with the Metropolis-Hastings ratio of the
  **exact** log-likelihood of the family; the chain therefore leaves the exact posterior invariant, and the
  proposal is close to it where events move the rates little.

With ``likelihood_weight`` ``w < 1`` the sampler draws from the *tempered* posterior ``p(y | x)^w p(x)`` instead
(the log-likelihood scaled by ``w`` in the proposal and in the Metropolis-Hastings ratio alike), whose events
are less tied to the current templates; EM tempers its first iterations so that its templates can leave the
start.

Everything is vectorised over examples and blocks, on the device of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from spikedict.families import Family
from spikedict.model import ConvolutionOperator

__all__ = ["CodePrior", "CodeSampler"]


@dataclass
class CodePrior:
    """The spike-and-slab prior of the codes.

    Attributes
    ----------
    event_probability : Tensor, shape (n_templates,)
        Probability of an event at a shift (away from other events of the same template).
    amplitudes : Tensor, shape (n_amplitudes,)
        The grid of event amplitudes (> 0).
    amplitude_weights : Tensor, shape (n_templates, n_amplitudes)
        Probability of each amplitude, per template (rows sum to 1).
    """

    event_probability: Tensor
    amplitudes: Tensor
    amplitude_weights: Tensor

    def log_odds(self) -> Tensor:
        """``log(p / (1 - p))`` of an event at a shift, shape (n_templates,)."""
        p = self.event_probability.clamp(1e-12, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)


class CodeSampler:
    """Blocked Metropolis-within-Gibbs sampler of the codes of one model (see the module docstring).

    Parameters
    ----------
    templates : Tensor, shape (n_templates, n_channels, template_size)
    baseline : Tensor, shape (n_channels,)
    y : Tensor, shape (n_examples, n_channels, n_bins)
    family : Family
        A count family (binomial, Poisson), whose ``A(eta) - y eta`` is the negative log-likelihood itself; it
        covers the examples of ``y`` (binomial ``n_trials`` per example, say).
    codes : Tensor, shape (n_examples, n_templates, n_bins - template_size + 1)
        The chain's state: amplitudes on the prior's grid, events of one template at least ``min_spacing``
        apart (zeros to start from nothing).
    min_spacing : int, optional
        Fewest bins between two events of one template (default: the template size), from 1 to the template size.
    likelihood_weight : float
        The power ``w`` in (0, 1] of the likelihood in the posterior drawn from (1: the posterior itself; see the
        module docstring). The attribute may be changed between sweeps.
    """

    def __init__(
        self,
        templates: Tensor,
        baseline: Tensor,
        y: Tensor,
        family: Family,
        codes: Tensor,
        min_spacing: int | None = None,
        likelihood_weight: float = 1.0,
    ) -> None:
        if templates.ndim != 3:
            raise ValueError("the code sampler needs 1-D templates, shape (n_templates, n_channels, template_size).")
        if family.linear_residual:
            raise ValueError(f"the code sampler draws the codes of count data (binomial, Poisson), got {family!r}.")
        self.templates, self.y, self.family = templates, y, family
        self.size = templates.shape[-1]
        self.spacing = self.size if min_spacing is None else int(min_spacing)
        if not 1 <= self.spacing <= self.size:
            raise ValueError(f"min_spacing must lie between 1 and the template size {self.size}, got {min_spacing!r}.")
        self.n_colours = -(-(self.spacing + self.size - 1) // self.spacing)
        self.n_shifts = y.shape[-1] - self.size + 1
        self.baseline = baseline.reshape(1, -1, 1).to(y.dtype)
        self.operators = [ConvolutionOperator(templates[k : k + 1], (y.shape[-1],)) for k in range(len(templates))]
        # the curvature of the quadratic model correlates A''(eta) with each template's squares
        self.squared = [ConvolutionOperator(templates[k : k + 1] ** 2, (y.shape[-1],)) for k in range(len(templates))]
        self.codes = codes.clone()
        self.eta = self._eta()
        self.accepted = 0.0
        self.likelihood_weight = float(likelihood_weight)
        if not 0 < self.likelihood_weight <= 1:
            raise ValueError(f"likelihood_weight must lie in (0, 1], got {likelihood_weight!r}.")

    def _eta(self) -> Tensor:
        operator = ConvolutionOperator(self.templates, (self.y.shape[-1],))
        return operator.decode(self.codes) + self.baseline

    def sweep(self, prior: CodePrior, generator: torch.Generator) -> float:
        """Update every block of every template once; returns the fraction of proposals accepted."""
        offset = int(torch.randint(0, self.spacing, (1,), generator=generator))
        accepted, proposed = 0.0, 0
        for k in range(len(self.templates)):
            for colour in range(self.n_colours):
                a, n = self._update(k, colour, offset, prior, generator)
                accepted, proposed = accepted + a, proposed + n
        self.accepted = accepted / max(proposed, 1)
        return self.accepted

    def _blocks(self, colour: int, offset: int) -> Tensor:
        """Shifts of the blocks of ``colour``, shape (n_blocks, min_spacing); -1 outside [0, n_shifts)."""
        spacing = self.spacing
        first = -offset + colour * spacing
        starts = torch.arange(first, self.n_shifts, self.n_colours * spacing)
        shifts = starts[:, None] + torch.arange(spacing)[None, :]
        return torch.where((shifts >= 0) & (shifts < self.n_shifts), shifts, -1).to(self.y.device)

    def _update(
        self, k: int, colour: int, offset: int, prior: CodePrior, generator: torch.Generator
    ) -> tuple[float, int]:
        spacing, codes = self.spacing, self.codes[:, k]
        operator, template = self.operators[k], self.templates[k]
        blocks = self._blocks(colour, offset)
        valid = blocks >= 0
        index = blocks.clamp(min=0)
        in_colour = torch.zeros(self.n_shifts, dtype=torch.bool, device=codes.device)
        in_colour[index[valid]] = True
        own = codes * in_colour
        eta_rest = self.eta - operator.decode(own[:, None])  # without this colour's events of template k
        # events of template k outside these blocks forbid candidates closer than min_spacing to them
        others = ((codes != 0) & ~in_colour).to(codes.dtype)[:, None]
        crowded = F.max_pool1d(others, 2 * spacing - 1, stride=1, padding=spacing - 1)[:, 0] > 0
        # the quadratic model of the log-likelihood of an event of amplitude a at each shift
        gradient = operator.correlate(self.y - self.family.mean(eta_rest))[:, 0]
        curvature = self.squared[k].correlate(self.family.curvature(eta_rest))[:, 0]
        amplitudes = prior.amplitudes.to(codes)
        approx = amplitudes * gradient[..., None] - 0.5 * amplitudes**2 * curvature[..., None]  # (n, shifts, g)
        approx = approx * self.likelihood_weight
        log_prior = prior.log_odds()[k].to(codes) + torch.log(prior.amplitude_weights[k].to(codes).clamp(min=1e-30))
        # candidates of every block: (n, blocks, spacing * n_amplitudes) events, then "no event"
        n_examples, n_blocks, n_amplitudes = codes.shape[0], blocks.shape[0], len(amplitudes)
        event_logits = (approx + log_prior)[:, index]  # (n, blocks, spacing, g)
        forbidden = ~valid[None, :, :, None] | crowded[:, index][..., None]
        event_logits = event_logits.masked_fill(forbidden, -math.inf).reshape(n_examples, n_blocks, -1)
        logits = torch.cat([event_logits, event_logits.new_zeros(n_examples, n_blocks, 1)], dim=-1)
        proposal = _gumbel_argmax(logits, generator)
        current = self._current_choice(own, index, valid, amplitudes)
        none = spacing * n_amplitudes
        # exact log-target (prior and log-likelihood, relative to no event in the block)
        flat_prior = log_prior.repeat(spacing)  # the order of the flattened (position, amplitude) candidates
        target_new = self._exact(eta_rest, template, index, proposal, none, amplitudes) + _pick(
            flat_prior, proposal, none
        )
        target_old = self._exact(eta_rest, template, index, current, none, amplitudes) + _pick(
            flat_prior, current, none
        )
        log_q = torch.log_softmax(logits, dim=-1)
        q_new, q_old = log_q.gather(-1, proposal[..., None])[..., 0], log_q.gather(-1, current[..., None])[..., 0]
        log_ratio = target_new - target_old + q_old - q_new
        uniform = torch.rand(log_ratio.shape, generator=generator).to(log_ratio.device)
        accept = (torch.log(uniform.clamp(min=1e-300)) < log_ratio) & torch.isfinite(target_new)
        choice = torch.where(accept, proposal, current)
        self._write(k, own, index, choice, none, amplitudes, in_colour, eta_rest)
        return float(accept.sum()), accept.numel()

    def _current_choice(self, own: Tensor, index: Tensor, valid: Tensor, amplitudes: Tensor) -> Tensor:
        """The candidate each block holds now: ``position * n_amplitudes + amplitude``, or "no event"."""
        values = own[:, index] * valid  # (n, blocks, size)
        has = values != 0
        position = has.to(torch.int64).argmax(dim=-1)
        amplitude = values.gather(-1, position[..., None])[..., 0]
        grid = (amplitude[..., None] - amplitudes).abs().argmin(dim=-1)
        none = index.shape[1] * len(amplitudes)
        return torch.where(has.any(dim=-1), position * len(amplitudes) + grid, none)

    def _exact(
        self,
        eta_rest: Tensor,
        template: Tensor,
        index: Tensor,
        choice: Tensor,
        none: int,
        amplitudes: Tensor,
    ) -> Tensor:
        """Exact log-likelihood gain (times the likelihood weight) of each block's ``choice`` over no event, shape
        (n, blocks)."""
        is_event, shift, amplitude = _decode_choice(index, choice, none, amplitudes)
        window = eta_rest.unfold(-1, self.size, 1)  # (n, c, shifts, size), a view
        rows = torch.arange(choice.shape[0], device=choice.device)[:, None]
        eta_window = window[rows, :, shift]  # (n, blocks, c, size)
        y_window = self.y.unfold(-1, self.size, 1)[rows, :, shift]
        moved = eta_window + amplitude[..., None, None] * template[None, None]
        family = self.family
        gain = family.negative_log_likelihood(y_window, eta_window) - family.negative_log_likelihood(y_window, moved)
        return self.likelihood_weight * gain.sum(dim=(-2, -1)) * is_event

    def _write(
        self,
        k: int,
        own: Tensor,
        index: Tensor,
        choice: Tensor,
        none: int,
        amplitudes: Tensor,
        in_colour: Tensor,
        eta_rest: Tensor,
    ) -> None:
        is_event, shift, amplitude = _decode_choice(index, choice, none, amplitudes)
        new = torch.zeros_like(own)
        rows = torch.arange(choice.shape[0], device=choice.device)[:, None].expand_as(shift)
        new[rows[is_event], shift[is_event]] = amplitude[is_event]
        self.codes[:, k] = self.codes[:, k] * ~in_colour + new
        self.eta = eta_rest + self.operators[k].decode(new[:, None])


def _decode_choice(index: Tensor, choice: Tensor, none: int, amplitudes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each block's candidate as ``(is_event, shift, amplitude)``, shapes (n, blocks); the shift of "no event" is
    its block's first and its amplitude 0."""
    is_event = choice != none
    position = torch.where(is_event, choice // len(amplitudes), 0)
    shift = torch.gather(index.expand(choice.shape[0], -1, -1), 2, position[..., None])[..., 0]
    amplitude = torch.where(is_event, amplitudes[choice.clamp(max=none - 1) % len(amplitudes)], 0.0)
    return is_event, shift, amplitude


def _pick(values: Tensor, choice: Tensor, none: int) -> Tensor:
    """``values[choice]`` for event candidates, 0 for "no event" (the reference of the log-odds)."""
    is_event = choice != none
    return torch.where(is_event, values[choice.clamp(max=none - 1)], 0.0)


def _gumbel_argmax(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of the categorical distribution ``softmax(logits)`` (last axis), by the Gumbel-max trick."""
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    return (logits.double() + gumbel).argmax(dim=-1)
