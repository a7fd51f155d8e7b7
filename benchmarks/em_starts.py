"""Issue 19: EM from several starts on the binomial standard problem. Does the training loss pick the best start?

EM settles in a local optimum that its MAP start decides (``benchmarks/README.md``, "Issue 19"). Restarts help
only if something a user has, without the truth, tells the good starts from the bad ones. For each data seed this
fits EM (its defaults) from ``--starts`` initialisations (estimator seeds ``data_seed + 100 * start``) and prints,
per start, the error against the true templates, EM's training loss (mean of its last 5 iterations: one draw of
the codes is noisy) and the loss at the end of its MAP start; then the error of the start each loss picks.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/em_starts.py [--seeds 0 1 2] [--starts 4] [--n-examples 100]
"""

from __future__ import annotations

import argparse
import os
import time

import core
import pandas as pd
import torch

from spikedict import SpikeDictionary
from spikedict.analysis import align_templates
from spikedict.solvers import EM


def fit_start(simulation: core.SimulatedCounts, data_seed: int, start: int) -> dict[str, float | int]:
    """One EM fit of the binomial standard problem from the start ``start``: error, losses and seconds."""
    kwargs = core.estimator_kwargs("binomial", data_seed, {"device": "cpu", "progress": False})
    model = SpikeDictionary().set_params(**{**kwargs, "seed": data_seed + 100 * start, "solver": EM()})
    clock = time.perf_counter()
    model.fit(simulation.counts)
    history = model.history_
    return {
        "data_seed": data_seed,
        "start": start,
        "error": align_templates(model.templates_, simulation.templates).mean_error,
        "em_loss": float(history.loc[history["phase"] == "em", "train_loss"].iloc[-5:].mean()),
        "map_loss": float(history.loc[history["phase"] == "map", "train_loss"].iloc[-1]),
        "seconds": time.perf_counter() - clock,
    }


def picks(table: pd.DataFrame) -> pd.DataFrame:
    """Per data seed: the first start's error, the best error, and the errors of the starts the losses pick."""
    rows = []
    for data_seed, group in table.groupby("data_seed"):
        rows.append(
            {
                "data_seed": data_seed,
                "first_start": group["error"].iloc[0],
                "best_start": group["error"].min(),
                "picked_by_em_loss": group.loc[group["em_loss"].idxmin(), "error"],
                "picked_by_map_loss": group.loc[group["map_loss"].idxmin(), "error"],
            }
        )
    result = pd.DataFrame(rows)
    return pd.concat([result, result.mean().to_frame().T.assign(data_seed="mean")], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="data seeds")
    parser.add_argument("--starts", type=int, default=4, help="initialisations per data seed")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# torch threads {args.threads}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"# git {core.git_revision()}; binomial standard problem, {args.n_examples} examples", flush=True)
    rows = []
    for data_seed in args.seeds:
        simulation = core.simulate("binomial", data_seed, args.n_examples)
        for start in range(args.starts):
            rows.append(fit_start(simulation, data_seed, start))
            print("  ".join(f"{k} {v:.6g}" for k, v in rows[-1].items()), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + core.to_markdown(table.round({"error": 3, "em_loss": 6, "map_loss": 6, "seconds": 1})))
    print("\n" + core.to_markdown(picks(table).round(3)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
