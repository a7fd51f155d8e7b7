"""Photon-limited image denoising benchmark: PSNR over the DCEA paper's seven test images at peaks 1, 2, 4.

Methods (all estimate the mean counts from the counts ``y``; PSNR of ``Q * estimate`` against the clean
image, peak = the clean image's maximum, averaged over ``--draws`` Poisson draws with fixed seeds):

- ``noisy``: the noisy input scaled back, ``Q * y``;
- ``anscombe-bm3d``: Anscombe transform, BM3D at unit noise (``bm3d`` package; ``anscombe-gaussian``, a
  Gaussian filter, if it is not installed), exact unbiased inverse (Mäkitalo & Foi closed form);
- ``dncnn``: the DnCNN-style CNN of ``data/models`` (trained on the same patches as the DCEA models);
- ``dcea-c``, ``dcea-uc``: the shipped DCEA models, shift-averaged over ``--shifts`` stride offsets.

Usage::

    python benchmarks/images.py                         # all methods, 2 draws, 9 of the 49 offsets
    python benchmarks/images.py --quick                 # 1 draw, house and cameraman only, peak 4

Writes ``benchmarks/results/images.csv`` (one row per method, peak, image), ``images_summary.csv``
and ``images.md`` (``images_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spikedict.images import (
    TEST_IMAGES,
    anscombe_denoise,
    denoise,
    has_bm3d,
    load_denoiser,
    load_test_image,
    n_parameters,
    poisson_noise,
    psnr,
    shipped_model_path,
)

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("dncnn", "dcea-c", "dcea-uc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["noisy", "anscombe", *NETWORKS])
    parser.add_argument("--peaks", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--images", nargs="+", default=list(TEST_IMAGES))
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument(
        "--shifts", type=int, default=9, help="stride offsets averaged by DCEA (default 9: a 3 x 3 sub-grid; 49 = all)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        default=None,
        help="an earlier images.csv (or several): its rows (same method, peak, image; any number of draws) are kept",
    )
    parser.add_argument("--name", default="images", help="stem of the output files (default: images)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.draws, arguments.peaks, arguments.images = 1, [4.0], ["house", "cameraman"]
    torch.set_num_threads(arguments.threads)

    previous = pd.concat([pd.read_csv(path) for path in arguments.reuse]) if arguments.reuse else None
    rows = []
    for peak in arguments.peaks:
        for name in arguments.images:
            clean = load_test_image(name)
            draws = [poisson_noise(clean, peak, generator=1000 * draw + 7) for draw in range(arguments.draws)]
            for method in arguments.methods:
                if method not in ("noisy", "anscombe", *NETWORKS):
                    parser.error(f"unknown method {method!r}")
                if previous is not None:
                    kept = previous[
                        (
                            previous["method"].isin(
                                [method, "anscombe-bm3d", "anscombe-gaussian"] if method == "anscombe" else [method]
                            )
                        )
                        & (previous["peak"] == peak)
                        & (previous["image"] == name)
                    ]
                    if len(kept):
                        rows.append(kept.iloc[0].to_dict())
                        continue
                label, parameters, run = _method(method, peak, arguments.shifts)
                values, seconds = [], []
                for counts, scale in draws:
                    started = time.perf_counter()
                    estimate = run(counts)
                    seconds.append(time.perf_counter() - started)
                    values.append(psnr(scale * estimate, clean))
                row = {
                    "method": label,
                    "peak": peak,
                    "image": name,
                    "psnr": float(np.mean(values)),
                    "psnr_std": float(np.std(values)),
                    "n_draws": len(values),
                    "parameters": parameters,
                    "seconds": float(np.mean(seconds)),
                }
                rows.append(row)
                print(
                    f"peak {peak:g} {name:10s} {label:18s} {row['psnr']:6.2f} dB  {row['seconds']:6.2f} s", flush=True
                )

    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["method"]))
    table = frame.pivot_table(index=["peak", "method"], columns="image", values="psnr", sort=False)
    table = table[[n for n in arguments.images]]
    table["mean"] = table.mean(axis=1)
    extra = frame.groupby(["peak", "method"], sort=False).agg(
        parameters=("parameters", "first"), seconds=("seconds", "mean"), draws=("n_draws", "first")
    )
    summary = table.join(extra).reset_index()
    summary["method"] = pd.Categorical(summary["method"], order)
    summary = summary.sort_values(["peak", "method"]).reset_index(drop=True)

    suffix = "_quick" if arguments.quick else ""
    stem = arguments.name
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(arguments.output_dir / f"{stem}{suffix}.csv", index=False)
    summary.to_csv(arguments.output_dir / f"{stem}_summary{suffix}.csv", index=False)
    header = (
        f"# Photon-limited image denoising: PSNR (dB)\n\n{datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{arguments.threads} thread(s); mean over {arguments.draws} Poisson draw(s) per image; seconds per image "
        f"(mean over images and draws); DCEA shift-averaging over {arguments.shifts or 'all'} offsets.\n\n"
    )
    markdown = summary.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else _markdown(summary)
    (arguments.output_dir / f"{stem}{suffix}.md").write_text(header + markdown + "\n")
    print(header + markdown)
    return 0


def _method(method: str, peak: float, shifts: int | None) -> tuple[str, int, Callable[[np.ndarray], np.ndarray]]:
    """Label, parameter count and ``counts -> estimated mean counts`` of one method at one peak."""
    if method == "noisy":
        return "noisy", 0, lambda counts: counts
    if method == "anscombe":
        return ("anscombe-bm3d" if has_bm3d() else "anscombe-gaussian"), 0, anscombe_denoise
    model = load_denoiser(shipped_model_path(method, peak))

    def run(counts: np.ndarray) -> np.ndarray:
        return denoise(counts, peak, model=model, shifts=shifts)

    return method, n_parameters(model), run


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
