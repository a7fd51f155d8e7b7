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
# # The Gaussian mismatch: template error against the number of trials M
#
# The DCEA paper's control experiment: binomial counts pooled over `M` repeated trials are fitted once with
# the matched binomial model and once as if they were Gaussian (the usual least-squares dictionary learning).
# With few trials the counts are far from Gaussian and the mismatch should hurt; with many trials the two
# come closer. `spikedict.analysis.family_study` simulates the data for each `M`, fits both families, and
# scores every fit on the same held-out examples, in one tidy table.
#
# The sizes here are small so that the tutorial runs in seconds; the paper used 1000 examples of 2000 bins.
# Set `SPIKEDICT_TUTORIAL_QUICK=1` for a tiny run.

# %%
import os

from spikedict.analysis import family_study
from spikedict.plotting import plot_family_comparison
from spikedict.simulate import paper_templates

QUICK = os.environ.get("SPIKEDICT_TUTORIAL_QUICK", "0") == "1"
TRIALS = [2, 10] if QUICK else [2, 5, 30]
TEMPLATE_SIZE = 20 if QUICK else 50
SIMULATION = dict(
    templates=paper_templates(TEMPLATE_SIZE),
    n_examples=4 if QUICK else 8,
    n_bins=200 if QUICK else 500,
    event_rate=0.01,
    seed=0,
)
FIT = dict(
    n_templates=3,
    template_size=TEMPLATE_SIZE,
    solver__n_epochs=1 if QUICK else 6,  # epochs of the (alternating) solver
    encoder__n_iterations=30 if QUICK else 150,  # encoder iterations when scoring held-out examples
    progress=False,
)

# %% [markdown]
# ## Run the study
#
# `infer_codes_from="other_trials"` splits the trials of each held-out example in two: the codes are inferred
# from one half and the other half is scored, so no model is rewarded for fitting the noise it is scored on
# (see the `spikedict.analysis.compare` module docstring).

# %%
table = family_study(
    "n_trials",
    TRIALS,
    simulation_params=SIMULATION,
    families=("binomial", "gaussian"),
    infer_codes_from="other_trials",
    device="cpu",
    **FIT,
)
columns = ["n_trials", "family", "template_error", "heldout_log_likelihood_per_bin"]
print(table[columns].round(3).to_string(index=False))

# %% [markdown]
# ## Plot
#
# Left: the mean aligned template error against `M` for both families; right: the held-out log-likelihood
# per bin, measured in the data's (binomial) family for both.

# %%
plot_family_comparison(table)

# %%
wide = table.pivot_table(index="n_trials", columns="family", values="template_error")
print(wide.round(3))
