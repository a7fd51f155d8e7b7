"""Default fits of every shipped data set, as ``spikedict fit`` fits them (issues 21 and 22).

For each shipped data set (``paper-binomial``, ``locust``, ``motoneurone``, ``stn``, ``songbird``) and seed,
:func:`spikedict.workflow.fit_recording` fits the data set at its defaults (``DATASET_DEFAULTS``: the family,
bins, pooling, examples and templates of the data set; the last 20% of the examples held out; the sparsity
chosen along a path by split-half gain; the recoverability check of 5 refits), writing nothing, and the whole
call is timed. One row per data set and seed gives:

- ``sparsity``: the chosen sparsity;
- ``events``: the non-zero codes of the training examples, ``(model.transform(result.counts) != 0).sum()``;
  ``event_runs``: runs of consecutive non-zero codes (:func:`spikedict.analysis.find_events`, an encoder often
  spreads one event over neighbouring bins); ``code_density``: ``events`` over the number of codes;
  ``codes_all_zero``: whether the training codes are all zero (the issue: no shipped data set ends a default
  fit with zero codes);
- ``heldout_bits_per_spike`` and the PSTH's and the smoothed rate's (``_psth``, ``_smoothing``): the held-out
  comparison of ``fit_recording``, in bits per spike over a constant rate;
- ``recoverable``: ``n_templates_recoverable`` / ``n_templates`` of the recoverability check;
  ``mean_predicted_error``: the mean over templates of the refits' median error; ``mean_template_error``: the
  error against the ground truth (simulated ``paper-binomial`` only);
- ``seconds``: wall time of the whole ``fit_recording`` call (reading, binning, the fits of the sparsity path,
  the check, the held-out comparison); ``fit_seconds``: the fits of the sparsity path (``summary.fit_seconds``);
  ``check_and_score_seconds``: from the start of the recoverability check (the time of its progress line) to
  the end of the call, i.e. the check and the held-out comparison. ``FitResult`` exposes no finer timings.

And the targets of the issues:

- **motoneurone** (issue 22: events concentrated at the evoked response, +15 to +35 ms, and held-out gain > 0):
  the training and the held-out groups (``result.counts`` and ``result.heldout_counts``) are coded with the
  fitted templates. An event is a non-zero code; its time is the trial's ``t_start`` (trials are aligned to
  the stimulus at 0) plus (code position + the bin of the template's peak) times the bin size, the left edge
  of the bin where the event raises the rate most. ``evoked_share``: the share of events with a time in
  [+15, +35] ms (all examples, ``all_events``), next to ``evoked_chance``: the share of the trial's bins in
  that window (what events spread evenly would give).
- **songbird** (issue 22: sequences that engage a consistent subset of neurons in a consistent order, and
  held-out gain > 0): the engaged neurons of each template (``sequence_order(templates, threshold=0.5)``), and,
  for every pair of seeds, the templates matched by :func:`spikedict.analysis.align_templates` (the earlier
  seed's as the reference), the Jaccard overlap of their engaged neurons and the Spearman correlation of the
  neurons' peak times on the neurons engaged in both (NaN with fewer than 3 shared neurons or constant times).

Usage::

    python benchmarks/recordings.py                         # all data sets, seeds 0 1 2
    python benchmarks/recordings.py --datasets motoneurone songbird --seeds 0 1
    python benchmarks/recordings.py --quick                 # smoke run: motoneurone, seed 0, 2 epochs

Tables are printed as markdown and written to ``--out`` (default ``benchmarks/results/recordings/``,
git-ignored): ``recordings.csv`` (per data set and seed), ``recordings_summary.csv`` (mean over seeds),
``recordings_sequences.csv`` and ``recordings_sequence_consistency.csv`` (songbird), ``recordings.md`` (all
tables with the header); ``recordings_quick.*`` with ``--quick``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import quantities as pq
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import RESULTS, cpu_model, git_revision, run_with_threads, source_hash

from spikedict.analysis import align_templates, find_events
from spikedict.analysis.sequences import sequence_order
from spikedict.io import SpikeCounts
from spikedict.workflow import FitResult, fit_recording

DATASETS = ("paper-binomial", "locust", "motoneurone", "stn", "songbird")
#: The evoked response of the motoneurone, in ms after the stimulus (issue 22).
EVOKED_WINDOW_MS = (15.0, 35.0)
#: Share of a template's peak that a neuron's own peak must reach to be engaged (sequence_order).
ENGAGED_THRESHOLD = 0.5
#: Fewest neurons engaged in both matched templates for a Spearman correlation of their peak times.
MINIMUM_SHARED = 3
QUICK_DATASETS = ("motoneurone",)
QUICK_PARAMS: dict[str, Any] = {"solver__n_epochs": 2}
OUTPUT = RESULTS / "recordings"
CHECK_LINE = "checking the templates"  # fit_recording's progress line at the start of the recoverability check


# ------------------------------------------------------------------------------------------- one fit
def timed_fit(name: str, seed: int, params: dict[str, Any]) -> tuple[FitResult, dict[str, float]]:
    """``fit_recording(name, None, seed=seed, progress=False, estimator_params=params)``, timed.

    Returns
    -------
    result : FitResult
    seconds : dict
        ``seconds`` (the whole call), ``fit_seconds`` (the fits of the sparsity path, from the summary) and
        ``check_and_score_seconds`` (from the recoverability check's progress line to the end of the call; NaN
        where there is no such line).
    """
    lines: list[tuple[float, str]] = []

    def echo(message: str) -> None:
        lines.append((time.perf_counter(), message))

    start = time.perf_counter()
    result = fit_recording(name, None, seed=seed, progress=False, estimator_params=params or None, echo=echo)
    end = time.perf_counter()
    check_starts = [moment for moment, message in lines if message.startswith(CHECK_LINE)]
    seconds = {
        "seconds": end - start,
        "fit_seconds": float(result.summary["fit_seconds"].iloc[0]),
        "check_and_score_seconds": end - check_starts[0] if check_starts else float("nan"),
    }
    return result, seconds


def event_times_ms(model: Any, counts: SpikeCounts) -> np.ndarray:
    """Time of every non-zero code of ``counts`` in ms from the examples' ``t_start``.

    The time of a code at position ``p`` of template ``k`` is ``t_start + (offset + p + peak_k) * bin_size``:
    ``peak_k`` is the bin of the template's largest value over channels (where the event raises the rate
    most), ``offset`` the example's offset in its trial where trials were cut into examples.
    """
    codes = model.transform(counts)
    peaks = model.templates_.max(axis=1).argmax(axis=1)
    labels = counts.example_labels
    offsets = labels["offset_bins"].to_numpy() if "offset_bins" in labels else np.zeros(counts.n_examples, dtype=int)
    example, template, position = np.nonzero(codes)
    bin_ms = float(counts.bin_size.rescale(pq.ms).magnitude)
    start_ms = float(counts.t_start.rescale(pq.ms).magnitude)
    return start_ms + (offsets[example] + position + peaks[template]) * bin_ms


def motoneurone_targets(result: FitResult) -> dict[str, Any]:
    """The evoked share of the motoneurone's events over all examples (training and held-out)."""
    parts = [result.counts] if result.heldout_counts is None else [result.counts, result.heldout_counts]
    times = np.concatenate([event_times_ms(result.model, counts) for counts in parts])
    low, high = EVOKED_WINDOW_MS
    in_window = (times >= low) & (times <= high)
    counts = result.counts
    bin_ms = float(counts.bin_size.rescale(pq.ms).magnitude)
    start_ms = float(counts.t_start.rescale(pq.ms).magnitude)
    bin_starts = start_ms + np.arange(counts.n_bins) * bin_ms
    return {
        "all_examples": sum(part.n_examples for part in parts),
        "all_events": int(times.size),
        "evoked_events": int(in_window.sum()),
        "evoked_share": float(in_window.mean()) if times.size else float("nan"),
        "evoked_chance": float(np.mean((bin_starts >= low) & (bin_starts <= high))),
    }


def benchmark_one(name: str, seed: int, params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Fit one data set at one seed; its row and the fitted model (None where the fit failed)."""
    row: dict[str, Any] = {"dataset": name, "seed": seed}
    try:
        result, seconds = timed_fit(name, seed, params)
    except Exception as error:  # one failed fit must not lose the others
        traceback.print_exc()
        row["status"] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return row, None
    model, summary = result.model, result.summary.iloc[0]
    codes = model.transform(result.counts)
    events = int((codes != 0).sum())
    runs = sum(len(find_events(sequence)) for sequence in codes.reshape(-1, codes.shape[-1]))
    row.update(
        sparsity=float(model.sparsity_),
        epochs=int(summary["epochs"]),
        training_examples=int(result.counts.n_examples),
        heldout_examples=int(summary["n_heldout_examples"]),
        events=events,
        event_runs=int(runs),
        code_density=events / codes.size,
        codes_all_zero=events == 0,
        heldout_bits_per_spike=float(summary["heldout_bits_per_spike"]),
        heldout_bits_per_spike_psth=float(summary["heldout_bits_per_spike_psth"]),
        heldout_bits_per_spike_smoothing=float(summary["heldout_bits_per_spike_smoothing"]),
        n_templates_recoverable=int(summary.get("n_templates_recoverable", -1)),
        n_templates=int(summary["n_templates"]),
        mean_predicted_error=float(summary.get("mean_predicted_error", np.nan)),
        mean_template_error=float(summary.get("mean_template_error", np.nan)),
        **seconds,
    )
    row["recoverable"] = f"{row['n_templates_recoverable']}/{row['n_templates']}"
    if name == "motoneurone":
        try:
            row.update(motoneurone_targets(result))
        except Exception as error:
            traceback.print_exc()
            row["status"] = f"fitted; evoked share failed: {type(error).__name__}: {error}"[:200]
            return row, model
    row["status"] = "ok"
    return row, model


# ----------------------------------------------------------------------------------------- sequences
def sequence_table(name: str, seed: int, templates: np.ndarray) -> list[dict[str, Any]]:
    """The engaged neurons of each template, earliest peak first, with their peak bins."""
    rows = []
    for template, order in enumerate(sequence_order(templates, threshold=ENGAGED_THRESHOLD)):
        peaks = templates[template, order].argmax(axis=1)
        rows.append(
            {
                "dataset": name,
                "seed": seed,
                "template": template,
                "n_engaged": len(order),
                "neurons": " ".join(str(neuron) for neuron in order),
                "peak_bins": " ".join(str(peak) for peak in peaks),
            }
        )
    return rows


def order_consistency(first: np.ndarray, second: np.ndarray) -> dict[str, Any]:
    """Overlap and order agreement of two templates ``(n_channels, template_size)``.

    Returns
    -------
    dict
        ``n_engaged`` and ``other_n_engaged``, ``n_shared`` (engaged in both), ``jaccard`` (shared over either;
        NaN where neither engages a neuron) and ``spearman`` (of the peak bins on the shared neurons; NaN with
        fewer than :data:`MINIMUM_SHARED` shared neurons or where the peak bins of one template are all equal).
    """
    engaged_first = set(sequence_order(first[None], threshold=ENGAGED_THRESHOLD)[0].tolist())
    engaged_second = set(sequence_order(second[None], threshold=ENGAGED_THRESHOLD)[0].tolist())
    shared = np.array(sorted(engaged_first & engaged_second), dtype=np.int64)
    either = engaged_first | engaged_second
    spearman = float("nan")
    if shared.size >= MINIMUM_SHARED:
        peaks_first, peaks_second = first[shared].argmax(axis=1), second[shared].argmax(axis=1)
        if np.ptp(peaks_first) > 0 and np.ptp(peaks_second) > 0:
            spearman = float(spearmanr(peaks_first, peaks_second).statistic)
    return {
        "n_engaged": len(engaged_first),
        "other_n_engaged": len(engaged_second),
        "n_shared": int(shared.size),
        "jaccard": len(shared) / len(either) if either else float("nan"),
        "spearman": spearman,
    }


def consistency_across_seeds(name: str, templates: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """For every pair of seeds, the later seed's templates matched to the earlier's by ``align_templates`` and
    compared template by template (:func:`order_consistency`)."""
    rows = []
    for seed, other_seed in itertools.combinations(sorted(templates), 2):
        reference, other = templates[seed], templates[other_seed]
        matching = align_templates(other, reference).table
        for match in matching.itertuples():
            rows.append(
                {
                    "dataset": name,
                    "seed": seed,
                    "other_seed": other_seed,
                    "template": int(match.true_index),
                    "other_template": int(match.learned_index),
                    "sign": int(match.sign),
                    "lag": int(match.lag),
                    "correlation": float(match.correlation),
                    **order_consistency(reference[match.true_index], other[match.learned_index]),
                }
            )
    return rows


# -------------------------------------------------------------------------------------------- tables
PER_SEED_COLUMNS = [
    "dataset",
    "seed",
    "sparsity",
    "events",
    "event_runs",
    "code_density",
    "codes_all_zero",
    "heldout_bits_per_spike",
    "heldout_bits_per_spike_psth",
    "heldout_bits_per_spike_smoothing",
    "recoverable",
    "mean_predicted_error",
    "mean_template_error",
    "evoked_share",
    "seconds",
    "fit_seconds",
    "check_and_score_seconds",
    "status",
]
MEAN_COLUMNS = [
    "sparsity",
    "events",
    "code_density",
    "heldout_bits_per_spike",
    "heldout_bits_per_spike_psth",
    "heldout_bits_per_spike_smoothing",
    "n_templates_recoverable",
    "mean_predicted_error",
    "mean_template_error",
    "evoked_share",
    "evoked_chance",
    "seconds",
    "fit_seconds",
]


def summarise(table: pd.DataFrame, consistency: pd.DataFrame) -> pd.DataFrame:
    """Per data set: mean over the seeds that fitted; counts of seeds with all-zero codes and with a positive
    held-out gain; the mean songbird consistency across seeds."""
    fitted = table[table["status"].astype(str).str.startswith(("ok", "fitted"))]
    rows = []
    for name, group in fitted.groupby("dataset", sort=False):
        row: dict[str, Any] = {"dataset": name, "n_seeds": len(group), "n_templates": int(group["n_templates"].iloc[0])}
        for column in MEAN_COLUMNS:
            if column in group and group[column].notna().any():
                row[column] = float(group[column].mean())
        row["seeds_codes_all_zero"] = f"{int(group['codes_all_zero'].sum())}/{len(group)}"
        row["seeds_heldout_positive"] = f"{int((group['heldout_bits_per_spike'] > 0).sum())}/{len(group)}"
        pairs = consistency[consistency["dataset"] == name] if len(consistency) else consistency
        if len(pairs):
            row["jaccard_across_seeds"] = float(pairs["jaccard"].mean())
            row["spearman_across_seeds"] = float(pairs["spearman"].mean())  # NaN pairs left out
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = ["dataset", "n_seeds", "n_templates", *MEAN_COLUMNS, "seeds_codes_all_zero", "seeds_heldout_positive"]
    order += ["jaccard_across_seeds", "spearman_across_seeds"]
    return summary[[column for column in order if column in summary]]


def to_markdown(table: pd.DataFrame) -> str:
    """A markdown table: seconds to 1 decimal, densities to 2 significant digits, other floats to 3 decimals."""

    def text(column: str, value: Any) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, (float, np.floating)):
            if np.isnan(value):
                return ""
            if "seconds" in column:
                return f"{value:.1f}"
            if column in ("code_density", "sparsity"):
                return f"{value:.2g}"
            if column in ("events", "n_templates_recoverable"):  # means over seeds
                return f"{value:.1f}"
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    for values in table.itertuples(index=False):
        lines.append("| " + " | ".join(text(c, v) for c, v in zip(table.columns, values, strict=True)) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, help="shipped data sets (default all; --quick: motoneurone)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of fit_recording (default 0 1 2; --quick: 0)")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: estimator_params {json.dumps(QUICK_PARAMS)}, measures nothing"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, OMP_NUM_THREADS; --quick: 1)")
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"output folder (default {OUTPUT})")
    args = parser.parse_args(argv)
    if args.datasets is None:
        args.datasets = list(QUICK_DATASETS if args.quick else DATASETS)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module's docstring); torch's thread count is restored at the end."""
    return run_with_threads(run, parse_arguments(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Every data set and seed, the tables and the files of :func:`main`."""
    stem = "recordings_quick" if args.quick else "recordings"
    params = dict(QUICK_PARAMS) if args.quick else {}
    source = source_hash()
    header = [
        f"spikedict default fits of the shipped data sets, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); Python {platform.python_version()}; load average at start: "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        f"spikedict revision: {git_revision()}; sources imported: {source}",
        f"command: {' '.join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv)))}",
        "fits: fit_recording(name, None, seed=seed, progress=False) at the data sets' defaults"
        + (f", estimator_params {json.dumps(params)} (--quick)" if params else "")
        + f"; data sets {args.datasets}; seeds {args.seeds}",
        f"targets: motoneurone events in {list(EVOKED_WINDOW_MS)} ms; songbird engaged neurons at threshold "
        f"{ENGAGED_THRESHOLD}, matched across seeds by align_templates; held-out gain > 0; no all-zero codes",
    ]
    print("\n".join(header), flush=True)
    rows: list[dict[str, Any]] = []
    sequences: list[dict[str, Any]] = []
    templates: dict[str, dict[int, np.ndarray]] = {}
    for name in args.datasets:
        for seed in args.seeds:
            row, model = benchmark_one(name, seed, params)
            rows.append(row)
            if model is not None and name == "songbird":
                templates.setdefault(name, {})[seed] = model.templates_
                sequences += sequence_table(name, seed, model.templates_)
            print(
                f"  {name:<15} seed {seed}: {row.get('seconds', np.nan):6.1f} s, sparsity "
                f"{row.get('sparsity', np.nan):.3g}, {row.get('events', '-')} events, held-out "
                f"{row.get('heldout_bits_per_spike', np.nan):+.3f} bits/spike, {row['status']}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    consistency = pd.DataFrame(
        [pair for name, by_seed in templates.items() for pair in consistency_across_seeds(name, by_seed)]
    )
    sequence_frame = pd.DataFrame(sequences)
    summary = summarise(table, consistency)
    if source_hash() != source:
        print("warning: the spikedict sources changed during the run (this process used those it imported first)")
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{stem}.csv", index=False)
    summary.to_csv(args.out / f"{stem}_summary.csv", index=False)
    sequence_frame.to_csv(args.out / f"{stem}_sequences.csv", index=False)
    consistency.to_csv(args.out / f"{stem}_sequence_consistency.csv", index=False)
    shown = [column for column in PER_SEED_COLUMNS if column in table]
    markdown = [
        "# " + header[0],
        "",
        *[f"- {line}" for line in header[1:]],
        "- load average at end: " + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        "",
        "## Per data set and seed",
        "",
        to_markdown(table[shown]),
        "",
        "## Mean over seeds",
        "",
        to_markdown(summary) if len(summary) else "(no fit succeeded)",
    ]
    if len(sequence_frame):
        markdown += ["", "## Songbird: engaged neurons per template", "", to_markdown(sequence_frame)]
    if len(consistency):
        markdown += ["", "## Songbird: consistency across seeds (matched templates)", "", to_markdown(consistency)]
    text = "\n".join(markdown) + "\n"
    (args.out / f"{stem}.md").write_text(text)
    print("\n" + "\n".join(markdown[len(header) + 2 :]))
    print(f"\nwritten to {args.out}/{stem}.*")
    return 0 if all(str(row["status"]) == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
