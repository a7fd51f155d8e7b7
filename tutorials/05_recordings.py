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
# spikedict ships four real recordings (see `data/README.md` for their sources and licences): **locust** (one
# auditory receptor neuron, 10 s of white noise for each of two stimuli), **motoneurone** (469 replicates of a
# transcranial magnetic stimulus at t = 0), **STN** (one subthalamic-nucleus neuron, 50 trials around a GO cue
# at t = 0, each annotated with the direction of the movement) and **songbird** (74 HVC neurons of a singing
# zebra finch, one 22 s stretch).
#
# Each part fits its recording exactly as `spikedict fit NAME` does, with `spikedict.workflow.fit_recording(NAME,
# None)` (None: write nothing): the data set's settings (`DATASET_DEFAULTS`), the last 20% of the examples held
# out, the sparsity chosen on the training examples, the recoverability check and the held-out comparison.
# Then each part asks:
#
# * **What do the templates look like?** As firing-rate modulation (`plot_rate_templates`) at the median
#   amplitude of their events, with the band of the recoverability check's refits of data simulated from the
#   fit; the check's table says whether each template comes back at this signal and data size.
# * **Where do the events fall?** An event is a run of non-zero codes, at its largest code; its time is
#   `t_start + (code position + the bin where the template peaks) * bin_size`, from the trial's alignment.
# * **Do the templates predict held-out spikes?** Each held-out example's spikes are split in two halves;
#   spikedict (codes inferred on the first half), a constant rate, the PSTH (trials aligned to an event) and
#   elephant's `instantaneous_rate` (the first half smoothed), the last two mixed with the constant rate with a
#   weight chosen on the training examples, predict the second half. The gain over the constant rate is in bits
#   per spike: above 0 is better than a constant rate.
# * **What do the templates show that the PSTH does not?**
#
# The numbers are printed by the code, whichever model wins. Set `SPIKEDICT_TUTORIAL_QUICK=1` for a tiny run
# (two epochs, few encoder iterations: the numbers then mean nothing).

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import quantities as pq

from spikedict.analysis import find_events, sequence_order
from spikedict.io import SpikeCounts
from spikedict.plotting import plot_event_aligned, plot_raster, plot_rate_templates, plot_sequences
from spikedict.workflow import fit_recording, open_recording

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
# Tiny fits for the test suite; the full run uses the data sets' defaults, as `spikedict fit` does.
QUICK_PARAMETERS = {"solver__n_epochs": 2, "encoder__n_iterations": 30} if QUICK else None
N_SIMULATIONS = 2 if QUICK else 5  # refits of the recoverability check (spikedict fit's default: 5)
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)


def study(name: str):
    """Fit a shipped recording as ``spikedict fit NAME`` does, print what it found and draw the templates.

    Returns the fit (``FitResult``), the Neo block, every example (training ones first, then the held-out ones,
    binned as the fit bins them) and their codes (held-out ones inferred with the templates fixed).
    """
    clock = time.perf_counter()
    result = fit_recording(
        name, None, seed=0, progress=False, n_simulations=N_SIMULATIONS, estimator_params=QUICK_PARAMETERS
    )
    counts, summary, model = result.counts, result.summary.iloc[0], result.model
    print(
        f"{name}: {counts.n_examples} training examples ({summary['n_heldout_examples']} held out) x "
        f"{counts.n_channels} channel(s) x {counts.n_bins} bins of {summary['bin_size_ms']:.4g} ms, trials per "
        f"example {sorted(set(counts.n_trials.tolist()))}; {summary['family']} family, {summary['n_templates']} "
        f"template(s) of {summary['template_size']} bins; fitted and checked in {time.perf_counter() - clock:.1f} s"
    )
    print(model.sparsity_path_.round(4).to_string(index=False) + f"\nchosen sparsity {model.sparsity_:.4g}")
    print("\nheld-out comparison:\n" + result.heldout.round(4).to_string(index=False))
    gains = dict(zip(result.heldout["model"], result.heldout["bits_per_spike"]))
    for other, gain in gains.items():
        if other != "spikedict":
            relation = "beats" if gains["spikedict"] > gain else "does not beat"
            print(f"  spikedict {relation} {other} ({gains['spikedict']:+.4f} against {gain:+.4f} bits per spike)")
    check = result.bootstrap.table[["template", "n_events", "median_amplitude", "median_error", "recoverable"]]
    print(f"\nrecoverability check ({N_SIMULATIONS} refits; recoverable: median error at most 0.3):")
    print(check.round(3).to_string(index=False))

    block, _, _ = open_recording(name)
    heldout = result.heldout_counts
    every = SpikeCounts(
        np.concatenate([counts.counts, heldout.counts]),
        np.concatenate([counts.n_trials, heldout.n_trials]),
        counts.bin_size,
        counts.t_start,
        counts.channel_names,
        pd.concat([counts.example_labels, heldout.example_labels], ignore_index=True),
    )
    codes = model.transform(every)
    if counts.n_channels <= 8:
        bands = {"lower": result.bootstrap.lower, "upper": result.bootstrap.upper}
        plot_rate_templates(model, bin_size=counts.bin_size, codes=codes[: counts.n_examples], **bands).suptitle(
            f"{name}: templates as rate modulation", fontsize=10
        )
    return result, block, every, codes


def event_table(model, counts, codes: np.ndarray) -> pd.DataFrame:
    """Every event of ``codes`` (the codes of ``counts``): example, template, amplitude, onset and time in ms.

    The onset is the code position (the template's first bin) and the time adds the bin where the template peaks
    (its largest value over channels), from ``counts.t_start`` plus the example's offset in its trial where long
    trials were cut into examples.
    """
    peaks = model.templates_.max(axis=1).argmax(axis=1)
    bin_ms, start_ms = (float(value.rescale(pq.ms).magnitude) for value in (counts.bin_size, counts.t_start))
    labels = counts.example_labels
    offsets = labels["offset_bins"].to_numpy() if "offset_bins" in labels else np.zeros(counts.n_examples, int)
    rows = []
    for n, k in np.ndindex(codes.shape[:2]):
        for s in find_events(codes[n, k]):
            onset = start_ms + (offsets[n] + s) * bin_ms
            rows.append((n, k, float(codes[n, k, s]), onset, onset + peaks[k] * bin_ms))
    return pd.DataFrame(rows, columns=["example", "template", "amplitude", "onset_ms", "time_ms"])


# %% [markdown]
# ## Part 1: the locust auditory receptor
#
# One receptor neuron (about 90 spikes/s), one 10 s trial per white-noise stimulus cut into 500 ms examples,
# Poisson counts in 2 ms bins, three templates of 50 ms. No repeated trial (so no PSTH) and no event to align
# to: the events are counted per second, and the data are drawn around the events of the busiest template. No
# model here sees the sound that drives the neuron, so the templates can only capture the shape of the rate
# around spikes (bursts, refractoriness) where it recurs; a model of the sound would need the stimulus as an
# input, which spikedict does not take. A gain over the constant rate near zero says that the templates describe
# little structure beyond the mean rate, and templates the check does not recover are shapes that data like
# these would not return. Tutorial 04 studies this recording by hand.

# %%
clock = time.perf_counter()
locust, _, locust_all, locust_codes = study("locust")
locust_events = event_table(locust.model, locust_all, locust_codes)
seconds = locust_all.n_examples * locust_all.n_bins * float(locust_all.bin_size.rescale(pq.s).magnitude)
by_template = locust_events.groupby("template").size().reindex(range(locust.model.n_templates), fill_value=0)
print("events per second by template (all examples):", (by_template / seconds).round(3).to_dict())
if len(locust_events):
    rates = locust.model.predict_rate(locust_all)
    plot_event_aligned(locust_all, locust_codes, int(by_template.idxmax()), model=locust.model, rates=rates)
print(f"part 1 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# ## Part 2: a motoneurone and the magnetic stimulus
#
# 469 replicates of 500 ms around the stimulus, about 4 spikes each and never two within 47 ms: one replicate
# holds at most one spike where the evoked response is (about +26 ms). So groups of consecutive replicates (the
# trials per example printed below) are pooled into binomial counts in 2 ms bins, and one template of 50 ms
# learns the evoked response; its code in each group is the response's amplitude in that part of the session.
# The last groups (the end of the session) are held out.
#
# The histogram counts the events of every group; the window from +16 to +36 ms holds the evoked response, and
# the code prints the share of events in it next to the share of the trial it covers (what events spread evenly
# would give). Below it, the training replicates, their PSTH and the fitted rate averaged over them.

# %%
clock = time.perf_counter()
motoneurone, moto_block, moto_all, moto_codes = study("motoneurone")
EVOKED_MS = (16.0, 36.0)
moto_events = event_table(motoneurone.model, moto_all, moto_codes)
in_window = moto_events["time_ms"].between(*EVOKED_MS)
bin_ms, start_ms = (float(value.rescale(pq.ms).magnitude) for value in (moto_all.bin_size, moto_all.t_start))
trial_ms = moto_all.n_bins * bin_ms
print(
    f"{len(moto_events)} events in {moto_all.n_examples} groups; {int(in_window.sum())} of them "
    f"({in_window.mean() if len(moto_events) else float('nan'):.1%}) between {EVOKED_MS[0]:g} and "
    f"{EVOKED_MS[1]:g} ms, a window of {(EVOKED_MS[1] - EVOKED_MS[0]) / trial_ms:.1%} of the trial"
)
figure, axis = plt.subplots(figsize=(7, 2.6), layout="constrained")
axis.hist(moto_events["time_ms"], bins=np.arange(start_ms, start_ms + trial_ms + 1, 10), color="C3")
axis.axvline(0, color="k", linewidth=1, label="stimulus")
axis.axvspan(*EVOKED_MS, color="0.8", zorder=0, label="evoked window")
axis.set(xlabel="event time from the stimulus (ms)", ylabel="events")
axis.legend(frameon=False)
training_trials = np.concatenate(motoneurone.counts.example_labels["trials"].to_list())
trials = [moto_block.segments[int(i)].spiketrains[0] for i in training_trials]
fitted = motoneurone.model.predict_rate(motoneurone.counts)[:, 0].sum(axis=0)  # expected spikes of all of them
plot_raster(trials, fitted, bin_size=moto_all.bin_size, t_start=moto_all.t_start, window=(-0.1, 0.15))

# %% [markdown]
# ### What the template shows that the PSTH does not: the response across the session
#
# The PSTH averages the session into one curve. The template's code gives the evoked response's amplitude group
# by group, in recording order: the largest event of the group in the evoked window (0 where there is none).
# Next to it, the raw measure a physiologist would take: the share of the group's replicates with a spike in the
# window. Their correlation is printed.

# %%
groups = np.arange(moto_all.n_examples)
amplitude = moto_events[in_window].groupby("example")["amplitude"].max().reindex(groups, fill_value=0.0)
first, last = (int(round((edge - start_ms) / bin_ms)) for edge in EVOKED_MS)
share = moto_all.counts[:, 0, first:last].sum(axis=1) / moto_all.n_trials
session = pd.DataFrame({"group": groups, "code_amplitude": amplitude.to_numpy(float), "share_with_a_spike": share})
session["held_out"] = groups >= motoneurone.counts.n_examples
print(session.round(3).to_string(index=False))
varies = session["code_amplitude"].std() > 0 and session["share_with_a_spike"].std() > 0
correlation = np.corrcoef(session["code_amplitude"], share)[0, 1] if varies else float("nan")
print(f"correlation of the code amplitude and the share: {correlation:.3f}")
figure, axis = plt.subplots(figsize=(7, 2.8), layout="constrained")
axis.scatter(groups, session["code_amplitude"], c=np.where(session["held_out"], "C0", "C3"))
axis.set(xlabel="group of replicates (recording order; blue: held out)", ylabel="code amplitude, evoked window")
axis.twinx().plot(groups, share, color="k", linestyle=":", label="share with a spike")
print(f"part 2 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# The code amplitude is a model-based estimate of what the share of replicates measures directly: where they
# follow each other, the template has found the evoked response and its amplitude tracks the session, which the
# PSTH does not show. Read it with the held-out table (the PSTH is a strong reference here: the response is
# locked to the stimulus) and the recoverability verdict: a template the check does not recover has a shape
# that data of this size would not return reliably, even where its events sit in the evoked window.

# %% [markdown]
# ## Part 3: an STN neuron around the GO cue
#
# 50 trials of 2 s around a GO cue, about 47 spikes/s in bursts that are not locked to the cue (up to 3 spikes
# in 5 ms, so no binomial pooling): Poisson counts per trial in 5 ms bins, three templates of 100 ms (a burst and
# a beta cycle); the last 10 trials held out. Below the templates, the training trials with their PSTH; then the
# events of all trials by template and movement direction (`left`, `right`; 100 ms bins), the event rate before
# and after the cue, and per direction the spike rate and the events per trial. The p-value of the left-right
# difference in spike rate is from 10,000 random relabellings of the trials' directions.

# %%
clock = time.perf_counter()
stn, stn_block, stn_all, stn_codes = study("stn")
plot_raster(
    [stn_block.segments[int(i)].spiketrains[0] for i in stn.counts.example_labels["trial"]],
    stn.model.predict_rate(stn.counts)[:, 0].sum(axis=0),
    bin_size=stn.counts.bin_size,
)
stn_events = event_table(stn.model, stn_all, stn_codes)
directions = stn_all.example_labels["direction"].to_numpy()
stn_events["direction"] = directions[stn_events["example"]]
start_ms = float(stn_all.t_start.rescale(pq.ms).magnitude)
trial_s = stn_all.n_bins * float(stn_all.bin_size.rescale(pq.s).magnitude)
figure, axis = plt.subplots(figsize=(7, 2.6), layout="constrained")
edges = np.arange(start_ms, start_ms + 1000 * trial_s + 1, 100)
for (template, direction), chosen in stn_events.groupby(["template", "direction"]):
    style = "-" if direction == "left" else "--"
    axis.hist(chosen["time_ms"], bins=edges, histtype="step", color=f"C{template}", linestyle=style)
axis.axvline(0, color="k", linewidth=1)
axis.set(xlabel="event time from the GO cue (ms; colour: template, dashed: right)", ylabel="events")
before, n_trials = int((stn_events["time_ms"] < 0).sum()), stn_all.n_examples
print(
    f"{len(stn_events)} events in {n_trials} trials at the default settings; events per trial and second before "
    f"the GO cue {before / n_trials / (-start_ms / 1000):.3f}, after it "
    f"{(len(stn_events) - before) / n_trials / (trial_s + start_ms / 1000):.3f}"
)
per_trial = pd.DataFrame({"direction": directions, "spikes_per_s": stn_all.counts[:, 0].sum(axis=1) / trial_s})
for template in range(stn.model.n_templates):
    chosen = stn_events[stn_events["template"] == template]
    per_trial[f"template_{template}_events"] = chosen.groupby("example").size().reindex(range(n_trials), fill_value=0)
by_direction = per_trial.groupby("direction").mean()
by_direction.insert(0, "n_trials", per_trial.groupby("direction").size())
print(by_direction.round(3).T.to_string())
is_left, values = directions == "left", per_trial["spikes_per_s"].to_numpy()
shuffled = np.random.default_rng(0).permuted(np.tile(is_left, (10_000, 1)), axis=1)  # relabelled directions
differences = np.abs(shuffled @ values / is_left.sum() - ~shuffled @ values / (~is_left).sum())
difference = values[is_left].mean() - values[~is_left].mean()
p_value = (1 + (differences >= abs(difference) - 1e-9).sum()) / (1 + len(shuffled))
print(f"spike rate, left - right: {difference:+.2f} spikes/s, p = {p_value:.4f}")
if len(stn_events) < 10:
    print(f"only {len(stn_events)} events in {n_trials} trials: these templates say nothing about the direction")
print(f"part 3 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# How to read this part: the PSTH, one curve for all trials, holds only what is locked to the cue, and its row
# of the held-out table (with its mixing weight) says how much that is. The templates would count bursts trial
# by trial; whether they add anything rests on their events, and where the default fit keeps only a handful
# (the count printed above, and `n_events` in the check's table) the templates describe nothing, whatever their
# drawn shapes: the held-out table is then the honest summary. Where a smoothed rate with a wide kernel beats
# the constant rate and the PSTH, the rate changes slowly from trial to trial (with the direction, among others:
# see the spike rates by direction), which a model with one baseline for all trials does not have.

# %% [markdown]
# ## Part 4: songbird HVC sequences
#
# 74 HVC neurons, one 22.2 s stretch binned at the source's 1/30 s step and cut into 2 s examples; two
# non-negative templates of 0.5 s over all 74 channels (`DATASET_DEFAULTS["songbird"].estimator_params`), as
# PP-Seq's demo looks for two sequences. The held-out examples are the later stretch of the recording, so the
# held-out table scores the templates on song they have not seen. No trials, so no PSTH. The templates are drawn
# as sequences (`plot_sequences`): the neurons that reach half of the template's peak, sorted by the time of
# their peak (`spikedict.analysis.sequence_order`). Then the held-out stretch, one row per neuron (those of
# template 0 in the order of their peak, then those of template 1, then the others), with ticks on top at the
# onsets of each template's events there, inferred with the templates fixed.
#
# How spikedict compares with seqNMF on this recording is the subject of `benchmarks/songbird.py`, which runs in
# the peers' environment: see the section "Issue 22: songbird, spikedict and seqNMF" of `benchmarks/README.md`.

# %%
clock = time.perf_counter()
songbird, _, bird_all, bird_codes = study("songbird")
names = np.asarray(bird_all.channel_names)
plot_sequences(songbird.model, bin_size=bird_all.bin_size, channel_names=list(names))
sequences = sequence_order(songbird.model.templates_)
for template, engaged in enumerate(sequences):
    print(f"template {template}: {engaged.size} neurons engaged, in order of their peak:", ", ".join(names[engaged]))
print(f"neurons engaged by both templates: {np.intersect1d(*sequences[:2]).size if len(sequences) > 1 else 0}")
n_train = songbird.counts.n_examples
order = list(dict.fromkeys([int(c) for engaged in sequences for c in engaged]))
order += [c for c in range(bird_all.n_channels) if c not in order]
rows, bins = np.nonzero(np.concatenate(list(bird_all.counts[n_train:]), axis=1)[order])
bin_s = float(bird_all.bin_size.rescale(pq.s).magnitude)
offset_s = (
    float(bird_all.t_start.rescale(pq.s).magnitude) + bird_all.example_labels["offset_bins"].iloc[n_train] * bin_s
)
bird_events = event_table(songbird.model, bird_all, bird_codes)
bird_events = bird_events[bird_events["example"] >= n_train]
figure, axis = plt.subplots(figsize=(9, 5), layout="constrained")
axis.scatter(offset_s + (bins + 0.5) * bin_s, rows, s=4, color="0.3")
for template in range(songbird.model.n_templates):
    times = bird_events.loc[bird_events["template"] == template, "onset_ms"] / 1000
    axis.scatter(times, np.full(len(times), -2 - 2 * template), marker="|", s=80, color=f"C{template}")
axis.set_ylim(bird_all.n_channels + 1, -4 - 2 * songbird.model.n_templates)
axis.set(xlabel="time in the recording (s)", ylabel="neuron (sorted by sequence)")
axis.set_title("held-out stretch; ticks: event onsets of template 0 (blue) and 1 (orange)")
print("events in the held-out stretch by template:", bird_events.groupby("template").size().to_dict())
print(f"part 4 ran in {time.perf_counter() - clock:.1f} s")

# %% [markdown]
# A gain over the constant rate on the later stretch means that sequences learned on the first part of the song
# recur in the later part. The smoothed rate follows each neuron on its own: it cannot predict a neuron's spikes
# from the other neurons of its sequence, as the templates can, but an HVC neuron fires in bursts several bins
# long, so its own first-half spikes say much about its second-half spikes at the same moment. Where the smoothed
# rate beats spikedict, that neuron-by-neuron information outweighs what two templates learned from the training
# stretch; and the recoverability check says whether these two sequences would come back from data of this size.

# %% [markdown]
# ## What the four studies say
#
# The held-out gains, in bits per spike over a constant rate, and the templates the check recovers. Where
# spikedict beats the PSTH and the smoothed rate, its events capture structure those averages blur; where it
# does not beat a constant rate, or its templates are not recoverable, the templates may describe noise at this
# data size and the events plotted above should not be read as structure.

# %%
results = {"locust": locust, "motoneurone": motoneurone, "stn": stn, "songbird": songbird}
overview = pd.concat([r.heldout.assign(recording=name) for name, r in results.items()]).pivot(
    index="recording", columns="model", values="bits_per_spike"
)
overview["templates_recoverable"] = [
    f"{int(results[name].bootstrap.table['recoverable'].sum())} of {results[name].model.n_templates}"
    for name in overview.index
]
print(overview.round(4).to_string())
