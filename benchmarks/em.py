"""Issue 19 benchmark: the marginal-likelihood (EM) solver against the MAP solver and the known-codes floor.

For each family (the ``binomial`` and ``poisson`` standard problems of ``benchmarks/core.py``: 3 templates of
50 bins, 2000 bins per example, event rate 0.01, amplitudes in [1, 2]), each number of examples and each seed
(the seed of the data and of the model), this script

- simulates the problem with ``core.simulate(family, seed, n_examples)``;
- computes the floor, ``core.maximum_likelihood_floor`` (template error of the maximum-likelihood templates
  given the true codes and baseline);
- fits ``SpikeDictionary`` with ``solver="alternating"`` (the MAP fit alone) and with ``solver=EM()`` (EM's
  defaults, which are the estimator's for counts: the best of its MAP fit from 4 starts, then Monte-Carlo EM),
  both with ``device="cpu", progress=False``, in this process, one after the other (EM refits its MAP start
  from scratch: its MAP templates are not exposed, so the MAP fit is timed on its own);
- runs the *marginal-likelihood reference*: EM's iterations (its defaults, without the MAP start and without
  tempering, ``EM(n_tempered=0)``: tempering helps templates leave a poor start, and from the truth would only
  move them away) started from the true templates, the true baseline and the true prior (the event rate, and
  amplitudes on a grid over the true range), the prior then learned as EM learns it. It shows where maximising
  the marginal likelihood leads when the start is right: the error that a better start could reach;
- reports the mean aligned template error (``align_templates(learned, true).mean_error``) of MAP, of EM and of
  the reference, the floor, EM / floor, and the wall-clock fit seconds of MAP and EM.

Each row is printed as soon as it is computed, and ``benchmarks/results/em.csv`` is rewritten after every row,
so that an interrupted run still leaves its numbers. At the end a table of means over seeds is printed (as
markdown) and ``benchmarks/results/em.png`` is drawn: error against the number of examples (log x), one line
per method (MAP, EM, floor) and family.

Usage::

    python benchmarks/em.py                                          # both families, 100 300 1000, seeds 0 1 2
    python benchmarks/em.py --families binomial --n-examples 100 300 --seeds 0 1 2
    python benchmarks/em.py --families binomial --n-examples 1000 --seeds 0 --append   # add rows to em.csv

``--append`` keeps the rows of an earlier ``em.csv`` (those not measured again) so that the summary and the
figure cover several runs. ``--threads`` sets torch's thread count (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core

from spikedict import SpikeDictionary
from spikedict.analysis import align_templates
from spikedict.model import DCEA
from spikedict.solvers import EM, FitProblem
from spikedict.solvers._sampling import CodePrior
from spikedict.solvers.em import EMRun

RESULTS = core.RESULTS
KEYS = ["family", "n_examples", "seed"]
COLUMNS = [*KEYS, "map_error", "em_error", "reference", "floor", "em_to_floor", "map_seconds", "em_seconds"]


def fit(simulation: core.SimulatedCounts, family: str, seed: int, solver: object) -> tuple[float, float]:
    """(template error, fit seconds) of one fit with ``solver`` at its defaults."""
    kwargs = core.estimator_kwargs(family, seed, {"device": "cpu", "progress": False, "solver": solver})
    model = SpikeDictionary().set_params(**kwargs)
    start = time.perf_counter()
    model.fit(simulation.counts)
    seconds = time.perf_counter() - start
    return align_templates(model.templates_, simulation.templates).mean_error, seconds


def reference(simulation: core.SimulatedCounts, seed: int) -> float:
    """Template error of EM's iterations (``EM()``'s settings, untempered) started from the truth: the true
    templates and baseline, the true event rate and amplitudes on a grid over the true range."""
    settings = EM(n_tempered=0)
    templates = torch.as_tensor(simulation.templates, dtype=torch.float32)
    n_templates, n_channels, size = templates.shape
    model = DCEA(n_templates, n_channels, size, simulation.family)
    with torch.no_grad():
        model.templates.copy_(templates)
        model.baseline.copy_(torch.as_tensor(simulation.baseline, dtype=torch.float32))
    counts = torch.as_tensor(simulation.counts, dtype=torch.float32)
    problem = FitProblem(model, counts, simulation.family, 0.0, n_templates, 0, seed, "cpu")
    amplitudes = torch.linspace(*core.AMPLITUDE_RANGE, settings.n_amplitudes)
    run = EMRun(settings, problem)
    run.begin(
        CodePrior(
            torch.full((n_templates,), core.EVENT_RATE, dtype=torch.float64),
            amplitudes,
            torch.full((n_templates, len(amplitudes)), 1.0 / len(amplitudes)),
        )
    )
    history = [run.run_epoch(epoch) for epoch in range(settings.n_epochs)]
    run.finish("n_epochs", history)
    return align_templates(model.templates.detach().numpy(), simulation.templates).mean_error


def measure(family: str, n_examples: int, seed: int) -> dict[str, float | int | str]:
    simulation = core.simulate(family, seed, n_examples)
    floor, _ = core.maximum_likelihood_floor(simulation)
    map_error, map_seconds = fit(simulation, family, seed, "alternating")
    em_error, em_seconds = fit(simulation, family, seed, EM())
    return {
        "family": family,
        "n_examples": n_examples,
        "seed": seed,
        "map_error": map_error,
        "em_error": em_error,
        "reference": reference(simulation, seed),
        "floor": floor,
        "em_to_floor": em_error / floor,
        "map_seconds": map_seconds,
        "em_seconds": em_seconds,
    }


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds, per family and number of examples."""
    grouped = table.groupby(["family", "n_examples"], sort=True)
    means = grouped[COLUMNS[3:]].mean()
    means.insert(0, "seeds", grouped["seed"].apply(lambda s: " ".join(str(v) for v in sorted(s))))
    return means.reset_index()


def markdown(table: pd.DataFrame) -> str:
    text = table.copy()
    for column in ("map_error", "em_error", "reference", "floor"):
        text[column] = text[column].map(lambda v: f"{v:.3f}")
    text["em_to_floor"] = text["em_to_floor"].map(lambda v: f"{v:.1f}")
    for column in ("map_seconds", "em_seconds"):
        text[column] = text[column].map(lambda v: f"{v:.1f}")
    header = "| " + " | ".join(text.columns) + " |"
    rule = "|" + "|".join("---" for _ in text.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in text.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def figure(means: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"binomial": "tab:blue", "poisson": "tab:orange"}
    styles = {
        "map_error": ("MAP", "--", "o"),
        "em_error": ("EM", "-", "s"),
        "reference": ("EM from the truth", "-.", "d"),
        "floor": ("floor", ":", "^"),
    }
    for family, rows in means.groupby("family"):
        for column, (label, style, marker) in styles.items():
            ax.plot(
                rows["n_examples"],
                rows[column],
                style,
                marker=marker,
                color=colours.get(family),
                label=f"{family} {label}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of examples")
    ax.set_ylabel("mean template error (mean over seeds)")
    ax.set_title("Issue 19: EM against MAP and the known-codes floor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["binomial", "poisson"], choices=["binomial", "poisson"])
    parser.add_argument("--n-examples", nargs="+", type=int, default=[100, 300, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--append", action="store_true", help="keep the other rows of an earlier em.csv")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    n_threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(n_threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    csv = args.output_dir / "em.csv"
    earlier = pd.read_csv(csv) if args.append and csv.exists() else pd.DataFrame(columns=COLUMNS)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# torch threads {n_threads}, cpu_count {os.cpu_count()}, load average at start {load}", flush=True)
    print(f"# git {core.git_revision()}", flush=True)
    print("  ".join(f"{c:>11}" for c in COLUMNS), flush=True)
    rows: list[dict] = []
    for family in args.families:
        for n_examples in args.n_examples:
            for seed in args.seeds:
                row = measure(family, n_examples, seed)
                rows.append(row)
                cells = [f"{v:>11.4f}" if isinstance(v, float) else f"{v!s:>11}" for v in row.values()]
                print("  ".join(cells), flush=True)
                new = pd.DataFrame(rows, columns=COLUMNS)
                measured = set(map(tuple, new[KEYS].itertuples(index=False)))
                kept = earlier[[tuple(k) not in measured for k in earlier[KEYS].itertuples(index=False)]]
                table = pd.concat([kept, new] if len(kept) else [new], ignore_index=True)
                table.sort_values(KEYS).to_csv(csv, index=False)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# load average at end {load}", flush=True)
    means = summary(pd.read_csv(csv))
    print("\nMeans over seeds (all rows of em.csv):\n", flush=True)
    print(markdown(means), flush=True)
    try:
        figure(means, args.output_dir / "em.png")
        print(f"\nwrote {csv} and {args.output_dir / 'em.png'}", flush=True)
    except ImportError:
        print(f"\nwrote {csv} (no matplotlib: no figure)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
