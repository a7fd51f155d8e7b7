"""Regenerate the data sets shipped in data/ (see data/README.md).

Usage (from the repository root, after `bash scripts/setup`):

    .venv/bin/python data/make_datasets.py                      # paper-binomial and the three recordings
    .venv/bin/python data/make_datasets.py --nitime /tmp/nitime  # also locust, from an unpacked nitime 0.12.1
    .venv/bin/python data/make_datasets.py stn songbird          # only the data sets named

The locust recording comes from the nitime package (BSD-3). Get it once with
`pip download nitime==0.12.1 --no-deps -d /tmp/nitime` and unzip the wheel in /tmp/nitime.

The motoneurone, STN and songbird recordings are read from `../shared/data/recordings/` (beside the
repository; `--source DIR` for another folder), whose README gives each file's source, licence and citation.
The MIT licence texts of the STN and songbird recordings are copied next to the files made from them.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import neo
import numpy as np
import quantities as pq
import scipy.io

from spikedict.io import write_recording
from spikedict.simulate import simulate_spikes

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE.parent.parent / "shared" / "data" / "recordings"

# paper-binomial: the DCEA paper's setting (3 templates of 50 bins, M = 30 trials per example, 1 ms bins,
# baseline log-odds -2, 1% events per template and bin, amplitudes uniform in [1, 2]) at a size that keeps the
# file small: 20 examples x 1000 bins (600 trial segments).
PAPER = dict(n_examples=20, n_bins=1000, n_trials=30, template_size=50, baseline=-2.0, event_rate=0.01, seed=2020)
# Spike times are stored at 10 microsecond resolution (well inside a 1 ms bin), which compresses better.
TIME_RESOLUTION = 0.01  # ms


def make_paper_binomial() -> neo.Block:
    simulation = simulate_spikes("paper", family="binomial", **PAPER)
    block = simulation.block
    for segment in block.segments:
        for train in segment.spiketrains:
            # The centre of the 10 microsecond cell that holds the spike: never on a bin edge, so the counts
            # are exactly those of the simulation.
            train[:] = (np.floor(train.magnitude / TIME_RESOLUTION) + 0.5) * TIME_RESOLUTION * train.units
    block.name = "paper-binomial"
    block.annotate(
        description="Simulated binomial spike trains in the DCEA paper's setting (Tolooshams et al., ICML 2020).",
        source="spikedict.simulate.simulate_spikes, data/make_datasets.py",
        licence="MIT (spikedict)",
        **{key: value for key, value in PAPER.items() if key not in ("n_trials", "seed", "event_rate")},
    )
    return block


def _header(path: Path) -> dict[str, str]:
    header = {}
    for line in path.read_text().splitlines():
        match = re.match(r"#\s*([^:]+):\s*(.*)", line)
        if match:
            header[match.group(1).strip()] = match.group(2).strip()
    return header


def make_locust(nitime_data: Path) -> neo.Block:
    """Both recordings of the same receptor cell; one segment per stimulus (white-noise cut-off 200 / 800 Hz).

    Spike times in the nitime files are in microseconds; the stimulus files hold (time in microseconds,
    sound-pressure amplitude) sampled every 50 microseconds (20 kHz) for 10 s (nitime's grasshopper example).
    """
    block = neo.Block(
        name="locust",
        description=(
            "Intracellular recording of one auditory receptor neuron of Locusta migratoria stimulated with a "
            "2.5 kHz tone whose amplitude is modulated by Gaussian white noise (cut-off 200 Hz, then 800 Hz)."
        ),
        source="nitime 0.12.1, nitime/data/grasshopper_spike_times{1,2}.txt and grasshopper_stimulus{1,2}.txt",
        licence="BSD-3-Clause (Copyright (c) 2006-2011, NIPY Developers)",
        citation=(
            "Rokem A, Watzl S, Gollisch T, Stemmler M, Herz AVM, Samengo I (2006). Spike-timing precision underlies "
            "the coding efficiency of auditory receptor neurons. J Neurophysiol 95: 2541-2552."
        ),
        bin_size=1 * pq.ms,
    )
    unit = neo.Group(name="receptor", unit="receptor")
    for index in (1, 2):
        spikes_path = nitime_data / f"grasshopper_spike_times{index}.txt"
        header = _header(spikes_path)
        spike_times = np.loadtxt(spikes_path, comments="#")
        stimulus = np.loadtxt(nitime_data / f"grasshopper_stimulus{index}.txt")
        sampling_period = np.diff(stimulus[:2, 0])[0]
        duration = len(stimulus) * sampling_period * pq.us
        segment = neo.Segment(
            name=f"stimulus {index}",
            stimulus=index,
            cutoff_frequency=float(header["cut-off frequency (Hz)"]) * pq.Hz,
            carrier_frequency=float(header["carrier freq (kHz)"]) * pq.kHz,
            intensity=float(header["intensity (dB)"]),
            stimulus_file=header["stimulus file"],
        )
        train = neo.SpikeTrain(
            (spike_times * pq.us).rescale(pq.s), t_start=0 * pq.s, t_stop=duration.rescale(pq.s), name="receptor"
        )
        train.annotate(unit="receptor")
        segment.spiketrains.append(train)
        # The sound-pressure amplitude of the stimulus (arbitrary units; nitime's example converts it to dB SPL
        # with 20 log10(a / 2e-5) shifted to the header's intensity), float32 to keep the file small.
        segment.analogsignals.append(
            neo.AnalogSignal(
                stimulus[:, 1].astype(np.float32)[:, None] * pq.dimensionless,
                sampling_period=sampling_period * pq.us,
                t_start=0 * pq.s,
                name="stimulus amplitude",
            )
        )
        unit.add(train)
        block.segments.append(segment)
    block.groups.append(unit)
    return block


def _unit_group(block: neo.Block, name: str, trains: list[neo.SpikeTrain], **annotations) -> None:
    """One group per unit, named like its spike trains and annotated ``unit=name`` (as for the locust)."""
    group = neo.Group(name=name, unit=name, **annotations)
    for train in trains:
        group.add(train)
    block.groups.append(group)


def make_motoneurone(source: Path) -> neo.Block:
    """One segment per replicate (469), 250 ms either side of the magnetic stimulus at 0 ms.

    The CSV holds one row per replicate with its spike times in ms (0.1 ms resolution) and empty fields where a
    replicate has fewer than six spikes; lines starting with '#' are comments. Times are kept in ms as written.
    """
    rows = []
    for line in (source / "neuro_boniface.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(sorted(float(field) for field in line.split(",") if field.strip()))
    name = "motoneurone"
    block = neo.Block(
        name=name,
        description=(
            "Spike times of one human motoneurone around a transcranial magnetic stimulus (0 ms), 469 replicates "
            "of -250 to 250 ms: an evoked peak at +20 to +30 ms, a silence to +60 ms and rebounds."
        ),
        source="R package boot 1.3-31, data/neuro.rda (CRAN mirror cran/boot, commit cc099a1), via a CSV copy",
        licence="Unlimited (R package boot, DESCRIPTION)",
        collected_by="Dr. S.J. Boniface, Neurophysiology Unit, Radcliffe Infirmary, Oxford",
        citation=(
            "Davison AC, Hinkley DV (1997). Bootstrap Methods and Their Application. Cambridge University Press. "
            "Ventura V, Davison AC, Boniface SJ (1997). A stochastic model for the effect of magnetic brain "
            "stimulation on a motorneurone. Applied Statistics."
        ),
        bin_size=2 * pq.ms,
        time_resolution=0.1 * pq.ms,
    )
    trains = []
    for trial, spikes in enumerate(rows):
        segment = neo.Segment(
            name=f"trial {trial}", trial=trial, stimulus="magnetic stimulation", stimulus_time=0 * pq.ms
        )
        train = neo.SpikeTrain(np.asarray(spikes) * pq.ms, t_start=-250 * pq.ms, t_stop=250 * pq.ms, name=name)
        train.annotate(unit=name)
        segment.spiketrains.append(train)
        block.segments.append(segment)
        trains.append(train)
    _unit_group(block, name, trains)
    return block


def make_stn(source: Path) -> neo.Block:
    """One segment per trial (50), -1000 to 1000 ms around the GO cue, with the direction of the movement.

    The MAT file holds ``train`` (trials x 2000 samples of 1 ms, 1 where the neuron spiked), ``t`` (the time
    of each sample in ms, -1000 to 999, GO cue at 0) and ``direction`` (0 = left, 1 = right). A spike is placed
    at the time of its sample, in ms; the last sample (999 ms) ends at t_stop = 1000 ms.
    """
    contents = scipy.io.loadmat(source / "stn_kramer_eden.mat")
    spikes = np.asarray(contents["train"]) != 0
    times = np.asarray(contents["t"], dtype=np.float64).ravel()
    directions = np.asarray(contents["direction"]).ravel()
    step = float(np.diff(times[:2])[0])
    name = "stn"
    block = neo.Block(
        name=name,
        description=(
            "One neuron of the subthalamic nucleus of a Parkinson's patient, 50 trials of 2 s around the GO cue "
            "of a directed movement (25 left, 25 right), at 1 ms resolution."
        ),
        source=(
            "Mark-Kramer/Case-Studies-Python (commit 060e67e), matfiles/10_spikes-1.mat, the Python companion of "
            "Kramer and Eden (2016)"
        ),
        licence="MIT (Copyright (c) 2023 Mark Kramer; LICENSE-kramer-eden.txt)",
        citation=(
            "Kramer MA, Eden UT (2016). Case Studies in Neural Data Analysis: A Guide for the Practicing "
            "Neuroscientist. MIT Press. Chapter: Analysis of rhythmic spike train data."
        ),
        bin_size=5 * pq.ms,
        time_resolution=step * pq.ms,
    )
    trains = []
    for trial, (row, direction) in enumerate(zip(spikes, directions)):
        segment = neo.Segment(
            name=f"trial {trial}",
            trial=trial,
            direction={0: "left", 1: "right"}[int(direction)],
            go_cue_time=0 * pq.ms,
        )
        train = neo.SpikeTrain(
            times[row] * pq.ms, t_start=times[0] * pq.ms, t_stop=(times[-1] + step) * pq.ms, name=name
        )
        train.annotate(unit=name)
        segment.spiketrains.append(train)
        block.segments.append(segment)
        trains.append(train)
    _unit_group(block, name, trains)
    return block


# The songbird spike times are multiples of 1/30 s (the source's time step), from 1/30 s to 22.2 s.
SONGBIRD_STEP = 1 / 30  # s


def make_songbird(source: Path) -> neo.Block:
    """One segment of 22.2 s with one spike train per neuron (74), named by the source's neuron id.

    The text file holds one spike per line: neuron id (1 to 75, 74 of them present), tab, time in seconds.
    Every time is a multiple k / 30 s of the source's time step, k = 1 to 666 (22.2 s). The segment spans those
    666 steps centred on their times, from 1/60 s to 22.2 + 1/60 s: 22.2 s in which every spike lies in the
    middle of its bin of 1/30 s (never on a bin edge, so binning needs no rounding) and none at t_stop, which
    half-open bins ``[left, right)`` would leave out. Times are kept in seconds as written.
    """
    table = np.loadtxt(source / "songbird_hvc_spikes.txt", delimiter="\t", ndmin=2)
    ids, times = table[:, 0].astype(int), table[:, 1]
    steps = np.round(times / SONGBIRD_STEP)
    if np.abs(times - steps * SONGBIRD_STEP).max() > 1e-9 or steps.min() < 1:
        raise ValueError("the songbird spike times are no longer positive multiples of 1/30 s; revisit the window")
    t_start, t_stop = SONGBIRD_STEP / 2 * pq.s, (steps.max() + 0.5) * SONGBIRD_STEP * pq.s
    block = neo.Block(
        name="songbird",
        description=(
            "Spikes of 74 neurons of the HVC of a singing zebra finch, 22.2 s: sequences locked to the song that "
            "recur at times no trial structure gives (the data set of seqNMF and PP-Seq)."
        ),
        source="lindermanlab/PPSeq.jl (commit e89078c), demo/data/songbird_spikes.txt",
        licence="MIT (Copyright (c) 2020 Alex H. Williams, Anthony Degleris, Scott W. Linderman; LICENSE-ppseq.txt)",
        citation=(
            "Mackevicius EL, Bahle AH, Williams AH, Gu S, Denisenko NI, Goldman MS, Fee MS (2019). Unsupervised "
            "discovery of temporal sequences in high-dimensional datasets, with applications to neuroscience. "
            "eLife 8: e38471. Williams AH, Degleris A, Wang Y, Linderman SW (2020). Point process models for "
            "sequence detection in high-dimensional neural spike trains. NeurIPS."
        ),
        bin_size=SONGBIRD_STEP * pq.s,
        time_resolution=SONGBIRD_STEP * pq.s,
    )
    segment = neo.Segment(name="recording")
    for neuron in np.unique(ids):
        name = f"neuron {neuron}"
        train = neo.SpikeTrain(np.sort(times[ids == neuron]) * pq.s, t_start=t_start, t_stop=t_stop, name=name)
        train.annotate(unit=name, neuron_id=int(neuron))
        segment.spiketrains.append(train)
        _unit_group(block, name, [train], neuron_id=int(neuron))
    block.segments.append(segment)
    return block


# name -> (function, source file, output file, licence text shipped beside it)
RECORDING_SETS = {
    "motoneurone": (make_motoneurone, "neuro_boniface.csv", "motoneurone.mat", None),
    "stn": (make_stn, "stn_kramer_eden.mat", "stn.mat", "LICENSE-kramer-eden.txt"),
    "songbird": (make_songbird, "songbird_hvc_spikes.txt", "songbird.mat", "LICENSE-ppseq.txt"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = ["paper-binomial", "locust", *RECORDING_SETS]
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"data sets to make, of {known} (default: all, locust only with --nitime)",
    )
    parser.add_argument("--nitime", type=Path, help="folder with the unpacked nitime wheel (holds nitime/data)")
    parser.add_argument(
        "--source", type=Path, default=RECORDINGS, help=f"folder with the recordings (default: {RECORDINGS})"
    )
    arguments = parser.parse_args()
    names = arguments.names or ["paper-binomial", *RECORDING_SETS] + (["locust"] if arguments.nitime else [])
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown data set(s) {unknown}; choose from {known}")
    if "locust" in names and arguments.nitime is None:
        parser.error("the locust recording needs --nitime (the folder with the unpacked nitime wheel)")
    missing = [
        str(arguments.source / RECORDING_SETS[name][1])
        for name in names
        if name in RECORDING_SETS and not (arguments.source / RECORDING_SETS[name][1]).is_file()
    ]
    if missing:
        parser.error(f"no such source file(s): {', '.join(missing)}; pass --source DIR")
    if "paper-binomial" in names:
        write_recording(make_paper_binomial(), HERE / "paper_binomial.mat")
        print("wrote", HERE / "paper_binomial.mat")
    if "locust" in names:
        write_recording(make_locust(arguments.nitime / "nitime" / "data"), HERE / "locust.mat")
        print("wrote", HERE / "locust.mat")
    for name, (make, _, output, licence) in RECORDING_SETS.items():
        if name not in names:
            continue
        write_recording(make(arguments.source), HERE / output)
        print("wrote", HERE / output)
        if licence is not None:
            shutil.copyfile(arguments.source / licence, HERE / licence)
            print("wrote", HERE / licence)


if __name__ == "__main__":
    main()
