"""Neo objects for :func:`spikedict.simulate.simulate_spikes` (kept here: this package owns neo and elephant)."""

from __future__ import annotations

from typing import Any

import numpy as np
import quantities as pq

__all__ = ["build_block", "ground_truth", "poisson_process_times"]


def build_block(
    spike_times: list[list[list[np.ndarray]]],
    t_stop: pq.Quantity,
    codes: np.ndarray,
    truth: dict[str, Any],
    *,
    bin_size: pq.Quantity,
    name: str = "spikedict simulation",
) -> Any:
    """A Block from ``spike_times[example][trial][channel]`` (magnitudes in the units of ``bin_size``).

    Segments are trials in example-major order, annotated ``example`` and ``trial``; one Group per channel
    (unit); the ground truth and the non-zero codes (``code_example``, ``code_template``, ``code_position``,
    ``code_amplitude``, and ``code_shape``) go into ``block.annotations``.
    """
    import neo

    units = bin_size.units
    t_stop = t_stop.rescale(units)
    n_channels = len(spike_times[0][0]) if spike_times and spike_times[0] else 0
    example, template, position = np.nonzero(codes)
    block = neo.Block(
        name=name,
        bin_size=bin_size,
        code_shape=np.asarray(codes.shape, dtype=np.int64),
        template_shape=np.asarray(np.shape(truth["templates"]), dtype=np.int64),
        code_example=example.astype(np.int64),
        code_template=template.astype(np.int64),
        code_position=position.astype(np.int64),
        code_amplitude=codes[example, template, position],
        **truth,
    )
    groups = [neo.Group(name=f"unit {c}", unit=f"unit {c}") for c in range(n_channels)]
    for n, trials in enumerate(spike_times):
        for m, channels in enumerate(trials):
            segment = neo.Segment(name=f"example {n} trial {m}", example=n, trial=m)
            for c, times in enumerate(channels):
                train = neo.SpikeTrain(times * units, t_start=0 * units, t_stop=t_stop, name=f"unit {c}")
                train.annotate(unit=f"unit {c}")
                segment.spiketrains.append(train)
                groups[c].add(train)
            block.segments.append(segment)
    block.groups.extend(groups)
    block.check_relationships()
    return block


def ground_truth(block: Any) -> dict[str, np.ndarray]:
    """The ground truth that :func:`build_block` stored in ``block.annotations``, with full shapes.

    A MAT round trip drops length-1 axes of array annotations; the stored ``template_shape`` and
    ``code_shape`` restore them.

    Returns
    -------
    dict
        ``templates`` (n_templates, n_channels, template_size), ``codes`` (n_examples, n_templates,
        n_code_bins) and ``baseline`` (n_channels,).
    """
    annotations = block.annotations
    shape = tuple(int(k) for k in np.atleast_1d(annotations["code_shape"]))
    codes = np.zeros(shape)
    index = tuple(
        np.atleast_1d(annotations[key]).astype(np.int64) for key in ("code_example", "code_template", "code_position")
    )
    codes[index] = np.atleast_1d(annotations["code_amplitude"])
    template_shape = tuple(int(k) for k in np.atleast_1d(annotations["template_shape"]))
    templates = np.asarray(annotations["templates"], dtype=np.float64).reshape(template_shape)
    baseline = np.atleast_1d(np.asarray(annotations["baseline"], dtype=np.float64))
    return {"templates": templates, "codes": codes, "baseline": baseline}


def poisson_process_times(expected_counts: np.ndarray, bin_size: pq.Quantity, rng: np.random.Generator) -> np.ndarray:
    """Spike times (in the units of ``bin_size``) from elephant's ``NonStationaryPoissonProcess``.

    The rate is piecewise constant: ``expected_counts[k] / bin_size`` in bin ``k``. Elephant draws from
    NumPy's global random state, so it is seeded from ``rng`` for the call and restored afterwards: the
    caller's global state is left as it was and the same ``rng`` gives the same spikes.
    """
    import neo
    from elephant.spike_train_generation import NonStationaryPoissonProcess

    rate = neo.AnalogSignal(
        (np.asarray(expected_counts, dtype=np.float64) / float(bin_size.rescale(pq.s).magnitude))[:, None] * pq.Hz,
        sampling_period=bin_size,
        t_start=0 * bin_size.units,
    )
    state = np.random.get_state()  # noqa: NPY002 - elephant draws from the global state
    try:
        np.random.seed(int(rng.integers(2**32)))  # noqa: NPY002
        times = NonStationaryPoissonProcess(rate).generate_spiketrain(as_array=True)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return np.sort(np.asarray(times, dtype=np.float64))
