"""``tensorflow_privacy.privacy.privacy_tests.utils``: TF Privacy's loss helpers.

keras-privacy's :class:`~keras_privacy.privacy_tests.AttackInputData` computes the
cross-entropy itself (capped at −log 1e-8 and multiplied by the sample weights, as TF
Privacy's ``log_loss``) and takes any other loss as ``loss_train``/``loss_test``. Only
``LossFunction`` (the names) is provided here; every other name raises
:class:`~keras_privacy.compat._unsupported.UnsupportedError` on use.
"""

from __future__ import annotations

import enum

from keras_privacy.compat._unsupported import module_getattr, unsupported

_MODULE = "privacy.privacy_tests.utils"
_INSTEAD = (
    "AttackInputData computes the (weighted, capped) cross-entropy from logits or "
    "probabilities and labels; for any other loss pass loss_train/loss_test computed with it."
)

__all__ = ["LossFunction", "get_loss", "log_loss", "multilabel_bce_loss", "squared_loss"]


class LossFunction(enum.Enum):
    """TF Privacy's loss names."""

    CROSS_ENTROPY = "cross_entropy"
    SQUARED = "squared"


log_loss = unsupported(_MODULE, "log_loss", _INSTEAD)
squared_loss = unsupported(_MODULE, "squared_loss", _INSTEAD)
multilabel_bce_loss = unsupported(_MODULE, "multilabel_bce_loss", _INSTEAD)
get_loss = unsupported(_MODULE, "get_loss", _INSTEAD)
__getattr__ = module_getattr(_MODULE, _INSTEAD)
