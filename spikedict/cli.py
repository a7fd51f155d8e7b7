"""The ``spikedict`` command: ``demo``, ``fit``, ``simulate`` and ``info`` (built with click).

Errors are reported as one line on standard error with a non-zero exit status (2 for bad arguments, 1 for
failures, 130 for an interrupted fit); ``spikedict --debug ...`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["cli", "main", "parse_time"]

FAMILIES = ("binomial", "poisson", "gaussian")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

_TIME_PATTERN = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµμ]+)\s*$")


def parse_time(text: str, signed: bool = False) -> Any:
    """A duration from text with its unit, as a ``quantities`` quantity.

    Examples
    --------
    >>> parse_time("5ms"), parse_time("0.005 s"), parse_time("5 ms")
    (array(5.) * ms, array(0.005) * s, array(5.) * ms)
    >>> parse_time("5")
    Traceback (most recent call last):
    ...
    ValueError: '5' has no unit; write a duration with its unit, e.g. '5ms', '5 ms' or '0.005 s'.
    """
    import quantities as pq

    match = _TIME_PATTERN.match(str(text))
    if not match:
        try:
            float(text)
        except ValueError:
            pass
        else:
            raise ValueError(f"{text!r} has no unit; write a duration with its unit, e.g. '5ms', '5 ms' or '0.005 s'.")
        raise ValueError(f"{text!r} is not a duration; write a number and a unit, e.g. '5ms', '5 ms' or '0.005 s'.")
    number, unit = float(match.group(1)), match.group(2).replace("µ", "u").replace("μ", "u")
    try:
        value = pq.Quantity(number, unit)
        value.rescale(pq.s)
    except (LookupError, ValueError) as error:
        raise ValueError(f"{text!r} is not a duration: {unit!r} is not a unit of time (use s, ms or us).") from error
    if number < 0 and not signed:
        raise ValueError(f"{text!r} is negative; give a positive duration.")
    return value


class Duration(click.ParamType):
    """A time with its unit: ``5ms``, ``5 ms``, ``0.005 s`` (``-500ms`` too when ``signed``)."""

    name = "DURATION"

    def __init__(self, signed: bool = False) -> None:
        self.signed = signed

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if hasattr(value, "rescale"):
            return value
        try:
            return parse_time(value, signed=self.signed)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class BinsOrDuration(click.ParamType):
    """A whole number of bins (``50``) or a duration (``50ms``)."""

    name = "BINS|DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or hasattr(value, "rescale"):
            return value
        text = str(value).strip()
        if text.isdigit():
            if int(text) < 1:
                self.fail(f"{text!r} must be at least 1 bin.", param, ctx)
            return int(text)
        try:
            return parse_time(text)
        except ValueError:
            self.fail(f"{text!r} is neither a number of bins (e.g. 50) nor a duration (e.g. 50ms).", param, ctx)


class CountOrAuto(click.ParamType):
    """A whole number >= 1, or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is neither a whole number >= 1 nor 'auto'.", param, ctx)
        return int(text)


class ListOf(click.ParamType):
    """One value of ``item``, or several separated by commas (a list)."""

    def __init__(self, item: click.ParamType) -> None:
        self.item = item
        self.name = f"{item.name}[,...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str) or "," not in value:
            return self.item.convert(value, param, ctx)
        return [self.item.convert(part, param, ctx) for part in value.split(",") if part.strip()]


DURATION = Duration()
TIME = Duration(signed=True)
BINS_OR_DURATION = BinsOrDuration()


def _key_values(pairs: Sequence[str], option: str) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE (e.g. solver__n_epochs=50).", param_hint=option)
        values[key.strip()] = value.strip()
    return values


def _free_folder(name: str) -> Path:
    """``name``, or ``name-2``, ``name-3``, ... : the first that does not exist or is empty (default outputs)."""
    candidate, number = Path(name), 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = Path(f"{name}-{number}")
    return candidate


def _use_agg() -> None:
    """Figures are only written to files: no window system needed."""
    import matplotlib

    matplotlib.use("Agg")


def _echo_step(message: str) -> None:
    click.echo(f"  {message}", err=True)


def _progress(quiet: bool) -> bool | None:
    return False if quiet else None


def _threads_note() -> str:
    import torch

    return f"{torch.get_num_threads()} CPU thread(s)"


# ------------------------------------------------------------------------------------------------ group
@click.group(context_settings=CONTEXT)
@click.version_option(package_name="spikedict", prog_name="spikedict")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Learn firing-rate templates from spike trains (DCEA, Tolooshams et al., ICML 2020).

    \b
    Examples:
      spikedict demo                      # the paper's simulated study, report in spikedict-demo/
      spikedict demo --quick --out first-look
      spikedict fit locust --out locust-fit
      spikedict simulate --out study.mat && spikedict info study.mat && spikedict fit study.mat

    Run `spikedict COMMAND --help` for the options of a command.
    """


# ------------------------------------------------------------------------------------------------ demo
@cli.command(context_settings=CONTEXT)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the report, figures, tables and models (default: spikedict-demo, or spikedict-demo-2, ... "
    "when that one is taken).",
)
@click.option("--quick", is_flag=True, help="A smaller study for a first look (under 30 s).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the simulation and the fits.")
@click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a setting of spikedict.demo.DEMO_SETTINGS (repeatable), e.g. --set n_examples=100 "
    "--set solver__n_epochs=50 --set gaussian_fit.sparsity=0.5.",
)
def demo(
    out: Path, quick: bool, device: str, seed: int, overwrite: bool, quiet: bool, overrides: tuple[str, ...]
) -> None:
    """Simulate binomial spikes from the paper's three templates, learn them back, compare with the truth.

    Simulates M = 30 repeated trials per example as a Neo Block, bins and pools them, fits the binomial model
    and the Gaussian mismatch to the same counts, aligns both to the true templates, and writes to --out a
    self-contained report.html (figures embedded), the figures (PNG), the tables (CSV) and the fitted models.

    \b
    Examples:
      spikedict demo
      spikedict demo --quick --out first-look
      spikedict demo --device cuda --seed 1 --out demo-gpu
      spikedict demo --set solver__n_epochs=60 --overwrite
    """
    from spikedict.demo import DEMO_SETTINGS, apply_overrides
    from spikedict.report import prepare_output_directory

    try:
        settings = apply_overrides(DEMO_SETTINGS["quick" if quick else "default"], _key_values(overrides, "--set"))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    target = out or _free_folder("spikedict-demo")
    created = not target.exists()
    folder = prepare_output_directory(target, overwrite=overwrite)
    _use_agg()
    from spikedict.demo import run_demo

    started = time.perf_counter()
    click.echo(f"spikedict demo{' --quick' if quick else ''}: writing to {folder}/ ({_threads_note()})", err=True)
    with _no_empty_folder(folder, created):
        result = run_demo(
            folder, settings=settings, device=device, seed=seed, progress=_progress(quiet), echo=_echo_step
        )
    seconds = time.perf_counter() - started
    table = result.summary[["family", "mean_initial_error", "mean_error", "max_error", "rate_rmse", "fit_seconds"]]
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    binomial, gaussian = (
        float(result.summary.set_index("family").loc[f, "mean_error"]) for f in ("binomial", "gaussian")
    )
    click.echo(
        f"mean template error sqrt(1 - <h, h_hat>^2): binomial {binomial:.3f}, Gaussian mismatch {gaussian:.3f} "
        f"(target for the binomial fit: <= 0.1)"
    )
    click.echo(f"report: {folder / 'report.html'}  ({seconds:.0f} s)")


# ------------------------------------------------------------------------------------------------- fit
@cli.command(context_settings=CONTEXT)
@click.argument("recording")
@click.option(
    "--family",
    type=click.Choice(FAMILIES, case_sensitive=False),
    default=None,
    help="Observation family (default: binomial for pooled trials, else poisson; shipped data: its own).",
)
@click.option(
    "--bin-size",
    type=DURATION,
    default=None,
    help="Bin width with its unit, e.g. 5ms or '0.005 s' (default: the file's suggestion, else 5 ms).",
)
@click.option(
    "--n-templates",
    type=CountOrAuto(),
    default=None,
    help="Number of templates (default 3), or 'auto': chosen from 1 to 5 by how well each fit predicts held-out "
    "spikes (3-fold, on the training examples).",
)
@click.option(
    "--template-size",
    type=ListOf(BINS_OR_DURATION),
    default=None,
    help="Template length in bins (50) or as a duration (50ms) (default 50 bins); several, comma-separated "
    "(25,50 or 50ms,100ms), are compared as --n-templates auto compares numbers.",
)
@click.option(
    "--group-by",
    default=None,
    metavar="ANNOTATION",
    help="Pool the trials (segments) with equal values of this annotation into one binomial example; "
    "'none' turns pooling off.",
)
@click.option(
    "--pool",
    "pool_size",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Pool groups of N consecutive trials (within each --group-by condition) into binomial examples; 0 turns "
    "a recording's default pooling off (motoneurone pools 40).",
)
@click.option(
    "--example-duration",
    type=DURATION,
    default=None,
    help="Cut each trial into examples of this duration, e.g. 500ms ('0s': no cutting).",
)
@click.option(
    "--heldout",
    "heldout_fraction",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the examples (the last ones) left out of the fit to score it against a constant rate, the PSTH "
    "and elephant's instantaneous_rate (0: fit all, score none).",
)
@click.option(
    "--align-to",
    default=None,
    metavar="COLUMN",
    help="NWB files with units and trials tables: the trials column that is time 0 of each trial (default "
    "start_time), e.g. go_cue_time.",
)
@click.option(
    "--trial-window",
    type=(TIME, TIME),
    default=None,
    metavar="BEFORE AFTER",
    help="NWB files with units and trials tables: the trial's window around --align-to, e.g. -500ms 1.5s.",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Check that each template can be recovered: refit data sets simulated from the fit (each costs a fit at "
    "the chosen sparsity); their spread is the templates' band.",
)
@click.option(
    "--n-simulations",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Simulated data sets of the check (more: a steadier verdict and band, at a fit each).",
)
@click.option(
    "--window",
    type=DURATION,
    default=None,
    help="Stream one long recording in windows of this duration, e.g. 10s (memory bounded by a batch of windows).",
)
@click.option(
    "--overlap", type=DURATION, default=None, help="Overlap of the windows, e.g. 250ms (default: 4 template lengths)."
)
@click.option(
    "--n-epochs",
    type=click.IntRange(min=1),
    default=None,
    help=(
        "Most training epochs (default 30; locust: 20): EM's iterations for counts in memory, which follow the "
        "alternating (MAP) fits of that many epochs; a fit stops earlier once the templates settle."
    ),
)
@click.option("--sparsity", default="auto", show_default=True, help="l1 weight of the codes, or 'auto'.")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: spikedict-fit-NAME, or -2, -3, ... when taken).",
)
@click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
@click.option("--resume", is_flag=True, help="Continue the interrupted fit whose checkpoint is in --out.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the initial templates and shuffling.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--distributed",
    "distributed_run",
    is_flag=True,
    help="One of several processes started by torchrun (gloo on CPU, NCCL on GPU); needs --out. Rank 0 writes.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="A further SpikeDictionary setting (repeatable, advanced); nested settings with '__', e.g. "
    "--set encoder__n_iterations=100 --set solver=backprop --set solver__learning_rate=0.005.",
)
def fit(
    recording: str,
    family: str | None,
    bin_size: Any,
    n_templates: int | str | None,
    template_size: Any,
    group_by: str | None,
    pool_size: int | None,
    example_duration: Any,
    heldout_fraction: float,
    align_to: str | None,
    trial_window: Any,
    check: bool,
    n_simulations: int,
    window: Any,
    overlap: Any,
    n_epochs: int | None,
    sparsity: str,
    out: Path | None,
    overwrite: bool,
    resume: bool,
    device: str,
    seed: int,
    quiet: bool,
    distributed_run: bool,
    overrides: tuple[str, ...],
) -> None:
    """Learn templates from RECORDING: a Neo-readable file (.mat, .nix, .nwb, ...) or a shipped data set.

    Shipped data sets: paper-binomial (simulated, the paper's setting), locust (a locust auditory receptor
    neuron), motoneurone (a human motoneurone around magnetic stimulation), stn (a subthalamic neuron around a
    GO cue) and songbird (74 neurons of songbird HVC); `spikedict info NAME` describes each. Writes to --out
    the model (model.safetensors), the templates (templates.csv, templates.npz), figures, tables and a
    self-contained report.html. Ctrl-C stops the fit after saving a checkpoint; the same command with --resume
    continues it.

    \b
    Examples:
      spikedict fit locust
      spikedict fit paper-binomial --out paper-fit --n-epochs 50
      spikedict fit motoneurone --pool 20 --n-templates auto --template-size 25,50
      spikedict fit study.mat --family binomial --group-by example --bin-size 1ms --template-size 50
      spikedict fit session.nix --family poisson --bin-size "5 ms" --example-duration 1s --out session-fit
      spikedict fit session.nix --out session-fit --resume
      spikedict fit hour.nix --family poisson --bin-size 1ms --window 10s --overlap 250ms --n-epochs 1
      torchrun --nproc-per-node 2 -m spikedict fit session.nix --out session-fit --distributed
    """
    import json

    from spikedict.report import prepare_output_directory

    try:
        sparsity_value: float | str = "auto" if sparsity == "auto" else float(sparsity)
    except ValueError:
        raise click.BadParameter(f"{sparsity!r} is neither a number nor 'auto'.", param_hint="--sparsity") from None
    estimator_params: dict[str, Any] = {}
    for key, text in _key_values(overrides, "--set").items():
        try:
            estimator_params[key] = json.loads(text)
        except json.JSONDecodeError:
            estimator_params[key] = text
    # the solver the fit takes unless --set names one: alternating for a streamed or distributed fit, else "auto"
    streamed = window is not None or distributed_run
    _check_estimator_keywords(estimator_params, family or "binomial", "alternating" if streamed else "auto")
    name = Path(recording).stem if Path(recording).is_file() else Path(recording).name
    default = Path(f"spikedict-fit-{name}") if resume else _free_folder(f"spikedict-fit-{name}")
    _use_agg()
    from spikedict import distributed
    from spikedict.workflow import CHECKPOINT_NAME, fit_recording

    if overlap is not None and window is None:
        raise click.UsageError("--overlap goes with --window (streaming a long recording in windows).")
    rank = 0
    if distributed_run:
        if out is None:
            raise click.UsageError("--distributed needs --out: every process must know the shared output folder.")
        rank, world = distributed.init_from_environment()
        click.echo(f"process {rank} of {world} ({distributed.dist.get_backend()})", err=True)
    created = rank == 0 and not (out or default).exists()
    if rank == 0:
        folder = prepare_output_directory(out or default, overwrite=overwrite, resume=resume)
    distributed.barrier()
    checkpoint = (out or default) / CHECKPOINT_NAME
    if rank != 0:  # the same fit, in lockstep; rank 0 alone writes the outputs and the checkpoint
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix=f"spikedict-rank{rank}-"))
    else:
        click.echo(f"spikedict fit {recording}: writing to {folder}/ ({_threads_note()})", err=True)
    with _no_empty_folder(folder, created):
        result = fit_recording(
            recording,
            folder,
            family=family,
            bin_size=bin_size,
            n_templates=n_templates,
            template_size=template_size,
            group_by=group_by,
            example_duration=example_duration,
            n_epochs=n_epochs,
            sparsity=sparsity_value,
            pool_size=pool_size,
            heldout_fraction=heldout_fraction,
            n_simulations=n_simulations if check else 0,
            align_to=align_to,
            trial_window=trial_window,
            seed=seed,
            device=device,
            resume=resume,
            progress=_progress(quiet),
            estimator_params=estimator_params,
            echo=_echo_step if rank == 0 else lambda message: None,
            checkpoint_path=checkpoint,
            window=window,
            overlap=overlap,
        )
    if rank != 0:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return
    shown = result.summary.drop(columns=["data_warnings"], errors="ignore").T.rename(columns={0: "value"})
    click.echo(shown.to_string(float_format=lambda v: f"{v:.4g}"))
    click.echo(f"report: {folder / 'report.html'}")


@contextlib.contextmanager
def _no_empty_folder(folder: Path, created: bool) -> Iterator[None]:
    """On an error inside the block, remove ``folder`` if this command created it and nothing was written into
    it (a failure before the first file leaves no debris; a checkpoint or a partial report stays)."""
    from spikedict.report import remove_if_empty

    try:
        yield
    except BaseException:
        if created:
            remove_if_empty(folder)
        raise


def _check_estimator_keywords(params: dict[str, Any], family: str, solver: str) -> None:
    """``--set`` keywords checked on the estimator of ``family`` and ``solver`` (``--set solver=...`` overrides it)."""
    from spikedict.estimator import SpikeDictionary

    if "checkpoint_path" in params:
        raise click.BadParameter("the checkpoint lives in --out; drop checkpoint_path.", param_hint="--set")
    try:
        SpikeDictionary(family=family, solver=solver).set_params(**params)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None


# -------------------------------------------------------------------------------------------- simulate
@cli.command(context_settings=CONTEXT)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write (.mat needs nothing extra; .nix and .nwb need the nix / nwb extras).",
)
@click.option(
    "--family",
    type=click.Choice(("binomial", "poisson"), case_sensitive=False),
    default="binomial",
    show_default=True,
    help="binomial: M repeated trials per example; poisson: one trial per example.",
)
@click.option(
    "--templates",
    "template_kind",
    default="paper",
    show_default=True,
    help="Template shapes: paper, gaussian, sinusoid or random (spikedict.simulate.make_templates).",
)
@click.option("--n-templates", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--template-size", type=click.IntRange(min=2), default=50, show_default=True, help="In bins.")
@click.option("--n-examples", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--n-bins", type=click.IntRange(min=2), default=1000, show_default=True, help="Bins per trial.")
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Repeated trials per example (binomial).",
)
@click.option("--bin-size", type=DURATION, default="1ms", show_default=True, help="Bin width, e.g. 1ms.")
@click.option(
    "--baseline",
    type=float,
    default=-2.0,
    show_default=True,
    help="Log-odds (binomial) or log expected count (poisson) per bin with no template active.",
)
@click.option(
    "--event-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True, help="Events per template and bin."
)
@click.option(
    "--amplitude-range",
    type=(click.FloatRange(min=0), click.FloatRange(min=0)),
    default=(1.0, 2.0),
    show_default=True,
    metavar="LOW HIGH",
    help="Event amplitudes, drawn uniformly in [LOW, HIGH] (the demo's study uses 3 5).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def simulate(
    out: Path,
    family: str,
    template_kind: str,
    n_templates: int,
    template_size: int,
    n_examples: int,
    n_bins: int,
    n_trials: int,
    bin_size: Any,
    baseline: float,
    event_rate: float,
    amplitude_range: tuple[float, float],
    seed: int,
    overwrite: bool,
) -> None:
    """Simulate spike trains from known templates and write them, with the ground truth, to a Neo file.

    Segments are trials (annotated example and trial), groups are units; the true templates and codes are in
    the block's annotations, so `spikedict fit FILE` reports its template errors.

    \b
    Examples:
      spikedict simulate --out study.mat
      spikedict simulate --out small.mat --n-examples 5 --n-bins 500 --n-trials 10 --seed 3
      spikedict simulate --out poisson.mat --family poisson --baseline -1 --templates gaussian
      spikedict simulate --out demo-study.mat --n-examples 40 --n-bins 1000 --bin-size 10ms --baseline -0.5 \
          --amplitude-range 3 5
    """
    if amplitude_range[0] > amplitude_range[1]:
        raise click.BadParameter(
            f"LOW {amplitude_range[0]:g} is above HIGH {amplitude_range[1]:g}; give them in order.",
            param_hint="--amplitude-range",
        )
    if out.exists() and not overwrite:
        raise click.UsageError(f"{str(out)!r} exists; choose another --out or pass --overwrite to replace it.")
    from spikedict.io import write_recording
    from spikedict.simulate import simulate_spikes

    click.echo(
        f"simulating {n_examples} examples x {n_trials if family == 'binomial' else 1} trial(s) x {n_bins} "
        f"bins ({family})",
        err=True,
    )
    simulation = simulate_spikes(
        template_kind,
        n_examples=n_examples,
        n_bins=n_bins,
        family=family,
        n_trials=n_trials if family == "binomial" else None,
        n_templates=n_templates,
        template_size=template_size,
        bin_size=bin_size,
        baseline=baseline,
        event_rate=event_rate,
        amplitude_range=amplitude_range,
        seed=seed,
    )
    write_recording(simulation.block, out)
    n_spikes = sum(len(train) for segment in simulation.block.segments for train in segment.spiketrains)
    click.echo(
        f"wrote {out}: {len(simulation.block.segments)} trials, {n_spikes} spikes; fit it with: spikedict fit {out}"
    )


# ------------------------------------------------------------------------------------------------ info
@cli.command(context_settings=CONTEXT)
@click.argument("recording")
def info(recording: str) -> None:
    """Summarise RECORDING (a Neo-readable file or a shipped data set): trials, units, durations, rates.

    \b
    Examples:
      spikedict info locust
      spikedict info study.mat
    """
    from spikedict.io import list_datasets
    from spikedict.workflow import open_recording, recording_summary

    block, label, defaults = open_recording(recording)
    overview, units = recording_summary(block)
    shortest, longest = overview["trial_duration_s"]
    duration = f"{shortest:g} s" if shortest == longest else f"{shortest:g} to {longest:g} s"
    lines = [
        f"{label}" + (f" ({list_datasets()[label]})" if label in list_datasets() else ""),
        f"  trials (segments): {overview['n_trials']}, each {duration}; total {overview['total_duration_s']:g} s",
        f"  units: {overview['n_units']}, spikes: {overview['n_spikes']}",
        f"  trial annotations: {', '.join(overview['trial_annotations']) or 'none'}",
    ]
    if "suggested_bin_size" in overview:
        lines.append(f"  suggested bin size: {overview['suggested_bin_size']}")
    if "ground_truth" in overview:
        lines.append(f"  ground truth: {overview['ground_truth']}")
    lines.append(
        f"  spikedict fit defaults: family {defaults.family}, bin size {defaults.bin_size}, template size "
        f"{defaults.template_size}"
        + (f", pooled by {defaults.group_by!r}" if defaults.group_by else "")
        + (f", examples of {defaults.example_duration}" if defaults.example_duration is not None else "")
    )
    click.echo("\n".join(lines))
    click.echo(units.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


# ------------------------------------------------------------------------------------------------ main
def _one_line(error: BaseException) -> str:
    text = str(error) if str(error) else type(error).__name__
    if isinstance(error, KeyError):
        text = f"missing {text}"
    return " ".join(text.split())


@cli.command(context_settings=CONTEXT)
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--peak",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="Expected photon count of the brightest pixel (the noise level: 1, 2 or 4 in the paper).",
)
@click.option(
    "--model",
    "model_path",
    default=None,
    help="Shipped model (dcea-uc, dcea-c, dncnn) or a saved model file (default: the shipped DCEA-UC).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output .npy (mean counts, float32) or .png (default: IMAGE_denoised.npy beside the input).",
)
def denoise(image: Path, peak: float, model_path: str | None, out_path: Path | None) -> int:
    """Denoise a photon-limited image (2-D DCEA, Poisson noise).

    IMAGE holds photon counts (PNG / TIFF / JPEG values as stored, or .npy).

    \b
    Examples:
      spikedict denoise counts.npy --peak 4
      spikedict denoise frame.png --peak 1 --model dcea-c --out frame_denoised.png
    """
    from spikedict.images import denoise_command

    return denoise_command(image, peak, model_path, out_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spikedict`` command; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on a failure, 2 on bad arguments, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SPIKEDICT_DEBUG", "") not in ("", "0")
    try:
        result = cli.main(args=argv, prog_name="spikedict", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help() if error.ctx else str(error), err=True)
        return 2
    except click.UsageError as error:
        if debug:
            raise
        command = error.ctx.command_path if error.ctx is not None else "spikedict"
        message = " ".join(error.format_message().split())
        click.echo(f"{command}: error: {message} (see `{command} --help`)", err=True)
        return 2
    except click.Abort:
        click.echo("spikedict: interrupted", err=True)
        return 130
    except Exception as error:
        if debug:
            raise
        # Only a fit raises FitInterrupted, and then spikedict.workflow is imported.
        interrupted = getattr(sys.modules.get("spikedict.workflow"), "FitInterrupted", ())
        if isinstance(error, interrupted):
            click.echo(f"spikedict: {_one_line(error)}", err=True)
            return 130
        # Errors of ours explain themselves; other exception types are named.
        plain = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
        kind = "" if isinstance(error, plain) else f"{type(error).__name__}: "
        click.echo(f"spikedict: error: {kind}{_one_line(error)}", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
