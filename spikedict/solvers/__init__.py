"""Solvers: the ways to learn templates, behind one contract, and the epoch runner they share.

>>> from spikedict.solvers import Alternating, get_solver
>>> get_solver("alternating") == Alternating()
True
>>> Alternating(n_epochs=10).set_params(tolerance=0.0)
Alternating(n_epochs=10, tolerance=0.0)
"""

from __future__ import annotations

import importlib
from typing import Any

from spikedict.solvers._runner import load_checkpoint, run_epochs, save_checkpoint
from spikedict.solvers.base import EpochRun, FitProblem, FitResult, Solver

__all__ = [
    "EM",
    "Alternating",
    "Backprop",
    "EpochRun",
    "FitProblem",
    "FitResult",
    "Solver",
    "get_solver",
    "load_checkpoint",
    "run_epochs",
    "save_checkpoint",
]

# The solver objects are loaded on first use: the algorithm modules they wrap (spikedict.alternating,
# spikedict.training) import the runner and the contract from this package.
_LAZY = {
    "Alternating": "spikedict.solvers.alternating",
    "Backprop": "spikedict.solvers.backprop",
    "EM": "spikedict.solvers.em",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'spikedict.solvers' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def _solvers() -> dict[str, type[Solver]]:
    from spikedict.solvers.alternating import Alternating
    from spikedict.solvers.backprop import Backprop
    from spikedict.solvers.em import EM

    return {"alternating": Alternating, "backprop": Backprop, "em": EM}


def get_solver(solver: str | Solver, *, tied: bool = True, counts: bool = False) -> Solver:
    """The solver object for ``solver``: a name, or the object itself. ``"auto"``: EM for tied 1-D templates of
    count data (``counts``: a binomial or Poisson family), else alternating for tied templates and backprop for
    an untied encoder.

    Raises
    ------
    ValueError
        For an unknown name, with the known ones.
    """
    if isinstance(solver, Solver):
        return solver
    name = str(solver).strip().lower()
    if name == "auto":
        name = ("em" if counts else "alternating") if tied else "backprop"
    solvers = _solvers()
    if name not in solvers:
        raise ValueError(
            f"solver must be 'auto', {', '.join(repr(k) for k in solvers)} or a Solver object (e.g. "
            f"spikedict.solvers.Alternating(n_epochs=50)), got {solver!r}."
        )
    return solvers[name]()
