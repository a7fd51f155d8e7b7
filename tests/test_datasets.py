"""The recorded data sets shipped in data/: they load offline with the stated trials, units and spikes, their
spike times and annotations are sound, binning keeps every spike, and ``spikedict info NAME`` prints them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import quantities as pq

from spikedict.cli import main
from spikedict.io import bin_spiketrains, list_datasets, load_dataset
from spikedict.io._datasets import data_directory
from spikedict.workflow import DATASET_DEFAULTS, open_recording, split_examples


@dataclass(frozen=True)
class Expected:
    n_trials: int
    units: tuple[str, ...]
    n_spikes: int
    t_start: pq.Quantity
    t_stop: pq.Quantity
    n_bins: int  # at the data set's default bin size


EXPECTED = {
    "motoneurone": Expected(469, ("motoneurone",), 1930, -250 * pq.ms, 250 * pq.ms, 250),
    "stn": Expected(50, ("stn",), 4696, -1000 * pq.ms, 1000 * pq.ms, 400),
    # 74 of the ids 1 to 75 (9 is absent); the segment spans the source's 666 steps of 1/30 s centred on them.
    "songbird": Expected(
        1,
        tuple(f"neuron {i}" for i in range(1, 76) if i != 9),
        3336,
        pq.Quantity(1 / 60, "s"),
        pq.Quantity(22.2 + 1 / 60, "s"),
        666,
    ),
}
NAMES = list(EXPECTED)


@cache
def dataset(name: str):
    """Each file is read once per test session (the motoneurone's 469 segments take ~0.5 s)."""
    return load_dataset(name)


def _trains(name: str):
    return [train for segment in dataset(name).segments for train in segment.spiketrains]


def test_listed_with_a_one_line_description():
    listed = list_datasets()
    for name in NAMES:
        assert name in listed and listed[name] and "\n" not in listed[name]
        assert name in DATASET_DEFAULTS


@pytest.mark.parametrize("name", NAMES)
def test_trials_units_and_spikes(name):
    block, expected = dataset(name), EXPECTED[name]
    assert block.name == name
    assert len(block.segments) == expected.n_trials
    assert tuple(group.name for group in block.groups) == expected.units
    for group in block.groups:
        assert group.annotations["unit"] == group.name and len(group.spiketrains) == expected.n_trials
    for segment in block.segments:
        assert [train.annotations["unit"] for train in segment.spiketrains] == list(expected.units)
        assert [train.name for train in segment.spiketrains] == list(expected.units)
    assert sum(len(train) for train in _trains(name)) == expected.n_spikes
    assert block.description
    for key in ("source", "licence", "citation", "bin_size"):
        assert block.annotations[key]


@pytest.mark.parametrize("name", NAMES)
def test_spike_times_sorted_inside_their_trial(name):
    expected = EXPECTED[name]
    for train in _trains(name):
        # Negative t_start (trials aligned to the stimulus or GO cue) survives the MAT round trip.
        assert abs(float((train.t_start - expected.t_start).rescale(pq.s).magnitude)) < 1e-12
        assert abs(float((train.t_stop - expected.t_stop).rescale(pq.s).magnitude)) < 1e-12
        times = train.rescale(pq.s).magnitude
        assert np.all(np.diff(times) > 0)
        if len(times):
            assert times[0] >= float(train.t_start.rescale(pq.s)) and times[-1] < float(train.t_stop.rescale(pq.s))


@pytest.mark.parametrize("name", NAMES)
def test_default_binning_keeps_every_spike(name):
    expected, bin_size = EXPECTED[name], DATASET_DEFAULTS[name].bin_size
    counts = bin_spiketrains(dataset(name), bin_size)
    assert counts.counts.shape == (expected.n_trials, len(expected.units), expected.n_bins)
    assert counts.counts.sum() == expected.n_spikes
    assert list(counts.channel_names) == list(expected.units)


@pytest.mark.parametrize("name", NAMES)
def test_fit_defaults_make_examples(name):
    block, label, defaults = open_recording(name)
    assert label == name and defaults == DATASET_DEFAULTS[name]
    assert isinstance(defaults.template_size, int)
    counts = bin_spiketrains(block, defaults.bin_size, group_by=defaults.group_by)
    if defaults.example_duration is not None:
        n_bins = float((defaults.example_duration / defaults.bin_size).simplified)
        counts = split_examples(counts, round(n_bins))
    assert counts.n_bins >= 2 * defaults.template_size and counts.n_examples >= 10


def test_motoneurone_trials_and_evoked_response():
    block = dataset("motoneurone")
    assert [segment.annotations["trial"] for segment in block.segments] == list(range(469))
    for segment in block.segments:
        assert segment.annotations["stimulus_time"] == 0 * pq.ms
        assert segment.annotations["stimulus"] == "magnetic stimulation"
    spikes_per_trial = [len(segment.spiketrains[0]) for segment in block.segments]
    assert min(spikes_per_trial) == 2 and max(spikes_per_trial) == 6
    # The evoked peak (README of the recordings): the 10 ms bin after the stimulus with the most spikes is
    # +20 to +30 ms, with 163 spikes.
    pooled = bin_spiketrains(block, 10 * pq.ms, group_by="stimulus")
    assert pooled.n_trials.tolist() == [469]
    peak = int(np.argmax(pooled.counts[0, 0]))
    assert -250 + 10 * peak == 20 and pooled.counts[0, 0, peak] == 163


def test_stn_trials_and_directions():
    block = dataset("stn")
    assert [segment.annotations["trial"] for segment in block.segments] == list(range(50))
    directions = [segment.annotations["direction"] for segment in block.segments]
    assert directions.count("left") == 25 and directions.count("right") == 25
    assert directions[:4] == ["left", "right", "right", "right"]  # direction 0, 1, 1, 1 in the source
    spikes = {"left": 0, "right": 0}
    for segment, direction in zip(block.segments, directions):
        assert segment.annotations["go_cue_time"] == 0 * pq.ms
        spikes[direction] += len(segment.spiketrains[0])
    assert spikes == {"left": 2933, "right": 1763}
    # Spikes sit on the 1 ms samples of the source.
    times = np.concatenate([train.rescale(pq.ms).magnitude for train in _trains("stn")])
    np.testing.assert_array_equal(times, np.round(times))
    # Pooled by direction (binomial counts at the source's 1 ms resolution): two examples of 25 trials.
    pooled = bin_spiketrains(block, 1 * pq.ms, group_by="direction")
    assert pooled.n_trials.tolist() == [25, 25] and pooled.counts.sum() == 4696


def test_songbird_units_by_neuron_id():
    block = dataset("songbird")
    segment = block.segments[0]
    for train in segment.spiketrains:
        assert train.name == f"neuron {train.annotations['neuron_id']}"
    per_neuron = [len(train) for train in segment.spiketrains]
    assert min(per_neuron) == 1 and max(per_neuron) == 182
    # Every spike is a multiple of 1/30 s, in the middle of its default bin.
    times = np.concatenate([train.rescale(pq.s).magnitude for train in segment.spiketrains])
    np.testing.assert_allclose(times * 30, np.round(times * 30), atol=1e-9)
    assert float(times.max()) == pytest.approx(22.2)


@pytest.mark.parametrize(("name", "licence"), [("stn", "LICENSE-kramer-eden.txt"), ("songbird", "LICENSE-ppseq.txt")])
def test_mit_licence_shipped_beside_the_file(name, licence):
    text = (data_directory() / licence).read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text
    assert licence in dataset(name).annotations["licence"]


@pytest.mark.parametrize("name", NAMES)
def test_info_prints(name, capsys):
    assert main(["info", name]) == 0
    printed = capsys.readouterr().out
    expected = EXPECTED[name]
    assert printed.startswith(f"{name} ({list_datasets()[name]})")
    assert f"trials (segments): {expected.n_trials}," in printed
    assert f"units: {len(expected.units)}, spikes: {expected.n_spikes}" in printed
    assert f"bin size {DATASET_DEFAULTS[name].bin_size}" in printed
