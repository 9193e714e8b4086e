"""DP models: :class:`DPModel` and :class:`DPSequential` (:func:`make_private` is in
:mod:`keras_privacy.training.private`, ``fit``'s input planning in
:mod:`keras_privacy.training.fit_input`).

A DP model trains with DP-SGD inside the ordinary ``compile`` / ``fit``. Each optimizer
update is::

    g = ( sum_{u in batch} clip_C(grad_u) + N(0, (sigma * C)^2 I) ) / B

``u`` ranges over clipping units (examples; microbatches with ``num_microbatches``), each
unit's whole gradient over all trainable variables is clipped to L2 norm C, the noise is
drawn once per update and B is the expected number of units per update (a public
constant: N, the number of examples, is treated as public). The neighbouring relation is
add/remove-one-example under Poisson sampling and zero-out-one-example under fixed-size
batches (see :data:`keras_privacy.accounting.events.NEIGHBOURING_RELATIONS`); with
microbatches of more than one example the L2 sensitivity of the clipped sum is 2C (one
example changes one microbatch), without them C.

``fit`` on in-memory arrays Poisson-samples every update (``sampling="poisson"``, the
default), which is what the accountant's amplification-by-subsampling assumes. Data that
arrives in batches (``tf.data``, generators) is trained on as it comes, recorded as not
Poisson-sampled, and a :class:`SamplingWarning` says so. ``model.privacy_record`` holds what
was done, for the accountant.
"""

from __future__ import annotations

import sys
from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.models.model import Trainer as BackendTrainer
from keras.src.models.model import functional_init_arguments

from keras_privacy.training import user_checks
from keras_privacy.training.backend import DPTrainer
from keras_privacy.training.dp_training import DPTrainingMixin
from keras_privacy.training.tf_privacy_arguments import (
    check_tf_privacy_arguments,
    sparsity_from_tf_privacy,
)


@keras.saving.register_keras_serializable(package="keras_privacy")
class DPModel(DPTrainingMixin, DPTrainer, keras.Model):
    """A ``keras.Model`` that trains with DP-SGD; functional or subclassed.

    Functional::

        model = keras_privacy.DPModel(inputs, outputs, l2_norm_clip=1.0,
                                      noise_multiplier=1.1)

    Subclassed::

        class MyModel(keras_privacy.DPModel):
            def __init__(self):
                super().__init__(l2_norm_clip=1.0, noise_multiplier=1.1)
                self.dense = keras.layers.Dense(10)
            def call(self, x):
                return self.dense(x)

    Args:
      l2_norm_clip: C, the L2 bound on each example's (or microbatch's) gradient. May
        be left ``None`` when compiling with a DP optimizer that carries it.
      noise_multiplier: sigma; noise N(0, (sigma C)^2) is added once per update.
      num_microbatches: ``None`` for per-example clipping, or k equal microbatches per
        batch, each clipped as a unit (doubles the sensitivity; needs fixed batches).
      gradient_accumulation_steps: batches per optimizer update (noise added once).
      sampling: ``"poisson"`` or ``"shuffle"`` for in-memory arrays; ``None`` (default):
        Poisson, or shuffled fixed batches when ``num_microbatches`` needs them
        (:func:`keras_privacy.training.fit_input.array_sampling`).
      seed: for reproducible tests only; never saved. The only way to fix the noise and
        the sampling: ``keras.utils.set_random_seed`` / ``tf.random.set_seed`` do not.
      engine: ``"auto"`` (default: the fast norm-only engine where it is exact for the
        model, else the vectorized one; says which once), ``"fast"`` (raise
        ``PrivacyError`` if it cannot be exact) or ``"vectorized"``.
      secure_noise: draw the Gaussian noise from the operating system's cryptographically
        secure generator (``os.urandom``) at every update, summed as Opacus's
        ``secure_mode`` does against floating-point attacks on the Gaussian sampler; slower.
        See :mod:`keras_privacy.training.noise` for what it does and does not protect.
      sparsity_preserving: ``None`` (default: plain DP-SGD) or a
        :class:`keras_privacy.SparsityPreserving`: embedding tables are updated only on
        rows chosen by a DP partition selection and noised only there
        (:mod:`keras_privacy.training.sparsity`; needs the fast engine's Embedding rule).
      use_xla: TF Privacy's argument, see
        :mod:`keras_privacy.training.tf_privacy_arguments`.
      layer_registry: TF Privacy's argument, likewise.
      sparsity_preserving_dpsgd_config: TF Privacy's ``SparsityPreservingDPSGDConfig``,
        see :func:`keras_privacy.training.tf_privacy_arguments.sparsity_from_tf_privacy`.
    """

    def __init__(
        self,
        *args: Any,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        num_microbatches: int | None = None,
        gradient_accumulation_steps: int = 1,
        sampling: str | None = None,
        seed: int | None = None,
        engine: str = "auto",
        secure_noise: bool = False,
        sparsity_preserving: Any = None,
        use_xla: bool = True,
        layer_registry: Any = None,
        sparsity_preserving_dpsgd_config: Any = None,
        **kwargs: Any,
    ) -> None:
        check_tf_privacy_arguments(use_xla, layer_registry)
        noise_multiplier, sparsity_preserving = sparsity_from_tf_privacy(
            sparsity_preserving_dpsgd_config, noise_multiplier, sparsity_preserving
        )
        if functional_init_arguments(args, kwargs):
            # Keras would rewrite this class's bases in place (Model -> Functional),
            # which breaks every later subclassed DPModel; DPModel(inputs, outputs)
            # itself is served by DPFunctional through __new__.
            raise TypeError(
                f"{type(self).__name__} subclasses DPModel and was given inputs/outputs. "
                "Use keras_privacy.DPModel(inputs, outputs, ...) for a functional DP model, "
                "or build your functional keras.Model and wrap it with make_private()."
            )
        super().__init__(*args, **kwargs)
        self._dp_setup(**user_checks.dp_settings(locals()))

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is DPModel and functional_init_arguments(args, kwargs):
            return DPFunctional.__new__(DPFunctional, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_privacy")
class DPFunctional(DPModel, Functional):
    """What ``DPModel(inputs, outputs, ...)`` returns: a functional DP model."""

    def __init__(
        self,
        inputs: Any,
        outputs: Any,
        name: str | None = None,
        *,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        num_microbatches: int | None = None,
        gradient_accumulation_steps: int = 1,
        sampling: str | None = None,
        seed: int | None = None,
        engine: str = "auto",
        secure_noise: bool = False,
        sparsity_preserving: Any = None,
        use_xla: bool = True,
        layer_registry: Any = None,
        sparsity_preserving_dpsgd_config: Any = None,
        **kwargs: Any,
    ) -> None:
        check_tf_privacy_arguments(use_xla, layer_registry)
        noise_multiplier, sparsity_preserving = sparsity_from_tf_privacy(
            sparsity_preserving_dpsgd_config, noise_multiplier, sparsity_preserving
        )
        # What keras.Model.__init__ does for functional arguments, minus rewriting the
        # class hierarchy.
        BackendTrainer.__init__(self)
        Functional.__init__(self, inputs, outputs, name=name, **kwargs)
        self._dp_setup(**user_checks.dp_settings(locals()))


@keras.saving.register_keras_serializable(package="keras_privacy")
class DPSequential(DPTrainingMixin, DPTrainer, keras.Sequential):
    """A ``keras.Sequential`` that trains with DP-SGD.

    ``DPSequential(l2_norm_clip, noise_multiplier, num_microbatches=None, ...,
    layers=[...])`` as in TensorFlow Privacy; ``DPSequential([...layers], l2_norm_clip=...,
    noise_multiplier=...)`` as in Keras, or without DP settings when they come from a DP
    optimizer at ``compile``. Arguments as :class:`DPModel`.
    """

    def __init__(
        self,
        *args: Any,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        num_microbatches: int | None = None,
        gradient_accumulation_steps: int = 1,
        sampling: str | None = None,
        seed: int | None = None,
        engine: str = "auto",
        secure_noise: bool = False,
        sparsity_preserving: Any = None,
        layers: list | None = None,
        trainable: bool = True,
        name: str | None = None,
        use_xla: bool = True,
        layer_registry: Any = None,
        sparsity_preserving_dpsgd_config: Any = None,
    ) -> None:
        check_tf_privacy_arguments(use_xla, layer_registry)
        given = user_checks.sequential_arguments(args, dict(locals()))
        given["noise_multiplier"], given["sparsity_preserving"] = sparsity_from_tf_privacy(
            sparsity_preserving_dpsgd_config, given["noise_multiplier"], sparsity_preserving
        )
        layers, trainable, name = given["layers"], given["trainable"], given["name"]
        super().__init__(layers=layers, trainable=trainable, name=name)
        self._dp_setup(**user_checks.dp_settings(given))


# Keras may have been imported first by this module's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): now that this
# module is complete, register them if that registration is still waiting.
sys.modules["keras_privacy"].finish_deferred_registration()
