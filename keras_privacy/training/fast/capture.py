"""What the fast engine needs from the forward pass, on any backend.

:class:`_Capture` makes every layer with a rule run the rule's forward for the duration of
one trace and records the calls; :func:`_check_exact` checks that each trainable variable
is reached by a rule call (and that shared weights have rules that give their cross
terms); :func:`_static_reason` says why a model cannot use the fast
engine at all (its own ``compute_loss``, no compiled loss, a layer that may mix rows).
The engine choice itself is :mod:`keras_privacy.training.fast.choice`.
"""

from __future__ import annotations

from typing import Any

from keras.src.trainers.trainer import Trainer

from keras_privacy.training.checks import _all_layers
from keras_privacy.training.fast.guard import batch_mixing_reason
from keras_privacy.training.fast.rules import NotExact, RuleCall, rule_for

#: Why a model whose forward pass adds losses computed from the data (activity
#: regularizers, ``add_loss``) is not for the fast engine. Weight regularizers are fine:
#: they depend on no example and the trainer adds their gradient after clipping and
#: noising (:mod:`keras_privacy.training.regularization`).
DATA_LOSSES = (
    "the model adds losses computed from the data (activity regularizers or add_loss; "
    "their per-example gradient terms are not covered by the fast rules; weight "
    "regularizers alone are fine)"
)


class _Capture:
    """While active, layers with a rule run the rule's forward and record their calls.

    The override is an instance attribute set for the duration of one trace and removed
    on exit (also on error); the model object is left as it was.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[RuleCall] = []
        self.uncovered: dict[int, str] = {}
        self._installed: list[tuple[Any, Any]] = []

    def _wrap(self, layer: Any, rule: Any):
        def call(inputs, *args, **kwargs):
            outputs, saved, probes = rule.forward(layer, inputs, *args, **kwargs)
            self.calls.append(RuleCall(layer, rule, saved, probes))
            return outputs

        return call

    def __enter__(self) -> _Capture:
        seen: set[int] = set()
        for layer in [self.model, *_all_layers(self.model)]:
            rule = rule_for(layer)
            if rule is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            variables = [v for v in rule.variables(layer) if v.trainable]
            if not variables:
                continue
            reason = rule.unsupported(layer)
            if "call" in vars(layer):
                reason = "its call is replaced on the instance"
            if reason:
                for v in variables:
                    self.uncovered[id(v)] = f"layer {layer.name!r}: {reason}"
                continue
            self._installed.append(layer)
            object.__setattr__(layer, "call", self._wrap(layer, rule))
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer in reversed(self._installed):
            object.__delattr__(layer, "call")
        self._installed.clear()


def _check_exact(model: Any, capture: _Capture) -> None:
    """Raise :class:`NotExact` unless each trainable variable is reached by a rule call,
    and every variable reached by several calls (shared or tied weights) has rules that
    give the cross terms of its per-example norm
    (:mod:`keras_privacy.training.fast.shared`)."""
    reached: dict[int, list[RuleCall]] = {}
    for call in capture.calls:
        for v in call.rule.call_variables(call):
            reached.setdefault(id(v), []).append(call)
    for uses in reached.values():
        if len(uses) > 1:
            for call in uses:
                if not call.rule.shares_weights():
                    raise NotExact(
                        f"layer {call.layer.name!r} shares weights between {len(uses)} calls "
                        f"per forward pass and its rule ({type(call.rule).__name__}) gives "
                        "no cross terms for them"
                    )
    for v in model.trainable_variables:
        if id(v) not in reached:
            why = capture.uncovered.get(id(v), "no fast rule for its layer")
            raise NotExact(f"trainable variable {v.path!r} has no exact fast rule ({why})")


def _static_reason(model: Any) -> str | None:
    if type(model).compute_loss is not Trainer.compute_loss:
        return f"{type(model).__name__} overrides compute_loss"
    if getattr(model, "_compile_loss", None) is None:
        return "the model was compiled without a loss"
    return batch_mixing_reason(model)
