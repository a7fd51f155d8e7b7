"""benchmarks/recovery_map.py: its signal measures, and a smoke run of ``--quick``."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_signal_measures_of_the_standard_problem():
    import recovery_map

    from spikedict.simulate import paper_templates

    templates = paper_templates(50)
    # One event of amplitude 1.5 at baseline -2 moves the counts by about 2.7 (binomial, M = 30) and 0.6 (Poisson)
    # noise standard deviations over the whole event (benchmarks/README.md, code_bounds.py section).
    binomial_peak, binomial_event = recovery_map.signal_measures("binomial", -2.0, 1.5, templates)
    poisson_peak, poisson_event = recovery_map.signal_measures("poisson", -2.0, 1.5, templates)
    assert binomial_event == pytest.approx(2.7, abs=0.05) and poisson_event == pytest.approx(0.56, abs=0.05)
    assert 0 < binomial_peak < binomial_event and 0 < poisson_peak < poisson_event


def test_quick_run(tmp_path):
    import recovery_map

    assert recovery_map.main(["--quick", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "recovery_map_quick.csv")
    assert list(table["family"]) == ["binomial", "poisson"]
    assert table[["map_error", "em_error", "floor"]].stack().between(0.0, 1.0).all()
    assert (table["map_seconds"] > 0).all() and (table["em_seconds"] > 0).all()
    assert (table["peak_sd"] > 0).all() and (table["event_sd"] > table["peak_sd"]).all()
    assert (tmp_path / "recovery_map_quick.png").exists()
