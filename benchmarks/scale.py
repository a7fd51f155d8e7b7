"""Scale benchmark: a long recording streamed in windows, and the parallel efficiency of 2 CPU processes.

``stream``: an hour of 100 units at 1 ms bins (3.6e8 counts, 1.4 GB as float32) is simulated chunk by chunk
from 3 templates of 50 bins spanning all units and written to a NIX file as spike times; a fresh process then
builds ``RecordingWindows`` from the file (10 s windows, 250 ms overlap), fits ``SpikeDictionary`` on them
(``solver=Backprop(n_epochs=1, warm_start=False)``: one stochastic pass over the windows; streamed fits default to
the alternating solver since issue 20) and encodes a stretch with the stitched ``transform``. It prints the wall
time of each step and the process's peak resident memory during the fit (VmHWM, reset before the fit), next to
the memory that the counts of the whole recording would take.

``scaling``: the standard binomial problem (100 x 2000 bins, M = 30) fitted with ``Backprop`` by one
process and by two processes under ``torchrun`` (gloo, one thread each, the same global batch of 50): wall
times, the efficiency ``t1 / (2 * t2)``, and the largest difference between the two runs' templates. Two
independent one-process fits run at the same time give the machine's own ceiling (shared caches, memory
bandwidth, a second vCPU that is not a full core), and ``share_of_ceiling`` says how much of it the
distributed fit reaches.

Usage::

    python benchmarks/scale.py stream                     # the 1-hour / 100-unit recording on the CPU
    python benchmarks/scale.py stream --minutes 5         # a shorter recording (smoke run)
    python benchmarks/scale.py stream --device cuda --source memory
    python benchmarks/scale.py scaling

Results are printed as markdown and written to ``benchmarks/results/scale_*.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import _max_rss_mb, _read_status_mb, _reset_peak_memory

RESULTS = Path(__file__).resolve().parent / "results"
N_UNITS, TEMPLATE_SIZE, N_TEMPLATES = 100, 50, 3
BASELINE = float(np.log(0.005))  # 5 spikes/s per unit at 1 ms bins


def simulate_recording(minutes: float, seed: int = 0, chunk_seconds: int = 60) -> tuple[list, np.ndarray]:
    """Spike trains of ``N_UNITS`` units (neo.SpikeTrain, seconds) and the true templates.

    The counts are simulated a minute at a time (events near a chunk's end are cut off there), and each
    count becomes that many spikes at uniform times inside its bin.
    """
    import neo
    import quantities as pq

    from spikedict.simulate import simulate_counts

    rng = np.random.default_rng(seed)
    templates = np.cumsum(rng.normal(size=(N_TEMPLATES, N_UNITS, TEMPLATE_SIZE)), axis=2)
    templates -= templates.mean(axis=2, keepdims=True)
    templates /= np.linalg.norm(templates.reshape(N_TEMPLATES, -1), axis=1)[:, None, None]
    n_bins = int(round(minutes * 60_000))
    spikes: list[list[np.ndarray]] = [[] for _ in range(N_UNITS)]
    for first in range(0, n_bins, chunk_seconds * 1000):
        length = min(chunk_seconds * 1000, n_bins - first)
        chunk = simulate_counts(
            templates * 10,  # amplitude 10-20 over 100 units: each event moves every unit's log-rate a little
            n_examples=1,
            n_bins=length,
            family="poisson",
            baseline=BASELINE,
            event_rate=0.002,
            seed=int(rng.integers(2**31)),
        ).counts[0]
        for unit in range(N_UNITS):
            bins = np.repeat(np.arange(length), chunk[unit].astype(np.int64))
            spikes[unit].append((first + bins + rng.random(len(bins))) * 1e-3)
    t_stop = n_bins * 1e-3 * pq.s
    trains = [
        neo.SpikeTrain(np.sort(np.concatenate(times)) * pq.s, t_stop=t_stop, name=f"unit {u}", unit=f"unit {u}")
        for u, times in enumerate(spikes)
    ]
    return trains, templates


def stream(args: argparse.Namespace) -> pd.DataFrame:

    folder = Path(tempfile.mkdtemp(prefix="spikedict-scale-"))
    clock = time.perf_counter()
    trains, _ = simulate_recording(args.minutes)
    simulate_seconds = time.perf_counter() - clock
    n_spikes = sum(len(t) for t in trains)
    source = "memory"
    if args.source == "nix":
        import neo

        from spikedict.io import write_recording

        block = neo.Block()
        segment = neo.Segment()
        segment.spiketrains.extend(trains)
        block.segments.append(segment)
        path = folder / "recording.nix"
        write_recording(block, path)
        del block, segment, trains
        source = str(path)
    else:
        import pickle

        source = str(folder / "trains.pkl")  # our own file, written a line above: handed to the child process
        with open(source, "wb") as handle:
            pickle.dump(trains, handle)
        del trains
    settings = {
        "source": source,
        "device": args.device,
        "window_seconds": args.window,
        "overlap_ms": args.overlap,
        "n_iterations": args.n_iterations,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    child = subprocess.run(
        [sys.executable, __file__, "_stream_child", json.dumps(settings)], capture_output=True, text=True
    )
    if child.returncode:
        raise RuntimeError(child.stderr[-4000:])
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    n_bins = int(round(args.minutes * 60_000))
    row = {
        "recording": f"{args.minutes:g} min x {N_UNITS} units, 1 ms bins",
        "counts": N_UNITS * n_bins,
        "spikes": n_spikes,
        "source": args.source,
        "device": measured.pop("device_name"),
        "simulate_s": simulate_seconds,
        **measured,
        "counts_float32_mb": N_UNITS * n_bins * 4 / 2**20,
    }
    return pd.DataFrame([row])


def _stream_child(settings: dict) -> None:
    import pickle

    import quantities as pq
    import torch

    from spikedict import SpikeDictionary
    from spikedict.io import RecordingWindows
    from spikedict.settings import Encoder
    from spikedict.solvers import Backprop

    torch.set_num_threads(settings["threads"])
    clock = time.perf_counter()
    window, overlap = settings["window_seconds"] * pq.s, settings["overlap_ms"] * pq.ms
    if settings["source"].endswith(".nix"):
        windows = RecordingWindows.from_file(settings["source"], 1 * pq.ms, window, overlap)
    else:
        with open(settings["source"], "rb") as handle:
            windows = RecordingWindows(pickle.load(handle), 1 * pq.ms, window, overlap)
    load_seconds = time.perf_counter() - clock
    model = SpikeDictionary(
        N_TEMPLATES,
        TEMPLATE_SIZE,
        "poisson",
        # the stochastic solver, as measured before issue 20 (streamed fits now default to the alternating one)
        solver=Backprop(
            n_epochs=1,
            batch_size=settings["batch_size"],
            n_code_iterations=settings["n_iterations"],
            warm_start=False,
        ),
        encoder=Encoder(n_iterations=settings["n_iterations"]),
        device=settings["device"],
        progress=False,
        seed=0,
    )
    exact = _reset_peak_memory()
    before = _read_status_mb("VmRSS") or 0.0
    clock = time.perf_counter()
    model.fit(windows)
    if settings["device"] != "cpu":
        torch.cuda.synchronize()
    fit_seconds = time.perf_counter() - clock
    peak = _read_status_mb("VmHWM") if exact else _max_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    stretch = windows.head(min(20, windows.n_windows))  # stitched encoding throughput on a stretch
    clock = time.perf_counter()
    model.transform(stretch)
    encode_seconds = time.perf_counter() - clock
    result = {
        "device_name": torch.cuda.get_device_name() if model.model_.templates.is_cuda else f"{os.cpu_count()} CPUs",
        "threads": settings["threads"],
        "windows": windows.n_windows,
        "n_iterations": settings["n_iterations"],
        "load_bin_index_s": load_seconds,
        "fit_s": fit_seconds,
        "fit_counts_per_s": windows.n_windows * windows.window_bins * windows.n_channels / fit_seconds,
        "encode_counts_per_s": stretch.n_bins * windows.n_channels / encode_seconds,
        "peak_rss_mb": peak,
        "rss_before_fit_mb": before,
        "peak_gpu_mb": gpu_peak,
        "memory_method": "VmHWM reset before fit" if exact else "ru_maxrss",
    }
    print(json.dumps(result))


RANK_SCRIPT = """
import sys, time, numpy as np, torch
torch.set_num_threads(1)
from spikedict import SpikeDictionary, distributed
from spikedict.solvers import Backprop
if len(sys.argv) > 5:
    distributed.init_from_environment()
counts = np.load(sys.argv[1])
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time import of the optimiser stack, not timed
model = SpikeDictionary(3, 50, "binomial", n_trials=30, solver=Backprop(n_epochs=int(sys.argv[3]),
                        batch_size=int(sys.argv[4])), progress=False, device="cpu", seed=0)
clock = time.perf_counter()
model.fit(counts)
seconds = time.perf_counter() - clock
if distributed.rank() == 0:
    np.save(sys.argv[2], model.templates_)
    print("SECONDS", seconds)
"""


def scaling(args: argparse.Namespace) -> pd.DataFrame:
    from spikedict.simulate import paper_templates, simulate_counts

    folder = Path(tempfile.mkdtemp(prefix="spikedict-scaling-"))
    counts = simulate_counts(paper_templates(50), n_examples=100, n_bins=2000, n_trials=30, seed=0).counts
    np.save(folder / "counts.npy", counts)
    script = folder / "rank.py"
    script.write_text(RANK_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []

    def launch(command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)

    def seconds_of(process: subprocess.Popen) -> float:
        out, err = process.communicate()
        if process.returncode:
            raise RuntimeError(err[-4000:])
        return float(out.split("SECONDS")[-1].split()[0])

    for repeat in range(args.repeats):
        single = [sys.executable, str(script), str(folder / "counts.npy"), str(folder / "templates1.npy")]
        single += [str(args.n_epochs), str(args.batch_size)]
        rows.append({"repeat": repeat, "mode": "1 process", "fit_s": seconds_of(launch(single))})
        parallel = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", str(script)]
        parallel += [str(folder / "counts.npy"), str(folder / "templates2.npy"), str(args.n_epochs)]
        parallel += [str(args.batch_size), "distributed"]
        rows.append({"repeat": repeat, "mode": "2 processes", "fit_s": seconds_of(launch(parallel))})
        # What the machine allows: two independent one-process fits at the same time (no communication).
        pair = [launch(single[:3] + [str(folder / f"independent{k}.npy")] + single[4:]) for k in range(2)]
        rows.append({"repeat": repeat, "mode": "2 independent", "fit_s": max(seconds_of(p) for p in pair)})
    table = pd.DataFrame(rows)
    one, two = np.load(folder / "templates1.npy"), np.load(folder / "templates2.npy")
    median = table.groupby("mode")["fit_s"].median()
    return pd.DataFrame(
        [
            {
                "problem": f"binomial 100 x 2000, M=30, backprop solver, global batch {args.batch_size}",
                "epochs": args.n_epochs,
                "fit_s_1_process": median["1 process"],
                "fit_s_2_processes": median["2 processes"],
                "speed_up": median["1 process"] / median["2 processes"],
                "efficiency": median["1 process"] / (2 * median["2 processes"]),
                "machine_ceiling_efficiency": median["1 process"] / median["2 independent"],
                "share_of_ceiling": median["2 independent"] / (2 * median["2 processes"]),
                "max_template_difference": float(np.abs(one - two).max()),
                "repeats": args.repeats,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            }
        ]
    )


def markdown(table: pd.DataFrame) -> str:
    """One row per column of ``table`` (a one-row result): ``| name | value |``."""
    lines = ["| measure | value |", "|---|---|"]
    for name, value in table.iloc[0].items():
        text = f"{value:.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_stream_child":
        _stream_child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    parser_stream = commands.add_parser("stream", help="fit an hour of 100 units streamed from a file")
    parser_stream.add_argument("--minutes", type=float, default=60.0)
    parser_stream.add_argument("--device", default="cpu")
    parser_stream.add_argument("--source", choices=["nix", "memory"], default="nix")
    parser_stream.add_argument("--window", type=float, default=10.0, help="seconds")
    parser_stream.add_argument("--overlap", type=float, default=250.0, help="milliseconds")
    parser_stream.add_argument("--n-iterations", type=int, default=20)
    parser_stream.add_argument("--batch-size", type=int, default=4)
    parser_stream.add_argument("--threads", type=int, default=2)
    parser_scaling = commands.add_parser("scaling", help="1 process against 2 (gloo) on the standard problem")
    parser_scaling.add_argument("--n-epochs", type=int, default=5)
    parser_scaling.add_argument("--batch-size", type=int, default=50, help="the global batch (split in two)")
    parser_scaling.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = stream(args) if args.command == "stream" else scaling(args)
    RESULTS.mkdir(exist_ok=True)
    name = f"scale_{args.command}" + (f"_{args.device.replace(':', '')}" if args.command == "stream" else "")
    table.to_csv(RESULTS / f"{name}.csv", index=False)
    print(markdown(table))


if __name__ == "__main__":
    main()
