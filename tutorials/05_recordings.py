# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The shipped recordings, one study each
#
# spikedict ships four real recordings (see `data/README.md` for their sources and licences):
#
# 1. **locust**: one auditory receptor neuron, 10 s of white noise for each of two stimuli;
# 2. **motoneurone**: one motoneurone, 469 replicates of a transcranial magnetic stimulus at t = 0;
# 3. **STN**: one subthalamic-nucleus neuron, 50 trials around a GO cue at t = 0, each annotated with the
#    direction of the movement;
# 4. **songbird**: 74 HVC neurons of a singing zebra finch, one 22 s stretch.
#
# Each part fits its recording the way `spikedict fit NAME` does (`spikedict.workflow.fit_recording`): the
# data set's bin size, template size, pooling and number of epochs (`spikedict.workflow.DATASET_DEFAULTS`);
# the last 20% of the examples held out; the "auto" sparsity, then lower ones along
# `spikedict.workflow.SPARSITY_PATH` while each predicts half of the training examples' spikes from the other
# half better than the one before. The function `fit_like_the_command` below does this with the library's
# public functions, without the report that the command writes (whose figures of 74 channels take longer to
# draw than the fit).
#
# Then each part asks the same questions:
#
# * **What do the templates look like?** Drawn as a firing-rate modulation: the rate, in spikes/s, at the
#   baseline plus the template scaled by the median amplitude of its events. For the Poisson family
#   `rate = exp(baseline + amplitude * template) / bin`; for the binomial family (pooled trials) the rate per
#   trial, `sigmoid(baseline + amplitude * template) / bin`. The band is the range of the same curve for
#   templates refitted on 3 bootstrap resamples of the training examples (at the chosen sparsity).
# * **Where do the events fall?** An event's time is its code position plus the bin where its template peaks,
#   in ms from the trial's alignment (the stimulus or the GO cue).
# * **Do the templates predict held-out spikes?** The spikes of every held-out example are split in two
#   independent halves; spikedict (codes inferred on the first half), a constant rate, the PSTH (for trials
#   aligned to an event, the rate a physiologist reaches for first) and elephant's `instantaneous_rate` (the
#   first half smoothed with a Gaussian kernel whose width is chosen on the training examples) each predict
#   the second half (`spikedict.analysis.heldout_comparison`). The gain over the constant rate is in bits per
#   spike of the second half: above 0 is better than a constant rate. One row is added here: the smoothed
#   rate mixed with the constant rate (`instantaneous_rate + constant`, kernel width and weight chosen on the
#   training examples), because the smoothed rate alone falls to near zero far from first-half spikes and pays
#   heavily for every second-half spike there, while spikedict's rate and the PSTH never reach zero
#   (`smoothing_with_a_floor` below).
# * **What do the templates show that the PSTH does not?**
#
# The outcome is printed by the code, whichever model wins. Set `SPIKEDICT_TUTORIAL_QUICK=1` for a tiny run
# (two epochs, few encoder iterations: the numbers then mean nothing).

# %%
import os
import time
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import quantities as pq

from spikedict import SpikeDictionary
from spikedict.analysis import (
    align_templates,
    bits_per_spike,
    constant_rates,
    find_events,
    heldout_comparison,
    log_likelihood_per_bin,
    smoothed_rates,
    split_half_gain,
    split_spikes,
)
from spikedict.io import bin_spiketrains
from spikedict.workflow import SPARSITY_PATH, RecordingDefaults, open_recording, select_examples, split_examples

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
# Tiny fits for the test suite; the full run uses the data sets' defaults, as `spikedict fit` does.
QUICK_PARAMETERS: dict[str, Any] = {"solver__n_epochs": 2, "encoder__n_iterations": 30} if QUICK else {}
HELDOUT_FRACTION = 0.2  # spikedict fit's default
N_BOOTSTRAPS = 3
pd.set_option("display.width", 140)
pd.set_option("display.max_columns", 20)

# %% [markdown]
# ## Tools shared by the four parts
#
# `fit_like_the_command` bins a shipped recording with its defaults, holds out the last examples, fits and
# chooses the sparsity, and scores the fit on the held-out examples. The other functions turn a fit into rate
# curves, events with their times, and figures.


# %%
@dataclass
class Study:
    """One recording fitted as ``spikedict fit NAME`` fits it.

    Attributes
    ----------
    name : str
    block : neo.Block
    settings : RecordingDefaults
        The data set's defaults (``DATASET_DEFAULTS[name]``).
    counts : SpikeCounts
        Every example, in recording order.
    n_train : int
        The first ``n_train`` examples are the training ones; the others are held out.
    parameters : dict
        The ``SpikeDictionary`` keywords of the fit (but the sparsity).
    model : SpikeDictionary
        The fit at the chosen sparsity.
    sparsity_path : pandas.DataFrame
        Sparsities tried and the split-half gain of each (bits per spike over a constant rate).
    heldout : pandas.DataFrame
        The held-out comparison (:func:`spikedict.analysis.heldout_comparison`).
    """

    name: str
    block: Any
    settings: RecordingDefaults
    counts: Any
    n_train: int
    parameters: dict[str, Any]
    model: SpikeDictionary
    sparsity_path: pd.DataFrame
    heldout: pd.DataFrame

    @property
    def train(self) -> Any:
        """The training examples."""
        return select_examples(self.counts, slice(0, self.n_train))

    @property
    def heldout_counts(self) -> Any:
        """The held-out examples (the last ones)."""
        return select_examples(self.counts, slice(self.n_train, self.counts.n_examples))

    @property
    def bin_seconds(self) -> float:
        """Width of a bin, in seconds."""
        return float(self.settings.bin_size.rescale(pq.s).magnitude)


def has_events(model: SpikeDictionary) -> bool:
    """Whether the fit ended with any non-zero code."""
    return bool(len(model.history_)) and float(model.history_["code_density"].iloc[-1]) > 0


def fit_like_the_command(name: str) -> Study:
    """Bin, hold out, fit and choose the sparsity as ``spikedict fit NAME`` does, then score the held-out examples.

    Parameters
    ----------
    name : str
        A shipped data set (``spikedict.io.list_datasets()``).

    Returns
    -------
    Study
    """
    block, _, settings = open_recording(name)
    counts = bin_spiketrains(block, settings.bin_size, group_by=settings.group_by, pool_size=settings.pool_size)
    if settings.example_duration is not None:
        counts = split_examples(counts, int(round(float((settings.example_duration / settings.bin_size).simplified))))
    n_heldout = max(1, int(round(HELDOUT_FRACTION * counts.n_examples)))
    n_train = counts.n_examples - n_heldout
    train = select_examples(counts, slice(0, n_train))
    heldout = select_examples(counts, slice(n_train, counts.n_examples))
    parameters = {
        "n_templates": settings.n_templates,
        "template_size": int(settings.template_size),
        "family": "binomial" if settings.pooled else settings.family,
        "solver__n_epochs": settings.n_epochs,
        "seed": 0,
        "progress": False,
        **QUICK_PARAMETERS,
    }

    def fit(sparsity: float | str) -> SpikeDictionary:
        return SpikeDictionary().set_params(**parameters, sparsity=sparsity).fit(train)

    def gain(model: SpikeDictionary) -> float:
        return split_half_gain(model, train) if has_events(model) else -np.inf

    # The "auto" sparsity, then lower ones while the split-half gain rises (spikedict.workflow's path).
    model = fit("auto")
    auto, best_gain = model.sparsity_, gain(model)
    path = [{"sparsity": auto, "events": has_events(model), "split_half_bits_per_spike": best_gain}]
    for factor in SPARSITY_PATH:
        candidate = fit(auto * factor)
        candidate_gain = gain(candidate)
        path.append(
            {
                "sparsity": candidate.sparsity_,
                "events": has_events(candidate),
                "split_half_bits_per_spike": candidate_gain,
            }
        )
        if candidate_gain > best_gain:
            model, best_gain = candidate, candidate_gain
        elif np.isfinite(best_gain):
            break
    table = heldout_comparison(
        model, train, heldout, bin_size=settings.bin_size, psth=settings.example_duration is None, seed=0
    )
    floor = smoothing_with_a_floor(train, heldout, parameters["family"], settings.bin_size)
    table = pd.concat([table, pd.DataFrame([floor])], ignore_index=True)
    return Study(name, block, settings, counts, n_train, parameters, model, pd.DataFrame(path), table)


#: Kernel widths (in bins, as heldout_comparison's) and weights of the constant rate tried by the floored smoothing.
WIDTHS_IN_BINS = (1, 2, 4, 8, 16, 32)
CONSTANT_WEIGHTS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def smoothing_with_a_floor(train: Any, heldout: Any, family: str, bin_size: pq.Quantity) -> dict[str, Any]:
    """The held-out row of elephant's smoothed rate mixed with the constant rate, ``(1 - w) * smoothed + w *
    constant``, its kernel width and ``w`` chosen on the training examples.

    A smoothed rate is near zero wherever the first half has no spike for a few kernel widths, and a second-half
    spike there costs the log of that near-zero rate: ``heldout_comparison``'s ``instantaneous_rate`` row has no
    floor, while spikedict's rate (an exponential or a sigmoid) and the PSTH (at least half a training spike per
    bin) never reach zero. The mixture is the floor. The halves are split as ``heldout_comparison`` splits them
    (seed 0 on the held-out examples, seed 1 on the training ones).
    """

    def halves(data: Any, seed: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        first, second, exposure = split_spikes(data, family, seed=seed)
        # Expected counts of the second half per expected count of the first (trials of each, for pooled trials).
        scale = 1.0 if family == "poisson" else np.reshape(second.n_trials / first.n_trials, (-1, 1, 1))
        constant = constant_rates(second, family, fitted_on=train) * exposure
        return first, second, scale, constant

    first, second, scale, constant = halves(train, seed=1)
    best = (-np.inf, WIDTHS_IN_BINS[0], CONSTANT_WEIGHTS[0])
    for width in WIDTHS_IN_BINS:
        smoothed = smoothed_rates(first.counts, bin_size, width * bin_size) * scale
        for weight in CONSTANT_WEIGHTS:
            score = log_likelihood_per_bin(second, (1 - weight) * smoothed + weight * constant, family)
            best = max(best, (score, width, weight))
    _, width, weight = best
    first, second, scale, constant = halves(heldout, seed=0)
    rates = (1 - weight) * smoothed_rates(first.counts, bin_size, width * bin_size) * scale + weight * constant
    milliseconds = width * float(bin_size.rescale(pq.ms).magnitude)
    return {
        "model": "instantaneous_rate + constant",
        "setting": f"sigma {milliseconds:g} ms, constant weight {weight:g}",
        "heldout_log_likelihood_per_bin": log_likelihood_per_bin(second, rates, family),
        "bits_per_spike": bits_per_spike(second, rates, constant, family),
    }


def describe(study: Study) -> None:
    """Print the data's shape, the sparsity path and the fit's settings."""
    counts, settings = study.counts, study.settings
    print(
        f"{study.name}: {counts.n_examples} examples ({study.n_train} for training, "
        f"{counts.n_examples - study.n_train} held out) x {counts.n_channels} channel(s) x {counts.n_bins} bins of "
        f"{settings.bin_size}; {study.parameters['family']} family, {settings.n_templates} template(s) of "
        f"{int(settings.template_size)} bins"
        + (f", groups of {settings.pool_size} trials pooled" if settings.pool_size else "")
    )
    print(study.sparsity_path.round(4).to_string(index=False))
    print(f"chosen sparsity {study.model.sparsity_:.4g}; events at the end of the fit: {has_events(study.model)}")


def verdict(study: Study) -> None:
    """Print the held-out table and which rate model predicts the held-out spikes best."""
    table = study.heldout
    print(table.round(4).to_string(index=False))
    best = table.loc[table["bits_per_spike"].idxmax()]
    spikedict_gain = float(table.loc[table["model"] == "spikedict", "bits_per_spike"].iloc[0])
    print(
        f"best held-out prediction: {best['model']} ({best['bits_per_spike']:+.4f} bits per spike over a constant rate)"
    )
    for name, gain in zip(table["model"], table["bits_per_spike"]):
        if name != "spikedict":
            relation = "beats" if spikedict_gain > gain else "does not beat"
            print(f"  spikedict {relation} {name} ({spikedict_gain:+.4f} against {gain:+.4f} bits per spike)")


def median_amplitudes(model: SpikeDictionary, codes: np.ndarray) -> np.ndarray:
    """Median code value at the events of each template (NaN for a template without events).

    Parameters
    ----------
    model : SpikeDictionary
    codes : ndarray, shape (n_examples, n_templates, n_code_bins)

    Returns
    -------
    ndarray, shape (n_templates,)
    """
    medians = np.full(model.n_templates, np.nan)
    for template in range(model.n_templates):
        values = [codes[example, template, find_events(codes[example, template])] for example in range(len(codes))]
        values = np.concatenate(values) if values else np.empty(0)
        if values.size:
            medians[template] = float(np.median(values))
    return medians


def rate_curves(model: SpikeDictionary, counts: Any, bin_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Firing rate of every template at the median amplitude of its events in ``counts``, and the baseline rate.

    Returns
    -------
    rates : ndarray, shape (n_templates, n_channels, template_size)
        Spikes/s (per trial for the binomial family); NaN for a template without events.
    baseline_rates : ndarray, shape (n_channels,)
    """
    amplitudes = median_amplitudes(model, model.transform(counts))
    natural = model.baseline_[None, :, None] + amplitudes[:, None, None] * model.templates_

    def inverse_link(value: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-value)) if model.family_.name == "binomial" else np.exp(value)

    return inverse_link(natural) / bin_seconds, inverse_link(model.baseline_) / bin_seconds


def bootstrap_curves(study: Study, n_resamples: int = N_BOOTSTRAPS) -> list[np.ndarray]:
    """Rate curves of templates refitted on bootstrap resamples of the training examples, in the order of the
    study's templates (matched by :func:`spikedict.analysis.align_templates`, no shift)."""
    rng = np.random.default_rng(1)
    curves = []
    for _ in range(n_resamples):
        resample = select_examples(study.train, rng.integers(0, study.n_train, study.n_train))
        refit = SpikeDictionary().set_params(**study.parameters, sparsity=study.model.sparsity_).fit(resample)
        order = align_templates(refit.templates_, study.model.templates_, max_lag=0).table
        order = order.sort_values("true_index")["learned_index"].to_numpy(dtype=int)
        curves.append(rate_curves(refit, resample, study.bin_seconds)[0][order])
    return curves


def plot_rate_curves(study: Study, bands: list[np.ndarray], channel: int = 0) -> plt.Figure:
    """One panel per template: the rate at the median event amplitude, the range of the bootstrap refits' curves
    (those whose template has events), the baseline; a template without events says so."""
    curves, baseline_rates = rate_curves(study.model, study.train, study.bin_seconds)
    n_templates, _, size = curves.shape
    milliseconds = (np.arange(size) + 0.5) * study.bin_seconds * 1000
    figure, axes = plt.subplots(
        1, n_templates, figsize=(max(3.2 * n_templates, 6.5), 2.8), layout="constrained", squeeze=False
    )
    per_trial = " per trial" if study.parameters["family"] == "binomial" else ""
    for template, axis in enumerate(axes[0]):
        refits = [band[template, channel] for band in bands if np.isfinite(band[template, channel]).all()]
        if len(refits) >= 2:
            stacked = np.stack(refits)
            axis.fill_between(milliseconds, stacked.min(0), stacked.max(0), color="C3", alpha=0.25, linewidth=0)
        if np.isfinite(curves[template, channel]).all():
            axis.plot(milliseconds, curves[template, channel], color="C3")
        else:
            axis.text(0.5, 0.5, "no events in the\ntraining examples", transform=axis.transAxes, ha="center")
        axis.axhline(baseline_rates[channel], color="0.5", linestyle="--", linewidth=1)
        axis.set_xlim(0, size * study.bin_seconds * 1000)
        axis.set_title(f"template {template}\n({len(refits)} of {len(bands)} refits with events)", fontsize=9)
        axis.set_xlabel("time in the template (ms)")
        if template == 0:
            axis.set_ylabel(f"rate{per_trial} (spikes/s)")
    figure.suptitle(f"{study.name}: rate at the median event amplitude (dashed: baseline)", fontsize=10)
    return figure


def event_table(study: Study, counts: Any) -> pd.DataFrame:
    """Every event of every example of ``counts``: example, template, code position, amplitude, onset and time.

    An event is a run of non-zero codes, at its largest code (:func:`spikedict.analysis.find_events`). Its time is
    the code position plus the bin where its template peaks (its largest value over channels: codes are
    non-negative, so that is where the event raises the rate most), at the bin's centre, in ms from the examples'
    ``t_start`` (the trials' alignment), plus the example's offset in its trial where trials were cut into
    examples. Its onset is the time of the template's first bin (its left edge).
    """
    codes = study.model.transform(counts)
    peaks = study.model.templates_.max(axis=1).argmax(axis=1)
    bin_ms = study.bin_seconds * 1000
    start_ms = float(counts.t_start.rescale(pq.ms).magnitude)
    labels = counts.example_labels
    offsets = labels["offset_bins"].to_numpy() if "offset_bins" in labels else np.zeros(counts.n_examples, dtype=int)
    rows = []
    for example in range(counts.n_examples):
        for template in range(study.model.n_templates):
            for position in find_events(codes[example, template]):
                onset_ms = start_ms + (offsets[example] + position) * bin_ms
                rows.append(
                    {
                        "example": example,
                        "template": template,
                        "position": int(position),
                        "amplitude": float(codes[example, template, position]),
                        "onset_ms": onset_ms,
                        "time_ms": onset_ms + (peaks[template] + 0.5) * bin_ms,
                    }
                )
    return pd.DataFrame(rows, columns=["example", "template", "position", "amplitude", "onset_ms", "time_ms"])


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson's correlation, NaN when either has no variance."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.size < 2 or first.std() == 0 or second.std() == 0:
        return float("nan")
    return float(np.corrcoef(first, second)[0, 1])


# %% [markdown]
# ## Part 1: the locust auditory receptor
#
# One receptor neuron (about 90 spikes/s), one 10 s trial for each of two white-noise stimuli, cut into 500 ms
# examples, Poisson counts in 2 ms bins, three templates of 50 ms. There is no repeated trial, so no PSTH:
# the held-out comparison has spikedict, the constant rate and `instantaneous_rate` (bare and floored).
# Tutorial 04 studies this recording by hand (its own spike split and kernel widths); there, no rate model
# predicted held-out spikes much better than a constant rate at 2 ms.

# %%
clock = time.perf_counter()
locust = fit_like_the_command("locust")
describe(locust)
plot_rate_curves(locust, bootstrap_curves(locust))

# %% [markdown]
# ### Held-out prediction
#
# A stimulus of white noise drives this neuron, and no model here sees the stimulus: the templates can only
# capture the shape of the rate around a spike (bursts, refractoriness) and the codes where it recurs. Read
# the verdict off the table.

# %%
verdict(locust)
locust_events = event_table(locust, locust.counts)
seconds = locust.counts.n_examples * locust.counts.n_bins * locust.bin_seconds
print("events per second by template:", (locust_events.groupby("template").size() / seconds).round(2).to_dict())
print(f"part 1 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# What little there is: a model that predicts held-out spikes no better than a constant rate says that, at
# these settings, the templates describe no structure that generalises beyond the mean rate; a small gain says
# the spikes cluster a little in time, in the shapes drawn above. Either way this recording's stimulus (the
# sound) is what drives the neuron, and a model of it would need the stimulus as an input, which spikedict
# does not take.

# %% [markdown]
# ## Part 2: a motoneurone and the magnetic stimulus
#
# 469 replicates of 500 ms, a transcranial magnetic stimulus at t = 0, about 4 spikes each and never two within
# 47 ms: a single replicate holds at most one spike where the evoked response is (about +26 ms). So groups of
# consecutive replicates are pooled into binomial counts in 2 ms bins (the data set's default `pool_size`, the
# `--pool N` of `spikedict fit`; the group size is printed below), and one template of 50 ms learns the evoked
# response; its code in each group is the response's amplitude in that part of the session. The last 20% of
# the groups (the end of the session) are held out.

# %%
clock = time.perf_counter()
motoneurone = fit_like_the_command("motoneurone")
describe(motoneurone)
plot_rate_curves(motoneurone, bootstrap_curves(motoneurone))
verdict(motoneurone)

# %% [markdown]
# ### Where the events fall relative to the stimulus
#
# Events of every group (training and held-out: the codes of held-out groups are inferred with the templates
# fixed). The window from +16 to +36 ms holds the evoked response; the code prints the share of events that
# fall in it, next to the share of the trial the window covers (what events spread evenly would give).

# %%
EVOKED_MS = (16.0, 36.0)
motoneurone_events = event_table(motoneurone, motoneurone.counts)
in_window = motoneurone_events["time_ms"].between(*EVOKED_MS)
trial_ms = motoneurone.counts.n_bins * motoneurone.bin_seconds * 1000
print(
    f"{len(motoneurone_events)} events in {motoneurone.counts.n_examples} groups; {int(in_window.sum())} of them "
    f"({in_window.mean() if len(in_window) else float('nan'):.1%}) between {EVOKED_MS[0]:g} and {EVOKED_MS[1]:g} ms, "
    f"a window of {(EVOKED_MS[1] - EVOKED_MS[0]) / trial_ms:.1%} of the trial"
)
figure, axis = plt.subplots(figsize=(7, 2.6), layout="constrained")
start_ms = float(motoneurone.counts.t_start.rescale(pq.ms).magnitude)
axis.hist(motoneurone_events["time_ms"], bins=np.arange(start_ms, start_ms + trial_ms + 1, 10), color="C3")
axis.axvline(0, color="k", linewidth=1, label="stimulus")
axis.axvspan(*EVOKED_MS, color="0.8", zorder=0, label="evoked window")
axis.set_xlabel("event time from the stimulus (ms)")
axis.set_ylabel("events")
axis.legend(frameon=False)

# %% [markdown]
# ### What the template shows that the PSTH does not: the response across the session
#
# The PSTH averages the replicates of the whole session into one curve. The template's code gives the evoked
# response's amplitude group by group (consecutive replicates, in recording order): the largest event of the
# group in the evoked window (0 where there is none). Next to it, the raw measure a physiologist would take: the
# share of the group's replicates with a spike in the window. Their correlation is printed.

# %%
groups = np.arange(motoneurone.counts.n_examples)
evoked = motoneurone_events[in_window].groupby("example")["amplitude"].max()
amplitude_by_group = evoked.reindex(groups, fill_value=0.0).to_numpy()
first_bin = int(round((EVOKED_MS[0] - start_ms) / (motoneurone.bin_seconds * 1000)))
last_bin = int(round((EVOKED_MS[1] - start_ms) / (motoneurone.bin_seconds * 1000)))
# A replicate never has two spikes within 47 ms, so the count in the window is the number of replicates with one.
share_with_spike = motoneurone.counts.counts[:, 0, first_bin:last_bin].sum(axis=1) / motoneurone.counts.n_trials
session = pd.DataFrame(
    {"group": groups, "code_amplitude": amplitude_by_group, "share_of_replicates_with_a_spike": share_with_spike}
)
session["held_out"] = session["group"] >= motoneurone.n_train
print(session.round(3).to_string(index=False))
print(f"correlation of the code amplitude and the share: {correlation(amplitude_by_group, share_with_spike):.3f}")
figure, axis = plt.subplots(figsize=(7, 2.8), layout="constrained")
colors = np.where(session["held_out"], "C0", "C3")
axis.scatter(groups, amplitude_by_group, c=colors)
axis.plot(groups, amplitude_by_group, color="0.6", linewidth=1, zorder=0)
axis.set_xlabel(f"group of {motoneurone.settings.pool_size} replicates (recording order; blue: held out)")
axis.set_ylabel("code amplitude near +26 ms")
second_axis = axis.twinx()
second_axis.plot(groups, share_with_spike, color="k", linestyle=":", label="share of replicates with a spike")
second_axis.set_ylabel("share with a spike")
second_axis.legend(frameon=False, loc="lower left")
print(f"part 2 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# The code amplitude is a model-based estimate of the same thing the share of replicates measures directly:
# if they follow each other, the template has found the evoked response and its amplitude tracks the session;
# the PSTH alone shows neither. Both are noisy (a share out of a group's replicates), which is why the binomial
# model pools replicates into groups rather than fitting them one by one.

# %% [markdown]
# ## Part 3: an STN neuron around the GO cue
#
# 50 trials of 2 s around a GO cue at t = 0, about 47 spikes/s in bursts that are not locked to the cue (up to
# 3 spikes in 5 ms, so no binomial pooling without clipping): Poisson counts per trial in 5 ms bins, three
# templates of 100 ms (a burst and a beta cycle). The last 10 trials are held out. Trials are annotated with the
# direction of the movement (`left`, `right`).

# %%
clock = time.perf_counter()
stn = fit_like_the_command("stn")
describe(stn)
plot_rate_curves(stn, bootstrap_curves(stn))
verdict(stn)

# %% [markdown]
# ### Where the events fall relative to the GO cue, by direction
#
# Events of all 50 trials, by template and movement direction (histograms in 100 ms bins). The code prints the
# event rate before and after the cue.

# %%
stn_events = event_table(stn, stn.counts)
stn_events["direction"] = stn.counts.example_labels["direction"].to_numpy()[stn_events["example"]]
trial_start_ms = float(stn.counts.t_start.rescale(pq.ms).magnitude)
trial_ms = stn.counts.n_bins * stn.bin_seconds * 1000
edges = np.arange(trial_start_ms, trial_start_ms + trial_ms + 1, 100)
figure, axes = plt.subplots(
    1, stn.model.n_templates, figsize=(3.3 * stn.model.n_templates, 2.6), layout="constrained", squeeze=False
)
for template, axis in enumerate(axes[0]):
    for direction, color in (("left", "C0"), ("right", "C1")):
        chosen = stn_events[(stn_events["template"] == template) & (stn_events["direction"] == direction)]
        axis.hist(chosen["time_ms"], bins=edges, histtype="step", color=color, label=direction)
    axis.axvline(0, color="k", linewidth=1)
    axis.set_title(f"template {template}")
    axis.set_xlabel("event time from the GO cue (ms)")
axes[0, 0].set_ylabel("events")
axes[0, 0].legend(frameon=False)
before = stn_events["time_ms"] < 0
n_trials = stn.counts.n_examples
print(
    f"{len(stn_events)} events in {n_trials} trials; events per trial and second before the GO cue "
    f"{before.sum() / n_trials / (-trial_start_ms / 1000):.3f}, after it "
    f"{(~before).sum() / n_trials / ((trial_start_ms + trial_ms) / 1000):.3f}"
)

# %% [markdown]
# ### What the templates show that the PSTH does not: bursts by direction
#
# The PSTH is a mean rate over trials; the templates count burst events trial by trial. The table gives, per
# direction, the spikes per second and the events per second of each template (mean over trials), and events
# per 100 spikes: a difference in events that only follows the difference in spike rate shows as equal events
# per 100 spikes. The p-value of each left-right difference in per-trial rate is from 10,000 random
# relabellings of the trials' directions.

# %%
seconds_per_trial = trial_ms / 1000
per_trial = pd.DataFrame(
    {
        "direction": stn.counts.example_labels["direction"].to_numpy(),
        "spikes_per_s": stn.counts.counts[:, 0].sum(axis=1) / seconds_per_trial,
    }
)
for template in range(stn.model.n_templates):
    chosen = stn_events[stn_events["template"] == template]
    per_trial[f"template_{template}_events_per_s"] = (
        chosen.groupby("example").size().reindex(range(n_trials), fill_value=0).to_numpy() / seconds_per_trial
    )
by_direction = per_trial.groupby("direction").mean()
for template in range(stn.model.n_templates):
    by_direction[f"template_{template}_events_per_100_spikes"] = (
        100 * by_direction[f"template_{template}_events_per_s"] / by_direction["spikes_per_s"]
    )
by_direction.insert(0, "n_trials", per_trial.groupby("direction").size())
print(by_direction.round(3).T.to_string())


def permutation_p_value(values: np.ndarray, is_left: np.ndarray, n_permutations: int = 10_000) -> float:
    """Two-sided p-value of the left-right difference of means under random relabelling of the trials."""
    rng = np.random.default_rng(0)
    observed = abs(values[is_left].mean() - values[~is_left].mean())
    shuffled = np.array([rng.permutation(is_left) for _ in range(n_permutations)])
    differences = np.abs((shuffled * values).sum(1) / is_left.sum() - (~shuffled * values).sum(1) / (~is_left).sum())
    return float((1 + (differences >= observed - 1e-12).sum()) / (1 + n_permutations))


is_left = (per_trial["direction"] == "left").to_numpy()
events_by_direction = stn_events.groupby("direction").size().reindex(["left", "right"], fill_value=0)
print("events by direction:", {name: int(value) for name, value in events_by_direction.items()})
if events_by_direction.min() < 10:
    print("fewer than 10 events in a direction: the event rates below say little about the direction")
for column in per_trial.columns[1:]:
    print(f"{column}: left - right p = {permutation_p_value(per_trial[column].to_numpy(), is_left):.4f}")
print(f"part 3 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# How to read this part: the spikes alone already differ by direction (the spike rates and their p-value
# above). Whether the burst templates add anything rests on their events: when the fit at the data set's
# defaults keeps only a handful (the counts printed above), the templates say nothing about direction, and the
# held-out table is the honest summary. A smoothed rate with a wide kernel that beats the constant rate there
# points to slow changes of the rate from trial to trial (with the direction, among others), which a model
# with one baseline for all trials does not have; the PSTH, one curve for all trials, misses them too.

# %% [markdown]
# ## Part 4: songbird HVC sequences
#
# 74 HVC neurons, one 22.2 s stretch binned at the source's 1/30 s step and cut into 2 s examples; two
# templates of 0.5 s over all 74 channels, as PP-Seq's demo looks for two sequences. The last 20% of the 2 s
# examples (the later stretch of the recording) are held out. There are no trials, so no PSTH.
#
# How spikedict compares with seqNMF on this recording is the subject of `benchmarks/songbird.py`, which runs in
# the peers' environment (seqNMF needs its own): see the section "Issue 22: songbird, spikedict and seqNMF" of
# `benchmarks/README.md`. This tutorial runs in spikedict's environment only.

# %%
clock = time.perf_counter()
songbird = fit_like_the_command("songbird")
describe(songbird)
verdict(songbird)

# %% [markdown]
# ### The templates as sequences
#
# As seqNMF and PP-Seq draw them: for each template, the neurons it engages, sorted by the time of their peak in
# the template, with the rate modulation (spikes/s above each neuron's baseline, at the template's median event
# amplitude). A neuron is engaged when the template at least doubles its rate. (No bootstrap bands here: 74
# channels of bands do not read.)

# %%
songbird_curves, songbird_baselines = rate_curves(songbird.model, songbird.train, songbird.bin_seconds)
modulation = songbird_curves - songbird_baselines[None, :, None]
doubled = songbird_curves.max(axis=2) >= 2 * songbird_baselines[None, :]
peak_bins = songbird.model.templates_.argmax(axis=2)
channel_names = np.asarray(songbird.counts.channel_names)
sequences = []
for template in range(songbird.model.n_templates):
    engaged = np.flatnonzero(doubled[template])
    engaged = engaged[np.argsort(peak_bins[template, engaged], kind="stable")]
    sequences.append(engaged)
    print(
        f"template {template}: {engaged.size} neurons engaged, in order of their peak:",
        ", ".join(channel_names[engaged]),
    )
print(f"neurons engaged by both templates: {np.intersect1d(*sequences[:2]).size if len(sequences) > 1 else 0}")
figure, axes = plt.subplots(
    1, songbird.model.n_templates, figsize=(4 * songbird.model.n_templates, 4), layout="constrained", squeeze=False
)
duration_ms = songbird.model.templates_.shape[2] * songbird.bin_seconds * 1000
for template, axis in enumerate(axes[0]):
    engaged = sequences[template]
    axis.set_title(f"template {template}: {engaged.size} neurons")
    axis.set_xlabel("time in the template (ms)")
    if engaged.size:
        image = axis.imshow(
            modulation[template, engaged],
            aspect="auto",
            cmap="magma",
            extent=(0, duration_ms, engaged.size - 0.5, -0.5),
            interpolation="nearest",
        )
        axis.set_yticks(range(engaged.size), channel_names[engaged], fontsize=6)
        figure.colorbar(image, ax=axis, label="rate above baseline (spikes/s)")

# %% [markdown]
# ### The held-out stretch, neurons sorted by sequence
#
# The spikes of the held-out examples (the later stretch), one row per neuron: first the neurons of template 0
# in the order of their peak, then those of template 1, then the others; the spikes of a sequence's neurons in
# its colour, and the events of each template as ticks on top (at their onset, the start of the template). This
# is the raster PP-Seq and seqNMF show for their sequences.

# %%
heldout_counts = songbird.heldout_counts
# The held-out examples are consecutive 2 s pieces of the one stretch: lay them end to end.
stretch = np.concatenate(list(heldout_counts.counts), axis=1)
offset_s = float(heldout_counts.t_start.rescale(pq.s).magnitude) + (
    heldout_counts.example_labels["offset_bins"].iloc[0] * songbird.bin_seconds
)
ordered = [channel for engaged in sequences for channel in engaged]
ordered = list(dict.fromkeys(ordered))  # a neuron in both sequences keeps its first place
ordered += [channel for channel in range(songbird.counts.n_channels) if channel not in ordered]
membership = np.full(songbird.counts.n_channels, -1)
for template in reversed(range(songbird.model.n_templates)):
    membership[sequences[template]] = template
figure, axis = plt.subplots(figsize=(9, 5), layout="constrained")
for row, channel in enumerate(ordered):
    bins = np.flatnonzero(stretch[channel])
    color = f"C{membership[channel]}" if membership[channel] >= 0 else "0.6"
    axis.scatter(offset_s + (bins + 0.5) * songbird.bin_seconds, np.full(bins.size, row), s=4, color=color)
songbird_events = event_table(songbird, heldout_counts)
for template in range(songbird.model.n_templates):
    times = songbird_events.loc[songbird_events["template"] == template, "onset_ms"] / 1000
    axis.scatter(times, np.full(len(times), -2 - 2 * template), marker="|", s=80, color=f"C{template}")
axis.set_ylim(songbird.counts.n_channels + 1, -4 - 2 * songbird.model.n_templates)
axis.set_xlabel("time in the recording (s)")
axis.set_ylabel("neuron (sorted by sequence)")
axis.set_title("held-out stretch; ticks on top: onsets of the events of template 0 (blue) and 1 (orange)")
print("events in the held-out stretch by template:", songbird_events.groupby("template").size().to_dict())
print(f"part 4 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# The held-out table of this part scores the templates on the later stretch, which they have not seen: a gain
# over the constant rate there means that sequences learned on the first part of the song recur in the later
# part, at the times the events mark. The smoothed rate follows each neuron on its own: it cannot predict a
# neuron's spikes from the other neurons of its sequence, as the templates can, but an HVC neuron fires in
# bursts several bins long, so its own first-half spikes tell much about its second-half spikes at the same
# moment. Where the floored smoothed rate beats spikedict (the verdict above), that neuron-by-neuron
# information outweighs what two templates learned from 18 s of song. In the raster, a sequence's neurons that
# fire in order after the tick of its event are what the template learned; neurons of the other rows that fire
# in order too are structure the two templates (at this sparsity and number) leave out.

# %% [markdown]
# ## What the four studies say
#
# The held-out tables above are the test of each fit, and the table below gathers them; whichever model wins,
# that is the result. Where spikedict predicts held-out spikes better than the PSTH and the smoothed rates, its
# events capture structure those averages blur (the evoked response group by group, sequences whose onsets
# vary); where it does not beat a constant rate, the templates describe noise at this data size, and the events
# plotted above should not be read as structure. Judge spikedict against the floored smoothed rate
# (`instantaneous_rate + constant`), the stronger of the two smoothing references.

# %%
summary = pd.concat(
    [study.heldout.assign(recording=study.name) for study in (locust, motoneurone, stn, songbird)], ignore_index=True
)
print(summary.pivot(index="recording", columns="model", values="bits_per_spike").round(4).to_string())
