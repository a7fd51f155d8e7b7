"""Property-based tests (hypothesis): bad input at scale, for the data layer and the estimator.

Every property has one contract. A call either works, and then its result obeys the mathematics (counts equal
elephant's binning of the same window, shapes, non-negative integer counts, unit-norm templates, finite
outputs), or it raises a documented error type (ValueError or TypeError; NotFittedError before ``fit``) with a
message. Anything else (IndexError, KeyError, AttributeError, ZeroDivisionError, a RuntimeError from torch, a
numpy warning that pytest's ``filterwarnings = error`` turns into an exception) fails the property. Where the
input is well formed the call must work, and where it is malformed it must raise.

Untrusted files must never run code: pickles whose loading would create a marker file are saved under the names
a user might pass to the loaders, and the marker must not appear.

The examples are derandomized (the same ones on every run) and hypothesis keeps no example database, so the
file is reproducible (hypothesis still caches the constants it reads from the source in ``.hypothesis/``, which
git ignores). The inputs with which the properties found bugs are pinned as ``@example``s.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import neo
import numpy as np
import pytest
import quantities as pq
import torch
from conftest import NIX_INSTALLED
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spikedict import SpikeDictionary
from spikedict.estimator import NotFittedError
from spikedict.io import SpikeCounts, bin_spiketrains, read_recording
from spikedict.settings import Encoder
from spikedict.solvers import Alternating
from spikedict.training import load_checkpoint


def reproducible(max_examples: int, *suppress: HealthCheck) -> settings:
    """The same examples on every run, no deadline (the first call imports elephant), no example database."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(suppress),
    )


@st.composite
def mostly(draw: st.DrawFn, good: st.SearchStrategy, bad: st.SearchStrategy) -> Any:
    """``good`` four times in five, else ``bad``: most examples then get far enough to test the mathematics."""
    return draw(bad if draw(st.integers(0, 4)) == 4 else good)


# Fragments of Python's, numpy's, torch's and elephant's own messages: an error that carries one escaped from inside
# the code instead of being raised for the user (the right type, but no help).
INTERNAL_MESSAGES = (
    "object is not iterable",
    "has no attribute",
    "index out of range",
    "out of bounds",
    "not subscriptable",
    "unsupported operand",
    "zero-size array",
    "could not broadcast",
    "can't convert",
    "cannot convert",
    "invalid literal",
    "The input must have the same units",
)


def check_message(error: BaseException, *, own: bool = True) -> None:
    """The error has a message; with ``own``, one written by spikedict rather than leaked from its dependencies."""
    message = str(error)
    assert message.strip(), f"{type(error).__name__} raised without a message"
    if own:
        leaked = [fragment for fragment in INTERNAL_MESSAGES if fragment in message]
        assert not leaked, f"an internal error reached the user: {type(error).__name__}: {message}"


# ============================================================================================ data layer
# name -> (unit, milliseconds per unit)
TIME_UNITS: dict[str, tuple[pq.Quantity, float]] = {"s": (pq.s, 1e3), "ms": (pq.ms, 1.0), "us": (pq.us, 1e-3)}
unit_names = st.sampled_from(sorted(TIME_UNITS))


def as_time(value_ms: Any, unit: str) -> pq.Quantity:
    """``value_ms`` milliseconds (a number or an array) as a quantity in ``unit``."""
    quantity, ms_per_unit = TIME_UNITS[unit]
    return pq.Quantity(np.asarray(value_ms, dtype=np.float64) / ms_per_unit, quantity)


@dataclass
class Recording:
    """A binning problem: what ``bin_spiketrains`` gets, and what the test knows about it."""

    data: Any
    rows: list[list[neo.SpikeTrain]]  # the same spike trains as trains[trial][channel]
    times_ms: list[list[list[float]]]  # their spike times in milliseconds, as drawn
    conditions: list[str]  # the trials' "condition" annotation (segment and Block inputs)
    bin_size: Any
    kwargs: dict[str, Any]
    window_ms: tuple[float, float]  # the window the trains were drawn for
    applied: list[str] = field(default_factory=list)  # corruptions applied (messy recordings)


@st.composite
def recordings(draw: st.DrawFn) -> Recording:
    """Well-formed input: sorted, finite spikes inside every train's own interval, one window, a time bin size.

    Units differ from train to train (s, ms, us), trains may be empty, spikes sit anywhere including exactly at
    the window's ends and on bin edges, the window may be explicit (a part of the trains' interval) and the data
    come as a train, a list of trains, per-trial lists, segments or a Block with groups.
    """
    n_trials = draw(st.integers(1, 3), label="n_trials")
    n_channels = draw(st.integers(1, 3), label="n_channels")
    start = draw(st.floats(-100, 100), label="t_start (ms)")
    duration = draw(st.floats(0.5, 100), label="duration (ms)")
    stop = start + duration
    explicit = draw(st.booleans(), label="explicit window")
    if explicit:
        w0 = start + duration * draw(st.floats(0, 0.45))
        w1 = start + duration * draw(st.floats(0.55, 1))
    else:
        w0, w1 = start, stop
    bin_ms = (w1 - w0) * draw(st.floats(1 / 300, 1), label="bin / window")
    n_edges = int((w1 - w0) / bin_ms)
    spike = st.one_of(
        st.floats(0, 1).map(lambda u: start + u * duration),
        st.integers(0, n_edges).map(lambda j: min(w0 + j * bin_ms, stop)),
        st.sampled_from([start, stop, w0, w1]),
    )
    rows, times_ms = [], []
    for _ in range(n_trials):
        row, row_times = [], []
        for c in range(n_channels):
            times = sorted(draw(st.lists(spike, max_size=8)))
            unit = draw(unit_names)
            train = neo.SpikeTrain(
                as_time(times, unit), t_start=as_time(start, unit), t_stop=as_time(stop, unit), unit=f"u{c}"
            )
            row.append(train)
            row_times.append(times)
        rows.append(row)
        times_ms.append(row_times)
    conditions = [draw(st.sampled_from(["a", "b"])) for _ in range(n_trials)]

    forms = ["nested", "segments", "block"]
    if n_trials == 1:
        forms += ["channels", "segment"] + (["single"] if n_channels == 1 else [])
    form = draw(st.sampled_from(forms), label="form")
    data: Any
    if form == "single":
        data = rows[0][0]
    elif form == "channels":
        data = list(rows[0])
    elif form == "nested":
        data = [list(row) for row in rows]
    else:
        segments = []
        groups = [neo.Group(name=f"u{c}") for c in range(n_channels)]
        for row, condition in zip(rows, conditions):
            segment = neo.Segment(condition=condition)
            for c, train in enumerate(row):
                segment.spiketrains.append(train)
                groups[c].add(train)
            segments.append(segment)
        if form == "block":
            data = neo.Block()
            data.segments.extend(segments)
            data.groups.extend(groups)
        else:
            data = segments[0] if form == "segment" else segments

    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs["t_start"] = as_time(w0, draw(unit_names))
        kwargs["t_stop"] = as_time(w1, draw(unit_names))
    if draw(st.booleans(), label="pool"):
        kwargs.update(pool_trials=True, clip=True)
        if form in ("segments", "block") and draw(st.booleans()):
            kwargs["group_by"] = "condition"
    bin_size = as_time(bin_ms, draw(unit_names))
    return Recording(data, rows, times_ms, conditions, bin_size, kwargs, (w0, w1))


def by_hand(
    trains_ms: list[list[float]], units: list[str], *, data: Any = None, applied: tuple[str, ...] = (), **kwargs: Any
) -> Recording:
    """One trial written out: channel c has spikes ``trains_ms[c]`` (ms) in ``units[c]``, window [0, 10] ms, 1 ms bins.

    The examples (``@example``) below are the inputs that the properties found bugs with; they run on every run.
    """
    row = [
        neo.SpikeTrain(as_time(times, unit), t_start=as_time(0.0, unit), t_stop=as_time(10.0, unit))
        for times, unit in zip(trains_ms, units)
    ]
    data = row if data is None else data
    return Recording(data, [row], [[list(t) for t in trains_ms]], ["a"], 1 * pq.ms, kwargs, (0.0, 10.0), list(applied))


def _with_t_stop(case: Recording, t_stop: pq.Quantity) -> Recording:
    case.rows[0][0].t_stop = t_stop  # neo does not re-check a changed t_stop
    return case


def elephant_counts(case: Recording, result: SpikeCounts) -> np.ndarray:
    """Counts per trial (n_trials, n_channels, n_bins): elephant's BinnedSpikeTrain on the same window.

    The window starts at the given ``t_start`` (else the trains' own) and spans the result's bins.
    """
    from elephant.conversion import BinnedSpikeTrain

    rows = case.rows
    units = result.bin_size.units
    given = case.kwargs.get("t_start")
    start = (rows[0][0].t_start if given is None else given).rescale(units).reshape(())
    stop = start + result.n_bins * result.bin_size
    trains = [train.rescale(units).time_slice(start, stop) for row in rows for train in row]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # elephant warns about the spikes at t_stop that it leaves out
        binned = BinnedSpikeTrain(trains, bin_size=result.bin_size, t_start=start, t_stop=stop)
    return binned.to_array().reshape(len(rows), len(rows[0]), result.n_bins)


def check_counts(result: SpikeCounts, case: Recording) -> None:
    """The result has the right structure and equals elephant's counts (pooled as asked)."""
    n_trials, n_channels = len(case.rows), len(case.rows[0])
    counts = result.counts
    assert isinstance(result, SpikeCounts)
    assert counts.dtype == np.int64 and counts.ndim == 3, counts.dtype
    assert counts.shape == (result.n_examples, n_channels, result.n_bins) and result.n_bins >= 1
    assert (counts >= 0).all()
    assert result.n_trials.dtype == np.int64 and result.n_trials.shape == (result.n_examples,)
    assert len(result.channel_names) == n_channels and len(result.example_labels) == result.n_examples
    per_trial = elephant_counts(case, result)
    pool = case.kwargs.get("pool_trials")
    group_by = case.kwargs.get("group_by")
    if pool is None:
        pool = group_by is not None
    if not pool:
        np.testing.assert_array_equal(counts, per_trial)
        np.testing.assert_array_equal(result.n_trials, np.ones(n_trials))
        return
    keys = case.conditions if group_by is not None else [""] * n_trials
    groups = [[n for n in range(n_trials) if keys[n] == key] for key in dict.fromkeys(keys)]
    expected = np.stack([np.minimum(per_trial[index], 1).sum(axis=0) for index in groups])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(result.n_trials, [len(index) for index in groups])
    assert result.n_trials.sum() == n_trials and (counts <= result.n_trials[:, None, None]).all()


@reproducible(120)
@given(case=recordings())
@example(case=by_hand([[1.0, 3.0], [2.0]], ["ms", "s"]))  # elephant refused trains in different units
@example(case=by_hand([[1.0, 10.0]], ["us"]))  # a spike at t_stop: elephant's warning, an error under pytest
def test_well_formed_spike_trains_bin_to_the_right_counts(case: Recording) -> None:
    result = bin_spiketrains(case.data, case.bin_size, **case.kwargs)
    check_counts(result, case)
    # The window and the number of bins follow from the input alone (the last partial bin is dropped).
    w0, w1 = case.window_ms
    bin_ms = float(result.bin_size.rescale(pq.ms).magnitude)
    t0 = float(result.t_start.rescale(pq.ms).magnitude)
    assert t0 == pytest.approx(w0, rel=1e-9, abs=1e-9)
    tolerance = 1e-6 * bin_ms
    assert result.n_bins * bin_ms <= (w1 - w0) + tolerance < (result.n_bins + 1) * bin_ms + 2 * tolerance
    if not case.kwargs.get("pool_trials"):
        # Each count is the number of spikes in [t_start, t_stop) of the binned window; spikes within rounding
        # distance of its ends may fall either way.
        stop = w0 + result.n_bins * bin_ms
        margin = 1e-6 * bin_ms + 1e-12 * (abs(w0) + abs(stop))
        for n, row in enumerate(case.times_ms):
            for c, times in enumerate(row):
                spikes = np.asarray(times)
                surely = int(((spikes >= w0 + margin) & (spikes < stop - margin)).sum())
                possibly = int(((spikes >= w0 - margin) & (spikes <= stop + margin)).sum())
                assert surely <= result.counts[n, c].sum() <= possibly


# The ways input goes wrong. Each keeps the case drawable; the ones that mutate a train do it in place, so the
# data object (segments, Block) sees the change too.
CORRUPTIONS = [
    "nan spike",
    "unsorted",
    "spike outside own interval",
    "shifted train",
    "nan t_stop",
    "inf t_stop",
    "ragged trials",
    "no channels",
    "empty list",
    "junk data",
    "empty segment",
]
BAD_TIMES = [
    0 * pq.ms,
    -1 * pq.ms,
    np.nan * pq.ms,
    np.inf * pq.s,
    1 * pq.Hz,
    2 * pq.dimensionless,
    3 * pq.m,
    [1.0, 2.0] * pq.ms,
    np.array([]) * pq.ms,
    1.0,
    5,
    "1 ms",
    None,
]
JUNK_DATA = ["spikes", None, 3.0, np.arange(3.0), [1.0, 2.0], [[1.0]], {"trial": 0}, [neo.Segment()], neo.Block()]


def _corrupt(draw: st.DrawFn, case: Recording, corruption: str) -> bool:
    """Apply one corruption to ``case``; False if it does not apply to this case."""
    trains = [train for row in case.rows for train in row]
    with_spikes = [train for train in trains if len(train) > 0]
    if corruption == "nan spike" and with_spikes:
        train = draw(st.sampled_from(with_spikes))
        train.view(np.ndarray)[draw(st.integers(0, len(train) - 1))] = np.nan
    elif corruption == "unsorted" and any(len(np.unique(train.magnitude)) > 1 for train in with_spikes):
        train = next(train for train in with_spikes if len(np.unique(train.magnitude)) > 1)
        train.view(np.ndarray)[:] = train.magnitude[::-1].copy()
    elif corruption == "spike outside own interval" and any(t.magnitude[-1] > t.t_start.magnitude for t in with_spikes):
        train = next(t for t in with_spikes if t.magnitude[-1] > t.t_start.magnitude)
        train.t_stop = (train.t_start + train[-1]) / 2  # neo does not re-check the spikes when t_stop changes
    elif corruption == "shifted train":
        train = draw(st.sampled_from(trains))
        shift = as_time(draw(st.floats(0.1, 50)), draw(unit_names))
        train.t_start = (train.t_start - shift).rescale(train.units)
        train.t_stop = (train.t_stop + shift).rescale(train.units)
    elif corruption in ("nan t_stop", "inf t_stop"):
        train = draw(st.sampled_from(trains))
        train.t_stop = (np.nan if corruption == "nan t_stop" else np.inf) * train.units
    elif corruption == "ragged trials" and isinstance(case.data, list) and len(case.rows) > 1:
        case.data = [list(row) for row in case.rows]
        case.data[draw(st.integers(0, len(case.rows) - 1))].pop()
    elif corruption == "no channels":
        case.data = [[] for _ in case.rows]
    elif corruption == "empty list":
        case.data = []
    elif corruption == "junk data":
        case.data = draw(st.sampled_from(JUNK_DATA))
    elif corruption == "empty segment" and isinstance(case.data, list) and isinstance(case.data[0], neo.Segment):
        case.data = [*case.data, neo.Segment()]
    else:
        return False
    return True


@st.composite
def messy_recordings(draw: st.DrawFn) -> Recording:
    """Well-formed recordings with 0-2 corruptions and arguments that are often wrong."""
    case = draw(recordings())
    n_corruptions = draw(st.sampled_from([0, 1, 1, 2]), label="number of corruptions")
    for corruption in draw(st.permutations(CORRUPTIONS), label="corruptions")[:n_corruptions]:
        if _corrupt(draw, case, corruption):
            case.applied.append(corruption)
    bad_time = st.sampled_from(BAD_TIMES)
    case.bin_size = draw(mostly(st.just(case.bin_size), st.one_of(bad_time, st.just(10 * pq.s))), label="bin_size")
    w0, w1 = case.window_ms
    window = mostly(st.just("keep"), st.sampled_from(["none", "reversed", "outside", "bad"]))
    for name, value_ms in (("t_start", w0), ("t_stop", w1)):
        choice = draw(window, label=name)
        if choice == "none":
            case.kwargs.pop(name, None)
        elif choice == "reversed":
            case.kwargs[name] = as_time(w1 if name == "t_start" else w0, draw(unit_names))
        elif choice == "outside":
            case.kwargs[name] = as_time(value_ms + (-10 if name == "t_start" else 10), draw(unit_names))
        elif choice == "bad":
            case.kwargs[name] = draw(bad_time)
    if draw(st.booleans(), label="change pooling"):
        case.kwargs["pool_trials"] = draw(st.sampled_from([None, True, False]))
        case.kwargs["group_by"] = draw(st.sampled_from([None, None, "condition", "missing", ["condition"], 3]))
        case.kwargs["clip"] = draw(st.booleans())
    return case


@reproducible(250)
@given(case=messy_recordings())
@example(case=by_hand([[1.0, np.nan, 3.0]], ["ms"], applied=("nan spike",)))  # was binned, the NaN dropped silently
@example(case=by_hand([[1.0]], ["ms"], data=[[], []]))  # numpy's "zero-size array to reduction operation"
@example(case=_with_t_stop(by_hand([[1.0]], ["ms"]), np.inf * pq.ms))  # OverflowError: no window to bin
@example(case=_with_t_stop(by_hand([[1.0]], ["ms"], applied=("nan t_stop",), t_start=0 * pq.ms), np.nan * pq.ms))
@example(case=by_hand([[1.0]], ["ms"], pool_trials=True, group_by=3))  # "'int' object is not iterable"
def test_messy_spike_trains_bin_or_raise_a_documented_error(case: Recording) -> None:
    try:
        result = bin_spiketrains(case.data, case.bin_size, **case.kwargs)
    except (ValueError, TypeError) as error:
        check_message(error)
        event(f"refused ({type(error).__name__})")
        return
    event(f"binned with {case.applied or 'no corruption'}")
    assert "nan spike" not in case.applied, "a NaN spike time was binned silently"
    assert "nan t_stop" not in case.applied, "a spike train with a NaN t_stop was binned"
    check_counts(result, case)


# -------------------------------------------------------------------------------------- SpikeCounts
COUNT_DTYPES = [np.int8, np.int64, np.uint8, np.uint64, np.float16, np.float64, np.bool_, np.complex64]


@st.composite
def spike_counts_arguments(draw: st.DrawFn) -> tuple[Any, Any, Any, Any]:
    """Arguments of SpikeCounts: mostly plausible, else any shape, dtype, values, n_trials and times."""
    plausible_shape = hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=3)
    shape = draw(mostly(plausible_shape, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3)))
    dtype = draw(mostly(st.sampled_from([np.int64, np.uint8, np.float64, np.bool_]), st.sampled_from(COUNT_DTYPES)))
    if draw(mostly(st.just(False), st.just(True)), label="any values"):
        counts = draw(hnp.arrays(dtype, shape))
    else:
        counts = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 4)))
        counts = counts.astype(dtype)
    if draw(st.integers(0, 9)) == 0:
        counts = counts.astype(object)
    n_examples = shape[0]
    n_trials = draw(
        mostly(
            st.one_of(st.integers(1, 5), st.lists(st.integers(1, 5), min_size=n_examples, max_size=n_examples)),
            st.one_of(
                st.integers(-1, 0),
                st.floats(allow_nan=True, allow_infinity=True),
                st.lists(st.integers(0, 5), max_size=4),
                st.lists(st.floats(0, 5), min_size=1, max_size=4).map(np.array),
                st.sampled_from([None, "3", [[1]], 2**70]),
            ),
        ),
        label="n_trials",
    )
    bin_size = draw(mostly(st.builds(as_time, st.floats(0.01, 100), unit_names), st.sampled_from(BAD_TIMES)))
    t_start = draw(mostly(st.builds(as_time, st.floats(-1e4, 1e4), unit_names), st.sampled_from(BAD_TIMES)))
    return counts, n_trials, bin_size, t_start


@reproducible(150)
@given(arguments=spike_counts_arguments())
@example(arguments=(np.ones((2, 1, 3)), 1.5, 1 * pq.ms, 0 * pq.s))  # n_trials was truncated to 1
@example(arguments=(-np.ones((2, 1, 3)), 1, 1 * pq.ms, 0 * pq.s))  # negative counts were held
@example(arguments=(np.full((1, 1, 2), np.nan), 1, 1 * pq.ms, 0 * pq.s))  # numpy's cast warning (an error)
@example(arguments=(np.zeros((0, 1, 3)), 1, 1 * pq.ms, 0 * pq.s))  # repr raised IndexError
@example(arguments=(np.ones((1, 1, 3)), 1, 1.0, 0 * pq.s))  # repr raised AttributeError
def test_spike_counts_holds_counts_or_raises(arguments: tuple[Any, Any, Any, Any]) -> None:
    counts, n_trials, bin_size, t_start = arguments
    try:
        result = SpikeCounts(counts, n_trials, bin_size, t_start)
    except (ValueError, TypeError) as error:
        check_message(error)
        event(f"refused ({type(error).__name__})")
        return
    event("held")
    values = result.counts
    assert values.dtype == np.int64 and values.ndim == 3 and (values >= 0).all()
    np.testing.assert_array_equal(values, np.asarray(counts).astype(np.float64))
    assert result.n_trials.dtype == np.int64 and result.n_trials.shape == (result.n_examples,)
    given = np.broadcast_to(np.asarray(n_trials, dtype=np.float64).reshape(-1), (result.n_examples,))
    np.testing.assert_array_equal(result.n_trials, given)
    assert (result.n_trials >= 1).all()
    assert f"n_examples={result.n_examples}" in repr(result)
    frame = result.to_dataframe()
    assert len(frame) == values.size and frame["count"].sum() == values.sum()
    if min(values.shape) >= 1 and values.sum() <= 200:
        # Documented round trip: binning to_spiketrains() again with the same bin size gives the counts back.
        again = bin_spiketrains(result.to_spiketrains(), result.bin_size)
        np.testing.assert_array_equal(again.counts, values)


# ---------------------------------------------------------------------------------- read_recording
class TouchOnLoad:
    """Unpickling this object creates ``marker``: a stand-in for code that an attacker's pickle runs."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def pickle_payload(marker: pathlib.Path) -> bytes:
    return pickle.dumps({"format": "spikedict-model", "block": TouchOnLoad(marker)})


FILE_MAGIC = [b"MATLAB 5.0 MAT-file", b"\x89HDF\r\n\x1a\n", b"\x80\x04", b"PK\x03\x04", b"ABF ", b"safetensors"]
RECORDING_SUFFIXES = [".mat", ".nix", ".h5", ".nwb", ".pkl", ".pickle", ".PKL", ".txt", ".csv", ".bin", ".gz", ""]


@reproducible(60)
@given(
    kind=st.sampled_from(["bytes", "magic", "pickle"]),
    content=st.binary(max_size=300),
    magic=st.sampled_from(FILE_MAGIC),
    suffix=st.sampled_from(RECORDING_SUFFIXES),
    format=st.sampled_from([None, None, "mat", "nix", "nwb", "pickle", "PKL", "MatLab", "bogus", 3, b"mat"]),
)
def test_read_recording_reads_or_raises_and_never_unpickles(
    kind: str, content: bytes, magic: bytes, suffix: str, format: Any
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        marker = pathlib.Path(folder) / "marker"
        path = pathlib.Path(folder) / f"recording{suffix}"
        path.write_bytes({"bytes": content, "magic": magic + content, "pickle": pickle_payload(marker)}[kind])
        try:
            block = read_recording(path, format=format)
        except (ValueError, TypeError) as error:
            check_message(error, own=False)  # it quotes what neo's reader said, after saying what failed
        except ImportError as error:  # only where the format's optional extra is not installed
            assert "which is not installed. Install it with: pip install 'spikedict[" in str(error), error
        else:
            assert isinstance(block, neo.Block)
        assert not marker.exists(), "reading a recording ran code from a pickle"


# ============================================================================================= estimator
def tiny() -> dict[str, Any]:
    """One short epoch and a shallow encoder (fresh settings objects for each estimator)."""
    return dict(
        solver=Alternating(n_epochs=1, n_code_iterations=3),
        encoder=Encoder(n_iterations=3),
        progress=False,
        device="cpu",
        seed=0,
    )


X_DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    object,
    "timedelta64[s]",
]
FAMILIES = ("binomial", "poisson", "gaussian")
# Above this magnitude (float32 counts) a fit may either work or refuse the data as too large to compute with.
EXTREME = 1e12


@dataclass
class EstimatorCase:
    X: Any
    array: np.ndarray  # X as drawn, before wrapping
    params: dict[str, Any]


@st.composite
def estimator_cases(draw: st.DrawFn) -> EstimatorCase:
    """Settings and data for SpikeDictionary: each mostly right, else wrong in one of many ways."""
    template_size = draw(
        mostly(
            st.one_of(st.integers(1, 5), st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)),
            st.one_of(
                st.integers(-1, 0),
                st.floats(allow_nan=True),
                st.lists(st.integers(0, 3), max_size=3).map(tuple),
                st.sampled_from([None, "3", np.array(3), True]),
            ),
        ),
        label="template_size",
    )
    kernel = (template_size,) if isinstance(template_size, int) else template_size
    fits = isinstance(kernel, tuple) and all(isinstance(k, int) and k >= 1 for k in kernel)
    if fits and draw(mostly(st.just(True), st.just(False)), label="plausible shape"):
        # Examples as long as the templates or a little longer (or, sometimes, a little shorter).
        spatial = [max(0, k + draw(st.integers(-1, 6))) for k in kernel]
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), *spatial)
    else:
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=5), label="shape")
    dtype = draw(mostly(st.sampled_from(X_DTYPES[:9]), st.sampled_from(X_DTYPES)), label="dtype")
    small_counts = st.integers(0, 6)
    if dtype is object:
        array = draw(hnp.arrays(np.int64, shape, elements=small_counts)).astype(object)
    elif dtype == "timedelta64[s]":
        array = np.zeros(shape, dtype=dtype)
    elif dtype in (np.bool_, np.complex64):
        array = draw(hnp.arrays(dtype, shape))
    else:
        # Small counts, or anything the dtype holds (negative, fractional, NaN, inf, huge) in some bins.
        anything = hnp.from_dtype(np.dtype(dtype))
        array = draw(hnp.arrays(dtype, shape, elements=mostly(small_counts, anything)))
    wrap = draw(st.sampled_from(["array", "array", "tensor", "list"]), label="wrapper")
    X: Any = array
    if wrap == "tensor" and array.dtype.kind in "biuf":
        X = torch.from_numpy(array.copy())
    elif wrap == "list" and array.dtype.kind in "biuf":
        X = array.tolist()
    n_examples = shape[0]
    params = dict(
        template_size=template_size,
        n_templates=draw(
            mostly(st.integers(1, 3), st.one_of(st.integers(-2, 0), st.floats(-1, 3), st.just(np.int64(2)))),
            label="n_templates",
        ),
        family=draw(
            mostly(st.sampled_from(FAMILIES), st.sampled_from([" Poisson ", "BINOMIAL", "gamma", 3])), label="family"
        ),
        n_trials=draw(
            mostly(
                st.one_of(st.integers(6, 9), st.lists(st.integers(6, 9), min_size=n_examples, max_size=n_examples)),
                st.one_of(
                    st.none(),
                    st.integers(-1, 5),
                    st.floats(allow_nan=True),
                    st.lists(st.integers(0, 8), min_size=n_examples, max_size=n_examples),
                    st.lists(st.integers(1, 8), min_size=1, max_size=4),
                ),
            ),
            label="n_trials",
        ),
    )
    return EstimatorCase(X, array, params)


def _whole(values: Any, minimum: float) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.isfinite(values).all() and (values == np.round(values)).all() and (values >= minimum).all())


def expected_outcome(case: EstimatorCase) -> str | None:
    """Why the estimator must refuse the case; None if it must work; "either" for extreme magnitudes."""
    array, params = case.array, case.params
    if array.dtype.kind not in "biuf":
        return "not a real numeric dtype"
    size = params["template_size"]
    if isinstance(size, (int, np.integer)):
        shape: tuple[Any, ...] = (size,)
    elif isinstance(size, tuple):
        shape = size
    else:
        return "template_size is not an integer or a tuple"
    if not 1 <= len(shape) <= 2 or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in shape):
        return "template_size is not 1 or 2 positive integers"
    n_templates = params["n_templates"]
    if not isinstance(n_templates, (int, np.integer)) or n_templates < 1:
        return "n_templates is not a positive integer"
    family = params["family"]
    if not isinstance(family, str) or family.strip().lower() not in FAMILIES:
        return "unknown family"
    family = family.strip().lower()
    if array.ndim != 2 + len(shape):
        return "wrong number of dimensions"
    if array.shape[0] == 0 or array.shape[1] == 0:
        return "no examples or no channels"
    if any(n < k for n, k in zip(array.shape[2:], shape)):
        return "template longer than the examples"
    with np.errstate(over="ignore"):
        y = array.astype(np.float32)  # what the estimator computes with (torch's default dtype)
    if not np.isfinite(y).all():
        return "not finite in float32"
    if np.abs(y).max() > EXTREME:
        return "either"
    if family == "binomial":
        n_trials = params["n_trials"]
        if n_trials is None or (isinstance(n_trials, list) and not n_trials) or np.ndim(n_trials) > 1:
            return "no valid n_trials"
        if np.max(np.abs(np.asarray(n_trials, dtype=np.float64))) > EXTREME:
            return "either"
        if not _whole(n_trials, 1) or (np.ndim(n_trials) == 1 and len(n_trials) != array.shape[0]):
            return "no valid n_trials"
        limit = np.asarray(n_trials, dtype=np.float64).reshape((-1,) + (1,) * (array.ndim - 1))
        if not _whole(y, 0) or (y > limit).any():
            return "outside the binomial support"
    if family == "poisson" and not _whole(y, 0):
        return "outside the Poisson support"
    return None


def by_hand_estimator(X: Any, **params: Any) -> EstimatorCase:
    """An estimator case written out (the regressions below); unset settings are valid defaults."""
    settings = dict(n_templates=1, template_size=1, family="gaussian", n_trials=None) | params
    return EstimatorCase(X, np.asarray(X), settings)


@reproducible(200, HealthCheck.too_slow)
@given(case=estimator_cases())
# L-BFGS's line search overflowed float32 on large Gaussian values: FloatingPointError (NaN loss).
@example(case=by_hand_estimator(np.array([[[419622, 0]]], dtype=np.int32)))
# The automatic padding made templates as long as the examples longer than them.
@example(case=by_hand_estimator(np.zeros((2, 1, 10), dtype=np.int64), template_size=10, family="poisson"))
# Counts too large for float32 gave all-zero templates; values that overflow float32 were reported as inf.
@example(case=by_hand_estimator(np.full((2, 1, 10), 1e30), family="poisson"))
@example(case=by_hand_estimator(np.full((1, 1, 4), 1e300)))
# Messages from inside: "'float' object is not iterable", IndexError, "can't convert np.ndarray".
@example(case=by_hand_estimator(np.zeros((1, 1, 4)), template_size=2.0))
@example(case=by_hand_estimator(np.zeros((1, 1)), template_size=()))
@example(case=by_hand_estimator(np.zeros((1, 1, 4), dtype="timedelta64[s]")))
@example(case=by_hand_estimator(np.zeros((1, 1, 4)), family="binomial", n_trials=10**30))
def test_estimator_fits_or_raises_a_documented_error(case: EstimatorCase) -> None:
    expected = expected_outcome(case)
    event(f"expected: {expected or 'a fit'}")
    model = SpikeDictionary(**case.params, **tiny())
    try:
        model.fit(case.X)
        codes, rates, score = model.transform(case.X), model.predict_rate(case.X), model.score(case.X)
    except (ValueError, TypeError) as error:
        check_message(error)
        assert expected is not None, f"well-formed input was refused: {error}"
        return
    assert expected in (None, "either"), f"input with a problem ({expected}) was accepted"
    array = case.array
    template_shape = model._template_shape()
    n_templates = int(case.params["n_templates"])
    assert model.templates_.shape == (n_templates, array.shape[1], *template_shape)
    norms = np.linalg.norm(model.templates_.reshape(n_templates, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    code_shape = tuple(n - k + 1 for n, k in zip(array.shape[2:], template_shape))
    assert codes.shape == (array.shape[0], n_templates, *code_shape)
    assert np.isfinite(codes).all() and (codes >= 0).all()
    assert rates.shape == array.shape and np.isfinite(rates).all()
    family = case.params["family"].strip().lower()
    if family != "gaussian":
        assert (rates >= 0).all()
    if family == "binomial":
        limit = np.asarray(case.params["n_trials"], dtype=np.float64).reshape((-1,) + (1,) * (array.ndim - 1))
        assert (rates <= limit * (1 + 1e-5)).all()
    assert isinstance(score, float) and np.isfinite(score)


@reproducible(30)
@given(case=estimator_cases(), method=st.sampled_from(["transform", "predict_rate", "score", "save"]))
def test_unfitted_estimator_raises_not_fitted(case: EstimatorCase, method: str) -> None:
    model = SpikeDictionary(**tiny())
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(model, method)(case.X if method != "save" else "never-written.safetensors")


@reproducible(25, HealthCheck.too_slow)
@given(case=recordings(), template_fraction=st.floats(0, 1))
def test_binned_spike_trains_fit_end_to_end(case: Recording, template_fraction: float) -> None:
    """Pooled counts from the data layer go straight into the estimator, which takes n_trials from them."""
    case.kwargs.update(pool_trials=True, clip=True)
    counts = bin_spiketrains(case.data, case.bin_size, **case.kwargs)
    template_size = 1 + int(template_fraction * (counts.n_bins - 1))
    model = SpikeDictionary(n_templates=2, template_size=template_size, family="binomial", **tiny()).fit(counts)
    rates = model.predict_rate(counts)
    assert rates.shape == counts.counts.shape and np.isfinite(rates).all()
    assert (rates <= counts.n_trials[:, None, None] * (1 + 1e-5)).all()
    np.testing.assert_allclose(np.linalg.norm(model.templates_.reshape(2, -1), axis=1), 1.0, atol=1e-3)


# ======================================================================================= untrusted files
@pytest.fixture
def payload(tmp_path: pathlib.Path) -> tuple[bytes, pathlib.Path]:
    """A pickle that creates ``marker`` when loaded; checked to do so, then the marker is removed."""
    marker = tmp_path / "marker"
    data = pickle_payload(marker)
    pickle.loads(data)  # the attack works when the bytes are unpickled ...
    assert marker.exists()
    marker.unlink()  # ... so its absence below means the loaders never unpickled them
    return data, marker


def torch_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
    """A file in torch.save's format (a zip holding a pickle) whose loading would create ``marker``."""
    torch.save({"format": "spikedict-checkpoint", "version": 1, "state": TouchOnLoad(marker)}, path)


def test_model_named_safetensors_never_unpickles(tmp_path, payload):
    data, marker = payload
    raw = tmp_path / "model.safetensors"
    raw.write_bytes(data)
    zipped = tmp_path / "zipped" / "model.safetensors"
    zipped.parent.mkdir()
    torch_pickle(zipped, marker)
    for path in (raw, zipped):
        with pytest.raises(ValueError, match=r"could not read .* as a spikedict model") as error:
            SpikeDictionary.load(path)
        check_message(error.value)
    assert not marker.exists()


def test_checkpoint_never_unpickles(tmp_path, payload, binomial_counts):
    data, marker = payload
    raw = tmp_path / "checkpoint.pt"
    raw.write_bytes(data)
    zipped = tmp_path / "zipped.pt"
    torch_pickle(zipped, marker)
    for path in (raw, zipped):
        with pytest.raises(ValueError, match="could not read checkpoint"):
            load_checkpoint(path)
        model = SpikeDictionary(n_templates=2, template_size=5, n_trials=30, checkpoint_path=str(path), **tiny())
        with pytest.raises(ValueError, match="could not read checkpoint"):
            model.fit(binomial_counts[:2, :, :40], resume=True)
    assert not marker.exists()


def test_model_folder_and_model_format_never_unpickle(tmp_path, payload):
    """A fit's output folder, and files in the model format (safetensors + JSON metadata) with hostile contents."""
    from safetensors.torch import save_file

    data, marker = payload
    folder = tmp_path / "fit-output"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    torch_pickle(folder / "checkpoint.pt", marker)
    with pytest.raises(FileNotFoundError, match="is a folder; pass the model file"):
        SpikeDictionary.load(folder)
    with pytest.raises(ValueError):
        SpikeDictionary.load(folder / "model.safetensors")
    # Model-format files: the pickle as a tensor, and as JSON metadata where the loader expects parameters.
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    hostile = {
        "format": "spikedict-model",
        "version": "1",
        "params": json.dumps({"n_templates": 1, "init": data.hex()}),
        "family": json.dumps({"name": "binomial", "n_trials": 1, "state": data.hex()}),
        "fitted": data.decode("latin-1"),
        "history": data.decode("latin-1"),
    }
    path = tmp_path / "hostile.safetensors"
    save_file({"templates": tensor, "initial_templates": tensor.clone()}, str(path), metadata=hostile)
    with pytest.raises(ValueError, match="contents do not fit together") as error:
        SpikeDictionary.load(path)
    check_message(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["recording.pkl", "recording.pickle", "RECORDING.PKL"])
def test_pickled_recording_is_refused(tmp_path, payload, name):
    data, marker = payload
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match="pickle") as error:
        read_recording(path)
    assert "allow_pickle=True" in str(error.value)
    for format in ("pickle", "pkl"):
        with pytest.raises(ValueError, match="allow_pickle=True"):
            read_recording(path, format=format)
    # another reader on the same bytes fails; it does not unpickle either (nix where its extra is installed)
    for format in ("mat", "nix") if NIX_INSTALLED else ("mat",):
        with pytest.raises(ValueError, match="could not"):
            read_recording(path, format=format)
    assert not marker.exists()


def test_image_loaders_never_unpickle(tmp_path, payload):
    pytest.importorskip("PIL")
    from spikedict.images import load_denoiser, read_image

    data, marker = payload
    image = tmp_path / "image.npy"
    np.save(image, np.array([TouchOnLoad(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="could not read"):
        read_image(image)
    (tmp_path / "denoiser.safetensors").write_bytes(data)
    (tmp_path / "denoiser.json").write_text(json.dumps({"format": "bogus"}))
    with pytest.raises(ValueError):
        load_denoiser(tmp_path / "denoiser")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ long recordings
@given(
    case=recordings().filter(lambda case: len(case.rows) == 1),
    window_fraction=st.floats(0, 1.2),
    overlap_fraction=st.floats(0, 1.1),
    window_unit=unit_names,
    overlap_unit=unit_names,
)
@reproducible(60, HealthCheck.filter_too_much, HealthCheck.too_slow)
def test_recording_windows_tile_the_binned_recording_or_raise(
    case: Recording, window_fraction: float, overlap_fraction: float, window_unit: str, overlap_unit: str
) -> None:
    from spikedict.io import RecordingWindows

    kwargs = {k: v for k, v in case.kwargs.items() if k in ("t_start", "t_stop")}
    whole = bin_spiketrains(case.rows[0], case.bin_size, **kwargs)
    bin_ms = float(case.bin_size.rescale(pq.ms).magnitude)
    window_bins = max(int(round(window_fraction * whole.n_bins)), 0)
    overlap_bins = int(round(overlap_fraction * window_bins))
    window, overlap = as_time(window_bins * bin_ms, window_unit), as_time(overlap_bins * bin_ms, overlap_unit)
    try:
        windows = RecordingWindows(case.rows[0], case.bin_size, window, overlap, **kwargs)
    except (ValueError, TypeError) as error:
        check_message(error)
        # Refused only for a window that does not fit, an overlap as long as the window, or an empty window.
        assert window_bins > whole.n_bins or overlap_bins >= window_bins or window_bins == 0
        return
    assert windows.n_bins == whole.n_bins and windows.shape[1:] == (len(case.rows[0]), windows.window_bins)
    # The windows are stretches of elephant's binning of the whole recording, and together they cover it.
    covered = np.zeros(whole.n_bins, dtype=bool)
    for k, start in enumerate(windows.starts):
        np.testing.assert_array_equal(windows.counts([k])[0], whole.counts[0, :, start : start + windows.window_bins])
        covered[start : start + windows.window_bins] = True
    assert covered.all()
    np.testing.assert_array_equal(windows.counts(first_bin=0, n_bins=whole.n_bins), whole.counts)
