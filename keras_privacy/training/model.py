"""DP models: :class:`DPModel`, :class:`DPSequential` and :func:`make_private`.

A DP model trains with DP-SGD inside the ordinary ``compile`` / ``fit``. Each optimizer
update is::

    g = ( sum_{u in batch} clip_C(grad_u) + N(0, (sigma * C)^2 I) ) / B

``u`` ranges over clipping units (examples; microbatches with ``num_microbatches``), each
unit's whole gradient over all trainable variables is clipped to L2 norm C, the noise is
drawn once per update and B is the expected number of units per update. The neighbouring
relation is add/remove-one-example; with microbatches of more than one example the L2
sensitivity of the clipped sum is 2C (one example changes one microbatch), without them C.

``fit`` on in-memory arrays Poisson-samples every update (``sampling="poisson"``, the
default), which is what the accountant's amplification-by-subsampling assumes. Data that
arrives in batches (``tf.data``, generators) is trained on as it comes, recorded as not
Poisson-sampled, and a :class:`SamplingWarning` says so. ``model.privacy_record`` holds what
was done, for the accountant.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import keras
import numpy as np
from keras.src.models.functional import Functional
from keras.src.models.model import Trainer as BackendTrainer
from keras.src.models.model import functional_init_arguments

from keras_privacy.training.backend import DPTrainer
from keras_privacy.training.checks import check_layers_supported
from keras_privacy.training.config import DPConfig, validate_dp_arguments
from keras_privacy.training.errors import PrivacyError, SamplingWarning
from keras_privacy.training.losses import check_per_example_losses
from keras_privacy.training.optimizers import DPOptimizerMixin
from keras_privacy.training.record import (
    FIXED_BATCHES,
    POISSON,
    SHUFFLE,
    TrainingRecord,
    TrainingSegment,
)
from keras_privacy.training.sampling import PoissonBatches, is_array_data


class _RecordUpdates(keras.callbacks.Callback):
    """Keeps ``segment.updates`` equal to the optimizer updates done in this ``fit``."""

    def __init__(self, segment: TrainingSegment) -> None:
        super().__init__()
        self.segment = segment
        self._start = 0

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self._start = self._iterations() - self.segment.updates

    def on_train_batch_end(self, batch, logs=None):
        self.segment.updates = self._iterations() - self._start

    def on_train_end(self, logs=None):
        self.segment.updates = self._iterations() - self._start


class DPTrainingMixin:
    """Backend-neutral part of a DP model: settings, ``compile``, ``fit``, saving."""

    # -- settings ---------------------------------------------------------------------

    def _dp_setup(
        self,
        *,
        l2_norm_clip: float | None,
        noise_multiplier: float | None,
        num_microbatches: int | None,
        gradient_accumulation_steps: int,
        sampling: str,
        seed: int | None,
        engine: str = "auto",
    ) -> None:
        # Validate what was given now; clip and noise may come from a DP optimizer later.
        validate_dp_arguments(
            l2_norm_clip=1.0 if l2_norm_clip is None else l2_norm_clip,
            noise_multiplier=0.0 if noise_multiplier is None else noise_multiplier,
            num_microbatches=num_microbatches,
            gradient_accumulation_steps=gradient_accumulation_steps,
            sampling=sampling,
            seed=seed,
            engine=engine,
        )
        self._dp_settings = {
            "l2_norm_clip": l2_norm_clip,
            "noise_multiplier": noise_multiplier,
            "num_microbatches": num_microbatches,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "sampling": sampling,
            "seed": seed,
            "engine": engine,
        }
        self._dp_config: DPConfig | None = None
        if l2_norm_clip is not None and noise_multiplier is not None:
            self._dp_config = DPConfig(**self._dp_settings)
        #: What DP training this model has done (sampling, N, batch, updates).
        self.privacy_record = TrainingRecord()
        # Backend step state (noise generator, accumulators): created on first training.
        self._dp_step_state = None
        # One sampler stream per model: every fit continues it, so no batch is re-drawn.
        self._dp_sampler_rng = np.random.default_rng(seed)
        self._dp_chunk_size: int | None = None
        # The public divisor B of one train_step call (None: the caller's batch size).
        self._dp_expected_units: float | None = None
        self._dp_user_sample_weight = False
        self._dp_trace_key: tuple | None = None
        self._dp_warned_sampling = False

    @property
    def dp_config(self) -> DPConfig | None:
        """The DP settings in force (``None`` until clip and noise are known)."""
        return self._dp_config

    @property
    def l2_norm_clip(self) -> float | None:
        return self._dp_config.l2_norm_clip if self._dp_config else None

    @property
    def noise_multiplier(self) -> float | None:
        return self._dp_config.noise_multiplier if self._dp_config else None

    @property
    def num_microbatches(self) -> int | None:
        return self._dp_settings["num_microbatches"]

    def _dp_resolve_config(self, optimizer: Any) -> None:
        """Merge the model's DP settings with a DP optimizer's; conflicts are errors."""
        settings = dict(self._dp_settings)
        if isinstance(optimizer, DPOptimizerMixin):
            from_optimizer = optimizer.dp_config
            for key in (
                "l2_norm_clip",
                "noise_multiplier",
                "num_microbatches",
                "gradient_accumulation_steps",
            ):
                mine, theirs = settings[key], getattr(from_optimizer, key)
                default = 1 if key == "gradient_accumulation_steps" else None
                if mine in (None, default):
                    settings[key] = theirs
                elif theirs not in (None, default) and theirs != mine:
                    raise PrivacyError(
                        f"The model was given {key}={mine!r} but the optimizer "
                        f"{type(optimizer).__name__} has {key}={theirs!r}. Give it in one place."
                    )
        if settings["l2_norm_clip"] is None or settings["noise_multiplier"] is None:
            raise PrivacyError(
                "This DP model has no l2_norm_clip / noise_multiplier. Pass them to "
                "DPModel / DPSequential / make_private, or compile with a DP optimizer such "
                "as keras_privacy.DPKerasSGDOptimizer(l2_norm_clip=..., noise_multiplier=...)."
            )
        self._dp_settings = settings
        self._dp_config = DPConfig(**settings)

    def _dp_require_config(self) -> DPConfig:
        if self._dp_config is None:
            self._dp_resolve_config(getattr(self, "optimizer", None))
        return self._dp_config

    # -- compile ----------------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """``keras.Model.compile``, plus the DP checks.

        The optimizer may be any Keras optimizer, or a DP optimizer carrying the DP
        settings. Losses must be per-example (Keras's built-in losses and ``Loss`` objects
        are; a plain function must return one value per example, not a batch mean).
        XLA is not used for the DP step (it made DP steps 2-3x slower on CPU, and
        Poisson batches have a variable number of rows).
        """
        self._dp_resolve_config(optimizer)
        check_layers_supported(self)
        if kwargs.get("jit_compile") is True:
            warnings.warn(
                "jit_compile=True is ignored for the DP training step of a DP model "
                "(evaluate/predict are unaffected).",
                stacklevel=2,
            )
        kwargs["jit_compile"] = False
        super().compile(optimizer=optimizer, loss=check_per_example_losses(loss), **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if (getattr(inner, "gradient_accumulation_steps", None) or 1) > 1:
            raise PrivacyError(
                "The optimizer has Keras's own gradient_accumulation_steps, which would "
                "average several noised updates and break the one-noise-per-update "
                "accounting. Pass gradient_accumulation_steps to the DP model instead."
            )

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile from a saved compile config (used by ``load_model`` and make_private)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- fit --------------------------------------------------------------------------

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: list | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        class_weight: dict | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq: int = 1,
        dataset_size: int | None = None,
    ):
        """``keras.Model.fit`` with DP-SGD.

        In-memory arrays are Poisson-sampled by default (``sampling="poisson"``): every
        update draws each example independently with probability
        ``q = batch_size * gradient_accumulation_steps / N``, and an epoch is ``N / (q N)``
        updates. With ``sampling="shuffle"`` arrays are shuffled each epoch and cut into
        fixed-size batches. ``tf.data`` datasets and generators are used as they come
        (not Poisson); pass ``dataset_size=N`` so the accountant can use it.
        """
        config = self._dp_require_config()
        if not getattr(self, "compiled", False):
            raise RuntimeError("You must call compile() before fit().")
        check_layers_supported(self)
        if is_array_data(x):
            if validation_split and validation_data is None:
                from keras.src.trainers.data_adapters.array_slicing import (
                    train_validation_split,
                )

                (x, y, sample_weight), validation_data = train_validation_split(
                    (x, y, sample_weight), validation_split=validation_split
                )
            validation_split = 0.0
            if class_weight is not None:
                from keras.src.trainers.data_adapters.data_adapter_utils import (
                    class_weight_to_sample_weights,
                )

                weights = class_weight_to_sample_weights(np.asarray(y), class_weight)
                sample_weight = weights if sample_weight is None else weights * sample_weight
                class_weight = None
            batch_size = batch_size or 32
            self._dp_user_sample_weight = sample_weight is not None
            num_examples = len(keras.tree.flatten(x)[0])
            if config.sampling == POISSON:
                # Build model, loss and metrics from real rows: the Poisson stream's
                # (x, y, sample_weight, mask) elements are not a Keras data format.
                self._symbolic_build(
                    data_batch=keras.tree.map_structure(
                        lambda a: None if a is None else np.asarray(a[:2]), (x, y, sample_weight)
                    )
                )
                segment, x, steps_per_epoch = self._dp_poisson_input(
                    x, y, sample_weight, batch_size, steps_per_epoch
                )
                y = sample_weight = None
                batch_size = None
                shuffle = False  # the sampler's draws are already random
            else:
                segment = self._dp_shuffle_segment(num_examples, batch_size)
                self._dp_chunk_size = None
                # Divide by the configured batch size, also for the last, smaller batch:
                # the realised size would depend on N, which the neighbours differ in.
                self._dp_expected_units = float(batch_size)
        else:
            self._dp_user_sample_weight = self._dp_pipeline_has_weights(x, sample_weight)
            segment = self._dp_fixed_batches_segment(x, dataset_size)
            self._dp_chunk_size = None
            batch = segment.expected_batch_size
            self._dp_expected_units = (
                None if batch is None else float(batch // config.gradient_accumulation_steps)
            )
        self.privacy_record.segments.append(segment)
        callbacks = [_RecordUpdates(segment), *(callbacks or [])]
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_split=validation_split,
            validation_data=validation_data,
            shuffle=shuffle,
            class_weight=class_weight,
            sample_weight=sample_weight,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            validation_batch_size=validation_batch_size,
            validation_freq=validation_freq,
        )

    def train_on_batch(self, x=None, y=None, sample_weight=None, class_weight=None, **kwargs):
        """``keras.Model.train_on_batch`` with the DP step; the caller chose the batch, so
        it is recorded as a fixed batch (not Poisson-sampled)."""
        config = self._dp_require_config()
        segment = self.privacy_record.current
        if segment is None or not getattr(segment, "_from_train_on_batch", False):
            rows = len(keras.tree.flatten(x)[0])
            segment = self._dp_segment(FIXED_BATCHES, None, rows)
            if config.num_microbatches is not None:
                segment.examples_per_clipping_unit = rows // config.num_microbatches
            segment._from_train_on_batch = True
            self.privacy_record.segments.append(segment)
        self._dp_user_sample_weight = sample_weight is not None or class_weight is not None
        self._dp_chunk_size = None
        self._dp_expected_units = None
        before = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        logs = super().train_on_batch(
            x, y, sample_weight=sample_weight, class_weight=class_weight, **kwargs
        )
        segment.updates += int(keras.ops.convert_to_numpy(self.optimizer.iterations)) - before
        return logs

    def _dp_segment(self, sampling: str, dataset_size: int | None, expected: int | None):
        config = self._dp_config
        return TrainingSegment(
            sampling=sampling,
            dataset_size=dataset_size,
            expected_batch_size=expected,
            noise_multiplier=config.noise_multiplier,
            l2_norm_clip=config.l2_norm_clip,
            num_microbatches=config.num_microbatches,
        )

    def _dp_poisson_input(self, x, y, sample_weight, batch_size, steps_per_epoch):
        config = self._dp_config
        if config.num_microbatches not in (None, batch_size):
            raise PrivacyError(
                f"num_microbatches={config.num_microbatches} needs fixed-size batches, but "
                "sampling='poisson' gives batches of random size. Use per-example clipping "
                "(num_microbatches=None, the tighter choice) or sampling='shuffle'."
            )
        if y is None:
            raise ValueError(
                "Poisson sampling needs targets y. For models without targets pass "
                "sampling='shuffle' or a tf.data dataset."
            )
        logical = batch_size * config.gradient_accumulation_steps
        sampler = PoissonBatches(
            x, y, sample_weight, expected_batch_size=logical, rng=self._dp_sampler_rng
        )
        self._dp_expected_units = float(logical)
        self._dp_chunk_size = batch_size if config.gradient_accumulation_steps > 1 else None
        segment = self._dp_segment(POISSON, sampler.dataset_size, logical)
        return segment, iter(sampler), steps_per_epoch or sampler.updates_per_epoch

    def _dp_shuffle_segment(self, num_examples: int, batch_size: int) -> TrainingSegment:
        config = self._dp_config
        k = config.num_microbatches
        if k is not None:
            for size in {batch_size, num_examples % batch_size or batch_size}:
                if size % k:
                    raise PrivacyError(
                        f"num_microbatches={k} must divide every batch size, but "
                        f"{num_examples} examples in batches of {batch_size} give a batch "
                        f"of {size}. Choose batch_size and num_microbatches that divide "
                        "evenly (or drop the last examples)."
                    )
        segment = self._dp_segment(
            SHUFFLE, num_examples, batch_size * config.gradient_accumulation_steps
        )
        if k is not None:
            segment.examples_per_clipping_unit = batch_size // k
        return segment

    def _dp_fixed_batches_segment(self, x: Any, dataset_size: int | None) -> TrainingSegment:
        if not self._dp_warned_sampling:
            warnings.warn(
                "keras-privacy: this data arrives already batched (tf.data / generator), so "
                "its batches are NOT Poisson-sampled. Training is still clipped and noised, "
                "but the privacy accounting must use the bound for shuffled fixed-size "
                "batches (no amplification by subsampling), which gives a larger epsilon. "
                "Pass in-memory arrays to fit() for Poisson sampling.",
                SamplingWarning,
                stacklevel=3,
            )
            self._dp_warned_sampling = True
        batch = self._dp_pipeline_batch_size(x)
        config = self._dp_config
        segment = self._dp_segment(
            FIXED_BATCHES,
            dataset_size,
            None if batch is None else batch * config.gradient_accumulation_steps,
        )
        if config.num_microbatches is not None and batch is not None:
            segment.examples_per_clipping_unit = batch // config.num_microbatches
        return segment

    @staticmethod
    def _dp_pipeline_batch_size(x: Any) -> int | None:
        """The batch size of a tf.data pipeline: static if known, else its first batch."""
        spec = getattr(x, "element_spec", None)
        if spec is None or not hasattr(x, "take"):
            return None
        leaves = [s for s in keras.tree.flatten(spec) if getattr(s, "shape", None) is not None]
        if not leaves or not leaves[0].shape.rank:
            return None
        if leaves[0].shape[0] is not None:
            return int(leaves[0].shape[0])
        for element in x.take(1):
            return int(keras.tree.flatten(element)[0].shape[0])
        return None

    @staticmethod
    def _dp_pipeline_has_weights(x: Any, sample_weight: Any) -> bool:
        if sample_weight is not None:
            return True
        spec = getattr(x, "element_spec", None)
        return isinstance(spec, tuple) and len(spec) == 3

    def make_train_function(self, force: bool = False):
        key = (self._dp_chunk_size, self._dp_expected_units, self._dp_user_sample_weight)
        if key != self._dp_trace_key:
            force = True
            self._dp_trace_key = key
        return super().make_train_function(force=force)

    # -- saving -----------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        settings = dict(self._dp_settings)
        settings.pop("seed")  # never saved: a known seed makes the noise predictable
        config["dp_config"] = settings
        config["privacy_record"] = self.privacy_record.to_dict()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None):
        config = dict(config)
        settings = config.pop("dp_config", {})
        record = config.pop("privacy_record", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model._dp_setup(**{"seed": None, **settings})
        if record:
            model.privacy_record = TrainingRecord.from_dict(record)
        return model

    # -- accounting -------------------------------------------------------------------

    def privacy_spent(self, delta: float, accountant: str = "pld") -> float:
        """Epsilon at ``delta`` of all DP training this model has done (``privacy_record``),
        accounted for the sampling each ``fit`` actually used."""
        from keras_privacy.training.callbacks import privacy_spent

        return privacy_spent(self, delta, accountant)


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
      sampling: ``"poisson"`` (default) or ``"shuffle"`` for in-memory arrays.
      seed: for reproducible tests only; never saved.
      engine: ``"auto"`` (default: the fast norm-only engine where it is exact for the
        model, else the vectorized one; says which once), ``"fast"`` (raise
        ``PrivacyError`` if it cannot be exact) or ``"vectorized"``.
    """

    def __init__(
        self,
        *args: Any,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        num_microbatches: int | None = None,
        gradient_accumulation_steps: int = 1,
        sampling: str = POISSON,
        seed: int | None = None,
        engine: str = "auto",
        **kwargs: Any,
    ) -> None:
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
        self._dp_setup(
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            num_microbatches=num_microbatches,
            gradient_accumulation_steps=gradient_accumulation_steps,
            sampling=sampling,
            seed=seed,
            engine=engine,
        )

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
        sampling: str = POISSON,
        seed: int | None = None,
        engine: str = "auto",
        **kwargs: Any,
    ) -> None:
        # What keras.Model.__init__ does for functional arguments, minus rewriting the
        # class hierarchy.
        BackendTrainer.__init__(self)
        Functional.__init__(self, inputs, outputs, name=name, **kwargs)
        self._dp_setup(
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            num_microbatches=num_microbatches,
            gradient_accumulation_steps=gradient_accumulation_steps,
            sampling=sampling,
            seed=seed,
            engine=engine,
        )


@keras.saving.register_keras_serializable(package="keras_privacy")
class DPSequential(DPTrainingMixin, DPTrainer, keras.Sequential):
    """A ``keras.Sequential`` that trains with DP-SGD.

    ``DPSequential(l2_norm_clip, noise_multiplier, num_microbatches=None, ...,
    layers=[...])`` as in TensorFlow Privacy; ``DPSequential([...layers])`` also works
    when the DP settings come from a DP optimizer at ``compile``. Arguments as
    :class:`DPModel`.
    """

    def __init__(
        self,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        num_microbatches: int | None = None,
        gradient_accumulation_steps: int = 1,
        sampling: str = POISSON,
        seed: int | None = None,
        engine: str = "auto",
        layers: list | None = None,
        trainable: bool = True,
        name: str | None = None,
    ) -> None:
        if isinstance(l2_norm_clip, (list, tuple)):  # DPSequential([...]) like Sequential
            if layers is not None:
                raise TypeError("layers given twice: positionally and as layers=")
            layers, l2_norm_clip = l2_norm_clip, None
        super().__init__(layers=layers, trainable=trainable, name=name)
        self._dp_setup(
            l2_norm_clip=l2_norm_clip,
            noise_multiplier=noise_multiplier,
            num_microbatches=num_microbatches,
            gradient_accumulation_steps=gradient_accumulation_steps,
            sampling=sampling,
            seed=seed,
            engine=engine,
        )


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
        inputs = getattr(model, "inputs", None) if model.built else None
        if inputs:
            # Building early only makes summary() work before fit(); fit builds anyway.
            with contextlib.suppress(Exception):
                self(inputs if len(inputs) > 1 else inputs[0])

    def call(self, inputs, training=None):
        return self.wrapped_model(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.wrapped_model),
            "dp_config": {k: v for k, v in self._dp_settings.items() if k != "seed"},
            "privacy_record": self.privacy_record.to_dict(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None):
        config = dict(config)
        settings = config.pop("dp_config", {})
        record = config.pop("privacy_record", None)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        private = cls(model, **settings, **config)
        if record:
            private.privacy_record = TrainingRecord.from_dict(record)
        return private


def make_private(
    model: keras.Model,
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    num_microbatches: int | None = None,
    gradient_accumulation_steps: int = 1,
    sampling: str = POISSON,
    seed: int | None = None,
    engine: str = "auto",
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
    private = PrivateModel(
        model,
        l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier,
        num_microbatches=num_microbatches,
        gradient_accumulation_steps=gradient_accumulation_steps,
        sampling=sampling,
        seed=seed,
        engine=engine,
    )
    if getattr(model, "compiled", False):
        private.compile_from_config(model.get_compile_config())
    return private
