"""Analysis of fitted dictionaries: alignment to ground truth, family comparison, metrics, model selection.

Every function takes counts as the estimator does: an array (numpy or torch) of shape
``(n_examples, n_channels, n_bins)``, a :class:`~spikedict.simulate.SimulatedCounts`, or any object with
``counts`` and ``n_trials`` attributes.
"""

from spikedict.analysis._data import (
    AnalysisData,
    as_analysis_data,
    example_folds,
    heldout_split,
    split_trials,
    time_blocks,
)
from spikedict.analysis.alignment import Alignment, align_templates, template_error
from spikedict.analysis.compare import compare_families, evaluate_heldout, family_study
from spikedict.analysis.heldout import (
    bits_per_spike,
    heldout_comparison,
    smoothed_rates,
    split_half_gain,
    split_spikes,
)
from spikedict.analysis.metrics import (
    constant_rates,
    deviance_per_bin,
    event_detection,
    find_events,
    log_likelihood_per_bin,
    posterior_events,
    pseudo_r2,
)
from spikedict.analysis.recoverability import TemplateBootstrap, recoverability, template_bootstrap
from spikedict.analysis.selection import ModelSelection, select_model
from spikedict.analysis.sequences import sequence_order

__all__ = [
    "Alignment",
    "AnalysisData",
    "ModelSelection",
    "TemplateBootstrap",
    "align_templates",
    "as_analysis_data",
    "bits_per_spike",
    "compare_families",
    "constant_rates",
    "deviance_per_bin",
    "evaluate_heldout",
    "event_detection",
    "example_folds",
    "family_study",
    "find_events",
    "heldout_comparison",
    "heldout_split",
    "log_likelihood_per_bin",
    "posterior_events",
    "pseudo_r2",
    "recoverability",
    "select_model",
    "sequence_order",
    "smoothed_rates",
    "split_half_gain",
    "split_spikes",
    "split_trials",
    "template_bootstrap",
    "template_error",
    "time_blocks",
]
