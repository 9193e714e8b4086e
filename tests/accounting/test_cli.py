"""The keras-privacy command-line tool."""

import io
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


BAD_VALUES = """
import sys
from keras_privacy import cli
tutorial = ["--n", "60000", "--batch-size", "256", "--delta", "1e-5"]
for argv in (
    ["epsilon", *tutorial, "--noise-multiplier", "-1", "--epochs", "1"],
    ["epsilon", "--n", "10", "--batch-size", "20", "--delta", "1e-5", "--noise-multiplier",
     "1", "--steps", "3"],
    ["noise", *tutorial, "--epochs", "0", "--target-epsilon", "3"],
    ["epochs", *tutorial, "--noise-multiplier", "1.1", "--target-epsilon", "-3"],
    ["epochs", *tutorial[:4], "--delta", "2", "--noise-multiplier", "1", "--target-epsilon", "1"],
    ["noise", *tutorial, "--steps", "5", "--target-epsilon", "3", "--microbatches", "0"],
):
    assert cli.main(argv) == 2, argv
heavy = [m for m in ("dp_accounting", "scipy", "keras", "tensorflow") if m in sys.modules]
assert not heavy, heavy
"""


def test_value_errors_come_before_the_heavy_imports():
    # a value error must answer at once (well under a second): the accountants
    # (dp_accounting + scipy, ~1 s) and any framework stay unimported
    result = subprocess.run(
        [sys.executable, "-c", BAD_VALUES], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 6 and all(": error: --" in line for line in errors), errors


def test_zero_noise_says_why_epsilon_is_infinite(capsys):
    argv = ["epsilon", *TUTORIAL, "--noise-multiplier", "0", "--steps", "10"]
    assert cli.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        "epsilon is infinite: --noise-multiplier 0 adds no noise, so the run is not "
        "differentially private"
    )
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["epsilon"]["poisson"] == "inf" and "no noise" in data["reason"]


@pytest.mark.parametrize(
    "sigma, target, sampling, why",
    [
        ("0", "1", "poisson", "why: --noise-multiplier 0 adds no noise"),
        ("0.3", "0.1", "poisson", "why: a single optimizer step already gives epsilon = 10.6 >"),
        ("1.1", "0.64", "poisson", "why: one epoch already gives epsilon = 0.741 > "),
        ("1.1", "0.64", "shuffle", "why: one epoch already gives epsilon = "),
    ],
)
def test_unreachable_target_says_why_in_one_line(capsys, sigma, target, sampling, why):
    argv = ["epochs", *TUTORIAL, "--noise-multiplier", sigma, "--target-epsilon", target]
    assert cli.main([*argv, "--sampling", sampling, "--accountant", "rdp"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "max epochs: 0" and len(lines) == 4
    assert lines[-1].startswith(why)
    if sampling == "poisson" and sigma == "1.1":
        assert lines[1] == "max optimizer steps: 1"
        assert "(only 1 of its 235 steps fit)" in lines[-1]


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_epochs_command_agrees_with_the_library(capsys, sampling):
    from keras_privacy import accounting

    argv = ["epochs", *TUTORIAL, "--noise-multiplier", "2", "--target-epsilon", "3"]
    assert cli.main([*argv, "--sampling", sampling, "--accountant", "rdp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    budget = (3.0, 1e-5, 60000, 256, 2.0)
    kwargs = {"sampling": sampling, "accountant": "rdp"}
    assert data["max_epochs"] == accounting.compute_max_epochs(*budget, **kwargs)
    assert data["max_steps"] == accounting.compute_max_steps(*budget, **kwargs)
    assert data["max_epochs"] > 0 and "reason" not in data


def test_help_lists_each_command_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("epsilon", "noise", "epochs"):
        listed = [line for line in out.splitlines() if line.startswith(f"    {command} ")]
        assert len(listed) == 1, (command, out)
    assert out.count("find the smallest noise multiplier") == 1


def test_piped_run_writes_nothing_to_stderr():
    argv = ["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--steps", "10"]
    result = subprocess.run(
        [sys.executable, "-m", "keras_privacy.cli", *argv], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "" and "epsilon" in result.stdout


def test_every_lazy_accounting_name_resolves():
    # keras_privacy.accounting loads its names on first use (so that the CLI can check its
    # arguments without dp_accounting); each must still be there
    from keras_privacy import accounting

    assert accounting.__all__ and all(getattr(accounting, n) for n in accounting.__all__)
    assert accounting._checks.check_delta(0.5) == 0.5 and accounting.events.POISSON == "poisson"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        accounting.nothing  # noqa: B018


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [[], ["--no-progress"]])
def test_spinner_on_a_terminal_unless_asked(monkeypatch, capsys, quiet):
    monkeypatch.delenv("KERAS_PRIVACY_NO_PROGRESS", raising=False)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["noise", *TUTORIAL, "--steps", "100", "--target-epsilon", "3", "--accountant", "rdp"]
    assert cli.main(argv + quiet) == 0
    shown = "searching for the noise multiplier (RDP accountant)" in terminal.getvalue()
    assert shown == (not quiet) and "noise multiplier:" in capsys.readouterr().out


@pytest.mark.slow_on_jax  # accounting only, the same on every backend (17 s on JAX)
def test_user_level_run_counts_users_and_matches_the_library(capsys):
    """``--privacy-unit user``: a fit(user_ids=...) run, N and B count users; the numbers
    are the library's for the same (users, expected users) and the text says user-level."""
    import keras_privacy as kp

    users = ["--n", "671", "--batch-size", "275", "--delta", "1e-5", "--steps", "10"]
    argv = ["noise", *users, "--target-epsilon", "2", "--privacy-unit", "user", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["privacy_unit"] == "user"
    sigma = kp.compute_noise_multiplier(2.0, 1e-5, 671, 275, steps=10)
    assert data["noise_multiplier"] == pytest.approx(sigma)
    assert cli.main(argv[:-1]) == 0
    assert "user-level epsilon" in capsys.readouterr().out
    statement = ["epsilon", *users, "--noise-multiplier", f"{sigma}", "--privacy-unit", "user"]
    assert cli.main(statement) == 0
    out = capsys.readouterr().out
    assert "N = 671 users" in out and "User-level" in out
    # an example-level run of the same numbers says examples, not users
    assert cli.main(statement[:-2]) == 0
    assert "N = 671 users" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-examples-per-user", "3"], "--max-examples-per-user (group privacy"),
        (["--microbatches", "5"], "microbatching do not apply"),
        (["--sampling", "shuffle"], "Poisson sampling only"),
    ],
)
def test_user_level_refuses_what_does_not_apply(capsys, extra, message):
    argv = ["noise", "--n", "671", "--batch-size", "275", "--delta", "1e-5", "--epochs", "2"]
    assert cli.main([*argv, "--target-epsilon", "2", "--privacy-unit", "user", *extra]) == 2
    assert message in capsys.readouterr().err
