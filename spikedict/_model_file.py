"""A fitted :class:`~spikedict.SpikeDictionary` in one ``.safetensors`` file: tensors and JSON metadata, no pickle.

The estimator's parameters are stored as JSON; a settings object (solver, encoder, constraints) as a dict with
its class name under ``"settings"``. Files of format version 1 (one flat list of parameters) are read by
translating the old names to the settings they moved to (:func:`version_1_params`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spikedict._atomic import atomic_path
from spikedict.families import Family, get_family
from spikedict.settings import Encoder, Settings, TemplateConstraints
from spikedict.training import resolve_device

__all__ = ["VERSION_1_NAMES", "load_estimator", "save_estimator", "version_1_params"]

FORMAT = "spikedict-model"
FORMAT_VERSION = 2

#: Version 1 (before the solver objects) kept every setting in the estimator: the name each has now.
VERSION_1_NAMES: dict[str, str] = {
    "n_epochs": "solver__n_epochs",
    "n_iterations": "solver__n_code_iterations",
    "n_inference_iterations": "encoder__n_iterations",
    "algorithm": "encoder__algorithm",
    "nonnegative_codes": "encoder__nonnegative_codes",
    "tied": "encoder__tied",
    "nonnegative_templates": "constraints__nonnegative",
    "zero_edges": "constraints__zero_edges",
    "smoothness": "constraints__smoothness",
    **{
        name: f"solver__{name}"
        for name in (
            *("reweighting", "n_restarts", "continuation", "n_spare_templates", "padding", "initial_subset"),
            *("epoch_subset", "tolerance", "n_dictionary_steps", "batch_size", "learning_rate", "backprop"),
            *("warm_start", "validation_fraction", "patience"),
        )
    },
}


def version_1_params(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flat parameters of version 1 as the estimator takes them now (``set_params`` keys), and the names dropped.

    The solver is the one version 1's ``solver="auto"`` chose for data in memory (back-propagation for an untied
    encoder or for gradients through it, else alternating). A solver setting that this solver does not take
    (version 1 ignored ``batch_size`` with the alternating solver, say) is dropped, as is an ``"auto"``
    ``n_dictionary_steps`` (the solvers' defaults now); names of version 2 pass through.
    """
    from spikedict.solvers import get_solver

    solver = params.get("solver", "auto")
    if solver == "auto":
        untied = not params.get("tied", True) or params.get("backprop", "none") != "none"
        solver = "backprop" if untied else "alternating"
    takes = get_solver(solver).get_params(deep=False)
    translated: dict[str, Any] = {"solver": solver}
    dropped = []
    for name, value in params.items():
        target = VERSION_1_NAMES.get(name, name)
        if name == "n_dictionary_steps" and solver == "alternating":
            target = "solver__n_dictionary_iterations"
        if name == "solver" or (name == "n_dictionary_steps" and value == "auto"):
            continue
        if target.startswith("solver__") and target.removeprefix("solver__") not in takes:
            dropped.append(name)
            continue
        translated[target] = value
    return translated, dropped


def _settings_classes() -> dict[str, type[Settings]]:
    from spikedict.solvers import EM, Alternating, Backprop

    return {cls.__name__: cls for cls in (Alternating, Backprop, EM, Encoder, TemplateConstraints)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Settings):
        return {"settings": type(value).__name__, **{k: _jsonable(v) for k, v in value.get_params(deep=False).items()}}
    if isinstance(value, Family):
        return value.config()["name"]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "settings" in value:
        values = dict(value)
        cls = _settings_classes()[values.pop("settings")]
        return cls(**{k: _from_json(v) for k, v in values.items()})
    return value


def save_estimator(estimator: Any, path: Path) -> Path:
    """Write a fitted estimator to ``path`` (``.safetensors`` appended if missing); returns the file written."""
    from safetensors.torch import save_file

    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    params = {k: _jsonable(v) for k, v in estimator.get_params(deep=False).items()}
    fitted = {
        name: getattr(estimator, name, None)
        for name in (
            "sparsity_",
            "n_channels_",
            "stop_reason_",
            "reweighting_delta_",
            "restart_losses_",
            "best_restart_",
        )
    }
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "params": json.dumps(params),
        "solver": json.dumps(_jsonable(estimator.solver_)),
        "family": json.dumps(estimator.family_.config()),
        "fitted": json.dumps(fitted),
        "history": estimator.history_.to_json(orient="split", double_precision=15),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in estimator.model_.state_dict().items()}
    tensors["initial_templates"] = torch.as_tensor(estimator.initial_templates_)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if path.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is a folder; pass the model file that SpikeDictionary.save wrote (the spikedict fit "
            f"command writes {str(path / 'model.safetensors')!r})."
        )
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise ValueError(
            f"could not read {str(path)!r} as a spikedict model: the file is corrupt, truncated or not a "
            f"safetensors file ({type(error).__name__}). Save the model again with SpikeDictionary.save."
        ) from error
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not a spikedict model (format {metadata.get('format')!r})."
        )
    if int(metadata.get("version", "0")) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer spikedict (format version {metadata['version']}); upgrade spikedict."
        )
    return metadata, tensors


def load_estimator(cls: type, path: Path, device: str) -> Any:
    """Read a model written by :func:`save_estimator` into a new estimator of class ``cls`` on ``device``."""
    metadata, tensors = _read(path)
    try:
        params = json.loads(metadata["params"])
        if int(metadata["version"]) == 1:
            translated, _ = version_1_params(params)
            names = cls._parameter_names()
            estimator = cls().set_params(**{k: v for k, v in translated.items() if k.partition("__")[0] in names})
        else:
            estimator = cls(**{k: _from_json(v) for k, v in params.items()})
        estimator.device = device
        family = get_family(**json.loads(metadata["family"]))
        fitted = json.loads(metadata["fitted"])
        solver = (
            _from_json(json.loads(metadata["solver"])) if "solver" in metadata else estimator._settings_of("solver")
        )
        template_shape = estimator._template_shape()
        model = estimator._new_model(estimator.n_templates, int(fitted["n_channels_"]), template_shape, family, solver)
        model.sparsity = float(fitted["sparsity_"])
        initial = tensors.pop("initial_templates")
        model.load_state_dict(tensors)
        history = pd.read_json(io.StringIO(metadata["history"]), orient="split")
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{str(path)!r} is a spikedict model whose contents do not fit together ({type(error).__name__}: "
            f"{error}); it may have been edited or written by an incompatible version."
        ) from error
    model.to(resolve_device(device))
    model.eval()
    estimator.model_, estimator.family_, estimator.solver_ = model, family, solver
    estimator.sparsity_, estimator.n_channels_ = float(fitted["sparsity_"]), int(fitted["n_channels_"])
    estimator.stop_reason_ = fitted.get("stop_reason_", "")
    estimator.reweighting_delta_ = fitted.get("reweighting_delta_")
    estimator.restart_losses_ = fitted.get("restart_losses_")
    estimator.best_restart_ = fitted.get("best_restart_")
    estimator.history_ = history
    estimator.initial_templates_ = initial.numpy()
    estimator._set_fitted_arrays()
    return estimator
