"""Long recordings streamed as windows: exact binning, seamless stitching, and a fit bounded by the batch."""

from __future__ import annotations

import neo
import numpy as np
import pytest
import quantities as pq
import torch
from conftest import NEEDS_NIX, NEEDS_NWB

from spikedict import SpikeDictionary
from spikedict.io import RecordingWindows, bin_spiketrains, read_recording, write_recording
from spikedict.io._windows import stitch_cuts
from spikedict.settings import Encoder
from spikedict.simulate import simulate_spikes
from spikedict.solvers import EM, Alternating, Backprop


@pytest.fixture(scope="module")
def recording():
    """One Poisson recording of 3 units, 12 s in 1 ms bins, from 3 known templates of 30 bins."""
    templates = np.random.default_rng(0).normal(size=(3, 3, 30))
    templates /= np.linalg.norm(templates.reshape(3, -1), axis=1)[:, None, None]
    simulation = simulate_spikes(
        templates,
        n_examples=1,
        n_bins=12000,
        family="poisson",
        baseline=-1.5,
        amplitude_range=(2.0, 3.0),
        event_rate=0.004,
        seed=3,
    )
    return simulation.block.segments[0], templates


def edge_trains() -> list[neo.SpikeTrain]:
    """Spikes exactly on bin edges (and a float-rounded one just below an edge), in two different units."""
    times = np.array([0.0, 0.001, 0.0029999999999, 0.003, 0.0105, 0.02, 0.999, 0.999])
    return [
        neo.SpikeTrain(times * pq.s, t_stop=1 * pq.s, name="a"),
        neo.SpikeTrain(np.array([0.5, 1.0, 250.0, 999.9]) * pq.ms, t_stop=1000 * pq.ms, name="b"),
    ]


def test_windows_concatenate_to_elephants_binning():
    windows = RecordingWindows(edge_trains(), 1 * pq.ms, 100 * pq.ms, 10 * pq.ms)
    whole = bin_spiketrains(edge_trains(), 1 * pq.ms).counts
    assert np.array_equal(windows.counts(first_bin=0, n_bins=windows.n_bins), whole)
    # Every window is the matching stretch of the whole recording, the last one flush with its end.
    for k, start in enumerate(windows.starts):
        assert np.array_equal(windows.counts([k])[0], whole[0, :, start : start + 100])
    assert windows.starts[-1] == windows.n_bins - 100 and np.all(np.diff(windows.starts) <= 90)
    assert windows[[0, 3]].dtype == torch.get_default_dtype() and windows[[0, 3]].shape == (2, 2, 100)
    assert float(windows.max()) == whole.max()
    np.testing.assert_allclose(windows.mean_counts(), whole[0].mean(axis=1))


def test_stitch_cuts_tile_the_recording_from_the_middle_of_each_overlap():
    starts = np.array([0, 70, 140, 200])
    cuts = stitch_cuts(starts, 100, 300)
    assert cuts[0] == 0 and cuts[-1] == 300 and np.all(np.diff(cuts) > 0)
    # Each piece lies inside its window and as far from the window's edges as the overlap allows.
    for k, start in enumerate(starts):
        assert start <= cuts[k] and cuts[k + 1] <= start + 100
    assert cuts[1:-1].tolist() == [85, 155, 220]


@pytest.mark.parametrize(
    ("window", "overlap", "message"),
    [
        (2 * pq.s, 0.1 * pq.s, "longer than the recording"),
        (100 * pq.ms, 100 * pq.ms, "shorter than window"),
        (100.5 * pq.ms, 10 * pq.ms, "whole number of bins"),
        (100 * pq.Hz, 10 * pq.ms, "must be a time"),
        (100, 10 * pq.ms, "with units"),
    ],
)
def test_bad_windows_are_refused_with_a_fix(window, overlap, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RecordingWindows(edge_trains(), 1 * pq.ms, window, overlap)


def test_unsorted_or_multi_trial_input_is_refused():
    unsorted = [neo.SpikeTrain([0.5, 0.2] * pq.s, t_stop=1 * pq.s)]
    with pytest.raises(ValueError, match="not sorted"):
        RecordingWindows(unsorted, 1 * pq.ms, 100 * pq.ms, 10 * pq.ms)
    with pytest.raises(ValueError, match="one recording"):
        RecordingWindows([edge_trains(), edge_trains()], 1 * pq.ms, 100 * pq.ms, 10 * pq.ms)


@pytest.mark.parametrize("suffix", [pytest.param(".nwb", marks=NEEDS_NWB), pytest.param(".nix", marks=NEEDS_NIX)])
def test_windows_from_a_file_match_windows_in_memory(recording, tmp_path, suffix):
    segment, _ = recording
    block = neo.Block()
    block.segments.append(segment)
    path = tmp_path / f"recording{suffix}"
    write_recording(block, path)
    from_file = RecordingWindows.from_file(path, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    in_memory = RecordingWindows(read_recording(path), 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    assert from_file.shape == in_memory.shape == (7, 3, 2000)
    assert np.array_equal(from_file.counts(), in_memory.counts())
    assert int(from_file.n_spikes.sum()) == sum(len(train) for train in segment.spiketrains)


def streaming_model(**overrides) -> SpikeDictionary:
    """Back-propagation in batches of 2 windows; ``overrides`` may be nested (``solver__n_epochs=1``)."""
    model = SpikeDictionary(
        n_templates=3,
        template_size=30,
        family="poisson",
        solver=Backprop(n_epochs=3, batch_size=2, n_code_iterations=30),
        encoder=Encoder(n_iterations=400),
        baseline=-1.5,
        seed=0,
        progress=False,
        device="cpu",
    )
    return model.set_params(**overrides)


def test_a_streamed_fit_is_the_fit_of_the_same_windows_in_memory(recording, monkeypatch):
    segment, _ = recording
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    requested = []
    original = RecordingWindows.counts

    def counting(self, index=slice(None), first_bin=None, n_bins=None):
        result = original(self, index, first_bin, n_bins)
        requested.append(result.shape[0] * result.shape[2])
        return result

    monkeypatch.setattr(RecordingWindows, "counts", counting)
    streamed = streaming_model().fit(windows)
    in_memory = streaming_model().fit(windows.counts())
    np.testing.assert_allclose(streamed.templates_, in_memory.templates_, rtol=0, atol=1e-6)
    # Memory is bounded by the batch: apart from the seeded sample for initialisation (all 7 windows here),
    # no call binned more than the warm-up batch of windows.
    assert max(requested[1:]) <= 2 * 10 * 2000


def test_stitched_codes_and_rates_match_the_whole_recording(recording):
    segment, templates = recording
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    whole = windows.counts(first_bin=0, n_bins=windows.n_bins)
    model = streaming_model(init=templates, solver__n_epochs=1).fit(windows)
    codes, codes_whole = model.transform(windows), model.transform(whole)
    assert codes.shape == codes_whole.shape == (1, 3, windows.n_bins - 29)
    # The window boundaries move the codes by less than 1e-3 of the largest code ...
    assert np.abs(codes - codes_whole).max() <= 1e-3 * np.abs(codes_whole).max()
    rates, rates_whole = model.predict_rate(windows), model.predict_rate(whole)
    assert np.max(np.abs(rates - rates_whole) / rates_whole) <= 1e-3
    # ... and without the overlap that the stitching uses, they would move by far more.
    no_margin = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 29 * pq.ms)
    assert np.abs(model.transform(no_margin) - codes_whole).max() > 10 * np.abs(codes - codes_whole).max()
    assert model.score(windows) == pytest.approx(model.score(whole), rel=1e-5)
    out = np.empty(rates.shape, np.float32)
    assert model.predict_rate(windows, out=out) is out and np.allclose(out, rates)


def test_streaming_settings_that_cannot_work_are_refused(recording):
    segment, _ = recording
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 20 * pq.ms)
    with pytest.raises(ValueError, match="overlap"):
        streaming_model().fit(windows)
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    with pytest.raises(ValueError, match="family='poisson'"):
        streaming_model(family="binomial", n_trials=1).fit(windows)


def test_the_alternating_solver_fits_streamed_windows(recording):
    """The alternating solver streams too (it used to refuse RecordingWindows and ask for solver='backprop')."""
    segment, _ = recording
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    model = streaming_model(solver=Alternating(n_epochs=2, n_code_iterations=30)).fit(windows)
    assert model.solver_.name == "alternating" and model.stop_reason_ in ("n_epochs", "converged")
    assert model.templates_.shape == (3, 3, 30) and np.all(np.isfinite(model.templates_))
    assert model.history_["epoch"].tolist() == list(range(1, len(model.history_) + 1))
    assert model.transform(windows).shape == (1, 3, windows.n_bins - 29)


def test_the_default_solver_streams_windows_with_the_alternating_solver(recording):
    """solver="auto" is EM for counts in memory; EM does not stream, so a streamed fit takes the alternating solver,
    while a solver set to EM says what to use instead."""
    segment, _ = recording
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    model = streaming_model(solver="auto", encoder=Encoder(n_iterations=30))
    assert model._settings_of("solver").name == "em"
    model.fit(windows)
    assert model.solver_.name == "alternating" and 1 <= len(model.history_) <= model.solver_.n_epochs
    with pytest.raises(ValueError, match="use solver='alternating'"):
        streaming_model(solver=EM(n_epochs=1)).fit(windows)


def test_head_is_the_recording_up_to_its_last_window():
    windows = RecordingWindows(edge_trains(), 1 * pq.ms, 100 * pq.ms, 10 * pq.ms)
    head = windows.head(3)
    assert head.n_windows == 3 and head.n_bins == windows.starts[2] + 100
    assert np.array_equal(head.counts(), windows.counts([0, 1, 2]))
    np.testing.assert_allclose(head.mean_counts(), windows.counts(first_bin=0, n_bins=head.n_bins)[0].mean(axis=1))
    with pytest.raises(ValueError, match="n_windows"):
        windows.head(0)


@NEEDS_NIX
def test_the_command_line_streams_a_long_recording(recording, tmp_path):
    from spikedict import SpikeDictionary
    from spikedict.cli import main

    segment, _ = recording
    block = neo.Block()
    block.segments.append(segment)
    path = tmp_path / "long.nix"
    write_recording(block, path)
    out = tmp_path / "fit"
    arguments = ["fit", str(path), "--family", "poisson", "--bin-size", "1ms", "--template-size", "30"]
    arguments += ["--window", "2s", "--overlap", "300ms", "--n-epochs", "1", "--out", str(out), "--quiet"]
    assert (
        main(
            [
                *arguments,
                "--device",
                "cpu",
                "--set",
                "solver__n_code_iterations=10",
                "--set",
                "encoder__n_iterations=50",
            ]
        )
        == 0
    )
    model = SpikeDictionary.load(out / "model.safetensors")
    codes = np.load(out / "codes.npy", mmap_mode="r")
    assert codes.shape == (1, 3, 12000 - 29) and np.all(np.asarray(codes) >= 0)
    windows = RecordingWindows(segment, 1 * pq.ms, 2 * pq.s, 300 * pq.ms)
    np.testing.assert_allclose(codes, model.transform(windows), rtol=0, atol=1e-6)
    assert (out / "report.html").exists() and not (out / "checkpoint.pt").exists()
    assert main(["fit", str(path), "--overlap", "300ms", "--out", str(tmp_path / "other")]) == 2
