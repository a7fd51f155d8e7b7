"""Long recordings as overlapping windows of spike counts, binned on demand: :class:`RecordingWindows`.

An hour of 100 units at 1 ms bins is 3.6e8 counts (1.4 GB as float32), but only a few million spikes. A
``RecordingWindows`` keeps the spikes (as the index of the bin each falls in, 8 bytes per spike) and bins a
window only when it is asked for, so memory is bounded by the batch of windows in use, not by the recording.
``SpikeDictionary.fit`` trains on the windows (stochastic, a batch of windows per step), and
``transform`` / ``predict_rate`` / ``score`` stitch the windows back into one recording (see
:func:`stitch_cuts`).

Binning follows elephant's ``BinnedSpikeTrain`` exactly (same bin edges, same correction of spikes that sit on a
bin edge up to floating-point error), so the windows concatenate to the counts that ``bin_spiketrains`` gives
for the whole recording.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import quantities as pq
import torch
from torch import Tensor

from spikedict.io._counts import _check_spikes, _check_time, _normalise, _resolve_window, _text, _train_name

__all__ = ["RecordingWindows", "stitch_cuts"]


def _bins_of(value: pq.Quantity, bin_size: pq.Quantity, name: str) -> int:
    value = _check_time(value, name, positive=True)
    bins = float(value.rescale(bin_size.units).magnitude) / float(bin_size.magnitude)
    rounded = int(round(bins))
    if abs(bins - rounded) > 1e-6 * max(1.0, bins):
        raise ValueError(
            f"{name} ({_text(value)}) must be a whole number of bins of {_text(bin_size)} ({bins:g} bins); "
            f"use e.g. {name}={rounded * float(bin_size.magnitude):g} * quantities.{bin_size.dimensionality.string}."
        )
    return rounded


def _spike_bins(train: Any, start: pq.Quantity, bin_size: pq.Quantity, n_bins: int) -> np.ndarray:
    """Sorted bin index of every spike of ``train`` in ``[0, n_bins)``, as elephant's ``BinnedSpikeTrain`` bins."""
    from elephant.utils import round_binning_errors

    units = bin_size.units  # as bin_spiketrains, which hands elephant the trains in the bin size's units
    if train.units != units:
        train = train.rescale(units)
    times = np.asarray(train.magnitude, dtype=np.float64)
    origin = float(start.rescale(units).magnitude)
    stop = float((start + n_bins * bin_size).rescale(units).magnitude)
    times = times[(times >= origin) & (times <= stop)] - origin
    if times.size == 0:
        return np.zeros(0, dtype=np.int64)
    # elephant multiplies by the inverse bin size; doing the same keeps every floating-point rounding, and so
    # every spike on a bin edge, identical.
    bins = np.asarray(round_binning_errors(times * (1 / float(bin_size.magnitude))), dtype=np.int64)
    return bins[bins < n_bins]


def _window_starts(n_bins: int, window_bins: int, step_bins: int) -> np.ndarray:
    starts = list(range(0, n_bins - window_bins + 1, step_bins))
    if starts[-1] != n_bins - window_bins:  # a last window flush with the end, overlapping more
        starts.append(n_bins - window_bins)
    return np.asarray(starts, dtype=np.int64)


def stitch_cuts(starts: np.ndarray, window_length: int, total_length: int) -> np.ndarray:
    """Where consecutive windows hand over when their outputs are stitched into one recording.

    Window ``k`` covers ``[starts[k], starts[k] + window_length)``; its output is used on
    ``[cuts[k], cuts[k + 1])``, which is the middle of each overlap, as far as possible from either window's
    edge (where an encoder sees only part of an event).

    Parameters
    ----------
    starts : ndarray of int, shape (n_windows,)
        Increasing first positions of the windows.
    window_length, total_length : int
        Length of a window and of the whole recording (both in the same positions: bins, or code positions).

    Returns
    -------
    ndarray of int, shape (n_windows + 1,)
        ``cuts[0] = 0``, ``cuts[-1] = total_length``.

    Examples
    --------
    >>> stitch_cuts(np.array([0, 80, 160]), 100, 260).tolist()
    [0, 90, 170, 260]
    """
    starts = np.asarray(starts, dtype=np.int64)
    middles = (starts[1:] + starts[:-1] + window_length) // 2
    return np.concatenate([[0], middles, [total_length]]).astype(np.int64)


class RecordingWindows:
    """A long single-trial recording as overlapping windows of spike counts, binned when asked for.

    Indexing gives counts as a float tensor of shape ``(n_windows_selected, n_channels, window_bins)``, so the
    object stands in for a count array in ``SpikeDictionary.fit`` / ``transform`` / ``predict_rate`` /
    ``score``, which then stitch the windows back into the whole recording.

    Parameters
    ----------
    spiketrains : list of neo.SpikeTrain, neo.Segment, or neo.Block with one segment
        One spike train per unit (channel), all from one recording.
    bin_size : quantities.Quantity
        Width of a bin, e.g. ``1 * pq.ms``.
    window : quantities.Quantity
        Length of a window (a whole number of bins), e.g. ``10 * pq.s``.
    overlap : quantities.Quantity
        Overlap of consecutive windows; at least a few template lengths, so that the stitched outputs never
        use the edge of a window (see :func:`stitch_cuts`).
    t_start, t_stop : quantities.Quantity, optional
        Part of the recording to use (default: the spike trains' common interval). A last partial bin is
        dropped; the last window is placed flush with the end.
    unit_annotation : str
        Spike-train annotation that names the unit.

    Attributes
    ----------
    n_bins : int
        Bins in the whole recording.
    window_bins, overlap_bins : int
    starts : ndarray of int, shape (n_windows,)
        First bin of every window.
    channel_names : list of str
    n_spikes : ndarray of int, shape (n_channels,)
        Spikes binned per channel.
    bin_size, t_start : quantities.Quantity
    n_trials : None
        A recording is one trial; there is no binomial ``n_trials`` (use the Poisson family).

    Examples
    --------
    >>> import neo, quantities as pq
    >>> trains = [neo.SpikeTrain([0.5, 1.2, 7.9] * pq.s, t_stop=10 * pq.s)]
    >>> windows = RecordingWindows(trains, bin_size=1 * pq.s, window=4 * pq.s, overlap=1 * pq.s)
    >>> windows
    RecordingWindows(n_windows=3, n_channels=1, window_bins=4, overlap_bins=1, n_bins=10, bin_size=1.0 s)
    >>> windows.starts.tolist()
    [0, 3, 6]
    >>> windows.counts([2])
    array([[[0, 1, 0, 0]]])
    """

    n_trials = None

    def __init__(
        self,
        spiketrains: Any,
        bin_size: pq.Quantity,
        window: pq.Quantity,
        overlap: pq.Quantity,
        *,
        t_start: pq.Quantity | None = None,
        t_stop: pq.Quantity | None = None,
        unit_annotation: str = "unit",
    ) -> None:
        trains, names, _ = _normalise(spiketrains, unit_annotation)
        if len(trains) != 1:
            raise ValueError(
                f"RecordingWindows takes one recording (one trial), got {len(trains)} trials. For repeated trials "
                "use spikedict.io.bin_spiketrains; for one long segment pass block.segments[0]."
            )
        self._setup(trains[0], names, bin_size, window, overlap, t_start, t_stop)

    def _setup(
        self,
        trains: Sequence[Any],
        names: list[str],
        bin_size: pq.Quantity,
        window: pq.Quantity,
        overlap: pq.Quantity,
        t_start: pq.Quantity | None,
        t_stop: pq.Quantity | None,
    ) -> None:
        """Resolve the interval and the windows, then bin the spikes of each train (loading lazy ones one by one)."""
        import neo

        bin_size = _check_time(bin_size, "bin_size", positive=True)
        start, stop = _resolve_window([list(trains)], names, t_start, t_stop, bin_size.units)
        n_bins = int(
            np.floor(float((stop - start).rescale(bin_size.units).magnitude) / float(bin_size.magnitude) + 1e-9)
        )
        window_bins = _bins_of(window, bin_size, "window")
        overlap_bins = (
            0 if float(_check_time(overlap, "overlap").magnitude) == 0 else _bins_of(overlap, bin_size, "overlap")
        )
        if window_bins > n_bins:
            raise ValueError(
                f"window ({window_bins} bins) is longer than the recording ({n_bins} bins of {_text(bin_size)}); "
                "use a shorter window, or bin_spiketrains for a short recording."
            )
        if overlap_bins >= window_bins:
            raise ValueError(
                f"overlap ({overlap_bins} bins) must be shorter than window ({window_bins} bins); a typical "
                "overlap is a few template lengths and a window ten or more times that."
            )
        self.bin_size = bin_size
        self.t_start = start
        self.n_bins = n_bins
        self.window_bins = window_bins
        self.overlap_bins = overlap_bins
        self.starts = _window_starts(n_bins, window_bins, window_bins - overlap_bins)
        self.channel_names = list(names)
        self._spike_bins = []
        for c, train in enumerate(trains):
            loaded = train if isinstance(train, neo.SpikeTrain) else train.load()  # a lazy proxy: load it now
            _check_spikes([[loaded]], [names[c]])
            self._spike_bins.append(_spike_bins(loaded, start, bin_size, n_bins))
        self.n_spikes = np.array([len(b) for b in self._spike_bins], dtype=np.int64)
        self._max_count: int | None = None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        bin_size: pq.Quantity,
        window: pq.Quantity,
        overlap: pq.Quantity,
        *,
        format: str | None = None,
        t_start: pq.Quantity | None = None,
        t_stop: pq.Quantity | None = None,
        unit_annotation: str = "unit",
        allow_pickle: bool = False,
    ) -> RecordingWindows:
        """Windows of a recording file.

        The file's first block must hold one segment (the recording). Where neo's reader loads lazily (the
        raw-IO formats of acquisition systems) each unit's spike times are loaded, binned and released in
        turn; other readers (NIX, MAT, and NWB, whose files with a units table :func:`spikedict.io.read_nwb`
        reads) read the block, which is released after binning. Either way only the spikes' bin indices stay in
        memory (8 bytes per spike) and counts are binned one window at a time. Arguments as for the constructor and
        :func:`spikedict.io.read_recording`.
        """
        from spikedict.io._files import _io_class, _resolve_format, read_recording

        path = Path(path)
        key = _resolve_format(path, format) if path.exists() else None
        io_class = _io_class(key, allow_pickle, path) if key is not None else None
        # NWB goes through read_recording: files with a units table are read by read_nwb, not by neo's reader
        if getattr(io_class, "support_lazy", False) and key != "nwb":
            windows = cls._from_lazy_reader(
                io_class,
                key,
                path,
                bin_size,
                window,
                overlap,
                t_start,
                t_stop,
                unit_annotation,
            )
            if windows is not None:
                return windows
        block = read_recording(path, format, allow_pickle=allow_pickle)
        return cls(block, bin_size, window, overlap, t_start=t_start, t_stop=t_stop, unit_annotation=unit_annotation)

    @classmethod
    def _from_lazy_reader(
        cls,
        io_class: type,
        key: str,
        path: Path,
        bin_size: pq.Quantity,
        window: pq.Quantity,
        overlap: pq.Quantity,
        t_start: pq.Quantity | None,
        t_stop: pq.Quantity | None,
        unit_annotation: str,
    ) -> RecordingWindows | None:
        """Windows from neo's proxy objects, one spike train loaded at a time; None if the reader cannot do it."""
        from spikedict.io._files import _open

        reader = _open(io_class, path, **({"mode": "r"} if key == "nwb" else {}))
        try:
            try:
                block = reader.read_block(lazy=True)
            except Exception:  # some neo readers announce lazy loading but fail at it (NWB in neo 0.14)
                return None
            if len(block.segments) != 1:
                raise ValueError(
                    f"{str(path)!r} holds {len(block.segments)} segments; RecordingWindows takes one recording "
                    "(one segment). Bin trials with spikedict.io.bin_spiketrains instead."
                )
            proxies = list(block.segments[0].spiketrains)
            if not proxies:
                raise ValueError(f"{str(path)!r} holds no spike trains; load a file with sorted spikes.")
            names = [_train_name(p, c, unit_annotation) for c, p in enumerate(proxies)]
            windows = cls.__new__(cls)
            windows._setup(proxies, names, bin_size, window, overlap, t_start, t_stop)
            return windows
        finally:
            close = getattr(reader, "close", None)
            if callable(close):
                close()

    # ------------------------------------------------------------------------------ shape
    @property
    def n_windows(self) -> int:
        return len(self.starts)

    @property
    def n_channels(self) -> int:
        return len(self._spike_bins)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_windows, n_channels, window_bins)``: the shape of the count array the windows stand for."""
        return (self.n_windows, self.n_channels, self.window_bins)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.n_windows

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_windows={self.n_windows}, n_channels={self.n_channels}, "
            f"window_bins={self.window_bins}, overlap_bins={self.overlap_bins}, n_bins={self.n_bins}, "
            f"bin_size={_text(self.bin_size)})"
        )

    def head(self, n_windows: int) -> RecordingWindows:
        """The first ``n_windows`` windows as a recording of their own (to try settings on a stretch, say)."""
        if not 1 <= n_windows <= self.n_windows:
            raise ValueError(f"n_windows must lie in [1, {self.n_windows}], got {n_windows}.")
        stretch = copy.copy(self)
        stretch.starts = self.starts[:n_windows].copy()
        stretch.n_bins = int(stretch.starts[-1] + self.window_bins)
        stretch._spike_bins = [bins[: np.searchsorted(bins, stretch.n_bins)] for bins in self._spike_bins]
        stretch.n_spikes = np.array([len(b) for b in stretch._spike_bins], dtype=np.int64)
        stretch._max_count = None
        return stretch

    # ------------------------------------------------------------------------------ counts
    def _rows(self, index: Any) -> np.ndarray:
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        rows = np.arange(self.n_windows)[index]
        return np.atleast_1d(rows)

    def counts(self, index: Any = slice(None), first_bin: int | None = None, n_bins: int | None = None) -> np.ndarray:
        """Counts of the windows ``index`` (an int, slice, or array of window numbers).

        ``first_bin`` / ``n_bins`` instead select any stretch of the recording (one array, ``index`` ignored).

        Returns
        -------
        ndarray of int64, shape (n_selected, n_channels, window_bins) or (1, n_channels, n_bins)
        """
        if first_bin is not None:
            if n_bins is None or first_bin < 0 or n_bins < 0 or first_bin + n_bins > self.n_bins:
                raise ValueError(f"the stretch [{first_bin}, {first_bin}+{n_bins}) is not inside [0, {self.n_bins}).")
            return self._stretch(np.array([first_bin]), n_bins)
        return self._stretch(self.starts[self._rows(index)], self.window_bins)

    def _stretch(self, firsts: np.ndarray, length: int) -> np.ndarray:
        out = np.zeros((len(firsts), self.n_channels, length), dtype=np.int64)
        for c, bins in enumerate(self._spike_bins):
            lows = np.searchsorted(bins, firsts, side="left")
            highs = np.searchsorted(bins, firsts + length, side="left")
            for w, (low, high) in enumerate(zip(lows, highs)):
                if high > low:
                    out[w, c] = np.bincount(bins[low:high] - firsts[w], minlength=length)
        return out

    def __getitem__(self, index: Any) -> Tensor:
        """Counts of windows ``index`` as a float tensor ``(n_selected, n_channels, window_bins)``."""
        return torch.from_numpy(self.counts(index)).to(torch.get_default_dtype())

    def mean_counts(self) -> np.ndarray:
        """Mean count per bin of each channel over the whole recording, shape (n_channels,)."""
        return self.n_spikes / self.n_bins

    def max(self) -> Tensor:
        """Largest count in any bin (0-d tensor), for the Poisson encoder's step size."""
        if self._max_count is None:
            self._max_count = max(
                (int(np.unique(bins, return_counts=True)[1].max()) for bins in self._spike_bins if len(bins)),
                default=0,
            )
        return torch.tensor(float(self._max_count))

    def numel(self) -> int:
        return self.n_windows * self.n_channels * self.window_bins

    def sample(self, n_windows: int, seed: int = 0) -> np.ndarray:
        """Window numbers of an evenly spread, seeded sample of at most ``n_windows`` windows (sorted)."""
        if n_windows >= self.n_windows:
            return np.arange(self.n_windows)
        generator = np.random.default_rng(seed)
        return np.sort(generator.choice(self.n_windows, size=n_windows, replace=False))
