"""The mathematics of the DCEA network in :mod:`spikedict.model`.

The convolution is checked against explicit loops and its adjoint, the step size against the explicit
operator matrix, the shrinkage against the definition of a proximal operator, the encoder against the
optimality (KKT) conditions of the l1-regularised NLL problem it solves, and the gradients against
finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from spikedict.families import Binomial, Family, Gaussian, Poisson
from spikedict.model import (
    DCEA,
    SPECTRAL_NORM_MIN_LENGTH,
    ConvolutionOperator,
    _fast_length,
    code_shape,
    correlate,
    decode,
    operator_norm_squared,
    proximal_gradient_step,
    shrink,
)

DTYPE = torch.float64


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


# ------------------------------------------------------------------------------ convolution
@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("template_size", [5, 50])
@pytest.mark.parametrize(("n_templates", "n_channels"), [(1, 1), (3, 4)])
def test_adjointness_1d(method, template_size, n_templates, n_channels):
    signal_shape = (123,)
    templates = randn((n_templates, n_channels, template_size), seed=0)
    operator = ConvolutionOperator(templates, signal_shape, method=method)
    assert operator.use_fft == (method == "fft")
    codes = randn((2, n_templates, *operator.code_shape), seed=1)
    signal = randn((2, n_channels, *signal_shape), seed=2)
    decoded = operator.decode(codes)
    correlated = operator.correlate(signal)
    assert decoded.shape == signal.shape and correlated.shape == codes.shape
    left, right = inner(decoded, signal), inner(codes, correlated)
    assert abs(left - right) <= 1e-12 * max(1.0, abs(left)) * 100, (left, right)


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("n_bins", [123, 2000])  # an FFT longer than the signal (125), and exactly as long
@pytest.mark.parametrize(("n_templates", "n_channels"), [(1, 1), (3, 1), (3, 4), (5, 2)])
def test_gram_is_correlate_of_decode(method, n_bins, n_templates, n_channels):
    """H^T H in the frequency domain equals the two operators in turn: no wrap-around, either branch."""
    templates = randn((n_templates, n_channels, 50), seed=40)
    operator = ConvolutionOperator(templates, (n_bins,), method=method)
    codes = randn((2, n_templates, *operator.code_shape), seed=41)
    expected = correlate(decode(codes, templates, signal_shape=(n_bins,)), templates)
    torch.testing.assert_close(operator.gram(codes), expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


class _GaussianWithoutNormalPath(Gaussian):
    linear_residual = False  # the generic step: decode, residual, correlate


@pytest.mark.parametrize("weighted", [False, True])
def test_gaussian_encoder_normal_path_equals_the_proximal_gradient_steps(weighted):
    """The identity-link encoder (data correlated once, then H^T H) computes the generic FISTA iterates."""
    model = DCEA(3, 2, 20, Gaussian(std=0.5), sparsity=0.3, n_iterations=25, generator=torch.Generator().manual_seed(4))
    model = model.double()
    with torch.no_grad():
        model.baseline.copy_(torch.tensor([0.2, -0.1], dtype=DTYPE))
    y = randn((3, 2, 150), seed=42)
    model.update_step_size((150,), y)
    thresholds = None
    if weighted:
        thresholds = 0.3 * torch.rand((3, 3, 131), generator=torch.Generator().manual_seed(43), dtype=DTYPE)
    with torch.no_grad():
        normal = model.encode(y, thresholds=thresholds)
        generic = model.encode(y, thresholds=thresholds, family=_GaussianWithoutNormalPath(std=0.5))
    assert (normal > 0).sum() >= 10
    torch.testing.assert_close(normal, generic, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 7, (3, 5)])
def test_adjointness_2d(stride):
    signal_shape = (30, 41)  # not divisible by the strides
    templates = randn((3, 2, 4, 6), seed=3)
    operator = ConvolutionOperator(templates, signal_shape, stride=stride)
    codes = randn((2, 3, *operator.code_shape), seed=4)
    signal = randn((2, 2, *signal_shape), seed=5)
    decoded = operator.decode(codes)
    assert decoded.shape == signal.shape
    left, right = inner(decoded, signal), inner(codes, operator.correlate(signal))
    assert abs(left - right) <= 1e-10 * max(1.0, abs(left)), (left, right)


def test_adjointness_1d_strided():
    templates = randn((2, 3, 9), seed=6)
    operator = ConvolutionOperator(templates, (101,), stride=4)
    codes = randn((2, 2, *operator.code_shape), seed=7)
    signal = randn((2, 3, 101), seed=8)
    left, right = inner(operator.decode(codes), signal), inner(codes, operator.correlate(signal))
    assert abs(left - right) <= 1e-10 * max(1.0, abs(left))


@pytest.mark.parametrize("template_size", [5, 8, 50])
def test_fft_and_direct_methods_agree(template_size):
    templates = randn((3, 2, template_size), seed=9)
    fft = ConvolutionOperator(templates, (157,), method="fft")
    direct = ConvolutionOperator(templates, (157,), method="direct")
    codes = randn((2, 3, *fft.code_shape), seed=10)
    signal = randn((2, 2, 157), seed=11)
    torch.testing.assert_close(fft.decode(codes), direct.decode(codes), rtol=0, atol=1e-11)
    torch.testing.assert_close(fft.correlate(signal), direct.correlate(signal), rtol=0, atol=1e-11)
    # 'auto' picks FFTs from 8 bins on, and the result is the same either way.
    assert ConvolutionOperator(templates, (157,)).use_fft == (template_size >= 8)


def test_decode_and_correlate_equal_explicit_loops_1d():
    n_examples, n_templates, n_channels, size, n_codes = 2, 3, 2, 4, 6
    templates = randn((n_templates, n_channels, size), seed=12)
    codes = randn((n_examples, n_templates, n_codes), seed=13)
    h, x = templates.numpy(), codes.numpy()
    n_bins = n_codes + size - 1
    expected = np.zeros((n_examples, n_channels, n_bins))
    for b in range(n_examples):
        for p in range(n_channels):
            for t in range(n_bins):
                for c in range(n_templates):
                    for k in range(size):
                        if 0 <= t - k < n_codes:
                            expected[b, p, t] += h[c, p, k] * x[b, c, t - k]
    for method in ("fft", "direct"):
        operator = ConvolutionOperator(templates, (n_bins,), method=method)
        np.testing.assert_allclose(operator.decode(codes).numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decode(codes, templates).numpy(), expected, rtol=0, atol=1e-12)
    # Cropped output: the first bins of the full convolution.
    np.testing.assert_allclose(decode(codes, templates, signal_shape=(7,)).numpy(), expected[..., :7], atol=1e-12)

    signal = randn((n_examples, n_channels, n_bins), seed=14)
    s = signal.numpy()
    expected_codes = np.zeros((n_examples, n_templates, n_codes))
    for b in range(n_examples):
        for c in range(n_templates):
            for j in range(n_codes):
                expected_codes[b, c, j] = sum(
                    h[c, p, k] * s[b, p, j + k] for p in range(n_channels) for k in range(size)
                )
    np.testing.assert_allclose(correlate(signal, templates).numpy(), expected_codes, rtol=0, atol=1e-12)


def test_decode_equals_explicit_loop_2d_strided():
    stride = (3, 2)
    templates = randn((2, 1, 3, 4), seed=15)
    signal_shape = (10, 11)
    n_codes = code_shape(signal_shape, (3, 4), stride)
    assert n_codes == (4, 5)
    codes = randn((1, 2, *n_codes), seed=16)
    h, x = templates.numpy(), codes.numpy()
    full = np.zeros((1, 1, (n_codes[0] - 1) * 3 + 3, (n_codes[1] - 1) * 2 + 4))
    for c in range(2):
        for m in range(n_codes[0]):
            for n in range(n_codes[1]):
                full[0, 0, m * 3 : m * 3 + 3, n * 2 : n * 2 + 4] += h[c, 0] * x[0, c, m, n]
    decoded = decode(codes, templates, stride=stride, signal_shape=signal_shape)
    np.testing.assert_allclose(decoded.numpy(), full[..., :10, :11], rtol=0, atol=1e-12)


def test_code_shape():
    assert code_shape((2000,), (50,)) == (1951,)
    assert code_shape((50,), (50,)) == (1,)
    # ceil((n - k) / s) + 1 positions, the last one covering the end of the signal.
    assert code_shape((64, 65), (11, 11), stride=7) == (9, 9)
    assert code_shape((64, 67), (11, 11), stride=7) == (9, 9)
    assert code_shape((64, 68), (11, 11), stride=7) == (9, 10)
    assert code_shape((101,), (9,), stride=4) == (24,)
    for n_bins in range(9, 40):
        (n,) = code_shape((n_bins,), (9,), stride=4)
        assert (n - 1) * 4 + 9 >= n_bins > (n - 2) * 4 + 9


def test_code_shape_rejects_templates_longer_than_the_signal():
    with pytest.raises(ValueError, match=r"template_size \(51,\) is longer than the signal \(50,\)"):
        code_shape((50,), (51,))
    with pytest.raises(ValueError, match="longer than the signal"):
        code_shape((20, 5), (11, 11))
    with pytest.raises(ValueError, match="longer than the signal"):
        ConvolutionOperator(torch.zeros(1, 1, 10), (9,))


# ---------------------------------------------------------------------------- operator norm
def explicit_matrix(templates: torch.Tensor, signal_shape, stride=1) -> np.ndarray:
    operator = ConvolutionOperator(templates, signal_shape, stride=stride)
    n_codes = templates.shape[0] * math.prod(operator.code_shape)
    columns = []
    for i in range(n_codes):
        unit = torch.zeros(n_codes, dtype=DTYPE)
        unit[i] = 1.0
        columns.append(operator.decode(unit.reshape(1, templates.shape[0], *operator.code_shape)).flatten())
    return torch.stack(columns, dim=1).numpy()


@pytest.mark.parametrize(
    ("templates_shape", "signal_shape", "stride"),
    [((2, 2, 5), (20,), 1), ((3, 1, 8), (30,), 1), ((2, 2, 4), (23,), 3), ((2, 1, 3, 3), (10, 11), 3)],
)
def test_operator_norm_squared_is_largest_eigenvalue(templates_shape, signal_shape, stride):
    templates = randn(templates_shape, seed=17)
    matrix = explicit_matrix(templates, signal_shape, stride)
    largest = float(np.linalg.eigvalsh(matrix.T @ matrix).max())
    estimate = operator_norm_squared(templates, signal_shape, stride)
    assert estimate <= largest * (1 + 1e-10)  # power iteration approaches from below
    assert estimate >= largest * (1 - 1e-3), (estimate, largest)
    # The matrix is the operator: its transpose is correlate.
    signal = randn((1, templates_shape[1], *signal_shape), seed=18)
    np.testing.assert_allclose(
        matrix.T @ signal.flatten().numpy(), correlate(signal, templates, stride).flatten().numpy(), atol=1e-12
    )


def test_operator_norm_squared_is_reproducible_and_scales_quadratically():
    templates = randn((2, 1, 8), seed=19)
    first = operator_norm_squared(templates, (40,))
    assert first == operator_norm_squared(templates, (40,))
    assert operator_norm_squared(3 * templates, (40,)) == pytest.approx(9 * first, rel=1e-10)
    assert operator_norm_squared(torch.zeros(2, 1, 8), (40,)) == 0.0


@pytest.mark.parametrize(
    ("templates_shape", "n_bins"), [((2, 2, 5), 20), ((3, 1, 8), 30), ((3, 1, 50), 400), ((2, 3, 6), 49)]
)
def test_spectral_operator_norm_bounds_the_largest_eigenvalue(templates_shape, n_bins):
    templates = randn(templates_shape, seed=25)
    matrix = explicit_matrix(templates, (n_bins,))
    largest = float(np.linalg.eigvalsh(matrix.T @ matrix).max())
    bound = operator_norm_squared(templates, (n_bins,), method="spectrum")
    assert bound >= largest * (1 - 1e-12)  # a corner of the circulant operator: never above its norm
    if n_bins >= SPECTRAL_NORM_MIN_LENGTH * templates_shape[-1]:
        assert bound <= largest * 1.01, (bound, largest)
        assert operator_norm_squared(templates, (n_bins,)) == bound  # what "auto" takes on long signals
    else:
        assert operator_norm_squared(templates, (n_bins,)) == operator_norm_squared(
            templates, (n_bins,), method="power"
        )


def test_spectral_operator_norm_rejects_what_it_cannot_bound():
    with pytest.raises(ValueError, match="1-D templates with stride 1"):
        operator_norm_squared(randn((2, 1, 3, 3), seed=26), (20, 20), method="spectrum")
    with pytest.raises(ValueError, match="1-D templates with stride 1"):
        operator_norm_squared(randn((2, 1, 4), seed=26), (40,), stride=2, method="spectrum")
    with pytest.raises(ValueError, match="method must be"):
        operator_norm_squared(randn((2, 1, 4), seed=26), (40,), method="eigen")


@pytest.mark.parametrize(("n_templates", "n_channels"), [(3, 1), (2, 3)])
def test_operators_in_their_workspace_equal_the_allocating_ones(n_templates, n_channels):
    templates = randn((n_templates, n_channels, 12), seed=27)
    operator = ConvolutionOperator(templates, (90,))
    codes = randn((4, n_templates, 79), seed=28)
    signal = randn((4, n_channels, 90), seed=29)
    pairs = [(operator.gram, codes), (operator.decode, codes), (operator.correlate, signal)]
    for method, values in pairs:
        expected = method(values)
        first = method(values, workspace=True)
        assert first.data_ptr() != expected.data_ptr()
        first = first.clone()
        second = method(-2 * values, workspace=True)  # the buffers are reused: the second call overwrites the first
        assert second.data_ptr() == method(values, workspace=True).data_ptr()
        torch.testing.assert_close(first, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(method(-2 * values, workspace=True), -2 * expected, rtol=1e-12, atol=1e-12)


ENCODER_FAMILIES = {
    "gaussian": (Gaussian(std=0.5), 0.05, lambda g: torch.randn((3, 2, 70), generator=g, dtype=DTYPE)),
    "binomial": (Binomial(n_trials=10), 0.05, lambda g: torch.randint(0, 11, (3, 2, 70), generator=g).to(DTYPE)),
    "poisson": (Poisson(), 0.5, lambda g: torch.poisson(torch.full((3, 2, 70), 2.0, dtype=DTYPE), generator=g)),
}


@pytest.mark.parametrize("key", ENCODER_FAMILIES)
@pytest.mark.parametrize("algorithm", ["ista", "fista"])
@pytest.mark.parametrize(
    ("nonnegative", "tied", "weighted"), [(True, True, False), (False, True, True), (True, False, False)]
)
def test_encoder_without_autograd_computes_the_autograd_iterates(key, algorithm, nonnegative, tied, weighted):
    """The no-grad loop (buffers reused in place) and the autograd loop run the same iterations."""
    family, sparsity, sample = ENCODER_FAMILIES[key]
    generator = torch.Generator().manual_seed(30)
    model = DCEA(
        3,
        2,
        10,
        family,
        sparsity=sparsity,
        n_iterations=40,
        algorithm=algorithm,
        nonnegative_codes=nonnegative,
        tied=tied,
        generator=generator,
    ).double()
    y = sample(generator)
    model.update_step_size((70,), y)
    warm_start = 0.1 * torch.rand((3, 3, 61), generator=generator, dtype=DTYPE)
    original = warm_start.clone()
    thresholds = sparsity * torch.rand((3, 3, 61), generator=generator, dtype=DTYPE) if weighted else None
    with_autograd = model.encode(y, codes=warm_start, thresholds=thresholds)
    assert with_autograd.requires_grad
    with torch.no_grad():
        without = model.encode(y, codes=warm_start, thresholds=thresholds)
    torch.testing.assert_close(without, with_autograd.detach(), rtol=1e-10, atol=1e-12)
    assert torch.equal(warm_start, original)  # the warm start is not written into
    # a tensor of its own, not a view into the encoder's (zero-padded) working buffers
    assert without.is_contiguous() and without.untyped_storage().nbytes() == without.numel() * without.element_size()
    assert (without != 0).sum() >= 20 and (without == 0).sum() >= 20  # shrinkage both kept and zeroed codes


@pytest.mark.parametrize(
    ("template_shape", "signal_shape", "stride", "family", "data_dtype"),
    [
        (5, (70,), 1, Binomial(n_trials=10), torch.float32),  # shorter than 8 bins: direct convolutions
        ((5, 5), (24, 26), 2, Poisson(residual_bound=2.0), torch.float32),  # 2-D, strided (the image models)
        (10, (70,), 1, Poisson(), torch.float64),  # FFTs: float32 weights, float64 data
    ],
    ids=["1d-direct", "2d-strided", "1d-fft-mixed-precision"],
)
def test_encoder_without_autograd_on_direct_convolutions_and_mixed_precision(
    template_shape, signal_shape, stride, family, data_dtype
):
    """Untied and two-sided: direct convolutions (1-D short, 2-D strided), and FFTs on data of wider precision."""
    generator = torch.Generator().manual_seed(31)
    model = DCEA(
        3,
        2,
        template_shape,
        family,
        sparsity=0.3,
        n_iterations=30,
        nonnegative_codes=False,
        tied=False,
        stride=stride,
        generator=generator,
    )
    y = torch.poisson(torch.full((2, 2, *signal_shape), 3.0), generator=generator).clamp(max=10).to(data_dtype)
    model.update_step_size(signal_shape, y)
    with_autograd = model.encode(y)
    with torch.no_grad():
        without = model.encode(y)
    assert without.dtype == torch.promote_types(data_dtype, torch.float32)
    torch.testing.assert_close(without, with_autograd.detach(), rtol=1e-5, atol=1e-6)
    assert (without != 0).sum() >= 20 and (without == 0).sum() >= 20


# ------------------------------------------------------------------------------- shrinkage
def test_shrink_closed_forms():
    values = randn((1000,), seed=20) * 3
    threshold = 0.7
    torch.testing.assert_close(shrink(values, threshold, nonnegative=True), torch.relu(values - threshold))
    soft = torch.where(
        values > threshold, values - threshold, torch.where(values < -threshold, values + threshold, 0.0)
    )
    torch.testing.assert_close(shrink(values, threshold, nonnegative=False), soft)
    # Per-entry thresholds broadcast.
    thresholds = torch.tensor([0.1, 1.0], dtype=DTYPE).reshape(2, 1)
    pair = values[:10].reshape(1, 10).expand(2, 10)
    torch.testing.assert_close(shrink(pair, thresholds, nonnegative=True), torch.relu(pair - thresholds))


def test_shrink_formulas_agree_where_thresholds_are_nonnegative_and_follow_the_sign_form_elsewhere():
    values = randn((6, 50), seed=22) * 2
    thresholds = torch.rand((6, 50), generator=torch.Generator().manual_seed(23), dtype=DTYPE)
    sign_form = torch.sign(values) * torch.relu(values.abs() - thresholds)
    fast = shrink(values, thresholds, nonnegative=False, nonnegative_threshold=True)
    torch.testing.assert_close(fast, sign_form, atol=0, rtol=0)
    torch.testing.assert_close(shrink(values, thresholds, nonnegative=False), sign_form, atol=0, rtol=0)
    # A negative threshold (a learned one may turn negative): the sign form, whatever the formula's default.
    negative = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=DTYPE)
    expected = torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0], dtype=DTYPE)
    torch.testing.assert_close(shrink(negative, -1.0, nonnegative=False), expected)
    torch.testing.assert_close(shrink(negative, torch.tensor(-1.0, dtype=DTYPE), nonnegative=False), expected)


def test_untied_encoder_with_negative_thresholds_is_the_same_with_and_without_autograd():
    generator = torch.Generator().manual_seed(24)
    model = DCEA(2, 1, 9, Poisson(), tied=False, nonnegative_codes=False, generator=generator).double()
    with torch.no_grad():
        model.thresholds.fill_(-0.05)
    y = torch.poisson(torch.full((2, 1, 60), 2.0, dtype=DTYPE), generator=generator)
    model.update_step_size((60,), y)
    with_grad = model.encode(y)
    truncated = model.encode(y, n_backprop_iterations=1)
    with torch.no_grad():
        without = model.encode(y)
    torch.testing.assert_close(with_grad.detach(), without, atol=0, rtol=0)
    torch.testing.assert_close(truncated.detach(), without, atol=0, rtol=0)


@pytest.mark.parametrize("nonnegative", [True, False])
def test_shrink_is_the_proximal_operator_of_the_l1_norm(nonnegative):
    threshold = 0.8
    values = torch.cat([randn((40,), seed=21) * 2, torch.tensor([0.0, 0.8, -0.8, 0.81, -0.79], dtype=DTYPE)])
    grid = torch.linspace(-6.0, 6.0, 120_001, dtype=DTYPE)  # spacing 1e-4
    if nonnegative:
        grid = grid[grid >= 0]
    objective = 0.5 * (grid[None, :] - values[:, None]) ** 2 + threshold * grid.abs()[None, :]
    best = objective.min(dim=1)
    shrunk = shrink(values, threshold, nonnegative)
    at_shrunk = 0.5 * (shrunk - values) ** 2 + threshold * shrunk.abs()
    if nonnegative:
        assert (shrunk >= 0).all()
    # The prox value is no worse than the best grid point, and the minimiser is within one grid step.
    assert (at_shrunk <= best.values + 1e-12).all()
    assert (shrunk - grid[best.indices]).abs().max() <= 1e-4


# --------------------------------------------------------------------- encoder optimality (KKT)
def make_model(
    family: Family,
    sparsity: float,
    n_iterations: int,
    algorithm: str,
    nonnegative_codes: bool,
    baseline: float,
    **kwargs,
) -> DCEA:
    model = DCEA(
        n_templates=2,
        n_channels=1,
        template_shape=8,
        family=family,
        sparsity=sparsity,
        n_iterations=n_iterations,
        algorithm=algorithm,
        nonnegative_codes=nonnegative_codes,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).double()
    t = torch.arange(8, dtype=DTYPE)
    with torch.no_grad():
        model.templates[0, 0] = torch.sin(math.pi * (t + 0.5) / 8)
        model.templates[1, 0] = torch.linspace(-1.0, 1.0, 8, dtype=DTYPE)
        model.project_templates_()
        model.baseline.fill_(baseline)
    return model


# family key -> (family, sparsity, baseline, code amplitude)
KKT_CASES = {
    "gaussian": (Gaussian(), 0.5, 0.0, 2.0),
    "binomial": (Binomial(n_trials=10), 0.1, -1.0, 2.0),
    "binomial-per-example": (Binomial(n_trials=np.array([10, 4])), 0.1, -1.0, 2.0),
    "poisson": (Poisson(), 0.5, 1.0, 1.0),
}
N_BINS = 60


def simulate(model: DCEA, family: Family, amplitude: float, nonnegative: bool) -> torch.Tensor:
    codes = torch.zeros((2, 2, N_BINS - 7), dtype=DTYPE)
    codes[:, 0, 5] = amplitude
    codes[:, 1, 20] = amplitude
    codes[:, 0, 40] = 0.7 * amplitude
    codes[:, 1, 30] = -amplitude
    if nonnegative:
        codes.clamp_(min=0)
    with torch.no_grad():
        eta = model.decode(codes, (N_BINS,))
    generator = torch.Generator().manual_seed(1)
    if isinstance(family, Gaussian):
        return eta + 0.3 * torch.randn(eta.shape, generator=generator, dtype=DTYPE)
    return family.sample(eta, generator=generator)


def scaled_objective(model: DCEA, family: Family, y: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """NLL(y | decode(codes) + baseline) / residual_scale + sparsity * ||codes||_1, per example."""
    eta = model.decode(codes, y.shape[2:])
    nll = family.negative_log_likelihood(y, eta).flatten(1).sum(1) / family.residual_scale
    return nll + model.sparsity * codes.abs().flatten(1).sum(1)


KKT_PARAMETERS = [
    (key, algorithm, nonnegative)
    for key in ("gaussian", "binomial", "poisson")
    for algorithm in ("ista", "fista")
    for nonnegative in (True, False)
] + [("binomial-per-example", "fista", True)]


@pytest.mark.parametrize(("key", "algorithm", "nonnegative"), KKT_PARAMETERS)
def test_encoder_converges_to_the_kkt_point(key, algorithm, nonnegative):
    family, sparsity, baseline, amplitude = KKT_CASES[key]
    # Plain ISTA on the Poisson problem is slow where the rates are small (flat directions).
    n_iterations = 4000 if (key, algorithm) == ("poisson", "ista") else 2000
    model = make_model(family, sparsity, n_iterations, algorithm, nonnegative, baseline)
    y = simulate(model, family, amplitude, nonnegative)
    family.validate(y, name="y")
    step = model.update_step_size((N_BINS,), y)
    assert step == pytest.approx(
        1 / (1.05 * family.curvature_bound(y) * operator_norm_squared(model.templates.detach(), (N_BINS,)))
    )
    with torch.no_grad():
        codes = model.encode(y)
        eta = model.decode(codes, (N_BINS,))
        # Negative gradient of the scaled NLL in the codes.
        gradient = correlate(family.residual(y, eta), model.templates)

    positive, negative, zero = codes > 0, codes < 0, codes == 0
    tolerance = 1e-3 * sparsity
    # A solution with both active and inactive codes (else the test says little).
    assert positive.sum() >= 5 and zero.sum() >= 50
    assert (gradient[positive] - sparsity).abs().max() <= tolerance
    if nonnegative:
        assert not negative.any()
        assert gradient[zero].max() <= sparsity + tolerance
    else:
        assert negative.sum() >= 5
        assert (gradient[negative] + sparsity).abs().max() <= tolerance
        assert gradient[zero].abs().max() <= sparsity + tolerance
    # The bound is attained nowhere far from the active set: the inactive gradients are strictly inside.
    assert gradient[zero].min() < sparsity - 10 * tolerance

    # The encoder's fixed point is a proximal-gradient fixed point.
    with torch.no_grad():
        again = model.encode(y, codes=codes, n_iterations=1)
    torch.testing.assert_close(again, codes, rtol=0, atol=1e-4 * step)

    if algorithm == "fista":
        # The objective at the solution is no larger than at nearby feasible codes.
        with torch.no_grad():
            best = scaled_objective(model, family, y, codes)
            generator = torch.Generator().manual_seed(2)
            for scale in (1e-2, 1e-3, 1e-4):
                for _ in range(20):
                    perturbed = codes + scale * torch.randn(codes.shape, generator=generator, dtype=DTYPE)
                    if nonnegative:
                        perturbed = perturbed.clamp(min=0)
                    assert (scaled_objective(model, family, y, perturbed) >= best - 1e-12).all()


def test_fft_lengths_are_the_cheapest_even_smooth_sizes():
    """``_fast_length(n)``: the even 2^a 3^b 5^c >= n of least ``size * cost``, with sizes holding a factor 5
    costing 1.15 per point (odd smooth sizes such as 2025 are ~3x slower, and 2000 slower than 2048)."""

    def smooth(size):
        for prime in (2, 3, 5):
            while size % prime == 0:
                size //= prime
        return size == 1

    for n in range(1, 3000):
        ceiling = max(2, 1 << (n - 1).bit_length())  # a power of two: no size above it costs less
        candidates = [size for size in range(max(n, 2), ceiling + 1) if size % 2 == 0 and smooth(size)]
        expected = min(candidates, key=lambda size: (size * (1.15 if size % 5 == 0 else 1.0), size))
        assert _fast_length(n) == expected, n
    assert [_fast_length(n) for n in (1000, 1500, 2000, 2500, 3000, 6000)] == [1024, 1536, 2048, 2592, 3072, 6144]


def test_proximal_gradient_step_is_one_ista_step():
    family = Binomial(n_trials=5)
    templates = randn((2, 1, 8), seed=22)
    y = family.sample(randn((2, 1, 40), seed=23), generator=torch.Generator().manual_seed(24))
    codes = torch.relu(randn((2, 2, 33), seed=25))
    baseline = torch.tensor(-0.5, dtype=DTYPE)
    operator = ConvolutionOperator(templates, (40,))
    step, threshold = 0.3, 0.2
    result = proximal_gradient_step(codes, y, family, baseline, operator, operator, step, threshold, True)
    # By hand: a gradient step on NLL / M, then the prox of step * threshold * ||.||_1 + indicator(x >= 0).
    codes_ = codes.clone().requires_grad_(True)
    eta = decode(codes_, templates, signal_shape=(40,)) + baseline
    (gradient,) = torch.autograd.grad(family.negative_log_likelihood(y, eta).sum() / 5, codes_)
    expected = torch.relu(codes - step * gradient - step * threshold)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["ista", "fista"])
def test_encoder_iterations_follow_the_algorithm(algorithm):
    """ISTA repeats the proximal-gradient step; FISTA adds Beck-Teboulle momentum (t_1 = 1)."""
    family = Poisson()
    model = make_model(family, 0.2, 6, algorithm, True, 0.5)
    y = simulate(model, family, 1.0, True)
    model.update_step_size((N_BINS,), y)
    operator = ConvolutionOperator(model.templates.detach(), (N_BINS,))
    baseline = model.baseline.detach().reshape(1, -1, 1)
    step = float(model.step_size)
    codes = torch.zeros((2, 2, N_BINS - 7), dtype=DTYPE)
    momentum, t = codes, 1.0
    for _ in range(6):
        new = proximal_gradient_step(momentum, y, family, baseline, operator, operator, step, 0.2, True)
        if algorithm == "fista":
            t_next = (1 + math.sqrt(1 + 4 * t**2)) / 2
            momentum = new + (t - 1) / t_next * (new - codes)
            t = t_next
        else:
            momentum = new
        codes = new
    with torch.no_grad():
        encoded = model.encode(y)
    torch.testing.assert_close(encoded, codes, rtol=1e-12, atol=1e-12)
    # A warm start continues from the given codes: 2 + 4 ISTA iterations are 6 (FISTA restarts its momentum).
    if algorithm == "ista":
        with torch.no_grad():
            resumed = model.encode(y, codes=model.encode(y, n_iterations=2), n_iterations=4)
        torch.testing.assert_close(resumed, codes, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- gradients
def gradient_model(family: Family, algorithm: str) -> tuple[DCEA, torch.Tensor]:
    model = DCEA(
        2, 2, 8, family, sparsity=0.05, n_iterations=5, algorithm=algorithm, generator=torch.Generator().manual_seed(3)
    ).double()
    with torch.no_grad():
        model.baseline.copy_(torch.tensor([0.3, -0.2], dtype=DTYPE))
    eta = randn((2, 2, 30), seed=26)
    y = family.sample(eta, generator=torch.Generator().manual_seed(27))
    model.update_step_size((30,), y)
    return model, y


@pytest.mark.parametrize(
    ("family", "algorithm"),
    [(Gaussian(), "fista"), (Binomial(n_trials=4), "ista"), (Poisson(), "fista")],
)
def test_encoder_gradcheck(family, algorithm):
    model, y = gradient_model(family, algorithm)
    templates = model.templates.detach().clone().requires_grad_(True)
    baseline = model.baseline.detach().clone().requires_grad_(True)

    def forward(templates, baseline):
        # DCEA.forward: encode (back-propagating through every iteration by default), then decode.
        return functional_call(model, {"templates": templates, "baseline": baseline}, (y,))

    _, codes = forward(templates, baseline)
    # Nonzero codes: the gradient passes through the shrinkage, not only through the baseline.
    assert (codes > 0).sum() >= 10
    assert codes.requires_grad
    assert torch.autograd.gradcheck(forward, (templates, baseline), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_loss_gradient_matches_central_finite_differences():
    family = Poisson()
    model, y = gradient_model(family, "fista")
    model.n_iterations = 20
    direction = {name: randn(p.shape, seed=28 + i) for i, (name, p) in enumerate(model.named_parameters())}

    def loss() -> torch.Tensor:
        eta, _ = model(y)
        return family.negative_log_likelihood(y, eta).mean()

    model.zero_grad()
    loss().backward()
    analytic = sum(inner(p.grad, direction[name]) for name, p in model.named_parameters())
    h = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(sign * h * direction[name])
            values.append(float(loss()))
            for name, p in model.named_parameters():
                p.sub_(sign * h * direction[name])
    numeric = (values[0] - values[1]) / (2 * h)
    # Central differences: O(h^2) truncation plus O(eps / h) rounding, ~1e-9 here.
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)
    assert abs(analytic) > 1e-3


# ----------------------------------------------------------------- truncated back-propagation
def loss_and_gradients(model: DCEA, family: Family, y: torch.Tensor, codes: torch.Tensor):
    eta = model.decode(codes, y.shape[2:])
    loss = family.negative_log_likelihood(y, eta).sum()
    return torch.autograd.grad(loss, (model.templates, model.baseline))


@pytest.mark.parametrize("algorithm", ["ista", "fista"])
def test_truncated_backpropagation_keeps_the_forward_pass(algorithm):
    family = Binomial(n_trials=4)
    model, y = gradient_model(family, algorithm)
    full = model.encode(y, n_iterations=12, n_backprop_iterations=12)
    truncated = model.encode(y, n_iterations=12, n_backprop_iterations=3)
    with torch.no_grad():
        plain = model.encode(y, n_iterations=12)
    torch.testing.assert_close(truncated, full, rtol=0, atol=1e-14)
    torch.testing.assert_close(plain, full, rtol=0, atol=1e-14)
    gradients_full = loss_and_gradients(model, family, y, full)
    gradients_truncated = loss_and_gradients(model, family, y, truncated)
    for a, b in zip(gradients_full, gradients_truncated):
        assert not torch.allclose(a, b, rtol=1e-3, atol=0)
    # More iterations than there are: the same as the full gradient.
    longer = model.encode(y, n_iterations=12, n_backprop_iterations=50)
    for a, b in zip(loss_and_gradients(model, family, y, longer), gradients_full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["ista", "fista"])
def test_default_encode_backpropagates_through_every_iteration(algorithm):
    family = Binomial(n_trials=4)
    model, y = gradient_model(family, algorithm)
    full = model.encode(y, n_backprop_iterations=model.n_iterations)
    default = model.encode(y)
    assert default.requires_grad
    for a, b in zip(loss_and_gradients(model, family, y, default), loss_and_gradients(model, family, y, full)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# Gaussian: the identity-link path, whose H^T H weights are derived from the templates once per operator
@pytest.mark.parametrize("family", [Binomial(n_trials=4), Gaussian()], ids=["binomial", "gaussian"])
def test_truncated_backpropagation_equals_detached_warm_start(family):
    model, y = gradient_model(family, "ista")
    n, k = 12, 3
    truncated = model.encode(y, n_iterations=n, n_backprop_iterations=k)
    with torch.no_grad():
        warm = model.encode(y, n_iterations=n - k)
    assert not warm.requires_grad
    restarted = model.encode(y, codes=warm, n_iterations=k, n_backprop_iterations=k)
    torch.testing.assert_close(restarted, truncated, rtol=0, atol=1e-14)
    for a, b in zip(loss_and_gradients(model, family, y, truncated), loss_and_gradients(model, family, y, restarted)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ untied model
def test_untied_model_starts_as_the_tied_one_and_learns_all_weights():
    family = Poisson()
    kwargs = dict(sparsity=0.1, n_iterations=15, generator=torch.Generator().manual_seed(4))
    tied = DCEA(3, 2, 8, family, **kwargs).double()
    kwargs["generator"] = torch.Generator().manual_seed(4)
    untied = DCEA(3, 2, 8, family, tied=False, **kwargs).double()
    for name in ("encoder_templates", "decoder_templates", "thresholds"):
        assert isinstance(getattr(untied, name), torch.nn.Parameter)
        assert getattr(tied, name) is None
    torch.testing.assert_close(untied.encoder_templates, untied.templates, rtol=0, atol=0)
    torch.testing.assert_close(untied.decoder_templates, untied.templates, rtol=0, atol=0)
    # thresholds are created in the default dtype (float32) before .double(): 0.1 to float32 precision.
    torch.testing.assert_close(untied.thresholds, torch.full((3,), 0.1, dtype=DTYPE), rtol=1e-7, atol=0)

    y = family.sample(randn((2, 2, 40), seed=30) * 0.5, generator=torch.Generator().manual_seed(31))
    for model in (tied, untied):
        model.update_step_size((40,), y)
    with torch.no_grad():
        eta_tied, codes_tied = tied(y)
        eta_untied, codes_untied = untied(y)
    torch.testing.assert_close(codes_untied, codes_tied, rtol=0, atol=1e-7)
    torch.testing.assert_close(eta_untied, eta_tied, rtol=0, atol=1e-7)
    assert (codes_untied > 0).sum() >= 5
    # Thresholds of exactly the sparsity give exactly the tied codes.
    with torch.no_grad():
        untied.thresholds.fill_(0.1)
        torch.testing.assert_close(untied.encode(y), codes_tied, rtol=0, atol=1e-13)

    # Every weight of the untied network receives a gradient from the loss of the full run.
    codes = untied.encode(y, n_backprop_iterations=untied.n_iterations)
    family.negative_log_likelihood(y, untied.decode(codes, (40,))).sum().backward()
    for name in ("templates", "encoder_templates", "decoder_templates", "thresholds", "baseline"):
        gradient = getattr(untied, name).grad
        assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0, name
    # The gradient in the thresholds against central differences (the shrinkage is away from its kinks).
    direction = torch.tensor([1.0, -0.5, 0.25], dtype=DTYPE)
    analytic = inner(untied.thresholds.grad, direction)
    h = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            untied.thresholds.add_(sign * h * direction)
            eta = untied.decode(untied.encode(y), (40,))
            values.append(float(family.negative_log_likelihood(y, eta).sum()))
            untied.thresholds.sub_(sign * h * direction)
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5, abs=1e-8)


def test_untied_forward_trains_encoder_weights_and_thresholds():
    family = Poisson()
    model = DCEA(3, 2, 8, family, sparsity=0.1, n_iterations=15, tied=False, generator=torch.Generator().manual_seed(4))
    model = model.double()
    y = family.sample(randn((2, 2, 40), seed=30) * 0.5, generator=torch.Generator().manual_seed(31))
    model.update_step_size((40,), y)
    eta, _ = model(y)
    family.negative_log_likelihood(y, eta).sum().backward()
    for name in ("encoder_templates", "thresholds"):
        gradient = getattr(model, name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name


# --------------------------------------------------------------------- template projection
def test_project_templates_unit_norm_nonnegative_zero_edges():
    model = DCEA(4, 2, 10, Gaussian(), nonnegative_templates=True, zero_edges=2).double()
    raw = randn((4, 2, 10), seed=32) * 5
    with torch.no_grad():
        model.templates.copy_(raw)
    model.project_templates_()
    templates = model.templates.detach()
    torch.testing.assert_close(templates.flatten(1).norm(dim=1), torch.ones(4, dtype=DTYPE))
    assert (templates >= 0).all()
    assert (templates[..., :2] == 0).all() and (templates[..., -2:] == 0).all()
    # Exactly: clip the negative entries, zero the edges, normalise; the interior is left free.
    expected = raw.clamp(min=0)
    expected[..., :2] = 0
    expected[..., -2:] = 0
    expected = expected / expected.flatten(1).norm(dim=1).reshape(4, 1, 1)
    torch.testing.assert_close(templates, expected, rtol=1e-14, atol=1e-15)
    assert (templates[..., 2:-2] > 0).any(dim=-1).all()
    # A projection: applying it again changes nothing.
    model.project_templates_()
    torch.testing.assert_close(model.templates.detach(), templates, rtol=0, atol=1e-15)

    # Without constraints: only the norm changes, the direction is kept.
    free = DCEA(2, 1, 6, Gaussian()).double()
    raw = randn((2, 1, 6), seed=33) * 3
    with torch.no_grad():
        free.templates.copy_(raw)
    free.project_templates_()
    torch.testing.assert_close(free.templates.detach(), raw / raw.flatten(1).norm(dim=1).reshape(2, 1, 1))
    assert (free.templates < 0).any()


@pytest.mark.parametrize("tied", [True, False])
def test_penalty_is_smoothness_times_squared_differences(tied):
    model = DCEA(3, 2, 7, Gaussian(), smoothness=0.3, tied=tied, generator=torch.Generator().manual_seed(5)).double()
    weights = (model.templates if tied else model.decoder_templates).detach().numpy()
    expected = 0.3 * sum(
        (weights[i, c, k + 1] - weights[i, c, k]) ** 2 for i in range(3) for c in range(2) for k in range(6)
    )
    assert float(model.penalty().detach()) == pytest.approx(expected, rel=1e-12)
    model.penalty().backward()
    assert model.templates.grad is not None if tied else model.decoder_templates.grad is not None
    assert float(DCEA(3, 2, 7, Gaussian()).penalty()) == 0.0

    image = DCEA(2, 1, (3, 4), Gaussian(), smoothness=2.0, generator=torch.Generator().manual_seed(6)).double()
    w = image.templates.detach()
    expected = 2.0 * (
        float((w[..., 1:, :] - w[..., :-1, :]).pow(2).sum()) + float((w[..., 1:] - w[..., :-1]).pow(2).sum())
    )
    assert float(image.penalty().detach()) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- poisson path
@pytest.mark.parametrize("family", [Poisson(), Poisson(residual_bound=1.0)], ids=["exact", "residual-bound"])
@pytest.mark.parametrize("nonnegative", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_encoder_is_finite_on_large_counts(family, nonnegative, dtype):
    model = DCEA(
        3,
        2,
        10,
        family,
        sparsity=0.1,
        n_iterations=100,
        nonnegative_codes=nonnegative,
        generator=torch.Generator().manual_seed(7),
    ).to(dtype)
    rates = 500.0 * torch.rand((2, 2, 80), generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 50.0
    y = torch.poisson(rates, generator=torch.Generator().manual_seed(9)).to(dtype)
    family.validate(y)
    model.update_step_size((80,), y)
    eta, codes = model(y)
    assert torch.isfinite(codes).all() and torch.isfinite(eta).all()
    assert codes.abs().sum() > 0
    loss = family.negative_log_likelihood(y, eta).mean()
    loss.backward()
    assert torch.isfinite(model.templates.grad).all() and torch.isfinite(model.baseline.grad).all()


def test_poisson_residual_bound_saturates_negative_residuals():
    family = Poisson(residual_bound=1.0)
    y = torch.tensor([0.0, 3.0, 10.0], dtype=DTYPE)
    eta = torch.log(torch.tensor([100.0, 3.0, 1.0], dtype=DTYPE))
    residual = family.residual(y, eta)
    torch.testing.assert_close(residual, torch.tensor([math.expm1(-100.0), 0.0, 9.0], dtype=DTYPE))
    assert (residual >= -1.0).all()


# ------------------------------------------------------------------------ constructor errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_templates=0), r"n_templates, n_channels and template sizes must be >= 1, got n_templates=0"),
        (dict(n_channels=0), "n_channels=0"),
        (dict(template_shape=0), "template sizes must be >= 1"),
        (dict(algorithm="adam"), r"algorithm must be 'ista' or 'fista', got 'adam'"),
        (dict(zero_edges=4), r"zero_edges=4 leaves no free sample in templates of size 8; use zero_edges < 4"),
        (dict(zero_edges=1, template_shape=(3, 3)), "zero_edges applies to 1-D templates only"),
    ],
)
def test_constructor_errors(kwargs, message):
    arguments = dict(n_templates=2, n_channels=1, template_shape=8, family=Gaussian())
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DCEA(**arguments)


def test_negative_zero_edges_raise():
    with pytest.raises(ValueError, match="zero_edges"):
        DCEA(2, 1, 8, Gaussian(), zero_edges=-1)


def test_encode_code_shape_and_warm_start_shapes():
    model = DCEA(3, 2, (4, 5), Gaussian(), stride=3, n_iterations=3).double()
    y = randn((2, 2, 20, 21), seed=34)
    codes = model.encode(y)
    assert codes.shape == (2, 3, *model.code_shape((20, 21))) == (2, 3, 7, 7)
    eta, _ = model(y)
    assert eta.shape == y.shape
