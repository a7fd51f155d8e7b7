"""spikedict: convolutional dictionary learning for spike counts (DCEA, ICML 2020)."""

from spikedict.estimator import NotFittedError, SpikeDictionary
from spikedict.families import Binomial, Family, Gaussian, Poisson, get_family
from spikedict.training import TrainingConfig

__all__ = [
    "Binomial",
    "Family",
    "Gaussian",
    "NotFittedError",
    "Poisson",
    "SpikeDictionary",
    "TrainingConfig",
    "get_family",
]
__version__ = "0.1.0"
