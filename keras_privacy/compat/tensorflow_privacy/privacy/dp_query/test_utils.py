"""TF Privacy's ``privacy.dp_query.test_utils``: run a query on one sample (its tests use
it; so can yours)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keras_privacy.queries import DPQuery

__all__ = ["run_query"]


def run_query(query: DPQuery, records: Iterable[Any], global_state: Any = None) -> tuple:
    """``(result, new_global_state)`` of ``query`` on ``records`` as one sample, from
    ``global_state`` (the query's initial one when not given)."""
    records = list(records)
    if global_state is None:
        global_state = query.initial_global_state()
    params = query.derive_sample_params(global_state)
    sample_state = query.initial_sample_state(records[0])
    for record in records:
        sample_state = query.accumulate_record(params, sample_state, record)
    result, global_state, _ = query.get_noised_result(sample_state, global_state)
    return result, global_state
