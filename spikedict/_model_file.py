"""A fitted :class:`~spikedict.SpikeDictionary` in one ``.safetensors`` file: tensors and JSON metadata, no pickle.

The estimator's parameters are stored as JSON; a settings object (solver, encoder, constraints) as a dict with
its class name under ``"settings"``. Files of format version 1 (one flat list of parameters) are read by
translating the old names to the settings objects they moved to.
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

__all__ = ["load_estimator", "save_estimator"]

FORMAT = "spikedict-model"
FORMAT_VERSION = 2

# Version 1 kept every setting in the estimator: where each went.
_VERSION_1 = {
    "encoder": {
        "n_inference_iterations": "n_iterations",
        "algorithm": "algorithm",
        "nonnegative_codes": "nonnegative_codes",
        "tied": "tied",
    },
    "constraints": {"nonnegative_templates": "nonnegative", "zero_edges": "zero_edges", "smoothness": "smoothness"},
}


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


def _translate_version_1(params: dict[str, Any]) -> dict[str, Any]:
    """Version-1 parameters as the estimator takes them now."""
    from spikedict.solvers import get_solver

    params = dict(params)
    nested = {
        group: {new: params.pop(old) for old, new in names.items() if old in params}
        for group, names in _VERSION_1.items()
    }
    params["encoder"], params["constraints"] = (
        Encoder(**nested["encoder"]),
        TemplateConstraints(**nested["constraints"]),
    )
    solver_name = params.pop("solver", "auto")
    backprop = params.get("backprop", "none")
    solver = get_solver(
        solver_name
        if solver_name != "auto"
        else ("alternating" if params["encoder"].tied and backprop == "none" else "backprop")
    )
    renamed = {"n_iterations": "n_code_iterations"}
    for old in list(params):
        if old == "n_dictionary_steps" and params[old] != "auto" and "n_dictionary_iterations" in solver.get_params():
            solver.set_params(n_dictionary_iterations=params.pop(old))
        elif renamed.get(old, old) in solver.get_params() and old not in ("solver",):
            value = params.pop(old)
            if value != "auto" or renamed.get(old, old) in ("n_spare_templates", "padding", "initial_subset"):
                solver.set_params(**{renamed.get(old, old): value})
    params["solver"] = solver
    return params


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
            params = _translate_version_1(params)
            params = {k: v for k, v in params.items() if k in cls._parameter_names()}
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
