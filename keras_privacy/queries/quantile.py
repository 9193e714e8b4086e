"""Private quantile estimation and adaptive clipping (Andrew, Thakkar, McMahan and
Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021).

:class:`QuantileEstimatorQuery` tracks the ``target_quantile`` of a stream of scalar
records privately. For the current estimate ``c`` each record contributes
``b_i = [x_i <= c] - 1/2`` (so one record moves the sum by at most 1/2); the sum gets
N(0, below_estimate_stddev^2) noise and is divided by the public ``expected_num_records``
m, giving ``f = clip(sum_i b_i / m + 1/2, 0, 1)``, a noisy fraction of records at or
below ``c``. The estimate then takes one step on the pinball loss, whose gradient is
``f - target_quantile``: ``c <- c * exp(-learning_rate * (f - target))`` (geometric, the
paper's choice) or ``c <- c - learning_rate * (f - target)``. Its event is
``GaussianDpEvent(below_estimate_stddev / (1/2))``.

:class:`QuantileAdaptiveClipSumQuery` is DP-SGD's Gaussian sum with its clip norm set by
such an estimator over the records' (unclipped) norms: the sum is clipped to the current
C with noise ``noise_multiplier * C``, and the estimate updates C for the next sample. The
two releases see the same records; their event is the composition of the two Gaussians.
:func:`split_noise_multiplier` gives the sum's noise multiplier that makes the pair
exactly as private as one Gaussian with the multiplier the user asked for.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import dp_accounting
import numpy as np

from keras_privacy.queries.base import SumAggregationDPQuery, check_non_negative
from keras_privacy.queries.gaussian import GaussianSumQuery, NormalizedQuery, clip_record

__all__ = ["QuantileAdaptiveClipSumQuery", "QuantileEstimatorQuery", "split_noise_multiplier"]


def split_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """The sum query's noise multiplier z_sum for which the sum (sensitivity C, noise
    z_sum C) and the clipped-count query (sensitivity 1/2, noise ``clipped_count_stddev``
    = s) together are exactly the Gaussian mechanism with ``noise_multiplier`` z: two
    Gaussian releases of the same records compose to one with
    ``z^-2 = z_sum^-2 + (2 s)^-2`` (their RDP curves add), so
    ``z_sum = (z^-2 - (2 s)^-2)^(-1/2)``. Needs ``2 s > z``: the count's own noise must
    leave some budget for the gradient (the paper takes s = m / 20 for m expected
    records)."""
    z = float(noise_multiplier)
    s = float(clipped_count_stddev)
    if not z > 0:
        raise ValueError(f"noise_multiplier must be > 0, received {noise_multiplier!r}")
    if not 2 * s > z:
        raise ValueError(
            f"clipped_count_stddev={clipped_count_stddev!r} is too small for noise_multiplier="
            f"{noise_multiplier!r}: the clipped count alone would use the whole budget (it "
            "needs 2 * clipped_count_stddev > noise_multiplier; the paper's choice is "
            "expected_num_records / 20)"
        )
    return (z**-2 - (2 * s) ** -2) ** -0.5


class QuantileEstimatorQuery(SumAggregationDPQuery):
    """A private running estimate of ``target_quantile`` of scalar records (module
    docstring). ``get_noised_result`` returns the new estimate."""

    _GlobalState = collections.namedtuple(
        "_GlobalState",
        ["current_estimate", "target_quantile", "learning_rate", "below_estimate_state"],
    )
    _SampleParams = collections.namedtuple(
        "_SampleParams", ["current_estimate", "below_estimate_params"]
    )

    def __init__(
        self,
        initial_estimate: float,
        target_quantile: float,
        learning_rate: float,
        below_estimate_stddev: float,
        expected_num_records: float,
        geometric_update: bool = True,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        if not 0.0 <= float(target_quantile) <= 1.0:
            raise ValueError(f"target_quantile must be in [0, 1], received {target_quantile!r}")
        if geometric_update and not float(initial_estimate) > 0:
            raise ValueError(
                f"a geometric update needs initial_estimate > 0, received {initial_estimate!r}"
            )
        self._initial_estimate = float(initial_estimate)
        self._target_quantile = float(target_quantile)
        check_non_negative("learning_rate", learning_rate)
        # Kept as given: a variable is read at every update (a decaying learning rate).
        self._learning_rate = learning_rate
        self._geometric_update = bool(geometric_update)
        # Records enter as b - 1/2 in {-1/2, +1/2}: a clip norm of 1/2 never changes them
        # and states the sensitivity.
        self._below_estimate_query = NormalizedQuery(
            GaussianSumQuery(0.5, below_estimate_stddev, rng=rng), expected_num_records
        )

    def initial_global_state(self) -> Any:
        return self._GlobalState(
            self._initial_estimate,
            self._target_quantile,
            self._learning_rate,
            self._below_estimate_query.initial_global_state(),
        )

    def derive_sample_params(self, global_state: Any) -> Any:
        return self._SampleParams(
            global_state.current_estimate,
            self._below_estimate_query.derive_sample_params(global_state.below_estimate_state),
        )

    def initial_sample_state(self, template: Any = None) -> Any:
        return self._below_estimate_query.initial_sample_state(0.0)

    def preprocess_record(self, params: Any, record: Any) -> Any:
        below = 1.0 if float(np.asarray(record)) <= params.current_estimate else 0.0
        return self._below_estimate_query.preprocess_record(
            params.below_estimate_params, below - 0.5
        )

    def get_noised_result(self, sample_state: Any, global_state: Any):
        centered, below_state, event = self._below_estimate_query.get_noised_result(
            sample_state, global_state.below_estimate_state
        )
        fraction_below = float(np.clip(centered + 0.5, 0.0, 1.0))
        gradient = fraction_below - global_state.target_quantile
        step = check_non_negative("learning_rate", global_state.learning_rate) * gradient
        if self._geometric_update:
            estimate = global_state.current_estimate * math.exp(-step)
        else:
            estimate = global_state.current_estimate - step
        new_state = global_state._replace(
            current_estimate=estimate, below_estimate_state=below_state
        )
        return estimate, new_state, event

    def derive_metrics(self, global_state: Any) -> dict[str, Any]:
        return {"estimate": global_state.current_estimate}


class QuantileAdaptiveClipSumQuery(SumAggregationDPQuery):
    """A Gaussian sum whose clip norm follows a private quantile of the records' norms
    (module docstring): the sum is ``sum_i clip_C(x_i) + N(0, (noise_multiplier C)^2 I)``
    at the current C, then C moves towards the ``target_unclipped_quantile`` of the
    records' norms. The event composes the sum's ``GaussianDpEvent(noise_multiplier)``
    with the clipped count's ``GaussianDpEvent(2 clipped_count_stddev)``; to keep a
    target noise multiplier z overall, pass ``noise_multiplier=split_noise_multiplier(z,
    clipped_count_stddev)``."""

    _GlobalState = collections.namedtuple(
        "_GlobalState", ["noise_multiplier", "sum_state", "quantile_estimator_state"]
    )
    _SampleParams = collections.namedtuple(
        "_SampleParams", ["sum_params", "quantile_estimator_params"]
    )
    _SampleState = collections.namedtuple("_SampleState", ["sum_state", "quantile_estimator_state"])

    def __init__(
        self,
        initial_l2_norm_clip: float,
        noise_multiplier: float,
        target_unclipped_quantile: float,
        learning_rate: float,
        clipped_count_stddev: float,
        expected_num_records: float,
        geometric_update: bool = True,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        self._noise_multiplier = check_non_negative("noise_multiplier", noise_multiplier)
        clip = check_non_negative("initial_l2_norm_clip", initial_l2_norm_clip)
        self._sum_query = GaussianSumQuery(clip, self._noise_multiplier * clip, rng=rng)
        self._quantile_estimator_query = QuantileEstimatorQuery(
            clip,
            target_unclipped_quantile,
            learning_rate,
            clipped_count_stddev,
            expected_num_records,
            geometric_update,
            rng=rng,
        )

    def initial_global_state(self) -> Any:
        return self._GlobalState(
            self._noise_multiplier,
            self._sum_query.initial_global_state(),
            self._quantile_estimator_query.initial_global_state(),
        )

    def derive_sample_params(self, global_state: Any) -> Any:
        return self._SampleParams(
            self._sum_query.derive_sample_params(global_state.sum_state),
            self._quantile_estimator_query.derive_sample_params(
                global_state.quantile_estimator_state
            ),
        )

    def initial_sample_state(self, template: Any = None) -> Any:
        return self._SampleState(
            self._sum_query.initial_sample_state(template),
            self._quantile_estimator_query.initial_sample_state(),
        )

    def preprocess_record(self, params: Any, record: Any) -> Any:
        clipped, norm = clip_record(record, params.sum_params)
        below = self._quantile_estimator_query.preprocess_record(
            params.quantile_estimator_params, norm
        )
        return self._SampleState(clipped, below)

    def get_noised_result(self, sample_state: Any, global_state: Any):
        noised_sum, _, sum_event = self._sum_query.get_noised_result(
            sample_state.sum_state, global_state.sum_state
        )
        clip, quantile_state, count_event = self._quantile_estimator_query.get_noised_result(
            sample_state.quantile_estimator_state, global_state.quantile_estimator_state
        )
        sum_state = self._sum_query.make_global_state(clip, global_state.noise_multiplier * clip)
        new_state = self._GlobalState(global_state.noise_multiplier, sum_state, quantile_state)
        return noised_sum, new_state, dp_accounting.ComposedDpEvent([sum_event, count_event])

    def derive_metrics(self, global_state: Any) -> dict[str, Any]:
        return {"clip": global_state.sum_state.l2_norm_clip}
