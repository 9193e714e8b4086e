"""The engine choice, the same on every backend: the fast engine where it is exact for
the model, else a refusal (``engine="fast"``) or the vectorized engine (``"auto"``).

The fast engine is exact for a model only if (1) nothing rules it out statically
(:func:`~keras_privacy.training.fast.capture._static_reason`: the compiled loss, and the
batch-independence allow-list of :mod:`keras_privacy.training.fast.guard`), (2) the
numerical batch-independence check of :mod:`keras_privacy.training.fast.independence`
passes, and (3) no rule raises :class:`NotExact` while tracing (uncovered or shared
variables, losses computed from the data -- activity regularizers, ``add_loss`` -- or a
loss that cannot be vectorized over units). Weight regularizers do not count: they depend
on no example, and the trainer adds their gradient after clipping and noising
(:mod:`keras_privacy.training.regularization`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from keras_privacy.training.errors import BatchMixingWarning, PrivacyError
from keras_privacy.training.fast.capture import _static_reason
from keras_privacy.training.fast.independence import MIXES, numerical_mixing_reason
from keras_privacy.training.fast.rules import NotExact


def record_engine(
    model: Any,
    engine: str,
    reason: str | None,
    note: Callable[[Any, str], None] | None = None,
) -> None:
    """Remember which engine trains the model (``model._dp_engine_used``); say it once per
    model and engine: an INFO log for the fast engine, a warning (with the reason) for the
    vectorized fallback. ``note(model, sentence)``, if given, takes the warning's sentence
    instead (TensorFlow queues it with its vectorizer's notes, said in one line)."""
    previous = getattr(model, "_dp_engine_used", None)
    object.__setattr__(model, "_dp_engine_used", (engine, reason))
    if previous is not None and previous[0] == engine:
        return
    if engine == "fast":
        logging.getLogger("keras_privacy").info(
            "keras-privacy: %r trains with the fast (norm-only) clipping engine.", model.name
        )
        return
    sentence = (
        f"{model.name!r} trains with the vectorized clipping engine (exact, slower), "
        f"because the fast engine cannot be exact for it: {reason}."
    )
    if note is not None:
        note(model, sentence)
    else:
        warnings.warn(f"keras-privacy: {sentence}", stacklevel=2)


def fast_or_fallback(
    model: Any,
    x: Any,
    require: bool,
    fast: Callable[[], Any],
    fallback: Callable[[], Any],
    record: Callable[[Any, str, str | None], None] = record_engine,
) -> Any:
    """The engine choice for a batch with inputs ``x``: ``fast()`` where the fast engine is
    exact for ``model`` (no static reason against it, the numerical batch-independence
    check passes, and no rule raises :class:`NotExact`); otherwise a
    :class:`PrivacyError` for ``engine="fast"`` (``require``) or ``fallback()`` (the
    vectorized engine) for ``engine="auto"``. ``record`` says which engine trains the
    model, once."""
    reason = _static_reason(model)
    if reason is None:
        reason = numerical_mixing_reason(model, x)
    if reason is None:
        try:
            result = fast()
        except NotExact as error:
            reason = str(error)
        else:
            record(model, "fast", None)
            return result
    if require:
        raise PrivacyError(
            f"engine='fast' cannot train {model.name!r} exactly: {reason}. Use "
            "engine='auto' (falls back to the exact vectorized engine) or "
            "engine='vectorized'."
        )
    record(model, "vectorized", reason)
    return fallback()


def warn_if_mixing(model: Any, x: Any) -> None:
    """Say plainly, once per model, when the model really mixes the examples of a batch
    (the numerical check shows it): the vectorized engine keeps DP exact by running each
    example alone, which changes what the mixing computation sees. Every backend's
    vectorized engine calls this (``engine="vectorized"`` and the fallback alike)."""
    reason = numerical_mixing_reason(model, x)
    if reason is None or MIXES not in reason or model.__dict__.get("_dp_warned_mixing"):
        return
    object.__setattr__(model, "_dp_warned_mixing", True)
    warnings.warn(
        f"keras-privacy: {model.name!r} mixes the examples of a batch ({reason}). DP "
        "training clips each example's gradient on its own, so each example goes through "
        "the model alone: in training that computation sees one example at a time, in "
        "evaluation and prediction the whole batch, and the model may learn little (a "
        "layer that subtracts the batch mean outputs zeros for a batch of one). Use "
        "per-example layers instead (LayerNormalization or GroupNormalization rather than "
        "batch statistics). warnings.simplefilter('error', keras_privacy.BatchMixingWarning) "
        "makes this an error.",
        BatchMixingWarning,
        stacklevel=3,
    )
