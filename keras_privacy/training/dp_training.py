"""The backend-neutral half of every DP model: :class:`DPTrainingMixin` holds the DP
settings, ``compile``, ``fit`` (with its input planning in
:mod:`keras_privacy.training.fit_input`), ``train_on_batch``, the training record and
saving; the backend's ``DPTrainer`` holds the DP step. The model classes built from both
are in :mod:`keras_privacy.training.model`, whose docstring states the update rule.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import keras
import numpy as np

from keras_privacy.training import restore, user_checks
from keras_privacy.training.adaptive_clip import AdaptiveClip, ClipHistory, clip_history_callback
from keras_privacy.training.backend import DPTrainer
from keras_privacy.training.checks import check_layers_supported
from keras_privacy.training.config import DPConfig, validate_dp_arguments
from keras_privacy.training.distribution import DistributionPlan, check_distribution
from keras_privacy.training.errors import PrivacyError
from keras_privacy.training.fit_input import new_segment, pipeline_batch_size, plan_fit_input
from keras_privacy.training.losses import check_per_example_losses
from keras_privacy.training.optimizers import DPOptimizerMixin
from keras_privacy.training.record import (
    FIXED_BATCHES,
    POISSON,
    TrainingRecord,
    TrainingSegment,
)
from keras_privacy.training.sampling import is_array_data


def _sparsity_config(value: Any) -> dict | None:
    from keras_privacy.training.sparsity import SparsityPreserving

    parsed = SparsityPreserving.from_config(value)
    return None if parsed is None else parsed.to_config()


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
        sampling: str | None,
        seed: int | None,
        engine: str = "auto",
        secure_noise: bool = False,
        sparsity_preserving: Any = None,
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
            secure_noise=secure_noise,
        )
        self._dp_settings = {
            "l2_norm_clip": l2_norm_clip,
            "noise_multiplier": noise_multiplier,
            "num_microbatches": num_microbatches,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "sampling": sampling,
            "seed": seed,
            "engine": engine,
            "secure_noise": secure_noise,
            # Kept as its config dict (or None): saved with the model as is.
            "sparsity_preserving": _sparsity_config(sparsity_preserving),
        }
        self._dp_config: DPConfig | None = None
        if l2_norm_clip is not None and noise_multiplier is not None:
            self._dp_config = DPConfig(**self._dp_settings)
        # What DP training this model has done; read it through ``privacy_record``.
        self._dp_record = TrainingRecord()
        # The segment being trained and the step's update counter when it began.
        self._dp_live: tuple[TrainingSegment, int] | None = None
        # Set when a make_private wrapper was released: it may no longer train.
        self._dp_released = False
        # Backend step state (noise generator, accumulators): created on first training.
        self._dp_step_state = None
        # One sampler stream per model: every fit continues it, so no batch is re-drawn.
        self._dp_sampler_rng = np.random.default_rng(seed)
        self._dp_chunk_size: int | None = None
        # The public divisor B of one train_step call (None: the caller's batch size).
        self._dp_expected_units: float | None = None
        self._dp_user_sample_weight = False
        # k, the rows of each user's block, while a user-level fit trains (else None).
        self._dp_user_rows: int | None = None
        self._dp_trace_key: tuple | None = None
        self._dp_warned_sampling = False
        # A saved model's adaptive clip C_t: the step state starts from it (else initial).
        self._dp_resume_clip: float | None = None
        # The data-parallel setting of the last check (training/distribution.py).
        self._dp_distribution = DistributionPlan()

    @property
    def privacy_record(self) -> TrainingRecord:
        """What DP training this model has done: one segment per ``fit`` (sampling, N,
        batch, noise, clip and the number of noised updates), as counted by the DP step."""
        self._dp_sync_record()
        return self._dp_record

    def _dp_open_segment(self, segment: TrainingSegment) -> None:
        self._dp_sync_record()  # the previous segment's final counts
        self._dp_reset_segment_counters()
        self._dp_live = (segment, self._dp_counters()["updates"])
        self._dp_record.segments.append(segment)

    def _dp_sync_record(self) -> None:
        """Copy the DP step's own counters into the segment being trained.

        The step counts noised updates in state that nothing else advances or rewinds, so
        the record holds every update that ran, even when ``fit`` ended by an exception.
        For fixed-size batches it also keeps the largest logical batch and clipping unit
        that the step actually saw (the accountant's pass length and sensitivity).
        """
        if self._dp_live is None:
            return
        segment, base = self._dp_live
        counters = self._dp_counters()
        segment.updates = counters["updates"] - base
        if segment.sampling != POISSON and counters["largest_batch"]:
            segment.expected_batch_size = max(
                segment.expected_batch_size or 0, counters["largest_batch"]
            )
            segment.examples_per_clipping_unit = max(
                segment.examples_per_clipping_unit, counters["largest_unit"]
            )

    def _dp_check_trainable(self) -> None:
        """Refuse what would train without the DP step (see the messages)."""
        if type(self).train_step is not DPTrainer.train_step:
            raise PrivacyError(
                f"{type(self).__name__} overrides train_step, which would replace the DP "
                "training step (clipping and noise) while the privacy record still counted "
                "epsilon. Override call() or compute_loss() instead; the DP step calls them "
                "for each example."
            )
        if self._dp_released:
            raise PrivacyError(
                f"{self.name!r} was released with release(): its weights may since have been "
                "trained without DP, so it no longer trains. Wrap the model again with "
                "make_private() for a new DP run."
            )
        # Refuses every multi-device setting whose DP step is not proven (a PrivacyError).
        self._dp_distribution = check_distribution(self)
        config = self._dp_config
        if self._dp_distribution.replicas > 1 and config and config.num_microbatches:
            raise PrivacyError(
                f"num_microbatches={config.num_microbatches} is not supported across "
                f"{self._dp_distribution.replicas} replicas (each replica would cut its own "
                "share of the batch into microbatches). Use per-example clipping "
                "(num_microbatches=None) when training on several devices."
            )
        distributed = self._dp_distribution.replicas > 1 or self._dp_distribution.workers > 1
        options = {
            "adaptive clipping": config is not None and config.adaptive_clip is not None,
            "secure_noise": config is not None and config.secure_noise,
            "sparsity_preserving": config is not None and config.sparsity_preserving is not None,
        }
        if distributed and any(options.values()):
            # Untested across devices: per-replica secure draws would differ (and average
            # to less noise), the adaptive clip's count would need its own all-reduce, and
            # the selected rows of a table would be selected per replica.
            option = next(name for name, used in options.items() if used)
            raise PrivacyError(
                f"{option} is not supported on several devices yet: train on one device, "
                "or with a fixed l2_norm_clip, plain DP-SGD and the default noise generator."
            )

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

    @property
    def _num_microbatches(self) -> int | None:
        """TF Privacy's (private) name for :attr:`num_microbatches`; its tests read it."""
        return self.num_microbatches

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
                "as keras_privacy.DPKerasSGDOptimizer(l2_norm_clip=..., noise_multiplier=...). "
                "(keras.models.clone_model drops DP settings; use keras_privacy.clone_model.)"
            )
        self._dp_settings = settings
        self._dp_config = DPConfig(**settings)

    def _dp_require_config(self) -> DPConfig:
        if self._dp_config is None:
            self._dp_resolve_config(getattr(self, "optimizer", None))
        return self._dp_config

    def _dp_config_for_batch(self, expected_batch_size: float | None) -> DPConfig:
        """The DP config for training with this expected batch: as it is, except that an
        ``AdaptiveClip(clipped_count_stddev=None)`` gets the paper's ``B / 20`` (set anew
        for each ``fit`` / ``train_on_batch`` from the unresolved setting)."""
        config = self._dp_require_config()
        clip = self._dp_settings["l2_norm_clip"]
        if isinstance(clip, AdaptiveClip) and clip.clipped_count_stddev is None:
            settings = {**self._dp_settings, "l2_norm_clip": clip.for_batch(expected_batch_size)}
            self._dp_config = config = DPConfig(**settings)
        return config

    # -- compile ----------------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """``keras.Model.compile``, plus the DP checks.

        The optimizer may be any Keras optimizer, or a DP optimizer carrying the DP
        settings. Losses must be per-example (Keras's built-in losses and ``Loss`` objects
        are; a plain function must return one value per example, not a batch mean).
        On TensorFlow XLA is not used for the DP step (it made DP steps 2-3x slower on
        CPU); on JAX the DP step is ``jax.jit``-compiled as Keras's own step is
        (``jit_compile=False`` turns that off), with Poisson batches padded to one shape.
        """
        self._dp_resolve_config(optimizer)
        self._dp_check_trainable()
        if isinstance(optimizer, DPOptimizerMixin):
            optimizer._dp_model_owned = True  # its updates come from this DP step
        check_layers_supported(self)
        if not getattr(self, "_dp_supports_jit", False):
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

    def get_compile_config(self) -> dict[str, Any] | None:
        """Keras's compile config plus a marker that only a DP model's
        :meth:`compile_from_config` removes (see :class:`_DPCompileMarker`)."""
        config = super().get_compile_config()
        if config is not None:
            config = {
                **config,
                _MARKER_KEY: keras.saving.serialize_keras_object(_DPCompileMarker()),
            }
        return config

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile from a saved compile config (used by ``load_model`` and make_private)."""
        config = {k: v for k, v in config.items() if k != _MARKER_KEY}
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
        user_ids: Any = None,
        max_examples_per_user: int | None = None,
    ):
        """``keras.Model.fit`` with DP-SGD.

        In-memory arrays are Poisson-sampled by default (``sampling="poisson"``): every
        update draws each example independently with probability
        ``q = batch_size * gradient_accumulation_steps / N``, and an epoch is ``N / (q N)``
        updates. With ``sampling="shuffle"`` arrays are shuffled each epoch and cut into
        fixed-size batches. ``tf.data`` datasets and generators are used as they come
        (not Poisson), one pipeline batch per update; pass ``dataset_size=N`` so the
        accountant can use it.

        With ``gradient_accumulation_steps = n`` each update's logical batch (``batch_size
        x n`` rows of arrays, or one pipeline batch) is processed in n chunks; an update
        never spans two epochs or two ``fit`` calls.

        User-level DP (``user_ids``: one id per row of ``x``): the privacy unit becomes
        the user. Each update Poisson-samples users (``batch_size`` is then the expected
        number of users per update), takes up to ``max_examples_per_user`` rows of each
        sampled user (default: all of them), clips each user's summed gradient as one
        unit and adds noise once; the record counts users (see
        :mod:`keras_privacy.training.users`).

        Not private: the training ``loss`` and metrics that ``fit`` logs are computed from
        the training rows without noise, so callbacks acting on them (``EarlyStopping``,
        ``ReduceLROnPlateau`` on ``loss``) leak beyond epsilon; monitor validation
        metrics on public or held-out data instead.
        """
        config = self._dp_require_config()
        if not getattr(self, "compiled", False):
            raise RuntimeError("You must call compile() before fit().")
        self._dp_check_trainable()
        check_layers_supported(self)
        x, y = user_checks.as_arrays(x, y)
        if config.adaptive_clip is not None:  # its default count noise needs B
            config = self._dp_config_for_batch(
                (batch_size or 32) * config.gradient_accumulation_steps
                if is_array_data(x)
                else pipeline_batch_size(x)
            )
        user_checks.warn_no_noise(config.noise_multiplier, stacklevel=2)
        user_checks.warn_training_monitors(callbacks, stacklevel=2)
        plan = plan_fit_input(
            self,
            config,
            x=x,
            y=y,
            sample_weight=sample_weight,
            class_weight=class_weight,
            batch_size=batch_size,
            validation_split=validation_split,
            validation_data=validation_data,
            shuffle=shuffle,
            steps_per_epoch=steps_per_epoch,
            dataset_size=dataset_size,
            sampler_rng=self._dp_sampler_rng,
            warn_sampling=not self._dp_warned_sampling,
            user_ids=user_ids,
            max_examples_per_user=max_examples_per_user,
        )
        if plan.segment.sampling == FIXED_BATCHES:
            self._dp_warned_sampling = True
        self._dp_chunk_size = plan.chunk_size
        self._dp_expected_units = plan.expected_units
        self._dp_user_sample_weight = plan.user_sample_weight
        self._dp_user_rows = plan.user_rows
        self._dp_open_segment(plan.segment)
        callbacks = [*plan.callbacks, *(callbacks or [])]
        if config.adaptive_clip is not None:
            check_adaptive_steps_per_execution(self)
            callbacks.insert(0, clip_history_callback(plan.segment))
            # The clip of this segment's first update (C_t continues across fits).
            plan.segment.l2_norm_clip = float(self.dp_current_clip or config.l2_norm_clip)
        try:
            history = super().fit(
                epochs=epochs,
                verbose=verbose,
                callbacks=callbacks,
                initial_epoch=initial_epoch,
                validation_steps=validation_steps,
                validation_batch_size=validation_batch_size,
                validation_freq=validation_freq,
                **plan.fit_kwargs,
            )
            user_checks.warn_dropped_examples(history, stacklevel=2)
            return history
        except Exception as error:
            failure = getattr(plan.sampler, "failure", None)
            if failure is not None and failure is not error:
                raise failure from error
            raise
        finally:
            # Callbacks that persist privacy state (PrivacyBudget's state file) write it
            # even when fit ends by an exception: spent privacy stays spent.
            for callback in callbacks:
                on_exit = getattr(callback, "on_dp_fit_exit", None)
                if on_exit is not None:
                    on_exit(self)

    def train_on_batch(self, x=None, y=None, sample_weight=None, class_weight=None, **kwargs):
        """``keras.Model.train_on_batch`` with the DP step: one noised update from the
        given batch (in ``gradient_accumulation_steps`` chunks). The caller chose the batch,
        so it is recorded as a fixed batch (not Poisson-sampled), without a dataset size."""
        config = self._dp_require_config()
        if config.adaptive_clip is not None:  # its default count noise needs B: the rows
            config = self._dp_config_for_batch(len(keras.tree.flatten(x)[0]))
        self._dp_check_trainable()
        if self._dp_distribution.workers > 1:
            raise PrivacyError(
                "train_on_batch is not supported in multi-worker DP training: each worker "
                "would bring its own batch. Use fit with in-memory arrays (Poisson sampling, "
                "each worker its own shard)."
            )
        live = self._dp_live[0] if self._dp_live else None
        if (
            live is None
            or live is not self._dp_record.current
            or not getattr(live, "_from_train_on_batch", False)
        ):
            rows = len(keras.tree.flatten(x)[0])
            segment = new_segment(config, FIXED_BATCHES, None, rows)
            if config.num_microbatches is not None:
                segment.examples_per_clipping_unit = max(1, rows // config.num_microbatches)
            segment._from_train_on_batch = True
            self._dp_open_segment(segment)
        if not self.built:  # the engines read the variables before calling the model
            self._symbolic_build(data_batch=(x, y, sample_weight))
        self._dp_user_sample_weight = sample_weight is not None or class_weight is not None
        self._dp_chunk_size = None
        self._dp_expected_units = None
        self._dp_user_rows = None
        if config.adaptive_clip is None:
            return super().train_on_batch(
                x, y, sample_weight=sample_weight, class_weight=class_weight, **kwargs
            )
        check_adaptive_steps_per_execution(self)
        return_dict = kwargs.pop("return_dict", False)
        logs = super().train_on_batch(
            x, y, sample_weight=sample_weight, class_weight=class_weight, return_dict=True, **kwargs
        )
        ClipHistory(self._dp_record.current).add(logs)
        return logs if return_dict else self._flatten_metrics_in_order(logs)

    def make_train_function(self, force: bool = False):
        self._dp_check_trainable()
        key = (
            self._dp_chunk_size,
            self._dp_expected_units,
            self._dp_user_sample_weight,
            self._dp_user_rows,
            # An AdaptiveClip's default count noise is set per fit (B / 20).
            getattr(getattr(self._dp_config, "adaptive_clip", None), "clipped_count_stddev", None),
        )
        if key != self._dp_trace_key:
            force = True
            self._dp_trace_key = key
        return super().make_train_function(force=force)

    # -- saving -----------------------------------------------------------------------

    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        restore.save_record(self, store)  # weights files carry the record (restarts)

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(restore.load_record(self, store))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._dp_saved_state())
        return config

    def _dp_saved_state(self) -> dict[str, Any]:
        """What a saved DP model keeps: the settings (not the seed: a known seed makes the
        noise predictable), the record and, with adaptive clipping, the clip ``C_t`` the
        next update would use (a reloaded model continues from it; ``C_t`` is computed
        from noised releases only, so saving it costs no privacy)."""
        settings = dict(self._dp_settings)
        settings.pop("seed", None)
        if isinstance(settings["l2_norm_clip"], AdaptiveClip):
            settings["l2_norm_clip"] = settings["l2_norm_clip"].to_config()
        state = {"dp_config": settings, "privacy_record": self.privacy_record.to_dict()}
        clip = self.dp_current_clip if self._dp_config is not None else None
        if self._dp_config is not None and self._dp_config.adaptive_clip is not None and clip:
            state["dp_adaptive_clip_value"] = float(clip)
        return state

    @staticmethod
    def _dp_pop_saved_state(config: dict[str, Any]) -> tuple[dict, Any, Any]:
        """``(settings, record, adaptive clip value)`` popped from a saved config."""
        settings = dict(config.pop("dp_config", {}))
        if "l2_norm_clip" in settings:
            settings["l2_norm_clip"] = AdaptiveClip.from_config(settings["l2_norm_clip"])
        return (
            settings,
            config.pop("privacy_record", None),
            config.pop("dp_adaptive_clip_value", None),
        )

    def _dp_restore(self, record: Any, clip_value: Any) -> None:
        if record:
            self._dp_record = TrainingRecord.from_dict(record)
        if clip_value is not None:
            self._dp_resume_clip = float(clip_value)

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None):
        config = dict(config)
        settings, record, clip_value = cls._dp_pop_saved_state(config)
        model = super().from_config(config, custom_objects=custom_objects)
        model._dp_setup(**{"seed": None, **settings})
        model._dp_restore(record, clip_value)
        return model

    # -- accounting -------------------------------------------------------------------

    def privacy_spent(
        self, delta: float, accountant: str = "pld", *, allow_large_delta: bool = False
    ) -> float:
        """Epsilon at ``delta`` of all DP training this model has done (``privacy_record``),
        accounted for the sampling each ``fit`` actually used; ``delta >= 1/N`` is refused
        unless ``allow_large_delta``."""
        from keras_privacy.training.callbacks import privacy_spent

        return privacy_spent(self, delta, accountant, allow_large_delta=allow_large_delta)


def check_adaptive_steps_per_execution(model: Any) -> None:
    """Adaptive clipping records every update's clip from the step's logs, which Keras
    hands over once per ``steps_per_execution`` steps: only 1 is supported."""
    if (getattr(model, "steps_per_execution", 1) or 1) > 1:
        raise PrivacyError(
            "l2_norm_clip=AdaptiveClip(...) records the clip of every update, which needs "
            f"steps_per_execution=1 (the model was compiled with {model.steps_per_execution})."
        )


_MARKER_KEY = "keras_privacy_dp_model"


@keras.saving.register_keras_serializable(package="keras_privacy")
class _DPCompileMarker:
    """Rides in a DP model's compile config. A DP model compiled from that config drops it;
    a plain Keras model compiled from it fails here instead of training without DP.
    ``keras.models.clone_model`` of a compiled ``DPSequential`` is that case: Keras builds
    the clone as a plain ``keras.Sequential`` and compiles it from the original's config."""

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _DPCompileMarker:
        raise PrivacyError(
            "A plain Keras model is being compiled with a DP model's compile settings: "
            "keras.models.clone_model makes a plain keras.Sequential (no DP) of a "
            "DPSequential. Use keras_privacy.clone_model(model), which keeps the DP "
            "settings."
        )


# Keras may have been imported first by this module's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): now that this
# module is complete, register them if that registration is still waiting.
sys.modules["keras_privacy"].finish_deferred_registration()
