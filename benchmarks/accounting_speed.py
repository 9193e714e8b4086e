"""Wall-clock time of the keras-privacy CLI, as a user runs it (a fresh process each time).

Targets (issue 3): the tutorial setting's statement in under 2 s, noise calibration in
under 10 s; (issue 9) a value error in under 1 s. Run from the repository root:
``python benchmarks/accounting_speed.py [repeats] [--no-progress]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from keras_privacy.programs import progress, show_progress

TUTORIAL = ["--n", "60000", "--batch-size", "256", "--delta", "1e-5"]
CASES = [
    (
        "epsilon, tutorial setting (PLD + shuffle)",
        2.0,
        ["epsilon", *TUTORIAL, "--noise-multiplier", "1.1", "--epochs", "60"],
    ),
    (
        "epsilon, tutorial setting, RDP",
        2.0,
        [
            "epsilon",
            *TUTORIAL,
            "--noise-multiplier",
            "1.1",
            "--epochs",
            "60",
            "--accountant",
            "rdp",
        ],
    ),
    (
        "noise for epsilon=3 (PLD)",
        10.0,
        ["noise", *TUTORIAL, "--epochs", "60", "--target-epsilon", "3"],
    ),
    (
        "noise for epsilon=3 (RDP)",
        10.0,
        ["noise", *TUTORIAL, "--epochs", "60", "--target-epsilon", "3", "--accountant", "rdp"],
    ),
    (
        "epochs within epsilon=3 (PLD)",
        10.0,
        ["epochs", *TUTORIAL, "--noise-multiplier", "1.1", "--target-epsilon", "3"],
    ),
    (
        "value error (--batch-size > --n)",
        1.0,
        ["noise", "--n", "100", "--batch-size", "256", "--delta", "1e-5", "--epochs", "1"]
        + ["--target-epsilon", "3"],
    ),
]


def time_command(argv: list[str], repeats: int, bar, task) -> list[float]:
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "keras_privacy.cli", *argv], env=env, capture_output=True
        )
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 2):  # 2: the value-error case
            raise RuntimeError(result.stderr.decode())
        bar.advance(task)
    return times


def main() -> int:
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    repeats = int(numbers[0]) if numbers else 3
    failed = False
    print(f"{'case':45s} {'median s':>9s} {'max s':>7s} {'target':>7s}")
    with progress(show_progress("--no-progress" in sys.argv)) as bar:
        task = bar.add_task("CLI runs", total=repeats * len(CASES))
        for name, target, argv in CASES:
            times = time_command(argv, repeats, bar, task)
            median = statistics.median(times)
            failed |= median > target
            flag = "" if median <= target else "  OVER"
            print(f"{name:45s} {median:9.2f} {max(times):7.2f} {target:7.1f}{flag}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
