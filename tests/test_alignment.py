"""Alignment of learned templates to known ones over permutation, sign and shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from spikedict.analysis import Alignment, align_templates, template_error

LENGTH = 30
PAD = 6


def smooth_templates(n: int, n_channels: int = 1, seed: int = 0) -> np.ndarray:
    """Random smooth shapes of LENGTH - 2 * PAD bins, zero-padded to LENGTH, unit norm."""
    rng = np.random.default_rng(seed)
    core = gaussian_filter1d(rng.standard_normal((n, n_channels, LENGTH - 2 * PAD)), sigma=1.5, axis=-1)
    templates = np.zeros((n, n_channels, LENGTH))
    templates[..., PAD : LENGTH - PAD] = core
    return templates / np.linalg.norm(templates.reshape(n, -1), axis=1)[:, None, None]


def test_recovers_permutation_sign_and_lag():
    true = smooth_templates(4)
    permutation = [2, 0, 3, 1]  # learned[j] is a version of true[permutation[j]]
    signs = [1, -1, -1, 1]
    shifts = [3, -2, 0, -5]  # learned[j][t] = signs[j] * true[permutation[j]][t - shifts[j]]
    learned = np.stack([s * np.roll(true[p], d, axis=-1) for p, s, d in zip(permutation, signs, shifts)])
    alignment = align_templates(learned, true)
    assert isinstance(alignment, Alignment)
    table = alignment.table
    assert table["true_index"].tolist() == [0, 1, 2, 3]
    for _, row in table.iterrows():
        j = permutation.index(row["true_index"])
        assert row["learned_index"] == j
        assert row["sign"] == signs[j]
        assert row["lag"] == -shifts[j]
    np.testing.assert_allclose(alignment.errors, 0.0, atol=1e-6)
    np.testing.assert_allclose(table["correlation"], 1.0, atol=1e-12)
    np.testing.assert_allclose(alignment.aligned, true, atol=1e-12)
    assert alignment.unmatched == []
    assert alignment.mean_error == pytest.approx(0.0, abs=1e-6)


def test_identical_templates_error_zero_up_to_sign_and_shift():
    (h,) = smooth_templates(1, seed=1)
    assert template_error(h, h) == pytest.approx(0.0, abs=1e-6)
    assert template_error(-3.0 * h, h) == pytest.approx(0.0, abs=1e-6)  # scale and sign do not matter
    shifted = np.roll(h, 4, axis=-1)
    assert template_error(shifted, h, max_lag=None) == pytest.approx(0.0, abs=1e-6)
    assert template_error(shifted, h, max_lag=4) == pytest.approx(0.0, abs=1e-6)
    assert template_error(shifted, h, max_lag=0) > 0.1
    assert template_error(shifted, h, max_lag=3) > 0.01


def test_orthogonal_templates_error_one():
    a = np.zeros(LENGTH)
    b = np.zeros(LENGTH)
    a[:10] = 1.0
    b[10:20] = 1.0
    assert template_error(a, b, max_lag=0) == pytest.approx(1.0)
    assert template_error(a, b, max_lag=None) < 1.0  # a shift overlaps them
    eye = np.eye(3)[:, None, :]
    alignment = align_templates(eye[[1, 2, 0]], eye, max_lag=0)
    np.testing.assert_allclose(alignment.errors, 0.0, atol=1e-12)
    assert alignment.table["learned_index"].tolist() == [2, 0, 1]
    # Templates orthogonal to every learned one at zero lag: error 1 each.
    spikes = np.zeros((2, 1, 6))
    spikes[0, 0, 0] = spikes[1, 0, 1] = 1.0
    others = np.zeros((2, 1, 6))
    others[0, 0, 3] = others[1, 0, 4] = 1.0
    np.testing.assert_allclose(align_templates(others, spikes, max_lag=0).errors, 1.0)
    np.testing.assert_allclose(align_templates(others, spikes, max_lag=None).errors, 0.0, atol=1e-12)


def test_known_error_value():
    true = np.array([1.0, 0.0, 0.0])
    learned = np.array([1.0, 1.0, 0.0])  # <h, h_hat> = 1 / sqrt(2) after normalisation
    assert template_error(learned, true) == pytest.approx(np.sqrt(0.5))
    table = align_templates(learned[None, None, :], true[None, None, :], max_lag=0).table
    assert table["error"].iloc[0] == pytest.approx(np.sqrt(0.5))
    assert table["correlation"].iloc[0] == pytest.approx(np.sqrt(0.5))


def test_more_learned_than_true():
    true = smooth_templates(2, seed=2)
    decoys = smooth_templates(3, seed=3)
    learned = np.stack([decoys[0], true[1], decoys[1], -true[0], decoys[2]])
    alignment = align_templates(learned, true)
    assert alignment.table["learned_index"].tolist() == [3, 1]
    assert alignment.table["sign"].tolist() == [-1, 1]
    assert alignment.unmatched == [0, 2, 4]
    np.testing.assert_allclose(alignment.errors, 0.0, atol=1e-6)
    assert alignment.aligned.shape == true.shape


def test_multi_channel_templates():
    true = smooth_templates(3, n_channels=2, seed=4)
    learned = -np.roll(true[[1, 2, 0]], 2, axis=-1)
    alignment = align_templates(learned, true)
    assert alignment.table["learned_index"].tolist() == [2, 0, 1]
    assert alignment.table["lag"].tolist() == [-2, -2, -2]
    assert alignment.table["sign"].tolist() == [-1, -1, -1]
    np.testing.assert_allclose(alignment.errors, 0.0, atol=1e-6)
    np.testing.assert_allclose(alignment.aligned, true, atol=1e-12)
    # Channels are matched as a whole: swapping the channels of a template is not a perfect match.
    swapped = true[:, ::-1, :]
    assert np.all(align_templates(swapped, true).errors > 0.05)


def test_templates_of_different_lengths():
    true = smooth_templates(2, seed=5)
    learned = true[..., PAD - 2 : LENGTH - PAD + 2]  # shorter learned templates holding the whole shape
    alignment = align_templates(learned, true)
    np.testing.assert_allclose(alignment.errors, 0.0, atol=1e-6)
    np.testing.assert_allclose(alignment.aligned, true, atol=1e-12)


def test_accepts_two_dimensional_templates():
    true = smooth_templates(2, seed=6)
    alignment = align_templates(true[:, 0, :][::-1], true[:, 0, :])
    assert alignment.table["learned_index"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("learned", "true", "match"),
    [
        (np.zeros((2, 1, 3, 3)) + 1, np.ones((2, 1, 3)), r"learned must have shape .*got shape \(2, 1, 3, 3\)"),
        (np.ones(5), np.ones((1, 1, 5)), r"learned must have shape"),
        (np.array([[[1.0, np.nan, 0.0]]]), np.ones((1, 1, 3)), "learned contains NaN or inf"),
        (np.ones((1, 1, 3)), np.array([[[1.0, np.inf, 0.0]]]), "true contains NaN or inf"),
        (np.zeros((1, 1, 3)), np.ones((1, 1, 3)), "all-zero template"),
        (np.ones((1, 1, 3)), np.ones((2, 1, 3)), "need at least as many learned templates as true ones"),
        (np.ones((2, 2, 3)), np.ones((2, 1, 3)), "same number of channels, got 2 and 1"),
    ],
)
def test_align_errors(learned, true, match):
    with pytest.raises(ValueError, match=match):
        align_templates(learned, true)


def test_template_error_rejects_nan():
    with pytest.raises(ValueError, match="NaN or inf"):
        template_error(np.array([1.0, np.nan]), np.array([1.0, 0.0]))
