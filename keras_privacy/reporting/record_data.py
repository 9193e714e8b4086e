"""What the privacy report computes from a training record (framework-free).

* :func:`load_record`: the :class:`~keras_privacy.training.record.TrainingRecord` of a DP
  model, of a saved ``.keras`` file (read from the archive's ``config.json``, without
  Keras), or a record itself.
* :func:`default_delta`: the largest power of ten strictly below 1/N.
* :func:`epsilon_delta_curves`: ε(δ) from the PLD and the RDP accountant, each composing
  the record's DpEvent once.
* :func:`epsilon_over_training`: ε at δ of the first k updates, for k along the run: the
  record cut after k updates (earlier segments whole, the segment in progress cut, later
  ones dropped), composed with the record's other releases, which came before training.
"""

from __future__ import annotations

import copy
import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from keras_privacy.training.record import TrainingRecord

__all__ = [
    "default_delta",
    "epsilon_delta_curves",
    "epsilon_functions",
    "epsilon_over_training",
    "load_record",
    "record_until",
    "saved_model_config",
]


def saved_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config stored in a ``.keras`` archive (its ``config.json``), read as JSON
    without importing Keras."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a Keras 3 .keras archive (model.save('model.keras') writes one)"
        )
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise ValueError(f"{path!r} has no config.json: not a Keras 3 .keras archive")
        return json.loads(archive.read("config.json").decode("utf-8"))


def _record_in_config(config: Any) -> dict[str, Any] | None:
    if isinstance(config, dict):
        inner = config.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("privacy_record"), dict):
            return inner["privacy_record"]
        if isinstance(config.get("privacy_record"), dict):
            return config["privacy_record"]
    return None


def load_record(model: Any) -> tuple[TrainingRecord, dict[str, Any]]:
    """``(record, dp_settings)`` of a DP model, a saved ``.keras`` path, or a record.

    ``dp_settings`` holds what the model was built with (gradient accumulation, engine,
    sampling request), empty when unknown. Raises ``ValueError`` for a model without a
    record (a plain Keras model: nothing private to report).
    """
    if isinstance(model, TrainingRecord):
        return model, {}
    if isinstance(model, (str, os.PathLike)):
        config = saved_model_config(model)
        data = _record_in_config(config)
        if data is None:
            raise ValueError(
                f"{os.fspath(model)!r} holds no privacy record: it was not saved from a "
                "keras-privacy DP model (DPModel, DPSequential or make_private)"
            )
        settings = (config.get("config") or {}).get("dp_config") or {}
        return TrainingRecord.from_dict(data), dict(settings)
    record = getattr(model, "privacy_record", None)
    if not isinstance(record, TrainingRecord):
        raise ValueError(
            "privacy_report needs a DP model (keras_privacy.DPModel, DPSequential or "
            "make_private), a saved .keras file of one, or a TrainingRecord; received "
            f"{type(model).__name__}"
        )
    settings = dict(getattr(model, "_dp_settings", {}) or {})
    settings.pop("seed", None)
    return record, settings


def largest_dataset_size(record: TrainingRecord) -> int | None:
    sizes = [s.dataset_size for s in record.segments if s.dataset_size]
    return max(sizes) if sizes else None


def default_delta(record: TrainingRecord) -> float:
    """The largest power of ten strictly below 1/N (N the largest dataset size in the
    record; 1e-5 when none is known)."""
    n = largest_dataset_size(record)
    if not n:
        return 1e-5
    exponent = math.floor(math.log10(1.0 / n))
    if 10.0**exponent >= 1.0 / n:
        exponent -= 1
    return 10.0**exponent


def epsilon_functions(
    record: TrainingRecord, accountants: Sequence[str] = ("pld", "rdp")
) -> dict[str, Callable[[float], float]]:
    """``{accountant: δ -> ε}`` of the whole record: the record's DpEvent composed once per
    accountant, exactly as :func:`~keras_privacy.accounting.epsilon_of_record` does."""
    from keras_privacy.accounting import accountants as accounting_accountants
    from keras_privacy.accounting import events

    event = events.training_record_event(record)
    return {name: accounting_accountants.epsilon_curve(event, name) for name in accountants}


def epsilon_delta_curves(
    record: TrainingRecord,
    deltas: Sequence[float],
    functions: Mapping[str, Callable[[float], float]] | None = None,
) -> dict[str, list[float]]:
    """``{accountant: [ε(δ) for δ in deltas]}`` for the whole record (PLD and RDP unless
    ``functions`` from :func:`epsilon_functions` are given)."""
    functions = epsilon_functions(record) if functions is None else functions
    return {name: [float(at(float(d))) for d in deltas] for name, at in functions.items()}


def record_until(record: TrainingRecord, updates: int) -> TrainingRecord:
    """The record as it was after its first ``updates`` optimizer updates."""
    cut = copy.deepcopy(record)
    remaining = int(updates)
    kept = []
    for segment in cut.segments:
        if remaining <= 0:
            break
        segment.updates = min(segment.updates, remaining)
        remaining -= segment.updates
        kept.append(segment)
    cut.segments = kept
    return cut


def update_points(record: TrainingRecord, count: int = 16) -> list[int]:
    """About ``count`` update counts from 0 to the total, evenly spread, with every
    segment's end included."""
    total = record.total_updates
    points = {0, total}
    points.update(int(round(v)) for v in np.linspace(0, total, max(2, count)))
    ends = np.cumsum([s.updates for s in record.segments]).tolist()
    points.update(int(e) for e in ends)
    return sorted(points)


#: PLD discretization of the points before the last on the ε-over-training curve: 10x
#: coarser than the headline's (faster; the PLD is pessimistic at any discretization, so
#: each point is still an upper bound, within about 1e-3 of the finer value).
CURVE_PLD_DISCRETIZATION = 1e-3


def epsilon_over_training(
    record: TrainingRecord,
    delta: float,
    accountants: Sequence[str] = ("pld", "rdp"),
    count: int = 16,
    final: Mapping[str, float] | None = None,
) -> tuple[list[int], dict[str, list[float]]]:
    """``(updates, {accountant: [ε at delta after that many updates]})``.

    When every segment with updates is Poisson-sampled, one accountant per kind composes
    the other releases, then the updates between consecutive points, and is read at each
    point: ``count`` compositions instead of ``count`` whole accountings. The last point is
    the whole record, accounted as :func:`~keras_privacy.accounting.epsilon_of_record`
    does (the headline ε; pass it as ``final[accountant]`` when it is known). Otherwise
    each point's record is accounted from scratch. The
    other points use the PLD discretization :data:`CURVE_PLD_DISCRETIZATION`.
    """
    from keras_privacy.accounting import events
    from keras_privacy.accounting.accountants import composed_accountant
    from keras_privacy.accounting.record_accounting import epsilon_of_record

    points = update_points(record, count)
    curves: dict[str, list[float]] = {}
    incremental = record.poisson_throughout and record.total_updates > 0
    for name in accountants:
        if not incremental:
            curves[name] = [
                float(
                    epsilon_of_record(
                        record_until(record, k),
                        delta,
                        name,
                        pld_discretization=CURVE_PLD_DISCRETIZATION,
                        allow_large_delta=True,
                    )
                )
                for k in points
            ]
            continue
        releases = [event for _, event in record.other_releases]
        accountant = composed_accountant(
            events.dp_accounting.ComposedDpEvent(releases),
            name,
            pld_discretization=CURVE_PLD_DISCRETIZATION,
        )
        values, done = [], 0
        for k in points:
            for segment_event in _poisson_events_between(record, done, k):
                accountant.compose(segment_event)
            done = k
            values.append(float(accountant.get_epsilon(delta)))
        values[-1] = (
            float(final[name])
            if final and name in final
            else float(epsilon_of_record(record, delta, name, allow_large_delta=True))
        )
        curves[name] = values
    return points, curves


def _poisson_events_between(record: TrainingRecord, start: int, stop: int) -> list[Any]:
    """The DpEvents of updates ``start`` (excluded) to ``stop`` (included), all Poisson."""
    from keras_privacy.accounting import events

    found, offset = [], 0
    for segment in record.segments:
        first, last = max(start, offset), min(stop, offset + segment.updates)
        if last > first:
            found.append(
                events.poisson_dp_sgd_event(
                    segment.sampling_probability,
                    segment.noise_multiplier,
                    last - first,
                    segment.used_microbatching,
                )
            )
        offset += segment.updates
    return found
