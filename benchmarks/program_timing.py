"""Wall-clock and CPU time of the project's programs, as a user runs them (fresh processes).

    python benchmarks/program_timing.py [--repeats 3] [--programs main mi lm] [--no-progress]

The timing claims of the README (the main job) and of docs/ (the examples, the
language-model tutorial) come from this script on the project's 2-core machine: it prints,
per program, the range over the runs of the wall time, the CPU time (user + system, all
threads) and the peak memory.
It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from keras_privacy.programs import progress, show_progress

PROGRAMS = {
    "main": [sys.executable, "-m", "keras_privacy.tutorials.fashion_mnist"],
    "mi": [sys.executable, "examples/privacy_testing_membership_inference.py", "--no-progress"],
    "lm": [
        sys.executable,
        "-m",
        "keras_privacy.tutorials.language_model",
        "--report-dir",
        os.path.join(tempfile.gettempdir(), "keras_privacy_language_model_report"),
    ],
}


def run_once(argv: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB so far) of one run; the program's output is discarded."""
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--programs", nargs="+", default=["main", "mi"], choices=list(PROGRAMS))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    results = {}
    with progress(show_progress(args.no_progress)) as bar:
        task = bar.add_task("program runs", total=args.repeats * len(args.programs))
        for name in args.programs:
            results[name] = []
            for _ in range(args.repeats):
                results[name].append(run_once(PROGRAMS[name]))
                bar.advance(task)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'program':<8}{'wall s':>14}{'CPU s':>14}{'peak MB':>10}")
    for name, runs in results.items():
        walls, cpus, peaks = zip(*runs, strict=True)
        print(
            f"{name:<8}{min(walls):>7.0f}–{max(walls):<6.0f}{min(cpus):>7.0f}–{max(cpus):<6.0f}"
            f"{max(peaks):>10,.0f}"
        )


if __name__ == "__main__":
    main()
