"""``make_private``: DP training for a model you already have, without changing it.

:func:`make_private` returns a :class:`PrivateModel`, a DP model whose ``call`` is the
wrapped model's: it shares that model's layers and weights. Because the weights are
shared, the wrapped model itself refuses ``fit`` / ``train_on_batch`` while it is wrapped
(that would train them without DP) until :meth:`PrivateModel.release`.
:func:`clone_model` clones DP models with their DP settings.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import keras
from keras.src.models.functional import Functional

from keras_privacy.training import user_checks
from keras_privacy.training.checks import check_layers_supported
from keras_privacy.training.dp_training import DPTrainingMixin
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.model import DPModel, DPSequential
from keras_privacy.training.record import TrainingRecord


@keras.saving.register_keras_serializable(package="keras_privacy")
class PrivateModel(DPModel):
    """The model returned by :func:`make_private`: a DP model that calls another model.

    It shares the wrapped model's layers and weights (training it updates them), and
    leaves the wrapped model object itself unchanged.
    """

    def __init__(self, model: keras.Model, **kwargs: Any) -> None:
        kwargs.setdefault("name", f"private_{model.name}")
        super().__init__(**kwargs)
        self.wrapped_model = model
        _hold(model, self)
        inputs = getattr(model, "inputs", None) if model.built else None
        if inputs:
            # Building early only makes summary() work before fit(); fit builds anyway.
            with contextlib.suppress(Exception):
                self(inputs if len(inputs) > 1 else inputs[0])

    def call(self, inputs, training=None):
        return self.wrapped_model(inputs, training=training)

    # Tells the batch-independence guard that ``call`` only forwards to ``wrapped_model``
    # (the guard then checks the wrapped model), without the guard importing this module.
    _dp_forwarding_call = call

    def release(self) -> keras.Model:
        """Let the wrapped model train on its own again, and return it.

        While wrapped, the model refuses ``fit`` / ``train_on_batch`` (they would train
        the shared weights without DP). After ``release()`` it trains normally -- without
        DP -- and this private model refuses to train: its weights may no longer be the
        result of DP training alone. (Evaluation, prediction and saving still work.)
        """
        _unhold(self.wrapped_model, self)
        self._dp_released = True
        return self.wrapped_model

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.wrapped_model),
            **self._dp_saved_state(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None):
        config = dict(config)
        settings, record, clip_value = cls._dp_pop_saved_state(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        private = cls(model, **settings, **config)
        private._dp_restore(record, clip_value)
        return private


def _hold(model: keras.Model, private: PrivateModel) -> None:
    """Make ``model``'s own fit / train_on_batch refuse while ``private`` wraps it.

    Both go through ``make_train_function`` before anything is updated; an instance
    attribute shadows it on this one object (the user handed it to make_private), and
    :meth:`PrivateModel.release` removes it. Custom training loops that apply an optimizer
    to the shared variables directly are outside what this can see.
    """
    holders = model.__dict__.get("_dp_holders")
    if holders is None:
        holders = {}
        object.__setattr__(model, "_dp_holders", holders)
    holders[id(private)] = private.name

    def make_train_function(force: bool = False):
        raise PrivacyError(
            f"Model {model.name!r} is wrapped by make_private() (as "
            f"{', '.join(repr(n) for n in holders.values())}) and shares its weights: "
            "training it directly would update them WITHOUT differential privacy. Train the "
            "private model instead (private.fit(...)), or call private.release() first to "
            "train this model without DP."
        )

    object.__setattr__(model, "make_train_function", make_train_function)


def _unhold(model: keras.Model, private: PrivateModel) -> None:
    holders = model.__dict__.get("_dp_holders", {})
    holders.pop(id(private), None)
    if not holders:
        model.__dict__.pop("make_train_function", None)


def make_private(
    model: keras.Model,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    num_microbatches: int | None = None,
    gradient_accumulation_steps: int = 1,
    sampling: str | None = None,
    seed: int | None = None,
    engine: str = "auto",
    secure_noise: bool = False,
    sparsity_preserving: Any = None,
) -> PrivateModel:
    """Return a model that trains ``model``'s layers with DP-SGD through compile/fit.

    The returned model shares ``model``'s layers and weights; ``model`` itself is not
    modified (no monkey-patching). If ``model`` was compiled, the returned model is
    compiled the same way (with a fresh optimizer); otherwise compile it yourself. See
    :class:`DPModel` for the arguments and the exact update rule.

    Raises:
      PrivacyError: for bad DP arguments, or layers that mix examples
        (BatchNormalization): DP-SGD cannot bound one example's influence through them.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"make_private expects a keras.Model, received {type(model).__name__}")
    if isinstance(model, DPTrainingMixin):
        raise PrivacyError(f"Model {model.name!r} is already a DP model.")
    check_layers_supported(model)
    private = PrivateModel(model, **user_checks.dp_settings(locals()))
    if getattr(model, "compiled", False):
        private.compile_from_config(model.get_compile_config())
    return private


def clone_model(model: keras.Model, **kwargs: Any) -> keras.Model:
    """``keras.models.clone_model`` that keeps a DP model's DP settings.

    Keras builds a clone's class itself: a cloned ``DPSequential`` comes back as a plain
    ``keras.Sequential`` and a functional ``DPModel`` without its clip and noise. This
    returns the same kind of DP model with the same settings (the seed excepted), fresh
    weights and an empty privacy record, compiled like ``model`` if it was. Other
    arguments go to ``keras.models.clone_model``; plain models are cloned as Keras does.
    """
    if not isinstance(model, DPTrainingMixin):
        return keras.models.clone_model(model, **kwargs)
    settings = {k: v for k, v in model._dp_settings.items() if k != "seed"}
    if isinstance(model, PrivateModel):
        inner = keras.models.clone_model(model.wrapped_model, **kwargs)
        clone = make_private(inner, **settings)
    elif isinstance(model, DPSequential):
        plain = keras.Sequential(list(model._layers), name=model.name, trainable=model.trainable)
        clone = keras.models.clone_model(plain, **kwargs)
        clone = DPSequential(
            layers=list(clone._layers), name=clone.name, trainable=clone.trainable, **settings
        )
    elif isinstance(model, Functional):
        plain = keras.Model(model.inputs, model.outputs, name=model.name)
        clone = keras.models.clone_model(plain, **kwargs)
        clone = DPModel(clone.inputs, clone.outputs, name=clone.name, **settings)
    else:  # a subclassed DPModel: rebuilt from its config, as Keras clones subclasses
        clone = type(model).from_config(model.get_config())
        clone._dp_record = TrainingRecord()
    if getattr(model, "compiled", False) and not getattr(clone, "compiled", False):
        clone.compile_from_config(model.get_compile_config())
    return clone


# Keras may have been imported first by this module's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): now that this
# module is complete, register them if that registration is still waiting.
sys.modules["keras_privacy"].finish_deferred_registration()
