"""Settings objects with the scikit-learn parameter protocol.

A settings object (a solver, the encoder, the template constraints) stores its constructor keywords as
attributes of the same names and validates them only when used. :class:`Settings` gives it ``get_params`` and
``set_params`` (so that ``sklearn.base.clone`` copies it and ``GridSearchCV`` can search ``solver__n_epochs``),
equality by parameters and a ``repr`` that shows the parameters that differ from the defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

__all__ = ["Encoder", "Settings", "TemplateConstraints", "check_integer", "same_value", "transformer_tags"]


def check_integer(owner: str, name: str, value: Any, low: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (Python or numpy, not a bool) of at least ``low``;
    the message names the setting as ``owner name`` (``owner`` may be empty)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        label = f"{owner} {name}" if owner else name
        raise ValueError(f"{label} must be an integer >= {low}, got {value!r}.")


def same_value(a: Any, b: Any) -> bool:
    """Whether two parameter values are equal (arrays element-wise; False if they cannot be compared)."""
    if a is b:
        return True
    try:
        result = a == b
        return bool(np.all(result)) if not isinstance(result, bool) else result
    except Exception:
        return False


class Settings:
    """Base of the settings objects: the parameters are the constructor's keywords."""

    @classmethod
    def _parameter_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [name for name, p in signature.parameters.items() if name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's keywords and their values (``deep``: also ``name__key`` of nested settings)."""
        params: dict[str, Any] = {}
        for name in self._parameter_names():
            params[name] = getattr(self, name)
            nested = self._settings_of(name) if deep else None
            if hasattr(nested, "get_params") and not isinstance(nested, type):
                params.update({f"{name}__{key}": item for key, item in nested.get_params(deep=True).items()})
        return params

    def _settings_of(self, name: str) -> Any:
        """The value of parameter ``name`` as a settings object where it stands for one (shorthands resolved)."""
        return getattr(self, name)

    def set_params(self, **params: Any) -> Settings:
        """Set parameters by name (``name__key`` reaches into a nested settings object); returns self.

        Raises
        ------
        ValueError
            For a name that is not a parameter, with the list of those that are.
        """
        names = self._parameter_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, rest = key.partition("__")
            if name not in names:
                raise ValueError(
                    f"{key!r} is not a parameter of {type(self).__name__}; its parameters are {', '.join(names)}."
                )
            if rest:
                nested.setdefault(name, {})[rest] = value
            else:
                setattr(self, name, value)
        # the solver last: its shorthand ("auto") resolves by the encoder's settings set in the same call
        for name in sorted(nested, key=lambda name: name == "solver"):
            self._nested_settings(name).set_params(**nested[name])
        return self

    def _nested_settings(self, name: str) -> Any:
        """The settings object of parameter ``name``, for ``set_params``: a shorthand the parameter holds (None, a
        name) is replaced by the object it stands for (see :meth:`_settings_of`)."""
        value = self._settings_of(name)
        if not hasattr(value, "set_params"):
            raise ValueError(f"{name} of {type(self).__name__} is {value!r}, which has no parameters to set.")
        setattr(self, name, value)
        return value

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        mine, theirs = self.get_params(deep=False), other.get_params(deep=False)  # type: ignore[attr-defined]
        return all(same_value(mine[name], theirs[name]) for name in mine)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        defaults = {
            name: p.default
            for name, p in inspect.signature(type(self).__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        shown = [
            f"{name}={value!r}"
            for name, value in self.get_params(deep=False).items()
            if name not in defaults or not same_value(value, defaults[name])
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


class Encoder(Settings):
    """How codes are inferred: the unrolled encoder of ``transform``, ``predict_rate`` and ``score``.

    Parameters
    ----------
    n_iterations : int
        Encoder iterations from zero codes at inference. Raise it for long templates or low sparsity, where
        the encoder converges slowly.
    algorithm : {"fista", "ista"}
        Proximal gradient with momentum (FISTA) or without (ISTA).
    nonnegative_codes : bool
        Codes >= 0 (events that raise the rate); False also allows events that lower it.
    tied : bool
        True (DCEA-C): the encoder uses the templates themselves, which stay interpretable. False (DCEA-UC):
        the encoder learns weights and thresholds of its own (trained by back-propagation), more accurate for
        denoising and less interpretable.
    """

    def __init__(
        self, n_iterations: int = 300, algorithm: str = "fista", nonnegative_codes: bool = True, tied: bool = True
    ) -> None:
        self.n_iterations = n_iterations
        self.algorithm = algorithm
        self.nonnegative_codes = nonnegative_codes
        self.tied = tied

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        check_integer("Encoder", "n_iterations", self.n_iterations, 1)
        if self.algorithm not in ("fista", "ista"):
            raise ValueError(f"Encoder algorithm must be 'fista' or 'ista', got {self.algorithm!r}.")


class TemplateConstraints(Settings):
    """Constraints and penalty on the templates.

    Parameters
    ----------
    nonnegative : bool
        Templates >= 0 (rate increases only).
    zero_edges : int
        Bins at each end of a template held at zero (templates that start and end at the baseline). 1-D only.
    smoothness : float
        Weight of the squared-difference penalty on the templates; raise it when templates come out jagged.
    """

    def __init__(self, nonnegative: bool = False, zero_edges: int = 0, smoothness: float = 0.0) -> None:
        self.nonnegative = nonnegative
        self.zero_edges = zero_edges
        self.smoothness = smoothness

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        check_integer("", "zero_edges", self.zero_edges, 0)
        if not (isinstance(self.smoothness, (int, float)) and self.smoothness >= 0):
            raise ValueError(f"smoothness must be a number >= 0, got {self.smoothness!r}.")


def transformer_tags() -> Any:
    """scikit-learn's tags of an unsupervised transformer of 3-D (and 4-D) arrays of counts: ``fit(X)`` without
    targets, ``score(X)`` to choose settings by."""
    from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

    return Tags(
        estimator_type=None,
        target_tags=TargetTags(required=False),
        transformer_tags=TransformerTags(preserves_dtype=[]),
        input_tags=InputTags(two_d_array=False, three_d_array=True, positive_only=True),
        non_deterministic=False,
    )
