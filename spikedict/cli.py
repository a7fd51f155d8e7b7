"""The ``spikedict`` command.

``spikedict demo`` simulates spikes from the DCEA paper's three templates, learns templates from the
counts and prints how well they match the truth.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(arguments: argparse.Namespace) -> int:
    import torch

    from spikedict.analysis import align_templates
    from spikedict.estimator import SpikeDictionary
    from spikedict.simulate import paper_templates, simulate_counts

    true = paper_templates(50)
    n_examples = 30 if arguments.quick else 100
    n_trials = 30 if arguments.family == "binomial" else None
    simulation = simulate_counts(
        true,
        n_examples=n_examples,
        n_bins=2000,
        family=arguments.family,
        n_trials=n_trials,
        baseline=0.0 if arguments.family == "gaussian" else -2.0,
        noise_std=0.1 if arguments.family == "gaussian" else None,
        seed=arguments.seed,
    )
    print(
        f"simulated {arguments.family} counts: {n_examples} examples x 2000 bins, 3 templates of 50 bins"
        + (f", M = {n_trials} trials per example" if n_trials else "")
    )
    model = SpikeDictionary(
        n_templates=3,
        template_size=50,
        family=arguments.family,
        n_trials=n_trials,
        n_epochs=10 if arguments.quick else 30,
        device=arguments.device,
        seed=arguments.seed,
        progress=None,
    )
    started = time.perf_counter()
    model.fit(simulation.counts)
    seconds = time.perf_counter() - started
    initial = align_templates(model.initial_templates_, true)
    alignment = align_templates(model.templates_, true)
    table = alignment.table[["true_index", "learned_index", "lag", "sign", "error"]].copy()
    table.insert(1, "shape", ["square", "triangle", "cosine"])
    table["initial_error"] = initial.errors
    print(f"fit: {seconds:.1f} s on {model.model_.templates.device} ({torch.get_num_threads()} threads)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    summary = f"mean recovered-template error sqrt(1 - <h, h_hat>^2): {alignment.mean_error:.3f}"
    print(f"{summary} (initial {initial.mean_error:.3f})")
    return 0


def _denoise(arguments: argparse.Namespace) -> int:
    from spikedict.images import denoise_cli

    return denoise_cli(arguments)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``spikedict`` command."""
    parser = argparse.ArgumentParser(
        prog="spikedict", description="Learn firing-rate templates from spike trains (DCEA)."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="learn templates from simulated spikes and compare them with the truth",
        description="Simulate spikes from the DCEA paper's three templates, fit, and print the template errors.",
        epilog="examples:\n  spikedict demo\n  spikedict demo --quick --family poisson",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--family", choices=["binomial", "poisson", "gaussian"], default="binomial")
    demo.add_argument("--quick", action="store_true", help="a smaller problem for a first look (seconds)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    denoise = commands.add_parser("denoise", help="denoise a photon-limited image (2-D DCEA, shipped models)")
    denoise.add_argument("image", help="image file of photon counts (PNG, TIFF, JPEG or .npy)")
    denoise.add_argument("--peak", type=float, required=True, help="expected count at the brightest pixel")
    denoise.add_argument("--model", default=None, help="dcea-uc (default), dcea-c, dncnn or a saved model path")
    denoise.add_argument("--out", default=None, help="output .npy or .png (default: IMAGE_denoised.npy)")
    denoise.set_defaults(handler=_denoise)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        if arguments.debug:
            raise
        print(f"spikedict: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
