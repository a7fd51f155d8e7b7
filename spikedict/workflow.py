"""Recordings in, reports out: what ``spikedict fit``, ``spikedict simulate`` and ``spikedict info`` do.

The command-line layer (:mod:`spikedict.cli`) parses text; the functions here take typed values (quantities for
times) and can be called from Python as well.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import quantities as pq

from spikedict._atomic import atomic_path, write_text_atomic

__all__ = [
    "DATASET_DEFAULTS",
    "FitInterrupted",
    "FitResult",
    "RecordingDefaults",
    "fit_recording",
    "open_recording",
    "recording_summary",
    "select_examples",
    "split_examples",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: Above this many channels the report draws templates as sequences (heat maps) instead of one panel per channel.
MAX_CHANNELS_DRAWN = 8


@dataclass(frozen=True)
class RecordingDefaults:
    """How a recording is binned and fitted unless the command line says otherwise.

    Attributes
    ----------
    family : {"binomial", "poisson", "gaussian"}
    bin_size : quantities.Quantity
    template_size : int or quantities.Quantity
        In bins, or a duration (converted with ``bin_size``).
    n_templates : int
    group_by : str or None
        Trial (segment) annotation whose equal values are pooled into one binomial example.
    pool_size : int or None
        Pool groups of this many consecutive trials (within each ``group_by`` condition) into one binomial example
        each (None: all trials of a condition, or one example per trial without ``group_by``).
    example_duration : quantities.Quantity or None
        Cut long trials into examples of this duration (None: one example per trial or group).
    n_epochs : int
    estimator_params : dict
        Further :class:`~spikedict.SpikeDictionary` settings (nested with ``__``) that suit the data, e.g.
        ``{"constraints__nonnegative": True}``; ``--set`` overrides them.
    """

    family: str = "poisson"
    bin_size: pq.Quantity = field(default_factory=lambda: 5 * pq.ms)
    template_size: int | pq.Quantity = 50
    n_templates: int = 3
    group_by: str | None = None
    example_duration: pq.Quantity | None = None
    n_epochs: int = 30
    pool_size: int | None = None
    estimator_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pooled(self) -> bool:
        """Whether trials are pooled into binomial examples."""
        return self.group_by is not None or self.pool_size is not None


# Shipped data sets: settings that fit them in seconds and make sense for the data.
DATASET_DEFAULTS: dict[str, RecordingDefaults] = {
    # The paper's setting: 1 ms bins, 30 trials per example pooled into binomial counts, 50-bin templates.
    "paper-binomial": RecordingDefaults(family="binomial", bin_size=1 * pq.ms, template_size=50, group_by="example"),
    # One receptor neuron (~90 spikes/s), one 10 s trial per stimulus: Poisson counts in 2 ms bins, cut into
    # 500 ms examples (40 in all), templates of 50 ms (25 bins).
    "locust": RecordingDefaults(
        family="poisson", bin_size=2 * pq.ms, template_size=25, example_duration=500 * pq.ms, n_epochs=20
    ),
    # One motoneurone, 469 replicates of 500 ms around a magnetic stimulus, ~4 spikes each, never two within
    # 47 ms, so a single trial holds one spike where the evoked response is: groups of 40 consecutive replicates
    # pooled into binomial counts in 2 ms bins (the evoked peak is ~10 ms wide) make the response an event of
    # each group, whose amplitude follows the session (groups of 20 gave events elsewhere on some seeds); one
    # template of 50 ms (25 bins: the evoked peak and the silence after it).
    "motoneurone": RecordingDefaults(
        family="binomial", bin_size=2 * pq.ms, template_size=25, n_templates=1, pool_size=40, n_epochs=30
    ),
    # One STN neuron, 50 trials of 2 s, ~47 spikes/s in bursts (up to 3 spikes in 5 ms, so no binomial pooling
    # of trials without clipping) that are not locked to the GO cue: Poisson counts per trial in 5 ms bins,
    # templates of 100 ms (20 bins: a burst and a beta cycle, ~60 ms).
    "stn": RecordingDefaults(family="poisson", bin_size=5 * pq.ms, template_size=20, n_epochs=30),
    # 74 HVC neurons, one 22.2 s stretch whose spike times are multiples of 1/30 s (at most one spike per neuron
    # and step): Poisson counts in bins of that step, 2 sequences (as PP-Seq's demo) of 0.5 s (15 bins) over all
    # 74 channels, the stretch cut into 2 s examples (11 of them). Non-negative templates, as seqNMF's: a
    # sequence is neurons firing in turn (with signed templates the fits spread over all neurons and vary with
    # the seed).
    "songbird": RecordingDefaults(
        family="poisson",
        bin_size=pq.Quantity(1 / 30, "s"),
        template_size=15,
        n_templates=2,
        example_duration=2 * pq.s,
        n_epochs=30,
        estimator_params={"constraints__nonnegative": True},
    ),
}


class FitInterrupted(RuntimeError):
    """The fit was interrupted (Ctrl-C); the checkpoint holds the finished epochs."""


def open_recording(
    source: str | Path, *, align_to: str | None = None, trial_window: tuple[pq.Quantity, pq.Quantity] | None = None
) -> tuple[Any, str, RecordingDefaults]:
    """Read a recording from a Neo-readable file, or load a shipped data set by name.

    Parameters
    ----------
    source : str or path
        A file that ``neo.io`` reads (``.mat``, ``.nix``, ``.nwb``, ...) or a shipped data set name
        (see :func:`spikedict.io.list_datasets`).
    align_to : str, optional
        NWB files with ``units`` and ``trials`` tables: the trials-table column that is time 0 of each trial
        (default ``start_time``); see :func:`spikedict.io.read_nwb`.
    trial_window : (quantities.Quantity, quantities.Quantity), optional
        NWB files with ``units`` and ``trials`` tables: the times before and after the alignment that make a trial.

    Returns
    -------
    block : neo.Block
    label : str
        The data set name or the file name.
    defaults : RecordingDefaults
        For shipped data the settings above; for a file written by ``spikedict simulate`` its family, bin size
        and template size; else generic defaults (Poisson, 5 ms bins).

    Examples
    --------
    >>> block, label, defaults = open_recording("locust")
    >>> label, defaults.family, len(block.segments)
    ('locust', 'poisson', 2)
    """
    from spikedict.io import list_datasets, load_dataset, read_recording

    path = Path(source)
    if align_to is not None or trial_window is not None:
        from spikedict.io._nwb import nwb_layout, read_nwb

        if not (path.is_file() and path.suffix.lower() == ".nwb" and nwb_layout(path) == "units"):
            raise ValueError(
                f"align_to and trial_window choose the trials of an NWB file with units and trials tables; "
                f"{str(source)!r} is not one. Leave them out for other recordings."
            )
        block = read_nwb(path, align_to=align_to, window=trial_window)
        return block, path.name, RecordingDefaults()
    if path.is_file():
        block = read_recording(path)
        label = path.name
        defaults = RecordingDefaults()
    elif str(source) in list_datasets():
        block = load_dataset(str(source))
        return block, str(source), DATASET_DEFAULTS.get(str(source), RecordingDefaults())
    elif path.is_dir():
        raise IsADirectoryError(
            f"the recording {str(source)!r} is a folder; give a file neo can read (.mat, .nix, .nwb, ...) or one "
            f"of the shipped data sets {sorted(list_datasets())}."
        )
    else:
        raise FileNotFoundError(
            f"the recording {str(source)!r} is neither an existing file nor a shipped data set; give the path of a "
            f"file neo can read (.mat, .nix, .nwb, ...) or one of {sorted(list_datasets())}."
        )
    annotations = block.annotations
    if isinstance(annotations.get("bin_size"), pq.Quantity):
        defaults = replace(defaults, bin_size=annotations["bin_size"])
    if annotations.get("family") in ("binomial", "poisson"):  # written by spikedict simulate
        binomial = annotations["family"] == "binomial"
        template_shape = np.atleast_1d(annotations.get("template_shape", [0, 0, 50]))
        defaults = replace(
            defaults,
            family=str(annotations["family"]),
            group_by="example" if binomial else None,
            template_size=int(template_shape[-1]),
            n_templates=int(template_shape[0]) if template_shape[0] else defaults.n_templates,
        )
    return block, label, defaults


def _unit_names(block: Any) -> list[str]:
    if block.groups:
        return [group.name or f"unit {index}" for index, group in enumerate(block.groups)]
    names: list[str] = []
    for segment in block.segments:
        for index, train in enumerate(segment.spiketrains):
            name = str(train.annotations.get("unit", train.name or f"unit {index}"))
            if name not in names:
                names.append(name)
    return names


def recording_summary(block: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """What a recording holds: trials, units, durations, spike counts and firing rates.

    Returns
    -------
    overview : dict
        ``name``, ``n_trials`` (segments), ``n_units``, ``trial_duration_s`` (range), ``total_duration_s``,
        ``n_spikes``, ``trial_annotations`` (names), and the suggested ``bin_size`` if the file has one.
    units : pandas.DataFrame
        One row per unit: ``unit``, ``n_trials`` (with spike trains), ``n_spikes``, ``duration_s``,
        ``rate_hz`` (spikes per second over its trials), ``min_rate_hz`` / ``max_rate_hz`` over trials.

    Examples
    --------
    >>> from spikedict.io import load_dataset
    >>> overview, units = recording_summary(load_dataset("locust"))
    >>> overview["n_trials"], units["n_spikes"].tolist()
    (2, [1797])
    """
    names = _unit_names(block)
    per_unit: dict[str, dict[str, list[float]]] = {name: {"spikes": [], "durations": []} for name in names}
    durations = []
    annotation_names: set[str] = set()
    for segment in block.segments:
        annotation_names.update(segment.annotations)
        for index, train in enumerate(segment.spiketrains):
            name = str(train.annotations.get("unit", train.name or f"unit {index}"))
            if name not in per_unit:
                name = names[index] if index < len(names) else name
                per_unit.setdefault(name, {"spikes": [], "durations": []})
            duration = float((train.t_stop - train.t_start).rescale(pq.s).magnitude)
            per_unit[name]["spikes"].append(float(len(train)))
            per_unit[name]["durations"].append(duration)
            durations.append(duration)
    rows = []
    for name, values in per_unit.items():
        spikes, seconds = np.asarray(values["spikes"]), np.asarray(values["durations"])
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = np.where(seconds > 0, spikes / np.where(seconds > 0, seconds, 1), np.nan)
        rows.append(
            {
                "unit": name,
                "n_trials": len(spikes),
                "n_spikes": int(spikes.sum()),
                "duration_s": float(seconds.sum()),
                "rate_hz": float(spikes.sum() / seconds.sum()) if seconds.sum() > 0 else float("nan"),
                "min_rate_hz": float(np.nanmin(rates)) if rates.size else float("nan"),
                "max_rate_hz": float(np.nanmax(rates)) if rates.size else float("nan"),
            }
        )
    units = pd.DataFrame(
        rows, columns=["unit", "n_trials", "n_spikes", "duration_s", "rate_hz", "min_rate_hz", "max_rate_hz"]
    )
    overview: dict[str, Any] = {
        "name": block.name or "",
        "n_trials": len(block.segments),
        "n_units": len(per_unit),
        "trial_duration_s": (min(durations), max(durations)) if durations else (0.0, 0.0),
        "total_duration_s": float(sum(durations) / max(len(per_unit), 1)),
        "n_spikes": int(units["n_spikes"].sum()),
        "trial_annotations": sorted(annotation_names),
    }
    if isinstance(block.annotations.get("bin_size"), pq.Quantity):
        overview["suggested_bin_size"] = block.annotations["bin_size"]
    if "templates" in block.annotations and "template_shape" in block.annotations:
        overview["ground_truth"] = "templates and codes (simulated)"
    return overview, units


def split_examples(counts: Any, n_bins: int) -> Any:
    """Cut every example of a :class:`~spikedict.io.SpikeCounts` into consecutive pieces of ``n_bins`` bins.

    A trailing piece shorter than ``n_bins`` is dropped. The labels of each piece carry its ``source_example``
    and ``offset_bins``.

    Examples
    --------
    >>> import numpy as np, quantities as pq
    >>> from spikedict.io import SpikeCounts
    >>> counts = SpikeCounts(np.arange(10).reshape(1, 1, 10), np.array([1]), 1 * pq.ms, 0 * pq.s)
    >>> split_examples(counts, 4).counts[:, 0].tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    from spikedict.io import SpikeCounts

    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    pieces = counts.n_bins // n_bins
    if pieces < 1:
        raise ValueError(
            f"examples of {n_bins} bins do not fit in trials of {counts.n_bins} bins; choose a shorter "
            "--example-duration (or none)."
        )
    values = counts.counts[:, :, : pieces * n_bins].reshape(counts.n_examples, counts.n_channels, pieces, n_bins)
    values = values.transpose(0, 2, 1, 3).reshape(counts.n_examples * pieces, counts.n_channels, n_bins)
    labels = counts.example_labels.reset_index(drop=True).loc[np.repeat(np.arange(counts.n_examples), pieces)]
    labels = labels.reset_index(drop=True)
    labels.insert(0, "source_example", np.repeat(np.arange(counts.n_examples), pieces))
    labels.insert(1, "offset_bins", np.tile(np.arange(pieces) * n_bins, counts.n_examples))
    labels.index.name = "example"
    return SpikeCounts(
        values,
        np.repeat(counts.n_trials, pieces),
        counts.bin_size,
        counts.t_start,
        list(counts.channel_names),
        labels,
    )


def select_examples(counts: Any, index: Any) -> Any:
    """The examples ``index`` (a slice or integer array) of a :class:`~spikedict.io.SpikeCounts`, with their labels.

    Examples
    --------
    >>> import numpy as np, quantities as pq
    >>> from spikedict.io import SpikeCounts
    >>> counts = SpikeCounts(np.zeros((4, 1, 3), dtype=np.int64), np.array([5, 6, 7, 8]), 1 * pq.ms, 0 * pq.s)
    >>> select_examples(counts, slice(1, 3)).n_trials.tolist()
    [6, 7]
    """
    rows = np.arange(counts.n_examples)[index]
    rows = np.atleast_1d(rows)
    labels = counts.example_labels.iloc[rows].reset_index(drop=True)
    labels.index.name = "example"
    return replace(counts, counts=counts.counts[rows], n_trials=counts.n_trials[rows], example_labels=labels)


def _bins(duration: pq.Quantity, bin_size: pq.Quantity, name: str) -> int:
    value = float((duration / bin_size).simplified.magnitude)
    bins = int(round(value))
    if bins < 1 or abs(value - bins) > 1e-6 * max(1.0, value):
        raise ValueError(
            f"{name} {duration} is not a whole number of bins of {bin_size} ({value:g} bins); give it in bins or as "
            "a multiple of the bin size."
        )
    return bins


@dataclass
class FitResult:
    """What :func:`fit_recording` fitted and wrote.

    Attributes
    ----------
    model : SpikeDictionary
    counts : SpikeCounts or RecordingWindows
        The counts it was fitted on (the windows of a streamed long recording), held-out examples left out.
    summary : pandas.DataFrame
        One row: data shape, family, log-likelihoods, fit time.
    alignment : pandas.DataFrame or None
        Template errors against the ground truth, when the recording carries it (simulated data).
    folder : Path or None
        Where it was written (None: nothing was written).
    heldout : pandas.DataFrame or None
        The held-out comparison of rate models (see ``heldout_fraction`` of :func:`fit_recording`).
    bootstrap : TemplateBootstrap or None
        The recoverability check of the templates (see ``n_simulations``).
    heldout_counts : SpikeCounts or None
        The examples left out of the fit (see ``heldout_fraction``).
    """

    model: Any
    counts: Any
    summary: pd.DataFrame
    alignment: pd.DataFrame | None
    folder: Path | None
    heldout: pd.DataFrame | None = None
    bootstrap: Any = None
    heldout_counts: Any = None


def _ground_truth(block: Any) -> np.ndarray | None:
    if "templates" not in block.annotations or "template_shape" not in block.annotations:
        return None
    from spikedict.io._simulated import ground_truth

    try:
        return ground_truth(block)["templates"]
    except (KeyError, ValueError):
        return None


def _noop(message: str) -> None:
    pass


def fit_recording(
    source: str | Path,
    folder: str | Path | None,
    *,
    family: str | None = None,
    bin_size: pq.Quantity | None = None,
    n_templates: int | str | Sequence[int] | None = None,
    template_size: int | pq.Quantity | Sequence[int | pq.Quantity] | None = None,
    group_by: str | None = None,
    example_duration: pq.Quantity | None = None,
    n_epochs: int | None = None,
    sparsity: float | str = "auto",
    pool_size: int | None = None,
    heldout_fraction: float = 0.2,
    n_simulations: int = 5,
    align_to: str | None = None,
    trial_window: tuple[pq.Quantity, pq.Quantity] | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    progress: bool | None = None,
    estimator_params: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] = _noop,
    checkpoint_path: str | Path | None = None,
    window: pq.Quantity | None = None,
    overlap: pq.Quantity | None = None,
) -> FitResult:
    """Bin a recording, fit a :class:`~spikedict.SpikeDictionary`, write the model, templates, figures and report.

    Settings left as None come from :func:`open_recording`'s defaults for this recording.

    Parameters
    ----------
    source : str or path
        A Neo-readable file or a shipped data set name.
    folder : path or None
        Output folder, already prepared (see :func:`spikedict.report.prepare_output_directory`); None fits and
        evaluates the recording the same way and writes nothing (not with ``window`` or ``resume``).
    family : {"binomial", "poisson", "gaussian"}, optional
    bin_size : quantities.Quantity, optional
    n_templates : int, "auto" or list of int, optional
        ``"auto"`` (or a list) chooses the number of templates from 1 to 5 (or the list) by how well each fit
        predicts held-out spikes, in 3 folds of the training examples (:func:`spikedict.analysis.select_model`
        with ``infer_codes_from="split_spikes"``), at the "auto" sparsity; the chosen one is then fitted as usual.
    template_size : int, quantities.Quantity or a list of them, optional
        Bins, or a duration; several are compared as ``n_templates="auto"`` compares numbers.
    group_by : str, optional
        Pool trials with equal values of this segment annotation into one example (binomial counts); ``"none"``
        turns pooling off for a recording whose default pools.
    example_duration : quantities.Quantity, optional
        Cut trials into examples of this duration; a zero duration turns cutting off.
    n_epochs, sparsity, seed, device :
        See :class:`~spikedict.SpikeDictionary`. For count data in memory the solver is EM (``"auto"``) unless
        ``estimator_params`` name another: the sparsity path and the choice of templates then fit EM's MAP start
        (the alternating solver, ``n_epochs`` epochs) several times each, EM (``n_epochs`` iterations after such
        a start) runs once from the chosen setting, and the check refits EM from one MAP start. A streamed fit
        (``window``) or one under ``torchrun`` uses the alternating solver.
    pool_size : int, optional
        Pool groups of this many consecutive trials (within each ``group_by`` condition) into binomial examples;
        0 turns the recording's default pooling off.
    heldout_fraction : float
        Share of the examples, the last ones in recording order (a later stretch of a long recording), left out
        of the fit and used to score it: their spikes are split in two halves, and the fitted model, a constant
        rate, the PSTH (trials aligned to an event) and elephant's ``instantaneous_rate`` predict the second half
        from the first (:func:`spikedict.analysis.heldout_comparison`). 0 fits every example and scores none.
    n_simulations : int
        Data sets simulated from the fit and refitted to check that each template can be recovered at this signal
        and data size (:func:`spikedict.analysis.template_bootstrap`); their spread is the templates' band in
        ``templates.csv``. 0 skips the check (count families only).
    align_to, trial_window :
        Trials of an NWB file with units and trials tables (see :func:`open_recording`).
    resume : bool
        Continue the interrupted fit whose checkpoint is in ``folder``.
    progress : bool or None
        Progress bar of the fit (None: only on a terminal).
    estimator_params : mapping, optional
        Further SpikeDictionary keywords (advanced).
    echo : callable
        Called with one line per step.
    checkpoint_path : path, optional
        Checkpoint file (default: in ``folder``); a distributed run's other ranks share rank 0's.
    window, overlap : quantities.Quantity, optional
        Stream one long recording (a single segment) in windows of this length overlapping by ``overlap``
        (default: four template lengths) instead of binning it whole: the fit's memory is bounded by the batch of
        windows, and the codes of the whole recording are written to ``codes.npy``. See
        :class:`spikedict.io.RecordingWindows`.

    Returns
    -------
    FitResult

    Raises
    ------
    FitInterrupted
        On Ctrl-C during the fit; the checkpoint in ``folder`` lets ``resume=True`` continue.
    """
    from spikedict import distributed
    from spikedict.training import resolve_device

    if folder is None and (window is not None or resume):
        raise ValueError("a streamed fit (window) and resume write into a folder; give folder.")
    folder = None if folder is None else Path(folder)
    checkpoint = None if folder is None else _checkpoint(folder, checkpoint_path, resume)
    device_used = str(resolve_device(device))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    block, label, defaults = open_recording(source, align_to=align_to, trial_window=trial_window)
    candidates = _model_candidates(n_templates, template_size)
    first = (candidates[0][0], candidates[1][0]) if candidates else (n_templates, template_size)
    settings = _resolve_settings(defaults, family, bin_size, *first, group_by, example_duration, n_epochs, pool_size)
    parameters = _estimator_parameters(settings, sparsity, seed, device, progress, checkpoint, estimator_params)
    if (window is not None or distributed.is_active()) and "solver" not in parameters:
        parameters["solver"] = "alternating"  # EM ("auto" for counts) fits counts in memory, in one process
    elif _build_estimator(parameters)._settings_of("solver").name == "em":
        parameters.setdefault("solver__map_fit__n_epochs", settings.n_epochs)  # EM's MAP start: the same epochs
    reading = {"align_to": align_to, "trial_window": trial_window} if align_to or trial_window else None
    if folder is not None:
        _write_settings(folder, source, settings, window, overlap, parameters, reading)
    if window is not None and folder is not None:
        return _fit_windows(
            block,
            label,
            folder,
            parameters,
            settings.bin_size,
            window,
            overlap,
            resume,
            echo,
            timings,
            started,
            device_used,
        )

    counts = _bin_recording(block, label, settings, echo, timings)
    warned = _data_warnings(counts, settings, echo)
    counts, heldout = _heldout_examples(counts, heldout_fraction, echo)
    selection, map_parameters = None, _map_parameters(parameters)
    if candidates:
        settings, selection = _choose_model(counts, settings, map_parameters or parameters, candidates, echo, timings)
        chosen = {"n_templates": settings.n_templates, "template_size": settings.template_size}
        parameters = {**parameters, **chosen}
        map_parameters = map_parameters and {**map_parameters, **chosen}
    model = _fit_counts(counts, settings, parameters, map_parameters, resume, device_used, echo, timings)
    warned = warned + _fit_warnings(model, counts, echo)
    bootstrap = _check_templates(model, counts, settings, n_simulations, seed, parameters, echo, timings)
    fitted = _Fitted(block, label, counts, heldout, model, settings, bootstrap, selection)
    evaluation = _evaluate_fit(fitted, timings, warned, echo)
    if folder is not None:
        _write_fit(folder, source, fitted, evaluation, parameters, device_used, echo, timings, started)
    return FitResult(
        model,
        counts,
        pd.DataFrame([evaluation.summary]),
        evaluation.alignment_table,
        folder,
        evaluation.heldout_table,
        bootstrap,
        heldout,
    )


#: Numbers of templates compared by ``n_templates="auto"``.
AUTO_N_TEMPLATES = (1, 2, 3, 4, 5)


def _model_candidates(n_templates: Any, template_size: Any) -> tuple[list[int], list[Any]] | None:
    """The numbers and lengths of templates to compare, or None when one of each is given."""
    several_sizes = isinstance(template_size, (list, tuple))
    if n_templates != "auto" and not isinstance(n_templates, (list, tuple)) and not several_sizes:
        return None
    if isinstance(n_templates, str) and n_templates != "auto":
        raise ValueError(f"n_templates must be a whole number >= 1, a list of them or 'auto', got {n_templates!r}.")
    numbers = list(AUTO_N_TEMPLATES) if n_templates == "auto" else n_templates
    numbers = list(numbers) if isinstance(numbers, (list, tuple)) else [numbers]
    sizes = list(template_size) if several_sizes else [template_size]
    return numbers, sizes


def _choose_model(
    counts: Any,
    settings: RecordingDefaults,
    parameters: Mapping[str, Any],
    candidates: tuple[list[Any], list[Any]],
    echo: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[RecordingDefaults, Any]:
    """Choose the number and length of templates by held-out spikes (see ``n_templates`` of :func:`fit_recording`),
    fitting with ``parameters``."""
    from spikedict.analysis import select_model

    numbers, sizes = candidates
    sizes = [
        _bins(size, settings.bin_size, "template_size") if isinstance(size, pq.Quantity) else size for size in sizes
    ]
    n_numbers = [n if n is not None else settings.n_templates for n in numbers]
    n_sizes = [int(size) if size is not None else int(settings.template_size) for size in sizes]
    cv = min(3, counts.n_examples)
    if cv < 2:
        raise ValueError(
            f"choosing the templates needs at least 2 training examples to fold, got {counts.n_examples}; give "
            "--n-templates N and one --template-size."
        )
    echo(
        f"choosing among {len(n_numbers) * len(n_sizes)} settings (numbers of templates {n_numbers}, lengths "
        f"{n_sizes} bins) by held-out spikes in {cv} folds of the training examples"
    )
    fixed = {k: v for k, v in parameters.items() if k not in ("n_templates", "template_size", "checkpoint_path")}
    fixed["progress"] = False
    clock = time.perf_counter()
    selection = select_model(
        counts,
        {"n_templates": n_numbers, "template_size": n_sizes},
        cv=cv,
        evaluation_family=settings.family,
        infer_codes_from="split_spikes",
        refit=False,
        **fixed,
    )
    timings["model_choice"] = time.perf_counter() - clock
    best = selection.best_params
    echo(f"chose {best['n_templates']} template(s) of {best['template_size']} bins")
    settings = replace(settings, n_templates=int(best["n_templates"]), template_size=int(best["template_size"]))
    return settings, selection


def _check_templates(
    model: Any,
    counts: Any,
    settings: RecordingDefaults,
    n_simulations: int,
    seed: int,
    parameters: Mapping[str, Any],
    echo: Callable[[str], None],
    timings: dict[str, float],
) -> Any:
    """The recoverability check of the fitted templates (None when skipped or for Gaussian data). The refits use
    the model's solver; EM's refits start from one MAP fit instead of the best of several (``n_starts=1``), which
    saves the screening fits, so their errors are if anything above what the fit itself reaches."""
    from spikedict.analysis import template_bootstrap

    if n_simulations == 0 or settings.family == "gaussian":
        return None
    solver = copy.deepcopy(model.solver_)
    if "n_starts" in solver.get_params(deep=False):
        solver.set_params(n_starts=1)
    echo(f"checking the templates: {n_simulations} refits of data simulated from the fit")
    clock = time.perf_counter()
    progress = parameters.get("progress")
    bootstrap = template_bootstrap(model, counts, n_simulations, seed=seed, progress=progress, solver=solver)
    timings["check"] = time.perf_counter() - clock
    return bootstrap


def _heldout_examples(counts: Any, fraction: float, echo: Callable[[str], None]) -> tuple[Any, Any]:
    """The training examples and the held-out ones (the last ``fraction`` of them, at least one; None when
    ``fraction`` is 0 or there are fewer than 2 examples)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout_fraction must lie in [0, 1), got {fraction}; 0 scores no held-out examples.")
    n_heldout = max(1, int(round(fraction * counts.n_examples))) if fraction > 0 else 0
    if n_heldout == 0 or counts.n_examples - n_heldout < 1:
        if fraction > 0:
            echo(f"warning: {counts.n_examples} example(s): none can be held out to score the fit.")
        return counts, None
    n_train = counts.n_examples - n_heldout
    echo(f"holding out the last {n_heldout} of {counts.n_examples} examples to score the fit")
    return select_examples(counts, slice(0, n_train)), select_examples(counts, slice(n_train, counts.n_examples))


def _fit_warnings(model: Any, counts: Any, echo: Callable[[str], None]) -> list[str]:
    """A fit that ended with no events (codes all zero) explains nothing beyond the baseline: say so, with what to
    try, in the terminal."""
    if _events(model, counts):
        return []
    message = (
        f"the fit ended with no events (every code is zero at sparsity {model.sparsity_:.3g}): the templates are "
        "not fitted to anything and the rates are the baseline. Try a lower --sparsity (e.g. a tenth of this), "
        "pooling trials into binomial counts (--group-by), or a larger bin size."
    )
    echo(f"warning: {message}")
    return [message]


def _data_warnings(counts: Any, settings: RecordingDefaults, echo: Callable[[str], None]) -> list[str]:
    """What about the binned counts makes the fit say little (all zero, saturated, huge), said in the terminal."""
    import torch

    from spikedict.families import resolve_family

    family = resolve_family(settings.family, counts.n_trials)
    found = family.data_warnings(torch.as_tensor(counts.counts, dtype=torch.float64))
    for message in found:
        echo(f"warning: {message}")
    return found


def _checkpoint(folder: Path, checkpoint_path: str | Path | None, resume: bool) -> Path:
    """The checkpoint file of the fit (default: in ``folder``); with ``resume`` it must exist."""
    checkpoint = folder / CHECKPOINT_NAME if checkpoint_path is None else Path(checkpoint_path)
    if resume and not checkpoint.exists():
        raise FileNotFoundError(
            f"--resume continues an interrupted fit from {str(checkpoint)!r}, which does not exist; run without "
            "--resume (add --overwrite to reuse the folder), or give the --out folder of the interrupted fit."
        )
    return checkpoint


def _resolve_settings(
    defaults: RecordingDefaults,
    family: str | None,
    bin_size: pq.Quantity | None,
    n_templates: int | None,
    template_size: int | pq.Quantity | None,
    group_by: str | None,
    example_duration: pq.Quantity | None,
    n_epochs: int | None,
    pool_size: int | None = None,
) -> RecordingDefaults:
    """The settings of this fit: the given ones, else the recording's ``defaults``; checked, template size in bins."""
    pool_size = defaults.pool_size if pool_size is None else (pool_size or None)
    group_by = defaults.group_by if group_by is None else (None if group_by.lower() == "none" else group_by)
    # pooled trials are binomial counts: the family follows unless given
    pooled = group_by is not None or pool_size is not None
    family = (family or ("binomial" if pooled else defaults.family)).lower()
    bin_size = defaults.bin_size if bin_size is None else bin_size
    n_templates = defaults.n_templates if n_templates is None else n_templates
    template_size = defaults.template_size if template_size is None else template_size
    example_duration = defaults.example_duration if example_duration is None else example_duration
    n_epochs = defaults.n_epochs if n_epochs is None else n_epochs
    if example_duration is not None and float(example_duration.magnitude) == 0:
        example_duration = None
    if family not in ("binomial", "poisson", "gaussian"):
        raise ValueError(f"family must be 'binomial', 'poisson' or 'gaussian', got {family!r}.")
    if family == "binomial" and group_by is None and pool_size is None:
        raise ValueError(
            "the binomial family models repeated trials pooled per example: pass --group-by ANNOTATION (a segment "
            "annotation shared by the trials of one condition, e.g. 'example') or --pool N (groups of N "
            "consecutive trials), or use --family poisson."
        )

    if isinstance(template_size, pq.Quantity):
        template_size = _bins(template_size, bin_size, "template_size")
    return RecordingDefaults(
        family=family,
        bin_size=bin_size,
        template_size=template_size,
        n_templates=n_templates,
        group_by=group_by,
        example_duration=example_duration,
        n_epochs=n_epochs,
        pool_size=pool_size,
        estimator_params=dict(defaults.estimator_params),
    )


def _estimator_parameters(
    settings: RecordingDefaults,
    sparsity: float | str,
    seed: int,
    device: str,
    progress: bool | None,
    checkpoint: Path,
    estimator_params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The keywords of the fit's ``SpikeDictionary`` (see :func:`_build_estimator`), also written to settings.json."""
    parameters = dict(
        n_templates=settings.n_templates,
        template_size=int(settings.template_size),
        family=settings.family,
        solver__n_epochs=settings.n_epochs,
        sparsity=sparsity,
        seed=seed,
        device=device,
        progress=progress,
        checkpoint_path=None if checkpoint is None else str(checkpoint),
    )
    parameters.update(settings.estimator_params)
    parameters.update(estimator_params or {})
    return parameters


def _build_estimator(parameters: Mapping[str, Any]) -> Any:
    """The unfitted ``SpikeDictionary`` of a fit, from :func:`_estimator_parameters`' keywords (nested settings
    with ``__``)."""
    from spikedict.estimator import SpikeDictionary

    return SpikeDictionary().set_params(**parameters)


def _recording_settings(source: str | Path, settings: RecordingDefaults) -> dict[str, Any]:
    """How the recording was read and binned, as text: the first entries of settings.json and the report's settings."""
    return {
        "recording": str(source),
        "bin_size": str(settings.bin_size),
        "group_by": settings.group_by,
        "pool_size": settings.pool_size,
        "example_duration": None if settings.example_duration is None else str(settings.example_duration),
    }


def _write_settings(
    folder: Path,
    source: str | Path,
    settings: RecordingDefaults,
    window: pq.Quantity | None,
    overlap: pq.Quantity | None,
    parameters: Mapping[str, Any],
    reading: Mapping[str, Any] | None = None,
) -> None:
    """Write ``settings.json``: how the recording is read (``reading``: options of the reader), binned (or streamed in
    windows) and fitted."""
    write_text_atomic(
        folder / "settings.json",
        json.dumps(
            {
                **_recording_settings(source, settings),
                **(reading or {}),
                "window": None if window is None else str(window),
                "overlap": None if overlap is None else str(overlap),
                **{k: v for k, v in parameters.items() if k != "checkpoint_path"},
            },
            indent=2,
            default=str,
        ),
    )


def _bin_recording(
    block: Any, label: str, settings: RecordingDefaults, echo: Callable[[str], None], timings: dict[str, float]
) -> Any:
    """Bin the recording's trials (pooled by ``group_by``), cut into examples of ``example_duration`` if given."""
    from spikedict.io import bin_spiketrains

    clock = time.perf_counter()
    echo(
        f"binning {label}: {len(block.segments)} trials in bins of {settings.bin_size}"
        + (f", pooling trials by {settings.group_by!r}" if settings.group_by else "")
        + (f", in groups of {settings.pool_size} consecutive trials" if settings.pool_size else "")
    )
    counts = bin_spiketrains(block, settings.bin_size, group_by=settings.group_by, pool_size=settings.pool_size)
    if settings.example_duration is not None:
        counts = split_examples(counts, _bins(settings.example_duration, settings.bin_size, "example_duration"))
    timings["bin"] = time.perf_counter() - clock
    return counts


def _map_parameters(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """For a fit whose solver is EM (``"auto"`` for counts): the keywords of the alternating (MAP) fits, EM's own
    MAP start (``map_fit``), that choose its sparsity and its templates' number and length. They fit several
    times, each at a fraction of EM's cost. None for the other solvers, which make those fits themselves."""
    solver = _build_estimator(parameters)._settings_of("solver")
    if solver.name != "em":
        return None
    fixed = {key: value for key, value in parameters.items() if key != "solver" and not key.startswith("solver__")}
    return {**fixed, "solver": copy.deepcopy(solver._settings_of("map_fit")), "checkpoint_path": None}


def _fit_counts(
    counts: Any,
    settings: RecordingDefaults,
    parameters: Mapping[str, Any],
    map_parameters: Mapping[str, Any] | None,
    resume: bool,
    device_used: str,
    echo: Callable[[str], None],
    timings: dict[str, float],
) -> Any:
    """Build the estimator and fit it to the binned counts, timed (see :func:`_run_fit`): for EM, the MAP fits
    (their sparsity path when the sparsity is "auto") and then EM at the chosen sparsity."""
    echo(
        f"fitting {settings.n_templates} {settings.family} templates of {int(settings.template_size)} bins to "
        f"{counts.n_examples} examples x {counts.n_channels} unit(s) x {counts.n_bins} bins (up to "
        f"{settings.n_epochs} epochs on {device_used}" + (", resuming" if resume and not map_parameters else "") + ")"
    )
    path_of_sparsities = parameters.get("sparsity", "auto") == "auto" and settings.family != "gaussian"
    if map_parameters is None or not path_of_sparsities:
        model = _run_fit(_build_estimator(parameters), counts, resume, timings)
        return _choose_sparsity(model, counts, parameters, echo, timings) if path_of_sparsities else model
    map_model = _run_fit(_build_estimator(map_parameters), counts, False, timings)
    map_model = _choose_sparsity(map_model, counts, map_parameters, echo, timings)
    echo(
        f"EM from the MAP fit's sparsity {map_model.sparsity_:.3g} (the marginal likelihood; up to "
        f"{settings.n_epochs} iterations" + (", resuming" if resume else "") + ")"
    )
    seconds = timings["fit"]
    model = _run_fit(_build_estimator({**parameters, "sparsity": map_model.sparsity_}), counts, resume, timings)
    timings["fit"] += seconds
    return _better_of(model, map_model, counts, echo)


def _better_of(em_model: Any, map_model: Any, counts: Any, echo: Callable[[str], None]) -> Any:
    """EM's fit, unless the MAP fit it started from predicts half of the training examples' spikes from the other
    half better (:func:`spikedict.analysis.split_half_gain`; a fit without events scores below any with events).
    The MAP fit's gain is the best of its sparsity path (``sparsity_path_``), where it was chosen.

    On sparse recordings EM can end with templates that code no event, where its MAP start had some: the fit that
    predicts better is kept, and the other is named in the terminal. The held-out examples play no part."""
    from spikedict.analysis import split_half_gain

    path = map_model.sparsity_path_
    em_gain = split_half_gain(em_model, counts) if _events(em_model, counts) else -np.inf
    gains = [em_gain, float(path["split_half_bits_per_spike"].max())]
    em_model.sparsity_path_ = path
    if gains[0] >= gains[1]:
        echo(f"kept EM's templates (split-half gain {gains[0]:+.3f} bits per spike; MAP fit {gains[1]:+.3f})")
        return em_model
    echo(
        f"kept the MAP fit's templates: they predict held-in spikes better (split-half gain {gains[1]:+.3f} bits "
        f"per spike) than EM's ({gains[0]:+.3f})"
    )
    return map_model


#: Sparsities tried after the "auto" one, relative to it, while each predicts better than the last (_choose_sparsity).
SPARSITY_PATH = (0.7, 0.5, 0.35, 0.25)


def _events(model: Any, counts: Any) -> bool:
    """Whether the fitted model codes any event in ``counts`` (by ``transform``: the training history's last codes,
    warm-started through the fit, can hold events that inference from zero does not find)."""
    return bool(np.any(model.transform(counts) != 0))


def _choose_sparsity(
    model: Any, counts: Any, parameters: Mapping[str, Any], echo: Callable[[str], None], timings: dict[str, float]
) -> Any:
    """The fit along a path of decreasing sparsities that best predicts half of the training examples' spikes from
    the other half (:func:`spikedict.analysis.split_half_gain`).

    The "auto" sparsity is a detection threshold in units of the noise; on sparse counts (single spikes in bins
    of milliseconds) it can leave few events or none. From the "auto" fit, the path goes down by the factors of
    :data:`SPARSITY_PATH` and stops at the first fit that predicts no better than the best before it, so a fit
    whose events stand out costs two fits. The held-out examples play no part in the choice. A fit without
    events scores below any fit with events, and the path goes on past it.
    """
    from spikedict.analysis import split_half_gain

    def gain_of(candidate: Any) -> float:
        return split_half_gain(candidate, counts) if _events(candidate, counts) else -np.inf

    auto, seconds = model.sparsity_, timings["fit"]
    best = (gain_of(model), model)
    path = [{"sparsity": auto, "events": bool(np.isfinite(best[0])), "split_half_bits_per_spike": best[0]}]
    for factor in SPARSITY_PATH:
        echo(f"trying sparsity {auto * factor:.3g} (split-half gain so far {best[0]:+.3f} bits per spike)")
        candidate = _run_fit(_build_estimator({**parameters, "sparsity": auto * factor}), counts, False, timings)
        seconds += timings["fit"]
        gain = gain_of(candidate)
        path.append(
            {"sparsity": candidate.sparsity_, "events": bool(np.isfinite(gain)), "split_half_bits_per_spike": gain}
        )
        if gain > best[0]:
            best = (gain, candidate)
        elif np.isfinite(best[0]):  # no better than the last fit with events: the path has passed its best
            break
    timings["fit"] = seconds
    model = best[1]
    model.sparsity_path_ = pd.DataFrame(path)
    echo(f"chose sparsity {model.sparsity_:.3g} (split-half gain {best[0]:+.3f} bits per spike)")
    return model


@dataclass
class _Fitted:
    """A fit to binned counts and what it came from.

    Attributes
    ----------
    block : neo.Block
    label : str
    counts : SpikeCounts
        The examples the model was fitted on.
    heldout : SpikeCounts or None
        The examples left out of the fit to score it.
    model : SpikeDictionary
    settings : RecordingDefaults
    bootstrap : TemplateBootstrap or None
        The recoverability check of the templates.
    selection : ModelSelection or None
        The choice of the number and length of templates, when asked for.
    """

    block: Any
    label: str
    counts: Any
    heldout: Any
    model: Any
    settings: RecordingDefaults
    bootstrap: Any = None
    selection: Any = None


def _write_fit(
    folder: Path,
    source: str | Path,
    fitted: _Fitted,
    evaluation: _Evaluation,
    parameters: Mapping[str, Any],
    device_used: str,
    echo: Callable[[str], None],
    timings: dict[str, float],
    started: float,
) -> None:
    """Write the model, templates, figures and report of a fit to binned counts and its ``evaluation``."""
    echo(f"writing the model, templates, figures and report to {folder}")
    clock = time.perf_counter()
    model, settings = fitted.model, fitted.settings
    seconds = float(settings.bin_size.rescale(pq.s).magnitude)
    written = _write_model_and_templates(folder, model, fitted.counts.channel_names, seconds, fitted.bootstrap)
    report = _fit_report(folder, fitted, evaluation, written)
    if evaluation.warnings:
        report.add_text("Warnings about the data", " ".join(evaluation.warnings))
    timings["report"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started
    settings_shown = {k: v for k, v in parameters.items() if k not in ("checkpoint_path", "progress")}
    report.add_mapping(
        "Settings", {**_recording_settings(source, settings), **settings_shown, "device used": device_used}
    )
    _finish_report(report, folder, timings, checkpoint_path=Path(parameters["checkpoint_path"]))


@dataclass
class _Evaluation:
    """What :func:`_evaluate_fit` measured of a fit to binned counts.

    Attributes
    ----------
    summary : dict
        The summary row.
    alignment_table : pandas.DataFrame or None
        Template errors against the ground truth, when the recording carries it.
    heldout_table : pandas.DataFrame or None
        The held-out comparison of rate models (:func:`spikedict.analysis.heldout_comparison`), when examples
        were held out and the family has counts.
    truth : ndarray or None
        The true templates, when the recording carries them.
    rates : ndarray
        The fitted rates (expected counts per bin) of the training examples.
    warnings : list of str
        What the terminal was told about the data and the fit (also the summary's ``data_warnings``).
    """

    summary: dict[str, Any]
    alignment_table: pd.DataFrame | None
    heldout_table: pd.DataFrame | None
    truth: np.ndarray | None
    rates: np.ndarray
    warnings: list[str]


#: Summary columns of the held-out comparison: rate model -> column.
HELDOUT_COLUMNS = {
    "spikedict": "heldout_bits_per_spike",
    "PSTH": "heldout_bits_per_spike_psth",
    "instantaneous_rate": "heldout_bits_per_spike_smoothing",
}


def _heldout_table(fitted: _Fitted, timings: dict[str, float]) -> pd.DataFrame | None:
    """Held-out comparison of the fit with a constant rate, the PSTH (trials aligned to an event) and smoothing."""
    from spikedict.analysis import heldout_comparison

    if fitted.heldout is None or fitted.settings.family == "gaussian":
        return None
    clock = time.perf_counter()
    aligned = fitted.settings.example_duration is None and fitted.counts.n_examples > 1
    table = heldout_comparison(
        fitted.model, fitted.counts, fitted.heldout, bin_size=fitted.settings.bin_size, psth=aligned, seed=0
    )
    timings["heldout"] = time.perf_counter() - clock
    return table


def _evaluate_fit(
    fitted: _Fitted, timings: dict[str, float], warned: list[str], echo: Callable[[str], None]
) -> _Evaluation:
    """The summary row (log-likelihoods of the fit and of constant rates, held-out gains, the ``warned`` notes and
    those of the held-out score and the recoverability check), template errors, ground truth and rates."""
    from spikedict.analysis import align_templates, constant_rates, log_likelihood_per_bin

    model, counts, settings = fitted.model, fitted.counts, fitted.settings
    family = settings.family
    rates = model.predict_rate(counts)
    log_likelihood = float(log_likelihood_per_bin(counts, rates, model.family_))
    constant = constant_rates(counts, "gaussian" if family == "gaussian" else family)
    constant_log_likelihood = float(log_likelihood_per_bin(counts, constant, model.family_))
    truth = _ground_truth(fitted.block)
    alignment_table = None
    summary = {
        "recording": fitted.label,
        "family": family,
        "n_examples": counts.n_examples,
        "n_heldout_examples": 0 if fitted.heldout is None else fitted.heldout.n_examples,
        "n_channels": counts.n_channels,
        "n_bins": counts.n_bins,
        "bin_size_ms": float(settings.bin_size.rescale(pq.ms).magnitude),
        "n_templates": settings.n_templates,
        "template_size": int(settings.template_size),
        "sparsity": model.sparsity_,
        "epochs": len(model.history_),
        "log_likelihood_per_bin": log_likelihood,
        "constant_rate_log_likelihood_per_bin": constant_log_likelihood,
        "fit_seconds": timings["fit"],
    }
    heldout_table = _heldout_table(fitted, timings)
    for name, column in HELDOUT_COLUMNS.items():
        found = [] if heldout_table is None else heldout_table.loc[heldout_table["model"] == name, "bits_per_spike"]
        summary[column] = float(found.iloc[0]) if len(found) else float("nan")
    if fitted.bootstrap is not None:
        table = fitted.bootstrap.table
        summary["n_templates_recoverable"] = int(table["recoverable"].sum())
        summary["mean_predicted_error"] = float(table["median_error"].mean())
    if truth is not None and truth.shape[1:] == (counts.n_channels,) + truth.shape[2:]:
        alignment = align_templates(model.templates_, truth)
        alignment_table = alignment.table
        summary["mean_template_error"] = alignment.mean_error
    warned = warned + _heldout_warnings(summary, echo) + _recoverability_warnings(fitted.bootstrap, echo)
    summary["data_warnings"] = " | ".join(warned)
    return _Evaluation(summary, alignment_table, heldout_table, truth, rates, warned)


def _heldout_warnings(summary: Mapping[str, Any], echo: Callable[[str], None]) -> list[str]:
    """A fit that predicts held-out spikes no better than a constant rate: say so, with what to try."""
    gain = summary.get("heldout_bits_per_spike", float("nan"))
    if not np.isfinite(gain) or gain > 0:
        return []
    message = (
        f"the templates predict held-out spikes no better than a constant rate ({gain:+.3f} bits per spike): they "
        "may be noise at this signal and data size. Try pooling trials into binomial counts (--pool N or "
        "--group-by), a larger bin size, fewer or shorter templates, or a lower --sparsity."
    )
    echo(f"warning: {message}")
    return [message]


def _recoverability_warnings(bootstrap: Any, echo: Callable[[str], None]) -> list[str]:
    """Templates the recoverability check does not recover: say which, and what to try."""
    if bootstrap is None:
        return []
    lost = bootstrap.table.loc[~bootstrap.table["recoverable"]]
    if lost.empty:
        return []
    errors = ", ".join(f"{int(row.template)} ({row.median_error:.2f})" for row in lost.itertuples())
    message = (
        f"template(s) {errors} are not recoverable at this signal and data size: refits of data simulated from this "
        "fit return them with a median error above 0.3 (in brackets), so the fitted shapes may be mostly noise. "
        "Try pooling trials (--pool N or --group-by), more data, or fewer templates."
    )
    echo(f"warning: {message}")
    return [message]


def _fit_report(folder: Path, fitted: _Fitted, evaluation: _Evaluation, written: list[Path]) -> Any:
    """The report of a fit to binned counts, but its settings and timings: text, tables, figures and history."""
    from spikedict.report import Report

    model, counts, settings = fitted.model, fitted.counts, fitted.settings
    template_size, group_by = int(settings.template_size), settings.group_by
    milliseconds = template_size * float(settings.bin_size.rescale(pq.s).magnitude) * 1000
    pooling = (f" by {group_by!r}" if group_by else "") + (
        f" in groups of {settings.pool_size} consecutive trials" if settings.pool_size else ""
    )
    report = Report(f"spikedict fit: {fitted.label}", folder)
    report.add_text(
        None,
        f"{settings.n_templates} convolutional templates of {template_size} bins ({milliseconds:g} ms) learned from "
        f"{fitted.label} with the {settings.family} family: {counts.n_examples} examples x {counts.n_channels} "
        f"unit(s) x {counts.n_bins} bins of {settings.bin_size}"
        + (f", trials pooled{pooling} (n_trials {sorted(set(counts.n_trials.tolist()))})" if settings.pooled else "")
        + ". Log-likelihoods are per bin on the fitted examples, with codes inferred from the same counts (an "
        "in-sample measure), next to the constant-rate model's.",
    )
    report.add_table("summary", pd.DataFrame([evaluation.summary]), "Summary")
    report.files.extend(written)
    if evaluation.heldout_table is not None:
        report.add_table(
            "heldout",
            evaluation.heldout_table,
            "Held-out prediction",
            f"The last {fitted.heldout.n_examples} examples were left out of the fit. Their spikes are split in two "
            "independent halves; each rate model predicts the second half from the first: spikedict from codes "
            "inferred on the first half, a constant rate and the PSTH from the training examples, elephant's "
            "instantaneous_rate by smoothing the first half with the kernel width that predicts best on the "
            "training examples. bits_per_spike is the gain over the constant rate per held-out spike (above 0: "
            "better than a constant rate).",
        )
    path = getattr(model, "sparsity_path_", None)
    if path is not None:
        report.add_table(
            "sparsity_path",
            path,
            "Sparsity chosen from the data",
            "Fits at the 'auto' sparsity and below it, going down while each predicted half of the training "
            "examples' spikes from the other half better than the one before (split-half gain: bits per spike over "
            "a constant rate); the best was kept. The held-out examples play no part in the choice.",
        )
    if fitted.selection is not None:
        from spikedict.plotting import plot_model_selection

        report.add_table(
            "model_choice",
            fitted.selection.summary,
            "Number and length of templates",
            "Each setting fitted in 3 folds of the training examples at the 'auto' sparsity; a held-out fold's "
            "spikes are split in two halves, codes inferred from one and the other scored (mean and standard error "
            "of the log-likelihood per bin over the folds). The best setting was then fitted as above.",
        )
        report.add_figure(
            "model_choice",
            plot_model_selection(fitted.selection, x="n_templates").figure,
            "Model choice",
            "Held-out log-likelihood per bin against the number of templates (one line per template length).",
        )
    if fitted.bootstrap is not None:
        report.add_table(
            "recoverability",
            fitted.bootstrap.table,
            "Can these templates be trusted?",
            f"{len(fitted.bootstrap.errors)} data sets were simulated from the fit (the recording's shape and trials, "
            "the fitted baseline, each template's fitted event rate and amplitudes) and refitted with the same "
            "settings. median_error and q90_error are the refits' errors against each fitted template "
            "(sqrt(1 - cos^2), 0 is a perfect match, 1 none); a template above 0.3 is not recoverable at this "
            "signal and data size. The spread of the refits is the band in templates.csv (lower, upper).",
        )
    if evaluation.alignment_table is not None:
        report.add_table(
            "template_errors",
            evaluation.alignment_table,
            "Template errors against the ground truth",
            "From the file's annotations.",
        )
    _fit_figures(report, fitted, evaluation.truth, evaluation.rates)
    report.add_table("history", model.history_, "Training history")
    return report


def _run_fit(model: Any, data: Any, resume: bool, timings: dict[str, float]) -> Any:
    """``model.fit(data)``, timed; a Ctrl-C becomes :class:`FitInterrupted` (the checkpoint keeps the epochs)."""
    clock = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        model.fit(data, resume=resume)
    for warning in caught:
        if "fit interrupted" not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    timings["fit"] = time.perf_counter() - clock
    if model.stop_reason_ == "interrupted" and model.checkpoint_path is None:
        raise FitInterrupted(
            "interrupted while choosing the sparsity or the templates, whose fits keep no checkpoint: run the same "
            "command again without --resume (into an empty --out)."
        )
    if model.stop_reason_ == "interrupted":
        raise FitInterrupted(
            f"interrupted after epoch {len(model.history_)} of {model.solver_.total_epochs}; the checkpoint "
            f"{model.checkpoint_path!r} keeps the finished epochs: run the same command with --resume to continue."
        )
    return model


def _write_model_and_templates(
    folder: Path, model: Any, channel_names: list[str], seconds: float, bootstrap: Any = None
) -> list[Path]:
    """``model.safetensors``, ``templates.npz`` and ``templates.csv`` (one row per template, channel and bin, with the
    band of the recoverability check's refits when it ran)."""
    model.save(folder / "model.safetensors")
    templates = model.templates_
    missing = np.full(templates.shape, np.nan)
    lower = missing if bootstrap is None else bootstrap.lower
    upper = missing if bootstrap is None else bootstrap.upper
    rows = [
        {
            "template": k,
            "channel": c,
            "channel_name": channel_names[c],
            "bin": t,
            "time_s": t * seconds,
            "value": float(templates[k, c, t]),
            "lower": float(lower[k, c, t]),
            "upper": float(upper[k, c, t]),
        }
        for k in range(templates.shape[0])
        for c in range(templates.shape[1])
        for t in range(templates.shape[2])
    ]
    with atomic_path(folder / "templates.npz") as temporary:
        np.savez(
            temporary,
            templates=templates,
            initial_templates=model.initial_templates_,
            baseline=model.baseline_,
            lower=lower,
            upper=upper,
            bin_size_s=np.float64(seconds),
            channel_names=np.asarray(channel_names),
        )
    with atomic_path(folder / "templates.csv") as temporary:
        pd.DataFrame(rows).to_csv(temporary, index=False)
    return [folder / "templates.csv", folder / "templates.npz", folder / "model.safetensors"]


def _finish_report(report: Any, folder: Path, timings: dict[str, float], checkpoint_path: Path) -> None:
    report.add_mapping("Timings (seconds)", {k: round(v, 2) for k, v in timings.items()})
    report.files.append(folder / "settings.json")
    report.add_file_list()
    report.write()
    checkpoint_path.unlink(missing_ok=True)


def _fit_windows(
    block: Any,
    label: str,
    folder: Path,
    parameters: dict[str, Any],
    bin_size: pq.Quantity,
    window: pq.Quantity,
    overlap: pq.Quantity | None,
    resume: bool,
    echo: Callable[[str], None],
    timings: dict[str, float],
    started: float,
    device_used: str,
) -> FitResult:
    """The long-recording branch of :func:`fit_recording`: stream the recording in windows."""
    from spikedict.io import RecordingWindows
    from spikedict.plotting import plot_codes, plot_templates, plot_training_curve
    from spikedict.report import Report

    template_size = int(parameters["template_size"])
    overlap = 4 * template_size * bin_size if overlap is None else overlap
    clock = time.perf_counter()
    echo(f"indexing the spikes of {label} for windows of {window} overlapping by {overlap} (bins of {bin_size})")
    windows = RecordingWindows(block, bin_size, window, overlap)
    timings["index"] = time.perf_counter() - clock
    echo(
        f"fitting {parameters['n_templates']} {parameters['family']} templates of {template_size} bins to "
        f"{windows.n_windows} windows of {windows.window_bins} bins x {windows.n_channels} unit(s) "
        f"({windows.n_bins} bins in all; up to {parameters['solver__n_epochs']} epochs on {device_used}"
        + (", resuming" if resume else "")
        + ")"
    )
    model = _run_fit(_build_estimator(parameters), windows, resume, timings)

    echo(f"writing the model, templates, the codes of the whole recording and a report to {folder}")
    clock = time.perf_counter()
    seconds = float(bin_size.rescale(pq.s).magnitude)
    written = _write_model_and_templates(folder, model, windows.channel_names, seconds)
    code_shape = (1, model.n_templates, windows.n_bins - template_size + 1)
    with atomic_path(folder / "codes.npy") as temporary:
        codes = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=code_shape)
        model.transform(windows, out=codes)
        first_window = np.array(codes[:, :, : windows.window_bins - template_size + 1])
        codes.flush()
        del codes
    timings["encode"] = time.perf_counter() - clock
    summary = {
        "recording": label,
        "family": parameters["family"],
        "n_windows": windows.n_windows,
        "window_bins": windows.window_bins,
        "overlap_bins": windows.overlap_bins,
        "n_channels": windows.n_channels,
        "n_bins": windows.n_bins,
        "n_spikes": int(windows.n_spikes.sum()),
        "bin_size_ms": float(bin_size.rescale(pq.ms).magnitude),
        "n_templates": model.n_templates,
        "template_size": template_size,
        "sparsity": model.sparsity_,
        "epochs": len(model.history_),
        "fit_seconds": timings["fit"],
    }
    report = Report(f"spikedict fit: {label}", folder)
    report.add_text(
        None,
        f"{model.n_templates} convolutional templates of {template_size} bins learned from {label} with the "
        f"{parameters['family']} family, streamed in {windows.n_windows} overlapping windows of {window} "
        f"({windows.n_channels} unit(s), {windows.n_bins} bins of {bin_size}). codes.npy holds the codes of the "
        "whole recording, stitched from the windows (numpy.load(..., mmap_mode='r') reads it without loading it).",
    )
    report.add_table("summary", pd.DataFrame([summary]), "Summary")
    report.files.extend([*written, folder / "codes.npy"])
    report.add_figure("templates", plot_templates(model, bin_size=bin_size), "Templates", "Learned templates (red).")
    report.add_figure(
        "codes", plot_codes(first_window, bin_size=bin_size).figure, "Codes", "Codes of the first window, per template."
    )
    report.add_figure("training", plot_training_curve(model).figure, "Training curve", "Loss per epoch.")
    report.add_table("history", model.history_, "Training history")
    timings["total"] = time.perf_counter() - started
    _finish_report(report, folder, timings, checkpoint_path=Path(parameters["checkpoint_path"]))
    return FitResult(model, windows, pd.DataFrame([summary]), None, folder)


def _rate_template_figure(report: Any, fitted: _Fitted, codes: np.ndarray) -> None:
    """The templates as rate modulations in spikes/s at their median event amplitude, with the check's bands."""
    from spikedict.plotting import plot_rate_templates

    model, counts = fitted.model, fitted.counts
    bands = {} if fitted.bootstrap is None else {"lower": fitted.bootstrap.lower, "upper": fitted.bootstrap.upper}
    per_trial = " per trial" if model.family_.name == "binomial" else ""
    figure = plot_rate_templates(
        model, bin_size=fitted.settings.bin_size, codes=codes, channel_names=counts.channel_names, **bands
    )
    if fitted.bootstrap is not None:  # the check's verdict next to each template
        for row in fitted.bootstrap.table.itertuples():
            verdict = "recoverable" if row.recoverable else "not recoverable"
            for axis in figure.axes:
                if axis.get_title().startswith((f"template {row.template},", f"template {row.template}:")):
                    axis.set_title(f"{axis.get_title()}\n{verdict} (median error {row.median_error:.2f})")
    report.add_figure(
        "rate_templates",
        figure,
        "Templates as rate modulations",
        f"The rate (spikes / s{per_trial}) each template causes at its median event amplitude, around the baseline "
        "rate (dashed)" + ("; the band holds 90% of the recoverability check's refits." if bands else "."),
    )


def _event_figures(report: Any, fitted: _Fitted, codes: np.ndarray, rates: np.ndarray) -> None:
    """For each template with events, the data aligned to them (raster and event-triggered mean)."""
    from spikedict.plotting import plot_event_aligned

    model, counts = fitted.model, fitted.counts
    for k in range(model.n_templates):
        if not (codes[:, k] > 0).any():
            continue  # the rate templates say "no events"
        channel = int(np.abs(model.templates_[k]).max(axis=1).argmax())
        report.add_figure(
            f"events_template{k}",
            plot_event_aligned(counts, codes, k, model=model, rates=rates, channel=channel),
            f"Data aligned to the events of template {k}",
            "Above: the counts around each inferred event (a positive code; time 0 is where the template starts), "
            f"largest amplitude first ({counts.channel_names[channel]}). Below: their event-triggered mean, the "
            "fitted rate averaged over the same events, and the template's rate at the median event amplitude "
            "(dashed); the shaded span is the template's.",
        )


def _fit_figures(report: Any, fitted: _Fitted, truth: np.ndarray | None, rates: np.ndarray) -> None:
    """Templates (as shapes and as rate modulations with their bands), rate over the spikes, the data aligned to each
    template's events, codes and training curve of a fit to binned counts."""
    from spikedict.plotting import (
        plot_codes,
        plot_raster,
        plot_sequences,
        plot_templates,
        plot_training_curve,
    )

    model, counts, block, bin_size = fitted.model, fitted.counts, fitted.block, fitted.settings.bin_size
    use_truth = truth is not None and truth.shape[1] == counts.n_channels
    all_codes = model.transform(counts)
    if counts.n_channels > MAX_CHANNELS_DRAWN:
        report.add_figure(
            "templates",
            plot_sequences(model, bin_size=bin_size, channel_names=counts.channel_names),
            "Templates as sequences",
            "Each template's channels that reach half of its peak, sorted by the time of their peak.",
        )
    else:
        report.add_figure(
            "templates",
            plot_templates(model, truth if use_truth else None, bin_size=bin_size),
            "Templates",
            "Learned templates (orange-red) and their initial templates (dotted)"
            + (", true ones in black." if use_truth else "."),
        )
        _rate_template_figure(report, fitted, all_codes)
    labels = counts.example_labels
    if fitted.settings.pooled and fitted.settings.example_duration is None and "trials" in labels.columns:
        trials = [block.segments[int(i)].spiketrains[0] for i in labels["trials"].iloc[0]]
        axis = plot_raster(trials, rates[0, 0], bin_size=bin_size)
        caption = "The trials of example 0 (first unit) with the fitted rate per trial."
    else:
        axis = plot_raster(counts.counts[0, 0], rates[0, 0], bin_size=bin_size, t_start=counts.t_start)
        caption = "Counts of example 0 (first unit) with the fitted rate (expected count per bin)."
    axis.set_title("example 0")
    report.add_figure("raster", axis.figure, "Rate over the spikes", caption)
    _event_figures(report, fitted, all_codes, rates)
    codes = all_codes[:1]
    report.add_figure(
        "codes", plot_codes(codes, bin_size=bin_size).figure, "Codes", "Inferred codes of example 0, per template."
    )
    report.add_figure("training", plot_training_curve(model).figure, "Training curve", "Loss per epoch.")
