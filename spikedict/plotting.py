"""Figures: templates against truth, rasters with rates, codes, training curves, comparisons, model selection.

The only module of spikedict that imports matplotlib and seaborn, and only inside its functions, so that
``import spikedict`` stays light and never picks a matplotlib backend. Every function takes ``ax=None``
(an Axes, or a sequence of Axes for the multi-panel figures), draws, and returns the Axes (or the Figure
for multi-panel figures). None calls ``show``; save with ``figure.savefig(path)``.

Times are in bins unless ``bin_size`` is given (seconds, or a ``quantities`` quantity), then in seconds.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> from spikedict.simulate import paper_templates
>>> true = paper_templates(20)
>>> figure = plot_templates(-true[[2, 0, 1]], true)
>>> len(figure.axes), figure.axes[0].get_title()
(3, 'template 0 (error 0.00)')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "plot_codes",
    "plot_family_comparison",
    "plot_model_selection",
    "plot_raster",
    "plot_sequences",
    "plot_templates",
    "plot_training_curve",
]

LOG_LIKELIHOOD_LABEL = "Held-out log-likelihood per bin (nats)"
TEMPLATE_ERROR_LABEL = "Template error sqrt(1 - <h, ĥ>²)"


def _seconds(bin_size: Any) -> float | None:
    """``bin_size`` in seconds (a number of seconds or a quantities quantity), or None."""
    if bin_size is None:
        return None
    if hasattr(bin_size, "rescale"):
        bin_size = float(bin_size.rescale("s").magnitude)
    bin_size = float(bin_size)
    if not bin_size > 0:
        raise ValueError(f"bin_size must be a positive duration (seconds or a quantity), got {bin_size}.")
    return bin_size


def _time_axis(n_bins: int, bin_size: Any) -> tuple[np.ndarray, str]:
    seconds = _seconds(bin_size)
    if seconds is None:
        return np.arange(n_bins, dtype=float), "Time (bins)"
    return np.arange(n_bins) * seconds, "Time (s)"


def _axes_grid(ax: Any, n_rows: int, n_columns: int, width: float = 3.0, height: float = 2.5) -> tuple[Any, np.ndarray]:
    import matplotlib.pyplot as plt

    if ax is None:
        figure, axes = plt.subplots(
            n_rows, n_columns, figsize=(width * n_columns, height * n_rows), squeeze=False, layout="constrained"
        )
        return figure, axes
    axes = np.asarray(ax, dtype=object).reshape(-1)
    if axes.size != n_rows * n_columns:
        raise ValueError(
            f"this figure needs {n_rows * n_columns} Axes ({n_rows} x {n_columns}), got {axes.size}; pass "
            "ax=None to create them."
        )
    return axes[0].figure, axes.reshape(n_rows, n_columns)


def _templates_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (n_templates, n_channels, template_size), got shape {array.shape}.")
    return array


def _unit(array: np.ndarray) -> np.ndarray:
    norms = np.sqrt((array**2).sum(axis=(1, 2), keepdims=True))
    return array / np.where(norms == 0, 1.0, norms)


def _place(template: np.ndarray, lag: int, sign: int, size: int) -> np.ndarray:
    """``out[:, t + lag] = sign * template[:, t]`` on ``size`` bins (the alignment's convention)."""
    placed = np.zeros((template.shape[0], size))
    for t in range(template.shape[1]):
        if 0 <= t + lag < size:
            placed[:, t + lag] = sign * template[:, t]
    return placed


def plot_sequences(
    templates: Any,
    *,
    threshold: float = 0.25,
    bin_size: Any = None,
    channel_names: list[str] | None = None,
    ax: Any = None,
) -> Any:
    """Multi-channel templates as sequences: a heat map per template of the channels it engages, sorted by peak time.

    The view seqNMF and PP-Seq use for sequences over many neurons; channels below ``threshold`` of the template's
    peak are left out (see :func:`spikedict.analysis.sequence_order`).

    Parameters
    ----------
    templates : ndarray of shape (n_templates, n_channels, template_size), or a fitted SpikeDictionary
    threshold : float
        Share of the template's peak that a channel's peak must reach to be drawn.
    bin_size : float or quantity, optional
        Bin duration, for a time axis in seconds.
    channel_names : list of str, optional
        Row labels (drawn when at most 40 channels are engaged).
    ax : sequence of Axes, optional
        One Axes per template.

    Returns
    -------
    matplotlib.figure.Figure
        One heat map (``AxesImage``) per template, rows the engaged channels from earliest to latest peak, the
        colour the template's value (red: rate up, blue: rate down).
    """
    from spikedict.analysis.sequences import sequence_order

    if hasattr(templates, "templates_"):
        templates = templates.templates_
    values = _unit(_templates_array(templates, "templates"))
    orders = sequence_order(values, threshold)
    figure, axes = _axes_grid(ax, 1, len(orders), width=3.5, height=4.0)
    limit = float(np.abs(values).max()) or 1.0
    x, label = _time_axis(values.shape[2], bin_size)
    step = x[1] - x[0] if len(x) > 1 else 1.0
    for j, (axis, order) in enumerate(zip(axes[0], orders)):
        image = axis.imshow(
            values[j, order] if len(order) else np.zeros((1, values.shape[2])),
            aspect="auto",
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            interpolation="nearest",
            extent=(x[0], x[-1] + step, len(order) - 0.5, -0.5),
        )
        axis.set_title(f"template {j}: {len(order)} channel(s)")
        axis.set_xlabel(label)
        if channel_names is not None and 0 < len(order) <= 40:
            axis.set_yticks(range(len(order)), [channel_names[c] for c in order], fontsize=6)
        else:
            axis.set_ylabel("channels, by peak time")
    figure.colorbar(image, ax=list(axes[0]), label="template value (unit norm)", shrink=0.8)
    return figure


def plot_templates(
    templates: Any,
    true_templates: np.ndarray | None = None,
    initial_templates: np.ndarray | None = None,
    *,
    max_lag: int | None = None,
    bin_size: Any = None,
    ax: Any = None,
) -> Any:
    """Learned templates against the true ones after alignment (the DCEA paper's figure), one panel each.

    With ``true_templates``, learned templates are matched to true ones (order, sign and shift, see
    :func:`~spikedict.analysis.align_templates`) and each panel shows a true template with its match and the
    match's initial template (shifted and signed the same way), all unit norm. Without, one panel per learned
    template.

    Parameters
    ----------
    templates : ndarray of shape (n_templates, n_channels, template_size), or a fitted SpikeDictionary
        Learned templates; a fitted estimator also supplies ``initial_templates_``.
    true_templates : ndarray, shape (n_true, n_channels, true_size), optional
    initial_templates : ndarray, shape (n_templates, n_channels, template_size), optional
    max_lag : int or None
        Largest shift in the alignment.
    bin_size : float or quantity, optional
        Bin duration, for a time axis in seconds.
    ax : Axes or sequence of Axes, optional
        ``n_channels * n_panels`` Axes (row-major: one row per channel).

    Returns
    -------
    matplotlib.figure.Figure
        Lines per panel, in order: initial (if any), true (if any), learned; titles carry the error.
    """
    from spikedict.analysis.alignment import align_templates

    if hasattr(templates, "templates_"):
        if initial_templates is None:
            initial_templates = getattr(templates, "initial_templates_", None)
        templates = templates.templates_
    learned = _unit(_templates_array(templates, "templates"))
    initial = None if initial_templates is None else _unit(_templates_array(initial_templates, "initial_templates"))
    if initial is not None and initial.shape != learned.shape:
        raise ValueError(
            f"initial_templates must have the shape of the templates {learned.shape}, got {initial.shape}."
        )
    panels = []
    if true_templates is not None:
        true = _unit(_templates_array(true_templates, "true_templates"))
        alignment = align_templates(learned, true, max_lag=max_lag)
        size = true.shape[2]
        for row in alignment.table.itertuples(index=False):
            j, lag, sign = int(row.learned_index), int(row.lag), int(row.sign)
            panels.append(
                {
                    "title": f"template {int(row.true_index)} (error {row.error:.2f})",
                    "initial": None if initial is None else _place(initial[j], lag, sign, size),
                    "true": true[int(row.true_index)],
                    "learned": alignment.aligned[int(row.true_index)],
                }
            )
    else:
        for j in range(learned.shape[0]):
            panels.append(
                {
                    "title": f"template {j}",
                    "initial": None if initial is None else initial[j],
                    "true": None,
                    "learned": learned[j],
                }
            )
    n_channels = learned.shape[1]
    figure, axes = _axes_grid(ax, n_channels, len(panels))
    styles = {"initial": dict(color="0.6", linestyle=":"), "true": dict(color="k"), "learned": dict(color="C3")}
    for column, panel in enumerate(panels):
        for channel in range(n_channels):
            axis = axes[channel, column]
            for kind in ("initial", "true", "learned"):
                if panel[kind] is not None:
                    x, label = _time_axis(panel[kind].shape[-1], bin_size)
                    axis.plot(x, panel[kind][channel], label=kind, **styles[kind])
            axis.set_title(panel["title"] + (f", channel {channel}" if n_channels > 1 else ""))
            axis.set_xlabel(label)
            if column == 0:
                axis.set_ylabel("Template (unit norm)")
    axes[0, 0].legend(frameon=False)
    return figure


def _rate_scale(n_trials: int, bin_size: Any) -> tuple[float, str]:
    seconds = _seconds(bin_size)
    if seconds is None:
        return 1.0 / n_trials, "Rate (spikes / trial / bin)"
    return 1.0 / (n_trials * seconds), "Rate (spikes / s)"


def plot_raster(
    trials: Any,
    rates: Any = None,
    true_rates: Any = None,
    *,
    bin_size: Any = None,
    ax: Any = None,
) -> Any:
    """A raster of trials with the predicted and the true rate over it.

    Parameters
    ----------
    trials : array of shape (n_trials, n_bins), sequence of spike-time arrays, or array of shape (n_bins,)
        Spikes of the repeated trials of one example and channel: 0/1 (or counts) per trial and bin, or spike
        times per trial (in bins, or in seconds when ``bin_size`` is given; Neo SpikeTrains are rescaled to
        seconds). A 1-D array is the pooled counts of an example (trials with a spike per bin), drawn as a
        step line with the rates in the same unit.
    rates, true_rates : array of shape (n_bins,), optional
        Expected counts per bin of the pooled example (what ``predict_rate`` returns, ``n_trials * p`` for
        the binomial family) and the true ones. Over a raster they are drawn per trial (divided by the
        number of trials, and by ``bin_size`` for spikes / s) on a second y axis (``ax.figure.axes[-1]``).
    bin_size : float or quantity, optional
    ax : Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        The raster's Axes (for pooled counts, the only Axes).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3), layout="constrained")
    seconds = _seconds(bin_size)
    rate_lines = [(name, values) for name, values in (("predicted rate", rates), ("true rate", true_rates))]
    rate_lines = [(name, np.asarray(values, dtype=np.float64)) for name, values in rate_lines if values is not None]
    for name, values in rate_lines:
        if values.ndim != 1:
            raise ValueError(
                f"{name} must have shape (n_bins,) for one example and channel, got {values.shape}; select e.g. "
                "rates[example, channel]."
            )
    colors = {"predicted rate": "C3", "true rate": "k"}
    is_array = isinstance(trials, np.ndarray) or (hasattr(trials, "shape") and not hasattr(trials, "rescale"))
    if is_array and np.ndim(trials) == 1:
        counts = np.asarray(trials, dtype=np.float64)
        x, xlabel = _time_axis(counts.size, bin_size)
        ax.step(x, counts, where="mid", color="0.5", label="counts")
        for name, values in rate_lines:
            ax.plot(_time_axis(values.size, bin_size)[0], values, color=colors[name], label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Count (trials with a spike per bin)")
        ax.legend(frameon=False)
        return ax
    if is_array:
        spikes = np.asarray(trials)
        if spikes.ndim != 2:
            raise ValueError(
                f"trials must have shape (n_trials, n_bins), be a list of spike-time arrays, or pooled counts of "
                f"shape (n_bins,); got shape {spikes.shape}."
            )
        x, xlabel = _time_axis(spikes.shape[1], bin_size)
        positions = [x[np.flatnonzero(row > 0)] for row in spikes]
    else:
        positions = []
        for train in trials:
            if hasattr(train, "rescale"):
                if seconds is None:
                    raise ValueError("spike trains with units need bin_size (e.g. 1 * pq.ms) to place the rates.")
                train = train.rescale("s").magnitude
            positions.append(np.asarray(train, dtype=np.float64).reshape(-1))
        xlabel = "Time (s)" if seconds is not None else "Time (bins)"
    n_trials = len(positions)
    if n_trials == 0:
        raise ValueError("trials holds no trials; pass at least one trial.")
    ax.eventplot(positions, colors="k", linelengths=0.8, linewidths=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Trial")
    ax.set_ylim(-0.5, n_trials - 0.5)
    if rate_lines:
        scale, ylabel = _rate_scale(n_trials, bin_size)
        rate_axis = ax.twinx()
        for name, values in rate_lines:
            rate_axis.plot(_time_axis(values.size, bin_size)[0], values * scale, color=colors[name], label=name)
        rate_axis.set_ylabel(ylabel)
        rate_axis.set_ylim(bottom=0)
        rate_axis.legend(frameon=False, loc="upper right")
    return ax


def plot_codes(
    codes: Any,
    true_codes: Any = None,
    *,
    example: int = 0,
    bin_size: Any = None,
    ax: Any = None,
) -> Any:
    """Codes over time, one line per template (and true events as markers).

    Parameters
    ----------
    codes : array of shape (n_examples, n_templates, n_code_bins) or (n_templates, n_code_bins)
        Codes from ``transform``.
    true_codes : array of the same layout, optional
        True codes; their non-zero entries are drawn as markers (one marker series per true template).
    example : int
        Example to draw when codes hold several.
    bin_size : float or quantity, optional
    ax : Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        Lines in order: template 0, 1, ..., then true events of template 0, 1, ...
    """
    import matplotlib.pyplot as plt

    def one_example(values: Any, name: str) -> np.ndarray:
        array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
        if array.ndim == 3:
            if not 0 <= example < array.shape[0]:
                raise ValueError(f"example must be in [0, {array.shape[0] - 1}], got {example}.")
            array = array[example]
        if array.ndim != 2:
            raise ValueError(
                f"{name} must have shape (n_examples, n_templates, n_code_bins) or (n_templates, n_code_bins), got "
                f"{array.shape}."
            )
        return array

    values = one_example(codes, "codes")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3), layout="constrained")
    x, xlabel = _time_axis(values.shape[1], bin_size)
    for k, row in enumerate(values):
        ax.plot(x, row, color=f"C{k}", label=f"template {k}")
    if true_codes is not None:
        truth = one_example(true_codes, "true_codes")
        true_x, _ = _time_axis(truth.shape[1], bin_size)
        for k, row in enumerate(truth):
            events = np.flatnonzero(row != 0)
            ax.plot(true_x[events], row[events], linestyle="none", marker="x", color=f"C{k}", label=f"true {k}")
    ax.set_xlabel(xlabel.replace("Time", "Code position"))
    ax.set_ylabel("Code amplitude (a.u.)")
    ax.legend(frameon=False, ncol=2)
    return ax


def plot_training_curve(history: Any, *, ax: Any = None) -> Any:
    """Training (and validation) loss per epoch.

    Parameters
    ----------
    history : pandas.DataFrame or fitted SpikeDictionary
        ``history_`` of a fit: columns ``epoch``, ``train_loss`` and ``validation_loss`` (drawn when not all NaN).
    ax : Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if hasattr(history, "history_"):
        history = history.history_
    if not isinstance(history, pd.DataFrame) or not {"epoch", "train_loss"} <= set(history.columns):
        raise ValueError(
            "history must be a fitted SpikeDictionary or its history_ DataFrame with columns 'epoch' and 'train_loss'."
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot(history["epoch"], history["train_loss"], marker="o", label="training")
    if "validation_loss" in history and history["validation_loss"].notna().any():
        ax.plot(history["epoch"], history["validation_loss"], marker="o", label="validation")
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss (NLL per bin, up to a constant)")
    ax.legend(frameon=False)
    return ax


def plot_family_comparison(table: pd.DataFrame, *, x: str | None = None, ax: Any = None) -> Any:
    """The family-comparison figure: template error and held-out log-likelihood by family (and setting).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`~spikedict.analysis.compare_families` or :func:`~spikedict.analysis.family_study`.
    x : str, optional
        Column on the x axis. Default: the swept setting for a study table (lines of the mean over seeds with
        standard errors, one per family and variant), else ``"family"`` (one point per seed, and the mean).
    ax : Axes or sequence of Axes, optional
        One Axes per panel: template error (when the table has any) and held-out log-likelihood.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns

    required = {"family", "variant", "seed", "heldout_log_likelihood_per_bin"}
    if not isinstance(table, pd.DataFrame) or not required <= set(table.columns):
        raise ValueError(
            f"table must be a DataFrame from compare_families or family_study with columns {sorted(required)}; "
            f"got {type(table).__name__}"
            + (f" with columns {list(table.columns)}" if hasattr(table, "columns") else "")
            + "."
        )
    metrics = ["heldout_log_likelihood_per_bin"]
    if "template_error" in table and table["template_error"].notna().any():
        metrics.insert(0, "template_error")
    labels = {"template_error": TEMPLATE_ERROR_LABEL, "heldout_log_likelihood_per_bin": LOG_LIKELIHOOD_LABEL}
    figure, axes = _axes_grid(ax, 1, len(metrics), width=4.5, height=3.5)
    if x is None:
        x = str(table["setting"].iloc[0]) if "setting" in table and str(table["setting"].iloc[0]) in table else "family"
    if x not in table:
        raise ValueError(f"x={x!r} is not a column of the table; columns are {list(table.columns)}.")
    data = table.copy()
    several_variants = data["variant"].nunique() > 1
    data["model"] = data["family"] + (" (" + data["variant"] + ")" if several_variants else "")
    for axis, metric in zip(axes[0], metrics):
        if x == "family":
            hue = "variant" if several_variants else None
            sns.stripplot(data=data, x=x, y=metric, hue=hue, dodge=several_variants, jitter=False, ax=axis, alpha=0.6)
            sns.pointplot(
                data=data,
                x=x,
                y=metric,
                hue=hue,
                dodge=0.4 if several_variants else False,
                errorbar=None,
                markers="_",
                linestyles="none",
                ax=axis,
                legend=False,
                color=None if hue else "k",
            )
        else:
            sns.lineplot(data=data, x=x, y=metric, hue="model", marker="o", errorbar="se", ax=axis)
        axis.set_ylabel(labels[metric])
        axis.set_xlabel(x.replace("_", " "))
    return figure


def plot_model_selection(selection: Any, *, x: str | None = None, ax: Any = None) -> Any:
    """Cross-validated held-out log-likelihood (mean ± standard error over folds) against one grid parameter.

    Parameters
    ----------
    selection : ModelSelection or its ``summary`` DataFrame
    x : str, optional
        Grid parameter on the x axis (default: the first with more than one value). Every combination of the
        other grid parameters is its own line; the best setting is marked with a star.
    ax : Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One errorbar line per combination of the other parameters, then the star marking the best setting.
    """
    import matplotlib.pyplot as plt

    summary = selection.summary if hasattr(selection, "summary") else selection
    mean, sem = "mean_heldout_log_likelihood_per_bin", "sem_heldout_log_likelihood_per_bin"
    if not isinstance(summary, pd.DataFrame) or not {"setting", mean, sem} <= set(summary.columns):
        raise ValueError("selection must be a ModelSelection from select_model or its summary DataFrame.")
    parameters = [c for c in summary.columns if c not in {"setting", mean, sem, "rank"} and not c.startswith("mean_")]
    if x is None:
        varying = [p for p in parameters if summary[p].astype(str).nunique() > 1]
        x = (varying or parameters)[0]
    if x not in parameters:
        raise ValueError(f"x={x!r} is not a grid parameter; the grid has {parameters}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5), layout="constrained")
    values = summary[x].tolist()
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    categories = list(dict.fromkeys(str(v) for v in values))
    position = (lambda v: float(v)) if numeric else (lambda v: float(categories.index(str(v))))
    others = [p for p in parameters if p != x]
    groups = summary.groupby([summary[p].astype(str) for p in others], sort=False) if others else [((), summary)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        group = group.assign(_x=[position(v) for v in group[x]]).sort_values("_x")
        label = ", ".join(f"{p}={k}" for p, k in zip(others, key)) or None
        ax.errorbar(
            group["_x"].to_numpy(dtype=float),
            group[mean].to_numpy(dtype=float),
            yerr=group[sem].fillna(0.0).to_numpy(dtype=float),
            marker="o",
            capsize=3,
            label=label,
        )
    best = summary.loc[summary[mean].idxmax()]
    ax.plot([position(best[x])], [best[mean]], linestyle="none", marker="*", markersize=14, color="k", label="best")
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    elif len(set(values)) <= 10:
        ax.set_xticks(sorted({float(v) for v in values}))
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(LOG_LIKELIHOOD_LABEL + "\n(cross-validated)")
    ax.legend(frameon=False)
    return ax
