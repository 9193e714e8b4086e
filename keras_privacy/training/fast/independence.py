"""The fast engine's second line of defence: a numerical batch-independence check.

The fast engine computes every clipping unit's gradient norm from one forward pass of the
whole batch. That is exact only if row ``i`` of every tensor on the forward path depends
on row ``i`` of the inputs alone; if an operation mixes rows (``z - mean(z, axis=0)``),
one example's influence reaches every other example's gradient and escapes the clip: the
remove-one sensitivity of the clipped sum grows to as much as ``2C(N-1) + C``. The
allow-list of :mod:`keras_privacy.training.fast.guard` is the first line of defence; this
check is the second, independent one, so that a hole in the list (a callable it does not
know, a registration that vouches for the wrong class) cannot train without DP silently.

The check, once per model and input signature (dtypes and non-batch shapes), before the
fast engine is first used:

1. make a probe batch of ``n = 5`` rows with the input's structure, dtypes and shapes
   (floats: standard normal; integers and booleans: 0/1, valid for any embedding table);
2. run the training-mode forward pass exactly as the fast engine runs it (every layer with
   a rule running its rule's forward), statelessly from the model's current weights and
   random-layer seed states, so that dropout draws the same masks on every run;
3. for rows ``j`` in ``{0, n//2, n-1}`` and two perturbations of row ``j`` (a fresh draw;
   row ``j`` scaled by 1000 -- an outlier -- or, for integer inputs, another row's
   values), run it again and require every other row of every output to be **bit for
   bit** the same (NaN equal to NaN).

A per-row computation passes by construction: the arithmetic of row ``i`` does not read
row ``j``. A mixing computation fails unless the mixing is exactly invisible for these
inputs (then it is also absent from the gradient for them). The per-unit losses need no
check: each unit's loss is computed from that unit's rows alone (vectorized over units).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from keras_privacy.training.fast import units as fast_units
from keras_privacy.training.fast.capture import _Capture

#: Every reason that reports mixing (not a check that could not run) contains this.
MIXES = "mixes the examples of a batch"
_ROWS = 5
_UNKNOWN_DIM = 4
_CACHE = "_dp_independence_checked"


def _signature(x: Any) -> tuple:
    leaves = keras.tree.flatten(x)
    return tuple((keras.backend.standardize_dtype(t.dtype), tuple(t.shape[1:])) for t in leaves)


def _probe_leaf(dtype: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    full = (_ROWS, *(_UNKNOWN_DIM if d is None else int(d) for d in shape))
    if "float" in dtype:
        return rng.standard_normal(full).astype(dtype)
    if "int" in dtype or dtype == "bool":
        return rng.integers(0, 2, full).astype(dtype)
    raise TypeError(f"cannot make probe inputs of dtype {dtype}")


def _perturbed(leaves: list[np.ndarray], row: int, kind: str, rng) -> list[np.ndarray]:
    out = []
    for leaf in leaves:
        leaf = leaf.copy()
        if leaf.dtype.kind == "f":
            if kind == "redraw":
                leaf[row] = rng.standard_normal(leaf.shape[1:]).astype(leaf.dtype)
            else:
                leaf[row] = leaf[row] * 1000
        elif leaf.dtype.kind == "b":
            leaf[row] = ~leaf[row]
        elif kind == "redraw":
            leaf[row] = 1 - leaf[row]
        else:
            leaf[row] = leaf[(row + 1) % len(leaf)]
        out.append(leaf)
    return out


def _forward(model: Any, values: tuple[list, list], x: Any) -> list[np.ndarray]:
    trainable, non_trainable = values
    kwargs = {"training": True} if model._call_has_training_arg else {}
    with fast_units.backend_ops["same_randomness"](), _Capture(model):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, **kwargs)
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(outputs)]


def _mixing(base: list[np.ndarray], other: list[np.ndarray], row: int) -> int | None:
    """The index of the first output whose rows other than ``row`` changed, or None."""
    keep = np.arange(_ROWS) != row
    for index, (a, b) in enumerate(zip(base, other, strict=True)):
        if not np.array_equal(a[keep], b[keep], equal_nan=True):
            return index
    return None


def run_check(model: Any, x: Any, seed: int = 0) -> str | None:
    """Run the check (see the module docstring) on ``model`` for inputs shaped like
    ``x``; ``None`` if it passes, else the reason. Not cached."""
    rng = np.random.default_rng(seed)
    signature = _signature(x)
    # The probe passes are ours, not the user's: what they warn about (deprecations) is
    # said by the training pass itself, and a user's "error" filter must not fail them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run_check(model, x, signature, rng)


def _run_check(model: Any, x: Any, signature: tuple, rng: np.random.Generator) -> str | None:
    try:
        leaves = [_probe_leaf(dtype, shape, rng) for dtype, shape in signature]
        with fast_units.backend_ops["eager"]():
            values = (
                fast_units.backend_ops["variable_values"](model.trainable_variables),
                fast_units.backend_ops["variable_values"](model.non_trainable_variables),
            )

            def run(batch_leaves):
                # The inverse of the flatten that made the signature (a dict's values in
                # key order): a traversal in insertion order would swap its inputs.
                return _forward(model, values, keras.tree.pack_sequence_as(x, batch_leaves))

            base = run(leaves)
            for index, out in enumerate(base):
                if out.ndim == 0 or out.shape[0] != _ROWS:
                    return (
                        f"the numerical batch-independence check found output {index} "
                        f"without one row per example (shape {out.shape})"
                    )
            for row in (0, _ROWS // 2, _ROWS - 1):
                for kind in ("redraw", "outlier"):
                    changed = _mixing(base, run(_perturbed(leaves, row, kind, rng)), row)
                    if changed is not None:
                        return (
                            "the numerical batch-independence check found that changing "
                            f"example {row} of a {_ROWS}-example probe batch ({kind}) "
                            f"changes other examples' output {changed}: an operation on the "
                            f"forward path {MIXES}"
                        )
    except Exception as error:  # noqa: BLE001 -- any failure means "not shown independent"
        return (
            "the numerical batch-independence check could not run "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        )
    return None


def numerical_mixing_reason(model: Any, x: Any) -> str | None:
    """:func:`run_check`, once per model and input signature (the result is kept on the
    model)."""
    cache = model.__dict__.get(_CACHE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _CACHE, cache)
    key = _signature(x)
    if key not in cache:
        cache[key] = run_check(model, x)
    return cache[key]
