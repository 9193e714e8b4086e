"""Programs (tutorials, examples, benchmarks) start quietly; the library configures nothing."""

from __future__ import annotations

import ast
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

from keras_privacy import programs

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it


@pytest.mark.parametrize(
    "line, notice",
    [
        (
            "WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n",
            True,
        ),
        (
            "I0000 00:00:1796066541.366939    5074 port.cc:153] oneDNN custom operations are on. "
            "You may see slightly different numerical results\n",
            True,
        ),
        (
            "I0000 00:00:1796066442.223647    3916 cpu_feature_guard.cc:227] This TensorFlow "
            "binary is optimized\n",
            True,
        ),
        (
            "I0000 00:00:1796660816.456774   22777 cudart_stub.cc:31] Could not find cuda "
            "drivers on your machine, GPU will not be used.\n",
            True,
        ),
        (
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            "TensorFlow with the appropriate compiler flags.\n",
            True,
        ),
        ("E0000 00:00:1796066541.366939    5074 cuda_dnn.cc:8579] Unable to register\n", False),
        ("Traceback (most recent call last):\n", False),
    ],
)
def test_only_the_known_notices_are_held_back(line, notice):
    assert programs.is_startup_notice(line) is notice


def test_other_start_up_output_is_passed_on(tmp_path):
    (tmp_path / "noisy_module.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
        "written to STDERR\\n')\n"
        "os.write(2, b'something the user must see\\n')\n"
    )
    code = (
        "from keras_privacy import programs; programs._import_holding_back_notices('noisy_module')"
    )
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]]))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "something the user must see\n"


# TensorFlow's own start-up: in the TensorFlow and PyTorch default suites; on JAX with
# -m slow (whose default suite runs the tutorial below without a start-up line).
@pytest.mark.slow_on_jax
def test_tensorflow_starts_without_a_line_on_stderr():
    code = (
        "from keras_privacy.programs import quiet_tensorflow_startup\n"
        "quiet_tensorflow_startup()\n"
        "import os, keras, tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"
        "assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '3'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal_and_unless_asked(monkeypatch):
    monkeypatch.delenv("KERAS_PRIVACY_NO_PROGRESS", raising=False)
    assert programs.show_progress(stream=_Terminal())
    assert not programs.show_progress(stream=io.StringIO())
    assert not programs.show_progress(no_progress=True, stream=_Terminal())
    monkeypatch.setenv("KERAS_PRIVACY_NO_PROGRESS", "1")
    assert not programs.show_progress(stream=_Terminal())


def test_progress_bar_draws_only_when_enabled():
    from rich.console import Console

    for enabled in (True, False):
        bar = programs.progress(enabled)
        terminal = _Terminal()
        bar.live.console = Console(file=terminal, force_terminal=True)
        with bar:
            task = bar.add_task("training", total=4)
            bar.advance(task, 4)
        assert ("training" in terminal.getvalue() and "4/4" in terminal.getvalue()) is enabled


def test_spinner_only_when_enabled():
    terminal, quiet = _Terminal(), _Terminal()
    with programs.spinner("searching for the noise multiplier", stream=terminal):
        pass
    with programs.spinner("searching", enabled=False, stream=quiet):
        pass
    assert "searching for the noise multiplier" in terminal.getvalue()
    assert quiet.getvalue() == ""


def test_progress_callback_advances_once_per_epoch():
    import keras
    import numpy as np
    from rich.console import Console

    bar = programs.progress(True)
    terminal = _Terminal()
    bar.live.console = Console(file=terminal, force_terminal=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with bar:
        callback = programs.progress_callback(bar, "tiny model", 3)
        model.fit(np.zeros((4, 2)), np.zeros(4), epochs=3, verbose=0, callbacks=[callback])
        assert bar.tasks[0].completed == 3 and bar.tasks[0].description == "tiny model"
    assert "3/3" in terminal.getvalue()


#: Calls only a program may make: printing, configuring logging, TensorFlow's log level.
_PROGRAM_ONLY = {"print", "basicConfig", "setLevel", "set_verbosity", "disable", "addHandler"}
_PROGRAM_MODULES = {"cli.py", "programs.py"}


def test_the_library_neither_prints_nor_configures_logging():
    offenders = []
    for path in sorted((ROOT / "keras_privacy").rglob("*.py")):
        if path.name in _PROGRAM_MODULES or "tutorials" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in _PROGRAM_ONLY:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Store)
                and ast.unparse(node.value) == "os.environ"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} os.environ[...]=")
    assert not offenders, offenders


def test_the_tutorial_prints_no_tensorflow_start_up_lines():
    result = subprocess.run(
        [sys.executable, "-m", "keras_privacy.tutorials.fashion_mnist", "--epochs", "1"]
        + ["--train-examples", "500", "--seed", "0"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=600,
    )
    if "apt-get install dataset-fashion-mnist" in result.stderr:
        pytest.skip("dataset-fashion-mnist not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow's own lines: its start-up notices, its Python logger, its C++ log lines
    tensorflow_lines = [
        line
        for line in result.stderr.splitlines()
        if programs.is_startup_notice(line) or re.match(r"\w+:tensorflow:|[IWEF]\d{4} ", line)
    ]
    assert not tensorflow_lines, tensorflow_lines


_THREADS_PROBE = (
    "from keras_privacy import programs; import os, sys; "
    "done = programs.torch_program_threads(); "
    "print(done, os.environ.get('OMP_NUM_THREADS'), os.environ.get('OMP_WAIT_POLICY'), "
    "'torch' in sys.modules)"
)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"KERAS_BACKEND": "torch"}, "True 1 PASSIVE False"),
        ({"KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "2"}, "False 2 None False"),
        ({"KERAS_BACKEND": "torch", "OMP_WAIT_POLICY": "ACTIVE"}, "False None ACTIVE False"),
        (
            {"KERAS_BACKEND": "torch", "KERAS_PRIVACY_TORCH_THREADS": "default"},
            "False None None False",
        ),
        ({"KERAS_BACKEND": "jax"}, "False None None False"),
    ],
)
def test_programs_let_torch_threads_sleep_unless_the_user_chose(extra, expected):
    """Issue 21: torch's spinning OpenMP workers cost 3-10x CPU on a shared machine; the
    programs give torch one sleeping OpenMP thread unless the user chose a setting."""
    env = {k: v for k, v in ENV.items() if k not in programs._THREAD_SETTINGS}
    env.pop("KERAS_PRIVACY_TORCH_THREADS", None)
    env.update(extra)
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[0] == expected


def test_every_tutorial_sets_torch_threads_before_keras():
    for path in sorted((ROOT / "keras_privacy" / "tutorials").glob("[!_]*.py")):
        text = path.read_text(encoding="utf-8")
        if "quiet_tensorflow_startup()" in text:
            assert text.index("torch_program_threads()") < text.index("quiet_tensorflow_startup()")
