"""Reference computations for the DP-mechanics tests: slow, obvious, per-example loops.

Backend-neutral: :func:`gradients` is ``tf.GradientTape`` on TensorFlow, ``jax.grad``
over a :class:`keras.StatelessScope` on JAX and ``torch.autograd.grad`` on PyTorch.
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

tensorflow_only = pytest.mark.tensorflow_only


def core_cases(names, core):
    """``names`` as pytest params, those not in ``core`` marked ``extended`` (in the
    default suite on TensorFlow; with ``-m slow`` on the other backends)."""
    return [
        pytest.param(name, marks=() if name in core else pytest.mark.extended) for name in names
    ]


def to_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def gradients(model, loss_fn):
    """The gradients of ``loss_fn()`` (which calls ``model``) w.r.t. its trainable
    variables, as float64 NumPy arrays."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        sources = [v.value for v in variables]
        grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [tf.convert_to_tensor(g).numpy().astype("float64") for g in grads]
    if BACKEND == "jax":
        import jax
        from keras.src.backend.common.stateless_scope import StatelessScope

        def f(values):
            mapping = list(zip(variables, values, strict=True))
            with StatelessScope(state_mapping=mapping, collect_losses=True):
                return loss_fn()

        grads = jax.grad(f)([v.value for v in variables])
        return [np.asarray(g, "float64") for g in grads]
    if BACKEND == "torch":
        import torch

        loss = loss_fn()
        grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
        return [
            np.zeros(v.shape) if g is None else g.detach().numpy().astype("float64")
            for v, g in zip(variables, grads, strict=True)
        ]
    raise NotImplementedError(BACKEND)


def weights(model):
    return [to_numpy(v.value).copy() for v in model.trainable_variables]


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def data_losses(model):
    """The losses the last call added from its data (activity regularizers, ``add_loss``):
    every layer's own losses, without the weight regularizers' terms."""
    return [loss for layer in model._flatten_layers() for loss in layer._get_own_losses()]


def regularization_gradient(model):
    """d R / d w of the weight regularizers (``variable.regularizer``), float64 NumPy."""
    regularized = [v for v in model.trainable_variables if v.regularizer is not None]
    if not regularized:
        return [np.zeros(v.shape) for v in model.trainable_variables]
    return gradients(model, lambda: sum(keras.ops.sum(v.regularizer(v)) for v in regularized))


def reference_clipped_sum(model, loss_fn, x, y, clip):
    """sum_i clip_C(grad of loss(example i)), one example at a time. Each example's loss
    holds the losses computed from its data (activity regularizers, ``add_loss``) but not
    the weight regularizers, which the DP step adds after clipping."""
    n = len(keras.tree.flatten(x)[0])
    total = [np.zeros(v.shape, "float64") for v in model.trainable_variables]
    for i in range(n):
        xi = keras.tree.map_structure(lambda a, i=i: a[i : i + 1], x)

        def loss(xi=xi, i=i):
            value = keras.ops.mean(loss_fn(y[i : i + 1], model(xi, training=True)))
            extra = data_losses(model)
            return value + sum(extra) if extra else value

        grads = gradients(model, loss)
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        factor = min(1.0, clip / norm) if np.isfinite(norm) else 0.0
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total


def sgd_step_sum(model, x, y, batch_size):
    """Run one DP train_on_batch with SGD(lr=1) and return the implied clipped sum."""
    before = weights(model)
    model.train_on_batch(x, y)
    after = weights(model)
    return [(b - a) * batch_size for b, a in zip(before, after, strict=True)]


def engine_clipped_sum(private, x, y, num_units=None):
    """The DP engine's clipped sum for a batch, exactly as the training step computes it."""
    batch = private._dp_clipped(x, y, None, num_units=num_units)
    return [to_numpy(g) for g in batch.grad_sum]


def unit_gradients(private, x, y, num_units=None):
    """Each unit's gradient from the vectorized engine (list per variable, unit axis
    first), advancing random layers' seeds as a step does."""
    engine = private._dp_engine
    if BACKEND in ("tensorflow", "torch"):  # eager-style engines: read the variables
        grads = engine.unit_gradients(private, x, y, None, num_units=num_units)[0]
        return [to_numpy(g) for g in grads]
    non_trainable = private.non_trainable_variables
    grads, _, _, new_values = engine.unit_gradients(
        private,
        [v.value for v in private.trainable_variables],
        [v.value for v in non_trainable],
        x,
        y,
        None,
        num_units=num_units,
    )
    for variable, value in zip(non_trainable, new_values, strict=True):
        variable.assign(value)
    return [np.asarray(g) for g in grads]


def engine_batch(private, engine, x, y, sample_weight, **kwargs):
    """An engine's ClippedBatch for a batch at the model's current weights, eagerly.

    ``engine`` is a name in ``private._dp_engines`` or an engine object."""
    engine = private._dp_engines[engine] if isinstance(engine, str) else engine
    if BACKEND in ("tensorflow", "torch"):
        return engine.clipped_gradient_sum(private, x, y, sample_weight, **kwargs)
    batch, _ = engine.clipped_gradient_sum(
        private,
        [v.value for v in private.trainable_variables],
        [v.value for v in private.non_trainable_variables],
        x,
        y,
        sample_weight,
        **kwargs,
    )
    return batch
