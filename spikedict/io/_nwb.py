"""NWB files in the layout of the field: spikes in the ``units`` table, trials in the ``trials`` table.

:func:`read_nwb` reads such a file (for example one from DANDI) into a ``neo.Block`` of aligned trials, and
:func:`write_nwb_file` writes a Block in the same layout, which is what ``write_recording(block, "x.nwb")`` does:

- ``units``: one row per unit, its ``spike_times`` (seconds, on the file's clock) over the whole session, and a
  ``unit_name`` column;
- ``trials``: one row per segment, ``start_time`` / ``stop_time`` of the segment on the file's clock, and one
  column per scalar segment annotation (``example``, ``condition``, ...);
- ``acquisition``: one ``TimeSeries`` per analog signal;
- ``scratch/spikedict``: what NWB has no place for (every annotation, each segment's own clock, units and
  groups), as JSON, so that reading the file back gives the Block that was written.

The segments are laid one after the other on the file's clock, a second apart. Tools that know NWB see the
units and trials tables; spikedict reads the file back as the Block that was written.

pynwb is imported inside the functions that need it (the optional ``nwb`` extra).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import quantities as pq

if TYPE_CHECKING:  # pragma: no cover
    import neo

__all__ = ["nwb_layout", "read_nwb", "write_nwb_file"]

FORMAT_NAME = "spikedict-nwb"
FORMAT_VERSION = 1
SCRATCH_NAME = "spikedict"
# Seconds of file clock left between two segments written by write_nwb_file, so that no spike sits in two trials.
SEGMENT_GAP = 1.0
# Spikes this close (seconds) outside a window still belong to it: float rounding of the file's clock.
TIME_TOLERANCE = 1e-9
# Trials-table columns NWB defines itself; segment annotations of these names stay in the JSON only.
RESERVED_TRIAL_COLUMNS = frozenset({"start_time", "stop_time", "tags", "timeseries", "id"})
# Columns that name a unit in the units table, in order of preference.
UNIT_NAME_COLUMNS = ("unit_name", "name")


# ------------------------------------------------------------------------------------------- layout
def nwb_layout(path: str | os.PathLike) -> str:
    """What an NWB file holds, read cheaply with h5py (no pynwb).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        ``"units"``: a ``units`` table of one row per unit (files from the field, and files written by
        :func:`write_nwb_file`), read by :func:`read_nwb`; ``"neo"``: a ``units`` table with ``segment`` and
        ``block`` columns (one row per spike train, written by neo's ``NWBIO``); ``"none"``: no ``units`` table;
        ``"unknown"``: not an HDF5 file h5py can open.
    """
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with pynwb
        return "unknown"
    try:
        with h5py.File(path, "r") as file:
            units = file.get("units")
            if not isinstance(units, h5py.Group):
                return "none"
            if "segment" in units and "block" in units:
                return "neo"
            return "units"
    except Exception:  # h5py raises OSError, ValueError or KeyError for damaged files
        return "unknown"


@contextmanager
def _open_nwb(path: Path) -> Iterator[Any]:
    """The ``NWBFile`` of ``path``, open for reading; closed when the block ends."""
    import pynwb

    io = None
    try:
        with warnings.catch_warnings():
            # Files from the field cache the schema versions they were written with; hdmf says it uses its own.
            warnings.filterwarnings("ignore", message="Ignoring the following cached namespace", category=UserWarning)
            io = pynwb.NWBHDF5IO(str(path), "r")
            nwbfile = io.read()
    except Exception as error:
        if io is not None:
            io.close()
        raise ValueError(
            f"pynwb could not read {str(path)!r}: {type(error).__name__}: {error}. The file may be damaged, "
            "truncated, or not an NWB file; check it with pynwb-validate FILE (it comes with pynwb)."
        ) from error
    try:
        yield nwbfile
    finally:
        io.close()


# ------------------------------------------------------------------------------------------- reading
@dataclass(eq=False)
class _Unit:
    """One row of the units table: id, name, sorted spike times (seconds, file clock), scalar columns."""

    row: int
    id: int
    name: str
    spike_times: np.ndarray
    annotations: dict[str, Any] = field(default_factory=dict)


def read_nwb(
    path: str | os.PathLike,
    *,
    align_to: str | None = None,
    window: Sequence[pq.Quantity] | pq.Quantity | None = None,
    units: Sequence[int | str] | int | str | None = None,
) -> neo.Block:
    """Read the ``units`` and ``trials`` tables of an NWB file into a Block of aligned trials.

    One segment per trial (row of ``trials``) holds one spike train per unit: the spikes of the unit inside the
    trial's window, in seconds relative to the trial's alignment time. One ``neo.Group`` per unit holds its
    spike trains across trials, as in the shipped data sets, so ``bin_spiketrains(block, bin_size,
    group_by="direction")`` pools the trials by a condition column of the trials table.

    Parameters
    ----------
    path : str or path-like
        An NWB file (HDF5) with a ``units`` table.
    align_to : str, optional
        The trials-table column that is time 0 of each trial, e.g. ``"go_cue_time"`` or ``"stimulus_time"``
        (seconds on the file's clock). Default ``"start_time"``. Trials with no value (NaN) in the column are
        left out, with a warning. For a file written by ``write_recording`` (see :func:`write_nwb_file`) with
        neither ``align_to`` nor ``window`` given, the default is each segment's own time 0 and window: the
        Block that was written comes back, with all its annotations.
    window : (quantities.Quantity, quantities.Quantity), optional
        ``(before, after)``: the ``t_start`` and ``t_stop`` of every trial, relative to its alignment time, e.g.
        ``(-0.5 * pq.s, 1.5 * pq.s)``; it must lie inside every trial's ``[start_time, stop_time]``. Default:
        from ``start_time - align`` to ``stop_time - align``; where trials differ in length, the window common
        to all (the latest start, the earliest stop), with a warning that some trials were cut, so that every
        trial has the same ``t_start`` and ``t_stop`` as binning needs. Without a trials table the window is on
        the file's clock.
    units : int, str or sequence of them, optional
        Units to read, by id of the units table (int) or by name (str), in the order given; default all, in the
        table's order. A file written by ``write_recording`` keeps its own order of spike trains.

    Returns
    -------
    neo.Block
        ``block.segments``: one per trial (n_trials), each with ``spiketrains`` of length n_units, in seconds;
        ``t_start`` / ``t_stop`` are the window. Each segment is annotated with every scalar column of the trials
        table (times in seconds on the file's clock, conditions as stored), ``trial`` (the row of the trials
        table; a ``trial`` column takes precedence) and ``align_time`` (the alignment time on the file's clock,
        a quantity in seconds). ``block.groups``: one per unit, named by the ``unit_name`` or ``name`` column,
        else by the unit's id, annotated ``unit`` (the name), ``unit_id`` and the unit's other scalar columns;
        each spike train is annotated ``unit`` and ``unit_id``. ``block.annotations``: ``nwb_identifier``,
        ``align_to`` and ``window`` (a quantity of shape (2,), seconds); ``block.rec_datetime`` is the session's
        start time.

        Without a trials table, one segment holds the whole recording on the file's clock: from 0 (or from the
        first spike, if one comes before 0) to the last spike, or the given ``window``. The last spike then
        sits at ``t_stop``, where binning (half-open bins) leaves it out.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    TypeError
        If ``align_to`` is not a str, ``window`` not two times, or ``units`` not ids or names.
    ValueError
        If the file has no ``units`` table, or one written by neo (read those with :func:`read_recording`);
        if ``align_to`` is not a numeric column of the trials table (the message lists the columns); if the
        window reaches outside a trial or the trials share no window; if ``units`` names units the table
        lacks; or if pynwb cannot read the file.

    Examples
    --------
    >>> import tempfile, pathlib, neo, quantities as pq
    >>> from spikedict.io import write_recording
    >>> block = neo.Block()
    >>> for direction in ("left", "right"):
    ...     segment = neo.Segment(direction=direction)
    ...     segment.spiketrains.append(neo.SpikeTrain([0.1, 0.4] * pq.s, t_stop=0.5 * pq.s))
    ...     block.segments.append(segment)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "session.nwb"
    >>> write_recording(block, path)
    >>> trials = read_nwb(path, align_to="start_time", window=(0 * pq.s, 0.3 * pq.s))
    >>> [segment.annotations["direction"] for segment in trials.segments]
    ['left', 'right']
    >>> trials.segments[1].spiketrains[0].magnitude, trials.segments[1].spiketrains[0].t_stop
    (array([0.1]), array(0.3) * s)
    """
    import neo  # noqa: F401 - fail early with neo's own ImportError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no NWB file at {str(path)!r}: the file does not exist. Check the path.")
    if align_to is not None and not isinstance(align_to, str):
        raise TypeError(
            f"align_to names a column of the trials table (a str such as 'go_cue_time'), got {align_to!r} of type "
            f"{type(align_to).__name__}."
        )
    window_seconds = _check_window(window)
    with _open_nwb(path) as nwbfile:
        table = nwbfile.units
        if table is None:
            raise ValueError(
                f"{str(path)!r} has no units table (nwbfile.units): read_nwb expects sorted spikes in one, as "
                "files from the field (e.g. DANDI) keep them, and this file has none. spikedict.io.read_recording "
                "uses neo's reader for NWB files without a units table (it reads their signals and events); to fit "
                "spikes, spike-sort the recording and add the units to the file (NWBFile.add_unit)."
            )
        if "segment" in table.colnames and "block" in table.colnames:
            raise ValueError(
                f"the units table of {str(path)!r} has 'segment' and 'block' columns: it was written by neo's "
                "NWBIO, one row per spike train rather than per unit. Read it with spikedict.io.read_recording, "
                "which uses neo's reader for such files."
            )
        stored = _stored_metadata(nwbfile, path)
        unit_rows = _select_units(_read_units(table, path), units, path)
        if stored is not None and align_to is None and window_seconds is None:
            return _restore_block(nwbfile, stored, unit_rows, path)
        trials = None if nwbfile.trials is None else _scalar_columns(nwbfile.trials)
        if trials is not None and not len(np.atleast_1d(trials.get("start_time", []))):
            trials = None  # an empty trials table: no trials
        block = _aligned_block(unit_rows, trials, align_to, window_seconds, path)
        block.name = str(nwbfile.session_id or path.stem)
        block.description = nwbfile.session_description
        block.rec_datetime = nwbfile.session_start_time
        block.annotate(nwb_identifier=str(nwbfile.identifier))
        if stored is not None:  # a file written by write_recording, read with an explicit alignment
            block.annotate(**_decode(stored["block"]["annotations"]))
    return block


def _check_window(window: Any) -> tuple[float, float] | None:
    """``(before, after)`` in seconds, checked; None for None."""
    if window is None:
        return None
    fix = "Pass two times, e.g. window=(-0.5 * quantities.s, 1.5 * quantities.s)."
    parts = list(window) if isinstance(window, (tuple, list)) else None
    if isinstance(window, pq.Quantity) and window.shape == (2,):
        parts = [window[0], window[1]]
    if parts is None or len(parts) != 2:
        raise TypeError(
            f"window must be (before, after), two times relative to the alignment time; got {window!r}. {fix}"
        )
    seconds = []
    for name, part in zip(("before", "after"), parts):
        if not isinstance(part, pq.Quantity) or part.size != 1:
            raise TypeError(
                f"window's {name} must be a time with units (a quantities.Quantity), got {part!r} of type "
                f"{type(part).__name__}. {fix}"
            )
        try:
            value = float(part.rescale(pq.s).magnitude)
        except ValueError as error:
            raise ValueError(
                f"window's {name} must be a time (units convertible to seconds), got units "
                f"{part.dimensionality.string!r}. {fix}"
            ) from error
        if not np.isfinite(value):
            raise ValueError(f"window's {name} must be finite, got {value} s. {fix}")
        seconds.append(value)
    if not seconds[1] > seconds[0]:
        raise ValueError(
            f"window must end after it starts, got before = {seconds[0]:g} s and after = {seconds[1]:g} s. {fix}"
        )
    return seconds[0], seconds[1]


def _text(value: Any) -> Any:
    """A column value as a plain Python scalar (bytes decoded)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value


def _scalar_columns(table: Any, exclude: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The one-dimensional, non-ragged, non-reference columns of an hdmf ``DynamicTable``, read into arrays.

    Ragged columns (a ``VectorIndex``), references to other tables, compound and multi-dimensional columns are
    left out. Byte strings are decoded.
    """
    from hdmf.common.table import DynamicTableRegion, VectorData, VectorIndex

    columns: dict[str, np.ndarray] = {}
    for name in table.colnames:
        if name in exclude:
            continue
        column = table[name]
        if not isinstance(column, VectorData) or isinstance(column, (VectorIndex, DynamicTableRegion)):
            continue
        shape = getattr(column.data, "shape", None)
        if shape is None:
            shape = np.shape(column.data)
        if len(shape) != 1:
            continue
        values = np.asarray(column.data[:])
        if values.dtype.names is not None or values.ndim != 1:
            continue
        if values.dtype.kind in "OS":
            decoded = [_text(value) for value in values]
            if not all(isinstance(value, (str, int, float, bool)) for value in decoded):
                continue
            values = np.asarray(decoded, dtype=object)
        columns[name] = values
    return columns


def _read_units(table: Any, path: Path) -> list[_Unit]:
    """Every row of the units table: id, name, sorted spike times and scalar columns."""
    ids = np.asarray(table.id.data[:], dtype=np.int64)
    if "spike_times" not in table.colnames:
        if len(ids) == 0:
            return []
        raise ValueError(
            f"the units table of {str(path)!r} has no spike_times column (its columns: {list(table.colnames)}), "
            "so it holds no spikes to read. read_nwb reads sorted spike times; check that the file holds "
            "spike-sorted units."
        )
    ends = np.asarray(table.spike_times_index.data[:], dtype=np.int64)
    times = np.asarray(table.spike_times.data[:], dtype=np.float64)
    columns = _scalar_columns(table, exclude=("spike_times",))
    name_column = next((name for name in UNIT_NAME_COLUMNS if name in columns), None)
    rows = []
    start = 0
    for row, (unit_id, end) in enumerate(zip(ids, ends)):
        spike_times = np.sort(times[start:end])
        start = int(end)
        name = str(_text(columns[name_column][row])) if name_column is not None else str(int(unit_id))
        annotations = {key: _text(values[row]) for key, values in columns.items() if key not in UNIT_NAME_COLUMNS}
        rows.append(_Unit(row=row, id=int(unit_id), name=name, spike_times=spike_times, annotations=annotations))
    return rows


def _select_units(rows: list[_Unit], units: Any, path: Path) -> list[_Unit]:
    """The rows that ``units`` names (ids or names), in the order given; all rows for None."""
    if units is None:
        return rows
    wanted = [units] if isinstance(units, (int, np.integer, str)) else units
    if not isinstance(wanted, Sequence) or not all(isinstance(u, (int, np.integer, str)) for u in wanted):
        raise TypeError(f"units selects units by id (int) or name (str): one of them or a list of them, got {units!r}.")
    by_id = {unit.id: unit for unit in rows}
    by_name: dict[str, _Unit] = {}
    for unit in rows:
        by_name.setdefault(unit.name, unit)
    chosen, unknown = [], []
    for key in wanted:
        unit = by_name.get(key) if isinstance(key, str) else by_id.get(int(key))
        if unit is None:
            unknown.append(key)
        elif unit not in chosen:
            chosen.append(unit)
    if unknown:
        shown = [unit.id for unit in rows[:20]]
        more = f" (and {len(rows) - 20} more)" if len(rows) > 20 else ""
        raise ValueError(
            f"units={units!r} names unit(s) {unknown} that the units table of {str(path)!r} does not have; its "
            f"ids are {shown}{more}. Pass ids of the units table (or names from its unit_name/name column)."
        )
    if not chosen:
        raise ValueError("units=[] selects no unit; pass at least one unit id, or leave units unset for all units.")
    return chosen


def _aligned_block(
    unit_rows: list[_Unit],
    trials: dict[str, np.ndarray] | None,
    align_to: str | None,
    window: tuple[float, float] | None,
    path: Path,
) -> neo.Block:
    """Segments of the trials (or of the whole recording), aligned and windowed; one group per unit."""
    import neo

    if trials is None:
        if align_to not in (None, "start_time"):
            raise ValueError(
                f"align_to={align_to!r} names a column of the trials table, but {str(path)!r} has no trials table "
                "(nwbfile.trials). Leave align_to unset to read the whole recording as one segment, and pass "
                "window=(start, stop) on the file's clock to read a part of it."
            )
        column = "start_time"
        align = np.zeros(1)
        kept = np.ones(1, dtype=bool)
        labels: list[dict[str, Any]] = [{"trial": 0}]
        before, after = window if window is not None else _recording_window(unit_rows, path)
    else:
        column = align_to or "start_time"
        align, kept = _alignment(trials, column, path)
        before, after = _trial_window(trials, align, kept, column, window, path)
        labels = [
            {"trial": row} | {key: _text(values[row]) for key, values in trials.items()} for row in range(len(align))
        ]
    block = neo.Block(file_origin=str(path))
    block.annotate(align_to=column, window=np.array([before, after]) * pq.s)
    groups = []
    for unit in unit_rows:
        group = neo.Group(name=unit.name)
        group.annotate(**unit.annotations)
        group.annotate(unit=unit.name, unit_id=unit.id)
        groups.append(group)
    t_start, t_stop = before * pq.s, after * pq.s
    members: list[list[neo.SpikeTrain]] = [[] for _ in unit_rows]
    for row in np.flatnonzero(kept):
        time = float(align[row])
        segment = neo.Segment(name=f"trial {row}")
        segment.annotate(**labels[row])
        segment.annotate(align_time=time * pq.s)
        for u, unit in enumerate(unit_rows):
            spikes = _spikes_in(unit.spike_times, time, before, after)
            train = neo.SpikeTrain(spikes, units=pq.s, t_start=t_start, t_stop=t_stop, name=unit.name)
            train.annotate(unit=unit.name, unit_id=unit.id)
            segment.spiketrains.append(train)
            members[u].append(train)
        block.segments.append(segment)
    for group, trains in zip(groups, members):
        _fill_group(group, trains)
    block.groups.extend(groups)
    block.check_relationships()
    return block


def _fill_group(group: neo.Group, trains: list[neo.SpikeTrain]) -> None:
    """Put ``trains`` (distinct, none in ``group`` yet) into ``group`` at once.

    ``Group.add`` checks each train against every train already in the group, which takes quadratic time for
    a unit with thousands of trials.
    """
    from neo.core.spiketrainlist import SpikeTrainList

    group.spiketrains = SpikeTrainList(items=trains)


def _spikes_in(spike_times: np.ndarray, zero: float, low: float, high: float) -> np.ndarray:
    """Spike times (seconds) minus ``zero``, those in ``[low, high]``; ``spike_times`` sorted."""
    first = np.searchsorted(spike_times, zero + low - 1e-6, side="left")
    last = np.searchsorted(spike_times, zero + high + 1e-6, side="right")
    relative = spike_times[first:last] - zero
    return relative[(relative >= low) & (relative <= high)]


def _recording_window(unit_rows: list[_Unit], path: Path) -> tuple[float, float]:
    """From 0 (or the first spike, if earlier) to the last spike, in seconds on the file's clock."""
    spikes = [unit.spike_times for unit in unit_rows if unit.spike_times.size]
    if not spikes:
        raise ValueError(
            f"{str(path)!r} has no trials table and its units hold no spikes, so there is no recording to read; "
            "pass window=(start, stop) on the file's clock to read empty spike trains."
        )
    first = min(float(times[0]) for times in spikes)
    last = max(float(times[-1]) for times in spikes)
    before = min(0.0, first)
    if not last > before:
        raise ValueError(
            f"the spikes of {str(path)!r} all lie at {last:g} s, so from {before:g} s to the last spike spans no "
            "time; pass window=(start, stop) on the file's clock."
        )
    return before, last


def _alignment(trials: dict[str, np.ndarray], column: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The alignment time of each trial (seconds) and which trials have one; warns of those without."""
    available = list(trials)
    if column not in trials:
        raise ValueError(
            f"align_to={column!r} is not a column of the trials table of {str(path)!r}; its columns are "
            f"{available}. Pass one of the time columns, e.g. align_to='start_time'."
        )
    try:
        align = np.asarray(trials[column], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"align_to={column!r} names a trials column of {trials[column].dtype} values, not times; pass a "
            f"column of times in seconds (of {available})."
        ) from error
    kept = np.isfinite(align)
    if not kept.any():
        raise ValueError(
            f"no trial of {str(path)!r} has a value in the column {column!r} (all NaN); align to another column "
            f"of {available}."
        )
    if not kept.all():
        skipped = np.flatnonzero(~kept)
        warnings.warn(
            f"{skipped.size} of {kept.size} trial(s) have no {column} (NaN) and are left out: rows "
            f"{skipped[:10].tolist()}{' ...' if skipped.size > 10 else ''}.",
            UserWarning,
            stacklevel=4,
        )
    return align, kept


def _trial_window(
    trials: dict[str, np.ndarray],
    align: np.ndarray,
    kept: np.ndarray,
    column: str,
    window: tuple[float, float] | None,
    path: Path,
) -> tuple[float, float]:
    """The window (seconds, relative to the alignment) shared by the kept trials."""
    starts = np.asarray(trials["start_time"], dtype=np.float64)[kept] - align[kept]
    stops = np.asarray(trials["stop_time"], dtype=np.float64)[kept] - align[kept]
    rows = np.flatnonzero(kept)
    common = (float(starts.max()), float(stops.min()))
    if window is None:
        if not common[1] > common[0]:
            raise ValueError(
                f"the trials of {str(path)!r} share no window around {column}: relative to it they start up to "
                f"{common[0]:g} s and stop from {common[1]:g} s on. Pass window=(before, after) inside the trials "
                "you need, or align to another column."
            )
        cut = not (np.allclose(starts, common[0], rtol=0, atol=TIME_TOLERANCE)
                   and np.allclose(stops, common[1], rtol=0, atol=TIME_TOLERANCE))  # fmt: skip
        if cut:
            warnings.warn(
                f"the trials differ in length around {column} (from {starts.min():g} to {common[0]:g} s before, "
                f"{common[1]:g} to {stops.max():g} s after), so every trial is cut to the window common to all, "
                f"[{common[0]:g}, {common[1]:g}] s, which binning needs; pass window=(before, after) to choose it.",
                UserWarning,
                stacklevel=4,
            )
        return common
    before, after = window
    outside = (starts > before + TIME_TOLERANCE) | (stops < after - TIME_TOLERANCE)
    if outside.any():
        bad = np.flatnonzero(outside)
        n = int(bad[0])
        raise ValueError(
            f"window=({before:g} s, {after:g} s) around {column} reaches outside {bad.size} trial(s) of "
            f"{str(path)!r}, e.g. trial {int(rows[n])}, which spans [{starts[n]:g}, {stops[n]:g}] s around its "
            f"{column}. Use a window inside every trial: the common one is [{common[0]:g}, {common[1]:g}] s"
            + (" (empty: the trials share no window; align to another column)." if common[1] <= common[0] else ".")
        )
    return before, after


# --------------------------------------------------------------------------------- the JSON metadata
def _encode(value: Any, where: str) -> Any:
    """``value`` as JSON-ready data that :func:`_decode` turns back into it (quantities, arrays, datetimes...)."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, pq.Quantity):
        return {"__quantity__": _encode(np.asarray(value.magnitude), where), "units": value.dimensionality.string}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return {"__array__": value.ravel().tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
        if value.dtype.kind in "USO":
            items = [_encode(_text(item) if value.dtype.kind == "S" else item, where) for item in value.ravel()]
            return {"__array__": items, "dtype": value.dtype.str, "shape": list(value.shape)}
    elif isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"__scalar__": value.item(), "dtype": value.dtype.str}
    elif isinstance(value, datetime.datetime):
        return {"__datetime__": value.isoformat()}
    elif isinstance(value, datetime.date):
        return {"__date__": value.isoformat()}
    elif isinstance(value, list):
        return [_encode(item, where) for item in value]
    elif isinstance(value, tuple):
        return {"__tuple__": [_encode(item, where) for item in value]}
    elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"__dict__": {key: _encode(item, f"{key!r} in {where}") for key, item in value.items()}}
    raise TypeError(
        f"the annotation {where} holds {type(value).__name__} {value!r:.80}, which an NWB file cannot store; NWB "
        "files written by spikedict keep str, numbers, bool, None, datetimes, numpy arrays, quantities, and "
        "lists, tuples and dicts of them. Convert it (e.g. to a str), or write a .mat or .nix file."
    )


def _encode_annotations(annotations: Any, where: str) -> dict[str, Any]:
    """The annotations (a dict) of the object ``where`` describes (e.g. "of segment 2"), encoded."""
    return {"__dict__": {key: _encode(value, f"{key!r} {where}") for key, value in dict(annotations).items()}}


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "__dict__" in value:
        return {key: _decode(item) for key, item in value["__dict__"].items()}
    if "__quantity__" in value:
        return pq.Quantity(_decode(value["__quantity__"]), value["units"])
    if "__array__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind in "biuf":
            return np.asarray(value["__array__"], dtype=dtype).reshape(value["shape"])
        items = [_decode(item) for item in value["__array__"]]
        if dtype.kind == "O":
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array.reshape(value["shape"])
        if dtype.kind == "S":
            items = [item.encode("utf-8") for item in items]
        return np.asarray(items, dtype=dtype).reshape(value["shape"])
    if "__scalar__" in value:
        return np.dtype(value["dtype"]).type(value["__scalar__"])
    if "__datetime__" in value:
        return datetime.datetime.fromisoformat(value["__datetime__"])
    if "__date__" in value:
        return datetime.date.fromisoformat(value["__date__"])
    if "__tuple__" in value:
        return tuple(_decode(item) for item in value["__tuple__"])
    return value


def _stored_metadata(nwbfile: Any, path: Path) -> dict[str, Any] | None:
    """The JSON that :func:`write_nwb_file` keeps in ``scratch``, or None for other files."""
    scratch = getattr(nwbfile, "scratch", None) or {}
    if SCRATCH_NAME not in scratch:
        return None
    data = scratch[SCRATCH_NAME].data
    if hasattr(data, "shape"):  # an h5py dataset
        data = data[()]
    text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    try:
        stored = json.loads(text)
    except ValueError:
        return None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT_NAME:
        return None
    if int(stored.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer spikedict (NWB layout version {stored.get('version')}; this one "
            f"reads up to {FORMAT_VERSION}). Upgrade spikedict, or pass align_to= to read its units and trials "
            "tables as a file from the field."
        )
    return stored


def _restore_block(nwbfile: Any, stored: dict[str, Any], unit_rows: list[_Unit], path: Path) -> neo.Block:
    """The Block that :func:`write_nwb_file` wrote, from the units table, the acquisition and the JSON."""
    import neo

    meta = stored["block"]
    block = neo.Block(
        name=meta.get("name"),
        description=meta.get("description"),
        file_origin=meta.get("file_origin"),
        rec_datetime=_decode(meta.get("rec_datetime")),
    )
    block.annotate(**_decode(meta["annotations"]))
    by_row = {unit.row: unit for unit in unit_rows}
    placed: dict[tuple[str, int, int], Any] = {}
    for n, entry in enumerate(stored["segments"]):
        segment = neo.Segment(name=entry.get("name"), description=entry.get("description"))
        segment.annotate(**_decode(entry["annotations"]))
        offset = float(entry["offset"])
        for i, train_entry in enumerate(entry["spiketrains"]):
            unit = by_row.get(int(train_entry["unit"]))
            if unit is None:  # not selected with units=
                continue
            train = _restore_train(train_entry, unit, offset)
            segment.spiketrains.append(train)
            placed[("spiketrains", n, i)] = train
        for i, signal_entry in enumerate(entry["analogsignals"]):
            data = np.asarray(nwbfile.acquisition[signal_entry["timeseries"]].data[:])
            signal = neo.AnalogSignal(
                data,
                units=signal_entry["units"],
                t_start=_decode(signal_entry["t_start"]),
                sampling_period=_decode(signal_entry["sampling_period"]),
                name=signal_entry.get("name"),
                description=signal_entry.get("description"),
                array_annotations=_decode(signal_entry["array_annotations"]),
            )
            signal.annotate(**_decode(signal_entry["annotations"]))
            segment.analogsignals.append(signal)
            placed[("analogsignals", n, i)] = signal
        for kind, objects in (
            ("irregularlysampledsignals", segment.irregularlysampledsignals),
            ("events", segment.events),
            ("epochs", segment.epochs),
        ):
            for i, object_entry in enumerate(entry[kind]):
                item = _restore_object(kind, object_entry)
                objects.append(item)
                placed[(kind, n, i)] = item
        block.segments.append(segment)
    for group_entry in stored["groups"]:
        members = [placed.get((kind, int(n), int(i))) for kind, n, i in group_entry["members"]]
        members = [member for member in members if member is not None]
        if group_entry["members"] and not members:  # every member left out with units=
            continue
        group = neo.Group(name=group_entry.get("name"), description=group_entry.get("description"))
        group.annotate(**_decode(group_entry["annotations"]))
        _fill_group(group, [member for member in members if isinstance(member, neo.SpikeTrain)])
        group.add(*[member for member in members if not isinstance(member, neo.SpikeTrain)])
        block.groups.append(group)
    block.check_relationships()
    return block


def _restore_train(entry: dict[str, Any], unit: _Unit, offset: float) -> neo.SpikeTrain:
    """One spike train written by :func:`write_nwb_file`: the unit's spikes in its window, on its own clock."""
    import neo

    units = _unit(entry["units"])
    t_start, t_stop = float(entry["t_start"]), float(entry["t_stop"])
    seconds = _seconds_per(entry["units"])
    low, high = t_start * seconds, t_stop * seconds
    tolerance = TIME_TOLERANCE * max(1.0, abs(low), abs(high))
    relative = _spikes_in(unit.spike_times, offset, low - tolerance, high + tolerance)
    times = np.clip(relative / seconds, t_start, t_stop)  # float rounding of the file's clock, not spikes
    train = neo.SpikeTrain(
        times,
        units=units,
        t_start=t_start * units,
        t_stop=t_stop * units,
        name=entry.get("name"),
        description=entry.get("description"),
        array_annotations=_decode(entry["array_annotations"]),
    )
    train.annotate(**_decode(entry["annotations"]))
    return train


def _restore_object(kind: str, entry: dict[str, Any]) -> Any:
    """An irregularly sampled signal, event or epoch kept whole in the JSON."""
    import neo

    arguments = _decode(entry["arguments"])
    annotations = _decode(entry["annotations"])
    item = {
        "irregularlysampledsignals": neo.IrregularlySampledSignal,
        "events": neo.Event,
        "epochs": neo.Epoch,
    }[kind](**arguments)
    item.annotate(**annotations)
    return item


# ------------------------------------------------------------------------------------------- writing
def _unit_keys(block: neo.Block) -> tuple[list[list[int]], list[str]]:
    """The units-table row of every spike train (``rows[segment][train]``) and each row's unit name.

    A spike train's unit is its group (``block.groups``), else its ``unit`` annotation, else its name, else its
    position in the segment. Two spike trains of one segment never share a row: the second gets a row of its own.
    """
    group_of: dict[int, int] = {}
    for g, group in enumerate(block.groups):
        for train in group.spiketrains:
            group_of.setdefault(id(train), g)
    keys: dict[tuple[Any, ...], int] = {}
    names: list[str] = []
    rows: list[list[int]] = []
    for segment in block.segments:
        taken: dict[tuple[Any, ...], int] = {}
        segment_rows = []
        for i, train in enumerate(segment.spiketrains):
            if id(train) in group_of:
                g = group_of[id(train)]
                key: tuple[Any, ...] = ("group", g)
                name = str(block.groups[g].name) if block.groups[g].name else f"unit {g}"
            elif "unit" in train.annotations:
                key, name = ("unit", str(train.annotations["unit"])), str(train.annotations["unit"])
            elif train.name:
                key, name = ("name", str(train.name)), str(train.name)
            else:
                key, name = ("position", i), f"channel {i}"
            repeat = taken.get(key, 0)
            taken[key] = repeat + 1
            key = (*key, repeat)
            if key not in keys:
                keys[key] = len(names)
                names.append(name if repeat == 0 else f"{name} ({repeat + 1})")
            segment_rows.append(keys[key])
        rows.append(segment_rows)
    return rows, names


# Parsed units and their length in seconds, by the units' text: quantities parses the text on every rescale.
_UNITS: dict[str, pq.Quantity] = {}
_SECONDS_PER_UNIT: dict[str, float] = {}


def _unit(units: str) -> pq.Quantity:
    """One of ``units`` (cached: parsing the units is slow for many spike trains)."""
    if units not in _UNITS:
        _UNITS[units] = pq.Quantity(1.0, units).units
    return _UNITS[units]


def _seconds_per(units: str) -> float:
    """Seconds in one of ``units`` (cached: ``rescale`` parses the units each time, slow for many spike trains)."""
    if units not in _SECONDS_PER_UNIT:
        _SECONDS_PER_UNIT[units] = float(_unit(units).rescale(pq.s).magnitude)
    return _SECONDS_PER_UNIT[units]


def _seconds(quantity: pq.Quantity) -> float:
    """A scalar time in seconds."""
    return float(quantity.magnitude) * _seconds_per(quantity.dimensionality.string)


def _in_units(quantity: pq.Quantity, units: str) -> float:
    """A scalar time in ``units`` (unchanged where it is in them already)."""
    if quantity.dimensionality.string == units:
        return float(quantity.magnitude)
    return float(quantity.rescale(units).magnitude)


def _segment_span(segment: neo.Segment) -> tuple[float, float]:
    """The earliest start and latest stop (seconds) of the spike trains and analog signals of ``segment``."""
    items = (*segment.spiketrains, *segment.analogsignals)
    starts = [_seconds(item.t_start) for item in items]
    stops = [_seconds(item.t_stop) for item in items]
    if not starts:
        return 0.0, 0.0
    return min(starts), max(stops)


def _trial_column(key: str, values: list[Any]) -> tuple[np.ndarray, str] | None:
    """One segment annotation as a trials-table column (values, description), or None if it has no column.

    Numbers become int64 (all present) or float64 (NaN where missing), bools stay bools (all present), scalar
    quantities of one unit become their magnitudes in that unit, anything else becomes text ("" where missing).
    """
    present = [value for value in values if value is not None]
    if not present:
        return None
    description = f"the segments' annotation {key!r} (written by spikedict)"
    if all(isinstance(value, pq.Quantity) for value in present):
        units = {value.dimensionality.string for value in present}
        if len(units) != 1:
            return None
        (unit,) = units
        column = [np.nan if value is None else float(value.magnitude.item()) for value in values]
        return np.asarray(column, dtype=np.float64), f"{description}, in {unit}"
    if any(isinstance(value, pq.Quantity) for value in present):
        return None
    plain = [value.item() if isinstance(value, np.generic) else value for value in values]
    present = [value for value in plain if value is not None]
    complete = len(present) == len(plain)
    if all(isinstance(value, bool) for value in present) and complete:
        return np.asarray(plain, dtype=bool), description
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present)
    if numbers and complete and all(isinstance(value, int) for value in present):
        if all(abs(value) < 2**63 for value in present):
            return np.asarray(plain, dtype=np.int64), description
    if numbers:
        return np.asarray([np.nan if value is None else value for value in plain], dtype=np.float64), description
    text = ["" if value is None else value.isoformat() if isinstance(value, datetime.date) else str(value)
            for value in plain]  # fmt: skip
    return np.asarray(text, dtype=object), description


def _session_start(block: neo.Block) -> datetime.datetime:
    """The session start time NWB requires: the ``session_start_time`` annotation, ``rec_datetime`` or now."""
    candidates = (block.annotations.get("session_start_time"), block.rec_datetime)
    start = next((value for value in candidates if isinstance(value, datetime.datetime)), None)
    if start is None:
        start = datetime.datetime.now(datetime.timezone.utc)
    if start.tzinfo is None:
        start = start.astimezone()  # a naive time is local time; pynwb warns unless the zone is given
    return start


def write_nwb_file(block: neo.Block, path: str | os.PathLike) -> None:
    """Write ``block`` to ``path`` (created or replaced, not atomically) in the layout :func:`read_nwb` reads.

    ``write_recording(block, "x.nwb")`` calls this on a temporary file, which makes the write atomic.
    Segment ``n`` spans ``[start_time, stop_time]`` of trial ``n`` on the file's clock; its spike trains go to
    the units table (one row per unit: a group of ``block.groups``, else the spike trains' ``unit`` annotation,
    else their name, else their position), its analog signals to ``acquisition``, and its irregularly sampled
    signals, events and epochs, with every annotation, to the JSON in ``scratch/spikedict``. Spike waveforms
    are not written. NWB's ``session_start_time``, ``identifier`` and ``session_description`` come from the
    annotations of those names, else from ``rec_datetime`` (else now), a new UUID, and the Block's description
    or name.

    Parameters
    ----------
    block : neo.Block
    path : str or path-like

    Raises
    ------
    TypeError
        If an annotation holds a value NWB cannot store (the message names it).
    ValueError
        If a segment holds image sequences, which this layout does not keep.
    """
    import pynwb

    for n, segment in enumerate(block.segments):
        if segment.imagesequences:
            raise ValueError(
                f"segment {n} holds {len(segment.imagesequences)} image sequence(s), which NWB files written by "
                "spikedict do not keep. Write a .nix file, or remove them (segment.imagesequences.clear())."
            )
    nwbfile = pynwb.NWBFile(
        session_description=str(
            block.annotations.get("session_description") or block.description or block.name or "written by spikedict"
        ),
        identifier=str(block.annotations.get("identifier") or uuid.uuid4()),
        session_start_time=_session_start(block),
    )
    unit_rows, unit_names = _unit_keys(block)
    spikes: list[list[np.ndarray]] = [[] for _ in unit_names]
    segments_meta = []
    cursor: float | None = None
    starts, stops = [], []
    for n, segment in enumerate(block.segments):
        first, last = _segment_span(segment)
        cursor = max(first, 0.0) if cursor is None else cursor
        offset = cursor - first
        starts.append(offset + first)
        stops.append(offset + last)
        cursor = offset + last + SEGMENT_GAP
        segments_meta.append(_write_segment(nwbfile, segment, n, offset, unit_rows[n], spikes))
    _add_trials(nwbfile, block, starts, stops)
    nwbfile.units = _units_table(unit_names, spikes)
    stored = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "block": {
            "name": block.name,
            "description": block.description,
            "file_origin": block.file_origin,
            "rec_datetime": _encode(block.rec_datetime, "rec_datetime of the block"),
            "annotations": _encode_annotations(block.annotations, "of the block"),
        },
        "segments": segments_meta,
        "groups": _group_entries(block),
    }
    nwbfile.add_scratch(
        json.dumps(stored),
        name=SCRATCH_NAME,
        description="the neo Block's annotations, segments and groups, as JSON (read by spikedict.io.read_nwb)",
    )
    with warnings.catch_warnings():
        # write_recording(block, "x.h5", format="nwb") names the file; pynwb recommends the .nwb extension.
        warnings.filterwarnings(
            "ignore", message="The file path provided: .* does not end in '.nwb'", category=UserWarning
        )
        with pynwb.NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)


def _units_table(names: list[str], spikes: list[list[np.ndarray]]) -> Any:
    """The units table: one row per unit, its spike times (sorted, seconds on the file's clock) and ``unit_name``.

    Built from whole columns: ``NWBFile.add_unit`` converts every spike time on its own when the file is written.
    """
    from hdmf.common import VectorData, VectorIndex
    from pynwb.misc import Units

    if not names:
        return Units(name="units", description="no spike trains")
    times = [np.sort(np.concatenate(row)) if row else np.zeros(0) for row in spikes]
    spike_times = VectorData(
        name="spike_times", description="the spike times for each unit in seconds", data=np.concatenate(times)
    )
    index = VectorIndex(name="spike_times_index", data=np.cumsum([len(row) for row in times]), target=spike_times)
    unit_name = VectorData(
        name="unit_name",
        description="the unit's name (its neo Group, or its spike trains' unit or name)",
        data=np.asarray(names, dtype=object),
    )
    return Units(
        name="units",
        description="the units of a neo Block, over all its segments",
        id=list(range(len(names))),
        columns=[spike_times, index, unit_name],
        colnames=("spike_times", "unit_name"),
    )


def _write_segment(
    nwbfile: Any, segment: neo.Segment, n: int, offset: float, rows: list[int], spikes: list[list[np.ndarray]]
) -> dict[str, Any]:
    """Put segment ``n`` on the file's clock at ``offset`` (seconds) and return its JSON entry.

    Its spike times, shifted by ``offset``, are appended to ``spikes[row]`` (``rows[i]`` is the units-table row of
    spike train ``i``); its analog signals become ``TimeSeries`` in ``acquisition``.
    """
    import pynwb

    where = f"of segment {n}"
    trains_meta = []
    for i, train in enumerate(segment.spiketrains):
        units = train.units.dimensionality.string
        times = np.asarray(train.magnitude, dtype=np.float64).ravel()
        spikes[rows[i]].append((times if units == "s" else times * _seconds_per(units)) + offset)
        trains_meta.append(
            {
                "unit": rows[i],
                "name": train.name,
                "description": train.description,
                "units": units,
                "t_start": _in_units(train.t_start, units),
                "t_stop": _in_units(train.t_stop, units),
                "annotations": _encode_annotations(train.annotations, f"of spike train {i} {where}"),
                "array_annotations": _encode_annotations(train.array_annotations, f"of spike train {i} {where}"),
            }
        )
    signals_meta = []
    for i, signal in enumerate(segment.analogsignals):
        name = f"segment {n} analogsignal {i}"
        nwbfile.add_acquisition(
            pynwb.TimeSeries(
                name=name,
                data=np.asarray(signal.magnitude),
                unit=signal.units.dimensionality.string,
                rate=float(signal.sampling_rate.rescale(pq.Hz).magnitude),
                starting_time=offset + float(signal.t_start.rescale(pq.s).magnitude),
                description=str(signal.name or signal.description or "analog signal written by spikedict"),
            )
        )
        signals_meta.append(
            {
                "timeseries": name,
                "name": signal.name,
                "description": signal.description,
                "units": signal.units.dimensionality.string,
                "t_start": _encode(signal.t_start, f"of analog signal {i} {where}"),
                "sampling_period": _encode(signal.sampling_period, f"of analog signal {i} {where}"),
                "annotations": _encode_annotations(signal.annotations, f"of analog signal {i} {where}"),
                "array_annotations": _encode_annotations(signal.array_annotations, f"of analog signal {i} {where}"),
            }
        )
    others = {kind: _object_entries(segment, kind, where) for kind in ("irregularlysampledsignals", "events", "epochs")}
    return {
        "name": segment.name,
        "description": segment.description,
        "offset": offset,
        "annotations": _encode_annotations(segment.annotations, where),
        "spiketrains": trains_meta,
        "analogsignals": signals_meta,
        **others,
    }


def _object_entries(segment: neo.Segment, kind: str, where: str) -> list[dict[str, Any]]:
    """The irregularly sampled signals, events or epochs of ``segment``, whole, as JSON entries."""
    entries = []
    for i, item in enumerate(getattr(segment, kind)):
        arguments: dict[str, Any] = {"name": item.name, "description": item.description}
        if kind == "irregularlysampledsignals":
            arguments |= {"times": item.times, "signal": pq.Quantity(item.magnitude, item.units)}
        elif kind == "events":
            arguments |= {"times": item.times, "labels": np.asarray(item.labels)}
        else:
            arguments |= {"times": item.times, "durations": item.durations, "labels": np.asarray(item.labels)}
        arguments["array_annotations"] = dict(item.array_annotations)
        entries.append(
            {
                "arguments": _encode(arguments, f"of {kind} {i} {where}"),
                "annotations": _encode_annotations(item.annotations, f"of {kind} {i} {where}"),
            }
        )
    return entries


def _group_entries(block: neo.Block) -> list[dict[str, Any]]:
    """The groups of ``block`` as JSON entries: their members by (kind, segment, position in the segment)."""
    position: dict[int, tuple[str, int, int]] = {}
    kinds = ("spiketrains", "analogsignals", "irregularlysampledsignals", "events", "epochs")
    for n, segment in enumerate(block.segments):
        for kind in kinds:
            for i, item in enumerate(getattr(segment, kind)):
                position.setdefault(id(item), (kind, n, i))
    entries = []
    for g, group in enumerate(block.groups):
        members = [position[id(item)] for kind in kinds for item in getattr(group, kind) if id(item) in position]
        entries.append(
            {
                "name": group.name,
                "description": group.description,
                "annotations": _encode_annotations(group.annotations, f"of group {g}"),
                "members": [list(member) for member in members],
            }
        )
    return entries


def _add_trials(nwbfile: Any, block: neo.Block, starts: list[float], stops: list[float]) -> None:
    """One trials row per segment, with a column per scalar segment annotation that NWB can hold."""
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    if not block.segments:
        return

    def scalar(value: Any) -> bool:
        if isinstance(value, pq.Quantity):
            return value.size == 1
        return isinstance(value, (str, int, float, bool, np.generic, datetime.date))

    keys: list[str] = []
    for segment in block.segments:
        for key, value in segment.annotations.items():
            if scalar(value) and key not in keys and key not in RESERVED_TRIAL_COLUMNS and "/" not in key:
                keys.append(key)
    columns = [
        VectorData(name="start_time", description="Start time of the segment, in seconds.", data=np.asarray(starts)),
        VectorData(name="stop_time", description="Stop time of the segment, in seconds.", data=np.asarray(stops)),
    ]
    for key in keys:
        values = [segment.annotations.get(key) for segment in block.segments]
        column = _trial_column(key, [value if scalar(value) else None for value in values])
        if column is not None:
            columns.append(VectorData(name=key, description=column[1], data=column[0]))
    # Whole columns at once: add_trial converts every value on its own when the file is written.
    nwbfile.trials = TimeIntervals(name="trials", description="the segments of a neo Block", columns=columns)
