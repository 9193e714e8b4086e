"""What ``fit`` does with its input before Keras trains: sampling, batching, the record.

:func:`plan_fit_input` turns the arguments of a DP model's ``fit`` into a
:class:`FitPlan`: the data Keras will iterate over, the record segment that this ``fit``
opens, and what the DP step needs to know (rows per chunk, the public divisor B). Each
sampling mode is one function here, with the accountant's assumption next to the code that
makes it true:

* ``poisson`` (arrays, the default): the model's own sampler draws every batch
  (:mod:`keras_privacy.training.sampling`); accounted with amplification.
* ``shuffle`` (arrays): Keras shuffles once per epoch and cuts whole logical batches of
  ``batch_size x accumulation`` rows, so an update never spans two passes.
* ``fixed_batches`` (``tf.data``, generators): one pipeline batch per update; the DP step
  records the largest batch it sees, and a finite dataset's passes are checked against
  ``dataset_size``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import keras
import numpy as np

from keras_privacy.training.config import DPConfig
from keras_privacy.training.errors import PrivacyError, SamplingWarning
from keras_privacy.training.record import (
    FIXED_BATCHES,
    POISSON,
    SHUFFLE,
    USER,
    TrainingSegment,
)
from keras_privacy.training.sampling import PoissonBatches, ShuffledPasses, is_array_data
from keras_privacy.training.users import (
    UserPoissonBatches,
    check_user_level_fit,
    expected_rows,
)


@dataclasses.dataclass
class FitPlan:
    """The arguments for Keras's ``fit`` and the DP step's settings for this call.

    Attributes:
      segment: the record segment this ``fit`` opens.
      fit_kwargs: what changed in Keras's ``fit`` arguments (data, batch size, ...).
      chunk_size: rows per vectorized pass under accumulation (None: the whole batch, or
        for pipelines ``ceil(rows / accumulation)``).
      expected_units: the public divisor B of one update (None: the realised rows).
      user_sample_weight: whether the user gave sample or class weights.
      callbacks: checks to run during ``fit`` (before the user's callbacks).
      sampler: the Poisson sampler feeding this ``fit`` (None for other sampling): a
        refusal it raises inside a backend's input pipeline is re-raised as itself.
      user_rows: with ``user_ids`` (user-level DP), ``k``, the rows of each user's block
        (:mod:`keras_privacy.training.users`); ``None`` otherwise.
    """

    segment: TrainingSegment
    fit_kwargs: dict[str, Any]
    chunk_size: int | None
    expected_units: float | None
    user_sample_weight: bool
    callbacks: list
    sampler: Any = None
    user_rows: int | None = None


def new_segment(config: DPConfig, sampling: str, dataset_size: int | None, batch: int | None):
    segment = TrainingSegment(
        sampling=sampling,
        dataset_size=dataset_size,
        expected_batch_size=batch,
        noise_multiplier=config.noise_multiplier,
        l2_norm_clip=config.l2_norm_clip,
        num_microbatches=config.num_microbatches,
        selection_noise_multiplier=(
            None
            if config.sparsity_preserving is None
            else config.sparsity_preserving.selection_noise_multiplier
        ),
    )
    adaptive = config.adaptive_clip
    if adaptive is not None:
        segment.adaptive_clip = {
            "target_quantile": float(adaptive.target_quantile),
            "learning_rate": float(adaptive.learning_rate),
            "clipped_count_stddev": float(adaptive.clipped_count_stddev),
            "gradient_noise_multiplier": config.gradient_noise_multiplier,
            "count_noise_multiplier": adaptive.count_noise_multiplier,
        }
        segment.clip_values = []
    return segment


def plan_fit_input(
    model: Any,
    config: DPConfig,
    *,
    x: Any,
    y: Any,
    sample_weight: Any,
    class_weight: Any,
    batch_size: int | None,
    validation_split: float,
    validation_data: Any,
    shuffle: Any,
    steps_per_epoch: int | None,
    dataset_size: int | None,
    sampler_rng: np.random.Generator,
    warn_sampling: bool,
    user_ids: Any = None,
    max_examples_per_user: int | None = None,
) -> FitPlan:
    """Plan one DP ``fit`` (see the module docstring)."""
    kwargs = {
        "x": x,
        "y": y,
        "sample_weight": sample_weight,
        "class_weight": class_weight,
        "batch_size": batch_size,
        "validation_split": validation_split,
        "validation_data": validation_data,
        "shuffle": shuffle,
        "steps_per_epoch": steps_per_epoch,
    }
    workers = model._dp_distribution.workers
    if user_ids is not None:
        check_user_level_fit(model, config, x, validation_split)
    elif max_examples_per_user is not None:
        raise ValueError("max_examples_per_user is for user-level training: pass user_ids too.")
    if not is_array_data(x):
        refuse_unsharded_input(workers, "a tf.data pipeline or generator")
        _build_from_first_batch(model, x)
        return _pipeline_plan(config, kwargs, dataset_size, warn_sampling)
    kwargs = _arrays_with_weights_and_split(kwargs)
    kwargs["batch_size"] = kwargs["batch_size"] or 32
    # Build model, loss and metrics from real rows before the DP step is traced: the
    # engines read the trainable variables before they call the model (and the Poisson
    # stream's (x, y, sample_weight, mask) elements are not a Keras data format).
    model._symbolic_build(
        data_batch=keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a[:2]),
            (kwargs["x"], kwargs["y"], kwargs["sample_weight"]),
        )
    )
    if user_ids is not None:
        return _user_plan(model, config, kwargs, sampler_rng, user_ids, max_examples_per_user)
    if array_sampling(config, kwargs["batch_size"]) == POISSON:
        return _poisson_plan(model, config, kwargs, sampler_rng)
    refuse_unsharded_input(workers, "sampling='shuffle'")
    return _shuffle_plan(model, config, kwargs, sampler_rng)


def refuse_unsharded_input(workers: int, what: str) -> None:
    """Under multi-worker training only Poisson-sampled arrays are sharded by the workers
    (each its own rows, global q); any other input would be batched by each worker alone,
    so rows could repeat across workers within an update."""
    if workers > 1:
        raise PrivacyError(
            f"Multi-worker DP training ({workers} workers) takes in-memory arrays, "
            f"Poisson-sampled, not {what}: give every worker all N rows (x, y) and the "
            "global batch_size; each worker samples its own shard of the rows with the "
            "global rate q = batch_size / N."
        )


def array_sampling(config: DPConfig, batch_size: int) -> str:
    """How ``fit`` samples in-memory arrays: ``config.sampling`` when the user chose one;
    by default Poisson, unless ``num_microbatches`` needs fixed-size batches.

    k microbatches of a batch are k equal slices of it, so k must divide the batch. A
    Poisson batch has a random size; slicing it by position would not be sound either:
    adding one example would shift the others between microbatches, so one example could
    change every microbatch's clipped gradient. With ``num_microbatches`` k > 1 (and k
    not the batch size, which is per-example clipping) and no ``sampling`` given, ``fit``
    therefore uses shuffled fixed-size batches -- what TF Privacy's models and optimizers
    always did -- accounted as such (no amplification by subsampling; L2 sensitivity 2C
    per microbatch under the zero-out relation), and says so with a
    :class:`SamplingWarning`. ``sampling="poisson"`` with such microbatches is refused
    (:func:`_poisson_plan`).
    """
    if config.sampling is not None:
        return config.sampling
    k = config.num_microbatches
    if k is None or k == batch_size:
        return POISSON
    warnings.warn(
        f"keras-privacy: num_microbatches={k} splits each batch into {k} equal "
        "microbatches, which Poisson-sampled batches (of random size) cannot give, so "
        "fit uses shuffled fixed-size batches, as TF Privacy did. They are clipped and "
        "noised as asked, but the accountant gives them no amplification by "
        "subsampling, and each microbatch counts twice the clip norm: a much larger "
        "epsilon than per-example clipping with Poisson sampling. For the tighter "
        "guarantee pass num_microbatches=None (per-example clipping; the fast engines "
        "make it cheap); pass sampling='shuffle' to keep this and silence the warning.",
        SamplingWarning,
        stacklevel=4,
    )
    return SHUFFLE


def _arrays_with_weights_and_split(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Split off validation rows and turn class weights into sample weights, as Keras
    would, so that the DP sampling sees only training rows with their weights."""
    x, y, sample_weight = kwargs["x"], kwargs["y"], kwargs["sample_weight"]
    if kwargs["validation_split"] and kwargs["validation_data"] is None:
        from keras.src.trainers.data_adapters.array_slicing import train_validation_split

        (x, y, sample_weight), kwargs["validation_data"] = train_validation_split(
            (x, y, sample_weight), validation_split=kwargs["validation_split"]
        )
    kwargs["validation_split"] = 0.0
    if kwargs["class_weight"] is not None:
        from keras.src.trainers.data_adapters.data_adapter_utils import (
            class_weight_to_sample_weights,
        )

        weights = class_weight_to_sample_weights(np.asarray(y), kwargs["class_weight"])
        sample_weight = weights if sample_weight is None else weights * sample_weight
        kwargs["class_weight"] = None
    return {**kwargs, "x": x, "y": y, "sample_weight": sample_weight}


def _poisson_plan(model, config: DPConfig, kwargs, sampler_rng) -> FitPlan:
    """Poisson sampling: one padded batch per update from the model's own sampler."""
    x, y, sample_weight = kwargs["x"], kwargs["y"], kwargs["sample_weight"]
    batch_size = kwargs["batch_size"]
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
    plan = model._dp_distribution
    # The stream is a generator: lists are not a valid tf.data structure, and a model
    # takes a tuple of inputs the same way.
    sampler = PoissonBatches(
        keras.tree.lists_to_tuples(x),
        y,
        sample_weight,
        expected_batch_size=logical,
        # A stream of its own for this fit, derived from the model's: however far the
        # input pipeline draws ahead, the next fit's batches are the same for a seed.
        # Several workers: each its own stream (independent draws), and its own shard.
        rng=sampler_rng.spawn(plan.workers)[plan.worker_index],
        shard=(plan.worker_index, plan.workers),
        # Split across R replicas in equal contiguous shards (training/distribution.py):
        # each shard keeps its sampled rows first, and the step adds the shards' sums.
        capacity_multiple=plan.replicas // plan.workers,
    )
    # A backend may gather the sampled rows itself (TensorFlow: in a tf.data pipeline).
    stream = getattr(model, "_dp_poisson_stream", iter)(sampler)
    kwargs.update(
        x=stream,
        y=None,
        sample_weight=None,
        batch_size=None,
        shuffle=False,  # the sampler's draws are already random
        steps_per_epoch=kwargs["steps_per_epoch"] or sampler.updates_per_epoch,
    )
    return FitPlan(
        segment=new_segment(config, POISSON, sampler.dataset_size, logical),
        fit_kwargs=kwargs,
        chunk_size=batch_size if config.gradient_accumulation_steps > 1 else None,
        expected_units=float(logical),  # the expected batch, never the realised one
        user_sample_weight=sample_weight is not None,
        callbacks=[],
        sampler=sampler,
    )


def _user_plan(model, config: DPConfig, kwargs, sampler_rng, user_ids, cap) -> FitPlan:
    """User-level Poisson sampling (:mod:`keras_privacy.training.users`): each update
    draws every user with probability ``q = batch_size / users``; the DP step clips each
    user's block of ``k`` rows as one unit, with clip ``C / k`` and divisor ``B / k``."""
    if kwargs["y"] is None:
        raise ValueError("fit(user_ids=...) needs targets y.")
    weighted = kwargs["sample_weight"] is not None
    sampler = UserPoissonBatches(
        keras.tree.lists_to_tuples(kwargs["x"]),
        kwargs["y"],
        kwargs["sample_weight"],
        user_ids,
        expected_users=kwargs["batch_size"],
        max_examples_per_user=cap,
        rng=sampler_rng.spawn(1)[0],
    )
    stream = getattr(model, "_dp_user_stream", iter)(sampler)
    segment = new_segment(config, POISSON, sampler.num_users, sampler.expected_batch_size)
    segment.privacy_unit = USER
    kwargs = {
        **kwargs,
        "x": stream,
        "y": None,
        "sample_weight": None,
        "batch_size": None,
        "shuffle": False,
        "steps_per_epoch": kwargs["steps_per_epoch"] or sampler.updates_per_epoch,
    }
    return FitPlan(
        segment=segment,
        fit_kwargs=kwargs,
        chunk_size=None,
        expected_units=expected_rows(sampler.expected_batch_size, sampler.user_rows),
        user_sample_weight=weighted,
        callbacks=[],
        sampler=sampler,
        user_rows=sampler.user_rows,
    )


def _shuffle_plan(model, config: DPConfig, kwargs, sampler_rng) -> FitPlan:
    """Shuffled fixed-size batches: whole logical batches of ``batch_size x accumulation``
    rows cut from one permutation per pass (by Keras, or by a backend's own stream); the
    DP step processes each in chunks of ``batch_size``, so an update never spans two
    passes or two fit calls."""
    batch_size = kwargs["batch_size"]
    accumulation = config.gradient_accumulation_steps
    num_examples = len(keras.tree.flatten(kwargs["x"])[0])
    k = config.num_microbatches
    if k is not None:
        # Every chunk (the last of a pass may be shorter) splits into k microbatches.
        last_chunk = num_examples % (batch_size * accumulation) % batch_size or batch_size
        if batch_size % k or last_chunk % k:
            raise PrivacyError(
                f"num_microbatches={k} must divide every batch, but with {num_examples} "
                f"examples and batch_size={batch_size} "
                + (
                    f"batch_size itself is not a multiple of {k}"
                    if batch_size % k
                    else f"the last batch of each epoch has {last_chunk} examples"
                )
                + ". Choose a batch_size that divides the data (or drop the last "
                "examples), and a num_microbatches that divides batch_size."
            )
    segment = new_segment(config, SHUFFLE, num_examples, batch_size * accumulation)
    if k is not None:
        segment.examples_per_clipping_unit = batch_size // k
    user_sample_weight = kwargs["sample_weight"] is not None
    kwargs["batch_size"] = batch_size * accumulation
    stream = getattr(model, "_dp_shuffle_stream", None)
    # (Weights without targets stay with Keras: a batch (x, weights) would read as (x, y).)
    weights_without_y = kwargs["y"] is None and kwargs["sample_weight"] is not None
    if stream is not None and kwargs["shuffle"] in (True, False) and not weights_without_y:
        # The backend cuts the passes itself (one iterator for the whole fit: no
        # per-epoch pipeline teardown); an epoch is one pass unless steps_per_epoch says.
        passes = ShuffledPasses(
            kwargs["x"],
            kwargs["y"],
            kwargs["sample_weight"],
            logical_batch_size=batch_size * accumulation,
            shuffle=bool(kwargs["shuffle"]),
            rng=sampler_rng.spawn(1)[0],
        )
        kwargs.update(
            x=stream(passes),
            y=None,
            sample_weight=None,
            batch_size=None,
            shuffle=False,
            steps_per_epoch=kwargs["steps_per_epoch"] or passes.batches_per_pass,
        )
    return FitPlan(
        segment=segment,
        fit_kwargs=kwargs,
        chunk_size=batch_size if accumulation > 1 else None,
        # The configured batch also divides the last, smaller batch: a public constant.
        expected_units=float(batch_size * accumulation),
        user_sample_weight=user_sample_weight,
        callbacks=[],
    )


def _pipeline_plan(config: DPConfig, kwargs, dataset_size, warn_sampling) -> FitPlan:
    """tf.data / generators: each pipeline batch is one update, as it comes."""
    x = kwargs["x"]
    if warn_sampling:
        warnings.warn(
            "keras-privacy: this data arrives already batched (tf.data / generator), so "
            "its batches are NOT Poisson-sampled. Training is still clipped and noised, "
            "but the privacy accounting must use the bound for shuffled fixed-size "
            "batches (no amplification by subsampling), which gives a larger epsilon. "
            "Pass in-memory arrays to fit() for Poisson sampling.",
            SamplingWarning,
            stacklevel=4,
        )
    # The declared batch; the DP step records the largest batch it actually sees.
    batch = pipeline_batch_size(x)
    segment = new_segment(config, FIXED_BATCHES, dataset_size, batch)
    if config.num_microbatches is not None and batch is not None:
        segment.examples_per_clipping_unit = max(1, batch // config.num_microbatches)
    checks = []
    if segment.dataset_size and kwargs["steps_per_epoch"] is None and is_finite_dataset(x):
        checks.append(PassSizeCheck(segment))
    return FitPlan(
        segment=segment,
        fit_kwargs=kwargs,
        chunk_size=None,
        expected_units=None if batch is None else float(batch),
        user_sample_weight=pipeline_has_weights(x, kwargs["sample_weight"]),
        callbacks=checks,
    )


def _build_from_first_batch(model: Any, x: Any) -> None:
    """Build an unbuilt (subclassed) model from a tf.data pipeline's first batch."""
    if model.built or not hasattr(x, "take") or not hasattr(x, "element_spec"):
        return
    from keras.src.trainers.data_adapters import data_adapter_utils

    for element in x.take(1):
        model._symbolic_build(data_batch=data_adapter_utils.unpack_x_y_sample_weight(element))


def pipeline_batch_size(x: Any) -> int | None:
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


def pipeline_has_weights(x: Any, sample_weight: Any) -> bool:
    if sample_weight is not None:
        return True
    spec = getattr(x, "element_spec", None)
    return isinstance(spec, tuple) and len(spec) == 3


def is_finite_dataset(x: Any) -> bool:
    """True for a ``tf.data.Dataset`` of known, finite length (one epoch = one pass)."""
    cardinality = getattr(x, "cardinality", None)
    if cardinality is None or not hasattr(x, "element_spec"):
        return False
    try:
        return int(cardinality()) > 0
    except (TypeError, ValueError):
        return False


class PassSizeCheck(keras.callbacks.Callback):
    """For a finite pipeline, checks that one epoch (one pass) holds ``dataset_size`` rows.

    The accountant takes N from ``dataset_size``: a pass of fewer rows than N makes each
    example's share of the updates larger than accounted, so training stops, loudly, and
    the record keeps the pass size actually seen. Rows are counted by the DP step.
    """

    def __init__(self, segment: TrainingSegment) -> None:
        super().__init__()
        self.segment = segment
        self._start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.model._dp_counters()["examples"]

    def on_epoch_end(self, epoch, logs=None):
        rows = self.model._dp_counters()["examples"] - self._start
        declared = self.segment.dataset_size
        if rows == declared:
            return
        if rows < declared:
            self.segment.dataset_size = rows  # the accountant now uses what was seen
        raise PrivacyError(
            f"fit(dataset_size={declared}) but one pass over the dataset held {rows} "
            "examples. The accountant needs the true number of examples per pass: pass "
            f"dataset_size={rows} (the record now uses {self.segment.dataset_size})."
            + (
                " A pass with more rows than dataset_size repeats examples, so the recorded "
                "epsilon does not hold for this run."
                if rows > declared
                else ""
            )
        )
