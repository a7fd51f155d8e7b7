"""The Neo data layer: binning against plain numpy histograms, pooling, files, shipped data, bad input."""

from __future__ import annotations

import importlib.util
import os

import neo
import numpy as np
import pandas as pd
import pytest
import quantities as pq

from spikedict.io import (
    SpikeCounts,
    bin_spiketrains,
    list_datasets,
    load_dataset,
    read_recording,
    write_recording,
)

BIN = 5 * pq.ms
T_STOP = 200 * pq.ms
N_BINS = 40


def random_train(rng: np.random.Generator, n_spikes: int = 30, **annotations) -> neo.SpikeTrain:
    times = np.sort(rng.uniform(0, T_STOP.magnitude, n_spikes))
    return neo.SpikeTrain(times * pq.ms, t_start=0 * pq.ms, t_stop=T_STOP, **annotations)


def histogram(train: neo.SpikeTrain) -> np.ndarray:
    edges = np.arange(N_BINS + 1) * BIN.magnitude
    return np.histogram(train.rescale(pq.ms).magnitude, bins=edges)[0]


def make_block(rng, n_trials=4, n_units=2, groups=True, conditions=("a", "b")) -> neo.Block:
    block = neo.Block(name="test", experimenter="someone", sampling=np.arange(3.0))
    units = [neo.Group(name=f"unit {u}") for u in range(n_units)]
    for n in range(n_trials):
        segment = neo.Segment(name=f"trial {n}", condition=conditions[n % len(conditions)], stimulus_level=n * 1.5)
        for u in range(n_units):
            train = random_train(rng, 10 + 5 * u, unit=f"unit {u}")
            segment.spiketrains.append(train)
            units[u].add(train)
        block.segments.append(segment)
    if groups:
        block.groups.extend(units)
    block.check_relationships()
    return block


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ------------------------------------------------------------------- counts agree with numpy
def test_single_train_matches_histogram(rng):
    train = random_train(rng, 100)
    counts = bin_spiketrains(train, BIN)
    assert counts.counts.shape == (1, 1, N_BINS) and counts.counts.dtype == np.int64
    np.testing.assert_array_equal(counts.counts[0, 0], histogram(train))
    np.testing.assert_array_equal(counts.n_trials, [1])
    assert counts.n_bins == N_BINS and counts.n_channels == 1 and counts.n_examples == 1


def test_channel_list_and_segment_match_histogram(rng):
    trains = [random_train(rng, 20 * (c + 1), name=f"cell {c}") for c in range(3)]
    expected = np.stack([histogram(t) for t in trains])[None]
    from_list = bin_spiketrains(trains, BIN)
    np.testing.assert_array_equal(from_list.counts, expected)
    assert from_list.channel_names == ["cell 0", "cell 1", "cell 2"]
    segment = neo.Segment(condition="x")
    segment.spiketrains.extend(trains)
    from_segment = bin_spiketrains(segment, BIN)
    np.testing.assert_array_equal(from_segment.counts, expected)
    assert from_segment.example_labels.loc[0, "condition"] == "x"


@pytest.mark.parametrize("layout", ["groups", "annotation", "position", "segments", "lists"])
def test_trials_match_histogram_for_every_layout(rng, layout):
    block = make_block(rng, groups=layout == "groups")
    if layout == "position":
        for segment in block.segments:
            for train in segment.spiketrains:
                train.annotations.pop("unit")
    expected = np.stack([[histogram(t) for t in segment.spiketrains] for segment in block.segments])
    if layout == "segments":
        data = list(block.segments)
    elif layout == "lists":
        data = [list(segment.spiketrains) for segment in block.segments]
    else:
        data = block
    counts = bin_spiketrains(data, BIN)
    assert counts.counts.shape == (4, 2, N_BINS)
    np.testing.assert_array_equal(counts.counts, expected)
    np.testing.assert_array_equal(counts.n_trials, np.ones(4))
    if layout != "lists":
        assert list(counts.example_labels["condition"]) == ["a", "b", "a", "b"]
    if layout in ("groups", "annotation"):
        assert counts.channel_names == ["unit 0", "unit 1"]


def test_block_groups_define_channel_order(rng):
    block = make_block(rng)
    # units listed in the other order than in the segments (neo's ObjectList.reverse is broken in 0.14)
    groups = list(block.groups)
    block.groups.clear()
    block.groups.extend(groups[::-1])
    counts = bin_spiketrains(block, BIN)
    assert counts.channel_names == ["unit 1", "unit 0"]
    np.testing.assert_array_equal(counts.counts[0, 0], histogram(block.segments[0].spiketrains[1]))


def test_seconds_and_milliseconds_give_the_same_counts(rng):
    trains = [random_train(rng, 50) for _ in range(3)]
    in_seconds = [t.rescale(pq.s) for t in trains]
    a = bin_spiketrains(trains, BIN)
    b = bin_spiketrains(in_seconds, 0.005 * pq.s)
    c = bin_spiketrains(in_seconds, BIN)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.counts, c.counts)


def test_explicit_window_and_partial_last_bin(rng):
    train = random_train(rng, 100)
    counts = bin_spiketrains(train, BIN, t_start=50 * pq.ms, t_stop=0.1 * pq.s)
    inside = train.magnitude[(train.magnitude >= 50) & (train.magnitude < 100)]
    np.testing.assert_array_equal(counts.counts[0, 0], np.histogram(inside, np.arange(50, 101, 5.0))[0])
    assert float(counts.t_start.rescale(pq.ms)) == 50
    # 23 ms with 5 ms bins: 4 whole bins, the last 3 ms are dropped.
    short = bin_spiketrains(train, BIN, t_start=0 * pq.ms, t_stop=23 * pq.ms)
    assert short.n_bins == 4 and float(short.t_stop.rescale(pq.ms)) == pytest.approx(20)


def test_empty_train_gives_zero_counts(rng):
    empty = neo.SpikeTrain([] * pq.ms, t_stop=T_STOP)
    counts = bin_spiketrains([empty, random_train(rng)], BIN)
    assert counts.counts.shape == (1, 2, N_BINS)
    assert counts.counts[0, 0].sum() == 0 and counts.counts[0, 1].sum() == 30


# ------------------------------------------------------------------------------ pooling
def binary_block(rng, n_trials: int, conditions: tuple[str, ...]) -> neo.Block:
    """Trials with at most one spike per 5 ms bin (spike times at random bins' centres)."""
    block = neo.Block()
    for n in range(n_trials):
        segment = neo.Segment(condition=conditions[n % len(conditions)])
        bins = np.flatnonzero(rng.random(N_BINS) < 0.3)
        segment.spiketrains.append(neo.SpikeTrain((bins + 0.5) * 5.0 * pq.ms, t_stop=T_STOP))
        block.segments.append(segment)
    return block


def test_pooling_counts_trials_with_a_spike(rng):
    block = binary_block(rng, 7, ("a", "b", "a"))  # 5 trials of a, 2 of b
    per_trial = bin_spiketrains(block, BIN)
    pooled = bin_spiketrains(block, BIN, group_by="condition")
    assert pooled.counts.shape == (2, 1, N_BINS)
    np.testing.assert_array_equal(pooled.n_trials, [5, 2])
    is_a = per_trial.example_labels["condition"].to_numpy() == "a"
    np.testing.assert_array_equal(pooled.counts[0], per_trial.counts[is_a].sum(axis=0))
    np.testing.assert_array_equal(pooled.counts[1], per_trial.counts[~is_a].sum(axis=0))
    assert list(pooled.example_labels["condition"]) == ["a", "b"]
    assert pooled.example_labels.loc[1, "trials"] == (1, 4)
    assert (pooled.counts <= pooled.n_trials[:, None, None]).all()
    everything = bin_spiketrains(block, BIN, pool_trials=True)
    np.testing.assert_array_equal(everything.counts[0], per_trial.counts.sum(axis=0))
    np.testing.assert_array_equal(everything.n_trials, [7])


def test_pooling_rejects_two_spikes_in_a_bin_unless_clipped():
    trials = [
        [neo.SpikeTrain([1.0, 2.0, 7.0] * pq.ms, t_stop=10 * pq.ms)],
        [neo.SpikeTrain([3.0] * pq.ms, t_stop=10 * pq.ms)],
    ]
    with pytest.raises(ValueError, match=r"trial 0 .* 2 spikes in bin 0.*smaller bin_size.*clip=True"):
        bin_spiketrains(trials, 5 * pq.ms, pool_trials=True)
    clipped = bin_spiketrains(trials, 5 * pq.ms, pool_trials=True, clip=True)
    np.testing.assert_array_equal(clipped.counts, [[[2, 1]]])
    np.testing.assert_array_equal(bin_spiketrains(trials, 1 * pq.ms, pool_trials=True).counts.sum(), 4)


def test_pooled_counts_fit_with_per_example_trials(rng):
    from spikedict import SpikeDictionary
    from spikedict.families import Binomial
    from spikedict.settings import Encoder
    from spikedict.solvers import Alternating

    block = binary_block(rng, 5, ("a", "b", "a"))
    pooled = bin_spiketrains(block, BIN, group_by="condition")
    model = SpikeDictionary(
        n_templates=1,
        template_size=5,
        solver=Alternating(n_epochs=1, n_code_iterations=5),
        encoder=Encoder(n_iterations=5),
        progress=False,
        device="cpu",
        seed=0,
    )
    model.fit(pooled)
    assert isinstance(model.family_, Binomial)
    np.testing.assert_array_equal(model.family_.n_trials, [3, 2])
    assert model.predict_rate(pooled).shape == (2, 1, N_BINS)


# -------------------------------------------------------------------------- the way back
@pytest.mark.parametrize("pooled", [False, True])
def test_to_spiketrains_then_binning_is_identity(rng, pooled):
    block = binary_block(rng, 6, ("a", "b")) if pooled else make_block(rng)
    counts = bin_spiketrains(block, BIN, group_by="condition" if pooled else None)
    again = bin_spiketrains(counts.to_spiketrains(), BIN)
    np.testing.assert_array_equal(again.counts, counts.counts)
    assert again.channel_names == counts.channel_names
    in_seconds = [[t.rescale(pq.s) for t in row] for row in counts.to_spiketrains()]
    np.testing.assert_array_equal(bin_spiketrains(in_seconds, BIN).counts, counts.counts)


def test_to_dataframe_is_tidy(rng):
    counts = bin_spiketrains(make_block(rng), BIN)
    frame = counts.to_dataframe()
    assert len(frame) == 4 * 2 * N_BINS
    assert {"example", "channel", "bin", "time", "count", "n_trials", "condition"} <= set(frame.columns)
    assert frame["count"].sum() == counts.counts.sum()
    row = frame[(frame.example == 2) & (frame.channel == "unit 1") & (frame.bin == 7)].iloc[0]
    assert row["count"] == counts.counts[2, 1, 7] and row["time"] == 35.0 and row["condition"] == "a"
    assert frame.attrs["time_units"] == "ms"
    assert "n_examples=4, n_channels=2, n_bins=40, bin_size=5.0 ms" in repr(counts)


def test_spike_counts_validates_shapes():
    with pytest.raises(ValueError, match=r"shape \(n_examples, n_channels, n_bins\)"):
        SpikeCounts(np.zeros((2, 5)), np.ones(2), BIN, 0 * pq.s)
    with pytest.raises(ValueError, match="channel_names has 2 names for 1 channels"):
        SpikeCounts(np.zeros((2, 1, 5)), np.ones(2), BIN, 0 * pq.s, channel_names=["a", "b"])


# ---------------------------------------------------------------------------- bad input
def test_different_windows_suggest_the_common_interval(rng):
    a = neo.SpikeTrain([1.0, 50.0] * pq.ms, t_start=0 * pq.ms, t_stop=100 * pq.ms)
    b = neo.SpikeTrain([30.0] * pq.ms, t_start=20 * pq.ms, t_stop=0.09 * pq.s)
    with pytest.raises(ValueError, match=r"different t_start / t_stop.*t_start=20 \* quantities.ms, t_stop=90 \*"):
        bin_spiketrains([a, b], BIN)
    counts = bin_spiketrains([a, b], BIN, t_start=20 * pq.ms, t_stop=90 * pq.ms)
    np.testing.assert_array_equal(counts.counts.sum(axis=-1), [[1, 1]])


def test_window_outside_a_train_is_refused(rng):
    with pytest.raises(ValueError, match=r"reaches outside the recorded interval.*common interval"):
        bin_spiketrains(random_train(rng), BIN, t_start=0 * pq.ms, t_stop=300 * pq.ms)
    with pytest.raises(ValueError, match=r"t_stop .* must be after t_start"):
        bin_spiketrains(random_train(rng), BIN, t_start=50 * pq.ms, t_stop=50 * pq.ms)


def test_spikes_outside_their_train_are_refused():
    train = neo.SpikeTrain([10.0, 150.0] * pq.ms, t_stop=200 * pq.ms)
    train.t_stop = 100 * pq.ms  # neo does not re-check the spikes when t_stop is changed
    with pytest.raises(ValueError, match=r"spikes outside its own interval.*time_slice"):
        bin_spiketrains(train, BIN)


def test_unsorted_spike_times_are_refused():
    train = neo.SpikeTrain([30.0, 10.0] * pq.ms, t_stop=100 * pq.ms)
    with pytest.raises(ValueError, match=r"not sorted.*train.sort\(\)"):
        bin_spiketrains(train, BIN)
    train.sort()
    assert bin_spiketrains(train, BIN).counts.sum() == 2


@pytest.mark.parametrize(
    ("bin_size", "error", "message"),
    [
        (5, TypeError, r"bin_size must be a time with units.*bin_size=5 \* quantities.ms"),
        (0 * pq.ms, ValueError, "bin_size must be positive"),
        (-1 * pq.ms, ValueError, "bin_size must be positive"),
        (5 * pq.mV, ValueError, "must be a time"),
        ([1, 2] * pq.ms, ValueError, "single time"),
    ],
)
def test_bad_bin_size(rng, bin_size, error, message):
    with pytest.raises(error, match=message):
        bin_spiketrains(random_train(rng), bin_size)


def test_window_shorter_than_a_bin(rng):
    with pytest.raises(ValueError, match="shorter than one bin"):
        bin_spiketrains(random_train(rng), 1 * pq.s)


def test_block_without_spike_trains():
    block = neo.Block(name="lfp only")
    segment = neo.Segment()
    segment.analogsignals.append(neo.AnalogSignal(np.zeros((10, 1)) * pq.mV, sampling_rate=1 * pq.kHz))
    block.segments.append(segment)
    with pytest.raises(ValueError, match=r"holds no spike trains.*sorted units"):
        bin_spiketrains(block, BIN)
    with pytest.raises(ValueError, match="holds no spike trains"):
        bin_spiketrains(neo.Block(), BIN)


@pytest.mark.parametrize("layout", ["groups", "annotation", "position", "lists"])
def test_units_missing_from_some_trials(rng, layout):
    block = make_block(rng, groups=layout == "groups")
    dropped = block.segments[2].spiketrains.pop(1)
    if layout == "groups":
        kept = [train for train in block.groups[1].spiketrains if train is not dropped]
        block.groups[1].spiketrains.clear()  # ObjectList.remove compares arrays with == in neo 0.14
        block.groups[1].spiketrains.extend(kept)
    if layout == "position":
        for segment in block.segments:
            for train in segment.spiketrains:
                train.annotations.pop("unit")
    data = [list(s.spiketrains) for s in block.segments] if layout == "lists" else block
    message = "same channels" if layout == "lists" else "units missing from some trials"
    with pytest.raises(ValueError, match=message):
        bin_spiketrains(data, BIN)
    if layout in ("groups", "annotation"):
        with pytest.raises(ValueError, match=r"trial 2 has no spike train for unit\(s\) \['unit 1'\]"):
            bin_spiketrains(block, BIN)


def test_bad_data_types_and_grouping(rng):
    with pytest.raises(TypeError, match=r"takes a neo\.SpikeTrain"):
        bin_spiketrains(np.arange(5.0), BIN)
    with pytest.raises(TypeError, match="list of int"):
        bin_spiketrains([1, 2], BIN)
    with pytest.raises(ValueError, match="no spike trains were given"):
        bin_spiketrains([], BIN)
    block = make_block(rng)
    with pytest.raises(ValueError, match=r"\['session'\].*available: \['segment_name', 'condition'"):
        bin_spiketrains(block, BIN, group_by="session", clip=True)
    with pytest.raises(ValueError, match="need pool_trials=True"):
        bin_spiketrains(block, BIN, group_by="condition", pool_trials=False)


# --------------------------------------------------------------------------------- files
def test_mat_round_trip_keeps_spikes_units_and_annotations(rng, tmp_path):
    block = make_block(rng)
    block.segments[0].spiketrains[0].annotate(quality="good", snr=4.5, channel_id=3)
    path = tmp_path / "recording.mat"
    write_recording(block, path)
    assert path.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    read = read_recording(path)
    assert read.name == "test" and read.annotations["experimenter"] == "someone"
    np.testing.assert_array_equal(read.annotations["sampling"], np.arange(3.0))
    assert [g.name for g in read.groups] == ["unit 0", "unit 1"]
    for original, loaded in zip(block.segments, read.segments):
        assert loaded.annotations == original.annotations
        for a, b in zip(original.spiketrains, loaded.spiketrains):
            np.testing.assert_array_equal(a.magnitude, b.magnitude)
            assert a.units == b.units and a.t_start == b.t_start and a.t_stop == b.t_stop
    annotations = read.segments[0].spiketrains[0].annotations
    assert annotations == {"unit": "unit 0", "quality": "good", "snr": 4.5, "channel_id": 3}
    assert read.groups[1].spiketrains[2] is read.segments[2].spiketrains[1]
    np.testing.assert_array_equal(bin_spiketrains(read, BIN).counts, bin_spiketrains(block, BIN).counts)


def test_write_is_atomic(rng, tmp_path, monkeypatch):
    path = tmp_path / "recording.mat"
    write_recording(make_block(rng), path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(neo.io.NeoMatlabIO, "write_block", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_recording(make_block(rng), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recording.mat"]


def test_pickle_only_when_asked(rng, tmp_path):
    block = make_block(rng)
    path = tmp_path / "recording.pkl"
    with pytest.raises(ValueError, match=r"runs code.*allow_pickle=True"):
        write_recording(block, path)
    write_recording(block, path, allow_pickle=True)
    with pytest.raises(ValueError, match="refuses it by default"):
        read_recording(path)
    with pytest.raises(ValueError, match="refuses it by default"):
        read_recording(path, format="pickle")
    read = read_recording(path, allow_pickle=True)
    assert len(read.segments) == 4


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_recording(tmp_path / "absent.mat")
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"this is not a MATLAB file")
    with pytest.raises(ValueError, match=r"could not read.*damaged"):
        read_recording(broken)
    unknown = tmp_path / "notes.xyz123"
    unknown.write_text("hello")
    with pytest.raises(ValueError, match="no reader"):
        read_recording(unknown)
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_recording(broken, format="csv")
    with pytest.raises(ValueError, match="cannot tell the format"):
        write_recording(neo.Block(), tmp_path / "out.xyz123")
    with pytest.raises(TypeError, match=r"writes a neo\.Block"):
        write_recording(neo.Segment(), tmp_path / "out.mat")


def test_mat_without_block_variable(tmp_path):
    import scipy.io

    path = tmp_path / "plain.mat"
    scipy.io.savemat(path, {"x": np.arange(3)})
    with pytest.raises(ValueError, match="found no Block"):
        read_recording(path)


@pytest.mark.parametrize(("format", "module", "extra"), [("nix", "nixio", "nix"), ("nwb", "pynwb", "nwb")])
def test_missing_extra_names_it(rng, tmp_path, monkeypatch, format, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ImportError, match=rf"pip install 'spikedict\[{extra}\]'"):
        write_recording(make_block(rng), tmp_path / f"recording.{format}")
    (tmp_path / f"recording.{format}").write_bytes(b"")
    with pytest.raises(ImportError, match=rf"spikedict\[{extra}\]"):
        read_recording(tmp_path / f"recording.{format}")


@pytest.mark.skipif(importlib.util.find_spec("nixio") is None, reason="the nix extra is not installed")
def test_nix_round_trip(rng, tmp_path):
    block = make_block(rng)
    write_recording(block, tmp_path / "recording.nix")
    read = read_recording(tmp_path / "recording.nix")
    np.testing.assert_array_equal(bin_spiketrains(read, BIN).counts, bin_spiketrains(block, BIN).counts)
    assert read.segments[1].annotations["condition"] == "b"


@pytest.mark.skipif(importlib.util.find_spec("pynwb") is None, reason="the nwb extra is not installed")
def test_nwb_round_trip(rng, tmp_path):
    block = make_block(rng)
    assert "session_start_time" not in block.annotations
    write_recording(block, tmp_path / "recording.nwb")
    assert "session_start_time" not in block.annotations  # the defaults NWB needs are not left on the block
    read = read_recording(tmp_path / "recording.nwb")
    np.testing.assert_array_equal(bin_spiketrains(read, BIN).counts, bin_spiketrains(block, BIN).counts)


# ---------------------------------------------------------------------------- shipped data
def test_list_and_load_shipped_data():
    assert set(list_datasets()) == {"paper-binomial", "locust", "motoneurone", "stn", "songbird"}
    locust = load_dataset("locust")
    assert [len(s.spiketrains[0]) for s in locust.segments] == [929, 868]
    assert locust.segments[1].annotations["cutoff_frequency"] == 800 * pq.Hz
    assert "Rokem" in locust.annotations["citation"] and "BSD" in locust.annotations["licence"]
    assert locust.segments[0].analogsignals[0].shape == (200000, 1)
    counts = bin_spiketrains(locust, locust.annotations["bin_size"])
    assert counts.counts.shape == (2, 1, 10000) and counts.counts.sum() == 929 + 868


def test_paper_binomial_matches_its_ground_truth():
    from spikedict.io._simulated import ground_truth
    from spikedict.simulate import paper_templates

    block = load_dataset("paper-binomial")
    truth = block.annotations
    np.testing.assert_allclose(ground_truth(block)["templates"], paper_templates(50))
    counts = bin_spiketrains(block, truth["bin_size"], group_by="example")
    assert counts.counts.shape == (20, 1, 1000)
    np.testing.assert_array_equal(counts.n_trials, np.full(20, 30))
    codes = ground_truth(block)["codes"]
    assert codes.shape == (20, 3, 951)
    # The counts follow the stored ground truth: about 12% of trial-bins spike at the baseline (sigmoid(-2)).
    quiet = np.ones((20, 1000), dtype=bool)
    for n, _, position in zip(*np.nonzero(codes)):
        quiet[n, position : position + 50] = False
    rate = counts.counts[:, 0][quiet].mean() / 30
    assert abs(rate - 1 / (1 + np.exp(2.0))) < 0.005, rate


def test_missing_data_folder_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEDICT_DATA", os.fspath(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install -e \.|make_datasets"):
        load_dataset("locust")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import spikedict, spikedict.io, sys; print('elephant' in sys.modules, 'neo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_example_labels_are_a_dataframe(rng):
    counts = bin_spiketrains(make_block(rng), BIN)
    assert isinstance(counts.example_labels, pd.DataFrame)
    assert list(counts.example_labels["stimulus_level"]) == [0.0, 1.5, 3.0, 4.5]
