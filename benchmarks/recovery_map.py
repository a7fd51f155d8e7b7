"""Issue 19, item 4: where each solver recovers the templates, on a grid of event amplitudes x baselines.

For each family (``binomial`` with M = 30 trials, ``poisson``), each range of event amplitudes, each baseline
(log-odds for binomial, log-rate for Poisson) and each seed, this script

- simulates the templates of the standard problem of ``benchmarks/core.py`` (the 3 unit-norm templates of
  ``paper_templates(50)``, event rate 0.01 per template per bin) with that amplitude range and baseline, on
  fewer, shorter examples than the standard problem so that the grid stays affordable (default 40 examples x
  1500 bins; ``--n-examples``, ``--n-bins``);
- computes the known-codes floor (``core.maximum_likelihood_floor``: the error of the maximum-likelihood
  templates given the true codes and baseline);
- fits ``SpikeDictionary`` with the alternating (MAP) solver's defaults and with ``solver=EM()`` (EM's defaults
  unless ``--em-epochs`` says otherwise; ``--map-params`` sets the MAP solver, ``Alternating(**params)``, for
  the MAP fit and for EM's MAP start alike) through ``em.fit`` (``device="cpu", progress=False``, the estimator
  settings of ``core.estimator_kwargs``), one after the other in this process, each timed on its own (EM's
  seconds include its own MAP start);
- reports the mean aligned template error (``align_templates(learned, true).mean_error``) of MAP, of EM and of
  the floor, and the signal measures below.

Signal measures (functions of the family, the baseline ``b``, the mean amplitude ``a`` of the range and the
true templates ``h``; each is the mean over the 3 templates):

- ``peak_sd``: how many noise standard deviations one event of amplitude ``a`` moves the expected counts at the
  template's largest value ``h_max``: binomial ``M (p(b + a h_max) - p(b)) / sqrt(M p(b) (1 - p(b)))``, Poisson
  ``(exp(b + a h_max) - exp(b)) / sqrt(exp(b))``;
- ``event_sd``: the same over the whole event, ``sqrt(sum_t (mean(b + a h_t) - mean(b))^2 / variance(b))``
  (the event's norm in noise standard deviations, what a matched filter sees). For unit-norm templates this is
  about ``a sqrt(variance(b))`` (binomial ``a sqrt(M p (1 - p))``, Poisson ``a exp(b / 2)``): on the standard
  problem (``b = -2``, ``a = 1.5``) 2.7 for binomial and 0.6 for Poisson, the figures of the ``code_bounds.py``
  section of ``benchmarks/README.md`` and of ``docs/status.md``. ``peak_sd`` is several times smaller, as
  the templates spread their unit norm over 50 bins (``h_max`` 0.14 to 0.24).

A cell counts as *recovered* when its mean template error is at most 0.1 (``RECOVERED``).

Each cell is printed as soon as it is computed, and ``recovery_map.csv`` is rewritten after every cell (an
interrupted run keeps its numbers). At the end, per family, tables with rows baseline and columns amplitude
range are printed (markdown; means over seeds): errors "MAP / EM / floor", the fit seconds "MAP / EM", and the
signal measures "peak_sd / event_sd"; and ``recovery_map.png`` is drawn: per family, heat maps of the error of
MAP and of EM side by side, each cell annotated with its error (and the floor), recovered cells outlined.

Usage::

    python benchmarks/recovery_map.py --threads 1 --seeds 0 1 2      # both families, the full grid
    python benchmarks/recovery_map.py --families binomial --amplitudes 1,2 3,5 --binomial-baselines -2 0
    python benchmarks/recovery_map.py --amplitudes 3,5 --binomial-baselines 0 --poisson-baselines 1 \\
        --map-params '{"n_code_iterations": 100, "n_dictionary_iterations": 30}' --output-dir /tmp/stronger
    python benchmarks/recovery_map.py --quick                        # smoke run: 1 x 1 grid, tiny fits

Files go to ``--output-dir`` (default ``benchmarks/results/``, git-ignored): ``recovery_map.csv`` and
``recovery_map.png``; ``recovery_map_quick.*`` with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core
from em import fit

from spikedict.simulate import SimulatedCounts, paper_templates, simulate_counts
from spikedict.solvers import EM, Alternating

FAMILIES = ("binomial", "poisson")
N_TRIALS = core.N_TRIALS
AMPLITUDES = ((1.0, 2.0), (2.0, 3.0), (3.0, 5.0))
BASELINES = {"binomial": (-3.0, -2.0, -1.0, 0.0), "poisson": (-2.0, -1.0, 0.0, 1.0)}
N_EXAMPLES = 40
N_BINS = 1500
RECOVERED = 0.1

# --quick: a 1 x 1 grid per family with tiny data and fits (a smoke run of the script, measures nothing).
QUICK_AMPLITUDES = ((3.0, 5.0),)
QUICK_BASELINES = {"binomial": (0.0,), "poisson": (1.0,)}
QUICK_N_EXAMPLES = 4
QUICK_N_BINS = 400
QUICK_EPOCHS = 2

KEYS = ["family", "amplitude_low", "amplitude_high", "baseline", "seed"]
COLUMNS = [
    *KEYS,
    "map_error",
    "em_error",
    "floor",
    "peak_sd",
    "event_sd",
    "map_seconds",
    "em_seconds",
    "floor_seconds",
]


# --------------------------------------------------------------------------------------------- data
def simulate(
    family: str, amplitude_range: tuple[float, float], baseline: float, seed: int, n_examples: int, n_bins: int
) -> SimulatedCounts:
    """The standard problem's templates and event rate with this amplitude range, baseline and size.

    Parameters
    ----------
    family : str
        ``"binomial"`` (``N_TRIALS`` trials) or ``"poisson"``.
    amplitude_range : tuple of float
        Event amplitudes are uniform in this range.
    baseline : float
        Log-odds (binomial) or log-rate per bin (Poisson) of the bins without events.
    seed, n_examples, n_bins : int
        Seed of the simulation, number and length of the examples.

    Returns
    -------
    SimulatedCounts
    """
    return simulate_counts(
        paper_templates(core.TEMPLATE_SIZE),
        n_examples=n_examples,
        n_bins=n_bins,
        family=family,
        n_trials=N_TRIALS if family == "binomial" else None,
        baseline=baseline,
        event_rate=core.EVENT_RATE,
        amplitude_range=amplitude_range,
        seed=seed,
    )


def mean_and_variance(family: str, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected count and its variance per bin at linear predictor ``eta`` (binomial: ``N_TRIALS`` trials)."""
    if family == "binomial":
        probability = expit(eta)
        return N_TRIALS * probability, N_TRIALS * probability * (1.0 - probability)
    rate = np.exp(eta)
    return rate, rate


def signal_measures(family: str, baseline: float, amplitude: float, templates: np.ndarray) -> tuple[float, float]:
    """How far one event moves the counts, in noise standard deviations at the baseline (module docstring).

    Parameters
    ----------
    family : str
        ``"binomial"`` or ``"poisson"``.
    baseline : float
        Linear predictor of the bins without events.
    amplitude : float
        Amplitude of the event (the mean of the amplitude range).
    templates : ndarray, shape (n_templates, n_channels, template_size)
        The true templates.

    Returns
    -------
    (peak_sd, event_sd)
        Means over the templates of the change of the expected counts at the template's largest value, and of
        the norm of the change over the whole event, both over the noise standard deviation at the baseline.
    """
    flat = np.asarray(templates, dtype=np.float64).reshape(len(templates), -1)
    base_mean, base_variance = mean_and_variance(family, np.array(baseline))
    standard_deviation = float(np.sqrt(base_variance))
    peak_mean, _ = mean_and_variance(family, baseline + amplitude * flat.max(axis=1))
    peak = (peak_mean - base_mean) / standard_deviation
    event_mean, _ = mean_and_variance(family, baseline + amplitude * flat)
    event = np.sqrt(((event_mean - base_mean) ** 2).sum(axis=1)) / standard_deviation
    return float(peak.mean()), float(event.mean())


# ---------------------------------------------------------------------------------------------- fits
def solvers(quick: bool, em_epochs: int | None, map_params: dict[str, Any]) -> tuple[Alternating, EM]:
    """The MAP solver (the alternating solver's defaults unless ``map_params``) and the EM solver of each cell.

    ``map_params`` (keyword arguments of :class:`~spikedict.solvers.Alternating`) set both the MAP fit and the MAP
    start of EM; ``em_epochs`` (None: EM's default) the EM iterations after that start.
    """
    if quick:
        tiny = Alternating(n_epochs=QUICK_EPOCHS)
        return tiny, EM(n_epochs=QUICK_EPOCHS, n_burn_in=1, map_fit=Alternating(n_epochs=QUICK_EPOCHS))
    map_fit = Alternating(**map_params)
    em_settings: dict[str, Any] = {} if em_epochs is None else {"n_epochs": em_epochs}
    return map_fit, EM(map_fit=map_fit, **em_settings)


def measure(
    family: str,
    amplitude_range: tuple[float, float],
    baseline: float,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One cell of the grid for one seed: the floor, the MAP and EM fits, the signal measures."""
    simulation = simulate(family, amplitude_range, baseline, seed, args.n_examples, args.n_bins)
    start = time.perf_counter()
    floor, floor_gradient = core.maximum_likelihood_floor(simulation)
    floor_seconds = time.perf_counter() - start
    if floor_gradient > core.FLOOR_GRADIENT_WARNING:
        print(f"  warning: floor not converged (largest gradient {floor_gradient:.1e})", flush=True)
    map_solver, em_solver = solvers(args.quick, args.em_epochs, args.map_params)
    map_error, map_seconds = fit(simulation, family, seed, map_solver)
    em_error, em_seconds = fit(simulation, family, seed, em_solver)
    peak_sd, event_sd = signal_measures(family, baseline, float(np.mean(amplitude_range)), simulation.templates)
    return {
        "family": family,
        "amplitude_low": amplitude_range[0],
        "amplitude_high": amplitude_range[1],
        "baseline": baseline,
        "seed": seed,
        "map_error": map_error,
        "em_error": em_error,
        "floor": floor,
        "peak_sd": peak_sd,
        "event_sd": event_sd,
        "map_seconds": map_seconds,
        "em_seconds": em_seconds,
        "floor_seconds": floor_seconds,
    }


# -------------------------------------------------------------------------------------------- tables
def amplitude_label(low: float, high: float) -> str:
    """``"[1, 2]"`` for the range (1, 2)."""
    return f"[{low:g}, {high:g}]"


def means_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Means of every measured column over seeds, per family, amplitude range and baseline."""
    keys = KEYS[:-1]
    grouped = table.groupby(keys, sort=True)
    means = grouped[COLUMNS[len(KEYS) :]].mean()
    means.insert(0, "n_seeds", grouped.size())
    means = means.reset_index()
    means["amplitudes"] = [amplitude_label(low, high) for low, high in zip(means.amplitude_low, means.amplitude_high)]
    return means


def grid_table(means: pd.DataFrame, family: str, cell: Any) -> str:
    """Markdown table of one family: rows baseline, columns amplitude range, cells ``cell(row)``."""
    rows = means[means.family == family]
    columns = rows.drop_duplicates(["amplitude_low", "amplitude_high"]).sort_values("amplitude_low")
    labels = list(columns.amplitudes)
    lines = ["| baseline | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for baseline, line in rows.groupby("baseline", sort=True):
        by_label = {row.amplitudes: cell(row) for row in line.itertuples(index=False)}
        lines.append(f"| {baseline:g} | " + " | ".join(by_label.get(label, "") for label in labels) + " |")
    return "\n".join(lines)


def errors_cell(row: Any) -> str:
    """``MAP / EM / floor``, a recovered solver's error in bold."""

    def shown(value: float) -> str:
        return f"**{value:.3f}**" if value <= RECOVERED else f"{value:.3f}"

    return f"{shown(row.map_error)} / {shown(row.em_error)} / {row.floor:.3f}"


def seconds_cell(row: Any) -> str:
    """``MAP s / EM s``."""
    return f"{row.map_seconds:.1f} / {row.em_seconds:.1f}"


def signal_cell(row: Any) -> str:
    """``peak_sd / event_sd``."""
    return f"{row.peak_sd:.2f} / {row.event_sd:.2f}"


def report(means: pd.DataFrame) -> str:
    """The markdown tables of every family: errors, seconds and signal measures."""
    parts = []
    for family in FAMILIES:
        if family not in set(means.family):
            continue
        what = f"M = {N_TRIALS}, baseline log-odds" if family == "binomial" else "baseline log-rate"
        parts += [
            f"{family} ({what}); template error, MAP / EM / floor (bold: <= {RECOVERED:g}):",
            "",
            grid_table(means, family, errors_cell),
            "",
            f"{family}: fit seconds, MAP / EM (EM's include its MAP start):",
            "",
            grid_table(means, family, seconds_cell),
            "",
            f"{family}: one event in noise standard deviations, at its peak / over the whole event (peak_sd / "
            "event_sd, means over the templates):",
            "",
            grid_table(means, family, signal_cell),
            "",
        ]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------- figure
def figure(means: pd.DataFrame, path: Path) -> None:
    """Heat maps of the mean template error, MAP and EM side by side, one row per family; cells annotated with
    the error (and the floor), recovered cells (error <= ``RECOVERED``) outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    families = [family for family in FAMILIES if family in set(means.family)]
    fig, axes = plt.subplots(len(families), 2, figsize=(9, 3.4 * len(families)), squeeze=False, constrained_layout=True)
    image = None
    for row_axes, family in zip(axes, families):
        rows = means[means.family == family]
        amplitudes = rows.drop_duplicates(["amplitude_low", "amplitude_high"]).sort_values("amplitude_low")
        labels = list(amplitudes.amplitudes)
        baselines = sorted(set(rows.baseline))
        for axis, (column, solver) in zip(row_axes, (("map_error", "MAP"), ("em_error", "EM"))):
            grid = np.full((len(baselines), len(labels)), np.nan)
            floors = np.full_like(grid, np.nan)
            for row in rows.itertuples(index=False):
                i, j = baselines.index(row.baseline), labels.index(row.amplitudes)
                grid[i, j], floors[i, j] = getattr(row, column), row.floor
            image = axis.imshow(grid, origin="lower", cmap="viridis_r", vmin=0.0, vmax=1.0, aspect="auto")
            for i in range(len(baselines)):
                for j in range(len(labels)):
                    if np.isnan(grid[i, j]):
                        continue
                    recovered = grid[i, j] <= RECOVERED
                    axis.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}\n(floor {floors[i, j]:.2f})",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if grid[i, j] < 0.5 else "white",
                        fontweight="bold" if recovered else "normal",
                    )
                    if recovered:
                        axis.add_patch(
                            Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="red", linewidth=2)
                        )
            axis.set_xticks(range(len(labels)), labels)
            axis.set_yticks(range(len(baselines)), [f"{b:g}" for b in baselines])
            axis.set_xlabel("event amplitudes")
            axis.set_ylabel("baseline log-odds" if family == "binomial" else "baseline log-rate")
            axis.set_title(f"{family}: {solver}")
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"mean template error (red box: <= {RECOVERED:g})")
    fig.suptitle("Issue 19: where each solver recovers the templates")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def amplitude_range(text: str) -> tuple[float, float]:
    """``"1,2"`` as ``(1.0, 2.0)`` (an argparse type)."""
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"an amplitude range is 'low,high', e.g. 1,2; got {text!r}") from error
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"an amplitude range needs 0 < low <= high; got {text!r}")
    return low, high


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument(
        "--amplitudes",
        nargs="+",
        type=amplitude_range,
        default=None,
        help="amplitude ranges as low,high (default 1,2 2,3 3,5)",
    )
    parser.add_argument("--binomial-baselines", nargs="+", type=float, default=None, help="default -3 -2 -1 0")
    parser.add_argument("--poisson-baselines", nargs="+", type=float, default=None, help="default -2 -1 0 1")
    parser.add_argument("--n-examples", type=int, default=None, help=f"examples (default {N_EXAMPLES})")
    parser.add_argument("--n-bins", type=int, default=None, help=f"bins per example (default {N_BINS})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="data and model seeds (default 0)")
    parser.add_argument(
        "--em-epochs", type=int, default=None, help="EM iterations after the MAP start (default: EM's, 40)"
    )
    parser.add_argument(
        "--map-params",
        type=json.loads,
        default={},
        help="JSON keyword arguments of Alternating for the MAP fit and EM's start (default {}: the defaults), "
        'e.g. \'{"n_code_iterations": 100, "n_dictionary_iterations": 30}\'',
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 x 1 grid per family, tiny data and fits")
    parser.add_argument("--output-dir", type=Path, default=core.RESULTS)
    args = parser.parse_args(argv)
    if not isinstance(args.map_params, dict):
        parser.error(f"--map-params must be a JSON object, got {args.map_params!r}")
    try:  # catch misspelt settings before any work
        Alternating(**args.map_params).validate(tied=True)
    except (TypeError, ValueError) as error:
        parser.error(f"--map-params: {error}")
    if args.quick:
        args.amplitudes = args.amplitudes or list(QUICK_AMPLITUDES)
        args.binomial_baselines = args.binomial_baselines or list(QUICK_BASELINES["binomial"])
        args.poisson_baselines = args.poisson_baselines or list(QUICK_BASELINES["poisson"])
        args.n_examples = args.n_examples or QUICK_N_EXAMPLES
        args.n_bins = args.n_bins or QUICK_N_BINS
        args.seeds = args.seeds[:1]
    args.amplitudes = args.amplitudes or list(AMPLITUDES)
    args.binomial_baselines = args.binomial_baselines or list(BASELINES["binomial"])
    args.poisson_baselines = args.poisson_baselines or list(BASELINES["poisson"])
    args.n_examples = args.n_examples or N_EXAMPLES
    args.n_bins = args.n_bins or N_BINS
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the grid (see the module's docstring); torch's thread count is restored at the end."""
    return core.run_with_threads(run, parse_arguments(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Every cell and seed, then the tables and the figure of :func:`main`."""
    import torch

    stem = "recovery_map_quick" if args.quick else "recovery_map"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    csv = args.output_dir / f"{stem}.csv"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    command = " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    map_settings = f"Alternating(**{json.dumps(args.map_params)})" if args.map_params else "defaults"
    em_epochs = f"n_epochs={args.em_epochs}, " if args.em_epochs else ""
    em_start = "map_fit=the MAP solver" if args.map_params else ""
    em_settings = "tiny (--quick)" if args.quick else f"EM({em_epochs}{em_start})".replace(", )", ")")
    print(f"# command: {command}", flush=True)
    print(
        f"# torch threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}, load average at start {load}; "
        f"git {core.git_revision()}",
        flush=True,
    )
    print(
        f"# {args.n_examples} examples x {args.n_bins} bins, seeds {args.seeds}; "
        f"MAP: {map_settings}, EM: {em_settings}",
        flush=True,
    )
    print("  ".join(f"{c:>10}" for c in COLUMNS), flush=True)
    rows: list[dict[str, Any]] = []
    baselines = {"binomial": args.binomial_baselines, "poisson": args.poisson_baselines}
    for family in args.families:
        for baseline in baselines[family]:
            for amplitudes in args.amplitudes:
                for seed in args.seeds:
                    row = measure(family, amplitudes, baseline, seed, args)
                    rows.append(row)
                    cells = [f"{v:>10.4f}" if isinstance(v, float) else f"{v!s:>10}" for v in row.values()]
                    print("  ".join(cells), flush=True)
                    pd.DataFrame(rows, columns=COLUMNS).to_csv(csv, index=False)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# load average at end {load}", flush=True)
    means = means_over_seeds(pd.DataFrame(rows, columns=COLUMNS))
    print(f"\nMeans over seeds {' '.join(map(str, args.seeds))}:\n", flush=True)
    print(report(means), flush=True)
    try:
        figure(means, args.output_dir / f"{stem}.png")
        print(f"wrote {csv} and {args.output_dir / f'{stem}.png'}", flush=True)
    except ImportError:
        print(f"wrote {csv} (no matplotlib: no figure)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
