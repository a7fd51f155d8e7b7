"""The small data sets shipped in the repository's ``data/`` folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from spikedict.io._files import read_recording

if TYPE_CHECKING:  # pragma: no cover
    import neo

__all__ = ["DATASETS", "data_directory", "list_datasets", "load_dataset"]

# name -> (file in data/, one-line description)
DATASETS: dict[str, tuple[str, str]] = {
    "paper-binomial": (
        "paper_binomial.mat",
        "simulated binomial study in the DCEA paper's setting: 3 templates of 50 bins, M = 30 trials per example",
    ),
    "locust": (
        "locust.mat",
        "locust auditory receptor neuron, two 10 s white-noise stimuli (Rokem et al. 2006, via nitime; BSD-3)",
    ),
    "motoneurone": (
        "motoneurone.mat",
        "human motoneurone, 469 replicates of -250 to 250 ms around a magnetic stimulus (Boniface; boot, Unlimited)",
    ),
    "stn": (
        "stn.mat",
        "subthalamic neuron (Parkinson's patient), 50 trials of 2 s around a GO cue, left/right (Kramer & Eden; MIT)",
    ),
    "songbird": (
        "songbird.mat",
        "74 neurons of zebra finch HVC, one 22.2 s stretch of recurring sequences (Mackevicius et al. 2019; MIT)",
    ),
}


def data_directory() -> Path:
    """The ``data/`` folder: ``$SPIKEDICT_DATA`` if set, else ``data/`` at the top of the source tree."""
    override = os.environ.get("SPIKEDICT_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "data"


def list_datasets() -> dict[str, str]:
    """Names of the shipped data sets, with a one-line description each.

    Examples
    --------
    >>> sorted(list_datasets())
    ['locust', 'motoneurone', 'paper-binomial', 'songbird', 'stn']
    """
    return {name: description for name, (_, description) in DATASETS.items()}


def load_dataset(name: str) -> neo.Block:
    """Load a shipped data set by name, with no network access.

    Parameters
    ----------
    name : {"paper-binomial", "locust", "motoneurone", "stn", "songbird"}
        See ``data/README.md`` for each one's source, licence, citation and shape.

    Returns
    -------
    neo.Block
        Segments are trials, groups are units; ``block.annotations`` describe the data (``bin_size`` to use,
        source, licence, citation, and for simulated data the ground truth). Trials of the recordings are
        aligned to their event (``stimulus_time`` or ``go_cue_time`` at 0) and annotated with their ``trial``
        number and condition (``direction`` in ``"stn"``).

    Examples
    --------
    >>> block = load_dataset("locust")
    >>> len(block.segments), block.segments[0].annotations["cutoff_frequency"]
    (2, array(200.) * Hz)
    >>> stn = load_dataset("stn")
    >>> len(stn.segments), stn.segments[0].annotations["direction"], stn.segments[0].spiketrains[0].t_start
    (50, 'left', array(-1000.) * ms)
    >>> songbird = load_dataset("songbird")
    >>> len(songbird.groups), songbird.groups[0].name
    (74, 'neuron 1')
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; the shipped ones are {sorted(DATASETS)} (see list_datasets()).")
    path = data_directory() / DATASETS[name][0]
    if not path.exists():
        raise FileNotFoundError(
            f"the data set {name!r} is not at {str(path)!r}. The data ship in the data/ folder of the source tree: "
            "install spikedict from a checkout with `pip install -e .`, set SPIKEDICT_DATA to a folder holding "
            "the files, or regenerate them with `python data/make_datasets.py`."
        )
    return read_recording(path, format="mat")
