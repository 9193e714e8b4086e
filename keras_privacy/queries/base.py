"""The DP query interface (TF Privacy's ``DPQuery``), framework-free.

A DP query turns a sample of records into one differentially private aggregate, in steps
that can run where the records are (TF Privacy's design, which federated learning and the
DP-SGD optimizers share):

1. ``global_state = query.initial_global_state()`` -- what persists between samples (the
   clip norm, the noise scale, a quantile estimate);
2. ``params = query.derive_sample_params(global_state)`` -- what each record's
   preprocessing needs (the current clip norm);
3. ``state = query.initial_sample_state(template)`` then, per record,
   ``state = query.accumulate_record(params, state, record)`` (``preprocess_record``, the
   clipping, followed by ``accumulate_preprocessed_record``); partial states combine with
   ``merge_sample_states``;
4. ``result, global_state, event = query.get_noised_result(state, global_state)`` -- the
   noise is added here, once per sample, and ``event`` is the ``dp_accounting.DpEvent`` of
   this release, for the accountant.

Records, states and results are nests (dicts, lists, tuples) of arrays; everything is
computed in float64 NumPy.
"""

from __future__ import annotations

import abc
from typing import Any

import dp_accounting
import numpy as np

from keras_privacy.queries import _nest


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A NumPy generator: ``rng`` itself, one seeded with an int (tests only: a known seed
    makes the noise predictable), or for ``None`` one seeded from operating-system
    entropy. NumPy's PCG64 is a statistical generator, not a cryptographically secure
    one."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class DPQuery(metaclass=abc.ABCMeta):
    """A differentially private aggregation of a sample of records (module docstring)."""

    def initial_global_state(self) -> Any:
        """The state kept between samples (``()`` when there is none)."""
        return ()

    def derive_sample_params(self, global_state: Any) -> Any:
        """What :meth:`preprocess_record` needs from the global state."""
        del global_state
        return ()

    @abc.abstractmethod
    def initial_sample_state(self, template: Any = None) -> Any:
        """An empty sample state shaped like ``template`` (a record)."""

    def preprocess_record(self, params: Any, record: Any) -> Any:
        """One record as it enters the aggregate (clipped, for the Gaussian queries)."""
        del params
        return record

    @abc.abstractmethod
    def accumulate_preprocessed_record(self, sample_state: Any, preprocessed_record: Any) -> Any:
        """The sample state with one preprocessed record added."""

    def accumulate_record(self, params: Any, sample_state: Any, record: Any) -> Any:
        """:meth:`preprocess_record` then :meth:`accumulate_preprocessed_record`."""
        return self.accumulate_preprocessed_record(
            sample_state, self.preprocess_record(params, record)
        )

    @abc.abstractmethod
    def merge_sample_states(self, sample_state_1: Any, sample_state_2: Any) -> Any:
        """Two partial sample states (of disjoint records) combined."""

    @abc.abstractmethod
    def get_noised_result(
        self, sample_state: Any, global_state: Any
    ) -> tuple[Any, Any, dp_accounting.DpEvent]:
        """``(result, new_global_state, event)``: the noised aggregate, the state for the
        next sample, and the privacy event of this release."""

    def derive_metrics(self, global_state: Any) -> dict[str, Any]:
        """Values worth logging from the global state (e.g. the current clip norm)."""
        del global_state
        return {}


class SumAggregationDPQuery(DPQuery):
    """A query whose sample state is the sum of its preprocessed records."""

    def initial_sample_state(self, template: Any = None) -> Any:
        if template is None:
            raise ValueError(
                f"{type(self).__name__}.initial_sample_state needs a template: a record "
                "(or a nest of arrays of the records' shapes)"
            )
        return _nest.map_structure(lambda t: np.zeros(np.shape(t), np.float64), template)

    def accumulate_preprocessed_record(self, sample_state: Any, preprocessed_record: Any) -> Any:
        return _nest.map_structure(np.add, sample_state, _nest.as_arrays(preprocessed_record))

    def merge_sample_states(self, sample_state_1: Any, sample_state_2: Any) -> Any:
        return _nest.map_structure(np.add, sample_state_1, sample_state_2)


def check_non_negative(name: str, value: Any) -> float:
    """``value`` (a number, or anything ``np.asarray`` reads as one, such as a variable)
    as a float; ``ValueError`` unless it is a finite number >= 0."""
    number = float(np.asarray(value))
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, received {value!r}")
    return number
