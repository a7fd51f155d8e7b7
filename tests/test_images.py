"""Photon-limited image denoising: noise model, PSNR, Anscombe inverse, whole-image denoising, shipped models."""

from __future__ import annotations

import json
import math
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spikedict.images import (
    TEST_IMAGES,
    TRAINING_IMAGES,
    DnCNN,
    ImageDCEA,
    anscombe,
    denoise,
    denoise_command,
    inverse_anscombe,
    load_denoiser,
    load_test_image,
    poisson_noise,
    psnr,
    sample_patches,
    save_denoiser,
    shipped_model_path,
)

ROOT = Path(__file__).resolve().parents[1]


def test_poisson_noise_mean_and_variance():
    # 200 x 200 pixels of one grey level 100 with max 200 at peak 4: Q = 50, rate 2 per pixel. With
    # n = 40,000 draws the sample mean has standard error sqrt(2 / n) = 0.007 and the sample variance
    # about sqrt(2 * 2^2 / n + 2 / n) = 0.016; tolerance 0.05 is over 3 standard errors for both.
    image = np.full((200, 200), 100.0)
    image[0, 0] = 200.0
    counts, scale = poisson_noise(image, peak=4, generator=123)
    assert scale == pytest.approx(50.0)
    assert counts.shape == image.shape
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    body = counts.ravel()[1:]
    assert body.mean() == pytest.approx(2.0, abs=0.05)
    assert body.var() == pytest.approx(2.0, abs=0.05)
    again, _ = poisson_noise(image, peak=4, generator=123)
    assert np.array_equal(counts, again)  # seeded


def test_psnr_hand_computation():
    clean = np.array([[0.0, 10.0], [20.0, 40.0]])
    estimate = clean + np.array([[1.0, -1.0], [2.0, 0.0]])
    # mse = (1 + 1 + 4 + 0) / 4 = 1.5, peak = 40: 10 log10(1600 / 1.5) = 30.280 dB
    assert psnr(estimate, clean) == pytest.approx(10 * math.log10(1600 / 1.5))
    assert psnr(estimate, clean) == pytest.approx(30.2803, abs=1e-4)
    assert psnr(clean, clean) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(estimate[:1], clean)


def test_inverse_anscombe_is_unbiased():
    # The exact unbiased inverse maps E[anscombe(y)] back to the rate, unlike the algebraic inverse.
    rng = np.random.default_rng(0)
    for rate in (1.0, 4.0, 20.0):
        expected = anscombe(rng.poisson(rate, size=400_000)).mean()
        assert inverse_anscombe(np.array(expected)) == pytest.approx(rate, rel=0.02)


@pytest.mark.parametrize(
    ("image", "peak", "message"),
    [
        (np.ones((2, 3, 4)), 4, "2-D grayscale"),
        (-np.ones((4, 4)), 4, "must be >= 0"),
        (np.ones((4, 4)), 0, "peak must be a positive number"),
        (np.ones((4, 4)), -1, "peak must be a positive number"),
        (np.zeros((4, 4)), 4, "all zeros"),
    ],
)
def test_poisson_noise_rejects_bad_input(image, peak, message):
    with pytest.raises(ValueError, match=message):
        poisson_noise(image, peak)


def test_test_images_and_patches():
    assert len(TEST_IMAGES) == 7 and "camera" not in TRAINING_IMAGES
    house = load_test_image("house")
    assert house.shape == (256, 256) and house.max() <= 255
    patches = sample_patches([house], n_patches=5, patch_size=16, generator=0)
    assert patches.shape == (5, 16, 16)
    with pytest.raises(ValueError, match="unknown test image"):
        load_test_image("lena")


@pytest.mark.parametrize("model", [None, "dcea-c", "dncnn"])
@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (8, 3)])
def test_denoise_preserves_shape_and_dtype(model, shape):
    counts = np.random.default_rng(0).poisson(1.5, size=shape).astype(np.float32)
    estimate = denoise(counts, peak=4, model=model, shifts=2)
    assert estimate.shape == shape and estimate.dtype == np.float32
    assert np.isfinite(estimate).all() and (estimate >= 0).all()
    assert denoise(counts.astype(np.int64), peak=4, model=model, shifts=2).dtype == np.float64


def test_denoise_rejects_bad_input():
    with pytest.raises(ValueError, match=r"2-D grayscale.*shape \(4,\)"):
        denoise(np.ones(4), peak=4)
    with pytest.raises(ValueError, match="must be >= 0"):
        denoise(-np.ones((4, 4)), peak=4)
    with pytest.raises(ValueError, match="peak must be a positive number"):
        denoise(np.ones((4, 4)), peak=0)


@pytest.mark.parametrize("kind", ["dcea-c", "dcea-uc"])
def test_shipped_models_improve_on_noisy_input(kind):
    # house at peak 4, one seeded draw, 9 of the 49 stride offsets (speed): a large margin over Q * y.
    clean = load_test_image("house")
    counts, scale = poisson_noise(clean, peak=4, generator=0)
    model = load_denoiser(shipped_model_path(kind, 4))
    assert isinstance(model, ImageDCEA) and model.tied == (kind == "dcea-c")
    noisy = psnr(scale * counts, clean)
    denoised = psnr(scale * denoise(counts, 4, model=model, shifts=9), clean)
    assert denoised > noisy + 8.0, (noisy, denoised)


def test_save_load_round_trip_and_corrupt_files(tmp_path):
    model = DnCNN(peak=2, depth=3, width=4)
    path = save_denoiser(model, tmp_path / "small")
    loaded = load_denoiser(path)
    x = torch.rand(1, 1, 9, 7)
    assert torch.equal(model(x), loaded(x))
    untied = ImageDCEA(peak=1, tied=False, n_templates=4, template_size=5, stride=3, n_iterations=2)
    loaded = load_denoiser(save_denoiser(untied, tmp_path / "uc"))
    assert torch.equal(loaded.thresholds, untied.thresholds) and not loaded.tied

    with pytest.raises(FileNotFoundError, match="no model file"):
        load_denoiser(tmp_path / "missing")
    (tmp_path / "small.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_denoiser(tmp_path / "small")
    shutil.copy(tmp_path / "uc.safetensors", tmp_path / "small.safetensors")  # weights of another model
    with pytest.raises(ValueError, match="another"):
        load_denoiser(tmp_path / "small")
    (tmp_path / "small.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a valid"):
        load_denoiser(tmp_path / "small")


def test_denoise_command(tmp_path, capsys):
    from PIL import Image

    counts = np.random.default_rng(1).poisson(2.0, size=(21, 30)).astype(np.uint8)
    source = tmp_path / "counts.png"
    Image.fromarray(counts).save(source)
    assert denoise_command(source, 4, "dcea-c", tmp_path / "out.npy") == 0
    assert np.load(tmp_path / "out.npy").shape == (21, 30)
    assert denoise_command(source, 4, None, tmp_path / "out.png") == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (21, 30)
    assert "denoised counts.png (21 x 30, peak 4" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no image file"):
        denoise_command(tmp_path / "nope.png", 4, None, None)


def test_cli_denoise(tmp_path):
    from spikedict.cli import main

    np.save(tmp_path / "counts.npy", np.random.default_rng(2).poisson(1.0, size=(12, 17)).astype(float))
    assert main(["denoise", str(tmp_path / "counts.npy"), "--peak", "1", "--model", "dcea-c"]) == 0
    assert np.load(tmp_path / "counts_denoised.npy").shape == (12, 17)
    assert main(["denoise", str(tmp_path / "counts.npy"), "--peak", "-1"]) == 2


def test_tutorial_runs(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("SPIKEDICT_TUTORIAL_QUICK", "1")
    namespace = runpy.run_path(str(ROOT / "tutorials" / "image_denoising.py"), run_name="__main__")
    assert namespace["denoised_psnr"] > namespace["noisy_psnr"] + 5
    matplotlib.pyplot.close("all")


def test_training_pipeline_runs_on_a_few_patches():
    from spikedict.images import make_training_set, train_dcea, train_dncnn

    house = load_test_image("house")  # stands in for the training images (which need scikit-image)
    counts, rates = make_training_set(2, n_patches=4, patch_size=24, images=[house], seed=0)
    assert counts.shape == rates.shape == (4, 1, 24, 24)
    assert float(rates.max()) <= 2.0 + 1e-6
    model = ImageDCEA(2, tied=False, n_templates=4, template_size=5, stride=3, n_iterations=3)
    result = train_dcea(model, counts, rates, n_epochs=1, batch_size=2, progress=False)
    assert np.isfinite(result.history["train_loss"]).all()
    losses = train_dncnn(DnCNN(2, depth=3, width=4), counts, rates, n_epochs=1, batch_size=2)
    assert np.isfinite(losses).all()


def test_dct_templates_and_shift_average_of_a_constant():
    from spikedict.images._models import dct_templates, shift_average

    atoms = dct_templates(10, 5)
    assert atoms.shape == (10, 1, 5, 5)
    torch.testing.assert_close(atoms.flatten(1).norm(dim=1), torch.ones(10))
    assert torch.allclose(atoms[0], atoms[0, 0, 0, 0])  # the first atom is the constant
    model = ImageDCEA(1, n_templates=4, template_size=5, stride=3, n_iterations=2)
    estimate = shift_average(model, np.full((9, 14), 1.0))
    assert estimate.shape == (9, 14)
    np.testing.assert_allclose(estimate, estimate.mean(), rtol=1e-4)  # symmetric padding: no edge effects
