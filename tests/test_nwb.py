"""NWB files: the field's layout (units and trials tables) read as aligned trials, and blocks written and read back."""

from __future__ import annotations

import datetime
import warnings

import neo
import numpy as np
import pandas as pd
import pytest
import quantities as pq

from spikedict.io import bin_spiketrains, read_nwb, read_recording, write_recording

pynwb = pytest.importorskip("pynwb")

SESSION_START = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.timezone.utc)
UNIT_IDS = (10, 11, 12)
DIRECTIONS = ("left", "right", "left", "left", "right", "left")
TRIAL_LENGTH = 2.0  # s


def nwb_file(**fields) -> pynwb.NWBFile:
    return pynwb.NWBFile(
        session_description="a session", identifier="session-1", session_start_time=SESSION_START, **fields
    )


def spike_times(rng: np.random.Generator, duration: float, rate: float) -> np.ndarray:
    """A train with a 3 ms refractory period, so that no trial spikes twice in a 1 ms bin."""
    intervals = 0.003 + rng.exponential(1.0 / rate, int(3 * duration * rate) + 10)
    times = np.cumsum(intervals)
    return times[times < duration]


def write_session(path, rng, *, unit_names=None, go_cues=None) -> dict:
    """A file in the layout of the field (DANDI): 3 units over the session, 6 trials of 2 s with a go cue."""
    nwbfile = nwb_file()
    starts = 3.0 * np.arange(len(DIRECTIONS)) + 0.25
    go_cues = starts + rng.uniform(0.5, 1.0, len(starts)) if go_cues is None else np.asarray(go_cues)
    nwbfile.add_trial_column("go_cue_time", "time of the go cue (s)")
    nwbfile.add_trial_column("direction", "direction of the movement")
    for start, go, direction in zip(starts, go_cues, DIRECTIONS):
        nwbfile.add_trial(start_time=start, stop_time=start + TRIAL_LENGTH, go_cue_time=go, direction=direction)
    spikes = [spike_times(rng, 20.0, rate) for rate in (20.0, 35.0, 50.0)]
    if unit_names is not None:
        nwbfile.add_unit_column("unit_name", "the unit's name")
    nwbfile.add_unit_column("quality", "sorting quality")
    for u, (unit_id, times) in enumerate(zip(UNIT_IDS, spikes)):
        extra = {"unit_name": unit_names[u]} if unit_names is not None else {}
        nwbfile.add_unit(spike_times=times, id=unit_id, quality=["good", "mua", "good"][u], **extra)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return {"starts": starts, "go_cues": go_cues, "spikes": spikes}


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def session(tmp_path, rng):
    path = tmp_path / "session.nwb"
    return path, write_session(path, rng)


def expected_spikes(times: np.ndarray, zero: float, before: float, after: float) -> np.ndarray:
    relative = times - zero
    return relative[(relative >= before) & (relative <= after)]


# ------------------------------------------------------------------------------------- the field's layout
def test_trials_aligned_to_a_column_hold_exactly_the_spikes_of_their_window(session):
    path, truth = session
    block = read_nwb(path, align_to="go_cue_time", window=(-500 * pq.ms, 1.0 * pq.s))
    assert len(block.segments) == 6 and [group.name for group in block.groups] == ["10", "11", "12"]
    for n, segment in enumerate(block.segments):
        go = truth["go_cues"][n]
        assert segment.annotations["direction"] == DIRECTIONS[n] and segment.annotations["trial"] == n
        assert segment.annotations["go_cue_time"] == pytest.approx(go)
        assert segment.annotations["align_time"] == go * pq.s
        for u, train in enumerate(segment.spiketrains):
            assert train.t_start == -0.5 * pq.s and train.t_stop == 1.0 * pq.s
            assert train.annotations["unit_id"] == UNIT_IDS[u]
            assert any(train is member for member in block.groups[u].spiketrains)
            np.testing.assert_allclose(train.magnitude, expected_spikes(truth["spikes"][u], go, -0.5, 1.0), atol=1e-12)
            assert train.units == pq.s
    assert block.groups[1].annotations == {"quality": "mua", "unit": "11", "unit_id": 11}
    assert block.rec_datetime == SESSION_START and block.annotations["align_to"] == "go_cue_time"
    assert block.annotations["nwb_identifier"] == "session-1"


def test_default_alignment_is_the_trial_start_and_window_the_whole_trial(session):
    path, truth = session
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trials of one length are not cut: no warning
        block = read_nwb(path)
    for n, segment in enumerate(block.segments):
        start = truth["starts"][n]
        assert segment.spiketrains[0].t_start == 0 * pq.s
        assert float(segment.spiketrains[0].t_stop.magnitude) == pytest.approx(TRIAL_LENGTH)
        for u, train in enumerate(segment.spiketrains):
            expected = expected_spikes(truth["spikes"][u], start, 0.0, float(train.t_stop.magnitude))
            np.testing.assert_allclose(train.magnitude, expected, atol=1e-12)


def test_trials_of_different_lengths_around_the_alignment_are_cut_to_the_common_window_with_a_warning(session):
    path, truth = session
    with pytest.warns(UserWarning, match=r"cut to the window common to all"):
        block = read_nwb(path, align_to="go_cue_time")
    before = float(np.max(truth["starts"] - truth["go_cues"]))
    after = float(np.min(truth["starts"] + TRIAL_LENGTH - truth["go_cues"]))
    for n, segment in enumerate(block.segments):
        for u, train in enumerate(segment.spiketrains):
            assert float(train.t_start.magnitude) == pytest.approx(before)
            assert float(train.t_stop.magnitude) == pytest.approx(after)
            expected = expected_spikes(truth["spikes"][u], truth["go_cues"][n], before, after)
            np.testing.assert_allclose(train.magnitude, expected, atol=1e-12)


def test_conditions_pool_trials_with_group_by(session):
    path, truth = session
    block = read_nwb(path, align_to="go_cue_time", window=(-0.5 * pq.s, 1.0 * pq.s))
    counts = bin_spiketrains(block, 1 * pq.ms, group_by="direction")
    assert counts.counts.shape == (2, 3, 1500) and counts.channel_names == ["10", "11", "12"]
    assert counts.example_labels["direction"].tolist() == ["left", "right"]
    np.testing.assert_array_equal(counts.n_trials, [4, 2])
    edges = np.linspace(-0.5, 1.0, 1501)
    for example, direction in enumerate(("left", "right")):
        for u in range(3):
            expected = sum(
                np.histogram(expected_spikes(truth["spikes"][u], truth["go_cues"][n], -0.5, 1.0), edges)[0]
                for n in range(6)
                if DIRECTIONS[n] == direction
            )
            np.testing.assert_array_equal(counts.counts[example, u], expected)


def test_units_are_selected_by_id_or_name_and_named_by_their_column(tmp_path, rng):
    path = tmp_path / "named.nwb"
    truth = write_session(path, rng, unit_names=["alpha", "beta", "gamma"])
    block = read_nwb(path, units=[12, 10])
    assert [group.name for group in block.groups] == ["gamma", "alpha"]
    assert [train.annotations["unit_id"] for train in block.segments[2].spiketrains] == [12, 10]
    start = truth["starts"][2]
    np.testing.assert_allclose(
        block.segments[2].spiketrains[0].magnitude,
        expected_spikes(truth["spikes"][2], start, 0.0, TRIAL_LENGTH),
        atol=1e-12,
    )
    assert [group.name for group in read_nwb(path, units="beta").groups] == ["beta"]
    with pytest.raises(ValueError, match=r"does not have; its ids are \[10, 11, 12\]"):
        read_nwb(path, units=[10, 99])
    with pytest.raises(TypeError, match="by id"):
        read_nwb(path, units=[1.5])


def test_trials_without_the_alignment_time_are_left_out_with_a_warning(tmp_path, rng):
    path = tmp_path / "aborted.nwb"
    go_cues = 3.0 * np.arange(6) + 1.0
    go_cues[[1, 4]] = np.nan
    write_session(path, rng, go_cues=go_cues)
    with pytest.warns(UserWarning, match=r"2 of 6 trial\(s\) have no go_cue_time"):
        block = read_nwb(path, align_to="go_cue_time", window=(-0.5 * pq.s, 0.5 * pq.s))
    assert [segment.annotations["trial"] for segment in block.segments] == [0, 2, 3, 5]


def test_a_file_without_trials_is_one_segment_from_zero_to_the_last_spike(tmp_path, rng):
    path = tmp_path / "recording.nwb"
    nwbfile = nwb_file()
    spikes = [spike_times(rng, 10.0, 5.0) + 0.5, spike_times(rng, 10.0, 8.0)]
    for times in spikes:
        nwbfile.add_unit(spike_times=times)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    block = read_nwb(path)
    (segment,) = block.segments
    last = max(times[-1] for times in spikes)
    for train, times in zip(segment.spiketrains, spikes):
        assert train.t_start == 0 * pq.s and float(train.t_stop.magnitude) == last
        np.testing.assert_array_equal(train.magnitude, times)
    part = read_nwb(path, window=(2 * pq.s, 4 * pq.s))
    np.testing.assert_array_equal(part.segments[0].spiketrains[1].magnitude, expected_spikes(spikes[1], 0, 2, 4))
    with pytest.raises(ValueError, match="has no trials table"):
        read_nwb(path, align_to="go_cue_time")
    assert [group.name for group in read_recording(path).groups] == ["0", "1"]  # read_recording dispatches here


# ------------------------------------------------------------------------------------------------- errors
def test_errors_say_what_was_expected_what_came_and_how_to_fix_it(session, tmp_path):
    path, _ = session
    with pytest.raises(ValueError, match=r"not a column of the trials table.*\['start_time', 'stop_time', "):
        read_nwb(path, align_to="stimulus_time")
    with pytest.raises(ValueError, match=r"names a trials column of .* not times"):
        read_nwb(path, align_to="direction")
    with pytest.raises(ValueError, match=r"reaches outside 6 trial\(s\).*the common one is"):
        read_nwb(path, align_to="go_cue_time", window=(-2 * pq.s, 1 * pq.s))
    with pytest.raises(TypeError, match=r"must be a time with units.*window=\(-0.5 \* quantities.s"):
        read_nwb(path, window=(-0.5, 1.5))
    with pytest.raises(ValueError, match=r"must be a time \(units convertible to seconds\), got units 'mV'"):
        read_nwb(path, window=(0 * pq.mV, 1 * pq.mV))
    with pytest.raises(ValueError, match="must end after it starts"):
        read_nwb(path, window=(1 * pq.s, 0 * pq.s))
    with pytest.raises(TypeError, match=r"window must be \(before, after\)"):
        read_nwb(path, window=1 * pq.s)
    with pytest.raises(TypeError, match="align_to names a column"):
        read_nwb(path, align_to=3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_nwb(tmp_path / "absent.nwb")
    broken = tmp_path / "broken.nwb"
    broken.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match="pynwb could not read"):
        read_nwb(broken)


def test_a_file_without_units_table_is_refused_and_left_to_neo(tmp_path):
    path = tmp_path / "trials-only.nwb"
    nwbfile = nwb_file()
    nwbfile.add_trial(start_time=0.0, stop_time=1.0)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    with pytest.raises(ValueError, match=r"has no units table.*neo's reader for NWB files without a units table"):
        read_nwb(path)


def test_a_file_written_by_neo_is_read_by_neo(tmp_path, rng):
    block = neo.Block(name="old", session_start_time=SESSION_START, identifier="x", session_description="old")
    for n in range(2):
        segment = neo.Segment(name=f"segment {n}")
        segment.spiketrains.append(neo.SpikeTrain(np.sort(rng.uniform(0, 1, 5)) * pq.s, t_stop=1 * pq.s))
        block.segments.append(segment)
    path = tmp_path / "neo.nwb"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="neo.io.nwbio")
        neo.io.NWBIO(str(path), mode="w").write_all_blocks([block])
    with pytest.raises(ValueError, match=r"written by neo's NWBIO.*read_recording"):
        read_nwb(path)
    read = read_recording(path)
    counts = bin_spiketrains(read, 10 * pq.ms)
    np.testing.assert_array_equal(counts.counts, bin_spiketrains(block, 10 * pq.ms).counts)


# ---------------------------------------------------------------------------------- written and read back
def small_study():
    from spikedict.simulate import simulate_spikes

    return simulate_spikes(n_examples=3, n_bins=200, n_trials=5, template_size=20, seed=7)


def test_a_simulated_study_reads_back_with_its_trials_and_ground_truth(tmp_path):
    from spikedict.io._simulated import ground_truth
    from spikedict.workflow import open_recording

    simulation = small_study()
    write_recording(simulation.block, tmp_path / "study.nwb")
    write_recording(simulation.block, tmp_path / "study.mat")
    from_nwb, from_mat = read_recording(tmp_path / "study.nwb"), read_recording(tmp_path / "study.mat")
    bin_size = from_nwb.annotations["bin_size"]
    assert bin_size == 1 * pq.ms
    counts = bin_spiketrains(from_nwb, bin_size, group_by="example")
    np.testing.assert_array_equal(counts.counts, bin_spiketrains(from_mat, bin_size, group_by="example").counts)
    np.testing.assert_array_equal(counts.counts, simulation.counts.counts)
    np.testing.assert_array_equal(counts.n_trials, [5, 5, 5])
    truth = ground_truth(from_nwb)
    np.testing.assert_array_equal(truth["templates"], simulation.templates)
    np.testing.assert_array_equal(truth["codes"], simulation.codes)
    assert [s.annotations for s in from_nwb.segments] == [s.annotations for s in simulation.block.segments]
    for written, read in zip(simulation.block.segments, from_nwb.segments):
        for a, b in zip(written.spiketrains, read.spiketrains):
            assert b.units == a.units and b.t_start == a.t_start and b.t_stop == a.t_stop
            assert b.annotations == a.annotations and b.name == a.name
            np.testing.assert_allclose(b.magnitude, a.magnitude, rtol=0, atol=1e-9)
    _, _, defaults = open_recording(tmp_path / "study.nwb")
    assert defaults.family == "binomial" and defaults.group_by == "example" and defaults.template_size == 20


def test_the_written_file_has_the_fields_layout_for_other_tools(tmp_path):
    simulation = small_study()
    path = tmp_path / "study.nwb"
    write_recording(simulation.block, path)
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        trials = nwbfile.trials.to_dataframe()
        assert len(nwbfile.units) == 1 and nwbfile.units["unit_name"][0] == "unit 0"
        n_spikes = len(nwbfile.units["spike_times"][0])
    assert trials["example"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert trials["trial"].tolist() == [0, 1, 2, 3, 4] * 3
    np.testing.assert_allclose(trials["stop_time"] - trials["start_time"], 0.2)
    assert (trials["start_time"].to_numpy()[1:] > trials["stop_time"].to_numpy()[:-1]).all()  # no overlap
    assert n_spikes == sum(len(s.spiketrains[0]) for s in simulation.block.segments)
    # The same file read as one from the field: trials aligned to their start, conditions from the columns.
    block = read_nwb(path, align_to="start_time")
    counts = bin_spiketrains(block, 1 * pq.ms, group_by="example")
    np.testing.assert_array_equal(counts.counts, simulation.counts.counts)
    assert block.annotations["family"] == "binomial"  # the Block's annotations come along


def test_blocks_with_signals_events_and_uneven_segments_come_back_as_written(tmp_path, rng):
    block = neo.Block(name="mixed", description="a test", experimenter="someone", started=SESSION_START)
    block.annotate(shape=np.arange(6).reshape(2, 3), pair=(1, "a"), nested={"gain": 2.5 * pq.mV, "ok": True})
    lengths = (150.0, 80.0, 120.0)  # ms
    units = [neo.Group(name=f"cell {u}", depth=100 * u) for u in range(2)]
    for n, length in enumerate(lengths):
        segment = neo.Segment(name=f"trial {n}", condition="ab"[n % 2], level=n * 0.5, contrast=n * 10 * pq.percent)
        t_start = -50.0 if n == 1 else 0.0
        for u in range(2):
            times = np.sort(rng.uniform(t_start, length, 8 + u))
            train = neo.SpikeTrain(times * pq.ms, t_start=t_start * pq.ms, t_stop=length * pq.ms, name=f"c{u}")
            segment.spiketrains.append(train)
            units[u].add(train)
        stray = neo.SpikeTrain([1.0, 2.0] * pq.ms, t_start=0 * pq.ms, t_stop=3 * pq.ms, kind="ungrouped")
        segment.spiketrains.append(stray)
        signal = neo.AnalogSignal(rng.normal(size=(30, 2)), units="mV", sampling_rate=1 * pq.kHz, probe=n)
        segment.analogsignals.append(signal)
        segment.events.append(neo.Event([5.0, 9.0] * pq.ms, labels=np.array(["go", "stop"]), name="markers"))
        segment.epochs.append(neo.Epoch([1.0] * pq.ms, durations=[2.0] * pq.ms, labels=np.array(["cue"])))
        block.segments.append(segment)
    block.groups.extend(units)
    block.check_relationships()
    path = tmp_path / "mixed.nwb"
    write_recording(block, path)
    read = read_recording(path)
    assert read.name == "mixed" and read.description == "a test"
    assert read.annotations["started"] == SESSION_START and read.annotations["pair"] == (1, "a")
    np.testing.assert_array_equal(read.annotations["shape"], block.annotations["shape"])
    assert read.annotations["nested"]["gain"] == 2.5 * pq.mV and read.annotations["nested"]["ok"] is True
    assert [group.name for group in read.groups] == ["cell 0", "cell 1"] and read.groups[1].annotations["depth"] == 100
    for written, back in zip(block.segments, read.segments):
        assert back.name == written.name and back.annotations == written.annotations
        for a, b in zip(written.spiketrains, back.spiketrains):
            assert (b.t_start, b.t_stop, b.name, b.annotations) == (a.t_start, a.t_stop, a.name, a.annotations)
            np.testing.assert_allclose(b.magnitude, a.magnitude, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(back.analogsignals[0].magnitude, written.analogsignals[0].magnitude)
        assert (
            back.analogsignals[0].sampling_rate == 1 * pq.kHz
            and back.analogsignals[0].annotations["probe"] == (written.analogsignals[0].annotations["probe"])
        )
        np.testing.assert_array_equal(back.events[0].labels, ["go", "stop"])
        assert back.epochs[0].durations == written.epochs[0].durations
    for group, written in zip(read.groups, units):
        assert [train.segment.name for train in group.spiketrains] == [t.segment.name for t in written.spiketrains]
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        trials = io.read().trials.to_dataframe()
    assert trials["condition"].tolist() == ["a", "b", "a"] and trials["contrast"].tolist() == [0.0, 10.0, 20.0]
    np.testing.assert_allclose(trials["stop_time"] - trials["start_time"], [0.15, 0.13, 0.12])


def test_an_annotation_nwb_cannot_hold_is_refused_and_the_old_file_kept(tmp_path, rng):
    def make_block() -> neo.Block:
        block = neo.Block()
        for n in range(2):
            segment = neo.Segment(condition="ab"[n])
            segment.spiketrains.append(neo.SpikeTrain(np.sort(rng.uniform(0, 1, 5)) * pq.s, t_stop=1 * pq.s))
            block.segments.append(segment)
        return block

    path = tmp_path / "recording.nwb"
    write_recording(make_block(), path)
    before = path.read_bytes()
    bad = make_block()
    bad.segments[1].annotate(impedance=complex(1.0, 2.0))
    with pytest.raises(TypeError, match=r"annotation 'impedance' of segment 1 holds complex .*Convert it"):
        write_recording(bad, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["recording.nwb"]


def test_the_format_can_be_named_for_another_extension(tmp_path):
    simulation = small_study()
    write_recording(simulation.block, tmp_path / "study.h5", format="nwb")
    read = read_recording(tmp_path / "study.h5", format="nwb")
    np.testing.assert_array_equal(bin_spiketrains(read, 1 * pq.ms, group_by="example").counts, simulation.counts.counts)


# ------------------------------------------------------------------------------------------ command line
TINY_FIT = ["--n-epochs", "1", "--set", "encoder__n_iterations=20", "--quiet"]


def test_simulate_then_fit_a_study_written_as_nwb(tmp_path, monkeypatch, capsys):
    from spikedict.cli import main

    monkeypatch.chdir(tmp_path)
    simulate = ["simulate", "--out", "study.nwb", "--n-examples", "3", "--n-bins", "200", "--n-trials", "5"]
    assert main([*simulate, "--template-size", "20", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["fit", "study.nwb", "--out", "fitted", "--heldout", "0", *TINY_FIT]) == 0
    printed = capsys.readouterr()
    assert "pooling trials by 'example'" in printed.err and "mean_template_error" in printed.out
    summary = pd.read_csv(tmp_path / "fitted" / "summary.csv")
    assert summary.loc[0, "family"] == "binomial" and summary.loc[0, "n_examples"] == 3
    assert 0 <= summary.loc[0, "mean_template_error"] <= 1


def test_fit_a_session_from_the_field_pooled_by_a_condition(tmp_path, rng, monkeypatch, capsys):
    from spikedict.cli import main

    monkeypatch.chdir(tmp_path)
    write_session(tmp_path / "session.nwb", rng)
    command = ["fit", "session.nwb", "--out", "fitted", "--group-by", "direction", "--bin-size", "1ms"]
    assert main([*command, "--template-size", "20", "--heldout", "0", *TINY_FIT]) == 0
    assert "6 trials in bins of 1.0 ms, pooling trials by 'direction'" in capsys.readouterr().err
    summary = pd.read_csv(tmp_path / "fitted" / "summary.csv")
    assert summary.loc[0, "family"] == "binomial" and summary.loc[0, "n_examples"] == 2


def test_fit_a_session_aligned_to_its_go_cue_from_the_command_line(tmp_path, rng, monkeypatch, capsys):
    from spikedict.cli import main

    monkeypatch.chdir(tmp_path)
    written = write_session(tmp_path / "session.nwb", rng)
    command = ["fit", "session.nwb", "--out", "fitted", "--align-to", "go_cue_time", "--trial-window", "-400ms", "1s"]
    assert main([*command, "--bin-size", "2ms", "--template-size", "20", "--no-check", *TINY_FIT]) == 0
    summary = pd.read_csv(tmp_path / "fitted" / "summary.csv")
    assert summary.loc[0, ["n_examples", "n_heldout_examples", "n_bins"]].tolist() == [5, 1, 700]
    settings = (tmp_path / "fitted" / "settings.json").read_text()
    assert "go_cue_time" in settings
    first = written["spikes"][0]
    go = written["go_cues"][0]
    expected = int(np.sum((first >= go - 0.4) & (first < go + 1.0)))
    from spikedict.io import bin_spiketrains, read_nwb

    block = read_nwb(tmp_path / "session.nwb", align_to="go_cue_time", window=(-0.4 * pq.s, 1.0 * pq.s))
    assert int(bin_spiketrains(block, 2 * pq.ms).counts[0, 0].sum()) == expected
    capsys.readouterr()
    assert main(["fit", "locust", "--out", "other", "--align-to", "go_cue_time", *TINY_FIT]) == 1
    assert "not one. Leave them out for other recordings" in capsys.readouterr().err
