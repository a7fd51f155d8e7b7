"""spikedict against its peers: alphacsc, sporco and seqNMF on the same problems, in one run.

Every method is fitted on the standard problem of ``core.py`` (100 signals x 2000 bins, the 3 unit-norm
templates of 50 bins of ``paper_templates``, about 1% events) in its Gaussian (noise 0.1), binomial (M = 30)
and Poisson variants, for the seeds given, and scored like ``core.py``: the mean aligned template error
(``align_templates``: best permutation, sign and shift), its ratio to the maximum-likelihood floor (the error
of the best templates when the true codes are known), the fit's wall time, the encode throughput and the
peak resident memory of the fit. Each fit runs in a fresh child process (``core``'s memory helpers); within a
seed the methods alternate (their order rotates from problem to problem) so that a change of the machine's
load does not fall on one method only.

Methods (``--methods``):

- ``spikedict``: ``SpikeDictionary`` with its defaults (``init="data"``; since issue 19 EM for count data, the
  alternating solver before), as in ``core.py``;
- ``spikedict-init``: the same, started from the shared random initial templates;
- ``alphacsc``: ``alphacsc.learn_d_z`` (univariate CSC, ``solver_z="l-bfgs"``, ``reg=0.1`` of lambda_max at
  the initial templates, ``lmbd_max="scaled"``, 60 iterations: its defaults otherwise), encode = ``update_z``;
- ``alphacsc-chunk`` (not run by default): the same from alphacsc's ``ds_init="chunk"`` (windows of the data,
  like spikedict's default ``init="data"``);
- ``sporco``: ``sporco.dictlrn.cbpdndl.ConvBPDNDictLearn`` (1-D, ADMM, 200 iterations, lambda 0.1 of the
  largest correlation of the data with the initial templates), encode = ``admm.cbpdn.ConvBPDN`` (200 iterations);
- ``seqnmf``: ``seqnmf.seqnmf`` (K = 3, L = 50, its defaults: Lambda 0.001, 100 iterations, but
  ``shift=False``, since its default ``shift=True`` fails on one channel) on the 100 signals laid end to end;
  non-negative, so it starts from the absolute value of the shared templates and the Gaussian data are
  clipped at 0; encode = ``seqnmf`` with the templates fixed.

The peers fit the raw counts, as their users do: they model Gaussian noise around a linear signal with no
baseline and no link function. The shared initial templates are standard normal draws (seed ``10000 +
seed``) normalised to unit norm, the same for every variant of a seed and every method that takes them.

The peers live in their own environment (``benchmarks/peers-env`` makes ``.venv-peers``: numpy < 2.4 for
alphacsc, setuptools < 82 for seqnmf); a peer that does not import is reported in the output and skipped.

Usage::

    .venv-peers/bin/python benchmarks/peers.py                  # seeds 0 1 2, all variants and methods
    .venv-peers/bin/python benchmarks/peers.py --seeds 0 --methods spikedict alphacsc
    python benchmarks/peers.py --methods spikedict --n-examples 4   # spikedict alone, in .venv
    python benchmarks/peers.py --methods spikedict --params '{"solver": "alternating", "solver__n_code_iterations": 30}'

``--params`` takes ``SpikeDictionary`` parameters as in ``core.py`` (nested settings with ``__``; the flat names of
before issue 20 are translated).

Writes ``benchmarks/results/peers.csv``, ``peers_summary.csv`` and ``peers.md`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import (
    MEASURED,
    N_BINS,
    N_EXAMPLES,
    N_TEMPLATES,
    PARAMS_HELP,
    RESULTS,
    TEMPLATE_SIZE,
    VARIANTS,
    _max_rss_mb,
    _read_status_mb,
    _reset_peak_memory,
    cpu_model,
    estimator_kwargs,
    git_revision,
    maximum_likelihood_floor,
    parse_params,
    run_fit,
    simulate,
    to_markdown,
    write_results,
)

from spikedict.analysis.alignment import align_templates

METHODS = ("spikedict", "spikedict-init", "alphacsc", "alphacsc-chunk", "sporco", "seqnmf")
DEFAULT_METHODS = ("spikedict", "spikedict-init", "alphacsc", "sporco", "seqnmf")
PEER_MODULES = {"alphacsc": "alphacsc", "sporco": "sporco.dictlrn.cbpdndl", "seqnmf": "seqnmf"}
# Methods that are a peer run another way: the module they need.
PEER_OF = {"alphacsc": "alphacsc", "alphacsc-chunk": "alphacsc", "sporco": "sporco", "seqnmf": "seqnmf"}
COLUMNS = ["method", "variant", "seed", *MEASURED, "init", "status"]
# Settings of the peers (see the module docstring).
ALPHACSC_REG, ALPHACSC_ITERATIONS = 0.1, 60
SPORCO_LAMBDA, SPORCO_ITERATIONS = 0.1, 200
SEQNMF_ITERATIONS = 100
INIT_SEED_OFFSET = 10_000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# Targets of the issue.
SPEED_TARGET = 10.0
RATIO_TARGET = 1.5
ENCODE_TARGET = 1e7


def shared_initial_templates(seed: int) -> np.ndarray:
    """The random initial templates of every method that accepts them: unit-norm standard normal draws."""
    rng = np.random.default_rng(INIT_SEED_OFFSET + seed)
    templates = rng.standard_normal((N_TEMPLATES, 1, TEMPLATE_SIZE))
    return templates / np.linalg.norm(templates, axis=2, keepdims=True)


def peer_status() -> dict[str, str]:
    """``"ok"`` or why each peer cannot be used here (the import's error)."""
    status = {}
    for name, module in PEER_MODULES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imported = importlib.import_module(module)
            root = importlib.import_module(name)
            version = getattr(root, "__version__", None)
            if version is None:
                from importlib.metadata import version as dist_version

                version = dist_version(name)
            status[name] = f"ok ({name} {version})"
            del imported
        except Exception as error:  # report, do not stop
            status[name] = f"cannot import {module}: {type(error).__name__}: {error}".splitlines()[0]
    return status


# ------------------------------------------------------------------------------------- peer fits
def _fit_alphacsc(counts: np.ndarray, init: np.ndarray | str, seed: int) -> tuple[np.ndarray, Any, dict[str, Any]]:
    from alphacsc import learn_d_z
    from alphacsc.update_z import update_z

    X = counts[:, 0, :]
    _, _, d_hat, _, reg = learn_d_z(
        X,
        N_TEMPLATES,
        TEMPLATE_SIZE,
        reg=ALPHACSC_REG,
        lmbd_max="scaled",
        n_iter=ALPHACSC_ITERATIONS,
        ds_init=init if isinstance(init, str) else init[:, 0, :].copy(),
        solver_z="l-bfgs",
        random_state=seed,
        n_jobs=1,
        verbose=0,
    )

    def encode() -> None:
        update_z(X, d_hat, reg, solver="l-bfgs")

    return d_hat[:, None, :], encode, {"reg": float(np.max(reg))}


def _fit_sporco(counts: np.ndarray, init: np.ndarray, seed: int) -> tuple[np.ndarray, Any, dict[str, Any]]:
    from sporco.admm import cbpdn
    from sporco.dictlrn import cbpdndl

    S = np.ascontiguousarray(counts[:, 0, :].T)  # (n_bins, n_signals): dimN=1, dimK=1
    D0 = np.ascontiguousarray(init[:, 0, :].T)  # (template_size, n_templates)
    correlation = np.stack([np.correlate(s, d, mode="valid") for s in S.T for d in D0.T])
    lmbda = SPORCO_LAMBDA * float(np.abs(correlation).max())
    options = cbpdndl.ConvBPDNDictLearn.Options({"Verbose": False, "MaxMainIter": SPORCO_ITERATIONS})
    learner = cbpdndl.ConvBPDNDictLearn(D0, S, lmbda, options, dimK=1, dimN=1)
    learner.solve()
    D = np.asarray(learner.getdict()).squeeze()  # (template_size, n_templates)
    D = D.reshape(TEMPLATE_SIZE, N_TEMPLATES)

    def encode() -> None:
        encode_options = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": SPORCO_ITERATIONS})
        cbpdn.ConvBPDN(D, S, lmbda, encode_options, dimK=1, dimN=1).solve()

    return D.T[:, None, :], encode, {"lambda": lmbda}


def _fit_seqnmf(counts: np.ndarray, init: np.ndarray, seed: int) -> tuple[np.ndarray, Any, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation
        from seqnmf import seqnmf

    X = np.clip(counts[:, 0, :], 0.0, None).reshape(1, -1)  # the signals end to end, one channel, >= 0
    W_init = np.abs(init[:, 0, :])[None, :, :].copy()  # (n_channels, K, L)
    np.random.seed(seed)  # noqa: NPY002 (seqnmf draws H_init from numpy's global generator)
    # shift=False: seqnmf 0.1.2's default shift=True fails on one channel (its shift_factors squeezes the
    # channel axis away: "AxisError: axis 1 is out of bounds for array of dimension 1").
    W, _, _, _, _ = seqnmf(X, K=N_TEMPLATES, L=TEMPLATE_SIZE, W_init=W_init, max_iter=SEQNMF_ITERATIONS, shift=False)

    def encode() -> None:
        np.random.seed(seed)  # noqa: NPY002
        fixed = {"W_fixed": True, "shift": False}
        seqnmf(X, K=N_TEMPLATES, L=TEMPLATE_SIZE, W_init=W.copy(), max_iter=SEQNMF_ITERATIONS, **fixed)

    return np.transpose(W, (1, 0, 2)), encode, {"clipped_bins": int(np.sum(counts < 0))}


def scorable(templates: np.ndarray) -> tuple[np.ndarray, int]:
    """``templates`` with each all-zero template (a method that dropped it) replaced by a unit impulse.

    ``align_templates`` refuses all-zero templates; an impulse scores close to the worst error (about 0.97 to
    0.99 against the paper's templates), as a template that was not learned should. Returns the templates and
    how many were replaced.
    """
    templates = np.array(templates, dtype=np.float64)
    empty = np.linalg.norm(templates.reshape(len(templates), -1), axis=1) == 0
    templates[empty] = 0.0
    templates[empty, 0, templates.shape[2] // 2] = 1.0
    return templates, int(empty.sum())


PEER_FITS = {
    "alphacsc-chunk": lambda counts, init, seed: _fit_alphacsc(counts, "chunk", seed),
    "alphacsc": _fit_alphacsc,
    "sporco": _fit_sporco,
    "seqnmf": _fit_seqnmf,
}


def peer_fit_in_child(method: str, counts: np.ndarray, init: np.ndarray, seed: int, n_threads: int) -> dict[str, Any]:
    """Fit one peer in this (fresh) process; peak memory as in ``core.fit_in_child``."""
    torch.set_num_threads(n_threads)
    exact = _reset_peak_memory() and _read_status_mb("VmHWM") is not None
    rss_before_fit = _read_status_mb("VmRSS") if exact else _max_rss_mb()
    start = time.perf_counter()
    templates, encode, info = PEER_FITS[method](counts.astype(np.float64), init, seed)
    fit_seconds = time.perf_counter() - start
    peak = _read_status_mb("VmHWM") if exact else _max_rss_mb()
    start = time.perf_counter()
    encode()
    encode_seconds = time.perf_counter() - start
    return {
        "fit_seconds": fit_seconds,
        "encode_seconds": encode_seconds,
        "templates": templates,
        "peak_memory_mb": peak,
        "fit_memory_mb": peak - rss_before_fit,
        "memory_method": "VmHWM reset before fit" if exact else "ru_maxrss of child",
        "settings": info,
    }


def run_peer_fit(method: str, counts: np.ndarray, init: np.ndarray, seed: int, n_threads: int) -> dict[str, Any]:
    """:func:`peer_fit_in_child` in a new spawned process, as ``core.run_fit`` does for spikedict."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(peer_fit_in_child, method, counts, init, seed, n_threads).result()


def fit_method(
    method: str, variant: str, seed: int, counts: np.ndarray, init: np.ndarray, params: dict[str, Any], n_threads: int
) -> dict[str, Any]:
    if method in ("spikedict", "spikedict-init"):
        kwargs = estimator_kwargs(variant, seed, params)
        if method == "spikedict-init":
            kwargs["init"] = init.copy()
        fitted = run_fit(counts, kwargs, n_threads)
        fitted["settings"] = {"n_epochs_run": fitted["n_epochs_run"], "sparsity": round(float(fitted["sparsity"]), 5)}
        return fitted
    return run_peer_fit(method, counts, init, seed, n_threads)


INIT_OF = {
    "spikedict": "data (default)",
    "spikedict-init": "shared",
    "alphacsc": "shared",
    "alphacsc-chunk": "chunk (its data windows)",
    "sporco": "shared",
    "seqnmf": "|shared|",
}


def benchmark_problem(
    variant: str,
    seed: int,
    methods: list[str],
    n_examples: int,
    params: dict[str, Any],
    n_threads: int,
    available: dict[str, str],
) -> list[dict[str, Any]]:
    """All methods on one (variant, seed) problem, in the given order."""
    simulation = simulate(variant, seed, n_examples)
    floor, gradient = maximum_likelihood_floor(simulation)
    if gradient > 1e-8:
        print(f"  warning: floor of {variant}/{seed} not converged (largest gradient {gradient:.1e})")
    init = shared_initial_templates(seed)
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method, "variant": variant, "seed": seed, "floor": floor}
        row["init"] = INIT_OF[method]
        if method in PEER_OF and not available[PEER_OF[method]].startswith("ok"):
            row.update(status=f"not run: {available[PEER_OF[method]]}")
        else:
            try:
                fitted = fit_method(method, variant, seed, simulation.counts, init, params, n_threads)
            except Exception as error:  # one failed fit must not lose the others
                traceback.print_exc()
                row.update(status=f"{type(error).__name__}: {error}".splitlines()[0][:200])
            else:
                learned, n_empty = scorable(fitted["templates"])
                error_value = align_templates(learned, simulation.templates).mean_error
                fitted["settings"]["zero_templates"] = n_empty
                row.update(
                    fit_seconds=fitted["fit_seconds"],
                    template_error=error_value,
                    ratio_to_floor=error_value / floor,
                    encode_bins_per_second=simulation.counts.size / fitted["encode_seconds"],
                    peak_memory_mb=fitted["peak_memory_mb"],
                    fit_memory_mb=fitted["fit_memory_mb"],
                    settings=json.dumps(fitted["settings"]),
                    status="ok" if fitted["memory_method"] == "VmHWM reset before fit" else "ok (ru_maxrss)",
                )
        rows.append(row)
        print(
            f"  {variant:<8} seed {seed} {method:<15}: fit {row.get('fit_seconds', np.nan):7.1f} s, "
            f"error {row.get('template_error', np.nan):.4f} (floor {floor:.4f}, ratio "
            f"{row.get('ratio_to_floor', np.nan):.2f}), {row['status']}",
            flush=True,
        )
    return rows


def rotated(methods: list[str], shift: int) -> list[str]:
    """``methods`` rotated left by ``shift``: each problem starts with a different method."""
    shift %= max(len(methods), 1)
    return methods[shift:] + methods[:shift]


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (variant, method)."""
    numeric = MEASURED
    ok = table[table["status"].str.startswith("ok")]
    if ok.empty:
        return pd.DataFrame(columns=["variant", "method", "n_seeds", *numeric])
    groups = ok.groupby(["variant", "method"], sort=False)
    summary = groups[numeric].mean()
    summary.insert(0, "n_seeds", groups.size())
    return summary.reset_index()


def targets(summary: pd.DataFrame) -> list[str]:
    """The issue's targets, checked on the summary (means over seeds)."""
    lines = []
    spikedict = summary[summary["method"] == "spikedict"].set_index("variant")
    peers = summary[summary["method"].isin(list(PEER_OF))]
    gaussian_peers = peers[peers["variant"] == "gaussian"]
    if "gaussian" in spikedict.index and not gaussian_peers.empty:
        ours = spikedict.loc["gaussian"]
        fastest = gaussian_peers.loc[gaussian_peers["fit_seconds"].idxmin()]
        best = gaussian_peers.loc[gaussian_peers["template_error"].idxmin()]
        speed_up = fastest["fit_seconds"] / ours["fit_seconds"]
        lines.append(
            f"gaussian: spikedict {ours['fit_seconds']:.1f} s vs fastest peer {fastest['method']} "
            f"{fastest['fit_seconds']:.1f} s: {speed_up:.2f}x faster (target >= {SPEED_TARGET:g}x): "
            f"{'met' if speed_up >= SPEED_TARGET else 'MISSED'}"
        )
        lines.append(
            f"gaussian: spikedict error {ours['template_error']:.4f} vs best peer {best['method']} "
            f"{best['template_error']:.4f} (target: no worse): "
            f"{'met' if ours['template_error'] <= best['template_error'] else 'MISSED'}"
        )
    for variant in ("binomial", "poisson"):
        if variant in spikedict.index:
            ratio = spikedict.loc[variant, "ratio_to_floor"]
            lines.append(
                f"{variant}: spikedict ratio to floor {ratio:.2f} (target <= {RATIO_TARGET}): "
                f"{'met' if ratio <= RATIO_TARGET else 'MISSED'}"
            )
    if not spikedict.empty:
        rate = spikedict["encode_bins_per_second"].min()
        lines.append(
            f"encode throughput of spikedict (slowest variant): {rate:.3g} bins/s (target >= {ENCODE_TARGET:.0e}): "
            f"{'met' if rate >= ENCODE_TARGET else 'MISSED'}"
        )
    return lines


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    parser.add_argument("--n-examples", type=int, default=N_EXAMPLES, help=f"signals per problem ({N_EXAMPLES})")
    parser.add_argument("--params", default="{}", help=PARAMS_HELP)
    parser.add_argument("--threads", type=int, default=None, help="threads of every method (default os.cpu_count())")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="peers", help="stem of the output files")
    args = parser.parse_args(argv)
    args.params = parse_params(parser, args.params)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    n_threads = args.threads or os.cpu_count() or 1
    for variable in THREAD_VARIABLES:  # inherited by the spawned children before they import numpy
        os.environ[variable] = str(n_threads)
    torch.set_num_threads(n_threads)
    available = peer_status()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"spikedict against its peers, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores, shared with other work (load average at start: {load}); "
        f"{n_threads} threads for every method (torch and BLAS); torch {torch.__version__}; "
        f"numpy {np.__version__}; Python {platform.python_version()}",
        f"spikedict revision: {git_revision()}",
        f"command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}",
        f"problem: {args.n_examples} signals x {N_BINS} bins, {N_TEMPLATES} templates of {TEMPLATE_SIZE} "
        f"(core.py's standard problem); variants {args.variants}; seeds {args.seeds}",
        "peers fit the raw counts (as their users do); seqnmf the signals end to end, clipped at 0",
        "peers: " + "; ".join(f"{name}: {state}" for name, state in available.items()),
        f"spikedict extra params: {json.dumps(args.params)}",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    for seed in args.seeds:
        for index, variant in enumerate(args.variants):
            order = rotated(list(args.methods), seed * len(args.variants) + index)
            rows += benchmark_problem(variant, seed, order, args.n_examples, args.params, n_threads, available)
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
    order = {method: i for i, method in enumerate(METHODS)}
    table = table.sort_values(["variant", "seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    summary = summarise(table)
    checks = targets(summary)
    shown = ["method", "variant", "seed", *COLUMNS[3:]]
    markdown = [
        "# spikedict against its peers",
        "",
        *[f"- {line}" for line in lines],
        "",
        "## Per seed",
        "",
        to_markdown(table[shown]),
        "",
        "## Mean over seeds",
        "",
        to_markdown(summary),
        "",
        "## Targets of issue 6",
        "",
        *[f"- {line}" for line in checks],
        "",
    ]
    text = "\n".join(markdown)
    print("\n" + text)
    write_results(args.output_dir, args.name, {"": table, "_summary": summary}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
