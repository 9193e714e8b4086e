"""The fast (norm-only) clipping engine's backend-neutral frame.

Every backend's ``FastEngine`` (``keras_privacy/training/backend/<name>/fast_engine.py``)
computes, for a batch of clipping units ``u``::

    sum_u clip_C(grad_u),   clip_C(g) = min(1, C / ||g||) g   (0 where ||g|| is not finite)

from one forward pass of the whole batch and one backward pass for the gradients of
``sum_u loss_u`` with respect to the rules' probe tensors; the shared rules then give
each unit's norm and the clipped sum (:mod:`keras_privacy.training.fast.clip`). What is
the same on every backend lives here:

* :class:`FastEngine`: the engine choice for a batch (fast where exact, else a refusal or
  the vectorized fallback: :func:`~keras_privacy.training.fast.choice.fast_or_fallback`);
* :func:`rules_forward`: the training-mode forward pass whose rule calls are captured,
  refusing losses computed from the data;
* :func:`vectorized_unit_losses`: each unit's loss from the whole batch's outputs,
  exactly as the compiled loss computes it on the unit alone;
* :func:`refuse_forward_updates`: only random layers' seed states may change.

One forward pass of the whole batch, in training mode, with every layer that has a rule
(:mod:`keras_privacy.training.fast.rules`) running its rule's forward, which keeps the
layer's inputs and names its output tensors; one backward pass for the gradients of the
sum of unit losses with respect to those outputs; then the rules compute per-unit norms
and the clipped sum. No per-unit gradient is materialised unless a rule finds that
cheaper, and no second backward pass is run.

The engine is used only when it is exact for the model, and otherwise falls back to the
vectorized engine (``engine="auto"``) or refuses (``engine="fast"``):

* every operation on the forward path is known to treat rows independently
  (:func:`keras_privacy.training.fast.guard.batch_mixing_reason`);
* every trainable variable is reached by calls of layers with rules; a variable reached
  by several calls (shared or tied weights) needs rules that give the cross terms of its
  per-unit norm (:mod:`keras_privacy.training.fast.shared`);
* the loss is the compiled per-example loss, with no losses computed from the data
  (activity regularizers, ``add_loss``: their per-unit gradient terms are not covered by
  the rules). Weight regularizers are allowed: they are left out of every unit's loss
  and the trainer adds their gradient after clipping and noising
  (:mod:`keras_privacy.training.regularization`);
* only random layers' seed states change in the forward pass.

Each unit's loss is computed exactly as the vectorized engine computes it (the compiled
loss on that unit's rows alone, vectorized over units), so the output gradients of the
summed unit losses are each unit's own.

A backend supplies the primitives: its vectorizer (``tf.vectorized_map``,
``jax.vmap``, ``torch.func.vmap``), how gradients with respect to the probes are taken,
and how the step is compiled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from keras import ops

from keras_privacy.training.engine import unit_loss_leaves
from keras_privacy.training.fast.capture import DATA_LOSSES
from keras_privacy.training.fast.choice import fast_or_fallback, record_engine
from keras_privacy.training.fast.rules import NotExact
from keras_privacy.training.fast.unit_losses import direct_unit_losses


class FastEngine:
    """Norm-only clipping for the batch at once, with the engine choice of
    :func:`~keras_privacy.training.fast.choice.fast_or_fallback`.

    A backend subclasses it, sets :attr:`vectorized` (its exact engine, the fallback) and
    implements ``_fast(model, *args, num_units=..., l2_norm_clip=..., **options)`` (JAX's
    option: ``unit_mask``), which
    returns what the fallback's ``clipped_gradient_sum`` returns or raises
    :class:`NotExact`.

    Args:
      require: ``True`` for ``engine="fast"`` (refuse models it cannot train exactly),
        ``False`` for ``engine="auto"`` (fall back to the vectorized engine).
    """

    #: The backend's vectorized engine class (the fallback).
    vectorized: type

    def __init__(self, require: bool = False) -> None:
        self.require = require
        self.fallback = self.vectorized()

    #: ``record(model, engine, reason)``: says which engine trains the model, once.
    record: Callable[[Any, str, str | None], None] = staticmethod(record_engine)

    def clipped_gradient_sum(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """The engine interface (:mod:`keras_privacy.training.engine`): ``args`` end with
        the batch's ``x, y, sample_weight``. ``_fast`` gets every keyword argument but
        ``unit_offset``, which only matters to the fallback: the fast engine runs the
        batch at once, so random layers see one plain call."""
        fast_kwargs = {k: v for k, v in kwargs.items() if k != "unit_offset"}
        return fast_or_fallback(
            model,
            args[-3],
            self.require,
            lambda: self._fast(model, *args, **fast_kwargs),
            lambda: self.fallback.clipped_gradient_sum(model, *args, **kwargs),
            record=self.record,
        )

    def _fast(self, model: Any, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


def engine_table(fast: type[FastEngine]) -> dict[str, Any]:
    """A trainer's engines by the ``engine=`` setting, from its backend's fast engine
    class: the vectorized reference engine, the fast engine that refuses what it cannot
    train exactly (``"fast"``) and the one that falls back (``"auto"``)."""
    return {
        "vectorized": fast.vectorized(),
        "fast": fast(require=True),
        "auto": fast(require=False),
    }


def rules_forward(
    model: Any,
    x: Any,
    y: Any,
    sample_weight: Any,
    num_units: int | None,
    unit_losses: Callable[..., Any],
) -> tuple[Any, Any]:
    """The whole batch's training-mode forward pass and each unit's loss
    (``unit_losses(model, y, y_pred, sample_weight, num_units)``), run where the backend
    captures the rules' calls with weight regularization excluded.

    Raises :class:`NotExact` if the pass adds losses computed from the data (activity
    regularizers, ``add_loss``): the rules do not cover their per-unit gradient terms.
    Weight regularization is excluded here and added by the trainer after noising.
    """
    training = {"training": True} if model._call_has_training_arg else {}
    y_pred = model(x, **training)
    if model.losses:  # weight regularization is excluded: added after noising
        raise NotExact(DATA_LOSSES)
    return y_pred, unit_losses(model, y, y_pred, sample_weight, num_units)


def vectorized_unit_losses(
    model: Any,
    y: Any,
    y_pred: Any,
    sample_weight: Any,
    num_units: int | None,
    *,
    to_units: Callable[[Any, int | None], Any],
    vmap: Callable[[Callable[[list], Any], list], Any],
    scope: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    errors: tuple[type[BaseException], ...] = (),
    direct: bool = True,
) -> Any:
    """``[U]``: each unit's loss ``loss_u = mean(compiled_loss(y_u, y_pred_u, sw_u))``, as
    the vectorized engine computes it (the compiled loss of the unit's rows alone, with
    their output masks, averaged, in float32), vectorized over units.

    The backend's primitives: ``to_units`` (``[rows, ...] -> [units, rows_per_unit,
    ...]``), ``vmap(fn, unit_leaves)`` (its vectorizer, differentiable with respect to
    ``y_pred``), ``scope()`` (entered around each unit's loss, e.g. a
    :class:`keras.StatelessScope` that discards the loss trackers' updates) and
    ``errors``, the vectorizer's failures, which become :class:`NotExact` (the loss could
    not be vectorized over units: the vectorized engine trains the model instead).

    With ``direct`` (the default), built-in Keras losses are computed for all units in
    one batched call instead (:func:`~keras_privacy.training.fast.unit_losses.direct_unit_losses`:
    the same values, without mapping the loss over the outputs).
    """
    if direct:
        losses = direct_unit_losses(
            model,
            y,
            y_pred,
            sample_weight,
            num_units,
            to_units=to_units,
            scope=scope,
            errors=errors,
        )
        if losses is not None:
            return losses
    leaves, rebuild = unit_loss_leaves(y, y_pred, sample_weight)
    unit_leaves = [to_units(t, num_units) for t in leaves]

    def unit_loss(leaves_u: list) -> Any:
        y_u, pred_u, sw_u = rebuild(leaves_u)
        with scope():
            loss = model._compute_loss(
                x=None, y=y_u, y_pred=pred_u, sample_weight=sw_u, training=True
            )
        return ops.mean(ops.cast(loss, "float32"))

    try:
        return vmap(unit_loss, unit_leaves)
    except errors as error:
        raise NotExact(
            f"the loss could not be vectorized over units ({type(error).__name__})"
        ) from error


def refuse_forward_updates(
    non_trainable: Sequence, old_values: Sequence, new_values: Sequence, seeds: set[int]
) -> None:
    """Raise :class:`NotExact` if the forward pass changed a non-trainable variable that
    is not a random layer's seed state (``seeds``: ids): the vectorized engine then
    trains the model, and refuses such state loudly (it would be computed from the
    training data without noise)."""
    for var, old, new in zip(non_trainable, old_values, new_values, strict=True):
        if id(var) not in seeds and new is not old:
            raise NotExact(f"the forward pass updates the non-trainable {var.path!r}")
