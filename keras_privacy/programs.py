"""Helpers for *programs* — the tutorials, the examples, the benchmarks — never the library.

The library neither prints nor reconfigures logging. A program may: it decides what its own
terminal shows. What the programs here share:

* :func:`quiet_tensorflow_startup` — TensorFlow's C++ start-up notices. Even with
  ``TF_CPP_MIN_LOG_LEVEL=3`` set before the first import, TensorFlow 2.19+ writes the absl
  "All log messages before absl::InitializeLog()" notice and the oneDNN notice (twice each),
  because they are logged before that variable is read (tensorflow/tensorflow#100442). This
  sets the variable unless the user did, and imports TensorFlow with those known lines held
  back; every other line is passed on.
* :func:`torch_program_threads` — on the PyTorch backend, one OpenMP thread that sleeps
  when idle (``OMP_NUM_THREADS=1``, ``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a
  thread setting; see its docstring for the measurement.
* :func:`show_progress`, :func:`progress` and :func:`spinner` — progress bars and spinners
  (``rich``), drawn only on a terminal and not when the user asked for quiet
  (``--no-progress`` or ``KERAS_PRIVACY_NO_PROGRESS=1``); the ``keras-privacy`` command
  uses them too.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO

__all__ = [
    "is_startup_notice",
    "progress",
    "progress_callback",
    "quiet_tensorflow_startup",
    "show_progress",
    "spinner",
    "torch_program_threads",
]

#: TensorFlow's known start-up notices (not warnings about the user's program); the
#: CUDA-stub line comes from the full ``tensorflow`` wheel on a machine without a GPU
#: (keras-hub's tensorflow-text installs it beside ``tensorflow-cpu``).
_STARTUP_NOTICES = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^I\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard|cudart_stub)\.cc:\d+\] "
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate"
)


def is_startup_notice(line: str) -> bool:
    """True for a line of TensorFlow's known start-up notices."""
    return bool(_STARTUP_NOTICES.search(line))


def _import_holding_back_notices(module: str) -> None:
    """Import ``module`` with file descriptor 2 captured; write back all but the notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(True) if not is_startup_notice(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def quiet_tensorflow_startup() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` (unless set) and import TensorFlow without its notices.

    Call it first thing in a program, before anything imports Keras or TensorFlow. With
    ``TF_CPP_MIN_LOG_LEVEL`` set to 0 by the user, nothing is held back. TensorFlow is
    imported on the JAX and PyTorch backends too when it is installed: Keras imports it
    later anyway for ``model.save()``, and its notices would then reach the terminal.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    # Without TensorFlow (another backend), Keras says what is missing if it needs it.
    with contextlib.suppress(ImportError):
        _import_holding_back_notices("tensorflow")


#: Environment variables that mean the user chose PyTorch's (OpenMP's) threading.
_THREAD_SETTINGS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")


def _configured_backend() -> str:
    """The Keras backend as Keras will choose it (``KERAS_BACKEND``, else ``keras.json``),
    read without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as file:
        return str(json.load(file).get("backend", "tensorflow"))
    return "tensorflow"


def torch_program_threads() -> bool:
    """On the PyTorch backend, give PyTorch one OpenMP thread whose idle time is spent
    asleep (``OMP_NUM_THREADS=1``, ``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a
    thread setting; returns whether it was set. Call it first thing, before PyTorch is
    imported (OpenMP reads the variables once, when PyTorch loads it).

    Why: PyTorch runs each CPU op on an OpenMP team (one thread per core), and an op ends
    only when every worker has finished its share. A DP step is many small ops (~2,300
    ATen calls per update for the tutorial CNN), too small to gain from a team: by
    default an idle worker *spins*, and on a machine whose cores other processes also
    use a spinning worker holds the core a descheduled worker needs. Measured on this
    project's shared 2-core machine (the Fashion-MNIST main job, 240 updates, CPU time of
    the whole process): OpenMP's default 94 s; ``OMP_WAIT_POLICY=PASSIVE`` (two sleeping
    workers) 34-35 s; one thread 27-30 s, at the same wall time (28.5-30 s); TensorFlow
    20 s. One thread is what the programs here (small models) need; a large model on
    a many-core machine may want more: set ``OMP_NUM_THREADS`` yourself.

    Not set when ``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS`` or ``GOMP_SPINCOUNT`` is already
    set, when ``KERAS_PRIVACY_TORCH_THREADS=default``, on other backends, or when PyTorch
    is already imported (too late to take effect).
    """
    if os.environ.get("KERAS_PRIVACY_TORCH_THREADS", "").lower() == "default":
        return False
    if any(os.environ.get(name) for name in _THREAD_SETTINGS) or "torch" in sys.modules:
        return False
    if _configured_backend() != "torch":
        return False
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def show_progress(no_progress: bool = False, stream: TextIO | None = None) -> bool:
    """Whether a program should draw progress: ``stream`` (stdout) is a terminal and the user
    did not ask for quiet (``no_progress``, or ``KERAS_PRIVACY_NO_PROGRESS`` set non-empty)."""
    stream = sys.stdout if stream is None else stream
    if no_progress or os.environ.get("KERAS_PRIVACY_NO_PROGRESS"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(enabled: bool = True):
    """A ``rich`` progress display (description, bar, done/total, elapsed, remaining) that
    draws nothing unless ``enabled`` (see :func:`show_progress`). Use it as a context
    manager; ``add_task`` / ``advance`` as in ``rich.progress.Progress``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def progress_callback(bar, description: str, epochs: int):
    """A Keras callback that advances a new task of ``bar`` (from :func:`progress`) once per
    epoch, for a ``fit(..., verbose=0)`` inside a longer program."""
    import keras

    class _EpochProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.task = bar.add_task(description, total=epochs)

        def on_epoch_end(self, epoch, logs=None) -> None:
            bar.advance(self.task)

    return _EpochProgress()


@contextlib.contextmanager
def spinner(description: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """A spinner and the elapsed time on ``stream`` (stderr) while work of unknown length
    runs (a calibration search); cleared when done. Draws nothing unless ``enabled``."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    console = Console(file=sys.stderr if stream is None else stream)
    with Progress(*columns, console=console, transient=True) as display:
        display.add_task(description, total=None)
        yield
