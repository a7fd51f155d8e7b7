"""The epoch runner shared by every solver, and the checkpoint files it writes.

:func:`run_epochs` runs an :class:`~spikedict.solvers.base.EpochRun` epoch by epoch. It owns what every solver
needs the same way: resuming from a checkpoint (after checking that the checkpoint was written by the same kind
of fit), keeping the state after the last finished epoch (restored on Ctrl-C, and when an epoch diverges), the
progress bar, the history, an atomic checkpoint after every epoch (written by the first process only) and a
barrier after it in a distributed fit.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spikedict import distributed
from spikedict._atomic import atomic_path
from spikedict.solvers.base import EpochRun, FitResult

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "run_epochs",
    "save_checkpoint",
    "warn_interrupted",
]

CHECKPOINT_FORMAT = "spikedict-checkpoint"
#: 2: one layout for every solver (``signature``, ``state``, ``history``); version 1 files are refused.
CHECKPOINT_VERSION = 2


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically: a temporary file in the same folder, then rename.

    A crash while writing leaves the previous checkpoint intact and never a truncated file under ``path``.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing code (``weights_only``).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is corrupt, truncated, or not a spikedict checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}; fit without resume to start one.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"could not read checkpoint {str(path)!r}: the file is corrupt, truncated or not a spikedict "
            f"checkpoint ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Delete it and fit again without resume."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a spikedict checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "pass the checkpoint_path that a previous fit wrote."
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')}, newer than this spikedict "
            f"understands ({CHECKPOINT_VERSION}); upgrade spikedict."
        )
    return payload


def check_signature(saved: dict[str, Any], expected: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise ``ValueError`` listing every entry of ``expected`` that the checkpoint's ``saved`` differs in."""
    differences = [
        f"{k}: checkpoint has {saved.get(k)!r}, this fit has {v!r}" for k, v in expected.items() if saved.get(k) != v
    ]
    if differences:
        raise ValueError(
            f"checkpoint {str(path)!r} comes from another configuration ({'; '.join(differences)}). "
            "Fit with the same settings and data to resume, or choose a new checkpoint_path."
        )


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: ``progress``, or (None) when standard error is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


def _resumed(run: EpochRun, checkpoint_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load the checkpoint into ``run`` and return its history."""
    payload = load_checkpoint(checkpoint_path)
    if payload.get("version", 0) < CHECKPOINT_VERSION or "state" not in payload:
        raise ValueError(
            f"checkpoint {str(checkpoint_path)!r} was written by an earlier spikedict (checkpoint version "
            f"{payload.get('version')}, this one writes {CHECKPOINT_VERSION}); fit again without resume."
        )
    check_signature(payload.get("signature", {}), run.signature, checkpoint_path)
    run.load_state_dict(payload["state"])
    return [dict(row) for row in payload["history"]]


def run_epochs(
    run: EpochRun,
    n_epochs: int,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> FitResult:
    """Run ``run`` for at most ``n_epochs`` epochs and return its result.

    Parameters
    ----------
    run : EpochRun
    n_epochs : int
        Epochs in all, those of a resumed checkpoint included.
    checkpoint_path : str or path, optional
        Written (atomically, by the first process) after every epoch: the run's state, its signature and the
        history.
    resume : bool
        Continue from ``checkpoint_path``; a fit whose checkpoint had already stopped (converged or early
        stopping) stops at once.
    progress : bool or None
        tqdm bar (None: only on a terminal).
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, row)`` (``epoch`` counted from 1) after each epoch.

    Returns
    -------
    FitResult
        ``stop_reason`` is ``"interrupted"`` after Ctrl-C (the run holds the state of the last finished epoch).

    Raises
    ------
    FloatingPointError
        From an epoch that diverged, after the run was restored to the last finished epoch.
    """
    if resume and not checkpoint_path:
        raise ValueError("resume=True needs checkpoint_path: the file that the interrupted fit wrote.")
    history = _resumed(run, checkpoint_path) if resume else []
    stop_reason = run.stop_reason(history) if history else None
    first = n_epochs if stop_reason else len(history)
    last_good = run.state_dict()
    bar = tqdm(
        range(first, n_epochs),
        initial=first,
        total=n_epochs,
        disable=not (distributed.rank() == 0 and show_progress(progress)),
        desc="fit",
        unit="epoch",
    )
    try:
        for epoch in bar:
            started = time.perf_counter()
            row = run.run_epoch(epoch)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            last_good = run.state_dict()
            if checkpoint_path and distributed.rank() == 0:
                payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch + 1}
                payload.update(signature=run.signature, state=last_good, history=history)
                save_checkpoint(checkpoint_path, payload)
            distributed.barrier()  # no process runs ahead of the checkpoint it may have to resume from
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
            bar.set_postfix(run.progress(row))
            stop_reason = run.stop_reason(history)
            if stop_reason:
                break
    except KeyboardInterrupt:
        run.load_state_dict(last_good)
        stop_reason = "interrupted"
    except FloatingPointError:
        run.load_state_dict(last_good)
        raise
    finally:
        bar.close()
    return run.finish(stop_reason or "n_epochs", history)


def warn_interrupted(
    epochs: tuple[int, int], restarts: tuple[int, int], finished: bool, checkpoint_path: str | os.PathLike | None
) -> None:
    """Warn that a fit was interrupted after ``epochs`` (done, planned) of restart ``restarts`` (number, planned)
    and say what the model holds (``finished``: an earlier restart finished) and how to resume."""
    where = f"epoch {epochs[0]} of {epochs[1]}"
    if restarts[1] > 1:
        where = f"restart {restarts[0]} of {restarts[1]} at {where}"
    kept = "the best finished restart" if finished else f"the parameters after {where}"
    resume = f"; fit(X, resume=True) continues from {str(checkpoint_path)!r}." if checkpoint_path else "."
    warnings.warn(f"fit interrupted ({where}): the model holds {kept}{resume}", RuntimeWarning, stacklevel=4)
