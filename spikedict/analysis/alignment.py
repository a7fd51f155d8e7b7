"""Match learned templates to known ones, up to permutation, sign and time shift.

The error of a matched pair of unit-norm templates is the paper's ``sqrt(1 - <h, h_hat>^2)``, taken at
the shift that maximises ``|<h, h_hat>|``: 0 for identical templates (up to sign and shift), 1 for
orthogonal ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.signal import correlate

__all__ = ["Alignment", "align_templates", "template_error"]


def _as_templates(templates: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(templates, dtype=np.float64)
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n_templates, n_channels, template_size) or (n_templates, template_size), "
            f"got shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf; align only finite templates.")
    norms = np.sqrt((array**2).sum(axis=(1, 2), keepdims=True))
    if np.any(norms == 0):
        raise ValueError(f"{name} contains an all-zero template, which has no shape to align.")
    return array / norms


def _cross_correlations(learned: np.ndarray, true: np.ndarray, max_lag: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Best |inner product| over lags and the lag achieving it, for every (true, learned) pair."""
    size_true, size_learned = true.shape[2], learned.shape[2]
    lags = np.arange(-(size_learned - 1), size_true)
    allowed = np.ones_like(lags, dtype=bool) if max_lag is None else np.abs(lags) <= max_lag
    best = np.zeros((true.shape[0], learned.shape[0]))
    best_lag = np.zeros((true.shape[0], learned.shape[0]), dtype=int)
    signed = np.zeros_like(best)
    for i, reference in enumerate(true):
        for j, candidate in enumerate(learned):
            # c[lag] = sum_t reference[t + lag] * candidate[t], summed over channels.
            values = sum(correlate(reference[c], candidate[c], mode="full") for c in range(reference.shape[0]))
            values = np.where(allowed, values, 0.0)
            k = int(np.argmax(np.abs(values)))
            best[i, j], best_lag[i, j], signed[i, j] = abs(values[k]), lags[k], values[k]
    return best, best_lag, signed


def template_error(learned: np.ndarray, true: np.ndarray, max_lag: int | None = 0) -> float:
    """Error ``sqrt(1 - <h, h_hat>^2)`` between two single templates (unit-normalised first).

    Parameters
    ----------
    learned, true : ndarray, shape (n_channels, template_size) or (template_size,)
    max_lag : int or None
        Largest shift considered (0: no shift; None: every shift).
    """
    learned = _as_templates(np.asarray(learned).reshape(1, -1, np.shape(learned)[-1]), "learned")
    true = _as_templates(np.asarray(true).reshape(1, -1, np.shape(true)[-1]), "true")
    best, _, _ = _cross_correlations(learned, true, max_lag)
    return float(np.sqrt(max(0.0, 1.0 - best[0, 0] ** 2)))


@dataclass
class Alignment:
    """Result of :func:`align_templates`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per true template: ``true_index``, ``learned_index``, ``lag`` (bins by which the learned
        template is shifted to match), ``sign`` (+1 or -1), ``correlation`` (|inner product| at that lag)
        and ``error``.
    unmatched : list of int
        Learned templates matched to no true template.
    aligned : ndarray, shape (n_true, n_channels, template_size)
        The matched learned templates, sign-flipped and shifted onto the true ones (zero-padded).
    """

    table: pd.DataFrame
    unmatched: list[int]
    aligned: np.ndarray

    @property
    def mean_error(self) -> float:
        """Mean error over the true templates."""
        return float(self.table["error"].mean())

    @property
    def errors(self) -> np.ndarray:
        """Error of each true template, in the order of the true templates."""
        return self.table["error"].to_numpy()


def align_templates(learned: np.ndarray, true: np.ndarray, max_lag: int | None = None) -> Alignment:
    """Best one-to-one match of learned to true templates over permutation, sign and shift.

    Each pair is scored by the largest absolute cross-correlation over lags (unit-norm templates);
    the Hungarian algorithm picks the matching with the largest total.

    Parameters
    ----------
    learned : ndarray, shape (n_learned, n_channels, template_size)
    true : ndarray, shape (n_true, n_channels, true_size)
        ``n_learned >= n_true``; extra learned templates are listed as unmatched.
    max_lag : int or None
        Largest shift considered, in bins (None: any shift).

    Returns
    -------
    Alignment

    Examples
    --------
    >>> import numpy as np
    >>> from spikedict.simulate import paper_templates
    >>> true = paper_templates(50)
    >>> learned = -true[[2, 0, 1]]  # permuted and sign-flipped
    >>> result = align_templates(learned, true)
    >>> result.table[["learned_index", "sign", "lag"]].values.tolist()
    [[1, -1, 0], [2, -1, 0], [0, -1, 0]]
    >>> round(result.mean_error, 6)
    0.0
    """
    learned = _as_templates(learned, "learned")
    true = _as_templates(true, "true")
    if learned.shape[1] != true.shape[1]:
        raise ValueError(
            f"learned and true templates must have the same number of channels, got {learned.shape[1]} "
            f"and {true.shape[1]}."
        )
    if learned.shape[0] < true.shape[0]:
        raise ValueError(
            f"need at least as many learned templates as true ones, got {learned.shape[0]} learned and "
            f"{true.shape[0]} true; fit with n_templates >= {true.shape[0]}."
        )
    best, best_lag, signed = _cross_correlations(learned, true, max_lag)
    rows, columns = linear_sum_assignment(-best)
    records = []
    aligned = np.zeros_like(true)
    for i, j in zip(rows, columns):
        lag = int(best_lag[i, j])
        sign = 1 if signed[i, j] >= 0 else -1
        correlation = min(best[i, j], 1.0)
        records.append(
            {
                "true_index": int(i),
                "learned_index": int(j),
                "lag": lag,
                "sign": sign,
                "correlation": float(correlation),
                "error": float(np.sqrt(1.0 - correlation**2)),
            }
        )
        # aligned[t + lag] = sign * learned[t], restricted to the true template's support.
        size = true.shape[2]
        for t in range(learned.shape[2]):
            if 0 <= t + lag < size:
                aligned[i, :, t + lag] = sign * learned[j, :, t]
    table = pd.DataFrame.from_records(records).sort_values("true_index").reset_index(drop=True)
    unmatched = sorted(set(range(learned.shape[0])) - set(int(c) for c in columns))
    return Alignment(table=table, unmatched=unmatched, aligned=aligned)
