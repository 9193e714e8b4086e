"""Reference computations for the DP-mechanics tests: slow, obvious, per-example loops."""

import keras
import numpy as np
import tensorflow as tf


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def reference_clipped_sum(model, loss_fn, x, y, clip):
    """sum_i clip_C(grad of loss(example i)), one example at a time with GradientTape."""
    n = len(keras.tree.flatten(x)[0])
    total = [np.zeros(v.shape, "float64") for v in model.trainable_variables]
    for i in range(n):
        xi = keras.tree.map_structure(lambda a, i=i: a[i : i + 1], x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y[i : i + 1], model(xi, training=True)))
            loss += sum(model.losses) if model.losses else 0.0
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.convert_to_tensor(g).numpy().astype("float64") for g in grads]
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
    return [g.numpy() for g in batch.grad_sum]
