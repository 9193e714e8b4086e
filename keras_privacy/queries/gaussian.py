"""Gaussian sum and average queries, and nests of queries (TF Privacy's names).

:class:`GaussianSumQuery` is the Gaussian mechanism of DP-SGD: each record (a nest of
arrays) is clipped as a whole to L2 norm C, ``clip_C(x) = x * min(1, C / ||x||_2)``, the
clipped records are summed, and N(0, stddev^2) noise is added once to every coordinate of
the sum. Adding or removing one record moves the sum by at most C in L2 norm, so the
release is the Gaussian mechanism with noise multiplier ``stddev / C`` under the
add/remove-one-record relation (``dp_accounting.GaussianDpEvent``); a record whose norm is
not finite contributes nothing, as in the DP training step.
"""

from __future__ import annotations

import collections
from typing import Any

import dp_accounting
import numpy as np

from keras_privacy.queries import _nest
from keras_privacy.queries.base import (
    DPQuery,
    SumAggregationDPQuery,
    as_generator,
    check_non_negative,
)

__all__ = [
    "GaussianAverageQuery",
    "GaussianSumQuery",
    "NestedQuery",
    "NestedSumQuery",
    "NormalizedQuery",
    "clip_record",
    "gaussian_event",
]


def clip_record(record: Any, l2_norm_clip: float) -> tuple[Any, float]:
    """``(clip_C(record), ||record||_2)``: the whole nest scaled to L2 norm at most C
    (its global norm across all leaves); a non-finite norm gives zeros."""
    arrays = _nest.as_arrays(record)
    norm = _nest.global_norm(arrays)
    if not np.isfinite(norm):
        factor = 0.0
    elif norm > l2_norm_clip:
        factor = l2_norm_clip / norm
    else:
        factor = 1.0
    if factor == 0.0:
        return _nest.map_structure(np.zeros_like, arrays), norm
    return _nest.map_structure(lambda leaf: leaf * factor, arrays), norm


def gaussian_event(l2_norm_clip: float, stddev: float) -> dp_accounting.DpEvent:
    """The event of a Gaussian sum of records clipped to ``l2_norm_clip`` with noise
    ``stddev``: ``GaussianDpEvent(stddev / C)``; no event when C = 0 (records have no
    effect); not private when the noise is 0."""
    if l2_norm_clip == 0:
        return dp_accounting.NoOpDpEvent()
    if stddev == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(stddev / l2_norm_clip)


class GaussianSumQuery(SumAggregationDPQuery):
    """``sum_i clip_C(x_i) + N(0, stddev^2 I)`` (module docstring).

    Args:
      l2_norm_clip: C >= 0, the bound on each record's L2 norm (all leaves together).
      stddev: the noise standard deviation per coordinate (``noise_multiplier * C``).
      rng: the noise generator (see :func:`~keras_privacy.queries.base.as_generator`).
    """

    _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev"])

    def __init__(
        self, l2_norm_clip: float, stddev: float, *, rng: np.random.Generator | int | None = None
    ) -> None:
        check_non_negative("l2_norm_clip", l2_norm_clip)
        check_non_negative("stddev", stddev)
        # Kept as given (a number, or a variable read each time a global state is made,
        # as TF Privacy's queries read a tf.Variable).
        self._l2_norm_clip, self._stddev = l2_norm_clip, stddev
        self._rng = as_generator(rng)

    def make_global_state(self, l2_norm_clip: float, stddev: float) -> Any:
        """A global state with the given clip norm and noise."""
        return self._GlobalState(
            check_non_negative("l2_norm_clip", l2_norm_clip), check_non_negative("stddev", stddev)
        )

    def initial_global_state(self) -> Any:
        return self.make_global_state(self._l2_norm_clip, self._stddev)

    def derive_sample_params(self, global_state: Any) -> float:
        return global_state.l2_norm_clip

    def preprocess_record(self, params: float, record: Any) -> Any:
        return clip_record(record, params)[0]

    def get_noised_result(self, sample_state: Any, global_state: Any):
        stddev = global_state.stddev

        def add_noise(value: np.ndarray) -> np.ndarray:
            if stddev == 0:
                return np.array(value, dtype=np.float64)
            return value + self._rng.normal(0.0, stddev, size=np.shape(value))

        result = _nest.map_structure(add_noise, sample_state)
        return result, global_state, gaussian_event(global_state.l2_norm_clip, stddev)


class NormalizedQuery(SumAggregationDPQuery):
    """A sum query's noised result divided by a fixed, public ``denominator`` (e.g. the
    expected number of records: dividing by the realised count would depend on the data).
    Post-processing: its event is the numerator's."""

    _GlobalState = collections.namedtuple("_GlobalState", ["numerator_state", "denominator"])

    def __init__(self, numerator_query: SumAggregationDPQuery, denominator: float) -> None:
        if not isinstance(numerator_query, SumAggregationDPQuery):
            raise TypeError(
                "numerator_query must be a sum query (SumAggregationDPQuery), received "
                f"{type(numerator_query).__name__}"
            )
        if not float(denominator) > 0:
            raise ValueError(f"denominator must be > 0, received {denominator!r}")
        self._numerator = numerator_query
        self._denominator = float(denominator)

    def initial_global_state(self) -> Any:
        return self._GlobalState(self._numerator.initial_global_state(), self._denominator)

    def derive_sample_params(self, global_state: Any) -> Any:
        return self._numerator.derive_sample_params(global_state.numerator_state)

    def initial_sample_state(self, template: Any = None) -> Any:
        return self._numerator.initial_sample_state(template)

    def preprocess_record(self, params: Any, record: Any) -> Any:
        return self._numerator.preprocess_record(params, record)

    def get_noised_result(self, sample_state: Any, global_state: Any):
        total, numerator_state, event = self._numerator.get_noised_result(
            sample_state, global_state.numerator_state
        )
        result = _nest.map_structure(lambda v: v / global_state.denominator, total)
        return result, self._GlobalState(numerator_state, global_state.denominator), event

    def derive_metrics(self, global_state: Any) -> dict[str, Any]:
        return self._numerator.derive_metrics(global_state.numerator_state)


class GaussianAverageQuery(NormalizedQuery):
    """``(sum_i clip_C(x_i) + N(0, sum_stddev^2 I)) / denominator``: a
    :class:`GaussianSumQuery` normalized by a public denominator."""

    def __init__(
        self,
        l2_norm_clip: float,
        sum_stddev: float,
        denominator: float,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__(GaussianSumQuery(l2_norm_clip, sum_stddev, rng=rng), denominator)


class NestedQuery(DPQuery):
    """A nest of queries applied to records of the same (or a deeper) nest: each query
    sees its part of every record. The releases compose: the event is their
    ``ComposedDpEvent``, in the nest's order."""

    def __init__(self, queries: Any) -> None:
        for query in _nest.flatten(queries):
            if not isinstance(query, DPQuery):
                raise TypeError(f"NestedQuery takes DP queries, received {query!r}")
        self._queries = queries

    def _map(self, fn, *structures: Any) -> Any:
        return _nest.map_up_to(self._queries, fn, *structures)

    def initial_global_state(self) -> Any:
        return self._map(lambda q: q.initial_global_state())

    def derive_sample_params(self, global_state: Any) -> Any:
        return self._map(lambda q, g: q.derive_sample_params(g), global_state)

    def initial_sample_state(self, template: Any = None) -> Any:
        if template is None:
            return self._map(lambda q: q.initial_sample_state())
        return self._map(lambda q, t: q.initial_sample_state(t), template)

    def preprocess_record(self, params: Any, record: Any) -> Any:
        return self._map(lambda q, p, r: q.preprocess_record(p, r), params, record)

    def accumulate_preprocessed_record(self, sample_state: Any, preprocessed_record: Any) -> Any:
        return self._map(
            lambda q, s, r: q.accumulate_preprocessed_record(s, r),
            sample_state,
            preprocessed_record,
        )

    def merge_sample_states(self, sample_state_1: Any, sample_state_2: Any) -> Any:
        return self._map(
            lambda q, a, b: q.merge_sample_states(a, b), sample_state_1, sample_state_2
        )

    def get_noised_result(self, sample_state: Any, global_state: Any):
        events: list[dp_accounting.DpEvent] = []
        states: list[Any] = []

        def release(query: DPQuery, state: Any, global_part: Any) -> Any:
            result, new_state, event = query.get_noised_result(state, global_part)
            events.append(event)
            states.append(new_state)
            return result

        results = self._map(release, sample_state, global_state)
        new_states = iter(states)  # the same visiting order as above
        new_global_state = self._map(lambda _q: next(new_states))
        return results, new_global_state, dp_accounting.ComposedDpEvent(events)

    def derive_metrics(self, global_state: Any) -> dict[str, Any]:
        """Each query's metrics, named by its path in the nest (``"key2/0/clip"``; a
        single query's by their own names)."""
        metrics: dict[str, Any] = {}

        def walk(queries: Any, state: Any, path: tuple) -> None:
            if isinstance(queries, DPQuery):
                for name, value in queries.derive_metrics(state).items():
                    metrics["/".join((*path, name))] = value
            elif isinstance(queries, dict):
                for key in queries:
                    walk(queries[key], state[key], (*path, str(key)))
            else:
                for index, (query, part) in enumerate(zip(queries, state, strict=True)):
                    walk(query, part, (*path, str(index)))

        walk(self._queries, global_state, ())
        return metrics


class NestedSumQuery(NestedQuery, SumAggregationDPQuery):
    """A :class:`NestedQuery` of sum queries (itself a sum query)."""

    def __init__(self, queries: Any) -> None:
        super().__init__(queries)
        for query in _nest.flatten(queries):
            if not isinstance(query, SumAggregationDPQuery):
                raise TypeError(
                    f"NestedSumQuery takes sum queries only, received {type(query).__name__}"
                )

    initial_sample_state = NestedQuery.initial_sample_state
    accumulate_preprocessed_record = NestedQuery.accumulate_preprocessed_record
    merge_sample_states = NestedQuery.merge_sample_states
