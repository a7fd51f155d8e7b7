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
# # Quick start: simulate spikes, learn templates, compare with the truth
#
# spikedict models spike counts as a sparse sum of short **templates** (firing-rate shapes) that repeat
# wherever their **codes** fire, passed through the link of an exponential family. Here we simulate binomial
# spike trains from the DCEA paper's three templates (a square wave, a triangle and a two-cycle cosine), with
# `M = 30` repeated trials per example, learn the templates back, and check them against the truth.
#
# Set `SPIKEDICT_TUTORIAL_QUICK=1` to run everything on a tiny problem (the test suite does).

# %%
import os

from spikedict import SpikeDictionary, simulate_spikes
from spikedict.analysis import align_templates
from spikedict.plotting import plot_codes, plot_raster, plot_templates
from spikedict.solvers import Alternating

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
N_EXAMPLES, N_BINS, N_EPOCHS = (4, 300, 2) if QUICK else (20, 1000, 10)
TEMPLATE_SIZE = 20 if QUICK else 50

# %% [markdown]
# ## Simulate
#
# `simulate_spikes` draws spike *times* as a Neo `Block` (segments are trials, annotated with their example)
# and also bins them: `simulation.counts` pools the 30 trials of each example into counts 0..30 per bin.
# The ground truth comes along: `templates`, `codes` and `rates`.

# %%
simulation = simulate_spikes(
    "paper", n_examples=N_EXAMPLES, n_bins=N_BINS, n_trials=30, template_size=TEMPLATE_SIZE, seed=0
)
counts = simulation.counts
print(counts)
print(f"{len(simulation.block.segments)} trials; true templates {simulation.templates.shape}")

# %% [markdown]
# ## Fit
#
# The binomial family takes the number of pooled trials from the counts object. The templates are learned here
# by the alternating solver (the MAP fit), a short run to keep the tutorial fast; its settings live in the solver
# object. The default for counts, `solver="auto"`, is EM: it starts from the best of 4 such fits (30 epochs
# each) and maximises the marginal likelihood, at several times the cost and with less bias where events are
# weak.

# %%
model = SpikeDictionary(
    n_templates=3,
    template_size=TEMPLATE_SIZE,
    family="binomial",
    solver=Alternating(n_epochs=N_EPOCHS),
    seed=0,
    progress=False,
)
model.fit(counts)
print("learned templates:", model.templates_.shape)

# %% [markdown]
# ## Align to the truth
#
# Learned templates come in any order, sign and small shift. `align_templates` finds the best match and
# reports the error `sqrt(1 - <h, ĥ>²)` of each (0: identical, 1: orthogonal).

# %%
alignment = align_templates(model.templates_, simulation.templates)
print(alignment.table.round(3).to_string(index=False))
print(
    f"mean error {alignment.mean_error:.3f} (at the start of the fit: "
    f"{align_templates(model.initial_templates_, simulation.templates).mean_error:.3f})"
)

# %% [markdown]
# ## Plot
#
# Templates against the truth, the predicted rate over the raster of one example, and its codes.

# %%
plot_templates(model, simulation.templates, bin_size=counts.bin_size)

trials = [segment.spiketrains[0] for segment in simulation.block.segments if segment.annotations["example"] == 0]
rates = model.predict_rate(counts)
plot_raster(trials, rates[0, 0], simulation.rates[0, 0], bin_size=counts.bin_size)

codes = model.transform(counts)
plot_codes(codes, simulation.codes, example=0, bin_size=counts.bin_size)
