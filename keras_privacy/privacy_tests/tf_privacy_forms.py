"""Results in TF Privacy's forms, for code written against TF Privacy's privacy tests.

:class:`DataSize` and :class:`EpsilonLowerBoundValue` are the forms in which TF Privacy's
users build a ``SingleAttackResult`` by hand; :func:`get_flattened_attack_metrics` flattens
results for logging.

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

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

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


class DataSize(NamedTuple):
    """Numbers of members and non-members (TF Privacy's form of ``data_size``)."""

    ntrain: int
    ntest: int


@dataclasses.dataclass
class EpsilonLowerBoundValue:
    """TF Privacy's ε lower bounds: an array of bounds per method (its ``BoundMethod``).

    keras-privacy computes one bound per attack; this form is accepted for results built by
    hand. The reported bound is the largest entry of the array with the largest mean (the
    array TF Privacy reports), NaN when every array is empty.
    """

    bounds: Mapping[Any, np.ndarray]

    def get_max_epsilon_bounds(self) -> np.ndarray:
        """The array of bounds with the largest mean (empty if all are empty)."""
        arrays = [np.asarray(b, float) for b in self.bounds.values() if np.size(b)]
        if not arrays:
            return np.array([])
        return arrays[int(np.argmax([a.mean() for a in arrays]))]

    def get_max_epsilon(self) -> float:
        best = self.get_max_epsilon_bounds()
        return float(best.max()) if best.size else float("nan")

    def __str__(self) -> str:
        values = ", ".join(f"{v:.4f}" for v in self.get_max_epsilon_bounds())
        return f"EpsilonLowerBoundValue([{values}])"


def get_flattened_attack_metrics(
    results: Any,
) -> tuple[list[str], list[str], list[str], list[float]]:
    """Every result's attacker advantage, AUC and PPV as four parallel lists.

    ``results`` is an ``AttackResults``. Returns ``(attack types, slices, metric names,
    values)``: for each ``SingleAttackResult`` three entries, named ``"adv"``, ``"auc"``,
    ``"ppv"`` (TF Privacy's form, e.g. for logging each metric as a scalar).
    """
    types: list[str] = []
    slices: list[str] = []
    names: list[str] = []
    values: list[float] = []
    for result in results.single_attack_results:
        types += [str(result.attack_type)] * 3
        slices += [str(result.slice_spec)] * 3
        names += ["adv", "auc", "ppv"]
        values += [result.get_attacker_advantage(), result.get_auc(), result.get_ppv()]
    return types, slices, names, [float(v) for v in values]
