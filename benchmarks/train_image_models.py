"""Train the shipped photon-limited image denoisers (one per peak): DCEA-C, DCEA-UC and the DnCNN-style baseline.

Patches of the natural images bundled with scikit-image (``spikedict.images.TRAINING_IMAGES``; never the
test images), supervised MSE against the clean mean counts, on one CPU thread. DCEA-UC starts from the
trained DCEA-C (templates, baseline) and learns untied encoder / decoder weights and one threshold per
template. Writes ``data/models/{dcea-c,dcea-uc,dncnn}_peak{P}.safetensors`` + ``.json``.

Usage::

    python benchmarks/train_image_models.py                  # peaks 1 2 4, the shipped settings
    python benchmarks/train_image_models.py --peaks 4 --n-patches 200 --epochs 1 --output-dir /tmp/models
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from spikedict.images import (
    DnCNN,
    ImageDCEA,
    load_denoiser,
    make_training_set,
    n_parameters,
    save_denoiser,
    train_dcea,
    train_dncnn,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peaks", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--n-patches", type=int, default=800)
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--n-templates", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs=3, default=[5, 10, 4], help="epochs of DCEA-C, DCEA-UC, DnCNN")
    parser.add_argument("--learning-rates", type=float, nargs=3, default=[1e-2, 3e-3, 3e-3])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dncnn-depth", type=int, default=13)
    parser.add_argument("--dncnn-width", type=int, default=32)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "data" / "models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["dcea-c", "dcea-uc", "dncnn"],
        help="models to train; DCEA-UC starts from the DCEA-C of this run, else from the one in --output-dir",
    )
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    total_started = time.perf_counter()
    for peak in arguments.peaks:
        counts, rates = make_training_set(peak, arguments.n_patches, arguments.patch_size, seed=int(peak * 10))
        tag = f"peak{peak:g}"
        common = {
            "n_patches": arguments.n_patches,
            "patch_size": arguments.patch_size,
            "batch_size": arguments.batch_size,
        }
        epochs, rates_ = arguments.epochs, arguments.learning_rates

        sparsity = math.sqrt(peak)
        if "dcea-c" in arguments.kinds:
            started = time.perf_counter()
            tied = ImageDCEA(peak, tied=True, n_templates=arguments.n_templates, sparsity=sparsity)
            result = train_dcea(
                tied, counts, rates, epochs[0], batch_size=arguments.batch_size, learning_rate=rates_[0], progress=False
            )
            seconds = time.perf_counter() - started
            losses = result.history["train_loss"].round(4).tolist()
            print(f"dcea-c {tag}: losses {losses} in {seconds:.0f} s", flush=True)
            save_denoiser(
                tied,
                arguments.output_dir / f"dcea-c_{tag}",
                {**common, "epochs": epochs[0], "learning_rate": rates_[0], "seconds": round(seconds, 1)},
            )
        elif "dcea-uc" in arguments.kinds:
            tied = load_denoiser(arguments.output_dir / f"dcea-c_{tag}")

        if "dcea-uc" in arguments.kinds:
            _train_untied(arguments, peak, tag, tied, counts, rates, common)
        if "dncnn" in arguments.kinds:
            _train_dncnn(arguments, peak, tag, counts, rates, common)
    print(f"total training time: {time.perf_counter() - total_started:.0f} s")
    return 0


def _train_untied(
    arguments: argparse.Namespace, peak: float, tag: str, tied: ImageDCEA, counts, rates, common: dict
) -> None:
    """DCEA-UC from the trained DCEA-C: templates copied into the dictionary, encoder and decoder weights."""
    epochs, rates_ = arguments.epochs, arguments.learning_rates
    sparsity = math.sqrt(peak)
    started = time.perf_counter()
    untied = ImageDCEA(peak, tied=False, n_templates=arguments.n_templates, sparsity=sparsity)
    with torch.no_grad():
        for name in ("templates", "encoder_templates", "decoder_templates"):
            getattr(untied, name).copy_(tied.templates)
    result = train_dcea(
        untied, counts, rates, epochs[1], batch_size=arguments.batch_size, learning_rate=rates_[1], progress=False
    )
    seconds = time.perf_counter() - started
    print(f"dcea-uc {tag}: losses {result.history['train_loss'].round(4).tolist()} in {seconds:.0f} s", flush=True)
    save_denoiser(
        untied,
        arguments.output_dir / f"dcea-uc_{tag}",
        {**common, "epochs": epochs[1], "learning_rate": rates_[1], "seconds": round(seconds, 1)},
    )

    print(f"parameters: dcea-c {n_parameters(tied)}, dcea-uc {n_parameters(untied)}")


def _train_dncnn(arguments: argparse.Namespace, peak: float, tag: str, counts, rates, common: dict) -> None:
    """The DnCNN-style baseline on the same patches."""
    epochs, rates_ = arguments.epochs, arguments.learning_rates
    started = time.perf_counter()
    cnn = DnCNN(peak, depth=arguments.dncnn_depth, width=arguments.dncnn_width)
    losses = train_dncnn(cnn, counts, rates, epochs[2], batch_size=arguments.batch_size, learning_rate=rates_[2])
    seconds = time.perf_counter() - started
    print(f"dncnn {tag}: losses {[round(v, 4) for v in losses]} in {seconds:.0f} s", flush=True)
    save_denoiser(
        cnn,
        arguments.output_dir / f"dncnn_{tag}",
        {**common, "epochs": epochs[2], "learning_rate": rates_[2], "seconds": round(seconds, 1)},
    )
    print(f"parameters: dncnn {n_parameters(cnn)}")


if __name__ == "__main__":
    raise SystemExit(main())
