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
# # A real neuron: the locust auditory receptor
#
# The shipped `locust` recording (Rokem et al. 2006, via nitime; BSD-3) holds the spike times of one auditory
# receptor neuron of a locust, 10 s for each of two white-noise stimuli (about 90 spikes/s). We learn Poisson
# templates from it and ask whether they predict **held-out** spikes better than two simple rate models:
#
# * a **constant rate** (the mean count per bin), and
# * elephant's **`instantaneous_rate`**: the spike train smoothed with a Gaussian kernel, its width chosen on
#   the training data.
#
# A fair held-out test needs spikes the models have not seen, *at the same times* as the spikes that set the
# rate (the rate follows the stimulus). With one trial per stimulus we split the spikes themselves: each
# spike goes to half A or half B with probability 1/2 (Poisson thinning). Both halves are independent Poisson
# processes with the same rate. Every model gets its rate from half A; half B of held-out stretches is scored.
#
# Set `SPIKEDICT_TUTORIAL_QUICK=1` for a tiny run.

# %%
import os

import matplotlib.pyplot as plt
import neo
import numpy as np
import pandas as pd
import quantities as pq
from elephant.kernels import GaussianKernel
from elephant.statistics import instantaneous_rate

from spikedict import SpikeDictionary
from spikedict.analysis import constant_rates, heldout_split, log_likelihood_per_bin
from spikedict.io import bin_spiketrains, load_dataset
from spikedict.plotting import plot_raster, plot_templates
from spikedict.settings import Encoder
from spikedict.solvers import Alternating
from spikedict.workflow import select_examples, split_examples

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
N_EPOCHS, N_INFERENCE_ITERATIONS = (2, 30) if QUICK else (15, 300)
BIN_SIZE = 2 * pq.ms
EXAMPLE_BINS = 250  # 500 ms per example: 20 per stimulus
TEMPLATE_SIZE = 25  # 50 ms

# %% [markdown]
# ## Split the spikes in two halves

# %%
block = load_dataset("locust")
rng = np.random.default_rng(0)
halves: dict[str, list[list[neo.SpikeTrain]]] = {"A": [], "B": []}
for segment in block.segments:
    train = segment.spiketrains[0]
    to_a = rng.random(len(train)) < 0.5
    for name, keep in (("A", to_a), ("B", ~to_a)):
        halves[name].append([neo.SpikeTrain(train.times[keep], t_start=train.t_start, t_stop=train.t_stop)])
print({name: sum(len(trial[0]) for trial in trains) for name, trains in halves.items()}, "spikes")

# Bin each half (one trial per stimulus) and cut the 10 s trials into 500 ms examples.
counts = {name: split_examples(bin_spiketrains(trains, BIN_SIZE), EXAMPLE_BINS) for name, trains in halves.items()}
train_index, test_index = heldout_split(counts["A"].n_examples, 0.25, seed=0)
print(counts["A"], f"{len(train_index)} training and {len(test_index)} held-out examples")

# %% [markdown]
# ## Fit Poisson templates to half A of the training examples

# %%
model = SpikeDictionary(
    n_templates=3,
    template_size=TEMPLATE_SIZE,
    family="poisson",
    solver=Alternating(n_epochs=N_EPOCHS),
    encoder=Encoder(n_iterations=N_INFERENCE_ITERATIONS),
    seed=0,
    progress=False,
)
model.fit(select_examples(counts["A"], train_index))
plot_templates(model, bin_size=BIN_SIZE)

# %% [markdown]
# ## Three rate models, all from half A
#
# * DCEA: codes inferred from half A of each held-out example, rate `exp(templates * codes + baseline)`.
# * Smoothing: `instantaneous_rate` of half A with a Gaussian kernel; the width is the one that best predicts
#   half B on the *training* examples.
# * Constant: the mean count per bin of half A on the training examples.

# %%
test_a, test_b = (select_examples(counts[name], test_index).counts for name in ("A", "B"))
train_b = select_examples(counts["B"], train_index).counts


def smoothed_counts(sigma: pq.Quantity) -> np.ndarray:
    """Expected counts per bin of every example from the smoothed half-A spike trains."""
    per_trial = []
    for trial in halves["A"]:
        rate = instantaneous_rate(
            trial[0], sampling_period=BIN_SIZE, kernel=GaussianKernel(sigma), border_correction=True
        )
        per_trial.append(np.asarray(rate.rescale("Hz").magnitude)[:, 0] * float(BIN_SIZE.rescale("s")))
    expected = np.stack(per_trial)[:, None, :]  # (n_trials, 1, n_bins)
    n_pieces = expected.shape[-1] // EXAMPLE_BINS
    pieces = expected[..., : n_pieces * EXAMPLE_BINS].reshape(len(per_trial), 1, n_pieces, EXAMPLE_BINS)
    return pieces.transpose(0, 2, 1, 3).reshape(-1, 1, EXAMPLE_BINS)


widths = [5, 10, 20, 50] * pq.ms
training_scores = {
    float(sigma): log_likelihood_per_bin(train_b, smoothed_counts(sigma)[train_index], "poisson") for sigma in widths
}
best_sigma = max(training_scores, key=training_scores.get) * pq.ms
print("training log-likelihood per bin by kernel width (ms):", {k: round(v, 4) for k, v in training_scores.items()})

rates = {
    "DCEA (spikedict)": model.predict_rate(test_a),
    f"instantaneous_rate (sigma {best_sigma})": smoothed_counts(best_sigma)[test_index],
    "constant rate": constant_rates(test_a, "poisson", fitted_on=select_examples(counts["A"], train_index)),
}

# %% [markdown]
# ## Held-out log-likelihood of half B
#
# In nats per bin (higher is better), with the constant-rate model as the reference.

# %%
scores = pd.DataFrame(
    {
        "model": list(rates),
        "heldout_log_likelihood_per_bin": [
            log_likelihood_per_bin(test_b, values, "poisson") for values in rates.values()
        ],
    }
)
reference = scores.loc[scores["model"] == "constant rate", "heldout_log_likelihood_per_bin"].item()
scores["gain_over_constant_bits_per_spike"] = (
    (scores["heldout_log_likelihood_per_bin"] - reference) * test_b.size / max(test_b.sum(), 1) / np.log(2)
)
print(scores.round(4).to_string(index=False))

# %%
figure, axes = plt.subplots(len(rates), 1, figsize=(9, 2.2 * len(rates)), layout="constrained", sharex=True)
for axis, (name, values) in zip(axes, rates.items()):
    plot_raster(test_b[0, 0], values[0, 0], bin_size=BIN_SIZE, ax=axis)
    axis.set_title(f"held-out example {int(test_index[0])}, half B counts, rate from half A: {name}")
