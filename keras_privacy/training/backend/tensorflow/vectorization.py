"""A vectorized per-example rule for convolution filter gradients under ``tf.vectorized_map``.

TensorFlow's vectorizer (pfor) has no batched rule for ``Conv2DBackpropFilter`` when the
layer input differs per example: it falls back to a ``while_loop`` over the examples,
which made per-example gradients of convolutional models several times slower.
Conv1D and Conv2D both reach this op.

The rule here computes, for every example ``i`` at once::

    dW_i[kh, kw, cin, cout] = sum_{p} patches_i[p, (kh, kw, cin)] * dy_i[p, cout]

with ``tf.image.extract_patches`` (the same windows, strides, dilations and SAME/VALID
padding as the convolution) and one batched matmul. It is exact (the same sums in another
order). It is installed only while the DP engine traces its vectorized map
(:func:`vectorized_conv_filter_gradients`), never left in TensorFlow's registry, and
anything it does not cover (NCHW, explicit padding, unknown filter sizes, an unknown
TensorFlow layout) goes to TensorFlow's own rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorflow as tf

try:  # TensorFlow's vectorizer internals; without them the engine runs as before.
    from tensorflow.python.framework import tensor_util
    from tensorflow.python.ops.parallel_for import pfor as _pfor

    _REGISTRY = _pfor._pfor_converter_registry
    _OP = "Conv2DBackpropFilter"
    _ORIGINAL = _REGISTRY.get(_OP)
except (ImportError, AttributeError):  # pragma: no cover - depends on the TF version
    _REGISTRY = _ORIGINAL = None


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _per_example_filter_gradient(pfor_input):
    inputs, inputs_stacked, _ = pfor_input.input(0)
    filter_sizes = tensor_util.constant_value(pfor_input.unstacked_input(1))
    data_format = _as_str(pfor_input.get_attr("data_format"))
    padding = _as_str(pfor_input.get_attr("padding"))
    if (
        not inputs_stacked
        or filter_sizes is None
        or data_format != "NHWC"
        or padding not in ("SAME", "VALID")
    ):
        return _ORIGINAL(pfor_input)
    kh, kw, cin, cout = (int(v) for v in filter_sizes)
    grads = pfor_input.stacked_input(2)  # [examples, n, Ho, Wo, cout]
    strides = list(pfor_input.get_attr("strides"))
    dilations = list(pfor_input.get_attr("dilations"))
    examples = pfor_input.pfor.loop_len_vector[0]
    shape = tf.shape(inputs)  # [examples, n, H, W, cin]
    images = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
    patches = tf.image.extract_patches(
        images, sizes=[1, kh, kw, 1], strides=strides, rates=dilations, padding=padding
    )
    patches = tf.reshape(patches, tf.stack([examples, -1, kh * kw * cin]))
    grads = tf.reshape(grads, tf.stack([examples, -1, cout]))
    kernel_grads = tf.matmul(patches, grads, transpose_a=True)
    return _pfor.wrap(tf.reshape(kernel_grads, tf.stack([examples, kh, kw, cin, cout])), True)


@contextlib.contextmanager
def vectorized_conv_filter_gradients() -> Iterator[None]:
    """While active, ``tf.vectorized_map`` vectorizes per-example conv filter gradients."""
    if _REGISTRY is None or _ORIGINAL is None:
        yield
        return
    _REGISTRY[_OP] = _per_example_filter_gradient
    try:
        yield
    finally:
        _REGISTRY[_OP] = _ORIGINAL
