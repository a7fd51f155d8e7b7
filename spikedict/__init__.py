"""spikedict: convolutional dictionary learning for spike counts (DCEA, ICML 2020)."""

from spikedict.estimator import NotFittedError, SpikeDictionary
from spikedict.families import Binomial, Family, Gaussian, Poisson, get_family
from spikedict.settings import Encoder, TemplateConstraints
from spikedict.solvers import Alternating, Backprop
from spikedict.training import TrainingConfig

__all__ = [
    "Alternating",
    "Backprop",
    "Binomial",
    "Encoder",
    "Family",
    "Gaussian",
    "NotFittedError",
    "Poisson",
    "SpikeCounts",
    "SpikeDictionary",
    "TemplateConstraints",
    "TrainingConfig",
    "bin_spiketrains",
    "get_family",
    "list_datasets",
    "load_dataset",
    "read_recording",
    "simulate_spikes",
    "write_recording",
]
__version__ = "0.1.0"

# The data layer (spikedict.io) and the simulator are loaded on first use: importing neo and elephant is slow
# next to `import spikedict` itself.
_LAZY = {
    "SpikeCounts": "spikedict.io",
    "bin_spiketrains": "spikedict.io",
    "read_recording": "spikedict.io",
    "write_recording": "spikedict.io",
    "load_dataset": "spikedict.io",
    "list_datasets": "spikedict.io",
    "simulate_spikes": "spikedict.simulate",
    "io": None,
    "simulate": None,
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'spikedict' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name] or f"spikedict.{name}")
    return module if _LAZY[name] is None else getattr(module, name)
