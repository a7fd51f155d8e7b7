"""The ``spikedict`` command."""

from __future__ import annotations

import re

import pytest
import torch

from spikedict.cli import build_parser, main


@pytest.mark.slow
def test_demo_quick(capsys):
    assert main(["demo", "--quick", "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "simulated binomial counts: 30 examples x 2000 bins" in output
    assert "square" in output and "triangle" in output and "cosine" in output
    match = re.search(r"mean recovered-template error .*: ([0-9.]+) \(initial ([0-9.]+)\)", output)
    assert match, output
    error, initial = float(match.group(1)), float(match.group(2))
    assert 0 <= error <= 1 and 0 <= initial <= 1
    assert error < initial, "the fit did not improve on its initial templates"


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--family", "nope"],
        [],
        ["demo", "--seed", "zero"],
        ["fit"],
        ["demo", "--unknown-flag"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: spikedict" in capsys.readouterr().err


def test_bad_family_lists_choices(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--family", "nope"])
    error = capsys.readouterr().err
    assert "invalid choice: 'nope'" in error and "binomial" in error and "poisson" in error


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_parser_defaults():
    arguments = build_parser().parse_args(["demo"])
    assert (arguments.family, arguments.quick, arguments.device, arguments.seed) == ("binomial", False, "auto", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_errors_are_reported_not_raised(capsys):
    assert main(["demo", "--quick", "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("spikedict: error:") and "CUDA is not available" in error
    with pytest.raises(ValueError, match="CUDA is not available"):
        main(["--debug", "demo", "--quick", "--device", "cuda"])
