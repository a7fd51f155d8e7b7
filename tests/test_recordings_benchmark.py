"""benchmarks/recordings.py: its sequence measures, and a smoke run of ``--quick``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_order_consistency_and_matching_across_seeds():
    import recordings

    first = np.zeros((5, 6))
    first[0, 0], first[1, 1], first[2, 2], first[3, 3], first[4, 5] = 1.0, 1.0, 1.0, 1.0, 0.2  # 4 not engaged
    second = np.zeros((5, 6))
    second[0, 3], second[1, 2], second[2, 1], second[4, 4] = 1.0, 1.0, 1.0, 1.0  # order reversed, 3 dropped
    pair = recordings.order_consistency(first, second)
    assert pair["n_engaged"] == 4 and pair["other_n_engaged"] == 4 and pair["n_shared"] == 3
    assert pair["jaccard"] == pytest.approx(3 / 5) and pair["spearman"] == pytest.approx(-1.0)
    assert np.isnan(recordings.order_consistency(first[:2], second[:2])["spearman"])  # fewer than 3 shared
    rows = recordings.consistency_across_seeds("songbird", {0: np.stack([first, second]), 1: np.stack([second, first])})
    assert [(row["template"], row["other_template"]) for row in rows] == [(0, 1), (1, 0)]
    assert all(row["jaccard"] == 1.0 and row["spearman"] == pytest.approx(1.0) for row in rows)


def test_quick_run(tmp_path):
    import recordings

    assert recordings.main(["--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "recordings_quick.csv")
    row = table.iloc[0]
    assert row["dataset"] == "motoneurone" and row["status"] == "ok"
    assert row["events"] > 0 and not row["codes_all_zero"]  # even two epochs find the evoked events
    assert 0.0 <= row["evoked_share"] <= 1.0 and row["evoked_chance"] == pytest.approx(10 / 250)
    assert row["seconds"] >= row["fit_seconds"] > 0
    summary = pd.read_csv(tmp_path / "recordings_quick_summary.csv")
    assert summary["seeds_codes_all_zero"].iloc[0].endswith("/1")
    assert "Mean over seeds" in (tmp_path / "recordings_quick.md").read_text()
