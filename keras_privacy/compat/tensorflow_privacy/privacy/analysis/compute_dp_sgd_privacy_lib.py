"""``tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib``."""

from __future__ import annotations

from keras_privacy.accounting.tf_privacy_forms import (  # noqa: F401
    AccountantType,
    compute_dp_sgd_privacy,
    compute_dp_sgd_privacy_statement,
)

__all__ = [
    "AccountantType",
    "compute_dp_sgd_privacy",
    "compute_dp_sgd_privacy_statement",
]

# TF Privacy's private helpers, importable so that code reaching for them loads
from keras_privacy.compat._unsupported import unsupported  # noqa: E402

_INSTEAD = (
    "It is a private helper of TF Privacy; use compute_dp_sgd_privacy_statement(...) or "
    "keras_privacy.accounting.compute_epsilon(...) (max_examples_per_user: the statement)."
)
_MODULE = "privacy.analysis.compute_dp_sgd_privacy_lib"
_compute_dp_sgd_example_privacy = unsupported(_MODULE, "_compute_dp_sgd_example_privacy", _INSTEAD)
_compute_dp_sgd_user_privacy = unsupported(_MODULE, "_compute_dp_sgd_user_privacy", _INSTEAD)
_logexpm1 = unsupported(_MODULE, "_logexpm1", _INSTEAD)
