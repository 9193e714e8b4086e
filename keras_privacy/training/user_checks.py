"""Checks and warnings for what a new user gets wrong in ``fit`` (issue 21).

Each says what happened and what to do, once, where the user meets it:

* :func:`as_arrays` — Python lists become NumPy arrays (Keras would reject them, and the
  DP sampler would take them for a pipeline); string labels are refused with the fix.
* :func:`warn_no_noise` — ``noise_multiplier=0`` clips but adds no noise: not private.
* :func:`warn_training_monitors` — callbacks that act on the training ``loss``/metrics,
  which are computed from the training rows without noise (not covered by epsilon).
* :func:`warn_dropped_examples` — examples whose loss or gradient is NaN/inf contribute
  nothing to the update (their clip factor is 0); the logged loss is NaN when a whole
  batch was dropped.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from typing import Any

import keras
import numpy as np


def _library_dirs() -> tuple[str, ...]:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # keras_privacy/
    dirs = [package, os.path.dirname(keras.__file__)]
    for name in ("keras", "tensorflow", "jax", "torch", "optree"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(os.path.realpath(module.__file__)))
            dirs.append(os.path.dirname(module.__file__))
    return tuple(os.path.join(d, "") for d in dirs)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called by the caller of this function that
    points at the first frame outside keras-privacy, Keras and the backends: the user's
    ``fit`` call, also for warnings raised inside Keras callbacks."""
    dirs = _library_dirs()
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(dirs):
        frame = frame.f_back
        level += 1
    return level


#: ``DPSequential``'s arguments in TF Privacy's positional order.
SEQUENTIAL_ARGUMENTS = (
    "l2_norm_clip",
    "noise_multiplier",
    "num_microbatches",
    "gradient_accumulation_steps",
    "sampling",
    "seed",
    "engine",
    "layers",
    "trainable",
    "name",
)
_SEQUENTIAL_DEFAULTS = {
    "gradient_accumulation_steps": 1,
    "sampling": None,
    "engine": "auto",
    "trainable": True,
}

#: The DP settings every DP model keeps (``DPTrainingMixin._dp_setup``'s arguments).
DP_SETTINGS = (*SEQUENTIAL_ARGUMENTS[:7], "secure_noise", "sparsity_preserving")


def dp_settings(arguments: dict[str, Any]) -> dict[str, Any]:
    """The DP settings among a constructor's arguments (its ``locals()``), by name."""
    return {name: arguments[name] for name in DP_SETTINGS}


def sequential_arguments(args: tuple, given: dict[str, Any]) -> dict[str, Any]:
    """``DPSequential``'s keyword arguments (``given``) with the positional ones filled in.

    A list first is Keras's order (``layers, trainable, name``), so that
    ``DPSequential([...], l2_norm_clip=..., noise_multiplier=...)`` works; otherwise TF
    Privacy's order (``l2_norm_clip, noise_multiplier, ...``).

    Raises:
      TypeError: too many positional arguments, or one also given by keyword.
    """
    order = SEQUENTIAL_ARGUMENTS
    if args and isinstance(args[0], (list, tuple)):
        order = ("layers", "trainable", "name")
    if len(args) > len(order):
        raise TypeError(f"DPSequential takes at most {len(order)} positional arguments")
    given = dict(given)
    for key, value in zip(order, args, strict=False):
        if given[key] != _SEQUENTIAL_DEFAULTS.get(key):
            raise TypeError(f"DPSequential got multiple values for argument {key!r}")
        given[key] = value
    return given


def _is_plain_list(value: Any) -> bool:
    """A list/tuple whose leaves are Python numbers (no arrays): data, not a nest."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    leaves = keras.tree.flatten(value)
    return all(isinstance(leaf, (numbers.Number, str, bytes)) for leaf in leaves)


def as_arrays(x: Any, y: Any) -> tuple[Any, Any]:
    """``x`` and ``y`` with plain Python lists turned into NumPy arrays.

    Raises:
      ValueError: ``y`` holds strings (the loss needs numbers).
    """
    if _is_plain_list(x):
        x = np.asarray(x)
    if _is_plain_list(y):
        y = np.asarray(y)
    for leaf in keras.tree.flatten(y) if y is not None else ():
        kind = getattr(getattr(leaf, "dtype", None), "kind", None)
        if kind in ("U", "S", "O"):
            raise ValueError(
                f"fit: the labels y are strings (dtype {leaf.dtype}); the loss needs numbers. "
                "Map them to integers first, e.g. classes, y = np.unique(y, return_inverse=True)"
            )
    return x, y


def warn_no_noise(noise_multiplier: float, stacklevel: int) -> None:
    if noise_multiplier == 0:
        warnings.warn(
            "keras-privacy: noise_multiplier=0 adds no noise: updates are clipped but the "
            "training is NOT differentially private (epsilon is infinite). Use "
            "kp.compute_noise_multiplier(target_epsilon, delta, N, batch_size, epochs=...) "
            "to choose one.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def warn_training_monitors(callbacks: Any, stacklevel: int) -> None:
    """Warn once per callback that monitors a training (not ``val_``) quantity."""
    for callback in callbacks or ():
        monitor = getattr(callback, "monitor", None)
        if not isinstance(monitor, str) or monitor.startswith("val_") or monitor == "epsilon":
            continue
        warnings.warn(
            f"keras-privacy: {type(callback).__name__}(monitor={monitor!r}) acts on a "
            "training quantity, which fit computes from the training rows without noise: "
            "its decisions (when to stop, the learning rate, which weights to keep) are not "
            "covered by epsilon. Monitor a validation metric (e.g. 'val_loss' with "
            "validation_data) on held-out data instead.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def warn_dropped_examples(history: Any, stacklevel: int) -> None:
    """Warn when a logged training loss is NaN: whole batches were dropped."""
    losses = getattr(history, "history", {}).get("loss", [])
    bad = [i for i, value in enumerate(losses) if not math.isfinite(float(value))]
    if bad:
        warnings.warn(
            f"keras-privacy: the training loss was NaN/inf in {len(bad)} epoch(s): examples "
            "whose loss or gradient is NaN or inf were dropped from the DP update (clip "
            "factor 0, so they cannot break the privacy bound) and a batch of only such "
            "examples logs loss nan. Check the inputs for NaN (np.isnan(x).any()).",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
