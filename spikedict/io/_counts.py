"""Spike trains to counts and back: :class:`SpikeCounts` and :func:`bin_spiketrains`.

neo and elephant are imported inside the functions that need them, so that ``import spikedict.io`` stays
cheap (importing elephant is slow).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import quantities as pq

if TYPE_CHECKING:  # pragma: no cover
    import neo

__all__ = ["SpikeCounts", "bin_spiketrains"]


@dataclass
class SpikeCounts:
    """Binned spike counts with the metadata needed to go back to time.

    ``SpikeDictionary.fit`` accepts this object directly: it reads ``counts`` and ``n_trials``.

    Attributes
    ----------
    counts : ndarray of int64, shape (n_examples, n_channels, n_bins)
        Spike counts per bin. For pooled trials (binomial data): the number of trials with a spike in the bin.
        Given as any array of whole numbers >= 0 (integer, boolean or whole-valued float), stored as int64.
    n_trials : ndarray of int64, shape (n_examples,)
        Trials pooled into each example (1 when trials are not pooled); given as one number or one per example.
    bin_size : quantities.Quantity
        Width of a bin (a positive time).
    t_start : quantities.Quantity
        Left edge of the first bin (a time).
    channel_names : list of str, length n_channels
        One name per channel (unit).
    example_labels : pandas.DataFrame, n_examples rows
        Trial and condition annotations of each example (for pooled examples, the group keys, ``n_trials``
        and the indices of the pooled ``trials``).

    Raises
    ------
    TypeError, ValueError
        If ``counts`` are not whole numbers >= 0 of shape (n_examples, n_channels, n_bins), ``n_trials`` not whole
        numbers >= 1 (one, or one per example), or ``bin_size`` / ``t_start`` not times.

    Examples
    --------
    >>> import numpy as np, quantities as pq
    >>> counts = SpikeCounts(np.zeros((2, 1, 5), dtype=np.int64), np.ones(2, dtype=np.int64), 1 * pq.ms, 0 * pq.s)
    >>> counts
    SpikeCounts(n_examples=2, n_channels=1, n_bins=5, bin_size=1.0 ms, t_start=0.0 s, n_trials=1)
    >>> counts.t_stop
    array(0.005) * s
    """

    counts: np.ndarray
    n_trials: np.ndarray
    bin_size: pq.Quantity
    t_start: pq.Quantity
    channel_names: list[str] = field(default_factory=list)
    example_labels: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        self.counts = _check_whole(self.counts, "counts", minimum=0)
        if self.counts.ndim != 3:
            raise ValueError(f"counts must have shape (n_examples, n_channels, n_bins), got shape {self.counts.shape}.")
        n_trials = _check_whole(self.n_trials, "n_trials", minimum=1)
        if n_trials.ndim > 1 or n_trials.size not in (1, self.n_examples):
            raise ValueError(
                f"n_trials must be one number or one per example (shape ({self.n_examples},)), got shape "
                f"{n_trials.shape}."
            )
        self.n_trials = np.broadcast_to(n_trials.reshape(-1), (self.n_examples,)).copy()
        self.bin_size = _check_time(self.bin_size, "bin_size", positive=True)
        self.t_start = _check_time(self.t_start, "t_start")
        if not self.channel_names:
            self.channel_names = [f"channel {c}" for c in range(self.n_channels)]
        if len(self.channel_names) != self.n_channels:
            raise ValueError(f"channel_names has {len(self.channel_names)} names for {self.n_channels} channels.")
        if self.example_labels.empty and len(self.example_labels.columns) == 0:
            self.example_labels = pd.DataFrame(index=pd.RangeIndex(self.n_examples, name="example"))
        if len(self.example_labels) != self.n_examples:
            raise ValueError(f"example_labels has {len(self.example_labels)} rows for {self.n_examples} examples.")

    @property
    def n_examples(self) -> int:
        """Number of examples (trials, or groups of pooled trials)."""
        return int(self.counts.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of channels (units)."""
        return int(self.counts.shape[1])

    @property
    def n_bins(self) -> int:
        """Number of bins per example."""
        return int(self.counts.shape[2])

    @property
    def t_stop(self) -> pq.Quantity:
        """Right edge of the last bin, in the units of ``t_start``."""
        return (self.t_start + self.n_bins * self.bin_size).rescale(self.t_start.units)

    @property
    def bin_edges(self) -> pq.Quantity:
        """Bin edges, shape (n_bins + 1,), in the units of ``bin_size``."""
        start = self.t_start.rescale(self.bin_size.units).magnitude
        return (start + np.arange(self.n_bins + 1) * self.bin_size.magnitude) * self.bin_size.units

    def __repr__(self) -> str:
        trials = np.unique(self.n_trials)
        if trials.size == 0:
            trials_text = "none"
        else:
            trials_text = str(int(trials[0])) if trials.size == 1 else f"{int(trials.min())}..{int(trials.max())}"
        return (
            f"SpikeCounts(n_examples={self.n_examples}, n_channels={self.n_channels}, n_bins={self.n_bins}, "
            f"bin_size={_text(self.bin_size)}, t_start={_text(self.t_start)}, n_trials={trials_text})"
        )

    def to_spiketrains(self) -> list[list[neo.SpikeTrain]]:
        """Spike trains with ``counts[n, c, k]`` spikes at the centre of bin ``k``.

        The exact spike times inside a bin are not kept by the counts, so bin centres stand in for them;
        binning the result again with the same ``bin_size`` and window gives back ``counts``.
        For pooled examples the spikes of all pooled trials go into one train (annotated with ``n_trials``).

        Returns
        -------
        list of list of neo.SpikeTrain
            ``trains[example][channel]``, shape (n_examples, n_channels).
        """
        import neo

        units = self.bin_size.units
        centres = self.bin_edges.magnitude[:-1] + 0.5 * self.bin_size.magnitude
        t_start = self.t_start.rescale(units)
        t_stop = self.t_stop.rescale(units)
        trains = []
        for n in range(self.n_examples):
            row = []
            for c in range(self.n_channels):
                times = np.repeat(centres, self.counts[n, c].astype(np.int64))
                row.append(
                    neo.SpikeTrain(
                        times * units,
                        t_start=t_start,
                        t_stop=t_stop,
                        name=self.channel_names[c],
                        example=n,
                        n_trials=int(self.n_trials[n]),
                    )
                )
            trains.append(row)
        return trains

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: one row per example, channel and bin.

        Returns
        -------
        pandas.DataFrame
            Columns ``example``, ``channel`` (name), ``bin``, ``time`` (left edge of the bin, in the units of
            ``bin_size``, recorded in ``attrs["time_units"]``), ``count``, ``n_trials``, then the columns of
            ``example_labels``.
        """
        n_examples, n_channels, n_bins = self.counts.shape
        example, channel, bin_index = np.meshgrid(
            np.arange(n_examples), np.arange(n_channels), np.arange(n_bins), indexing="ij"
        )
        frame = pd.DataFrame(
            {
                "example": example.ravel(),
                "channel": np.asarray(self.channel_names, dtype=object)[channel.ravel()],
                "bin": bin_index.ravel(),
                "time": self.bin_edges.magnitude[:-1][bin_index.ravel()],
                "count": self.counts.ravel(),
                "n_trials": self.n_trials[example.ravel()],
            }
        )
        labels = self.example_labels.drop(columns=[c for c in ("n_trials",) if c in self.example_labels])
        labels = labels.reset_index(drop=True)
        labels.columns = [c if c not in frame.columns else f"label_{c}" for c in labels.columns]
        frame = frame.join(labels, on="example")
        frame.attrs["time_units"] = self.bin_size.dimensionality.string
        return frame


def _text(quantity: pq.Quantity) -> str:
    return f"{float(quantity.magnitude)} {quantity.dimensionality.string}"


# ------------------------------------------------------------------------------------------- checks
def _check_time(value: Any, name: str, *, positive: bool = False) -> pq.Quantity:
    if not isinstance(value, pq.Quantity):
        raise TypeError(
            f"{name} must be a time with units (a quantities.Quantity), got {value!r} of type "
            f"{type(value).__name__}. Multiply by a unit, e.g. {name}={value!r} * quantities.ms."
        )
    if value.size != 1:
        raise ValueError(f"{name} must be a single time, got an array of shape {value.shape}.")
    try:
        value.rescale(pq.s)
    except ValueError as error:
        raise ValueError(
            f"{name} must be a time (units convertible to seconds), got units {value.dimensionality.string!r}."
        ) from error
    value = value.reshape(())
    if positive and not float(value.magnitude) > 0:
        raise ValueError(f"{name} must be positive, got {_text(value)}. Pass e.g. {name}=1 * quantities.ms.")
    if not np.isfinite(float(value.magnitude)):
        raise ValueError(f"{name} must be finite, got {_text(value)}.")
    return value


def _check_whole(values: Any, name: str, *, minimum: int) -> np.ndarray:
    """``values`` as an int64 array, checked to hold whole numbers >= ``minimum`` that int64 can represent."""
    array = np.asarray(values)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be an array of whole numbers (integers), got dtype {array.dtype}.")
    if array.size == 0:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite, but it holds NaN or inf.")
        fractional = array != np.round(array)
        if fractional.any():
            raise ValueError(f"{name} must be whole numbers, got e.g. {array[fractional].flat[0].item()!r}.")
    low, high = array.min().item(), array.max().item()
    if low < minimum:
        raise ValueError(f"{name} must be whole numbers >= {minimum}, got {low!r}.")
    if float(high) >= 2.0**63:
        raise ValueError(f"{name} must fit in int64 (below 2**63), got {high!r}.")
    return array.astype(np.int64)


def _describe_train(trial: int, channel: int, names: list[str]) -> str:
    return f"trial {trial}, channel {names[channel]!r}"


# ---------------------------------------------------------------------------------- input shapes
def _normalise(data: Any, unit_annotation: str) -> tuple[list[list[neo.SpikeTrain]], list[str], list[dict[str, Any]]]:
    """Bring every accepted input to ``trains[trial][channel]`` with channel names and trial labels."""
    import neo

    def is_train_list(value: Any) -> bool:
        return isinstance(value, Sequence) and all(isinstance(v, neo.SpikeTrain) for v in value)

    if isinstance(data, neo.SpikeTrain):
        return [[data]], [_train_name(data, 0, unit_annotation)], [{"trial": 0}]
    if isinstance(data, neo.Block):
        return _from_block(data, unit_annotation)
    if isinstance(data, neo.Segment):
        data = [data]
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 0:
        if all(isinstance(item, neo.Segment) for item in data):
            return _from_segments(list(data), unit_annotation, container="the segments")
        if is_train_list(data):
            return [list(data)], [_train_name(t, c, unit_annotation) for c, t in enumerate(data)], [{"trial": 0}]
        if all(is_train_list(item) and not isinstance(item, neo.SpikeTrain) for item in data):
            sizes = {len(item) for item in data}
            if sizes == {0}:
                raise ValueError(
                    f"the {len(data)} per-trial list(s) hold no spike trains (no channels); pass at least one "
                    "neo.SpikeTrain per trial (an empty neo.SpikeTrain for a unit that did not fire)."
                )
            if len(sizes) != 1:
                raise ValueError(
                    "every trial must hold the same channels (units), but the per-trial lists have "
                    f"{sorted(sizes)} spike trains. Pass the same units in the same order in every trial "
                    "(an empty neo.SpikeTrain for a unit that did not fire)."
                )
            trains = [list(item) for item in data]
            names = [_train_name(t, c, unit_annotation) for c, t in enumerate(trains[0])]
            return trains, names, [{"trial": n} for n in range(len(trains))]
    if isinstance(data, Sequence) and len(data) == 0:
        raise ValueError("no spike trains were given (an empty list); pass at least one neo.SpikeTrain.")
    raise TypeError(
        "bin_spiketrains takes a neo.SpikeTrain, a list of them (channels), a neo.Segment, a list of segments, "
        f"a neo.Block, or a list of per-trial lists of spike trains; got {_type_text(data)}."
    )


def _type_text(data: Any) -> str:
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        kinds = sorted({type(item).__name__ for item in data})
        return f"a {type(data).__name__} of {', '.join(kinds)}"
    return type(data).__name__


def _train_name(train: neo.SpikeTrain, index: int, unit_annotation: str) -> str:
    if unit_annotation in train.annotations:
        return str(train.annotations[unit_annotation])
    if train.name:
        return str(train.name)
    return f"channel {index}"


def _segment_labels(segment: neo.Segment, index: int) -> dict[str, Any]:
    labels: dict[str, Any] = {"trial": index}
    if segment.name:
        labels["segment_name"] = segment.name
    for key, value in segment.annotations.items():
        if np.ndim(value) == 0:
            labels[key] = value.item() if isinstance(value, np.generic) else value
    return labels


def _from_segments(
    segments: list[neo.Segment], unit_annotation: str, container: str
) -> tuple[list[list[neo.SpikeTrain]], list[str], list[dict[str, Any]]]:
    labels = [_segment_labels(segment, n) for n, segment in enumerate(segments)]
    if not any(segment.spiketrains for segment in segments):
        raise ValueError(
            f"{container} hold no spike trains (segment.spiketrains is empty in all {len(segments)} segment(s)). "
            "Load a file with sorted spikes, or add neo.SpikeTrain objects to segment.spiketrains."
        )
    keyed = all(unit_annotation in t.annotations for s in segments for t in s.spiketrains)
    if keyed:
        names: list[str] = []
        for segment in segments:
            for train in segment.spiketrains:
                name = str(train.annotations[unit_annotation])
                if name not in names:
                    names.append(name)
        trains = []
        for n, segment in enumerate(segments):
            by_name: dict[str, neo.SpikeTrain] = {}
            for train in segment.spiketrains:
                name = str(train.annotations[unit_annotation])
                if name in by_name:
                    raise ValueError(
                        f"trial {n} holds two spike trains annotated {unit_annotation}={name!r}; each unit must "
                        "appear once per trial."
                    )
                by_name[name] = train
            missing = [name for name in names if name not in by_name]
            if missing:
                raise ValueError(_missing_units_message(n, missing))
            trains.append([by_name[name] for name in names])
        return trains, names, labels
    sizes = [len(segment.spiketrains) for segment in segments]
    if len(set(sizes)) != 1:
        first = next(n for n, size in enumerate(sizes) if size != max(sizes))
        raise ValueError(
            f"units missing from some trials: segments hold {min(sizes)} to {max(sizes)} spike trains "
            f"(segment {first} has {sizes[first]}), and there are no groups or {unit_annotation!r} annotations "
            "to tell which unit is which. Put each unit's spike trains in a neo.Group (block.groups), or "
            f"annotate each spike train with its unit (train.annotate({unit_annotation}=...)), with an empty "
            "spike train where a unit did not fire."
        )
    names = [_train_name(t, c, unit_annotation) for c, t in enumerate(segments[0].spiketrains)]
    return [list(segment.spiketrains) for segment in segments], names, labels


def _missing_units_message(trial: int, missing: list[str]) -> str:
    return (
        f"units missing from some trials: trial {trial} has no spike train for unit(s) {missing}. Every unit "
        "needs a spike train in every trial; add an empty neo.SpikeTrain (same t_start and t_stop) where a "
        "unit did not fire, or select the trials in which all units were recorded."
    )


def _from_block(
    block: neo.Block, unit_annotation: str
) -> tuple[list[list[neo.SpikeTrain]], list[str], list[dict[str, Any]]]:
    segments = list(block.segments)
    if not segments or not any(segment.spiketrains for segment in segments):
        raise ValueError(
            f"the Block {block.name or ''!r} holds no spike trains ({len(segments)} segment(s), none with "
            "spiketrains). Spike sorting output is needed: check that the file holds sorted units (some readers "
            "need e.g. load_waveforms or a different stream), or add neo.SpikeTrain objects to the segments."
        )
    groups = [group for group in block.groups if group.spiketrains]
    if not groups:
        return _from_segments(segments, unit_annotation, container="the Block's segments")
    labels = [_segment_labels(segment, n) for n, segment in enumerate(segments)]
    names = [str(group.name) if group.name else f"unit {g}" for g, group in enumerate(groups)]
    position = {id(segment): n for n, segment in enumerate(segments)}
    table: list[list[Any]] = [[None] * len(groups) for _ in segments]
    for g, group in enumerate(groups):
        for train in group.spiketrains:
            n = position.get(id(train.segment)) if train.segment is not None else None
            if n is None:
                raise ValueError(
                    f"unit {names[g]!r} (block.groups[{g}]) holds a spike train that belongs to no segment of this "
                    "Block; set train.segment (or append it to a segment's spiketrains)."
                )
            if table[n][g] is not None:
                raise ValueError(
                    f"unit {names[g]!r} has two spike trains in trial {n}; each unit appears once per trial."
                )
            table[n][g] = train
    for n, row in enumerate(table):
        missing = [names[g] for g, train in enumerate(row) if train is None]
        if missing:
            raise ValueError(_missing_units_message(n, missing))
    return table, names, labels


# -------------------------------------------------------------------------------------- binning
def _resolve_window(
    trains: list[list[neo.SpikeTrain]], names: list[str], t_start: Any, t_stop: Any, units: pq.Quantity
) -> tuple[pq.Quantity, pq.Quantity]:
    starts = np.array([[t.t_start.rescale(units).item() for t in row] for row in trains])
    stops = np.array([[t.t_stop.rescale(units).item() for t in row] for row in trains])
    unit_text = units.dimensionality.string
    undefined = np.isnan(starts) | np.isnan(stops)
    if undefined.any():
        n, c = np.argwhere(undefined)[0]
        raise ValueError(
            f"{_describe_train(int(n), int(c), names)} has t_start = {starts[n, c]:g} and t_stop = {stops[n, c]:g} "
            f"{unit_text}; a NaN end leaves its recorded interval undefined. Set the spike train's t_start and t_stop."
        )
    common = (starts.max(), stops.min())
    if (t_start is None and not np.isfinite(starts).all()) or (t_stop is None and not np.isfinite(stops).all()):
        raise ValueError(
            f"the spike trains' t_start / t_stop are not finite (t_start from {starts.min():g}, t_stop up to "
            f"{stops.max():g} {unit_text}), so they give no window to bin. Pass a finite window explicitly, e.g. "
            f"t_start=0 * quantities.s, t_stop=10 * quantities.s."
        )
    if t_start is None or t_stop is None:
        spread = not (np.allclose(starts, starts.flat[0]) and np.allclose(stops, stops.flat[0]))
        if spread:
            raise ValueError(
                "the spike trains have different t_start / t_stop (t_start from "
                f"{starts.min():g} to {starts.max():g} {unit_text}, t_stop from {stops.min():g} to {stops.max():g} "
                f"{unit_text}), so there is no single window to bin. Pass the common interval explicitly: "
                f"t_start={common[0]:g} * quantities.{unit_text}, t_stop={common[1]:g} * quantities.{unit_text}"
                + (
                    " (the trains do not overlap: align each trial to its own start first)."
                    if common[0] >= common[1]
                    else "."
                )
            )
    start = _check_time(t_start, "t_start").rescale(units) if t_start is not None else starts.flat[0] * units
    stop = _check_time(t_stop, "t_stop").rescale(units) if t_stop is not None else stops.flat[0] * units
    start, stop = start.reshape(()), stop.reshape(())
    if not stop > start:
        raise ValueError(f"t_stop ({_text(stop)}) must be after t_start ({_text(start)}).")
    tolerance = 1e-9 * max(1.0, abs(float(stop.magnitude)))
    outside = (starts > float(start.magnitude) + tolerance) | (stops < float(stop.magnitude) - tolerance)
    if outside.any():
        n, c = np.argwhere(outside)[0]
        raise ValueError(
            f"the window [{_text(start)}, {_text(stop)}] reaches outside the recorded interval of "
            f"{_describe_train(int(n), int(c), names)} ([{starts[n, c]:g}, {stops[n, c]:g}] {unit_text}). "
            f"Use a window inside every spike train, e.g. the common interval t_start={common[0]:g} * "
            f"quantities.{unit_text}, t_stop={common[1]:g} * quantities.{unit_text}."
        )
    return start, stop


def _check_spikes(trains: list[list[neo.SpikeTrain]], names: list[str]) -> None:
    for n, row in enumerate(trains):
        for c, train in enumerate(row):
            times = train.magnitude
            if times.size == 0:
                continue
            if np.isnan(times).any():
                raise ValueError(
                    f"{_describe_train(n, c, names)} has {int(np.isnan(times).sum())} spike time(s) that are NaN. "
                    "Drop them first (e.g. train[~numpy.isnan(train.magnitude)]) or fix the source of the times."
                )
            if np.any(np.diff(times) < 0):
                raise ValueError(
                    f"the spike times of {_describe_train(n, c, names)} are not sorted. Sort them first "
                    "(train.sort() sorts a neo.SpikeTrain in place)."
                )
            start = train.t_start.rescale(train.units).item()
            stop = train.t_stop.rescale(train.units).item()
            if times[0] < start or times[-1] > stop:
                raise ValueError(
                    f"{_describe_train(n, c, names)} has spikes outside its own interval [t_start, t_stop] = "
                    f"[{start:g}, {stop:g}] {train.units.dimensionality.string} (first spike {times[0]:g}, last "
                    f"{times[-1]:g}). Fix t_start / t_stop of the spike train (or drop the stray spikes with "
                    "train.time_slice(t_start, t_stop))."
                )


def bin_spiketrains(
    data: Any,
    bin_size: pq.Quantity,
    *,
    t_start: pq.Quantity | None = None,
    t_stop: pq.Quantity | None = None,
    pool_trials: bool | None = None,
    group_by: str | Sequence[str] | None = None,
    pool_size: int | None = None,
    clip: bool = False,
    unit_annotation: str = "unit",
) -> SpikeCounts:
    """Bin spike trains into counts ``(n_examples, n_channels, n_bins)`` with elephant's ``BinnedSpikeTrain``.

    Parameters
    ----------
    data : neo.SpikeTrain, list of neo.SpikeTrain, neo.Segment, list of neo.Segment, neo.Block, or list of lists
        A single train (one trial, one channel); a list of trains (one trial, one train per channel); a
        segment (one trial); a Block, whose segments are trials and whose ``groups`` are units (without groups,
        spike trains are matched by their ``unit_annotation`` annotation, else by position); or
        ``trains[trial][channel]``.
    bin_size : quantities.Quantity
        Width of a bin, e.g. ``1 * quantities.ms``.
    t_start, t_stop : quantities.Quantity, optional
        Window to bin, inside every spike train. Default: the spike trains' own ``t_start`` / ``t_stop``, which
        must then be the same for all trains. Spikes outside an explicit window are left out. Bins are half-open
        ``[left, right)``: a spike exactly at ``t_stop`` is left out. When the window is not a whole number of
        bins, the last partial bin is dropped.
    pool_trials : bool, optional
        Pool repeated trials into one example per condition (binomial data): the count of a bin is the number of
        trials with a spike in it, and ``n_trials`` is the number of pooled trials. Default: pool when
        ``group_by`` is given, else one example per trial.
    group_by : str or list of str, optional
        Trial (segment) annotation(s) naming the condition; trials with equal values are pooled together.
        Without it, ``pool_trials=True`` pools all trials into one example.
    pool_size : int, optional
        Pool groups of this many consecutive trials (within each condition when ``group_by`` is given) instead of
        all the trials of a condition: one example per group, the last group of a condition keeping the trials
        left over. Groups follow slow changes over a session (trial-by-trial amplitude, adaptation) that pooling
        a whole condition averages out; larger groups make clearer events in each example.
    clip : bool
        When pooling, count a trial with several spikes in one bin once instead of raising an error.
    unit_annotation : str
        Spike-train annotation that names the unit, used when a Block has no groups.

    Returns
    -------
    SpikeCounts
        ``counts`` of shape (n_examples, n_channels, n_bins) and ``n_trials`` of shape (n_examples,).

    Raises
    ------
    TypeError, ValueError
        For input that cannot be binned; each message says how to fix it.

    Examples
    --------
    >>> import neo, quantities as pq
    >>> train = neo.SpikeTrain([0.5, 1.5, 1.7, 3.2] * pq.ms, t_stop=5 * pq.ms)
    >>> counts = bin_spiketrains(train, 1 * pq.ms)
    >>> counts.counts
    array([[[1, 2, 0, 1, 0]]])
    >>> trials = [[neo.SpikeTrain([0.5, 2.5] * pq.ms, t_stop=3 * pq.ms)],
    ...           [neo.SpikeTrain([0.2] * pq.ms, t_stop=3 * pq.ms)]]
    >>> pooled = bin_spiketrains(trials, 1 * pq.ms, pool_trials=True)
    >>> pooled.counts, pooled.n_trials
    (array([[[2, 0, 1]]]), array([2]))
    """
    bin_size = _check_time(bin_size, "bin_size", positive=True)
    trains, names, labels = _normalise(data, unit_annotation)
    if group_by is not None and not (
        isinstance(group_by, str) or (isinstance(group_by, Sequence) and all(isinstance(k, str) for k in group_by))
    ):
        raise TypeError(f"group_by must name trial annotation(s): a str or a list of str, got {group_by!r}.")
    if pool_size is not None and (
        isinstance(pool_size, bool) or not isinstance(pool_size, (int, np.integer)) or pool_size < 1
    ):
        raise ValueError(f"pool_size must be a whole number of trials >= 1, got {pool_size!r}.")
    if pool_trials is None:
        pool_trials = group_by is not None or pool_size is not None
    if (group_by is not None or pool_size is not None) and not pool_trials:
        raise ValueError("group_by and pool_size pool trials; they need pool_trials=True (or leave pool_trials unset).")
    units = bin_size.units
    start, stop = _resolve_window(trains, names, t_start, t_stop, units)
    _check_spikes(trains, names)
    n_trial_rows, n_channels = len(trains), len(names)
    window = float((stop - start).rescale(units).magnitude)
    n_bins = int(np.floor(window / float(bin_size.magnitude) + 1e-9))
    if n_bins < 1:
        raise ValueError(
            f"the window [{_text(start)}, {_text(stop)}] is shorter than one bin of {_text(bin_size)}; use a "
            "smaller bin_size or a longer window."
        )
    flat = [train for row in trains for train in row]
    counts = _elephant_counts(flat, bin_size, start, start + n_bins * bin_size, n_bins)
    counts = counts.reshape(n_trial_rows, n_channels, n_bins)
    trial_labels = pd.DataFrame(labels)
    bin_start = start.rescale(flat[0].t_start.units) if flat else start
    if not pool_trials:
        trial_labels.index = pd.RangeIndex(n_trial_rows, name="example")
        return SpikeCounts(counts, np.ones(n_trial_rows, dtype=np.int64), bin_size, bin_start, names, trial_labels)
    return _pool(counts, trial_labels, group_by, clip, bin_size, bin_start, names, pool_size)


def _elephant_counts(
    trains: list[neo.SpikeTrain], bin_size: pq.Quantity, start: pq.Quantity, stop: pq.Quantity, n_bins: int
) -> np.ndarray:
    import warnings

    import neo
    from elephant.conversion import BinnedSpikeTrain

    # elephant needs one unit and the window inside every train: give it each train's spikes in [start, stop)
    # in the units of the window. Spikes outside the window are left out (documented); bins are half-open, so a
    # spike at t_stop belongs to no bin.
    units = start.units
    low, high = float(start.magnitude), float(stop.rescale(units).magnitude)
    windowed = []
    for train in trains:
        times = train.magnitude if train.dimensionality == units.dimensionality else train.rescale(units).magnitude
        windowed.append(neo.SpikeTrain(times[(times >= low) & (times < high)] * units, t_start=start, t_stop=stop))
    with warnings.catch_warnings():
        # elephant's rounding moves a spike within 1e-8 bins of t_stop onto t_stop, then warns that it dropped it.
        warnings.filterwarnings("ignore", message="Binning discarded", category=UserWarning)
        binned = BinnedSpikeTrain(windowed, bin_size=bin_size, t_start=start, t_stop=stop)
    counts = np.asarray(binned.to_array(), dtype=np.int64)
    if counts.shape[1] != n_bins:  # pragma: no cover - guards against a change in elephant's rounding
        raise RuntimeError(f"elephant returned {counts.shape[1]} bins where {n_bins} were expected.")
    return counts


def _pool(
    counts: np.ndarray,
    trial_labels: pd.DataFrame,
    group_by: str | Sequence[str] | None,
    clip: bool,
    bin_size: pq.Quantity,
    t_start: pq.Quantity,
    names: list[str],
    pool_size: int | None = None,
) -> SpikeCounts:
    several = counts > 1
    if several.any() and not clip:
        n, c, k = np.argwhere(several)[0]
        raise ValueError(
            f"pooling trials counts the trials with a spike in each bin, but trial {n} (channel {names[c]!r}) has "
            f"{counts[n, c, k]} spikes in bin {k} ({int(several.sum())} such bin(s) in all). Use a smaller "
            f"bin_size than {_text(bin_size)} so that no trial spikes twice in a bin, or pass clip=True to count "
            "such a trial once."
        )
    spiked = np.minimum(counts, 1)
    keys: list[str] = [] if group_by is None else [group_by] if isinstance(group_by, str) else list(group_by)
    absent = [key for key in keys if key not in trial_labels.columns]
    if absent:
        available = [c for c in trial_labels.columns if c != "trial"]
        raise ValueError(
            f"group_by names trial annotation(s) {absent} that the trials do not have; available: {available}. "
            "Annotate the segments (segment.annotate(condition=...)) or choose one of those."
        )
    if keys:
        missing = trial_labels[keys].isna().any(axis=1)
        if missing.any():
            raise ValueError(
                f"trial(s) {np.flatnonzero(missing)[:5].tolist()} lack a value for {keys}; every trial needs it "
                "to be pooled by condition."
            )
        groups: list[tuple[tuple[Hashable, ...], np.ndarray]] = [
            ((key,) if not isinstance(key, tuple) else key, np.asarray(index))
            for key, index in trial_labels.groupby(keys, sort=False).indices.items()
        ]
    else:
        groups = [((), np.arange(len(trial_labels)))]
    if pool_size is not None:  # consecutive runs of pool_size trials within each condition
        groups = [
            (key, index[first : first + pool_size])
            for key, index in groups
            for first in range(0, len(index), pool_size)
        ]
    pooled = np.stack([spiked[index].sum(axis=0) for _, index in groups])
    rows = [
        dict(zip(keys, key)) | {"n_trials": len(index), "trials": tuple(int(i) for i in index)} for key, index in groups
    ]
    labels = pd.DataFrame(rows, index=pd.RangeIndex(len(groups), name="example"))
    n_trials = np.array([len(index) for _, index in groups], dtype=np.int64)
    return SpikeCounts(pooled, n_trials, bin_size, t_start, names, labels)
