"""Epsilon of what a DP model actually did, from its TrainingRecord.

A :class:`~keras_privacy.training.record.TrainingRecord` lists one segment per ``fit``
call, each with its sampling, dataset size N, expected batch size, noise multiplier,
clipping unit and number of optimizer updates. Its DpEvent is the composition of the
segments' events (:func:`keras_privacy.accounting.events.training_record_event`): a
Poisson-subsampled Gaussian per update for ``"poisson"`` segments, a Gaussian per pass over
the data for ``"shuffle"`` and ``"fixed_batches"`` segments. A segment without a dataset
size has no epsilon (:class:`~keras_privacy.accounting.events.DatasetSizeUnknownError`).
"""

from __future__ import annotations

import copy
from typing import Any

from keras_privacy.accounting import _checks, accountants, events, search


def epsilon_of_record(
    record: Any,
    delta: float,
    accountant: str = "pld",
    *,
    pld_discretization: float = accountants.PLD_DISCRETIZATION,
    allow_large_delta: bool = False,
) -> float:
    """Example-level epsilon at ``delta`` of all training in ``record`` (0 if none).

    ``delta >= 1/N`` is refused unless ``allow_large_delta``, N being the largest dataset
    size in the record (a guarantee with delta >= 1/N is met by publishing an example).
    """
    delta = _checks.check_delta(delta)
    event = events.training_record_event(record)
    check_delta_for_record(record, delta, allow_large_delta)
    return accountants.epsilon_curve(event, accountant, pld_discretization=pld_discretization)(
        delta
    )


def check_delta_for_record(record: Any, delta: float, allow_large_delta: bool = False) -> None:
    """``ValueError`` if ``delta >= 1/N`` for the largest dataset size N in ``record``,
    unless ``allow_large_delta``."""
    sizes = [s.dataset_size for s in record.segments if s.dataset_size]
    if sizes:
        _checks.check_delta_below_one_over_n(delta, max(sizes), allow_large_delta)


def max_updates_within_budget(
    record: Any,
    target_epsilon: float,
    delta: float,
    accountant: str = "pld",
    *,
    allow_large_delta: bool = False,
) -> int:
    """Largest number of updates the current (last) segment may reach within budget.

    Earlier segments count as they are; the current segment's update count is varied. The
    answer n satisfies: the record with ``current.updates = n`` has epsilon <= target, and
    with ``n + 1`` it would not (0 if not even one update fits). A training loop may
    therefore perform updates while ``current.updates < n``.

    Raises:
      ValueError: the record has no segment, or a bad target/delta.
      DatasetSizeUnknownError: a segment lacks its dataset size.
    """
    target_epsilon = _checks.check_positive_real(target_epsilon, "target_epsilon")
    delta = _checks.check_delta(delta)
    accountant = _checks.check_accountant(accountant)
    check_delta_for_record(record, delta, allow_large_delta)
    if record.current is None:
        raise ValueError("record must have a current segment, received a record with none")
    trial = copy.deepcopy(record)

    def epsilon_with_updates(updates: int, name: str, discretization: float) -> float:
        trial.current.updates = updates
        return epsilon_of_record(
            trial, delta, name, pld_discretization=discretization, allow_large_delta=True
        )

    # Fail early and clearly if the dataset size is unknown.
    events.training_record_event(record)
    return search.staged_count_search(epsilon_with_updates, target_epsilon, accountant)
