"""Which multi-device settings DP training supports, and the refusal of every other.

DP-SGD across devices has exact rules, and a data-parallel setting that breaks one of them
trains with a privacy guarantee that does not hold. With ``R`` replicas each holding a
shard of the logical batch, one update must be::

    g = ( sum over all replicas r of  sum_{u in shard r} clip_C(grad_u)
          + N(0, (sigma C)^2 I) ) / B_global

* each example clipped once, on the replica that holds it, and the clipped sums added
  across replicas (an all-reduce);
* the noise added exactly once per global update -- not once per replica (summed:
  ``sqrt(R)`` times the noise; averaged: ``1 / sqrt(R)`` of it, which breaks the
  guarantee), nor the same draw twice across updates;
* the divisor ``B_global`` the global (expected) batch, and the Poisson sample global:
  each example of the whole data set joins each update with probability ``q = B / N``;
* the accountant told the global ``N`` and ``B``.

What is supported, per backend (:func:`check_distribution`):

* **TensorFlow**: the default (no) strategy, ``tf.distribute.MirroredStrategy``
  (several devices of one host) and ``tf.distribute.MultiWorkerMirroredStrategy`` with
  one device per worker process, for Poisson-sampled arrays: every worker is given all N
  rows and samples only its shard (rows ``w, w + W, ...``) with the global ``q``. The
  step (``backend/tensorflow/trainer.py``) all-reduces the clipped sums, draws the noise
  once from a key identical on every replica (a mirrored variable), and divides the
  identical result by ``R`` before the optimizer's own summing all-reduce, so the applied
  update is ``g`` exactly once.
* **JAX**: no distribution, or ``keras.distribution.DataParallel`` in one process. The
  jitted step sees the global batch (sharded along the batch axis; XLA inserts the
  all-reduce) and draws one global noise array from a replicated key.
* **PyTorch**: Keras's torch backend has no distribution API; a ``keras.distribution``
  or an initialised ``torch.distributed`` process group is refused.

Everything else -- other ``tf.distribute`` strategies (parameter servers, TPUs, central
storage, one-device), several devices per worker, multi-worker training of pipelines,
shuffled batches or ``train_on_batch``, ``ModelParallel`` / layout maps, multi-process JAX --
raises :class:`~keras_privacy.training.errors.PrivacyError` naming what is supported:
never silent training under rules that were not checked. The check is an allow-list of
exact types (a subclass may change how values are reduced) plus the replica count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from keras_privacy.training.errors import PrivacyError

SUPPORTED = (
    "keras-privacy trains with DP on: one device (any backend); tf.distribute."
    "MirroredStrategy (TensorFlow, the devices of one host); tf.distribute."
    "MultiWorkerMirroredStrategy (TensorFlow, one device per worker, Poisson-sampled "
    "arrays); keras.distribution.DataParallel (JAX, one process). See docs/distributed.md."
)


@dataclasses.dataclass(frozen=True)
class DistributionPlan:
    """The data-parallel setting a DP step runs under.

    Attributes:
      kind: ``"single"``, ``"mirrored"``, ``"multi_worker"`` (TensorFlow) or
        ``"data_parallel"`` (JAX).
      replicas: R, the devices a logical batch is split across (1 for ``"single"``).
      workers: the processes that each sample their own shard of the data (1 but for
        ``"multi_worker"``), and ``worker_index`` this one's place among them.
    """

    kind: str = "single"
    replicas: int = 1
    workers: int = 1
    worker_index: int = 0


def check_distribution(model: Any) -> DistributionPlan:
    """The supported data-parallel setting ``model`` would train under, or a
    :class:`PrivacyError` naming what is supported."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_plan(model)
    if backend == "jax":
        return _jax_plan()
    _refuse_keras_distribution(backend)
    return _torch_plan()


def _refuse(setting: str, why: str = "") -> PrivacyError:
    return PrivacyError(
        f"keras-privacy cannot train with DP under {setting}{': ' + why if why else ''}. "
        f"{SUPPORTED} Training under an unchecked setting could clip, noise, sample or "
        "account differently from what the privacy guarantee assumes, so it is refused."
    )


def _tensorflow_plan(model: Any) -> DistributionPlan:
    import tensorflow as tf

    _refuse_keras_distribution("tensorflow")
    # Keras's TensorFlow trainer runs the step under the model's strategy (the one it was
    # built under) or else the one in scope.
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if type(strategy).__name__ == "_DefaultDistributionStrategy":
        return DistributionPlan()
    if type(strategy) is tf.distribute.MirroredStrategy:
        return DistributionPlan("mirrored", int(strategy.num_replicas_in_sync))
    if type(strategy) is tf.distribute.MultiWorkerMirroredStrategy:
        return _multi_worker_plan(strategy)
    name = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    if "ParameterServer" in name:
        why = "parameter servers apply each worker's update asynchronously"
    elif "TPU" in name:
        why = "TPU strategies are untested"
    else:
        why = "only MirroredStrategy is supported among tf.distribute strategies"
    raise _refuse(f"the tf.distribute strategy {type(strategy).__name__}", why)


def _multi_worker_plan(strategy: Any) -> DistributionPlan:
    """``MultiWorkerMirroredStrategy`` with one device per worker: each worker samples its
    own shard of the rows (see :class:`~keras_privacy.training.sampling.PoissonBatches`)."""
    from tensorflow.python.distribute import multi_worker_util

    local = len(strategy.extended.worker_devices)
    if local != 1:
        raise _refuse(
            f"MultiWorkerMirroredStrategy with {local} devices per worker",
            "a worker's Poisson shard is drawn for one device; use one device per worker "
            "(one process per device)",
        )
    resolver = strategy.cluster_resolver
    spec = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    if not spec.jobs:  # no TF_CONFIG: one worker, one device
        return DistributionPlan()
    workers = multi_worker_util.worker_count(spec, resolver.task_type)
    index = multi_worker_util.id_in_cluster(spec, resolver.task_type, resolver.task_id)
    replicas = int(strategy.num_replicas_in_sync)
    if workers != replicas:  # pragma: no cover - one device each was checked above
        raise _refuse(f"{workers} workers with {replicas} replicas in all")
    return DistributionPlan("multi_worker", replicas, workers, int(index))


def _jax_plan() -> DistributionPlan:
    import jax

    if jax.process_count() > 1:
        raise _refuse(
            f"multi-process JAX ({jax.process_count()} processes)",
            "each process would sample and account only its own share",
        )
    distribution = keras.distribution.distribution()
    if distribution is None:
        return DistributionPlan()
    if type(distribution) is keras.distribution.DataParallel:
        devices = int(distribution.device_mesh.devices.size)
        return DistributionPlan("data_parallel" if devices > 1 else "single", devices)
    raise _refuse(
        f"keras.distribution.{type(distribution).__name__}",
        "sharding variables (ModelParallel / a LayoutMap) is not supported: the per-example "
        "norms and the noise are not proven on sharded variables",
    )


def _refuse_keras_distribution(backend: str) -> None:
    distribution = keras.distribution.distribution()
    if distribution is not None:
        raise _refuse(
            f"keras.distribution.{type(distribution).__name__} on the {backend} backend",
            "keras.distribution is Keras's JAX API",
        )


def _torch_plan() -> DistributionPlan:
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise _refuse(
            "an initialised torch.distributed process group",
            "Keras's torch backend has no distribution API, so each process would clip, "
            "noise and account its own batch as if it were alone",
        )
    return DistributionPlan()


__all__ = ["SUPPORTED", "DistributionPlan", "check_distribution"]
