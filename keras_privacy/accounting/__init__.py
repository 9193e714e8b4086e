"""Privacy accounting for DP-SGD, free of any deep-learning framework.

Imports only numpy, scipy and Google's ``dp_accounting``, whose RDP and PLD accountants
and DpEvents do the math. This package models a DP-SGD run as DpEvents (see
:mod:`~keras_privacy.accounting.events`), plans runs (epsilon, noise calibration, budget
inverses), writes the privacy statement, and keeps a JSON-serialisable ledger.
"""

from keras_privacy.accounting.accountants import (
    GroupPrivacyEpsilon,
    delta_for_event,
    epsilon_for_event,
    group_privacy_epsilon,
    make_accountant,
)
from keras_privacy.accounting.events import (
    DatasetSizeUnknownError,
    dp_sgd_event,
    poisson_dp_sgd_event,
    segment_event,
    shuffle_dp_sgd_event,
    training_record_event,
)
from keras_privacy.accounting.ledger import LedgerEntry, PrivacyLedger
from keras_privacy.accounting.planning import (
    DpSgdPlan,
    compute_epsilon,
    compute_max_epochs,
    compute_max_steps,
    compute_noise_multiplier,
)
from keras_privacy.accounting.record_accounting import (
    epsilon_of_record,
    max_updates_within_budget,
)
from keras_privacy.accounting.statement import (
    DpSgdPrivacyReport,
    compute_dp_sgd_privacy_report,
    compute_dp_sgd_privacy_statement,
)

__all__ = [
    "DatasetSizeUnknownError",
    "DpSgdPlan",
    "DpSgdPrivacyReport",
    "GroupPrivacyEpsilon",
    "LedgerEntry",
    "PrivacyLedger",
    "compute_dp_sgd_privacy_report",
    "compute_dp_sgd_privacy_statement",
    "compute_epsilon",
    "compute_max_epochs",
    "compute_max_steps",
    "compute_noise_multiplier",
    "delta_for_event",
    "dp_sgd_event",
    "epsilon_for_event",
    "epsilon_of_record",
    "group_privacy_epsilon",
    "make_accountant",
    "max_updates_within_budget",
    "poisson_dp_sgd_event",
    "segment_event",
    "shuffle_dp_sgd_event",
    "training_record_event",
]
