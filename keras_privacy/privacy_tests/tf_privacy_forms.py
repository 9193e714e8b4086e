"""Results in TF Privacy's forms, for code written against TF Privacy's privacy tests.

:func:`tf_privacy_dataframe` gives ``AttackResults.calculate_pd_dataframe()`` the column
set and order TF Privacy uses:

    slice feature, slice value, train size, test size, attack type,
    Attacker advantage, Positive predictive value, AUC,
    Epsilon lower bound_1, ..., Epsilon lower bound_5

TF Privacy fills ``Epsilon lower bound_1..._5`` with the five largest of its bounds over
thresholds. keras-privacy computes one bound per attack (a Clopper-Pearson bound at a
threshold chosen on held-out scores, see
:func:`~keras_privacy.privacy_tests.metrics.compute_epsilon_lower_bound`), which goes in
``_1``; ``_2`` to ``_5`` are NaN, as TF Privacy writes when it has fewer than five.
"""

from __future__ import annotations

from typing import Any

#: How many epsilon lower bound columns TF Privacy's DataFrame has.
EPSILON_COLUMNS = 5

TF_PRIVACY_COLUMNS = [
    "slice feature",
    "slice value",
    "train size",
    "test size",
    "attack type",
    "Attacker advantage",
    "Positive predictive value",
    "AUC",
] + [f"Epsilon lower bound_{i + 1}" for i in range(EPSILON_COLUMNS)]


def tf_privacy_dataframe(results: Any) -> Any:
    """``results`` (an ``AttackResults``) as a DataFrame with TF Privacy's columns."""
    import pandas as pd

    rows = []
    for result in results.single_attack_results:
        spec = result.slice_spec
        if spec.entire_dataset:
            feature, value = str(spec), ""
        else:
            feature, value = spec.feature.value, str(spec.value)
        bounds = [result.get_epsilon_lower_bound()] + [float("nan")] * (EPSILON_COLUMNS - 1)
        rows.append(
            [
                str(feature),
                value,
                result.data_size["train"],
                result.data_size["test"],
                str(result.attack_type),
                float(result.get_attacker_advantage()),
                float(result.get_ppv()),
                float(result.get_auc()),
                *bounds,
            ]
        )
    return pd.DataFrame(rows, columns=TF_PRIVACY_COLUMNS)
