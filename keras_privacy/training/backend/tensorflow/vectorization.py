"""Rules for TensorFlow's vectorizer (pfor), installed only while the DP engine traces.

Two rules replace TensorFlow's own under ``tf.vectorized_map``:

1. **Convolution filter gradients** (speed).
2. **Batched matmul with a broadcast operand** (correctness). Under the vectorizer an
   ``EinsumDense`` / ``MultiHeadAttention`` matmul ``[m, k] @ [k, n]`` becomes
   ``[units, 1, m, k] @ [k, n]``. TensorFlow 2.21's oneDNN kernel for that broadcast batch
   matmul reads past the end of the right operand when it runs on more than one thread
   (tensorflow/tensorflow#117700; the fix, PR #120199, is not in 2.21): the units after the
   first thread's share get wrong gradients computed from out-of-bounds memory, which may
   hold other examples' data, or the process aborts. The rule computes the same product
   as one 2-D matmul (right operand 2-D, as in these layers) or with the broadcast made
   explicit (equal batch shapes, which the kernel handles correctly).

Convolution filter gradients:

TensorFlow's vectorizer (pfor) has no batched rule for ``Conv2DBackpropFilter`` when the
layer input differs per example: it falls back to a ``while_loop`` over the examples,
which made per-example gradients of convolutional models several times slower.
Conv1D and Conv2D both reach this op.

The rule here computes, for every example ``i`` at once::

    dW_i[kh, kw, cin, cout] = sum_{p} patches_i[p, (kh, kw, cin)] * dy_i[p, cout]

with ``tf.image.extract_patches`` (the same windows, strides, dilations and SAME/VALID
padding as the convolution) and one batched matmul. It is exact (the same sums in another
order). It is installed only while the DP engine traces its vectorized map
(:func:`vectorizer_rules`), never left in TensorFlow's registry, and
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
    _MATMUL_OP = "BatchMatMulV2"
    _ORIGINAL_MATMUL = _REGISTRY.get(_MATMUL_OP)
except (ImportError, AttributeError):  # pragma: no cover - depends on the TF version
    _REGISTRY = _ORIGINAL = _ORIGINAL_MATMUL = None
    _OP = _MATMUL_OP = ""


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: Below this many input channels the identity convolution extracts patches faster.
_IDENTITY_CONV_MAX_CHANNELS = 8


def image_patches(images, size, strides, dilation_rate, padding):
    """``[N, H, W, C]`` → ``[N, Ho, Wo, kh * kw * C]``: each output position's input
    window, features in ``(kh, kw, C)`` order, for the windows of a convolution with these
    sizes, strides, dilations and ``"valid"``/``"same"`` padding.

    Two exact ways, picked by the channel count: ``tf.image.extract_patches`` copies
    element by element and is slow for few channels (on one CPU core, batch 250: 15.6 ms
    for 28x28x1 with 8x8 windows, 56 ms for 28x28x3 with 3x3); a convolution with a 0/1
    identity kernel (the same sums, each of one nonzero product) took 6.2 and 5.1 ms
    there, but grows with ``(kh kw C)^2`` and lost from 8 channels on (16.3 against
    6.1 ms for 13x13x16 with 4x4 windows). Dilated windows always use the copy.
    """
    channels = images.shape[-1]
    kh, kw = size
    if (
        channels is not None
        and channels < _IDENTITY_CONV_MAX_CHANNELS
        and (tuple(dilation_rate) == (1, 1))
    ):
        features = kh * kw * channels
        kernel = tf.reshape(tf.eye(features, dtype=images.dtype), [kh, kw, channels, features])
        return tf.nn.conv2d(images, kernel, strides=[1, *strides, 1], padding=padding.upper())
    return tf.image.extract_patches(
        images,
        sizes=[1, kh, kw, 1],
        strides=[1, *strides, 1],
        rates=[1, *dilation_rate, 1],
        padding=padding.upper(),
    )


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
    images.set_shape([None, None, None, cin])
    patches = image_patches(images, (kh, kw), strides[1:3], dilations[1:3], padding)
    patches = tf.reshape(patches, tf.stack([examples, -1, kh * kw * cin]))
    grads = tf.reshape(grads, tf.stack([examples, -1, cout]))
    kernel_grads = tf.matmul(patches, grads, transpose_a=True)
    return _pfor.wrap(tf.reshape(kernel_grads, tf.stack([examples, kh, kw, cin, cout])), True)


def _batch_matmul_without_broadcast(pfor_input):
    """``BatchMatMulV2`` under the vectorizer, never as a broadcast batch matmul."""
    pfor_input.expanddim_inputs_for_broadcast()
    x, y = pfor_input.input(0)[0], pfor_input.input(1)[0]
    adj_x, adj_y = pfor_input.get_attr("adj_x"), pfor_input.get_attr("adj_y")
    if y.shape.rank == 2 and not adj_x:
        # [..., m, k] @ [k, n] is one [(...) m, k] @ [k, n] matmul: no copy, no broadcast.
        k = tf.shape(x)[-1]
        out = tf.matmul(tf.reshape(x, [-1, k]), y, adjoint_b=adj_y)
        out = tf.reshape(out, tf.concat([tf.shape(x)[:-1], tf.shape(out)[-1:]], axis=0))
    else:
        batch = tf.broadcast_dynamic_shape(tf.shape(x)[:-2], tf.shape(y)[:-2])
        x = tf.broadcast_to(x, tf.concat([batch, tf.shape(x)[-2:]], axis=0))
        y = tf.broadcast_to(y, tf.concat([batch, tf.shape(y)[-2:]], axis=0))
        out = tf.matmul(x, y, adjoint_a=adj_x, adjoint_b=adj_y)
    return _pfor.wrap(out, True)


@contextlib.contextmanager
def vectorizer_rules() -> Iterator[None]:
    """While active, ``tf.vectorized_map`` uses this module's rules (see the docstring)."""
    candidates = (
        (_OP, _per_example_filter_gradient, _ORIGINAL),
        (_MATMUL_OP, _batch_matmul_without_broadcast, _ORIGINAL_MATMUL),
    )
    rules = [(op, rule, original) for op, rule, original in candidates if original]
    for op, rule, _ in rules:
        _REGISTRY[op] = rule
    try:
        yield
    finally:
        for op, _, original in rules:
            _REGISTRY[op] = original
