"""Photon-limited image denoising with the 2-D DCEA (DCEA-C and DCEA-UC), baselines and PSNR."""

from spikedict.images._baselines import anscombe_denoise, has_bm3d
from spikedict.images._data import (
    TEST_IMAGES,
    TRAINING_IMAGES,
    load_test_image,
    read_image,
    sample_patches,
    training_images,
)
from spikedict.images._denoise import SHIPPED_PEAKS, denoise, denoise_cli, denoise_command, shipped_model_path
from spikedict.images._models import (
    DnCNN,
    ImageDCEA,
    load_denoiser,
    n_parameters,
    predict_rate,
    save_denoiser,
    shift_average,
)
from spikedict.images._noise import anscombe, inverse_anscombe, mean_psnr, poisson_noise, psnr
from spikedict.images._training import make_training_set, train_dcea, train_dncnn

__all__ = [
    "SHIPPED_PEAKS",
    "TEST_IMAGES",
    "TRAINING_IMAGES",
    "DnCNN",
    "ImageDCEA",
    "anscombe",
    "anscombe_denoise",
    "denoise",
    "denoise_cli",
    "denoise_command",
    "has_bm3d",
    "inverse_anscombe",
    "load_denoiser",
    "load_test_image",
    "make_training_set",
    "mean_psnr",
    "n_parameters",
    "poisson_noise",
    "predict_rate",
    "psnr",
    "read_image",
    "sample_patches",
    "save_denoiser",
    "shift_average",
    "shipped_model_path",
    "train_dcea",
    "train_dncnn",
    "training_images",
]
