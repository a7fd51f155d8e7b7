"""Core benchmark of spikedict: template recovery, speed and memory on the standard simulated problem.

The standard problem: 100 signals x 2000 bins, the 3 unit-norm templates of ``paper_templates(50)``, codes
with ``event_rate=0.01`` per template per bin and amplitudes uniform in [1, 2], in three variants:

- ``gaussian``: ``family="gaussian"``, ``noise_std=0.1``, baseline 0;
- ``binomial``: 30 trials pooled per example, baseline log-odds -2;
- ``poisson``: baseline log-rate -2.

For each variant and seed (the seed of the data and of the model) one ``SpikeDictionary`` is fitted with the
estimator's defaults (since issue 19 EM for the binomial and Poisson variants; ``--params '{"solver":
"alternating"}'`` fits the MAP solver that the tables before then measured), in a fresh child process (so that
its peak resident memory is its own), and compared with the *floor*: the template error of the
maximum-likelihood templates when the true codes and the true baseline are known. See ``benchmarks/README.md``
for what each column means and how it is measured.

Usage::

    python benchmarks/core.py                       # seeds 0 1 2, all variants
    python benchmarks/core.py --quick               # one seed, fewer examples: a smoke run
    python benchmarks/core.py --variants poisson --params '{"solver__n_epochs": 40}'

``--params`` holds ``SpikeDictionary`` parameters as ``set_params`` takes them: top-level names (``sparsity``,
``solver``, ...) and nested settings with ``__`` (``solver__n_epochs``, ``solver__n_starts`` for EM,
``solver__n_code_iterations`` with ``"solver": "alternating"``,
``encoder__n_iterations``, ``constraints__smoothness``, ...). The flat names of before issue 20 (``n_epochs``,
``n_iterations``, ``initial_subset``, ...; see ``spikedict._model_file.VERSION_1_NAMES``) are translated, so
that the commands recorded in ``benchmarks/README.md`` still run.

Tables are printed and written to ``benchmarks/results/`` (``core.csv``, ``core_summary.csv``, ``core.md``;
``core_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import spikedict
from spikedict import SpikeDictionary
from spikedict._model_file import VERSION_1_NAMES, version_1_params
from spikedict.analysis.alignment import align_templates
from spikedict.model import decode
from spikedict.simulate import SimulatedCounts, paper_templates, simulate_counts

N_TEMPLATES = 3
TEMPLATE_SIZE = 50
N_EXAMPLES = 100
N_BINS = 2000
QUICK_N_EXAMPLES = 5
EVENT_RATE = 0.01
AMPLITUDE_RANGE = (1.0, 2.0)
N_TRIALS = 30

# Simulation settings of each variant (keyword arguments of simulate_counts besides the shared ones).
VARIANTS: dict[str, dict[str, Any]] = {
    "gaussian": {"family": "gaussian", "noise_std": 0.1, "baseline": 0.0},
    "binomial": {"family": "binomial", "n_trials": N_TRIALS, "baseline": -2.0},
    "poisson": {"family": "poisson", "baseline": -2.0},
}

# Targets of the issue.
GAUSSIAN_ERROR_TARGET = 0.05
RATIO_TO_FLOOR_TARGET = 1.5
FIT_SECONDS_TARGET = 15.0

# Maximum-likelihood floor: L-BFGS on the NLL per bin in float64, stopped when the largest gradient entry is
# below this (the Hessian's eigenvalues are about event_rate * E[amplitude^2] ~ 0.02 per bin, so the
# templates are then within ~1e-8 of the optimum).
# Near 1e-10 the changes of the loss reach float64 rounding and L-BFGS may stall; a largest gradient above
# FLOOR_GRADIENT_WARNING (templates then possibly ~1e-6 off) is reported as a warning.
FLOOR_GRADIENT_TOLERANCE = 1e-10
FLOOR_GRADIENT_WARNING = 1e-8
FLOOR_MAX_ROUNDS = 20

RESULTS = Path(__file__).resolve().parent / "results"


# The flat SpikeDictionary keywords of before issue 20 and their nested names now (``solver__*``: settings of the
# solver that the old ``solver="auto"`` chose), so that old --params still work.
# --------------------------------------------------------------------------------------------- data
def simulate(variant: str, seed: int, n_examples: int) -> SimulatedCounts:
    """The standard problem for one variant and seed."""
    return simulate_counts(
        paper_templates(TEMPLATE_SIZE),
        n_examples=n_examples,
        n_bins=N_BINS,
        event_rate=EVENT_RATE,
        amplitude_range=AMPLITUDE_RANGE,
        seed=seed,
        **VARIANTS[variant],
    )


def estimator_kwargs(variant: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters of the benchmarked ``SpikeDictionary`` (``SpikeDictionary().set_params(**kwargs)``, nested ones
    with ``__``): the defaults plus ``params``."""
    kwargs: dict[str, Any] = {
        "n_templates": N_TEMPLATES,
        "template_size": TEMPLATE_SIZE,
        "family": VARIANTS[variant]["family"],
        "seed": seed,
        "progress": False,
    }
    if variant == "binomial":
        kwargs["n_trials"] = N_TRIALS
    kwargs.update(params)
    return kwargs


# -------------------------------------------------------------------------------------------- floor
def maximum_likelihood_floor(simulation: SimulatedCounts) -> tuple[float, float]:
    """Template error of the maximum-likelihood templates given the true codes and baseline.

    Minimises ``family.negative_log_likelihood(y, decode(true_codes, templates) + true_baseline)`` (mean per
    bin; convex in the templates) with L-BFGS in float64 from the true templates, without a norm constraint;
    the result is normalised by :func:`align_templates` before its error against the true templates is taken.

    Returns
    -------
    (error, largest_gradient)
        The mean aligned error and the largest absolute gradient entry at the end (a convergence check).
    """
    y = torch.as_tensor(simulation.counts, dtype=torch.float64)
    codes = torch.as_tensor(simulation.codes, dtype=torch.float64)
    baseline = torch.as_tensor(simulation.baseline, dtype=torch.float64).reshape(1, -1, 1)
    family = simulation.family
    signal_shape = tuple(y.shape[2:])
    templates = torch.tensor(simulation.templates, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [templates],
        lr=1.0,
        max_iter=500,
        history_size=50,
        tolerance_grad=FLOOR_GRADIENT_TOLERANCE,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        eta = decode(codes, templates, signal_shape=signal_shape) + baseline
        loss = family.negative_log_likelihood(y, eta).mean()
        loss.backward()
        return loss

    largest_gradient = float("inf")
    for _ in range(FLOOR_MAX_ROUNDS):
        optimizer.step(closure)
        closure()
        previous, largest_gradient = largest_gradient, float(templates.grad.abs().max())
        if largest_gradient <= FLOOR_GRADIENT_TOLERANCE or largest_gradient >= 0.5 * previous:
            break  # converged, or stalled at rounding level
    learned = templates.detach().numpy()
    return align_templates(learned, simulation.templates).mean_error, largest_gradient


# ------------------------------------------------------------------------------------ child process
def _read_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB, or None where there is no procfs."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_memory() -> bool:
    """Reset this process's peak resident set size (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def source_hash() -> str:
    """Short hash of the spikedict sources this process imported (they may change between fits)."""
    digest = hashlib.sha256()
    root = Path(spikedict.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def fit_in_child(counts: np.ndarray, kwargs: dict[str, Any], n_threads: int) -> dict[str, Any]:
    """Fit and encode in this (fresh) process; return timings, templates and the fit's peak memory.

    The peak resident set size of the process is reset just before ``fit`` and read just after it, so
    ``peak_memory_mb`` is the largest resident memory of the process *during the fit* (interpreter, torch
    and the data included) and ``fit_memory_mb`` its growth over the resident memory just before the fit.
    Where the peak cannot be reset (no procfs), ``ru_maxrss`` of this fresh process is used instead: then
    the peak also covers start-up, and ``fit_memory_mb`` is a lower bound.
    """
    torch.set_num_threads(n_threads)
    model = SpikeDictionary().set_params(**kwargs)
    exact = _reset_peak_memory() and _read_status_mb("VmHWM") is not None
    rss_before_fit = _read_status_mb("VmRSS") if exact else _max_rss_mb()
    start = time.perf_counter()
    model.fit(counts)
    fit_seconds = time.perf_counter() - start
    peak = _read_status_mb("VmHWM") if exact else _max_rss_mb()
    start = time.perf_counter()
    model.transform(counts)
    encode_seconds = time.perf_counter() - start
    return {
        "fit_seconds": fit_seconds,
        "encode_seconds": encode_seconds,
        "templates": model.templates_,
        "n_epochs_run": len(model.history_),
        "sparsity": model.sparsity_,
        "peak_memory_mb": peak,
        "fit_memory_mb": peak - rss_before_fit,
        "memory_method": "VmHWM reset before fit" if exact else "ru_maxrss of child",
        "torch_threads": torch.get_num_threads(),
        "source_hash": source_hash(),
    }


def run_fit(counts: np.ndarray, kwargs: dict[str, Any], n_threads: int) -> dict[str, Any]:
    """Run :func:`fit_in_child` in a new spawned process (one process per fit)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(fit_in_child, counts, kwargs, n_threads).result()


# ------------------------------------------------------------------------------------------- tables
def meets_error_target(variant: str, template_error: float, ratio_to_floor: float) -> bool:
    if variant == "gaussian":
        return bool(template_error <= GAUSSIAN_ERROR_TARGET)
    return bool(ratio_to_floor <= RATIO_TO_FLOOR_TARGET)


def benchmark_one(variant: str, seed: int, n_examples: int, params: dict[str, Any], n_threads: int) -> dict[str, Any]:
    simulation = simulate(variant, seed, n_examples)
    row: dict[str, Any] = {"variant": variant, "seed": seed, "n_examples": n_examples}
    start = time.perf_counter()
    floor, floor_gradient = maximum_likelihood_floor(simulation)
    row["floor_seconds"] = time.perf_counter() - start
    if floor_gradient > FLOOR_GRADIENT_WARNING:
        print(f"  warning: floor of {variant}/{seed} not converged (largest gradient {floor_gradient:.1e})")
    try:
        fitted = run_fit(simulation.counts, estimator_kwargs(variant, seed, params), n_threads)
    except Exception as error:  # one failed fit must not lose the others
        traceback.print_exc()
        fitted = None
        status = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    if fitted is None:
        template_error = fit_seconds = encode_rate = peak = fit_memory = float("nan")
        n_epochs_run, code = 0, ""
    else:
        status = "ok"
        template_error = align_templates(fitted["templates"], simulation.templates).mean_error
        fit_seconds = fitted["fit_seconds"]
        encode_rate = simulation.counts.size / fitted["encode_seconds"]
        peak, fit_memory = fitted["peak_memory_mb"], fitted["fit_memory_mb"]
        n_epochs_run, code = fitted["n_epochs_run"], fitted["source_hash"]
        if fitted["memory_method"] != "VmHWM reset before fit":
            status = f"ok (memory: {fitted['memory_method']})"
    ratio = template_error / floor
    error_ok = fitted is not None and meets_error_target(variant, template_error, ratio)
    time_ok = fitted is not None and bool(fit_seconds < FIT_SECONDS_TARGET)
    row.update(
        fit_seconds=fit_seconds,
        n_epochs_run=n_epochs_run,
        template_error=template_error,
        floor=floor,
        ratio_to_floor=ratio,
        encode_bins_per_second=encode_rate,
        peak_memory_mb=peak,
        fit_memory_mb=fit_memory,
        meets_error_target=error_ok,
        meets_time_target=time_ok,
        meets_target=error_ok and time_ok,
        status=status,
        spikedict_source=code,
    )
    return row


# What every fit measures (core.py and peers.py): averaged over seeds in the summaries.
MEASURED = [
    "fit_seconds",
    "template_error",
    "floor",
    "ratio_to_floor",
    "encode_bins_per_second",
    "peak_memory_mb",
    "fit_memory_mb",
]


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per variant; the target columns count the seeds that meet them."""
    numeric = MEASURED
    groups = table.groupby("variant", sort=False)
    summary = groups[numeric].mean()
    summary.insert(0, "n_seeds", groups.size())
    for column in ("meets_error_target", "meets_time_target", "meets_target"):
        summary[column] = groups[column].agg(lambda values: f"{int(values.sum())}/{len(values)}")
    return summary.reset_index()


FORMATS = {
    "fit_seconds": "{:.1f}",
    "floor_seconds": "{:.1f}",
    "template_error": "{:.4f}",
    "floor": "{:.4f}",
    "ratio_to_floor": "{:.2f}",
    "encode_bins_per_second": "{:.3g}",
    "peak_memory_mb": "{:.0f}",
    "fit_memory_mb": "{:.0f}",
}


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for column, pattern in FORMATS.items():
        if column in out:
            out[column] = [pattern.format(v) if pd.notna(v) else "nan" for v in out[column]]
    return out.astype(str)


def to_markdown(table: pd.DataFrame) -> str:
    text = formatted(table)
    lines = ["| " + " | ".join(text.columns) + " |", "|" + "|".join("---" for _ in text.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines)


def run_with_threads(run: Any, args: Any, argv: list[str] | None) -> int:
    """``run(args, argv)`` with ``args.threads`` torch threads (a ``--quick`` smoke run: 1 unless told otherwise, as
    multi-threaded torch spends a tiny problem waiting for its threads on a busy machine), restored afterwards."""
    threads = torch.get_num_threads()
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "spikedict"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        return revision + (" (spikedict/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(args: argparse.Namespace, params: dict[str, Any], n_threads: int, n_examples: int) -> list[str]:
    how = "set by --threads" if args.threads else "1 for --quick" if args.quick else "set to os.cpu_count()"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return [
        f"spikedict core benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores; torch threads: {n_threads} ({how}); "
        f"torch {torch.__version__}; Python {platform.python_version()}; load average at start: {load}",
        f"spikedict revision: {git_revision()}",
        f"command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}",
        f"problem: {n_examples} signals x {N_BINS} bins, {N_TEMPLATES} templates of {TEMPLATE_SIZE} bins "
        f"(paper_templates), event_rate {EVENT_RATE}, amplitudes uniform in {list(AMPLITUDE_RANGE)}; "
        f"variants {args.variants}; seeds {args.seeds}",
        f"estimator: SpikeDictionary defaults, extra params {json.dumps(params)}",
        f"targets: gaussian template_error <= {GAUSSIAN_ERROR_TARGET}; binomial and poisson ratio_to_floor <= "
        f"{RATIO_TO_FLOOR_TARGET}; fit_seconds < {FIT_SECONDS_TARGET:g} (on 2 cores)",
    ]


# --------------------------------------------------------------------------------------------- main
def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data and model seeds")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: the first seed only, {QUICK_N_EXAMPLES} examples, 1 thread"
    )
    parser.add_argument("--n-examples", type=int, default=None, help=f"signals per data set (default {N_EXAMPLES})")
    parser.add_argument("--params", default="{}", help=PARAMS_HELP)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: os.cpu_count(), as the issue's targets assume; 1 with --quick)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the tables are written")
    args = parser.parse_args(argv)
    args.params = parse_params(parser, args.params)
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


PARAMS_HELP = (
    "extra SpikeDictionary parameters as JSON, as set_params takes them: top-level names (sparsity, solver, ...) "
    "and nested settings with '__' (solver__n_epochs, solver__n_code_iterations, solver__initial_subset, "
    "encoder__n_iterations, constraints__smoothness, ...), e.g. '{\"solver__n_epochs\": 40}'. The flat names of "
    "before issue 20 (n_epochs, n_iterations, n_inference_iterations, ...) are translated."
)


def parse_params(parser: argparse.ArgumentParser, text: str) -> dict[str, Any]:
    """``--params``: a JSON object of ``SpikeDictionary`` parameters, old names translated (``parser.error``
    otherwise)."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"--params must be a JSON object, e.g. '{{\"solver__n_epochs\": 40}}': {error}")
    if not isinstance(params, dict):
        parser.error(f"--params must be a JSON object of SpikeDictionary parameters, got {params!r}")
    try:
        return translate_old_params(params)
    except ValueError as error:
        parser.error(f"--params: {error}")


def translate_old_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the flat names of before issue 20 replaced by the nested ones (see
    :func:`spikedict._model_file.version_1_params`, which reads old model files the same way), with a note."""
    old = [name for name in params if name in VERSION_1_NAMES]
    if not old:
        return dict(params)
    new, dropped = version_1_params(params)
    for name in dropped:
        print(
            f"--params: {name}={params[name]!r} does not apply to the {new['solver']} solver; dropped", file=sys.stderr
        )
    print(f"--params: old names {old} read as {json.dumps(new)}", file=sys.stderr)
    return new


def write_results(output_dir: Path, stem: str, tables: dict[str, pd.DataFrame], markdown: str) -> None:
    """Write ``<stem><suffix>.csv`` for each table (suffix "" for the main one) and ``<stem>.md``; say so."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for suffix, table in tables.items():
        table.to_csv(output_dir / f"{stem}{suffix}.csv", index=False)
    (output_dir / f"{stem}.md").write_text(markdown)
    names = [f"{stem}{suffix}.csv" for suffix in tables]
    print(f"wrote {output_dir / names[0]}, {', '.join(names[1:] + [f'{stem}.md'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    params = args.params
    try:  # catch misspelt settings before any work
        SpikeDictionary().set_params(**estimator_kwargs(args.variants[0], args.seeds[0], params))
    except (TypeError, ValueError) as error:
        print(f"--params: {error}", file=sys.stderr)
        return 2
    # A smoke run uses one thread unless told otherwise: on a busy machine, multi-threaded torch spends the
    # tiny --quick problem waiting for its threads (see README.md), and --quick measures nothing anyway.
    n_threads = args.threads or (1 if args.quick else os.cpu_count() or 1)
    torch.set_num_threads(n_threads)
    n_examples = args.n_examples or (QUICK_N_EXAMPLES if args.quick else N_EXAMPLES)

    lines = header(args, params, n_threads, n_examples)
    print("\n".join(lines), flush=True)
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            row = benchmark_one(variant, seed, n_examples, params, n_threads)
            rows.append(row)
            print(
                f"  {variant:<8} seed {seed}: fit {row['fit_seconds']:.1f} s, error {row['template_error']:.4f}, "
                f"floor {row['floor']:.4f}, ratio {row['ratio_to_floor']:.2f}, {row['status']}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    summary = summarise(table)
    sources = sorted(set(table["spikedict_source"]) - {""})
    if len(sources) > 1:
        print(f"\nwarning: the spikedict sources changed during the run ({', '.join(sources)}); compare rows with care")

    print("\nPer seed:\n" + formatted(table).to_string(index=False))
    print("\nSummary (mean over seeds):\n" + formatted(summary).to_string(index=False))

    stem = "core_quick" if args.quick else "core"
    markdown = [
        "# spikedict core benchmark",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Per seed",
        "",
        to_markdown(table),
        "",
        "## Summary (mean over seeds)",
        "",
        to_markdown(summary),
        "",
    ]
    write_results(args.output_dir, stem, {"": table, "_summary": summary}, "\n".join(markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
