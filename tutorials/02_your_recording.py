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
# # Your own recording: from a Neo file to templates, rates and a saved model
#
# spikedict reads any file that Neo reads (Neo's MATLAB format needs nothing extra; NIX and NWB need the
# `nix` / `nwb` extras). Segments are trials, groups (or the `unit` annotation of the spike trains) are units.
# To have a file to work with, we first write one with `simulate_spikes` and `write_recording`; replace
# `PATH` with your own recording. (The shipped `load_dataset("paper-binomial")` is another ready-made file.)
#
# Set `SPIKEDICT_TUTORIAL_QUICK=1` for a tiny run.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import quantities as pq

from spikedict import SpikeDictionary, simulate_spikes
from spikedict.io import bin_spiketrains, read_recording, write_recording
from spikedict.plotting import plot_raster, plot_templates, plot_training_curve
from spikedict.solvers import Alternating

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
N_EXAMPLES, N_BINS, N_EPOCHS = (4, 300, 2) if QUICK else (12, 1000, 10)
folder = Path(tempfile.mkdtemp(prefix="spikedict-tutorial-"))

PATH = folder / "session.mat"
simulation = simulate_spikes(
    "paper", n_examples=N_EXAMPLES, n_bins=N_BINS, n_trials=20, template_size=40, bin_size=1 * pq.ms, seed=1
)
write_recording(simulation.block, PATH)

# %% [markdown]
# ## Load and look

# %%
block = read_recording(PATH)
segment = block.segments[0]
print(f"{len(block.segments)} trials, units {[group.name for group in block.groups]}")
print("trial annotations:", segment.annotations)
print("duration:", segment.spiketrains[0].t_stop - segment.spiketrains[0].t_start)
n_spikes = sum(len(train) for seg in block.segments for train in seg.spiketrains)
print(f"mean rate: {n_spikes / (len(block.segments) * float(segment.spiketrains[0].t_stop.rescale('s'))):.1f} spikes/s")

# %% [markdown]
# ## Choose the bin size
#
# Repeated trials of one condition are pooled into binomial counts (how many trials spiked in each bin):
# `group_by` names the segment annotation that identifies the condition. A bin must be short enough that no
# trial spikes twice in it (spikedict refuses to pool otherwise, or counts such a trial once with
# `clip=True`), and long enough that the templates stay a manageable number of bins. Without repeated
# trials, bin without pooling and use `family="poisson"`.

# %%
for bin_size in (1 * pq.ms, 2 * pq.ms, 5 * pq.ms):
    unpooled = bin_spiketrains(block, bin_size)
    doubles = int((unpooled.counts > 1).sum())
    print(f"bin {bin_size}: {unpooled.n_bins} bins per trial, {doubles} trial-bins with more than one spike")

counts = bin_spiketrains(block, 1 * pq.ms, group_by="example")
print(counts)

# %% [markdown]
# ## Choose the template length and fit
#
# The template length is the duration of the rate shapes you expect (here 40 ms = 40 bins). Too short cuts
# shapes apart; too long merges neighbouring events. The solver object holds the training settings (here a
# short run of the alternating solver, the MAP fit; the default for counts, EM, starts from it and costs
# several of its fits). `checkpoint_path` lets an interrupted fit continue with
# `fit(counts, resume=True)`.

# %%
model = SpikeDictionary(
    n_templates=3,
    template_size=40,
    family="binomial",
    solver=Alternating(n_epochs=N_EPOCHS),
    seed=0,
    progress=False,
    checkpoint_path=str(folder / "checkpoint.pt"),
)
model.fit(counts)
plot_training_curve(model)
plot_templates(model, bin_size=counts.bin_size)

# %% [markdown]
# ## Rates over the rasters
#
# `predict_rate` gives the expected count per bin of each pooled example (`n_trials * p`); over a raster it
# is drawn per trial in spikes per second.

# %%
rates = model.predict_rate(counts)
figure, axes = plt.subplots(2, 1, figsize=(9, 5), layout="constrained", sharex=True)
for axis, example in zip(axes, (0, 1)):
    trials = [block.segments[i].spiketrains[0] for i in counts.example_labels["trials"].iloc[example]]
    plot_raster(trials, rates[example, 0], bin_size=counts.bin_size, ax=axis)
    axis.set_title(f"example {example}")

# %% [markdown]
# ## Save and reload
#
# `save` writes one `.safetensors` file (tensors and JSON metadata, no pickle); `load` gives back a model that
# predicts the same rates.

# %%
path = model.save(folder / "model.safetensors")
reloaded = SpikeDictionary.load(path)
assert np.allclose(reloaded.predict_rate(counts), rates)
print(f"saved to {path} and reloaded: same rates")
