"""Regenerate the data sets shipped in data/ (see data/README.md).

Usage (from the repository root, after `bash scripts/setup`):

    .venv/bin/python data/make_datasets.py                      # paper-binomial only
    .venv/bin/python data/make_datasets.py --nitime /tmp/nitime  # also locust, from an unpacked nitime 0.12.1

The locust recording comes from the nitime package (BSD-3). Get it once with
`pip download nitime==0.12.1 --no-deps -d /tmp/nitime` and unzip the wheel in /tmp/nitime.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import neo
import numpy as np
import quantities as pq

from spikedict.io import write_recording
from spikedict.simulate import simulate_spikes

HERE = Path(__file__).resolve().parent

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nitime", type=Path, help="folder with the unpacked nitime wheel (holds nitime/data)")
    arguments = parser.parse_args()
    write_recording(make_paper_binomial(), HERE / "paper_binomial.mat")
    print("wrote", HERE / "paper_binomial.mat")
    if arguments.nitime is not None:
        write_recording(make_locust(arguments.nitime / "nitime" / "data"), HERE / "locust.mat")
        print("wrote", HERE / "locust.mat")


if __name__ == "__main__":
    main()
