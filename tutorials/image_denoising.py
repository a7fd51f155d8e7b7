# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Photon-limited images: denoising with the 2-D DCEA
#
# At low light a camera (or a two-photon microscope) counts few photons per pixel: the image is a Poisson
# draw whose mean is the clean image. At *peak* 4 the brightest pixel expects 4 photons. The DCEA paper
# denoises such images with a convolutional sparse code whose encoder unrolls ISTA on the Poisson
# likelihood (DCEA-C: one tied dictionary; DCEA-UC: untied weights, learned thresholds).
#
# spikedict ships one DCEA-C and one DCEA-UC per peak (1, 2, 4), trained on patches of scikit-image's
# natural images; `spikedict.images.denoise` uses them.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from spikedict.images import denoise, load_test_image, poisson_noise, psnr

torch.set_num_threads(1)
quick = os.environ.get("SPIKEDICT_TUTORIAL_QUICK") == "1"  # the test suite runs a smaller version
shifts = 4 if quick else None  # stride offsets averaged (all 49 by default)

# %% [markdown]
# ## A noisy observation
#
# `poisson_noise` scales the image so that its maximum expects `peak` photons: `Q = max(image) / peak`,
# `y ~ Poisson(image / Q)`. `Q * y` is the noisy image back on the 0..255 scale.

# %%
peak = 4
clean = load_test_image("house")
if quick:
    clean = clean[64:192, 64:192]
counts, scale = poisson_noise(clean, peak, generator=0)
noisy_psnr = psnr(scale * counts, clean)
print(f"{clean.shape[0]} x {clean.shape[1]} image, Q = {scale:.1f}, mean count {counts.mean():.2f}")
print(f"noisy input: {noisy_psnr:.2f} dB")

# %% [markdown]
# ## Denoise
#
# `denoise` takes the counts and returns the estimated mean counts (same shape); multiply by `Q` to
# compare with the clean image. PSNR uses the clean image's maximum as the peak, as in the paper.

# %%
estimates = {kind: denoise(counts, peak, model=kind, shifts=shifts) for kind in ("dcea-c", "dcea-uc")}
for kind, estimate in estimates.items():
    print(f"{kind}: {psnr(scale * estimate, clean):.2f} dB")
denoised_psnr = psnr(scale * estimates["dcea-uc"], clean)

# %% [markdown]
# ## Side by side

# %%
panels = {
    f"noisy (peak {peak}), {noisy_psnr:.1f} dB": scale * counts,
    **{f"{kind}, {psnr(scale * e, clean):.1f} dB": scale * e for kind, e in estimates.items()},
    "clean": clean,
}
figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
for ax, (title, image) in zip(axes, panels.items()):
    ax.imshow(np.clip(image, 0, 255), cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
figure.tight_layout()

# %% [markdown]
# The same from a shell: `spikedict denoise counts.png --peak 4 --out denoised.png` (the file holds photon
# counts; `--model dcea-c` picks the constrained network). `benchmarks/images.py` compares both networks
# with the Anscombe + BM3D baseline and a DnCNN-style CNN over the paper's seven test images.
