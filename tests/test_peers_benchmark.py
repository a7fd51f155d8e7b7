"""The parts of benchmarks/peers.py and benchmarks/scaling.py that are ours (no peer needs to be installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peers
import scaling


@pytest.mark.parametrize("k", [0.5, 1.0, 1.3, 2.0])
def test_fit_exponent_recovers_the_power_law(k):
    rng = np.random.default_rng(0)
    sizes = np.logspace(5, 8, 7)
    times = 3e-6 * sizes**k * np.exp(rng.normal(0, 0.02, sizes.size))  # 2% timing noise
    fitted_k, c = scaling.fit_exponent(sizes, times)
    assert fitted_k == pytest.approx(k, abs=0.03)
    assert c == pytest.approx(3e-6, rel=0.5)
    with pytest.raises(ValueError):
        scaling.fit_exponent([10, 10], [1, 2])


def test_exponents_per_sweep_use_the_swept_size_and_skip_failures():
    rows = [
        {"sweep": "bins", "total_bins": n, "status": "ok", "fit_seconds": 1e-5 * n, "encode_seconds": 1e-9 * n**1.5}
        for n in (1e5, 1e6, 1e7)
    ]
    rows.append({"sweep": "bins", "total_bins": 1e8, "status": "MemoryError", "fit_seconds": np.nan})
    rows += [
        {"sweep": "templates", "n_templates": n, "status": "ok", "fit_seconds": 2.0 * n**2, "encode_seconds": n}
        for n in (1, 4, 16)
    ]
    table = pd.DataFrame(rows)
    table["fit_memory_mb"] = 100.0
    result = scaling.exponents(table, drop_smallest=False).set_index("sweep")
    assert result.loc["bins", "fit_time_exponent"] == pytest.approx(1.0)
    assert result.loc["bins", "encode_time_exponent"] == pytest.approx(1.5)
    assert result.loc["bins", "points"] == 3
    assert result.loc["templates", "fit_time_exponent"] == pytest.approx(2.0)
    assert result.loc["templates", "fit_memory_exponent"] == pytest.approx(0.0, abs=1e-9)


def test_shared_initial_templates_are_unit_norm_and_fixed_by_the_seed():
    a, b = peers.shared_initial_templates(0), peers.shared_initial_templates(0)
    assert a.shape == (3, 1, 50)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=2), 1.0)
    assert not np.allclose(a, peers.shared_initial_templates(1))


def test_methods_alternate_and_dropped_templates_score_as_unlearned():
    methods = list(peers.METHODS)
    firsts = {peers.rotated(methods, shift)[0] for shift in range(len(methods))}
    assert firsts == set(methods)
    assert sorted(peers.rotated(methods, 7)) == sorted(methods)
    templates = np.zeros((2, 1, 50))
    templates[0, 0, :] = 1.0
    fixed, n_empty = peers.scorable(templates)
    assert n_empty == 1
    assert np.count_nonzero(fixed[1]) == 1 and np.array_equal(fixed[0], templates[0])


def test_tiny_run_writes_the_issue_columns(tmp_path, monkeypatch):
    # The peer is reported as missing (whatever this environment holds), spikedict runs for real.
    monkeypatch.setattr(peers, "peer_status", lambda: {name: "cannot import x: test" for name in peers.PEER_MODULES})
    params = '{"solver__n_epochs": 1, "solver__n_code_iterations": 3, "encoder__n_iterations": 3}'
    argv = ["--seeds", "0", "--variants", "gaussian", "--methods", "spikedict", "sporco", "--n-examples", "2"]
    assert peers.main([*argv, "--params", params, "--threads", "1", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "peers.csv")
    for column in (
        "method",
        "variant",
        "seed",
        "fit_seconds",
        "template_error",
        "ratio_to_floor",
        "encode_bins_per_second",
        "peak_memory_mb",
    ):
        assert column in table.columns
    ours = table.set_index("method").loc["spikedict"]
    assert ours["status"].startswith("ok")
    assert ours["fit_seconds"] > 0 and ours["encode_bins_per_second"] > 0 and ours["peak_memory_mb"] > 0
    assert ours["ratio_to_floor"] == pytest.approx(ours["template_error"] / ours["floor"])
    assert table.set_index("method").loc["sporco", "status"].startswith("not run: cannot import")
    text = (tmp_path / "peers.md").read_text()
    assert "machine:" in text and "shared" in text and "raw counts" in text


# ------------------------------------------------------------------------------- benchmarks/songbird.py
def test_songbird_pieces_thinning_scores_and_sequences():
    import songbird

    assert songbird.training_bins(666, 60) == 540
    counts = np.random.default_rng(1).poisson(2.0, (5, 100))
    half_a, half_b = songbird.thin(counts, np.random.default_rng(0))
    assert np.array_equal(half_a + half_b, counts) and half_a.min() >= 0 and half_b.min() >= 0
    assert songbird.poisson_log_likelihood(np.array([[1, 0]]), np.array([[0.0, 0.0]])) == -np.inf
    assert songbird.poisson_log_likelihood(np.array([[0, 0]]), np.array([[0.0, 1.0]])) == pytest.approx(-1.0)
    template = np.zeros((4, 6))
    template[3, 1], template[0, 4], template[2, 2], template[1, 0] = 1.0, 0.8, -2.0, 0.1  # 1 and 2: not engaged
    first = songbird.sequence(template)
    assert first["neuron"].tolist() == [3, 0] and first["peak_lag"].tolist() == [1, 4]
    assert songbird.sequence(-template.clip(0)).empty
    other = np.zeros((4, 6))
    other[3, 0], other[0, 5], other[1, 2] = 1.0, 1.0, 1.0
    second = songbird.sequence(other)
    assert songbird.match_templates([second, first], [first]) == [1]
    pair = songbird.order_consistency(first, second)
    assert pair["n_shared"] == 2 and pair["jaccard"] == pytest.approx(2 / 3) and np.isnan(pair["spearman"])


def test_songbird_quick_run_without_seqnmf(tmp_path, monkeypatch):
    # seqNMF is reported as missing (whatever this environment holds); spikedict and the reference run for real.
    import songbird

    monkeypatch.setattr(songbird, "seqnmf_available", lambda: "cannot import seqnmf: test")
    argv = ["--quick", "--methods", "spikedict", "seqnmf", "smoothed", "--out", str(tmp_path)]
    assert songbird.main(argv) == 0
    table = pd.read_csv(tmp_path / "songbird_quick.csv").set_index("method")
    assert table.loc["seqnmf", "status"].startswith("not run: cannot import")
    for method in ("spikedict", "smoothed"):
        assert table.loc[method, "status"] == "ok"
        assert np.isfinite(table.loc[method, "bits_per_spike_mixed"])
        assert 0.0 <= table.loc[method, "mixing_weight"] <= 1.0
    assert len(table.loc["spikedict", "n_engaged"].split(" / ")) == 2
    assert (tmp_path / "songbird_quick_sequences.png").stat().st_size > 0
    assert "held out" in (tmp_path / "songbird_quick.md").read_text()
