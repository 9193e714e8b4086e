"""Backend selection: the one place that knows which Keras backend is running.

Each backend has a package here with the same module names (``engine``, ``trainer``),
as Keras keeps ``keras/src/backend/<name>/``. Everything else in
:mod:`keras_privacy.training` is backend-neutral.
"""

from __future__ import annotations

import sys

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

_name = keras.backend.backend()

if _name == "tensorflow":
    from keras_privacy.training.backend.tensorflow.trainer import (
        TensorFlowDPTrainer as DPTrainer,
    )
elif _name == "jax":
    from keras_privacy.training.backend.jax.trainer import JAXDPTrainer as DPTrainer
elif _name == "torch":
    from keras_privacy.training.backend.torch.trainer import TorchDPTrainer as DPTrainer
else:  # pragma: no cover - exercised only under other KERAS_BACKEND values

    class DPTrainer:  # type: ignore[no-redef]
        """Stand-in that refuses to train: DP training is not implemented here yet."""

        def make_train_function(self, force=False):
            raise NotImplementedError(
                f"keras-privacy's DP training supports the {SUPPORTED_BACKENDS} backend(s); "
                f"this process runs Keras on {_name!r}. Set KERAS_BACKEND to one of them. "
                "(Accounting and privacy testing work with any backend.)"
            )


__all__ = ["DPTrainer", "SUPPORTED_BACKENDS"]


# Keras may have been imported first by this package's own imports, too early for the DP
# classes to register with it (see ``keras_privacy._AfterKerasImport``): register them now.
sys.modules["keras_privacy"].finish_deferred_registration()
