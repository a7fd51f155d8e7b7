"""Plots run headless (Agg), draw exactly the data they are given, label their axes, and never call show."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import quantities as pq
from conftest import small_model

from spikedict import plotting
from spikedict.analysis import ModelSelection, align_templates


@pytest.fixture(autouse=True)
def no_show_and_close(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("plotting functions must not call show()")

    monkeypatch.setattr(plt, "show", fail)
    yield
    plt.close("all")


def unit(array):
    return array / np.linalg.norm(array.reshape(array.shape[0], -1), axis=1)[:, None, None]


def shifted_templates(true):
    learned = -np.roll(true[[2, 0, 1]], 1, axis=-1)
    rng = np.random.default_rng(0)
    return learned, unit(learned + 0.3 * rng.standard_normal(learned.shape))


def test_import_spikedict_does_not_import_matplotlib():
    code = "import sys, spikedict, spikedict.analysis; print('matplotlib' in sys.modules, 'seaborn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_templates_against_truth(true_templates, tmp_path):
    learned, initial = shifted_templates(true_templates)
    figure = plotting.plot_templates(learned, true_templates, initial)
    assert isinstance(figure, matplotlib.figure.Figure)
    assert len(figure.axes) == 3
    alignment = align_templates(learned, true_templates)
    for i, axis in enumerate(figure.axes):
        assert [line.get_label() for line in axis.lines] == ["initial", "true", "learned"]
        np.testing.assert_allclose(axis.lines[1].get_ydata(), unit(true_templates)[i, 0])
        np.testing.assert_allclose(axis.lines[2].get_ydata(), alignment.aligned[i, 0])
        assert axis.get_title() == f"template {i} (error {alignment.errors[i]:.2f})"
        assert axis.get_xlabel() == "Time (bins)"
    # The initial template of the match, shifted and signed like the learned one.
    sign, learned_index, lag = (int(alignment.table.loc[0, name]) for name in ("sign", "learned_index", "lag"))
    assert lag == -1  # learned = roll(true, +1): learned[t] = true[t + lag]
    expected_initial = sign * np.roll(initial[learned_index, 0], lag)
    expected_initial[lag:] = 0.0  # shifted in from outside the template
    np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), expected_initial, atol=1e-12)
    assert figure.axes[0].get_ylabel() == "Template (unit norm)"
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["initial", "true", "learned"]
    figure.savefig(tmp_path / "templates.png")
    assert (tmp_path / "templates.png").stat().st_size > 0


def test_templates_without_truth_from_a_fitted_model_and_in_seconds(binomial_counts):
    model = small_model(solver__n_epochs=1).fit(binomial_counts)
    figure = plotting.plot_templates(model, bin_size=2 * pq.ms)
    assert len(figure.axes) == 3
    axis = figure.axes[1]
    assert [line.get_label() for line in axis.lines] == ["initial", "learned"]
    np.testing.assert_allclose(axis.lines[1].get_ydata(), model.templates_[1, 0], rtol=1e-6)
    np.testing.assert_allclose(axis.lines[0].get_ydata(), model.initial_templates_[1, 0], rtol=1e-6)
    np.testing.assert_allclose(axis.lines[1].get_xdata(), np.arange(model.templates_.shape[2]) * 0.002)
    assert axis.get_xlabel() == "Time (s)"


def test_multichannel_templates_use_one_row_per_channel(true_templates):
    true = np.concatenate([true_templates, true_templates[:, :, ::-1]], axis=1)[:2]
    _, axes = plt.subplots(2, 2)
    figure = plotting.plot_templates(true[::-1], true, ax=axes)
    assert figure is axes[0, 0].figure
    np.testing.assert_allclose(axes[1, 0].lines[0].get_ydata(), unit(true)[0, 1])
    assert axes[1, 1].get_title() == "template 1 (error 0.00), channel 1"
    with pytest.raises(ValueError, match=r"needs 4 Axes \(2 x 2\), got 1"):
        plotting.plot_templates(true, true, ax=axes[0, 0])


def test_raster_with_rates(tmp_path):
    rng = np.random.default_rng(1)
    trials = (rng.random((10, 50)) < 0.2).astype(int)
    rates = np.linspace(1.0, 3.0, 50)
    true_rates = np.full(50, 2.0)
    ax = plotting.plot_raster(trials, rates, true_rates)
    assert len(ax.collections) == 10
    for k, collection in enumerate(ax.collections):
        np.testing.assert_array_equal(collection.get_positions(), np.flatnonzero(trials[k]))
    rate_axis = ax.figure.axes[-1]
    assert rate_axis is not ax
    # the raster above, the rates on an Axes of their own below it, sharing the time axis
    assert rate_axis.get_position().y1 <= ax.get_position().y0
    assert ax.get_ylabel() == "Trial" and rate_axis.get_xlabel() == "Time (bins)"
    assert [line.get_label() for line in rate_axis.lines] == ["observed (all trials)", "predicted rate", "true rate"]
    np.testing.assert_allclose(rate_axis.lines[0].get_ydata(), trials.sum(axis=0) / 10)
    np.testing.assert_allclose(rate_axis.lines[1].get_ydata(), rates / 10)
    np.testing.assert_allclose(rate_axis.lines[2].get_ydata(), true_rates / 10)
    assert rate_axis.get_ylabel() == "Rate (spikes / trial / bin)"
    ax.figure.savefig(tmp_path / "raster.png")


def test_raster_of_spike_trains_in_seconds():
    trains = [np.array([1.0, 5.0, 12.0]) * pq.ms, np.array([3.0]) * pq.ms]
    rates = np.full(20, 0.5)
    ax = plotting.plot_raster(trains, rates, bin_size=1 * pq.ms)
    np.testing.assert_allclose(ax.collections[0].get_positions(), [0.001, 0.005, 0.012])
    rate_axis = ax.figure.axes[-1]
    np.testing.assert_allclose(rate_axis.lines[1].get_ydata(), 0.5 / (2 * 0.001))
    observed = np.zeros(20)
    observed[[1, 3, 5, 12]] = 1.0
    np.testing.assert_allclose(rate_axis.lines[0].get_ydata(), observed / (2 * 0.001))
    assert rate_axis.get_ylabel() == "Rate (spikes / s)"
    assert rate_axis.get_xlabel() == "Time (s)"
    with pytest.raises(ValueError, match="need bin_size"):
        plotting.plot_raster(trains, rates)


def test_raster_of_pooled_counts():
    counts = np.array([0.0, 2.0, 5.0, 1.0])
    ax = plotting.plot_raster(counts, rates=np.array([1.0, 2.0, 3.0, 1.0]))
    assert [line.get_label() for line in ax.lines] == ["counts", "predicted rate"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), counts)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [1.0, 2.0, 3.0, 1.0])
    assert ax.get_ylabel() == "Count per bin (spikes, or pooled trials with a spike)"
    with pytest.raises(ValueError, match=r"rates\[example, channel\]"):
        plotting.plot_raster(counts, rates=np.ones((1, 4)))


def test_codes_over_time():
    codes = np.zeros((2, 3, 30))
    codes[1, 0, 4] = 1.5
    codes[1, 2, 20] = 0.7
    true_codes = np.zeros((2, 3, 30))
    true_codes[1, 0, 5] = 2.0
    ax = plotting.plot_codes(codes, true_codes, example=1)
    assert [line.get_label() for line in ax.lines] == [
        "template 0",
        "template 1",
        "template 2",
        "true 0",
        "true 1",
        "true 2",
    ]
    for k in range(3):
        np.testing.assert_array_equal(ax.lines[k].get_ydata(), codes[1, k])
    np.testing.assert_array_equal(ax.lines[3].get_xdata(), [5.0])
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), [2.0])
    assert len(ax.lines[4].get_xdata()) == 0
    assert ax.get_xlabel() == "Code position (bins)" and ax.get_ylabel() == "Code amplitude (a.u.)"
    with pytest.raises(ValueError, match=r"example must be in \[0, 1\]"):
        plotting.plot_codes(codes, example=2)


def test_training_curve():
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5], "validation_loss": [np.nan] * 3})
    ax = plotting.plot_training_curve(history)
    assert len(ax.lines) == 1
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.5])
    history["validation_loss"] = [3.5, 2.5, 2.0]
    ax = plotting.plot_training_curve(history)
    assert [line.get_label() for line in ax.lines] == ["training", "validation"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [3.5, 2.5, 2.0])
    assert ax.get_xlabel() == "Epoch" and "Loss" in ax.get_ylabel()
    with pytest.raises(ValueError, match="history_ DataFrame"):
        plotting.plot_training_curve(pd.DataFrame({"loss": [1.0]}))


def comparison_table(settings=None):
    rows = []
    value = 0.0
    for setting in settings or [None]:
        for family in ("binomial", "gaussian"):
            for seed in (0, 1):
                value += 1.0
                row = {
                    "family": family,
                    "variant": "tied",
                    "seed": seed,
                    "template_error": value / 10,
                    "heldout_log_likelihood_per_bin": -value,
                }
                if setting is not None:
                    row = {"setting": "n_trials", "value": setting, "n_trials": setting, **row}
                rows.append(row)
    return pd.DataFrame(rows)


def test_family_comparison_points_per_seed(tmp_path):
    table = comparison_table()
    figure = plotting.plot_family_comparison(table)
    error_axis, likelihood_axis = figure.axes
    assert error_axis.get_ylabel().startswith("Template error")
    assert likelihood_axis.get_ylabel() == "Held-out log-likelihood per bin (nats)"
    assert likelihood_axis.get_xlabel() == "family"
    plotted = np.concatenate([c.get_offsets()[:, 1] for c in likelihood_axis.collections])
    np.testing.assert_allclose(np.sort(plotted), np.sort(table["heldout_log_likelihood_per_bin"]))
    means = [line.get_ydata() for line in likelihood_axis.lines if len(line.get_ydata())]
    np.testing.assert_allclose(np.concatenate(means), [-1.5, -3.5])
    assert [t.get_text() for t in likelihood_axis.get_xticklabels()] == ["binomial", "gaussian"]
    figure.savefig(tmp_path / "comparison.png")


def test_family_comparison_of_a_study_and_without_truth():
    table = comparison_table(settings=[5, 30])
    figure = plotting.plot_family_comparison(table)
    likelihood_axis = figure.axes[1]
    assert likelihood_axis.get_xlabel() == "n trials"
    lines = [line for line in likelihood_axis.lines if len(line.get_xdata()) == 2]
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), [-1.5, -5.5])  # binomial: mean over seeds at M = 5, 30
    np.testing.assert_allclose(lines[1].get_ydata(), [-3.5, -7.5])
    legend = [t.get_text() for t in likelihood_axis.get_legend().get_texts()]
    assert legend == ["binomial", "gaussian"]
    no_truth = comparison_table().assign(template_error=np.nan)
    assert len(plotting.plot_family_comparison(no_truth).axes) == 1
    with pytest.raises(ValueError, match="from compare_families or family_study"):
        plotting.plot_family_comparison(pd.DataFrame({"x": [1]}))


def selection_result():
    summary = pd.DataFrame(
        {
            "setting": [0, 1, 2, 3],
            "n_templates": [1, 3, 1, 3],
            "sparsity": [0.05, 0.05, "auto", "auto"],
            "mean_heldout_log_likelihood_per_bin": [-2.0, -1.5, -2.2, -1.8],
            "sem_heldout_log_likelihood_per_bin": [0.1, 0.05, 0.1, 0.2],
            "mean_heldout_pseudo_r2": [0.1, 0.2, 0.0, 0.1],
            "mean_fit_seconds": [1.0, 1.0, 1.0, 1.0],
            "rank": [3, 1, 4, 2],
        }
    )
    return ModelSelection(
        table=pd.DataFrame(),
        summary=summary,
        best_params={"n_templates": 3, "sparsity": 0.05},
        best_score=-1.5,
        best_estimator=None,
    )


def test_model_selection_curve(tmp_path):
    selection = selection_result()
    ax = selection.plot()
    assert ax.get_xlabel() == "n templates"
    assert "Held-out log-likelihood per bin" in ax.get_ylabel()
    assert [container.get_label() for container in ax.containers] == ["sparsity=0.05", "sparsity=auto"]
    curves = [container.lines[0] for container in ax.containers]
    np.testing.assert_allclose(curves[0].get_xdata(), [1, 3])
    np.testing.assert_allclose(curves[0].get_ydata(), [-2.0, -1.5])
    np.testing.assert_allclose(curves[1].get_ydata(), [-2.2, -1.8])
    (best,) = [line for line in ax.lines if line.get_label() == "best"]
    np.testing.assert_allclose(best.get_xdata(), [3])
    np.testing.assert_allclose(best.get_ydata(), [-1.5])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == ["best", "sparsity=0.05", "sparsity=auto"]
    ax.figure.savefig(tmp_path / "selection.png")
    # A categorical parameter on x
    ax = plotting.plot_model_selection(selection.summary, x="sparsity")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.05", "auto"]
    with pytest.raises(ValueError, match="x='depth' is not a grid parameter"):
        plotting.plot_model_selection(selection, x="depth")


def test_sequences_draw_the_engaged_channels_in_the_order_they_peak():
    from spikedict.analysis import sequence_order

    templates = np.zeros((2, 6, 10))
    for channel, time in [(4, 1), (0, 3), (2, 5), (5, 8)]:  # template 0: a sequence 4 -> 0 -> 2 -> 5
        templates[0, channel, time] = 1.0
    templates[0, 1, 2] = 0.4  # below half of the peak: not engaged
    templates[1, 3, 4], templates[1, 1, 4] = 1.0, 0.9  # a tie in time: by channel index
    assert [order.tolist() for order in sequence_order(templates)] == [[4, 0, 2, 5], [1, 3]]
    assert sequence_order(templates, threshold=0.3)[0].tolist() == [4, 1, 0, 2, 5]
    figure = plotting.plot_sequences(templates, bin_size=2 * pq.ms, channel_names=[f"n{c}" for c in range(6)])
    images = [axis.images[0] for axis in figure.axes if axis.images]
    assert len(images) == 2
    unit = templates[0] / np.linalg.norm(templates[0])
    assert np.allclose(images[0].get_array(), unit[[4, 0, 2, 5]])
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["n4", "n0", "n2", "n5"]
    assert figure.axes[0].get_xlabel() == "Time (s)"
    with pytest.raises(ValueError, match="threshold must lie in"):
        sequence_order(templates, threshold=0)


# ----------------------------------------------------------------------------- style, windows, event-aligned views


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def legend_is_right_of(legend, axis):
    axis.figure.canvas.draw()
    return legend.get_window_extent().x0 >= axis.get_window_extent().x1


@pytest.fixture(scope="module")
def fitted_models(binomial_counts, poisson_counts):
    """One-epoch fits of both count families and their codes (small, fast)."""
    models = {}
    for family, counts in (("binomial", binomial_counts), ("poisson", poisson_counts)):
        model = small_model(family=family, solver__n_epochs=1).fit(counts)
        models[family] = (model, counts, model.transform(counts))
    return models


def test_figures_share_one_style_without_changing_global_settings():
    before = dict(plt.rcParams)
    ax = plotting.plot_codes(np.ones((2, 10)))
    assert dict(plt.rcParams) == before
    assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    colors = [matplotlib.colors.to_hex(line.get_color()) for line in ax.lines]
    assert colors == list(plotting.PALETTE[:2])
    assert ax.xaxis.label.get_fontsize() >= 11  # the paper context scaled up for the screen


def test_raster_default_window_is_short_and_said_in_the_label():
    rng = np.random.default_rng(2)
    trials = (rng.random((60, 1000)) < 0.05).astype(int)  # 60 trials of 5 s in bins of 5 ms
    rates = np.full(1000, 3.0)
    ax = plotting.plot_raster(trials, rates, bin_size=0.005)
    rate_axis = ax.figure.axes[-1]
    # 2 s (400 bins) is shorter than 500 bins; 50 of the 60 trials are drawn, all 60 are pooled
    assert rate_axis.get_xlim() == pytest.approx((0.0, 2.0))
    assert rate_axis.get_xlabel() == "Time (s), 0 to 2 s of 0 to 5 s shown"
    assert len(ax.collections) == 50 and ax.get_ylabel() == "Trial (first 50 of 60)"
    for k, collection in enumerate(ax.collections):
        np.testing.assert_allclose(collection.get_positions(), np.flatnonzero(trials[k, :400]) * 0.005)
    (observed,) = [line for line in rate_axis.lines if line.get_label() == "observed (all trials)"]
    np.testing.assert_allclose(observed.get_ydata(), trials[:, :400].sum(axis=0) / (60 * 0.005))
    np.testing.assert_allclose(observed.get_xdata(), np.arange(400) * 0.005)
    np.testing.assert_allclose(rate_axis.lines[1].get_ydata(), 3.0 / (60 * 0.005))
    assert rate_axis.get_ylabel() == "Rate (spikes / s)"
    assert legend_is_right_of(rate_axis.get_legend(), rate_axis)


def test_raster_window_in_seconds_in_bins_and_on_given_axes():
    rng = np.random.default_rng(3)
    trials = (rng.random((5, 1000)) < 0.1).astype(int)
    ax = plotting.plot_raster(trials, bin_size=0.005, window=(1.0, 1.5))
    assert ax.figure.axes[-1].get_xlim() == pytest.approx((1.0, 1.5))
    np.testing.assert_allclose(ax.collections[2].get_positions(), (200 + np.flatnonzero(trials[2, 200:300])) * 0.005)
    # in bins without bin_size; one Axes of a grid is split into the raster and the rates below it
    figure, axis = plt.subplots()
    returned = plotting.plot_raster(trials, np.ones(1000), ax=axis, window=(100, 150))
    assert returned is axis and len(figure.axes) == 2
    rate_axis = figure.axes[1]
    assert rate_axis.get_position().y1 <= axis.get_position().y0
    assert rate_axis.get_xlim() == pytest.approx((100, 150))
    assert rate_axis.get_xlabel() == "Time (bins), bins 100 to 150 of 1000 shown"
    np.testing.assert_allclose(rate_axis.lines[0].get_ydata(), trials[:, 100:150].sum(axis=0) / 5)
    with pytest.raises(ValueError, match="holds no bin"):
        plotting.plot_raster(trials, bin_size=0.005, window=(6.0, 7.0))
    pooled = plotting.plot_raster(trials.sum(axis=0), window=(10, 20))
    np.testing.assert_allclose(pooled.lines[0].get_ydata(), trials.sum(axis=0)[10:20])
    assert legend_is_right_of(pooled.get_legend(), pooled)


def test_raster_of_neo_trials_that_start_before_the_stimulus():
    import neo

    trains = [
        neo.SpikeTrain([-200.0, 18.5, 30.0], units="ms", t_start=-250.0 * pq.ms, t_stop=250.0 * pq.ms),
        neo.SpikeTrain([-249.0, 20.0], units="ms", t_start=-250.0 * pq.ms, t_stop=250.0 * pq.ms),
    ]
    rates = np.zeros(250)
    rates[134] = 2.0  # the bin of 18 to 20 ms
    ax = plotting.plot_raster(trains, rates, bin_size=2 * pq.ms)
    rate_axis = ax.figure.axes[-1]
    np.testing.assert_allclose(ax.collections[0].get_positions(), [-0.2, 0.0185, 0.03])
    np.testing.assert_allclose(rate_axis.get_xlim(), (-0.25, 0.25))
    assert rate_axis.get_xlabel() == "Time (s)"
    observed, predicted = rate_axis.lines
    np.testing.assert_allclose(predicted.get_xdata()[[0, 134]], [-0.25, 0.018])
    expected = np.zeros(250)
    expected[[25, 134, 140, 0, 135]] = 1.0  # -200, 18.5, 30, -249, 20 ms
    np.testing.assert_allclose(observed.get_ydata(), expected / (2 * 0.002))
    window = plotting.plot_raster(trains, rates, bin_size=2 * pq.ms, window=(0.0 * pq.ms, 50.0 * pq.ms))
    np.testing.assert_allclose(window.collections[0].get_positions(), [0.0185, 0.03])
    assert window.figure.axes[-1].get_xlabel() == "Time (s), 0 to 0.05 s of -0.25 to 0.25 s shown"


def aligned_problem():
    """2 examples x 2 channels x 40 bins, templates of 10 bins (31 code positions), events of template 1."""
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 6, size=(2, 2, 40)).astype(float)
    codes = np.zeros((2, 3, 31))
    codes[0, 1, 12] = 0.5
    codes[1, 1, 20] = 2.0
    codes[1, 1, 2] = 1.0  # 5 bins before it fall outside the data
    codes[0, 0, 7] = 3.0  # another template's event
    codes[0, 1, 25] = -1.0  # negative codes are not events
    return counts, codes


def test_event_aligned_mean_is_the_event_triggered_average():
    counts, codes = aligned_problem()
    n_trials = np.array([10, 20])
    figure = plotting.plot_event_aligned(counts, codes, 1, bin_size=0.002, n_trials=n_trials, channel=1)
    raster, mean_axis = figure.axes[:2]
    lags = np.arange(-5, 15)  # half a template before the event to half a template after it
    events = [(1, 20), (1, 2), (0, 12)]  # by decreasing amplitude
    snippets = np.full((3, 20), np.nan)
    for row, (example, position) in enumerate(events):
        for j, lag in enumerate(lags):
            if 0 <= position + lag < 40:
                snippets[row, j] = counts[example, 1, position + lag]
    image = raster.images[0].get_array()
    np.testing.assert_array_equal(image.filled(np.nan), snippets)
    per_trial = snippets / n_trials[[1, 1, 0]][:, None]
    expected = np.nanmean(per_trial, axis=0) / 0.002
    (mean,) = [line for line in mean_axis.lines if line.get_label() == "event-triggered mean"]
    np.testing.assert_allclose(mean.get_ydata(), expected)
    np.testing.assert_allclose(mean.get_xdata(), (lags + 0.5) * 0.002)
    assert mean_axis.get_xlabel() == "Time from event (s)"
    assert mean_axis.get_ylabel() == "Rate (spikes / s / trial)"
    assert raster.get_title() == "template 1: 3 events, channel 1"
    assert legend_is_right_of(mean_axis.get_legend(), mean_axis)
    # the fitted rates of the counts are averaged like the counts; a rate per lag is drawn as given
    rates = counts + 1.0
    figure = plotting.plot_event_aligned(counts, codes, 1, bin_size=0.002, n_trials=n_trials, rates=rates, channel=1)
    (fitted,) = [line for line in figure.axes[1].lines if line.get_label() == "fitted rate"]
    np.testing.assert_allclose(fitted.get_ydata(), np.nanmean((snippets + 1) / n_trials[[1, 1, 0]][:, None], 0) / 0.002)
    figure = plotting.plot_event_aligned(counts, codes, 1, rates=np.arange(20.0), window=(-5, 15))
    (given,) = [line for line in figure.axes[1].lines if line.get_label() == "given rate"]
    np.testing.assert_allclose(given.get_ydata(), np.arange(20.0))
    assert figure.axes[1].get_ylabel() == "Count (spikes / bin)"
    assert figure.axes[1].get_xlabel() == "Time from event (bins)"


def test_event_aligned_without_events_and_bad_input():
    counts, codes = aligned_problem()
    figure = plotting.plot_event_aligned(counts, codes, 2)
    assert figure.axes[0].get_title() == "template 2: 0 events, channel 0"
    assert not figure.axes[0].images
    single = plotting.plot_event_aligned(counts, codes, 1, bin_size=0.002, n_trials=1)
    assert single.axes[1].get_ylabel() == "Rate (spikes / s)"  # one trial per example: no "per trial"
    with pytest.raises(ValueError, match=r"template must be in \[0, 2\]"):
        plotting.plot_event_aligned(counts, codes, 3)
    with pytest.raises(ValueError, match=r"rates must have shape \(20,\)"):
        plotting.plot_event_aligned(counts, codes, 1, rates=np.ones(7))


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_event_aligned_model_prediction_at_the_median_amplitude(fitted_models, family):
    model, counts, codes = fitted_models[family]
    k = int(np.argmax((codes > 0).sum(axis=(0, 2))))
    figure = plotting.plot_event_aligned(counts, codes, k, model=model, bin_size=0.001)
    (predicted,) = [line for line in figure.axes[1].lines if line.get_label() == "model at median amplitude"]
    amplitude = np.median(codes[:, k][codes[:, k] > 0])
    template = np.concatenate([np.zeros(10), model.templates_[k, 0], np.zeros(10)])
    eta = model.baseline_[0] + amplitude * template
    # binomial: per trial (n_trials from the model); Poisson: the expected count of an example, per second
    expected = sigmoid(eta) / 0.001 if family == "binomial" else np.exp(eta) / 0.001
    np.testing.assert_allclose(predicted.get_ydata(), expected, rtol=1e-5)
    per_trial = family == "binomial"
    assert figure.axes[1].get_ylabel() == ("Rate (spikes / s / trial)" if per_trial else "Rate (spikes / s)")


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_rate_templates_are_rates_around_the_baseline(fitted_models, family, tmp_path):
    model, _, codes = fitted_models[family]
    lower, upper = model.templates_ - 0.1, model.templates_ + 0.1
    figure = plotting.plot_rate_templates(model, bin_size=2 * pq.ms, codes=codes, lower=lower, upper=upper)
    inverse = sigmoid if family == "binomial" else np.exp
    n_templates = model.templates_.shape[0]
    assert len(figure.axes) == n_templates
    for k, axis in enumerate(figure.axes):
        amplitude = np.median(codes[:, k][codes[:, k] > 0])
        (rate,) = [line for line in axis.lines if line.get_label() == "rate at a"]
        np.testing.assert_allclose(
            rate.get_ydata(), inverse(model.baseline_[0] + amplitude * model.templates_[k, 0]) / 0.002, rtol=1e-5
        )
        np.testing.assert_allclose(rate.get_xdata(), (np.arange(20) + 0.5) * 0.002)
        (baseline,) = [line for line in axis.lines if line.get_label() == "baseline"]
        np.testing.assert_allclose(baseline.get_ydata(), inverse(model.baseline_[0]) / 0.002, rtol=1e-6)
        (band,) = [c for c in axis.collections if c.get_label() == "band"]
        band_y = band.get_paths()[0].vertices[:, 1]
        low = inverse(model.baseline_[0] + amplitude * lower[k, 0]) / 0.002
        high = inverse(model.baseline_[0] + amplitude * upper[k, 0]) / 0.002
        assert band_y.min() == pytest.approx(min(low.min(), high.min()), rel=1e-5)
        assert band_y.max() == pytest.approx(max(low.max(), high.max()), rel=1e-5)
        assert axis.get_title() == f"template {k}, a = {amplitude:.3g}"
        assert axis.get_xlabel() == "Time from event (s)"
    label = "Rate (spikes / s / trial)" if family == "binomial" else "Rate (spikes / s)"
    assert figure.axes[0].get_ylabel() == label
    legend = figure.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["baseline rate", "lower to upper", "rate at amplitude a"]
    assert legend_is_right_of(legend, figure.axes[-1])
    # a given amplitude needs no codes; several channels are rows; many channels are left to plot_sequences
    figure = plotting.plot_rate_templates(model, bin_size=None, amplitude=1.5)
    np.testing.assert_allclose(
        next(line for line in figure.axes[0].lines if line.get_label() == "rate at a").get_ydata(),
        inverse(model.baseline_[0] + 1.5 * model.templates_[0, 0]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"pass codes=model\.transform"):
        plotting.plot_rate_templates(model, bin_size=0.002)


def test_rate_templates_of_several_channels_and_too_many():
    from types import SimpleNamespace

    from spikedict.families import Poisson

    rng = np.random.default_rng(5)
    templates = rng.standard_normal((2, 3, 8))
    model = SimpleNamespace(templates_=templates, baseline_=np.array([-1.0, 0.0, 1.0]), family_=Poisson())
    figure = plotting.plot_rate_templates(model, bin_size=0.01, amplitude=[1.0, 2.0], channel_names=["a", "b", "c"])
    axes = np.array(figure.axes).reshape(3, 2)
    (rate,) = [line for line in axes[2, 1].lines if line.get_label() == "rate at a"]
    np.testing.assert_allclose(rate.get_ydata(), np.exp(1.0 + 2.0 * templates[1, 2]) / 0.01)
    assert axes[1, 0].get_ylabel() == "b\nRate (spikes / s)"
    many = SimpleNamespace(templates_=np.ones((1, 9, 4)), baseline_=np.zeros(9), family_=Poisson())
    with pytest.raises(ValueError, match="plot_sequences"):
        plotting.plot_rate_templates(many, bin_size=0.01, amplitude=1.0)


def test_report_writes_png_and_svg(tmp_path):
    from spikedict.report import Report

    report = Report("figures", tmp_path)
    ax = plotting.plot_raster(np.eye(3, 20, dtype=int), np.ones(20), bin_size=0.001)
    path = report.add_figure("raster", ax.figure, "Raster", "caption")
    svg = tmp_path / "raster.svg"
    assert path == tmp_path / "raster.png" and path.read_bytes().startswith(b"\x89PNG")
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert ">Trial<" in svg.read_text()  # text kept as text
    assert report.files == [path, svg]
    assert not plt.get_fignums()  # closed after saving
    assert "href='raster.svg'" in report.to_html()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raster.png", "raster.svg"]


def test_event_aligned_reads_bin_size_trials_and_names_from_spike_counts():
    from spikedict.io import SpikeCounts

    counts, codes = aligned_problem()
    data = SpikeCounts(
        counts=counts, n_trials=np.array([10, 20]), bin_size=2 * pq.ms, t_start=0 * pq.s, channel_names=["u1", "u2"]
    )
    by_hand = plotting.plot_event_aligned(counts, codes, 1, bin_size=0.002, n_trials=[10, 20], channel=1)
    figure = plotting.plot_event_aligned(data, codes, 1, channel=1)
    assert figure.axes[0].get_title() == "template 1: 3 events, u2"
    np.testing.assert_allclose(figure.axes[1].lines[-1].get_ydata(), by_hand.axes[1].lines[-1].get_ydata())
    assert figure.axes[1].get_ylabel() == "Rate (spikes / s / trial)"
