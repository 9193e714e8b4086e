"""Privacy auditing: empirical lower bounds on the ε of DP training.

The core takes canary scores in and gives bounds out, and imports no deep-learning
framework:

* :func:`one_run_audit` — Steinke, Nasr & Jagielski (2023): m canaries, each included
  with probability 1/2, in one training run; guesses with abstention; the ε their
  theorem refutes at a stated confidence.
* :func:`multi_run_audit` / :func:`run_multi_run_audit` — one canary, many runs with and
  without it; Clopper–Pearson bounds (the project's
  :func:`~keras_privacy.privacy_tests.compute_epsilon_lower_bound`), optionally against
  the Gaussian privacy profile the accountant claims (Nasr et al. 2023).
* :func:`claimed_epsilon` — the accountant's ε for a canary present in every update.

The Keras adapters (white-box gradient canaries injected into the DP step, input-space
canaries) live in :mod:`keras_privacy.auditing.keras_adapters` and are imported only when
used. An audit gives a *lower* bound: a value above the accountant's ε proves a bug; a
low value proves nothing about privacy.
"""

from __future__ import annotations

import importlib
from typing import Any

from keras_privacy.auditing.multi_run import multi_run_audit, run_multi_run_audit
from keras_privacy.auditing.one_run import (
    guesses_from_scores,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from keras_privacy.auditing.results import AuditResult
from keras_privacy.auditing.theory import claimed_epsilon, gaussian_canary_scores

_KERAS = {
    "GradientCanaries": "keras_privacy.auditing.keras_adapters",
    "white_box_audit": "keras_privacy.auditing.keras_adapters",
    "input_space_audit": "keras_privacy.auditing.keras_adapters",
    "white_box_multi_run_audit": "keras_privacy.auditing.keras_adapters",
}

__all__ = [
    "AuditResult",
    "claimed_epsilon",
    "gaussian_canary_scores",
    "guesses_from_scores",
    "multi_run_audit",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "run_multi_run_audit",
    *_KERAS,
]


def __getattr__(name: str) -> Any:
    module = _KERAS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_privacy.auditing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
