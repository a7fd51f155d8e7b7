"""Neo in, counts out: binning spike trains, reading and writing recordings, shipped data sets.

This package is the only part of spikedict that talks to neo and elephant (imported when first needed, so
``import spikedict.io`` is cheap).

Examples
--------
>>> import neo, quantities as pq
>>> from spikedict.io import bin_spiketrains
>>> trains = [neo.SpikeTrain([1.5, 7.2] * pq.ms, t_stop=10 * pq.ms),
...           neo.SpikeTrain([0.1] * pq.ms, t_stop=10 * pq.ms)]
>>> bin_spiketrains(trains, 2 * pq.ms)
SpikeCounts(n_examples=1, n_channels=2, n_bins=5, bin_size=2.0 ms, t_start=0.0 ms, n_trials=1)
"""

from spikedict.io._counts import SpikeCounts, bin_spiketrains
from spikedict.io._datasets import list_datasets, load_dataset
from spikedict.io._files import read_recording, write_recording
from spikedict.io._nwb import read_nwb
from spikedict.io._windows import RecordingWindows

__all__ = [
    "RecordingWindows",
    "SpikeCounts",
    "bin_spiketrains",
    "list_datasets",
    "load_dataset",
    "read_nwb",
    "read_recording",
    "write_recording",
]
