"""Data handling shared by the analysis functions: duck-typed counts, subsets of examples, folds, time blocks.

Every analysis function accepts the same inputs as :meth:`spikedict.SpikeDictionary.fit`: a count array
(numpy or torch) of shape ``(n_examples, n_channels, n_bins)``, a
:class:`~spikedict.simulate.SimulatedCounts`, or any object with ``counts`` and ``n_trials`` attributes
(``spikedict.io``'s ``SpikeCounts``). Ground truth (``templates``, ``codes``, ``rates``, ``family``) is used
where the object carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from spikedict import families
from spikedict.families import Binomial, Family

__all__ = ["AnalysisData", "as_analysis_data", "example_folds", "heldout_split", "split_trials", "time_blocks"]


def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(
            f"{name} must be a numeric array of shape (n_examples, n_channels, n_bins), got "
            f"{type(values).__name__} with dtype {array.dtype}."
        )
    return array.astype(np.float64, copy=False)


@dataclass
class AnalysisData:
    """Counts with whatever metadata and ground truth came with them.

    Has ``counts`` and ``n_trials``, so it can be passed to :meth:`spikedict.SpikeDictionary.fit` directly.

    Attributes
    ----------
    counts : ndarray, shape (n_examples, n_channels, n_bins)
    n_trials : int, ndarray of shape (n_examples,) or None
        Trials pooled per example (binomial counts).
    family : Family or None
        The family the data were drawn from, if known (simulations).
    templates : ndarray, shape (n_templates, n_channels, template_size), or None
        True templates, if known.
    codes : ndarray, shape (n_examples, n_templates, n_code_bins), or None
        True codes, if known.
    rates : ndarray, shape (n_examples, n_channels, n_bins), or None
        True expected counts per bin, if known.
    """

    counts: np.ndarray
    n_trials: int | np.ndarray | None = None
    family: Family | None = None
    templates: np.ndarray | None = None
    codes: np.ndarray | None = None
    rates: np.ndarray | None = None

    @property
    def n_examples(self) -> int:
        return int(self.counts.shape[0])

    def subset(self, index: np.ndarray) -> AnalysisData:
        """The examples ``index`` (and their ``n_trials``, codes, rates and family parameters)."""
        index = np.asarray(index, dtype=np.int64)
        n_trials = self.n_trials
        if n_trials is not None and np.ndim(n_trials) == 1:
            n_trials = np.asarray(n_trials)[index]
        family = self.family.select(torch.as_tensor(index)) if self.family is not None else None
        return replace(
            self,
            counts=self.counts[index],
            n_trials=n_trials,
            family=family,
            codes=None if self.codes is None else self.codes[index],
            rates=None if self.rates is None else self.rates[index],
        )


def as_analysis_data(data: Any, name: str = "data") -> AnalysisData:
    """Read counts (and n_trials, family, ground truth where present) from any supported input.

    Parameters
    ----------
    data : array, Tensor, SimulatedCounts or object with ``counts`` (and optionally ``n_trials``)
        Counts of shape ``(n_examples, n_channels, n_bins)``.

    Returns
    -------
    AnalysisData

    Examples
    --------
    >>> import numpy as np
    >>> as_analysis_data(np.zeros((2, 1, 5))).counts.shape
    (2, 1, 5)
    """
    if isinstance(data, AnalysisData):
        return data
    if hasattr(data, "counts") and not isinstance(data, (np.ndarray, torch.Tensor)):
        counts = _as_array(data.counts, f"{name}.counts")
        n_trials = getattr(data, "n_trials", None)
        family = getattr(data, "family", None)
        templates = getattr(data, "templates", None)
        codes = getattr(data, "codes", None)
        rates = getattr(data, "rates", None)
    else:
        counts = _as_array(data, name)
        n_trials = family = templates = codes = rates = None
    if counts.ndim != 3:
        hint = " For a single channel add an axis: counts[:, None, :]." if counts.ndim == 2 else ""
        raise ValueError(f"{name} must have shape (n_examples, n_channels, n_bins), got shape {counts.shape}.{hint}")
    if counts.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (its first axis has length 0).")
    if n_trials is not None and np.ndim(n_trials) == 1 and len(n_trials) != counts.shape[0]:
        raise ValueError(
            f"{name}.n_trials has {len(n_trials)} values but the counts have {counts.shape[0]} examples; "
            "give one n_trials per example or a single number."
        )
    if n_trials is not None and np.ndim(n_trials) == 0:
        n_trials = int(n_trials)
    if not isinstance(family, Family):
        family = None
    return AnalysisData(
        counts=counts,
        n_trials=n_trials,
        family=family,
        templates=None if templates is None else np.asarray(templates, dtype=np.float64),
        codes=None if codes is None else np.asarray(codes, dtype=np.float64),
        rates=None if rates is None else np.asarray(rates, dtype=np.float64),
    )


def _carried_n_trials(data: AnalysisData) -> Any:
    """The trials per example the data carry, themselves or through their binomial family (None if neither)."""
    if data.n_trials is None and isinstance(data.family, Binomial):
        return data.family.n_trials
    return data.n_trials


def resolve_family(family: str | Family | None, data: AnalysisData, n_trials: Any = None) -> Family:
    """The family to evaluate ``data`` in: given, else the data's own, with ``n_trials`` from the data."""
    if family is None:
        if data.family is None:
            raise ValueError(
                "the family of the data is not known: pass family='binomial' (with n_trials), 'poisson' or "
                "'gaussian', or pass a SimulatedCounts that carries its family."
            )
        return data.family
    return families.resolve_family(family, n_trials, _carried_n_trials(data))


def heldout_split(n_examples: int, validation: float | int | Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (train, held-out).

    Parameters
    ----------
    n_examples : int
    validation : float, int or sequence of int
        Fraction of the examples held out (0 < validation < 1, at least one example), a number of held-out
        examples (int >= 1), or the held-out example indices themselves.
    seed : int
        Seeds the random choice of held-out examples.

    Returns
    -------
    train, heldout : ndarray of int
        Sorted example indices.

    Examples
    --------
    >>> train, heldout = heldout_split(8, 0.25, seed=0)
    >>> len(train), len(heldout)
    (6, 2)
    """
    if isinstance(validation, (float, np.floating)) and not isinstance(validation, bool):
        if not 0 < validation < 1:
            raise ValueError(
                f"validation as a fraction must lie strictly between 0 and 1, got {validation}; "
                "pass e.g. validation=0.25, a number of examples, or the held-out indices."
            )
        n_heldout = max(1, round(validation * n_examples))
        heldout = np.random.default_rng(seed).permutation(n_examples)[:n_heldout]
    elif isinstance(validation, (int, np.integer)) and not isinstance(validation, bool):
        if not 1 <= validation < n_examples:
            raise ValueError(
                f"validation as a number of held-out examples must be between 1 and n_examples - 1 = "
                f"{n_examples - 1}, got {validation}."
            )
        heldout = np.random.default_rng(seed).permutation(n_examples)[: int(validation)]
    else:
        heldout = np.unique(np.asarray(validation, dtype=np.int64))
        if heldout.size == 0 or heldout.min() < 0 or heldout.max() >= n_examples:
            raise ValueError(
                f"held-out example indices must be a non-empty set of integers in [0, {n_examples - 1}], "
                f"got {list(np.asarray(validation).tolist())[:10]}."
            )
    heldout = np.sort(heldout)
    train = np.setdiff1d(np.arange(n_examples), heldout)
    if train.size == 0 or heldout.size == 0:
        raise ValueError(
            f"the split leaves {train.size} training and {heldout.size} held-out example(s) out of {n_examples}; "
            "both need at least one. Use more examples, or chop long examples with time_blocks(data, n_blocks)."
        )
    return train, heldout


def example_folds(n_examples: int, cv: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cv`` folds over shuffled examples: a list of (train, held-out) index arrays.

    Examples
    --------
    >>> [heldout.tolist() for _, heldout in example_folds(5, 2, seed=0)]
    [[2, 3, 4], [0, 1]]
    """
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2 (the number of folds), got {cv!r}.")
    if cv > n_examples:
        raise ValueError(
            f"cv = {cv} folds need at least {cv} examples, got {n_examples}; use cv <= {n_examples}, or split "
            "long examples into time blocks (blocks=... or time_blocks(data, n_blocks))."
        )
    order = np.random.default_rng(seed).permutation(n_examples)
    folds = []
    for part in np.array_split(order, cv):
        heldout = np.sort(part)
        folds.append((np.setdiff1d(np.arange(n_examples), heldout), heldout))
    return folds


def time_blocks(data: Any, n_blocks: int) -> AnalysisData:
    """Cut every example into ``n_blocks`` consecutive blocks of equal length, each a new example.

    Use it to hold out time blocks instead of whole trials (e.g. for one long recording). Trailing bins
    that do not fill a block are dropped; events whose template crosses a block edge are cut, so blocks
    should be much longer than the templates. True codes are not carried over (their bins do not split
    with the counts' bins).

    Parameters
    ----------
    data : array, Tensor or counts object, shape (n_examples, n_channels, n_bins)
    n_blocks : int

    Returns
    -------
    AnalysisData
        Counts of shape ``(n_examples * n_blocks, n_channels, n_bins // n_blocks)``, example-major (the
        blocks of example 0 first).

    Examples
    --------
    >>> import numpy as np
    >>> time_blocks(np.arange(10.0).reshape(1, 1, 10), 2).counts[:, 0].tolist()
    [[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]]
    """
    data = as_analysis_data(data)
    n_examples, _, n_bins = data.counts.shape
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 1:
        raise ValueError(f"n_blocks must be an integer >= 1, got {n_blocks!r}.")
    length = n_bins // n_blocks
    if length < 1:
        raise ValueError(f"cannot cut {n_bins} bins into {n_blocks} blocks; use n_blocks <= {n_bins}.")

    def cut(values: np.ndarray) -> np.ndarray:
        values = values[..., : length * n_blocks].reshape(n_examples, values.shape[1], n_blocks, length)
        return values.transpose(0, 2, 1, 3).reshape(n_examples * n_blocks, values.shape[1], length)

    n_trials = data.n_trials
    if n_trials is not None and np.ndim(n_trials) == 1:
        n_trials = np.repeat(np.asarray(n_trials), n_blocks)
    family = data.family
    if isinstance(family, Binomial) and np.ndim(family.n_trials) == 1:
        family = Binomial(np.repeat(family.n_trials, n_blocks))
    return AnalysisData(
        counts=cut(data.counts),
        n_trials=n_trials,
        family=family,
        templates=data.templates,
        codes=None,
        rates=None if data.rates is None else cut(data.rates),
    )


def split_trials(data: Any, fraction: float = 0.5, seed: int = 0) -> tuple[AnalysisData, AnalysisData]:
    """Split the pooled trials of every binomial example into two independent groups (binomial thinning).

    Choosing ``M_A = round(fraction * M)`` of the ``M`` exchangeable trials at random gives, from pooled
    counts alone, ``y_A ~ Hypergeometric(M, y, M_A)`` and ``y_B = y - y_A``; given the rate,
    ``y_A ~ Binomial(M_A, p)`` and ``y_B ~ Binomial(M - M_A, p)`` are independent. Codes inferred from ``y_A``
    can then be scored on ``y_B`` without having seen it.

    Parameters
    ----------
    data : counts object or SimulatedCounts with ``n_trials`` (binomial counts, ``M >= 2``)
    fraction : float
        Share of the trials in the first group, in (0, 1).
    seed : int

    Returns
    -------
    first, second : AnalysisData
        Counts of the two groups with their ``n_trials``; their sum is the original counts.

    Examples
    --------
    >>> import numpy as np
    >>> from spikedict.simulate import paper_templates, simulate_counts
    >>> simulation = simulate_counts(paper_templates(20), n_examples=2, n_bins=100, n_trials=30, seed=0)
    >>> first, second = split_trials(simulation)
    >>> first.n_trials, second.n_trials, bool(np.all(first.counts + second.counts == simulation.counts))
    (15, 15, True)
    """
    data = as_analysis_data(data)
    trials = _carried_n_trials(data)
    if trials is None:
        raise ValueError(
            "split_trials needs binomial counts with n_trials (the number of trials pooled per example); pass a "
            "counts object or SimulatedCounts that carries n_trials."
        )
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}.")
    trials = np.asarray(trials, dtype=np.int64)
    first_trials = np.rint(fraction * trials).astype(np.int64)
    if np.any(first_trials < 1) or np.any(first_trials > trials - 1):
        raise ValueError(
            f"fraction {fraction} of n_trials = {trials.tolist()} leaves a group without trials; every example needs "
            "n_trials >= 2 and a fraction that gives each group at least one trial."
        )
    per_example = np.broadcast_to(trials.reshape((-1, 1, 1)) if trials.ndim else trials, data.counts.shape)
    per_example_first = np.broadcast_to(
        first_trials.reshape((-1, 1, 1)) if first_trials.ndim else first_trials, data.counts.shape
    )
    counts = data.counts.astype(np.int64)
    rng = np.random.default_rng(seed)
    first_counts = rng.hypergeometric(counts, per_example - counts, per_example_first).astype(np.float64)

    def group(values: np.ndarray, n: np.ndarray) -> AnalysisData:
        n_trials = int(n) if n.ndim == 0 else n
        return AnalysisData(counts=values, n_trials=n_trials, family=Binomial(n_trials), templates=data.templates)

    return group(first_counts, first_trials), group(data.counts - first_counts, trials - first_trials)
