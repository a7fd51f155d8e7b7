"""The ``spikedict`` command: every subcommand on tiny settings in a temporary folder, outputs parsed."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import quantities as pq
import torch

from spikedict import SpikeDictionary
from spikedict.cli import main, parse_time

# Settings that make the demo and the fits run in seconds on one thread.
TINY_DEMO = [
    "--set", "n_examples=4",
    "--set", "n_bins=300",
    "--set", "template_size=20",
    "--set", "solver__n_epochs=2",
    "--set", "encoder__n_iterations=30",
]  # fmt: skip
TINY_FIT = ["--n-epochs", "1", "--set", "encoder__n_iterations=20", "--quiet"]


def _embedded_pngs(html: str) -> list[bytes]:
    parts = html.split("src='data:image/png;base64,")[1:]
    return [base64.b64decode(part.split("'", 1)[0]) for part in parts]


def _error_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error
    return error.splitlines()[-1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------------------------ demo
def test_demo_writes_report_figures_tables_models(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--quiet", *TINY_DEMO]) == 0
    printed = capsys.readouterr()
    assert "binomial" in printed.out and "gaussian" in printed.out
    assert "mean template error" in printed.out and "report.html" in printed.out
    assert "[1/5] simulating binomial spikes: 4 examples x 30 trials x 300 bins" in printed.err

    summary = pd.read_csv(out / "summary.csv")
    assert summary["family"].tolist() == ["binomial", "gaussian"]
    assert {"mean_initial_error", "mean_error", "max_error", "rate_rmse", "epochs", "fit_seconds"} <= set(summary)
    # the binomial fit is EM (the default for counts): its MAP start (at most 30 epochs), then 2 EM iterations
    binomial_epochs, gaussian_epochs = summary["epochs"].tolist()
    assert summary["mean_error"].between(0, 1).all() and 2 < binomial_epochs <= 32 and gaussian_epochs == 2
    templates = pd.read_csv(out / "template_errors.csv")
    assert templates["template"].tolist() == ["square", "triangle", "cosine"] * 2
    assert {"family", "lag", "sign", "initial_error", "error"} <= set(templates)
    assert len(pd.read_csv(out / "history_binomial.csv")) == binomial_epochs

    html = (out / "report.html").read_text()
    pngs = _embedded_pngs(html)
    names = ["templates_binomial", "templates_gaussian", "raster", "training", "codes"]
    assert len(pngs) == len(names)
    for name in names:
        assert (out / f"{name}.png").read_bytes() in pngs
    for text in ("Settings", "Timings", "Versions", "torch", "elephant", "n_examples", "Template errors"):
        assert text in html
    for family in ("binomial", "gaussian"):
        model = SpikeDictionary.load(out / f"model_{family}.safetensors")
        assert model.templates_.shape == (3, 1, 20) and model.family_.name == family


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--out", "taken", *TINY_DEMO]) == 1
    line = _error_line(capsys)
    assert "not empty" in line and "--overwrite" in line
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_missing_cuda_is_one_line_and_debug_raises(capsys):
    assert main(["demo", "--quick", "--device", "cuda", "--out", "gpu", *TINY_DEMO]) == 1
    assert "CUDA is not available" in _error_line(capsys)
    with pytest.raises(ValueError, match="CUDA is not available"):
        main(["--debug", "demo", "--quick", "--device", "cuda", "--out", "gpu2", *TINY_DEMO])


def test_demo_settings_overrides():
    from spikedict.demo import DEMO_SETTINGS, apply_overrides

    overrides = {"gaussian_fit.sparsity": "0.5", "fit.solver__n_epochs": "3"}
    settings = apply_overrides(DEMO_SETTINGS["default"], overrides)
    assert settings.gaussian_fit["sparsity"] == 0.5 and settings.fit["solver__n_epochs"] == 3
    assert "solver__n_epochs" not in DEMO_SETTINGS["default"].fit  # the constant is not changed: the defaults
    assert DEMO_SETTINGS["default"].n_trials == 30 and DEMO_SETTINGS["quick"].n_trials == 30
    with pytest.raises(ValueError, match="unknown demo setting 'n_exmaples'"):
        apply_overrides(DEMO_SETTINGS["default"], {"n_exmaples": "3"})


# ------------------------------------------------------------------------------- simulate, info, fit
def test_simulate_info_fit_resume(tmp_path, capsys, monkeypatch):
    study = tmp_path / "study.mat"
    simulate = ["simulate", "--out", str(study), "--n-examples", "3", "--n-bins", "200", "--n-trials", "5"]
    assert main([*simulate, "--template-size", "20", "--seed", "3"]) == 0
    assert "fit it with: spikedict fit" in capsys.readouterr().out
    assert main(simulate) == 2  # the file exists
    assert "--overwrite" in _error_line(capsys)

    assert main(["info", str(study)]) == 0
    text = capsys.readouterr().out
    assert "trials (segments): 15, each 0.2 s" in text and "ground truth" in text and "pooled by 'example'" in text

    # Interrupt the fit after its first epoch (as Ctrl-C would), then resume it.
    import spikedict.solvers._runner as runner  # the epoch runner writes every solver's checkpoints

    original = runner.save_checkpoint

    def interrupt_after_saving(path, payload):
        original(path, payload)
        if payload["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", interrupt_after_saving)
    command = ["fit", str(study), "--out", "fitted", "--n-epochs", "2", "--set", "encoder__n_iterations=20", "--quiet"]
    assert main(command) == 130
    line = _error_line(capsys)
    # the default solver for counts is EM: its MAP start (--n-epochs 2 epochs), then 2 EM iterations
    assert "interrupted after epoch 1 of 4" in line and "--resume" in line
    assert (tmp_path / "fitted" / "checkpoint.pt").exists()
    assert main(command) == 1  # the folder is not empty
    assert "not empty" in _error_line(capsys)
    monkeypatch.setattr(runner, "save_checkpoint", original)
    assert main([*command, "--resume"]) == 0
    assert "mean_template_error" in capsys.readouterr().out

    out = tmp_path / "fitted"
    assert not (out / "checkpoint.pt").exists()
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4] and history["phase"].tolist() == ["map", "map", "em", "em"]
    templates = pd.read_csv(out / "templates.csv")
    assert list(templates.columns) == [
        "template",
        "channel",
        "channel_name",
        "bin",
        "time_s",
        "value",
        "lower",
        "upper",
    ]
    assert (templates["lower"] <= templates["upper"]).all()  # the band of the recoverability check
    assert len(templates) == 3 * 1 * 20
    arrays = np.load(out / "templates.npz")
    assert arrays["templates"].shape == (3, 1, 20) and float(arrays["bin_size_s"]) == pytest.approx(0.001)
    assert np.allclose(arrays["templates"][:, 0, :].ravel(), templates["value"])
    summary = pd.read_csv(out / "summary.csv")
    # 3 examples: the last one held out to score the fit, the other 2 fitted
    assert summary.loc[0, "family"] == "binomial" and summary.loc[0, ["n_examples", "n_heldout_examples"]].tolist() == [
        2,
        1,
    ]
    assert 0 <= summary.loc[0, "mean_template_error"] <= 1
    assert len(pd.read_csv(out / "template_errors.csv")) == 3
    html = (out / "report.html").read_text()
    # templates, their rate modulations, raster, codes, training, and the data aligned to each template with events
    with_events = [name for name in ("events_template0", "events_template1", "events_template2") if name in html]
    assert len(_embedded_pngs(html)) == 5 + len(with_events) and "Templates as rate modulations" in html
    assert all((out / f"{name}.svg").exists() for name in ("templates", "rate_templates", "raster", *with_events))
    assert SpikeDictionary.load(out / "model.safetensors").templates_.shape == (3, 1, 20)


def test_fit_shipped_locust_dataset(tmp_path, capsys):
    command = ["fit", "locust", "--out", "locust", "--example-duration", "1s", "--template-size", "20ms", *TINY_FIT]
    assert main(command) == 0
    printed = capsys.readouterr()
    assert "poisson" in printed.out and "binning locust: 2 trials in bins of 2.0 ms" in printed.err
    summary = pd.read_csv(tmp_path / "locust" / "summary.csv")
    # 20 examples of 1 s: the last 4 held out
    assert summary.loc[0, ["n_examples", "n_heldout_examples", "n_bins", "template_size"]].tolist() == [16, 4, 500, 10]
    assert np.isfinite(summary.loc[0, "heldout_bits_per_spike"])
    assert np.isfinite(summary.loc[0, "log_likelihood_per_bin"])


def test_counts_that_say_little_are_warned_of_in_the_terminal_summary_and_report(capsys):
    command = ["fit", "locust", "--bin-size", "1s", "--example-duration", "0s", "--template-size", "2"]
    assert main([*command, "--out", "wide", *TINY_FIT]) == 0
    message = "the counts are large (a mean of 89.8 spikes per bin)"
    assert f"warning: {message}" in capsys.readouterr().err
    assert message in pd.read_csv("wide/summary.csv").loc[0, "data_warnings"]
    assert message in Path("wide/report.html").read_text()


def test_a_fit_that_ends_with_no_events_says_so_with_what_to_try(capsys):
    command = ["fit", "locust", "--sparsity", "1000", "--example-duration", "1s", "--template-size", "20ms"]
    assert main([*command, "--out", "silent", *TINY_FIT]) == 0
    assert "warning: the fit ended with no events" in capsys.readouterr().err
    summary = pd.read_csv("silent/summary.csv")
    assert "Try a lower --sparsity" in summary.loc[0, "data_warnings"]
    assert "the fit ended with no events" in Path("silent/report.html").read_text()


def test_a_command_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.nix"), "--out", "never"]) == 1
    assert "neither an existing file nor a shipped data set" in _error_line(capsys)
    assert not (tmp_path / "never").exists()
    assert main(["fit", str(tmp_path / "missing.nix")]) == 1  # the default folder too
    assert not list(tmp_path.glob("spikedict-fit-*"))
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty or not
    assert main(["fit", str(tmp_path / "missing.nix"), "--out", "mine"]) == 1
    assert (tmp_path / "mine").is_dir()
    assert main(["demo", "--quick", "--device", "cuda", "--out", "gpu", *TINY_DEMO]) == (
        0 if torch.cuda.is_available() else 1
    )
    assert torch.cuda.is_available() or not (tmp_path / "gpu").exists()


def test_resume_without_checkpoint_is_an_error(capsys):
    assert main(["fit", "locust", "--out", "nothing-here", "--resume", *TINY_FIT]) == 1
    assert "does not exist" in _error_line(capsys)


# -------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--seed", "zero"], "'zero' is not a valid integer"),
        (["demo", "--unknown-flag"], "No such option '--unknown-flag'"),
        (["demo", "--set", "n_exmaples=3"], "unknown demo setting 'n_exmaples'"),
        (["demo", "--set", "n_examples"], "is not NAME=VALUE"),
        (["fit"], "Missing argument 'RECORDING'"),
        (["fit", "locust", "--family", "nope"], "'nope' is not one of 'binomial', 'poisson', 'gaussian'"),
        (["fit", "locust", "--bin-size", "5"], "'5' has no unit"),
        (["fit", "locust", "--bin-size", "5 kg"], "'kg' is not a unit of time"),
        (["fit", "locust", "--n-templates", "0"], "neither a whole number >= 1 nor 'auto'"),
        (["fit", "locust", "--sparsity", "lots"], "'lots' is neither a number nor 'auto'"),
        (["fit", "locust", "--set", "n_epoch=3"], "'n_epoch' is not a parameter of SpikeDictionary; its parameters"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("spikedict") and "error:" in line and message in line and "--help" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "no-such-recording.mat"], "neither an existing file nor a shipped data set"),
        (["info", "no-such-recording.mat"], "['locust', 'motoneurone', 'paper-binomial', 'songbird', 'stn']"),
        (["fit", "locust", "--family", "binomial", "--out", "b"], "--group-by"),
        (["fit", "locust", "--bin-size", "3ms", "--template-size", "10ms", "--out", "c"], "whole number of bins"),
    ],
)
def test_failures_exit_1_with_one_line(argv, message, capsys):
    assert main(argv) == 1
    line = _error_line(capsys)
    assert line.startswith("spikedict: error:") and message in line


def test_debug_shows_the_exception():
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        main(["--debug", "fit", "no-such-recording.mat"])


@pytest.mark.parametrize("command", [[], ["demo"], ["fit"], ["simulate"], ["info"]])
def test_help_with_examples(command, capsys):
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage: spikedict" in text and "Examples:" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5ms", 5 * pq.ms), ("5 ms", 5 * pq.ms), ("0.005 s", 0.005 * pq.s), ("1e-3s", 1 * pq.ms), ("50us", 0.05 * pq.ms)],
)
def test_parse_time(text, expected):
    value = parse_time(text)
    assert float(value.rescale(pq.s).magnitude) == pytest.approx(float(expected.rescale(pq.s).magnitude))


def test_python_dash_m_works(tmp_path):
    done = subprocess.run([sys.executable, "-m", "spikedict", "fit"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Missing argument 'RECORDING'" in done.stderr


def test_output_folder_that_is_a_file(tmp_path, capsys):
    Path("a-file").write_text("x")
    assert main(["demo", "--out", "a-file"]) == 1
    assert "is a file" in _error_line(capsys)


def test_default_output_folders_are_never_overwritten(tmp_path, capsys):
    from spikedict.cli import _free_folder

    assert _free_folder("spikedict-demo") == Path("spikedict-demo")
    Path("spikedict-demo").mkdir()
    assert _free_folder("spikedict-demo") == Path("spikedict-demo")  # empty: usable
    (Path("spikedict-demo") / "report.html").write_text("an earlier run")
    assert _free_folder("spikedict-demo") == Path("spikedict-demo-2")


def test_simulate_takes_the_amplitude_range(capsys):
    from spikedict.io import read_recording

    command = ["simulate", "--out", "strong.mat", "--n-examples", "3", "--n-bins", "300", "--n-trials", "5"]
    assert main([*command, "--amplitude-range", "3", "5"]) == 0
    amplitudes = np.asarray(read_recording("strong.mat").annotations["code_amplitude"])
    assert len(amplitudes) and amplitudes.min() >= 3 and amplitudes.max() <= 5
    assert main([*command, "--amplitude-range", "5", "3", "--overwrite"]) == 2
    assert "LOW 5 is above HIGH 3" in _error_line(capsys)


def test_fit_checks_its_templates_unless_asked_not_to_and_pools_groups_of_trials(capsys):
    command = ["fit", "motoneurone", "--pool", "50", "--n-templates", "2", *TINY_FIT]
    assert main([*command, "--out", "checked", "--n-simulations", "3"]) == 0
    printed = capsys.readouterr().err
    assert "in groups of 50 consecutive trials" in printed and "checking the templates: 3 refits" in printed
    summary = pd.read_csv("checked/summary.csv")
    assert summary.loc[0, "family"] == "binomial" and summary.loc[0, "n_examples"] + summary.loc[
        0, "n_heldout_examples"
    ] == int(np.ceil(469 / 50))
    check = pd.read_csv("checked/recoverability.csv")
    assert (
        check["template"].tolist() == [0, 1] and summary.loc[0, "n_templates_recoverable"] == check["recoverable"].sum()
    )
    assert "Can these templates be trusted?" in Path("checked/report.html").read_text()
    assert Path("checked/heldout.csv").exists() and Path("checked/sparsity_path.csv").exists()
    assert main([*command, "--out", "unchecked", "--no-check", "--pool", "0", "--family", "poisson"]) == 0
    summary = pd.read_csv("unchecked/summary.csv")
    assert not Path("unchecked/recoverability.csv").exists() and "n_templates_recoverable" not in summary.columns
    assert summary.loc[0, "family"] == "poisson" and summary.loc[0, "n_examples"] == 469 - 94
    assert pd.read_csv("unchecked/templates.csv")["lower"].isna().all()


def test_number_and_length_of_templates_chosen_by_held_out_spikes(capsys):
    command = ["fit", "motoneurone", "--n-templates", "auto", "--template-size", "10,40ms", "--no-check", *TINY_FIT]
    assert main([*command, "--out", "chosen"]) == 0
    assert "choosing among 10 settings (numbers of templates [1, 2, 3, 4, 5], lengths [10, 20] bins)" in (
        capsys.readouterr().err
    )
    choice = pd.read_csv("chosen/model_choice.csv")
    assert len(choice) == 10 and set(choice["template_size"]) == {10, 20}
    best = choice.loc[choice["rank"] == 1].iloc[0]
    summary = pd.read_csv("chosen/summary.csv")
    assert summary.loc[0, ["n_templates", "template_size"]].tolist() == [best["n_templates"], best["template_size"]]
    assert "Model choice" in Path("chosen/report.html").read_text()
    assert main(["fit", "motoneurone", "--n-templates", "0", "--out", "bad"]) == 2
    assert "neither a whole number >= 1 nor 'auto'" in _error_line(capsys)
