"""Test images shipped in ``data/images`` and the training images and patches (from scikit-image's bundled data)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spikedict.images._noise import check_image

__all__ = [
    "TEST_IMAGES",
    "TRAINING_IMAGES",
    "data_directory",
    "load_test_image",
    "read_image",
    "sample_patches",
    "training_images",
]

#: The seven test images of the DCEA paper's Poisson denoising experiment (8-bit grayscale).
TEST_IMAGES: tuple[str, ...] = ("boat", "bridge", "cameraman", "couple", "house", "man", "peppers256")

#: Natural images bundled inside the scikit-image wheel used for training; none is one of the test images
#: (scikit-image's ``camera`` is the cameraman and is deliberately left out).
TRAINING_IMAGES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "motorcycle_left",
)


def data_directory() -> Path:
    """The repository's ``data`` folder (test images in ``data/images``, models in ``data/models``)."""
    return Path(__file__).resolve().parents[2] / "data"


def read_image(path: str | Path) -> np.ndarray:
    """Read a grayscale image file as float64 without rescaling.

    PNG/TIFF/JPEG values are returned as stored (8-bit 0..255, 16-bit 0..65535); ``.npy`` files as saved.
    Colour images are converted to luminance (ITU-R 601-2, Pillow's ``"L"`` conversion).

    Returns
    -------
    ndarray of float64, shape (height, width)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}; check the path (PNG, TIFF, JPEG or .npy).")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ValueError(
                f"could not read {str(path)!r} as a NumPy array ({error}); save it with numpy.save."
            ) from None
        return check_image(array, name=f"the image in {path.name}", nonnegative=False)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            if handle.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                handle = handle.convert("L")
            array = np.asarray(handle)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"could not read {str(path)!r} as an image ({type(error).__name__}: {error}); pass a PNG, TIFF, "
            "JPEG or .npy file."
        ) from None
    return check_image(array, name=f"the image in {path.name}", nonnegative=False)


def load_test_image(name: str) -> np.ndarray:
    """One of the seven test images (:data:`TEST_IMAGES`), float64 in 0..255, shape (256, 256) or (512, 512).

    Examples
    --------
    >>> load_test_image("house").shape
    (256, 256)
    """
    if name not in TEST_IMAGES:
        raise ValueError(f"unknown test image {name!r}; valid names: {', '.join(TEST_IMAGES)}.")
    return read_image(data_directory() / "images" / f"{name}.png")


def training_images(names: Sequence[str] = TRAINING_IMAGES) -> list[np.ndarray]:
    """Grayscale training images in 0..255 from scikit-image's bundled data (needs the ``images`` extra).

    Returns
    -------
    list of ndarray of float64, each of shape (height, width)
    """
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError as error:
        raise ImportError(
            "training images come from scikit-image's bundled data; install the extra: pip install 'spikedict[images]'."
        ) from error
    images = []
    for name in names:
        if name in ("camera", "cameraman"):
            raise ValueError("the cameraman is a test image; it must not be used for training.")
        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
        if image.ndim == 3:
            image = rgb2gray(image[..., :3]) * 255.0
        images.append(np.asarray(image, dtype=np.float64))
    return images


def sample_patches(
    images: Sequence[np.ndarray],
    n_patches: int,
    patch_size: int,
    flips: bool = True,
    generator: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Random square patches from ``images`` (each image equally likely), with random flips and transposes.

    Parameters
    ----------
    images : sequence of arrays, each of shape (height, width) with height, width >= patch_size
    n_patches : int
    patch_size : int
    flips : bool
        Apply one of the 8 symmetries of the square (flips and 90-degree rotations) to each patch.
    generator : numpy.random.Generator or int or None

    Returns
    -------
    ndarray of float64, shape (n_patches, patch_size, patch_size)
    """
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    if n_patches < 1 or patch_size < 1:
        raise ValueError(f"n_patches and patch_size must be >= 1, got {n_patches} and {patch_size}.")
    for index, image in enumerate(images):
        if min(image.shape) < patch_size:
            raise ValueError(f"image {index} of shape {image.shape} is smaller than patch_size={patch_size}.")
    patches = np.empty((n_patches, patch_size, patch_size))
    for k in range(n_patches):
        image = images[rng.integers(len(images))]
        row = rng.integers(image.shape[0] - patch_size + 1)
        col = rng.integers(image.shape[1] - patch_size + 1)
        patch = image[row : row + patch_size, col : col + patch_size]
        if flips:
            patch = np.rot90(patch, k=int(rng.integers(4)))
            if rng.integers(2):
                patch = patch[:, ::-1]
        patches[k] = patch
    return patches
