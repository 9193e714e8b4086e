"""``tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy`` (older tutorials call
``compute_dp_sgd_privacy.compute_dp_sgd_privacy(...)``)."""

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
