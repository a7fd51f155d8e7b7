"""Figures: templates against truth, rasters with rates, codes, training curves, comparisons, model selection.

The only module of spikedict that imports matplotlib and seaborn, and only inside its functions, so that
``import spikedict`` stays light and never picks a matplotlib backend. Every function takes ``ax=None``
(an Axes, or a sequence of Axes for the multi-panel figures), draws, and returns the Axes (or the Figure
for multi-panel figures). None calls ``show``; save with ``figure.savefig(path)``.

Times are in bins unless ``bin_size`` is given (seconds, or a ``quantities`` quantity), then in seconds.

Every figure is drawn in one style (:func:`figure_style`: seaborn's ``ticks`` style and ``paper`` context, a
colour-blind-safe palette, no top or right spines), applied only while a plotting function runs (a
``matplotlib.rc_context``): importing or using spikedict never changes matplotlib's global settings.

Rates drawn against data are firing rates a physiologist can read: spikes / s per trial when ``bin_size`` (and,
for pooled trials, the number of trials) is known. :func:`plot_rate_templates` draws templates as the rate
modulation they cause around the baseline, :func:`plot_event_aligned` the data aligned to a template's inferred
events (a raster and the event-triggered average with the model's prediction over it), and :func:`plot_raster` a
readable window of trials over the counts and fitted rate.

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

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pandas as pd

__all__ = [
    "figure_style",
    "plot_codes",
    "plot_event_aligned",
    "plot_family_comparison",
    "plot_model_selection",
    "plot_raster",
    "plot_rate_templates",
    "plot_sequences",
    "plot_templates",
    "plot_training_curve",
]

LOG_LIKELIHOOD_LABEL = "Held-out log-likelihood per bin (nats)"
TEMPLATE_ERROR_LABEL = "Template error sqrt(1 - <h, ĥ>²)"

#: seaborn's colour-blind-safe palette ("colorblind"), the colour cycle of :func:`figure_style`. Colours are passed
#: as hex: a name such as ``"C3"`` would be resolved when the figure is saved, outside the style.
PALETTE = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")
#: Colours of the lines every figure shares: data grey, fitted vermillion, truth near black.
DATA_COLOR = "0.55"
FITTED_COLOR = PALETTE[3]
TRUE_COLOR = "0.1"

#: Most trials :func:`plot_raster` draws; the others are counted in the y label (and in the pooled rate).
MAX_RASTER_TRIALS = 50
#: Longest default window of :func:`plot_raster`, in bins and in seconds (the shorter of the two is used).
DEFAULT_WINDOW_BINS = 500
DEFAULT_WINDOW_SECONDS = 2.0
#: Most channels :func:`plot_rate_templates` draws as rows; more are better seen with :func:`plot_sequences`.
MAX_RATE_TEMPLATE_CHANNELS = 8

_Function = TypeVar("_Function", bound=Callable[..., Any])


@contextmanager
def figure_style(font_scale: float = 1.2) -> Iterator[None]:
    """The style of every spikedict figure, for the duration of a ``with`` block.

    Seaborn's ``ticks`` axes style and ``paper`` context (scaled by ``font_scale`` for figures read on a screen),
    seaborn's colour-blind-safe palette (:data:`PALETTE`) as the colour cycle, no top or
    right spines, legends without frames, and SVG text kept as text (editable in a drawing program). matplotlib's
    global settings are restored when the block ends.

    Parameters
    ----------
    font_scale : float
        Multiplies the ``paper`` context's font sizes.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> with figure_style():
    ...     figure, axis = plt.subplots()
    >>> axis.spines["top"].get_visible(), plt.rcParams["axes.spines.top"]
    (False, True)
    """
    import matplotlib as mpl
    import seaborn as sns
    from cycler import cycler

    settings: dict[str, Any] = {}
    settings.update(sns.axes_style("ticks"))
    settings.update(sns.plotting_context("paper", font_scale=font_scale))
    settings.update(
        {
            "axes.prop_cycle": cycler(color=list(PALETTE)),
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": settings["axes.labelsize"],
            "axes.titleweight": "normal",
            "image.cmap": "viridis",
            "legend.frameon": False,
            "patch.force_edgecolor": False,
            "svg.fonttype": "none",
        }
    )
    with mpl.rc_context(settings):
        yield


def _styled(function: _Function) -> _Function:
    """Run a plotting function inside :func:`figure_style`."""

    @functools.wraps(function)
    def styled(*args: Any, **kwargs: Any) -> Any:
        with figure_style():
            return function(*args, **kwargs)

    return styled  # type: ignore[return-value]


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


@_styled
def plot_sequences(
    templates: Any,
    *,
    threshold: float = 0.5,
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


@_styled
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
    styles = {"initial": dict(color="0.6", linestyle=":"), "true": dict(color="k"), "learned": dict(color=FITTED_COLOR)}
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


def _rate_label(per_trial: bool, seconds: float | None) -> str:
    """The y label of rates: spikes / s (per trial), or counts per bin without ``bin_size``."""
    if seconds is None:
        return "Rate (spikes / trial / bin)" if per_trial else "Count (spikes / bin)"
    return "Rate (spikes / s / trial)" if per_trial else "Rate (spikes / s)"


def _in_bins(value: Any, seconds: float | None, name: str) -> float:
    """A time in bins: a number of seconds when ``bin_size`` is given (else of bins), or a quantity."""
    if hasattr(value, "rescale"):
        if seconds is None:
            raise ValueError(f"{name} with units needs bin_size (e.g. 1 * pq.ms) to convert it to bins.")
        return float(value.rescale("s").magnitude) / seconds
    value = float(value)
    return value / seconds if seconds is not None else value


def _window_bins(window: Any, n_bins: int, seconds: float | None, origin: float = 0.0) -> tuple[int, int]:
    """``window = (start, stop)`` (seconds with ``bin_size``, else bins) as bins ``[first, last)`` of ``n_bins``.

    Bin 0 starts at time ``origin`` (in the window's unit). None: from the start, at most
    :data:`DEFAULT_WINDOW_BINS` bins or :data:`DEFAULT_WINDOW_SECONDS`, whichever is shorter.
    """
    if window is None:
        longest = DEFAULT_WINDOW_BINS
        if seconds is not None:
            longest = min(longest, max(1, int(np.floor(DEFAULT_WINDOW_SECONDS / seconds + 1e-9))))
        return 0, min(n_bins, longest)
    if np.ndim(window) != 1 or len(window) != 2:
        raise ValueError(f"window must be (start, stop), got {window!r}.")
    offset = origin / seconds if seconds is not None else origin
    start, stop = (_in_bins(value, seconds, "window") - offset for value in window)
    first = max(0, int(np.floor(start + 1e-9)))
    last = min(n_bins, int(np.ceil(stop - 1e-9)))
    if last <= first:
        unit = "s" if seconds is not None else "bins"
        end = origin + n_bins * (seconds or 1)
        raise ValueError(
            f"window={window!r} ({unit}) holds no bin of the data ({origin:g} to {end:g} {unit}); "
            "pass (start, stop) with start < stop inside the data."
        )
    return first, last


def _window_note(first: int, last: int, n_bins: int, seconds: float | None, origin: float = 0.0) -> str:
    """``""`` when the window is the whole data, else which part of it is shown (for an axis label)."""
    if first == 0 and last >= n_bins:
        return ""
    if seconds is None:
        return f", bins {first} to {last} of {n_bins} shown"
    start, stop, end = (origin + bins * seconds for bins in (first, last, n_bins))
    return f", {start:.4g} to {stop:.4g} s of {origin:.4g} to {end:.4g} s shown"


def _legend_outside(axis: Any, handles: list[Any] | None = None) -> Any:
    """A legend right of ``axis``, top-aligned with it, outside the data."""
    kwargs: dict[str, Any] = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    if handles is not None:
        kwargs["handles"] = handles
    return axis.legend(**kwargs)


def _two_rows(ax: Any, height_ratios: tuple[float, float], figsize: tuple[float, float]) -> tuple[Any, Any]:
    """An upper and a lower Axes sharing x: new ones, the pair given, or one Axes split in two."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, (upper, lower) = plt.subplots(
            2, 1, sharex=True, figsize=figsize, height_ratios=height_ratios, layout="constrained"
        )
        return upper, lower
    axes = np.asarray(ax, dtype=object).reshape(-1)
    if axes.size == 2:
        return axes[0], axes[1]
    if axes.size != 1 or axes[0].get_subplotspec() is None:
        raise ValueError(
            "ax must be None, two Axes (upper, lower) or one Axes of a grid (it is split in two); got "
            f"{axes.size} Axes."
        )
    upper = axes[0]
    inner = upper.get_subplotspec().subgridspec(2, 1, height_ratios=height_ratios, hspace=0.05)
    upper.set_subplotspec(inner[0])
    lower = upper.figure.add_subplot(inner[1], sharex=upper)
    upper.tick_params(labelbottom=False)
    return upper, lower


def _spike_time_rows(
    trials: Any, window: Any, seconds: float | None, origin: float, min_bins: int
) -> tuple[list[np.ndarray], np.ndarray, int, tuple[int, int]]:
    """The raster rows of spike-time trials inside the window, their spikes pooled per bin, the number of bins
    (at least ``min_bins``) and the window's first and last bin (see :func:`plot_raster`)."""
    step = seconds if seconds is not None else 1.0
    times = []  # in bins from the start of bin 0
    duration = 0.0
    for train in trials:
        shift = origin
        if hasattr(train, "rescale"):
            if seconds is None:
                raise ValueError("spike trains with units need bin_size (e.g. 1 * pq.ms) to place the rates.")
            if hasattr(train, "t_start"):
                shift = float(train.t_start.rescale("s").magnitude)
            if hasattr(train, "t_stop"):
                duration = max(duration, float(train.t_stop.rescale("s").magnitude) - shift)
            train = train.rescale("s").magnitude
        times.append((np.asarray(train, dtype=np.float64).reshape(-1) - shift) / step)
    latest = max((float(t.max()) for t in times if t.size), default=0.0)
    n_bins = max(int(np.ceil(duration / step - 1e-9)), int(np.floor(latest + 1e-9)) + 1, min_bins)
    first, last = _window_bins(window, n_bins, seconds, origin)
    kept = [t[(t >= first - 1e-9) & (t < last - 1e-9)] for t in times]
    positions = [origin + t * step for t in kept]
    spike_bins = np.floor(np.concatenate(kept) + 1e-9).astype(np.int64) if kept else np.zeros(0, np.int64)
    pooled = np.bincount(spike_bins - first, minlength=last - first)[: last - first]
    return positions, pooled, n_bins, (first, last)


@_styled
def plot_raster(
    trials: Any,
    rates: Any = None,
    true_rates: Any = None,
    *,
    bin_size: Any = None,
    window: Any = None,
    max_trials: int = MAX_RASTER_TRIALS,
    t_start: Any = None,
    ax: Any = None,
) -> Any:
    """A raster of trials above the pooled spikes and the fitted (and true) rate, in a readable window.

    The raster (one row of ticks per trial, at most ``max_trials`` rows) is on top; below it, on an Axes of its
    own sharing the time axis, the spikes of all trials pooled per bin and the rates, all per trial (and per
    second with ``bin_size``). The legend is right of the rates, outside the data. The x label says which part
    of the data the window shows when it is not all of it.

    Parameters
    ----------
    trials : array of shape (n_trials, n_bins), sequence of spike-time arrays, or array of shape (n_bins,)
        Spikes of the repeated trials of one example and channel: 0/1 (or counts) per trial and bin, or spike
        times per trial (in bins, or in seconds when ``bin_size`` is given; Neo SpikeTrains are rescaled to
        seconds). A 1-D array is the pooled counts of an example (trials with a spike per bin), drawn as a
        step line with the rates in the same unit on one Axes.
    rates, true_rates : array of shape (n_bins,), optional
        Expected counts per bin of the pooled example (what ``predict_rate`` returns, ``n_trials * p`` for
        the binomial family) and the true ones. Under a raster they are drawn per trial (divided by the
        number of trials, and by ``bin_size`` for spikes / s).
    bin_size : float or quantity, optional
    window : (start, stop), optional
        Part of the data to draw, in the time of the x axis: seconds when ``bin_size`` is given (or quantities),
        else bins. Default: from the start, the shorter of :data:`DEFAULT_WINDOW_SECONDS` and
        :data:`DEFAULT_WINDOW_BINS` bins.
    max_trials : int
        Most trials drawn in the raster (the first ones); the y label counts the others, which still enter the
        pooled rate.
    t_start : float or quantity, optional
        Time of the start of bin 0 (seconds with ``bin_size``, else bins), e.g. ``SpikeCounts.t_start`` or the
        stimulus-relative start of a trial. Default: the first spike train's ``t_start`` (Neo), else 0. Each Neo
        spike train is placed relative to its own ``t_start`` (the start of its bin 0).
    ax : Axes or pair of Axes, optional
        For a raster: the (raster, rate) Axes, or one Axes of a grid that is split in two. For pooled counts:
        one Axes.

    Returns
    -------
    matplotlib.axes.Axes
        The raster's Axes, one ``EventCollection`` per drawn trial; the rate Axes is ``ax.figure.axes[-1]``
        (when created here) with lines, in order, ``"observed"`` (all trials pooled), ``"predicted rate"``,
        ``"true rate"``. For pooled counts the only Axes, lines ``"counts"`` then the rates.
    """
    import matplotlib.pyplot as plt

    seconds = _seconds(bin_size)
    if not max_trials >= 1:
        raise ValueError(f"max_trials must be a positive number of trials, got {max_trials}.")
    rate_lines = [(name, values) for name, values in (("predicted rate", rates), ("true rate", true_rates))]
    rate_lines = [(name, np.asarray(values, dtype=np.float64)) for name, values in rate_lines if values is not None]
    for name, values in rate_lines:
        if values.ndim != 1:
            raise ValueError(
                f"{name} must have shape (n_bins,) for one example and channel, got {values.shape}; select e.g. "
                "rates[example, channel]."
            )
    styles = {
        "predicted rate": dict(color=FITTED_COLOR, linewidth=1.8),
        "true rate": dict(color=TRUE_COLOR, linewidth=1.2, linestyle="--"),
    }
    step = seconds if seconds is not None else 1.0
    time_label = "Time (s)" if seconds is not None else "Time (bins)"
    is_array = isinstance(trials, np.ndarray) or (hasattr(trials, "shape") and not hasattr(trials, "rescale"))
    origin = 0.0
    if t_start is not None:
        origin = _in_bins(t_start, seconds, "t_start") * step
    elif not is_array:
        starts = [train.t_start for train in trials if hasattr(train, "t_start") and hasattr(train, "rescale")]
        origin = float(starts[0].rescale("s").magnitude) if starts else 0.0
    if is_array and np.ndim(trials) == 1:
        counts = np.asarray(trials, dtype=np.float64)
        n_bins = max([counts.size] + [values.size for _, values in rate_lines])
        first, last = _window_bins(window, n_bins, seconds, origin)
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3), layout="constrained")
        x = origin + np.arange(n_bins) * step
        # a light histogram behind the rates (binary counts would otherwise be a comb of dark lines)
        ax.fill_between(x[first:last], counts[first:last], step="mid", color="0.88", linewidth=0, label="_counts")
        ax.step(x[first:last], counts[first:last], where="mid", color="0.7", linewidth=0.5, label="counts")
        for name, values in rate_lines:
            ax.plot(x[first : min(last, values.size)], values[first:last], label=name, **styles[name])
        ax.set_xlim(origin + first * step, origin + last * step)
        ax.set_xlabel(time_label + _window_note(first, last, n_bins, seconds, origin))
        ax.set_ylabel("Count per bin (spikes, or pooled trials with a spike)")
        _legend_outside(ax)
        return ax
    min_bins = max([0] + [values.size for _, values in rate_lines])
    if is_array:
        spikes = np.asarray(trials)
        if spikes.ndim != 2:
            raise ValueError(
                f"trials must have shape (n_trials, n_bins), be a list of spike-time arrays, or pooled counts of "
                f"shape (n_bins,); got shape {spikes.shape}."
            )
        n_bins = max(spikes.shape[1], min_bins)
        first, last = _window_bins(window, n_bins, seconds, origin)
        x = origin + np.arange(n_bins) * step
        positions = [x[first + np.flatnonzero(row[first:last] > 0)] for row in spikes]
        pooled = np.asarray(spikes[:, first:last], dtype=np.float64).sum(axis=0)
    else:
        positions, pooled, n_bins, (first, last) = _spike_time_rows(trials, window, seconds, origin, min_bins)
    n_trials = len(positions)
    if n_trials == 0:
        raise ValueError("trials holds no trials; pass at least one trial.")
    raster_axis, rate_axis = _two_rows(ax, height_ratios=(1.3, 1.0), figsize=(8, 4.5))
    drawn = positions[:max_trials]
    n_drawn = len(drawn)
    ticks = 1.0 if n_drawn <= 20 else 0.8
    raster_axis.eventplot(drawn, colors=TRUE_COLOR, linelengths=0.8, linewidths=ticks)
    raster_axis.set_ylabel("Trial" if n_drawn == n_trials else f"Trial (first {n_drawn} of {n_trials})")
    raster_axis.set_ylim(-0.5, n_drawn - 0.5)
    raster_axis.spines["bottom"].set_visible(False)
    raster_axis.tick_params(axis="x", bottom=False, labelbottom=False)
    scale, ylabel = _rate_scale(n_trials, bin_size)
    x = origin + np.arange(n_bins) * step
    observed = pooled * scale
    rate_axis.fill_between(x[first:last], observed, step="post", color="0.9", linewidth=0, label="_observed")
    rate_axis.step(
        x[first:last], observed, where="post", color=DATA_COLOR, linewidth=0.6, label="observed (all trials)"
    )
    for name, values in rate_lines:
        rate_axis.plot(x[first : min(last, values.size)], values[first:last] * scale, label=name, **styles[name])
    rate_axis.set_ylabel(ylabel)
    rate_axis.set_ylim(bottom=0)
    rate_axis.set_xlim(origin + first * step, origin + last * step)
    rate_axis.set_xlabel(time_label + _window_note(first, last, n_bins, seconds, origin))
    _legend_outside(rate_axis)
    raster_axis.figure.align_ylabels([raster_axis, rate_axis])
    return raster_axis


@_styled
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
        ax.plot(x, row, color=PALETTE[k % len(PALETTE)], label=f"template {k}")
    if true_codes is not None:
        truth = one_example(true_codes, "true_codes")
        true_x, _ = _time_axis(truth.shape[1], bin_size)
        for k, row in enumerate(truth):
            events = np.flatnonzero(row != 0)
            ax.plot(
                true_x[events],
                row[events],
                linestyle="none",
                marker="x",
                color=PALETTE[k % len(PALETTE)],
                label=f"true {k}",
            )
    ax.set_xlabel(xlabel.replace("Time", "Code position"))
    ax.set_ylabel("Code amplitude (a.u.)")
    _legend_outside(ax)
    return ax


@_styled
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


@_styled
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


@_styled
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


def _numpy(values: Any, name: str) -> np.ndarray:
    """An array of floats from an array, a tensor or a nested sequence."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of numbers, got {type(values).__name__}.") from error


def _fitted_arrays(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """``templates_`` (3-D) and ``baseline_`` of a fitted SpikeDictionary."""
    if not (hasattr(model, "templates_") and hasattr(model, "baseline_")):
        raise ValueError(
            f"model must be a fitted SpikeDictionary (with templates_ and baseline_), got {type(model).__name__}; "
            "call fit first."
        )
    templates = _templates_array(model.templates_, "model.templates_")
    baseline = np.asarray(model.baseline_, dtype=np.float64).reshape(-1)
    return templates, np.broadcast_to(baseline, (templates.shape[1],)) if baseline.size == 1 else baseline


def _inverse_link(model: Any) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The inverse link of the model's family (as numpy) and the family's name.

    Binomial: the sigmoid, the spike probability of one trial in a bin. Poisson: the exponential (capped as the
    family caps it), the expected count in a bin. Gaussian: the identity.
    """
    from scipy.special import expit

    family = getattr(model, "family_", None)
    name = str(getattr(family, "name", None) or getattr(model, "family", "")).strip().lower()
    if name == "binomial":
        return expit, name
    if name == "poisson":
        cap = float(getattr(family, "max_log_rate", np.inf))
        return (lambda eta: np.exp(np.minimum(eta, cap))), name
    if name == "gaussian":
        return (lambda eta: np.asarray(eta, dtype=np.float64)), name
    raise ValueError(f"rates need a binomial, poisson or gaussian model, got family {name!r}.")


def _median_amplitudes(amplitude: Any, codes: Any, n_templates: int) -> np.ndarray:
    """One amplitude per template: the median of its positive codes (NaN without any), or the numbers given."""
    if isinstance(amplitude, str):
        if amplitude != "median":
            raise ValueError(f"amplitude must be 'median' or a number (one per template), got {amplitude!r}.")
        if codes is None:
            raise ValueError(
                "amplitude='median' needs the codes of the data: pass codes=model.transform(counts), or give the "
                "amplitude as a number (amplitude=1.0)."
            )
        values = _numpy(codes, "codes")
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[1] != n_templates:
            raise ValueError(
                f"codes must have shape (n_examples, {n_templates}, n_code_bins) for {n_templates} templates, got "
                f"{values.shape}."
            )
        medians = []
        for k in range(n_templates):
            positive = values[:, k][values[:, k] > 0]
            medians.append(float(np.median(positive)) if positive.size else np.nan)
        return np.asarray(medians)
    values = _numpy(amplitude, "amplitude").reshape(-1)
    if values.size not in (1, n_templates) or not np.all(np.isfinite(values)):
        raise ValueError(f"amplitude must be one finite number or one per template ({n_templates}), got {amplitude}.")
    return np.broadcast_to(values, (n_templates,)).copy()


@_styled
def plot_rate_templates(
    model: Any,
    *,
    bin_size: Any,
    amplitude: str | float | np.ndarray = "median",
    codes: Any = None,
    lower: Any = None,
    upper: Any = None,
    channel_names: list[str] | None = None,
    ax: Any = None,
) -> Any:
    """Templates as the firing-rate modulation they cause around the baseline, in spikes / s.

    For template ``k`` on channel ``c`` at amplitude ``a`` the rate at lag ``t`` after an event is
    ``f^-1(baseline_c + a * template_kc(t)) / bin_size``: for the binomial family the sigmoid is one trial's
    spike probability per bin (a rate per trial), for the Poisson family the exponential is the expected count
    per bin (for the Gaussian family the identity). ``a`` defaults to the median of the template's positive
    codes, the amplitude of a typical event. The baseline rate ``f^-1(baseline_c) / bin_size`` is a dashed line.
    Each bin's rate is drawn at the bin's centre, time 0 being the event (the code position, where the template
    starts).

    Parameters
    ----------
    model : SpikeDictionary
        A fitted model (``templates_`` of shape (n_templates, n_channels, template_size), ``baseline_``).
    bin_size : float or quantity or None
        Bin duration (seconds, or a quantity) for rates in spikes / s; None: per bin.
    amplitude : "median", float or array of shape (n_templates,)
        Code amplitude ``a``: the median positive code of each template in ``codes``, or the numbers given.
    codes : array of shape (n_examples, n_templates, n_code_bins), optional
        Codes of the data (``model.transform(counts)``), for ``amplitude="median"``.
    lower, upper : array of shape (n_templates, n_channels, template_size), optional
        Bounds of each template (e.g. percentiles over bootstrap refits, aligned to the model's templates), drawn
        as a shaded band between the rates they give at the same amplitude.
    channel_names : list of str, optional
        Row labels for several channels.
    ax : sequence of Axes, optional
        ``n_channels * n_templates`` Axes (row-major: one row per channel).

    Returns
    -------
    matplotlib.figure.Figure
        One Axes per channel and template, each with lines ``"baseline"`` and ``"rate at a"`` (the template's,
        absent when it has no event) and, with bounds, a band ``"band"`` (a ``PolyCollection``). Titles carry
        the amplitude; the legend is right of the first row.

    Raises
    ------
    ValueError
        More than :data:`MAX_RATE_TEMPLATE_CHANNELS` channels (draw them with :func:`plot_sequences`), bounds of
        another shape, or ``amplitude="median"`` without codes.
    """
    templates, baseline = _fitted_arrays(model)
    n_templates, n_channels, size = templates.shape
    if n_channels > MAX_RATE_TEMPLATE_CHANNELS:
        raise ValueError(
            f"the model has {n_channels} channels; rate templates are drawn for at most "
            f"{MAX_RATE_TEMPLATE_CHANNELS} (one row each): draw many channels with plot_sequences."
        )
    bounds = []
    for name, values in (("lower", lower), ("upper", upper)):
        if values is not None:
            values = _templates_array(_numpy(values, name), name)
            if values.shape != templates.shape:
                raise ValueError(f"{name} must have the templates' shape {templates.shape}, got {values.shape}.")
        bounds.append(values)
    if (bounds[0] is None) != (bounds[1] is None):
        raise ValueError("pass both lower and upper for a band, or neither.")
    amplitudes = _median_amplitudes(amplitude, codes, n_templates)
    inverse, family = _inverse_link(model)
    seconds = _seconds(bin_size)
    per = 1.0 / seconds if seconds is not None else 1.0
    step = seconds if seconds is not None else 1.0
    ylabel = _rate_label(family == "binomial", seconds)
    if ax is None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(
            n_channels,
            n_templates,
            figsize=(2.8 * n_templates + 1.6, 2.3 * n_channels + 0.4),
            sharex=True,
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
    else:
        figure, axes = _axes_grid(ax, n_channels, n_templates)
    x = (np.arange(size) + 0.5) * step
    for k in range(n_templates):
        a = amplitudes[k]
        for c in range(n_channels):
            axis = axes[c, k]
            axis.axhline(inverse(baseline[c]) * per, color=DATA_COLOR, linestyle="--", linewidth=1.0, label="baseline")
            if np.isfinite(a):
                if bounds[0] is not None:
                    axis.fill_between(
                        x,
                        inverse(baseline[c] + a * bounds[0][k, c]) * per,
                        inverse(baseline[c] + a * bounds[1][k, c]) * per,
                        color=FITTED_COLOR,
                        alpha=0.25,
                        linewidth=0,
                        label="band",
                    )
                axis.plot(x, inverse(baseline[c] + a * templates[k, c]) * per, color=FITTED_COLOR, label="rate at a")
            if c == 0:
                axis.set_title(f"template {k}, a = {a:.3g}" if np.isfinite(a) else f"template {k}: no events")
            if c == n_channels - 1:
                axis.set_xlabel("Time from event (s)" if seconds is not None else "Time from event (bins)")
            if k == 0:
                name = channel_names[c] if channel_names is not None else f"channel {c}"
                axis.set_ylabel(f"{name}\n{ylabel}" if n_channels > 1 else ylabel)
        axes[0, k].set_xlim(0, size * step)
    handles = [axes[0, k] for k in range(n_templates) if np.isfinite(amplitudes[k])]
    source = handles[0] if handles else axes[0, 0]
    entries, labels = source.get_legend_handles_labels()
    names = {"baseline": "baseline rate", "rate at a": "rate at amplitude a", "band": "lower to upper"}
    legend = _legend_outside(axes[0, -1], handles=entries)
    for text, label in zip(legend.get_texts(), labels):
        text.set_text(names.get(label, label))
    return figure


def _event_snippets(signal: np.ndarray, examples: np.ndarray, positions: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``signal[example, position + lag]`` per event and lag, NaN where it falls outside the data.

    ``signal`` has shape (n_examples, n_bins); the result (n_events, n_lags).
    """
    index = positions[:, None] + lags[None, :]
    inside = (index >= 0) & (index < signal.shape[1])
    snippets = np.full(index.shape, np.nan)
    rows = np.broadcast_to(examples[:, None], index.shape)
    snippets[inside] = signal[rows[inside], index[inside]]
    return snippets


def _mean_over_events(snippets: np.ndarray) -> np.ndarray:
    """Mean over events (rows) of the values inside the data; NaN at lags no event reaches."""
    inside = np.isfinite(snippets)
    n_inside = inside.sum(axis=0)
    total = np.where(inside, snippets, 0.0).sum(axis=0)
    return np.divide(total, n_inside, out=np.full(total.shape, np.nan), where=n_inside > 0)


@_styled
def plot_event_aligned(
    counts: Any,
    codes: Any,
    template: int,
    *,
    bin_size: Any = None,
    window: Any = None,
    rates: Any = None,
    n_trials: Any = None,
    model: Any = None,
    channel: int = 0,
    ax: Any = None,
) -> Any:
    """The data aligned to one template's inferred events: a raster of the snippets over the event-triggered mean.

    An event of template ``k`` is a code position ``s`` with ``codes[n, k, s] > 0``; its time 0 is the code
    position, where the template starts (the template covers lags 0 to ``template_size - 1``). The upper panel
    shows the counts around each event, one row per event, largest amplitude on top (a binned raster: the grey
    level is the count in the bin, white outside the data). The lower panel is the event-triggered mean of the
    counts (the PSTH of the events), per trial with ``n_trials`` and per second with ``bin_size``, and over it
    the rate the model predicts for one event: the ``rates`` given, and/or, with ``model``,
    ``f^-1(baseline_c + a * template_kc(t))`` at the median event amplitude ``a`` (zero template outside the
    template's lags). Other events overlapping the window are not subtracted. Each bin is drawn at its centre.

    Parameters
    ----------
    counts : array of shape (n_examples, n_channels, n_bins), or SpikeCounts
        Counts per bin (for pooled trials, trials with a spike per bin). A SpikeCounts also gives ``bin_size``,
        ``n_trials`` and the channel's name for the title.
    codes : array of shape (n_examples, n_templates, n_code_bins)
        Codes of the counts (``model.transform(counts)``); stride 1.
    template : int
        Template whose events are aligned.
    bin_size : float or quantity, optional
        Bin duration, for times in seconds and rates in spikes / s.
    window : (start, stop), optional
        Lags around the event to draw: seconds when ``bin_size`` is given (or quantities), else bins; start may
        be negative. Default: half a template before the event to half a template after its end.
    rates : array of shape (n_lags,) or (n_examples, n_channels, n_bins), optional
        The predicted rate in the counts' unit (expected counts per bin): one value per lag of the window, drawn
        as given (scaled like the counts), or the fitted rates of the counts (``model.predict_rate(counts)``),
        averaged over the events like the counts.
    n_trials : int or array of shape (n_examples,), optional
        Trials pooled per example: the counts (and rates) are divided by it for rates per trial (the label says
        "per trial" unless every example is one trial). Default: from a SpikeCounts, else a binomial model's,
        else none (rates per example).
    model : SpikeDictionary, optional
        Fitted model whose template ``template`` gives the predicted rate at the median event amplitude.
    channel : int
        Channel drawn.
    ax : pair of Axes or Axes, optional
        The (raster, mean) Axes, or one Axes of a grid that is split in two.

    Returns
    -------
    matplotlib.figure.Figure
        ``figure.axes[0]``: the raster (one ``AxesImage``, rows the events by decreasing amplitude);
        ``figure.axes[1]``: lines ``"event-triggered mean"``, then ``"fitted rate"`` (3-D ``rates``) or ``"given
        rate"`` (1-D ``rates``), then ``"model at median amplitude"``; its legend is right of it.
    """
    channel_names = None
    if hasattr(counts, "counts") and not isinstance(counts, np.ndarray):
        channel_names = getattr(counts, "channel_names", None)
        if bin_size is None:
            bin_size = getattr(counts, "bin_size", None)
        if n_trials is None:
            n_trials = getattr(counts, "n_trials", None)
        counts = counts.counts
    data = _numpy(counts, "counts")
    code_values = _numpy(codes, "codes")
    if data.ndim != 3:
        raise ValueError(f"counts must have shape (n_examples, n_channels, n_bins), got {data.shape}.")
    if code_values.ndim != 3 or code_values.shape[0] != data.shape[0]:
        raise ValueError(
            f"codes must have shape ({data.shape[0]}, n_templates, n_code_bins) for counts of shape {data.shape}, "
            f"got {code_values.shape}."
        )
    n_examples, n_channels, n_bins = data.shape
    if not 0 <= template < code_values.shape[1]:
        raise ValueError(f"template must be in [0, {code_values.shape[1] - 1}], got {template}.")
    if not 0 <= channel < n_channels:
        raise ValueError(f"channel must be in [0, {n_channels - 1}], got {channel}.")
    inverse = family = None
    if model is not None:
        templates, baseline = _fitted_arrays(model)
        inverse, family = _inverse_link(model)
        template_size = templates.shape[2]
        if n_trials is None and family == "binomial":
            model_trials = np.asarray(getattr(getattr(model, "family_", None), "n_trials", np.nan)).reshape(-1)
            if model_trials.size not in (1, data.shape[0]) or not np.all(model_trials >= 1):
                raise ValueError(
                    "the binomial model pooled another number of examples' trials; pass n_trials (trials per "
                    "example of these counts) for rates per trial."
                )
            n_trials = model_trials
    else:
        template_size = n_bins - code_values.shape[2] + 1
    seconds = _seconds(bin_size)
    step = seconds if seconds is not None else 1.0
    if window is None:
        first, last = -(template_size // 2), template_size + template_size // 2
    else:
        if np.ndim(window) != 1 or len(window) != 2:
            raise ValueError(f"window must be (start, stop), got {window!r}.")
        start, stop = (_in_bins(value, seconds, "window") for value in window)
        first, last = int(np.floor(start + 1e-9)), int(np.ceil(stop - 1e-9))
        if last <= first:
            raise ValueError(f"window must have start < stop, got {window!r}.")
    lags = np.arange(first, last)
    trials = np.ones(n_examples) if n_trials is None else _numpy(n_trials, "n_trials").reshape(-1)
    if trials.size not in (1, n_examples) or not np.all(trials >= 1):
        raise ValueError(f"n_trials must be a positive number or one per example ({n_examples}), got {n_trials}.")
    trials = np.broadcast_to(trials, (n_examples,))
    per_trial = bool(np.any(trials > 1)) or family == "binomial"  # single trials: spikes / s, as for Poisson
    examples, positions = np.nonzero(code_values[:, template] > 0)
    amplitudes = code_values[examples, template, positions]
    order = np.argsort(-amplitudes, kind="stable")
    examples, positions, amplitudes = examples[order], positions[order], amplitudes[order]
    n_events = examples.size
    per_second = 1.0 / seconds if seconds is not None else 1.0

    upper, lower = _two_rows(ax, height_ratios=(1.2, 1.0), figsize=(6.5, 5.0))
    figure = upper.figure
    x = (lags + 0.5) * step
    edges = (first * step, last * step)
    title = f"template {template}: {n_events} event{'s' if n_events != 1 else ''}"
    name = channel_names[channel] if channel_names is not None else f"channel {channel}"
    upper.set_title(title + (f", {name}" if n_channels > 1 else ""))
    upper.set_ylabel("Event (largest first)")
    lower.set_xlabel("Time from event (s)" if seconds is not None else "Time from event (bins)")
    lower.set_ylabel(_rate_label(per_trial, seconds))
    lower.set_xlim(*edges)
    upper.tick_params(axis="x", labelbottom=False)
    if n_events == 0:
        upper.text(0.5, 0.5, "no events", transform=upper.transAxes, ha="center", va="center")
        return figure
    snippets = _event_snippets(data[:, channel], examples, positions, lags)
    import matplotlib as mpl

    colormap = mpl.colormaps["Greys"].with_extremes(bad="white")
    image = upper.imshow(
        np.ma.masked_invalid(snippets),
        aspect="auto",
        cmap=colormap,
        vmin=0,
        vmax=max(1.0, float(np.nanmax(snippets)) if np.isfinite(snippets).any() else 1.0),
        extent=(edges[0], edges[1], n_events, 0),
        interpolation="nearest" if n_events <= 200 else "antialiased",
    )
    # an inset beside the raster: a colorbar taking room from the raster alone would misalign the two panels
    figure.colorbar(image, cax=upper.inset_axes((1.02, 0.0, 0.025, 1.0)), label="Count in bin")
    per_event = 1.0 / trials[examples][:, None]
    for axis in (upper, lower):
        axis.axvline(0.0, color=DATA_COLOR, linestyle=":", linewidth=0.8, label="_event")
    lower.axvspan(0.0, template_size * step, color="0.92", linewidth=0, zorder=0, label="_template span")
    mean = _mean_over_events(snippets * per_event) * per_second
    lower.step(x, mean, where="mid", color=DATA_COLOR, linewidth=1.2, label="event-triggered mean")
    scale = float(np.mean(per_event)) * per_second
    if rates is not None:
        values = _numpy(rates, "rates")
        if values.shape == data.shape:
            fitted = _mean_over_events(_event_snippets(values[:, channel], examples, positions, lags) * per_event)
            lower.plot(x, fitted * per_second, color=FITTED_COLOR, linewidth=1.6, label="fitted rate")
        elif values.shape == lags.shape:
            lower.plot(x, values * scale, color=FITTED_COLOR, linewidth=1.6, label="given rate")
        else:
            raise ValueError(
                f"rates must have shape ({lags.size},) (one per lag of the window) or the counts' shape {data.shape}, "
                f"got {values.shape}."
            )
    if model is not None:
        median = float(np.median(amplitudes))
        shape = np.zeros(lags.size)
        inside = (lags >= 0) & (lags < template_size)
        shape[inside] = templates[template, channel, lags[inside]]
        predicted = inverse(baseline[channel] + median * shape)
        # binomial: the sigmoid is already per trial; otherwise an example's expected count, scaled like the counts
        predicted = predicted * (per_second if family == "binomial" else scale)
        lower.plot(x, predicted, color=TRUE_COLOR, linewidth=1.4, linestyle="--", label="model at median amplitude")
    lower.set_ylim(bottom=0)
    _legend_outside(lower)
    figure.align_ylabels([upper, lower])
    return figure
