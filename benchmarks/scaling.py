"""Scaling of spikedict: fit time and peak memory as the data, the channels and the templates grow.

Three sweeps, each point fitted in a fresh child process (``core.run_fit``: peak resident memory reset just
before ``fit``), all with the estimator's defaults except a fixed, short number of passes over the data
(``--epochs``: the solver's ``n_epochs``, default 2) so that the time measures the cost of a pass and not a
convergence criterion:

- ``bins``: total bins (examples x 2000 bins, one channel, 3 templates of 50): 1e5, 3e5 and 1e6 by default;
  ``--long`` adds 3e6 and 1e7 (about 6 more minutes on 2 cores), ``--large`` also 3e7 and 1e8 (hours, GBs);
- ``channels``: 1 to 64 channels at 5 examples x 2000 bins per channel (3 templates of 50);
- ``templates``: 1 to 32 templates of 50 bins at 20 examples x 2000 bins (one channel; the event rate per
  template is ``0.03 / n_templates`` so that the density of events stays that of the standard problem).

Every point also encodes its data (``transform``, the estimator's ``encoder.n_iterations``) and reports
the throughput in bins per second. Each sweep gets a fitted exponent ``k`` of ``time ~ size^k`` (least
squares on log-log, the smallest size left out with ``--drop-smallest`` when fixed costs dominate it).

Usage::

    python benchmarks/scaling.py                     # the three sweeps at default sizes (a few minutes)
    python benchmarks/scaling.py --sweeps bins --long    # total bins up to 1e7
    python benchmarks/scaling.py --sweeps bins --large   # up to 1e8 total bins (hours on 2 cores)
    python benchmarks/scaling.py --device cuda       # the same on the GPU (and --compare-cpu for speed-ups)

Writes ``benchmarks/results/scaling[_<device>].csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import RESULTS, cpu_model, fit_in_child, git_revision, to_markdown, write_results

from spikedict.simulate import paper_templates, simulate_counts

TEMPLATE_SIZE = 50
N_BINS = 2000
DEFAULT_BINS = [1e5, 3e5, 1e6]
LONG_BINS = [3e6, 1e7]
LARGE_BINS = [3e7, 1e8]
DEFAULT_CHANNELS = [1, 4, 16, 64]
CHANNEL_EXAMPLES = 5
DEFAULT_TEMPLATES = [1, 2, 4, 8, 16, 32]
TEMPLATE_EXAMPLES = 20
TOTAL_EVENT_RATE = 0.03


def fit_exponent(sizes: Any, times: Any) -> tuple[float, float]:
    """Least-squares fit of ``log(time) = k log(size) + log(c)``: returns ``(k, c)`` of ``time ~ c size^k``."""
    x = np.log(np.asarray(sizes, dtype=float))
    y = np.log(np.asarray(times, dtype=float))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("an exponent needs at least two different sizes")
    k, log_c = np.polyfit(x, y, 1)
    return float(k), float(np.exp(log_c))


def _fit_on_device(counts: np.ndarray, kwargs: dict[str, Any], n_threads: int) -> dict[str, Any]:
    """``core.fit_in_child``, with the GPU's context made before the clock starts and its peak memory read."""
    cuda = str(kwargs.get("device", "cpu")).startswith("cuda")
    if cuda:
        torch.zeros(1, device=kwargs["device"])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    fitted = fit_in_child(counts, kwargs, n_threads)
    fitted["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else np.nan
    return fitted


def run_fit(counts: np.ndarray, kwargs: dict[str, Any], n_threads: int) -> dict[str, Any]:
    """:func:`_fit_on_device` in a new spawned process (as ``core.run_fit``)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(_fit_on_device, counts, kwargs, n_threads).result()


def random_templates(n_templates: int, n_channels: int, size: int, seed: int) -> np.ndarray:
    """Smooth random templates (Gaussian noise under a Hann window), unit l2 norm each over channels and time."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((n_templates, n_channels, size)) * np.hanning(size + 2)[1:-1]
    return templates / np.linalg.norm(templates.reshape(n_templates, -1), axis=1)[:, None, None]


def problem(sweep: str, value: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Poisson counts (baseline -2) for one point of a sweep, and a description of it."""
    if sweep == "bins":
        templates, n_examples, rate = paper_templates(TEMPLATE_SIZE), max(1, round(value / N_BINS)), 0.01
    elif sweep == "channels":
        templates, n_examples, rate = random_templates(3, value, TEMPLATE_SIZE, seed), CHANNEL_EXAMPLES, 0.01
    elif sweep == "templates":
        templates = random_templates(value, 1, TEMPLATE_SIZE, seed)
        n_examples, rate = TEMPLATE_EXAMPLES, TOTAL_EVENT_RATE / value
    else:
        raise ValueError(f"unknown sweep {sweep!r}")
    simulation = simulate_counts(
        templates, n_examples=n_examples, n_bins=N_BINS, family="poisson", baseline=-2.0, event_rate=rate, seed=seed
    )
    n_templates, n_channels, _ = templates.shape
    counts = simulation.counts.astype(np.float32)
    return counts, {
        "n_examples": n_examples,
        "n_channels": n_channels,
        "n_templates": n_templates,
        "total_bins": counts.size,
    }


def sizes_of(args: argparse.Namespace, sweep: str) -> list[int]:
    if sweep == "bins":
        extra = LONG_BINS + LARGE_BINS if args.large else LONG_BINS if args.long else []
        return [int(v) for v in (args.bins or DEFAULT_BINS + extra)]
    if sweep == "channels":
        return args.channels or DEFAULT_CHANNELS
    return args.templates or DEFAULT_TEMPLATES


def exponents(table: pd.DataFrame, drop_smallest: bool) -> pd.DataFrame:
    """Exponent of fit time and of encode time against the swept size, per sweep."""
    size_column = {"bins": "total_bins", "channels": "n_channels", "templates": "n_templates"}
    rows = []
    for sweep, group in table[table["status"] == "ok"].groupby("sweep", sort=False):
        group = group.sort_values(size_column[sweep])
        if drop_smallest and len(group) > 2:
            group = group.iloc[1:]
        if len(group) < 2:
            continue
        sizes = group[size_column[sweep]]
        k_fit, _ = fit_exponent(sizes, group["fit_seconds"])
        k_encode, _ = fit_exponent(sizes, group["encode_seconds"])
        k_memory, _ = fit_exponent(sizes, group["fit_memory_mb"].clip(lower=1.0))
        rows.append(
            {
                "sweep": sweep,
                "size": size_column[sweep],
                "range": f"{sizes.min():g}..{sizes.max():g}",
                "points": len(group),
                "fit_time_exponent": k_fit,
                "encode_time_exponent": k_encode,
                "fit_memory_exponent": k_memory,
            }
        )
    return pd.DataFrame(rows)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", nargs="+", choices=["bins", "channels", "templates"], default=None)
    parser.add_argument("--bins", type=float, nargs="+", default=None, help="total bins of the bins sweep")
    parser.add_argument("--long", action="store_true", help="add 3e6 and 1e7 total bins (~6 more min on 2 cores)")
    parser.add_argument("--large", action="store_true", help="add 3e6 to 1e8 total bins (hours, several GB)")
    parser.add_argument("--channels", type=int, nargs="+", default=None)
    parser.add_argument("--templates", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data per fit (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-smallest", action="store_true", help="leave the smallest size out of the exponents")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="stem of the output files (default scaling[_device])")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    sweeps = args.sweeps or ["bins", "channels", "templates"]
    n_threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(n_threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else None
    lines = [
        f"spikedict scaling benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores; device {args.device}{f' ({gpu})' if gpu else ''}; "
        f"torch threads {n_threads}; torch {torch.__version__}; Python {platform.python_version()}; "
        f"load average at start: {load} (timings on a shared machine are upper bounds)",
        f"spikedict revision: {git_revision()}",
        f"command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}",
        f"fits: SpikeDictionary, alternating solver (poisson, templates of {TEMPLATE_SIZE}), "
        f"solver__n_epochs={args.epochs}, "
        f"device={args.device}; each in a fresh process; peak memory = VmHWM during fit (host RAM)",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    for sweep in sweeps:
        for value in sizes_of(args, sweep):
            counts, description = problem(sweep, value, args.seed)
            kwargs = {
                "n_templates": description["n_templates"],
                "template_size": TEMPLATE_SIZE,
                "family": "poisson",
                "solver": "alternating",  # the measured pass: EM, the default for counts, starts from this fit
                "solver__n_epochs": args.epochs,
                "device": args.device,
                "seed": args.seed,
                "progress": False,
            }
            row: dict[str, Any] = {"sweep": sweep, "value": value, **description}
            try:
                fitted = run_fit(counts, kwargs, n_threads)
            except Exception as error:  # report and go on with the other sizes
                row.update(status=f"{type(error).__name__}: {error}".splitlines()[0][:200])
                row.update(fit_seconds=np.nan, encode_seconds=np.nan, peak_memory_mb=np.nan, fit_memory_mb=np.nan)
            else:
                row.update(
                    status="ok",
                    fit_seconds=fitted["fit_seconds"],
                    fit_seconds_per_epoch=fitted["fit_seconds"] / max(1, fitted["n_epochs_run"]),
                    encode_seconds=fitted["encode_seconds"],
                    encode_bins_per_second=counts.size / fitted["encode_seconds"],
                    peak_memory_mb=fitted["peak_memory_mb"],
                    fit_memory_mb=fitted["fit_memory_mb"],
                    gpu_peak_memory_mb=fitted["gpu_peak_memory_mb"],
                )
            rows.append(row)
            print(
                f"  {sweep:<9} {value:>10g}: {description['total_bins']:.2g} bins, fit {row['fit_seconds']:.2f} s, "
                f"encode {row.get('encode_bins_per_second', np.nan):.3g} bins/s, "
                f"peak {row['peak_memory_mb']:.0f} MB, {row['status']}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    fitted_exponents = exponents(table, args.drop_smallest)
    formats = {
        "fit_seconds_per_epoch": "{:.2f}",
        "encode_seconds": "{:.2f}",
        "total_bins": "{:.3g}",
        "gpu_peak_memory_mb": "{:.0f}",
    }
    shown = table.copy()
    for column, pattern in formats.items():
        if column in shown:
            shown[column] = [pattern.format(v) if pd.notna(v) else "nan" for v in shown[column]]
    exps = fitted_exponents.copy()
    for column in ("fit_time_exponent", "encode_time_exponent", "fit_memory_exponent"):
        if column in exps:
            exps[column] = [f"{v:.2f}" for v in exps[column]]
    markdown = [
        "# spikedict scaling",
        "",
        *[f"- {line}" for line in lines],
        "",
        to_markdown(shown),
        "",
        "Fitted exponents (time ~ size^k, least squares on log-log):",
        "",
        to_markdown(exps) if len(exps) else "(not enough points)",
        "",
    ]
    text = "\n".join(markdown)
    print("\n" + text)
    stem = args.name or ("scaling" if args.device == "cpu" else f"scaling_{args.device.split(':')[0]}")
    write_results(args.output_dir, stem, {"": table, "_exponents": fitted_exponents}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
