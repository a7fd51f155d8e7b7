"""Multi-channel templates read as sequences: which channels a template engages, in the order they peak."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sequence_order"]


def sequence_order(templates: Any, threshold: float = 0.5) -> list[np.ndarray]:
    """The channels each template engages, sorted by the time of their peak, as seqNMF and PP-Seq draw sequences.

    A channel is engaged when its largest value in the template reaches ``threshold`` times the template's
    largest value over all channels (rate increases: the positive part of the template).

    Parameters
    ----------
    templates : ndarray, shape (n_templates, n_channels, template_size)
    threshold : float
        Share of the template's peak that a channel's own peak must reach, in (0, 1].

    Returns
    -------
    list of ndarray
        One array of channel indices per template, earliest peak first (ties by channel index).

    Examples
    --------
    >>> import numpy as np
    >>> template = np.zeros((1, 3, 5))
    >>> template[0, 0, 3], template[0, 1, 1], template[0, 2, 2] = 1.0, 0.8, 0.3
    >>> sequence_order(template)[0].tolist()
    [1, 0]
    """
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 3:
        raise ValueError(
            f"templates must have shape (n_templates, n_channels, template_size), got shape {templates.shape}."
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}.")
    orders = []
    for template in templates:
        peaks = template.max(axis=1)
        top = peaks.max()
        engaged = np.flatnonzero(peaks >= threshold * top) if top > 0 else np.array([], dtype=np.int64)
        times = template[engaged].argmax(axis=1)
        orders.append(engaged[np.lexsort((engaged, times))])
    return orders
