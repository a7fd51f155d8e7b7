"""spikedict and seqNMF side by side on the songbird HVC recording (issue 22, item 4, songbird part).

The shipped data set ``songbird`` (74 HVC neurons, one 22.2 s stretch, spike times on a 1/30 s grid; see
``data/README.md``) is the data on which seqNMF and PP-Seq show their sequences. In one process, for each seed:

1. **Data.** The recording is binned with the data set's bin size (``DATASET_DEFAULTS["songbird"]``: 1/30 s, 666
   bins) and split in time: the training stretch is the first 80% rounded to whole examples of 2 s (the
   data set's ``example_duration``: 540 bins, 18.0 s, so that spikedict's examples cover the same bins as seqNMF
   sees), the held-out stretch the later rest (126 bins, 4.2 s).
2. **Thinning.** Every spike goes to half A or half B with probability 1/2 (``B = rng.binomial(counts, 0.5)``,
   ``A = counts - B``, ``numpy.random.default_rng(seed)``): A and B are independent Poisson counts with half the
   rate each. Every method is fitted on half A of the training stretch; its held-out activations (codes) are
   inferred from half A of the held-out stretch with the templates fixed, and half B of the held-out stretch,
   whose rate equals half A's, is scored. So the codes never see the spikes they are scored on, and the
   templates never see the held-out stretch.
3. **Methods.**

   - ``spikedict``: ``SpikeDictionary(n_templates=2, template_size=15, family="poisson", seed=seed)`` with its
     default solver (EM for these counts, from its alternating MAP start; the tables of ``benchmarks/README.md``
     up to issue 22 were measured with the alternating solver, then the default) and the data set's 30 epochs, on the
     training half A cut into 2 s examples (``spikedict.workflow.split_examples``: 9 examples of 60 bins).
     Held-out rates: ``predict_rate`` of the held-out half A as one example of 126 bins.
   - ``spikedict-nonnegative``: the same with ``constraints=TemplateConstraints(nonnegative=True)`` (rate
     increases only, as seqNMF's factors): a setting a user would try for sequences, not tuned on these data.
   - ``seqnmf``: ``seqnmf.seqnmf`` (0.1.2, the Python port of the FeeLab toolbox) with K = 2, L = 15 bins,
     ``Lambda=0.005`` and 100 iterations, its other settings at their defaults (``shift=True``, no L1 or
     orthogonality terms), on the non-negative (neurons x time) matrix of the training half A. Lambda 0.005 is
     the value seqNMF's authors use on their own HVC calcium-imaging data in the toolbox's ``demo.m`` (K = 10,
     L = 2/3 s at the same 30 frames per second), chosen there by the paper's cross-over procedure; the Python
     package's default (0.001, which ``peers.py`` uses for simulated data) and 0.01 gave held-out scores within
     a few hundredths of a bit per spike of it in a trial run. Held-out activations: ``seqnmf`` on the held-out
     half A with ``W_init=W, W_fixed=True, shift=False`` (only its H update; ``shift`` would move W), the same
     Lambda and iterations; the predicted expected count is the reconstruction ``W (*) H``
     (``seqnmf.helpers.reconstruct``). seqNMF draws its initial W and H from numpy's global generator, which is
     seeded with the seed before each call.
   - ``smoothed`` (a reference, not a model): each neuron's own half A smoothed by a centred moving average of 15
     bins (the template length, not tuned), for the training and held-out stretches alike. It uses no other
     neuron and no sequence; what a model gains over it on this score comes from structure shared between
     neurons.
4. **Score.** Poisson log-likelihood of the held-out half B, summed over neurons and bins, against a constant rate
   per neuron: the mean count per bin of the training stretch (both halves) divided by 2, the rate of one half
   (every neuron spikes at least once in the training stretch, so this is never 0). Reported as bits per spike
   relative to the constant rate, ``(LL_model - LL_constant) / n_spikes_B / ln 2``. ``bits_per_spike`` is the
   model's rate as it is (``-inf`` where a held-out spike falls in a bin of rate 0: seqNMF's reconstruction is 0
   wherever no factor reaches a neuron, and spikedict's baseline of a neuron with no spike in the training half A
   goes to ``exp(-80)``); ``bits_per_spike_mixed`` mixes every model with the constant,
   ``(1 - w) * rate + w * constant``, with the weight ``w`` chosen (grid of 0 and 41 values from 1e-4 to 1, log
   spaced) to maximise the log-likelihood of the *training* stretch's half B under the rate the fit gives the
   training half A: a floor picked on training data only, the same rule for every method. ``spikes_below_floor``
   counts the held-out spikes of half B in bins where the model's own rate is below 1e-6.
5. **Sequences.** For each method and template (factor), the engaged neurons are those whose peak over the lags
   reaches ``ENGAGED_FRACTION`` (0.25) of the template's largest value (spikedict's templates are in log-rate and
   may be negative; only their positive peak counts), ordered by the lag of their peak. The templates of each
   method are matched to seqNMF's factors by the largest total overlap (Jaccard index) of engaged neurons; the
   consistency between two methods is that overlap and the Spearman correlation of the peak lags on the neurons
   engaged in both; the same measures between the seeds of one method say how stable each method is (each seed
   thins the spikes and initialises the fit anew). ``songbird_sequences.png`` (and ``.svg``) draws, for the first
   seed, each method's templates (engaged neurons sorted by peak lag) and the raster of the recording's last 6 s
   (across the split) with the neurons sorted as seqNMF and PP-Seq draw them: by the template in which their
   (relative) peak is largest, then by peak lag.

Fit seconds are wall time of the fit alone (torch's default threads unless ``--threads``, one with ``--quick``;
numpy's BLAS as it comes), after an untimed warm-up fit of each method; they are small and vary with the
machine's load, which the output records.

Usage::

    .venv-peers/bin/python benchmarks/songbird.py                 # seeds 0 1 2, one to two minutes
    .venv-peers/bin/python benchmarks/songbird.py --quick         # smoke run: seed 0, about 10 s
    .venv-peers/bin/python benchmarks/songbird.py --seeds 0 --out /tmp/songbird

Writes ``songbird.csv`` (one row per seed and method), ``songbird_consistency.csv`` (one row per seed, pair of
methods and matched template), ``songbird_across_seeds.csv`` (one row per method, pair of seeds and matched
template), ``songbird_summary.csv`` (means over seeds), ``songbird.md`` and
``songbird_sequences.png`` / ``.svg`` to ``--out`` (default ``benchmarks/results/songbird/``, git-ignored);
``songbird_quick*`` with ``--quick``. In an environment without seqnmf (``.venv``) the seqNMF rows say why they
were not run and spikedict still runs.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import uniform_filter1d
from scipy.special import gammaln, xlogy
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import RESULTS, cpu_model, git_revision, run_with_threads

from spikedict import SpikeDictionary
from spikedict.io import SpikeCounts, bin_spiketrains, load_dataset
from spikedict.settings import TemplateConstraints
from spikedict.solvers import Alternating
from spikedict.workflow import DATASET_DEFAULTS, split_examples

DATASET = "songbird"
DEFAULTS = DATASET_DEFAULTS[DATASET]
TRAINING_FRACTION = 0.8
METHODS = ("spikedict", "spikedict-nonnegative", "seqnmf", "smoothed")
REFERENCE = "seqnmf"  # the method every other one is matched to and compared with
SEQNMF_LAMBDA = 0.005
SEQNMF_ITERATIONS = 100
ENGAGED_FRACTION = 0.25
MIXING_WEIGHTS = np.concatenate([[0.0], np.logspace(-4, 0, 41)])
RATE_FLOOR = 1e-6  # held-out spikes in bins of a lower expected count are counted (spikes_below_floor)
# --quick: a smoke run that exercises every step, measures nothing.
QUICK_EPOCHS, QUICK_CODE_ITERATIONS, QUICK_SEQNMF_ITERATIONS = 2, 30, 5
OUTPUT = RESULTS / "songbird"
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
RASTER_SECONDS = 6.0  # the figure's raster: the end of the recording, across the split


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Recording:
    """The binned recording and its split in time.

    Attributes
    ----------
    counts : ndarray of int, shape (n_neurons, n_bins)
        Spike counts of the whole recording.
    neuron_names : list of str
    bin_seconds : float
    n_training_bins : int
        The training stretch is ``counts[:, :n_training_bins]``, the held-out stretch the rest.
    example_bins : int
        Bins of one spikedict training example.
    """

    counts: np.ndarray
    neuron_names: list[str]
    bin_seconds: float
    n_training_bins: int
    example_bins: int

    @property
    def training(self) -> np.ndarray:
        """Counts of the training stretch, (n_neurons, n_training_bins)."""
        return self.counts[:, : self.n_training_bins]

    @property
    def held_out(self) -> np.ndarray:
        """Counts of the held-out (later) stretch."""
        return self.counts[:, self.n_training_bins :]


def training_bins(n_bins: int, example_bins: int, fraction: float = TRAINING_FRACTION) -> int:
    """Bins of the training stretch: ``fraction`` of ``n_bins`` rounded to a whole number of examples.

    At least one example, and at least one example's worth of bins left for the held-out stretch.

    Examples
    --------
    >>> training_bins(666, 60)
    540
    """
    if n_bins < 2 * example_bins:
        raise ValueError(f"{n_bins} bins cannot hold a training example and a held-out stretch of {example_bins}.")
    n_examples = int(round(fraction * n_bins / example_bins))
    return int(min(max(n_examples, 1), (n_bins - example_bins) // example_bins) * example_bins)


def load_recording() -> Recording:
    """Bin ``songbird`` with its data set's bin size and split it (see :func:`training_bins`)."""
    counts = bin_spiketrains(load_dataset(DATASET), DEFAULTS.bin_size)
    if counts.n_examples != 1:
        raise ValueError(f"expected one stretch of {DATASET}, got {counts.n_examples} examples.")
    bin_seconds = float(DEFAULTS.bin_size.rescale("s").magnitude)
    example_bins = int(round(float(DEFAULTS.example_duration.rescale("s").magnitude) / bin_seconds))
    values = np.asarray(counts.counts[0], dtype=np.int64)
    return Recording(
        values, list(counts.channel_names), bin_seconds, training_bins(values.shape[1], example_bins), example_bins
    )


def thin(counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split every spike into half A or half B with probability 1/2: two independent Poisson halves.

    Returns
    -------
    half_a, half_b : ndarray
        ``half_b = rng.binomial(counts, 0.5)``, ``half_a = counts - half_b``.
    """
    half_b = rng.binomial(counts, 0.5)
    return counts - half_b, half_b


# -------------------------------------------------------------------------------------------- score
def poisson_log_likelihood(counts: np.ndarray, rate: np.ndarray) -> float:
    """Poisson log-likelihood of ``counts`` under ``rate``, summed over all bins (``-inf`` for a count at rate 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), counts.shape)
    with np.errstate(divide="ignore"):
        return float(np.sum(xlogy(counts, rate) - rate - gammaln(counts + 1.0)))


def bits_per_spike(log_likelihood: float, constant_log_likelihood: float, n_spikes: int) -> float:
    """Log-likelihood gain over the constant rate in bits per scored spike."""
    return (log_likelihood - constant_log_likelihood) / n_spikes / np.log(2.0)


def mixed(rate: np.ndarray, constant: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * rate + weight * constant`` (``constant`` per neuron, broadcast over bins)."""
    return (1.0 - weight) * rate + weight * np.asarray(constant)[:, None]


def choose_mixing_weight(rate: np.ndarray, constant: np.ndarray, counts: np.ndarray) -> float:
    """The weight of :data:`MIXING_WEIGHTS` whose mixture of ``rate`` and ``constant`` best predicts ``counts``."""
    scores = [poisson_log_likelihood(counts, mixed(rate, constant, weight)) for weight in MIXING_WEIGHTS]
    return float(MIXING_WEIGHTS[int(np.argmax(scores))])


# --------------------------------------------------------------------------------------------- fits
@dataclass
class Fit:
    """One method fitted on the training half A.

    Attributes
    ----------
    templates : ndarray, shape (n_templates, n_neurons, template_size)
        spikedict's templates (log-rate, unit norm) or seqNMF's factors ``W`` (non-negative, neurons x lags).
    fit_seconds : float
    training_rate : ndarray, shape (n_neurons, n_training_bins)
        The fit's expected counts of the training half A (its in-sample codes / H).
    held_out_rate : ndarray, shape (n_neurons, n_held_out_bins)
        Expected counts of the held-out stretch, activations inferred from its half A, templates fixed.
    settings : dict
    """

    templates: np.ndarray
    fit_seconds: float
    training_rate: np.ndarray
    held_out_rate: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)


def spikedict_estimator(seed: int, nonnegative: bool, quick: bool) -> SpikeDictionary:
    """The data set's spikedict fit (``spikedict fit songbird``'s estimator), on the CPU, without progress bar."""
    model = SpikeDictionary(
        n_templates=DEFAULTS.n_templates,
        template_size=int(DEFAULTS.template_size),
        family=DEFAULTS.family,
        seed=seed,
        device="cpu",
        progress=False,
        constraints=TemplateConstraints(nonnegative=True) if nonnegative else None,
    )
    model.set_params(solver__n_epochs=QUICK_EPOCHS if quick else DEFAULTS.n_epochs)
    if quick:  # the default solver for counts is EM: a short MAP start from one initialisation
        start = Alternating(n_epochs=QUICK_EPOCHS, n_code_iterations=QUICK_CODE_ITERATIONS)
        model.set_params(solver__map_fit=start, solver__n_starts=1, encoder__n_iterations=QUICK_CODE_ITERATIONS)
    return model


def fit_spikedict(
    recording: Recording, training_a: np.ndarray, held_out_a: np.ndarray, seed: int, nonnegative: bool, quick: bool
) -> Fit:
    """spikedict on the training half A cut into examples; rates of the training and held-out halves A."""
    stretch = SpikeCounts(
        training_a[None], np.array([1]), DEFAULTS.bin_size, 0 * DEFAULTS.bin_size, recording.neuron_names
    )
    examples = split_examples(stretch, recording.example_bins)
    model = spikedict_estimator(seed, nonnegative, quick)
    start = time.perf_counter()
    model.fit(examples)
    fit_seconds = time.perf_counter() - start

    def rate(half_a: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_rate(half_a[None].astype(np.float64))[0], dtype=np.float64)

    settings = {
        "n_examples": examples.n_examples,
        "epochs": len(model.history_),
        "stop_reason": model.stop_reason_,
        "sparsity": round(float(model.sparsity_), 4),
        "lowest_baseline": round(float(np.min(model.baseline_)), 2),
    }
    return Fit(
        np.asarray(model.templates_, dtype=np.float64), fit_seconds, rate(training_a), rate(held_out_a), settings
    )


def seqnmf_available() -> str:
    """``"ok (seqnmf VERSION)"`` or why seqnmf cannot be imported here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation
            import seqnmf  # noqa: F401
        from importlib.metadata import version

        return f"ok (seqnmf {version('seqnmf')})"
    except Exception as error:  # report, do not stop
        return f"cannot import seqnmf: {type(error).__name__}: {error}".splitlines()[0]


def fit_seqnmf(training_a: np.ndarray, held_out_a: np.ndarray, seed: int, seqnmf_lambda: float, quick: bool) -> Fit:
    """seqNMF (K, L of the data set) on the training half A; H of the held-out half A with W fixed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation
        from seqnmf import seqnmf
        from seqnmf.helpers import reconstruct

    n_factors, lags = DEFAULTS.n_templates, int(DEFAULTS.template_size)
    iterations = QUICK_SEQNMF_ITERATIONS if quick else SEQNMF_ITERATIONS
    np.random.seed(seed)  # noqa: NPY002 (seqnmf draws W_init and H_init from numpy's global generator)
    start = time.perf_counter()
    W, H, _, loadings, power = seqnmf(
        training_a.astype(np.float64), K=n_factors, L=lags, Lambda=seqnmf_lambda, max_iter=iterations
    )
    fit_seconds = time.perf_counter() - start
    np.random.seed(seed)  # noqa: NPY002 (H_init of the held-out stretch)
    # W_fixed: only H is updated (its columns are rescaled to unit norm and W by the inverse each iteration, so
    # the returned W has the same shape per factor up to scale); shift=False, or seqnmf would shift W.
    W_held, H_held, *_ = seqnmf(
        held_out_a.astype(np.float64),
        K=n_factors,
        L=lags,
        Lambda=seqnmf_lambda,
        max_iter=iterations,
        W_init=W.copy(),
        W_fixed=True,
        shift=False,
    )
    settings = {
        "Lambda": seqnmf_lambda,
        "max_iter": iterations,
        "loadings": [round(float(value), 4) for value in loadings],
        "power": round(float(power), 4),
    }
    return Fit(
        np.transpose(W, (1, 0, 2)).astype(np.float64),
        fit_seconds,
        reconstruct(W, H),
        reconstruct(W_held, H_held),
        settings,
    )


def smoothed(training_a: np.ndarray, held_out_a: np.ndarray) -> Fit:
    """The reference without a model: each neuron's own half A, smoothed over the template's length.

    A centred moving average of ``template_size`` bins (``scipy.ndimage.uniform_filter1d``, reflected at the
    ends), neuron by neuron; no templates.
    """
    width = int(DEFAULTS.template_size)

    def rate(half_a: np.ndarray) -> np.ndarray:
        return uniform_filter1d(half_a.astype(np.float64), width, axis=1, mode="reflect")

    empty = np.zeros((0, training_a.shape[0], width))
    return Fit(empty, 0.0, rate(training_a), rate(held_out_a), {"width": width})


def fit_method(
    method: str, recording: Recording, training_a: np.ndarray, held_out_a: np.ndarray, seed: int, args: Any
) -> Fit:
    """Fit ``method`` (one of :data:`METHODS`) on the training half A."""
    if method == "seqnmf":
        return fit_seqnmf(training_a, held_out_a, seed, args.seqnmf_lambda, args.quick)
    if method == "smoothed":
        return smoothed(training_a, held_out_a)
    nonnegative = method == "spikedict-nonnegative"
    return fit_spikedict(recording, training_a, held_out_a, seed, nonnegative, args.quick)


# ---------------------------------------------------------------------------------------- sequences
def sequence(template: np.ndarray, fraction: float = ENGAGED_FRACTION) -> pd.DataFrame:
    """The engaged neurons of one template, ordered by the lag of their peak.

    Parameters
    ----------
    template : ndarray, shape (n_neurons, template_size)
    fraction : float
        A neuron is engaged when its largest value over the lags reaches ``fraction`` of the template's largest
        value (which must be positive; negative lobes of a log-rate template do not count).

    Returns
    -------
    pandas.DataFrame
        Columns ``neuron`` (row index), ``peak_lag`` (bins) and ``peak`` (value), sorted by ``peak_lag`` then by
        decreasing ``peak``; empty when the template has no positive value.

    Examples
    --------
    >>> template = np.zeros((3, 5))
    >>> template[0, 4], template[2, 1], template[1, 0] = 1.0, 0.5, 0.1
    >>> sequence(template)["neuron"].tolist()
    [2, 0]
    """
    peaks = template.max(axis=1)
    largest = float(peaks.max()) if peaks.size else 0.0
    if largest <= 0:
        return pd.DataFrame({"neuron": [], "peak_lag": [], "peak": []}).astype({"neuron": int, "peak_lag": int})
    engaged = np.flatnonzero(peaks >= fraction * largest)
    table = pd.DataFrame({"neuron": engaged, "peak_lag": template[engaged].argmax(axis=1), "peak": peaks[engaged]})
    return table.sort_values(["peak_lag", "peak"], ascending=[True, False], kind="stable").reset_index(drop=True)


def jaccard(first: set[int], second: set[int]) -> float:
    """Size of the intersection over size of the union (nan when both are empty)."""
    union = first | second
    return len(first & second) / len(union) if union else float("nan")


def match_templates(sequences: Sequence[pd.DataFrame], reference: Sequence[pd.DataFrame]) -> list[int]:
    """For each reference template in turn, the index of the template of ``sequences`` matched to it.

    The permutation with the largest total Jaccard index of engaged neurons (the first such one); all
    permutations are tried, which is fine for a few templates.
    """
    sets = [set(table["neuron"]) for table in sequences]
    reference_sets = [set(table["neuron"]) for table in reference]

    def total(order: tuple[int, ...]) -> float:
        return float(np.nansum([jaccard(sets[i], reference_sets[k]) for k, i in enumerate(order)]))

    return list(max(itertools.permutations(range(len(sets)), len(reference_sets)), key=total))


def order_consistency(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, Any]:
    """Overlap of the engaged neurons of two templates and Spearman correlation of their peak lags on the shared ones.

    The correlation is nan with fewer than 3 shared neurons or when one side's lags are all equal.
    """
    shared = sorted(set(first["neuron"]) & set(second["neuron"]))
    rho = float("nan")
    if len(shared) >= 3:
        lag_first = first.set_index("neuron").loc[shared, "peak_lag"].to_numpy()
        lag_second = second.set_index("neuron").loc[shared, "peak_lag"].to_numpy()
        if np.ptp(lag_first) > 0 and np.ptp(lag_second) > 0:
            rho = float(spearmanr(lag_first, lag_second).statistic)
    return {
        "n_shared": len(shared),
        "jaccard": jaccard(set(first["neuron"]), set(second["neuron"])),
        "spearman": rho,
    }


def neuron_order(templates: np.ndarray, fraction: float = ENGAGED_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """All neurons in the order seqNMF and PP-Seq draw them, and the template each is assigned to (-1: none).

    Each engaged neuron goes to the template where its peak relative to that template's largest value is
    highest; the neurons of template 0 come first, sorted by peak lag, then those of template 1, ..., then the
    others in their original order.
    """
    peaks = templates.max(axis=2)  # (n_templates, n_neurons)
    largest = np.maximum(peaks.max(axis=1, keepdims=True), np.finfo(float).tiny)
    relative = np.where(peaks > 0, peaks / largest, 0.0)
    assigned = np.where(relative.max(axis=0) >= fraction, relative.argmax(axis=0), -1)
    lags = templates.argmax(axis=2)
    order = []
    for index in range(len(templates)):
        members = np.flatnonzero(assigned == index)
        order.extend(members[np.lexsort((-relative[index, members], lags[index, members]))].tolist())
    order.extend(np.flatnonzero(assigned == -1).tolist())
    return np.asarray(order), assigned[order]


# ------------------------------------------------------------------------------------------- figure
def draw_sequences(
    fits: dict[str, Fit], recording: Recording, seed: int, path: Path, suffixes: Sequence[str] = (".png", ".svg")
) -> list[Path]:
    """Templates (engaged neurons sorted by peak lag) and the sorted raster of each method, side by side.

    Written as ``path`` with each of ``suffixes``; returns the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(fits)
    n_templates = max(len(fit.templates) for fit in fits.values())
    figure = plt.figure(figsize=(4.2 * len(methods), 10.5), layout="constrained")
    grid = figure.add_gridspec(2, len(methods) * n_templates, height_ratios=[1.0, 1.25])
    lag_ms = np.arange(int(DEFAULTS.template_size)) * recording.bin_seconds * 1000
    for column, method in enumerate(methods):
        templates = fits[method].templates
        signed = bool(np.any(templates < 0))
        for index, template in enumerate(templates):
            axis = figure.add_subplot(grid[0, column * n_templates + index])
            table = sequence(template)
            rows = template[table["neuron"].to_numpy()] if len(table) else np.zeros((1, template.shape[1]))
            limit = float(np.abs(rows).max()) or 1.0
            image = axis.imshow(
                rows,
                aspect="auto",
                interpolation="nearest",
                cmap="RdBu_r" if signed else "magma_r",
                vmin=-limit if signed else 0.0,
                vmax=limit,
                extent=(lag_ms[0], lag_ms[-1] + recording.bin_seconds * 1000, len(rows), 0),
            )
            axis.set_yticks(np.arange(len(table)) + 0.5)
            names = [recording.neuron_names[n].removeprefix("neuron ") for n in table["neuron"]]
            axis.set_yticklabels(names, fontsize=5)
            axis.set_xlabel("lag (ms)")
            axis.set_title(f"{method}\ntemplate {index + 1}: {len(table)} engaged", fontsize=9, color=COLORS[index])
            figure.colorbar(image, ax=axis, shrink=0.6, label="log-rate weight" if signed else "W")
        axis = figure.add_subplot(grid[1, column * n_templates : (column + 1) * n_templates])
        order, assigned = neuron_order(templates)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        n_bins = recording.counts.shape[1]
        first_bin = max(n_bins - int(round(RASTER_SECONDS / recording.bin_seconds)), 0)
        neurons, bins = np.nonzero(recording.counts[:, first_bin:])
        times = (first_bin + bins + 0.5) * recording.bin_seconds
        colors = np.array([COLORS[a] if a >= 0 else "0.6" for a in assigned], dtype=object)
        axis.scatter(times, rank[neurons], c=list(colors[rank[neurons]]), marker="|", s=14, linewidths=1.0)
        axis.axvline(recording.n_training_bins * recording.bin_seconds, color="k", linestyle="--", linewidth=0.8)
        axis.set_ylim(len(order), -1)
        axis.set_xlim(first_bin * recording.bin_seconds, n_bins * recording.bin_seconds)
        axis.set_xlabel("time (s); dashed line: training | held out")
        axis.set_ylabel(f"neuron, sorted by {method}")
        axis.set_title(f"{method}: the last {RASTER_SECONDS:g} s, sorted by template, then lag", fontsize=9)
    figure.suptitle(
        f"songbird HVC (74 neurons, bins of 1/30 s): templates fitted on the training half A, seed {seed}", fontsize=11
    )
    written = []
    for suffix in suffixes:
        figure.savefig(path.with_suffix(suffix), dpi=150 if suffix == ".png" and len(suffixes) > 1 else 72)
        written.append(path.with_suffix(suffix))
    plt.close(figure)
    return written


# -------------------------------------------------------------------------------------------- run
def run_seed(
    seed: int, methods: Sequence[str], recording: Recording, args: Any, available: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Fit]]:
    """Thin, fit every method, score the held-out half B, compare the sequences: rows of both tables, the fits."""
    half_a, half_b = thin(recording.counts, np.random.default_rng(seed))
    n = recording.n_training_bins
    constant = recording.training.mean(axis=1) / 2.0
    scored = half_b[:, n:]
    n_spikes = int(scored.sum())
    constant_held_out = poisson_log_likelihood(scored, constant[:, None])
    fits: dict[str, Fit] = {}
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method, "seed": seed, "held_out_spikes": n_spikes}
        if method == "seqnmf" and not available.startswith("ok"):
            row["status"] = f"not run: {available}"
            rows.append(row)
            continue
        fit = fit_method(method, recording, half_a[:, :n], half_a[:, n:], seed, args)
        fits[method] = fit
        weight = choose_mixing_weight(fit.training_rate, constant, half_b[:, :n])
        raw = poisson_log_likelihood(scored, fit.held_out_rate)
        floored = poisson_log_likelihood(scored, mixed(fit.held_out_rate, constant, weight))
        row.update(
            fit_seconds=fit.fit_seconds,
            bits_per_spike=bits_per_spike(raw, constant_held_out, n_spikes),
            mixing_weight=weight,
            bits_per_spike_mixed=bits_per_spike(floored, constant_held_out, n_spikes),
            spikes_below_floor=int(np.sum(scored[fit.held_out_rate < RATE_FLOOR])),
            settings=str(fit.settings),
            status="ok",
        )
        rows.append(row)
    # Sequences: each method's templates in the order of the reference's factors (or as they are without it).
    sequences = {
        method: [sequence(template) for template in fit.templates] for method, fit in fits.items() if len(fit.templates)
    }
    for method in sequences:
        if REFERENCE in sequences and method != REFERENCE:
            order = match_templates(sequences[method], sequences[REFERENCE])
            fits[method].templates = fits[method].templates[order]
            sequences[method] = [sequences[method][i] for i in order]
            fits[method].settings["template_of_factor"] = [i + 1 for i in order]
    consistency = []
    for first, second in itertools.combinations(list(sequences), 2):
        for index, (one, other) in enumerate(zip(sequences[first], sequences[second], strict=True)):
            consistency.append(
                {
                    "seed": seed,
                    "method": first,
                    "other_method": second,
                    "template": index + 1,
                    "n_engaged": len(one),
                    "other_n_engaged": len(other),
                    **order_consistency(one, other),
                }
            )
    for row in rows:
        if row["method"] in sequences:
            row["n_engaged"] = " / ".join(str(len(table)) for table in sequences[row["method"]])
            if row["method"] != REFERENCE and REFERENCE in sequences:
                pairs = [
                    order_consistency(one, other)
                    for one, other in zip(sequences[row["method"]], sequences[REFERENCE], strict=True)
                ]
                row["jaccard_with_seqnmf"] = " / ".join(f"{pair['jaccard']:.2f}" for pair in pairs)
                row["order_correlation_with_seqnmf"] = " / ".join(f"{pair['spearman']:.2f}" for pair in pairs)
    return rows, consistency, fits


def stability(templates: dict[str, dict[int, np.ndarray]]) -> pd.DataFrame:
    """Consistency of each method with itself across seeds (other thinning, other initialisation).

    For every method and pair of seeds, the later seed's templates are matched to the earlier seed's
    (:func:`match_templates`) and compared with :func:`order_consistency`.
    """
    rows = []
    for method, by_seed in templates.items():
        for seed, other_seed in itertools.combinations(sorted(by_seed), 2):
            first = [sequence(template) for template in by_seed[seed]]
            second = [sequence(template) for template in by_seed[other_seed]]
            order = match_templates(second, first)
            for index, (one, other) in enumerate(zip(first, [second[i] for i in order], strict=True)):
                row = {"method": method, "seed": seed, "other_seed": other_seed, "template": index + 1}
                rows.append(
                    {**row, "n_engaged": len(one), "other_n_engaged": len(other), **order_consistency(one, other)}
                )
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, consistency: pd.DataFrame, across_seeds: pd.DataFrame) -> pd.DataFrame:
    """Per method: seeds, median fit seconds, mean (and spread) of the scores, mean consistency with seqNMF and
    with itself across seeds."""
    ok = table[table["status"] == "ok"]
    rows = []
    for method, group in ok.groupby("method", sort=False):
        row: dict[str, Any] = {
            "method": method,
            "n_seeds": len(group),
            "fit_seconds_median": group["fit_seconds"].median(),
            "bits_per_spike_mean": group["bits_per_spike"].mean(),
            "seeds_with_infinite_loss": int(np.sum(~np.isfinite(group["bits_per_spike"]))),
            "bits_per_spike_mixed_mean": group["bits_per_spike_mixed"].mean(),
            "bits_per_spike_mixed_min": group["bits_per_spike_mixed"].min(),
            "bits_per_spike_mixed_max": group["bits_per_spike_mixed"].max(),
        }
        pairs = consistency
        if len(consistency):
            pairs = consistency[(consistency["method"] == method) & (consistency["other_method"] == REFERENCE)]
        if len(pairs):
            row["jaccard_with_seqnmf_mean"] = pairs["jaccard"].mean()
            row["order_correlation_with_seqnmf_mean"] = pairs["spearman"].mean()
        own = across_seeds[across_seeds["method"] == method] if len(across_seeds) else across_seeds
        if len(own):
            row["jaccard_across_seeds_mean"] = own["jaccard"].mean()
            row["order_correlation_across_seeds_mean"] = own["spearman"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A markdown table, floats to 3 decimals (seconds to 2)."""

    def text(column: str, value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            if np.isnan(value):
                return ""
            return f"{value:.2f}" if "seconds" in column else f"{value:.3f}" if np.isfinite(value) else f"{value}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for values in table.itertuples(index=False):
        lines.append("| " + " | ".join(text(c, v) for c, v in zip(table.columns, values, strict=True)) + " |")
    return "\n".join(lines)


def warm_up(recording: Recording, methods: Sequence[str], args: Any, available: str) -> None:
    """One short untimed fit of each method, so that no timed fit pays for first-call costs."""
    half_a = recording.counts  # any counts will do
    quick = argparse.Namespace(**{**vars(args), "quick": True})
    for method in methods:
        if method != "seqnmf" or available.startswith("ok"):
            n = recording.n_training_bins
            fit_method(method, recording, half_a[:, :n], half_a[:, n:], 0, quick)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="thinning and model seeds (0 1 2; --quick: 0)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, a few iterations, measures nothing")
    parser.add_argument("--seqnmf-lambda", type=float, default=SEQNMF_LAMBDA, help="seqNMF's Lambda (0.005)")
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"output folder (default {OUTPUT})")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 with --quick, else torch's default)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module's docstring); torch's thread count is restored at the end."""
    return run_with_threads(run, parse_arguments(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Every seed and method, the tables, the figure and the files of :func:`main`."""
    stem = "songbird_quick" if args.quick else "songbird"
    available = seqnmf_available() if "seqnmf" in args.methods else "not requested"
    recording = load_recording()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    header = [
        f"spikedict and seqNMF on songbird, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); numpy {np.__version__}; Python {platform.python_version()}; load average at start: {load}",
        f"spikedict revision: {git_revision()}; seqnmf: {available}",
        f"command: {' '.join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv)))}",
        f"data: {recording.counts.shape[0]} neurons x {recording.counts.shape[1]} bins of "
        f"{recording.bin_seconds * 1000:.2f} ms; training stretch {recording.n_training_bins} bins "
        f"({recording.n_training_bins * recording.bin_seconds:.1f} s, {recording.training.sum()} spikes), held out "
        f"{recording.held_out.shape[1]} bins ({recording.held_out.shape[1] * recording.bin_seconds:.1f} s, "
        f"{recording.held_out.sum()} spikes); spikedict examples of {recording.example_bins} bins",
        f"settings: {DEFAULTS.n_templates} templates of {int(DEFAULTS.template_size)} bins; spikedict "
        f"{QUICK_EPOCHS if args.quick else DEFAULTS.n_epochs} epochs; seqNMF Lambda {args.seqnmf_lambda}, "
        f"{QUICK_SEQNMF_ITERATIONS if args.quick else SEQNMF_ITERATIONS} iterations; engaged: peak >= "
        f"{ENGAGED_FRACTION} of the template's largest; seeds {args.seeds}" + (" (--quick)" if args.quick else ""),
    ]
    print("\n".join(header), flush=True)
    if not args.quick:  # a smoke run measures nothing
        warm_up(recording, args.methods, args, available)
    rows, consistency_rows, first_fits = [], [], None
    templates: dict[str, dict[int, np.ndarray]] = {}
    for seed in args.seeds:
        seed_rows, seed_consistency, fits = run_seed(seed, args.methods, recording, args, available)
        first_fits = fits if first_fits is None else first_fits
        for method, fit in fits.items():
            if len(fit.templates):
                templates.setdefault(method, {})[seed] = fit.templates
        rows += seed_rows
        consistency_rows += seed_consistency
        for row in seed_rows:
            print(
                f"  seed {seed} {row['method']:<22} fit {row.get('fit_seconds', np.nan):6.2f} s, held-out bits/spike "
                f"{row.get('bits_per_spike', np.nan):.3f} (mixed {row.get('bits_per_spike_mixed', np.nan):.3f}, "
                f"w {row.get('mixing_weight', np.nan):.3g}), engaged {row.get('n_engaged', '-')}, {row['status']}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    consistency = pd.DataFrame(consistency_rows)
    across_seeds = stability(templates)
    summary = summarise(table, consistency, across_seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = []
    first_fits = {method: fit for method, fit in (first_fits or {}).items() if len(fit.templates)}
    if first_fits:  # --quick: a small PNG only (drawing the SVG takes seconds)
        suffixes = (".png",) if args.quick else (".png", ".svg")
        figures = draw_sequences(first_fits, recording, args.seeds[0], args.out / f"{stem}_sequences", suffixes)
    shown = [
        "method",
        "seed",
        "fit_seconds",
        "bits_per_spike",
        "bits_per_spike_mixed",
        "mixing_weight",
        "spikes_below_floor",
        "n_engaged",
        "jaccard_with_seqnmf",
        "order_correlation_with_seqnmf",
        "status",
    ]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    markdown = [
        "# " + header[0],
        "",
        *[f"- {line}" for line in header[1:]],
        f"- load average at end: {load}",
        "",
        "## Per seed and method",
        "",
        to_markdown(table[[column for column in shown if column in table]]),
        "",
        "## Consistency of the sequences between methods (templates matched to seqNMF's factors)",
        "",
        to_markdown(consistency) if len(consistency) else "(one method only)",
        "",
        "## Consistency of each method with itself across seeds (later seed matched to the earlier)",
        "",
        to_markdown(across_seeds) if len(across_seeds) else "(one seed only)",
        "",
        "## Over seeds",
        "",
        to_markdown(summary) if len(summary) else "(nothing ran)",
        "",
    ]
    text = "\n".join(markdown)
    print("\n" + text)
    table.to_csv(args.out / f"{stem}.csv", index=False)
    consistency.to_csv(args.out / f"{stem}_consistency.csv", index=False)
    summary.to_csv(args.out / f"{stem}_summary.csv", index=False)
    across_seeds.to_csv(args.out / f"{stem}_across_seeds.csv", index=False)
    (args.out / f"{stem}.md").write_text(text)
    suffixes = (".csv", "_consistency.csv", "_across_seeds.csv", "_summary.csv", ".md")
    names = [f"{stem}{suffix}" for suffix in suffixes]
    print(f"wrote {', '.join(names + [path.name for path in figures])} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
