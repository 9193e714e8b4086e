"""The keras-privacy command-line tool."""

import json
import subprocess
import sys

import pytest

from keras_privacy import cli

TUTORIAL = ["--n", "60000", "--batch-size", "256", "--delta", "1e-5"]


def test_epsilon_prints_the_statement(capsys):
    assert cli.main(["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--epochs", "60"]) == 0
    out = capsys.readouterr().out
    assert "2.382" in out and "54.05" in out and "Poisson" in out


def test_epsilon_json_and_rdp(capsys):
    argv = ["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--epochs", "60"]
    assert cli.main([*argv, "--json", "--accountant", "rdp"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["epsilon"]["poisson"] == pytest.approx(2.597, abs=5e-4)
    assert data["accountant"] == "rdp" and data["poisson_updates"] == 14063


def test_microbatches_imply_doubled_sensitivity(capsys):
    argv = ["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--steps", "100", "--json"]
    cli.main([*argv, "--microbatches", "32"])
    assert json.loads(capsys.readouterr().out)["effective_noise_multiplier"] == 0.55
    cli.main([*argv, "--microbatches", "256"])  # one example per microbatch
    assert json.loads(capsys.readouterr().out)["effective_noise_multiplier"] == 1.1


def test_noise_and_epochs_commands(capsys):
    argv = ["noise", *TUTORIAL, "--epochs", "60", "--target-epsilon", "3", "--accountant", "rdp"]
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["noise_multiplier"] == pytest.approx(1.014, abs=1e-3) and data["epsilon"] <= 3
    argv = ["epochs", *TUTORIAL, "--noise-multiplier", "1.1", "--target-epsilon", "3"]
    assert cli.main([*argv, "--accountant", "rdp", "--sampling", "shuffle"]) == 0
    assert "max epochs: 0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "70000"], "--batch-size must be <= --n (60000), received 70000"),
        (["--delta", "1"], "--delta must be a number with 0 < --delta < 1, received 1.0"),
        (["--noise-multiplier", "-1"], "--noise-multiplier must be a finite number >= 0"),
        (["--max-examples-per-user", "0"], "--max-examples-per-user must be an integer >= 1"),
    ],
)
def test_errors_are_one_line_on_stderr(capsys, argv, message):
    base = ["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--epochs", "1"]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_arguments_and_help():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["epsilon", "--n", "10"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0


def test_runs_as_a_module_without_traceback():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_privacy.cli",
            "noise",
            *TUTORIAL,
            "--steps",
            "0",
            "--target-epsilon",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "keras-privacy noise: error: --steps must be an integer >= 1, received 0"
    )
