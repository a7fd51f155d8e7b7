"""Streamed against in-memory fits of one long recording with the alternating solver (issue 20).

One long single-trial Poisson recording is simulated from known templates (``simulate_spikes(templates,
n_examples=1, n_bins=..., family="poisson")``). The same default estimator,
``SpikeDictionary(n_templates, template_size, family="poisson", solver="alternating", seed=seed, progress=False)``
(the alternating solver with its default settings, plus ``--params``; EM, the default for counts in memory, does
not stream), is fitted twice:

- **in memory**: the recording binned whole (``spikedict.io.bin_spiketrains``) and cut into consecutive,
  non-overlapping examples of the window length (a last partial window is dropped);
- **streamed**: ``RecordingWindows(segment, bin_size, window, overlap)``, binned as the solver reads it. The
  windows overlap, so the streamed fit sees the overlaps twice, and its initial templates and ``"auto"``
  sparsity come from a seeded sample of 32 windows instead of all the data.

Each fit is compared with the true templates, ``align_templates(model.templates_, true).mean_error``. Issue 20's
target: the streamed error is within 0.03 of the in-memory error. It prints one row per (setting, seed) and a
summary per setting; it asserts nothing.

Settings (``SETTINGS``): the true templates, baseline (log expected count per bin), amplitudes and event rate of
the simulation. ``random`` and ``random-low`` (the default): 3 random Gaussian templates of 30 bins on 3 channels
(drawn from the seed, unit norm), as in ``tests/test_streaming.py``'s recording but with stronger events (that
recording's baseline -1.5 and amplitudes 2 to 3 are not recovered even in memory); ``paper``: the paper's 3
templates of 50 bins on one channel, which the default Poisson fit does not recover in memory (see
``benchmarks/README.md`` for the settings tried).

Usage::

    python benchmarks/streaming.py                                  # settings random random-low, seeds 0 1 2
    python benchmarks/streaming.py --settings random --seeds 0 --duration 100
    python benchmarks/streaming.py --window 5 --overlap 250 --params '{"solver__n_epochs": 40}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import quantities as pq
import torch

from spikedict import SpikeDictionary
from spikedict.analysis import align_templates
from spikedict.io import RecordingWindows, bin_spiketrains
from spikedict.simulate import paper_templates, simulate_spikes

STREAMED_TARGET = 0.03  # issue 20: |streamed error - in-memory error| <= this


def _random_templates(seed: int, n_templates: int = 3, n_channels: int = 3, size: int = 30) -> np.ndarray:
    templates = np.random.default_rng(1000 + seed).normal(size=(n_templates, n_channels, size))
    return templates / np.linalg.norm(templates.reshape(n_templates, -1), axis=1)[:, None, None]


# name -> the true templates for a seed, and the other keywords of simulate_spikes. The random templates are
# recovered well in memory (error < 0.15); the paper's templates are not, by the default Poisson fit, in any setting
# tried (see benchmarks/README.md), so "paper" is not run by default.
SETTINGS: dict[str, dict[str, Any]] = {
    "random": {
        "templates": _random_templates,
        "baseline": 0.5,
        "amplitude_range": (4.0, 6.0),
        "event_rate": 0.004,
    },
    "random-low": {
        "templates": _random_templates,
        "baseline": 0.0,
        "amplitude_range": (5.0, 7.0),
        "event_rate": 0.004,
    },
    "paper": {
        "templates": lambda seed: paper_templates(50),
        "baseline": 1.0,
        "amplitude_range": (3.0, 5.0),
        "event_rate": 0.005,
    },
}


def simulate(setting: str, seed: int, n_bins: int, bin_size: pq.Quantity) -> tuple[Any, np.ndarray]:
    """The recording (a neo Segment of one train per channel) and its true templates."""
    spec = dict(SETTINGS[setting])
    templates = spec.pop("templates")(seed)
    simulation = simulate_spikes(
        templates, n_examples=1, n_bins=n_bins, family="poisson", bin_size=bin_size, seed=seed, **spec
    )
    return simulation.block.segments[0], templates


def in_memory_examples(segment: Any, bin_size: pq.Quantity, window_bins: int) -> np.ndarray:
    """The recording binned whole and cut into consecutive examples of ``window_bins``."""
    counts = bin_spiketrains(segment, bin_size).counts  # (1, n_channels, n_bins)
    n_channels, n_bins = counts.shape[1], counts.shape[2]
    n_examples = n_bins // window_bins
    cut = counts[0, :, : n_examples * window_bins].reshape(n_channels, n_examples, window_bins)
    return np.ascontiguousarray(cut.transpose(1, 0, 2))


def fit_error(data: Any, true: np.ndarray, seed: int, params: dict[str, Any]) -> tuple[float, float, int]:
    """Template error, fit seconds and epochs run of the alternating solver's default estimator on ``data``."""
    model = SpikeDictionary(
        n_templates=true.shape[0],
        template_size=true.shape[2],
        family="poisson",
        solver="alternating",
        seed=seed,
        progress=False,
    ).set_params(**params)
    clock = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - clock
    return float(align_templates(model.templates_, true).mean_error), seconds, len(model.history_)


def to_markdown(table: pd.DataFrame) -> str:
    """A markdown table (floats with 3 decimals), without the optional tabulate package."""
    text = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(text.columns) + " |", "|" + "|".join("---" for _ in text.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["random", "random-low"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="data and model seed")
    parser.add_argument("--duration", type=float, default=200.0, help="recording length in seconds (default 200)")
    parser.add_argument("--bin-size", type=float, default=1.0, help="bin width in ms (default 1)")
    parser.add_argument("--window", type=float, default=2.0, help="window (and in-memory example) in s (default 2)")
    parser.add_argument("--overlap", type=float, default=200.0, help="overlap of the windows in ms (default 200)")
    parser.add_argument("--params", default="{}", help="JSON object of set_params keys for both fits")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args(argv)

    params = json.loads(args.params)
    SpikeDictionary().set_params(**params)  # misspelt names fail here, before any work
    torch.set_num_threads(args.threads)
    bin_size = args.bin_size * pq.ms
    n_bins = int(round(args.duration * 1000 / args.bin_size))
    window_bins = int(round(args.window * 1000 / args.bin_size))
    print(
        f"# streaming.py: {args.duration:g} s Poisson recording in {args.bin_size:g} ms bins ({n_bins} bins); "
        f"window {args.window:g} s ({window_bins} bins), overlap {args.overlap:g} ms; params {params}; "
        f"{args.threads} torch thread(s); load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for setting in args.settings:
        for seed in args.seeds:
            segment, true = simulate(setting, seed, n_bins, bin_size)
            examples = in_memory_examples(segment, bin_size, window_bins)
            windows = RecordingWindows(segment, bin_size, args.window * pq.s, args.overlap * pq.ms)
            memory_error, memory_seconds, memory_epochs = fit_error(examples, true, seed, params)
            stream_error, stream_seconds, stream_epochs = fit_error(windows, true, seed, params)
            rows.append(
                {
                    "setting": setting,
                    "seed": seed,
                    "n_spikes": int(sum(len(train) for train in segment.spiketrains)),
                    "examples": examples.shape[0],
                    "windows": windows.n_windows,
                    "in_memory_error": memory_error,
                    "streamed_error": stream_error,
                    "difference": stream_error - memory_error,
                    "in_memory_seconds": memory_seconds,
                    "streamed_seconds": stream_seconds,
                    "epochs": f"{memory_epochs}/{stream_epochs}",
                    "meets_target": abs(stream_error - memory_error) <= STREAMED_TARGET,
                }
            )
            print(
                f"{setting} seed {seed}: in memory {memory_error:.3f} ({memory_seconds:.1f} s), streamed "
                f"{stream_error:.3f} ({stream_seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    table = pd.DataFrame(rows)
    print("\n" + to_markdown(table))
    summary = table.groupby("setting", sort=False).agg(
        in_memory_error=("in_memory_error", "mean"),
        streamed_error=("streamed_error", "mean"),
        largest_difference=("difference", lambda d: d.abs().max()),
        in_memory_seconds=("in_memory_seconds", "mean"),
        streamed_seconds=("streamed_seconds", "mean"),
        meets_target=("meets_target", lambda m: f"{int(m.sum())}/{len(m)}"),
    )
    print("\nMean over seeds (largest_difference: largest |streamed - in memory|):\n")
    print(to_markdown(summary.reset_index()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
