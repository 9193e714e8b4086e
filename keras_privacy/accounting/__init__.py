"""Privacy accounting for DP-SGD, free of any deep-learning framework.

Imports only numpy, scipy and Google's ``dp_accounting``, whose RDP and PLD accountants
and DpEvents do the math. This package models a DP-SGD run as DpEvents (see
:mod:`~keras_privacy.accounting.events`), plans runs (epsilon, noise calibration, budget
inverses), writes the privacy statement, and keeps a JSON-serialisable ledger.

The names below are imported on first use, so that the argument checks
(:mod:`~keras_privacy.accounting._checks`) load without ``dp_accounting`` (about a second):
the command line validates its arguments before it imports the accountants.
"""

from __future__ import annotations

from keras_privacy._lazy import lazy_getattr

# public name -> submodule that defines it
_LAZY = {
    "GroupPrivacyEpsilon": "accountants",
    "delta_for_event": "accountants",
    "epsilon_for_event": "accountants",
    "group_privacy_epsilon": "accountants",
    "make_accountant": "accountants",
    "DatasetSizeUnknownError": "events",
    "dp_sgd_event": "events",
    "poisson_dp_sgd_event": "events",
    "segment_event": "events",
    "shuffle_dp_sgd_event": "events",
    "training_record_event": "events",
    "LedgerEntry": "ledger",
    "PrivacyLedger": "ledger",
    "DpSgdPlan": "planning",
    "compute_epsilon": "planning",
    "compute_max_epochs": "planning",
    "compute_max_steps": "planning",
    "compute_noise_multiplier": "planning",
    "epsilon_of_record": "record_accounting",
    "max_updates_within_budget": "record_accounting",
    "DpSgdPrivacyReport": "statement",
    "compute_dp_sgd_privacy_report": "statement",
    "compute_dp_sgd_privacy_statement": "statement",
}

__all__ = sorted(_LAZY)

_SUBMODULES = frozenset(_LAZY.values()) | {"_checks"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals(), _SUBMODULES)


def __dir__() -> list[str]:
    return __all__
