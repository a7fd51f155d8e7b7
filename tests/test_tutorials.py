"""The tutorials (jupytext percent .py files in tutorials/) run top to bottom on tiny settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9][0-9]_*.py"))


def test_the_tutorials_are_there():
    assert [path.stem[:2] for path in TUTORIALS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    monkeypatch.setenv("SPIKEDICT_TUTORIAL_QUICK", "1")
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        plt.close("all")


@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_is_a_jupytext_percent_notebook(path):
    text = path.read_text()
    assert "format_name: percent" in text and text.count("# %% [markdown]") >= 2
