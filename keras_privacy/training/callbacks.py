"""Privacy accounting during ``fit``: epsilon in the logs, a budget that stops training.

:class:`PrivacyBudget` reads the DP model's ``privacy_record`` (one segment per ``fit``
call, its ``updates`` counting optimizer updates, not ``train_step`` calls: under gradient
accumulation several calls make one update). The record's DpEvent is built by
:mod:`keras_privacy.accounting` (a Poisson-subsampled Gaussian per update for
Poisson-sampled arrays; one Gaussian per pass over the data for shuffled batches and
``tf.data`` pipelines), so there is exactly one accountant event per optimizer update
under Poisson sampling, and one per pass otherwise.

The accountant's state is plain JSON (:func:`save_privacy_state` /
:func:`load_privacy_state`): the training record's counters plus the derived event ledger.
Loading checks every field and never unpickles.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
import warnings
from typing import Any

import keras

from keras_privacy import accounting
from keras_privacy.accounting._checks import check_format_header
from keras_privacy.accounting.ledger import event_from_data
from keras_privacy.training.record import (
    ADAPTIVE_CLIP_KEYS,
    ADAPTIVE_FIELDS,
    PRIVACY_UNITS,
    SAMPLING_KINDS,
    TrainingRecord,
    TrainingSegment,
)
from keras_privacy.training.restore import adopt_saved_record
from keras_privacy.training.user_checks import user_stacklevel

STATE_FORMAT = "keras-privacy/privacy-state"
STATE_VERSION = 1


class PrivacyBudgetExhaustedError(RuntimeError):
    """Training was asked to continue although the next update would exceed the budget."""


class PrivacyBudgetWarning(UserWarning):
    """Training was stopped early because the privacy budget is (about to be) spent."""


def _record_of(model: Any) -> TrainingRecord:
    record = getattr(model, "privacy_record", None)
    if not isinstance(record, TrainingRecord):
        raise ValueError(
            "privacy accounting needs a DP model with a privacy_record (keras_privacy.DPModel, "
            f"DPSequential or make_private), received {type(model).__name__}"
        )
    return record


def privacy_spent(
    model: Any, delta: float, accountant: str = "pld", *, allow_large_delta: bool = False
) -> float:
    """Example-level epsilon at ``delta`` of all DP training ``model`` has done.

    Accounts for the sampling each ``fit`` call actually used (see the module docstring).
    ``delta >= 1/N`` raises ``ValueError`` unless ``allow_large_delta`` (a guarantee with
    delta >= 1/N is met by publishing a random training example whole).

    Raises:
      DatasetSizeUnknownError: a ``tf.data`` fit was given no ``dataset_size``.
    """
    return accounting.epsilon_of_record(
        _record_of(model), delta, accountant, allow_large_delta=allow_large_delta
    )


# -- saving and loading the accountant state -------------------------------------------

_SEGMENT_FIELDS = {
    "sampling": str,
    "dataset_size": int,
    "expected_batch_size": int,
    "noise_multiplier": float,
    "l2_norm_clip": float,
    "num_microbatches": int,
    "examples_per_clipping_unit": int,
    "updates": int,
    "selection_noise_multiplier": float,
    "privacy_unit": str,
}
_OPTIONAL_SEGMENT_FIELDS = (
    "dataset_size",
    "expected_batch_size",
    "num_microbatches",
    "selection_noise_multiplier",
)
#: Fields a state saved before they existed may lack (then None: plain DP-SGD).
_NEWER_SEGMENT_FIELDS = {"selection_noise_multiplier", "privacy_unit"}


def _adaptive_from_data(data: dict) -> dict[str, Any]:
    """A segment's adaptive-clipping fields (``adaptive_clip``, ``clip_values``), checked:
    both present or both absent (a fixed clip)."""
    adaptive, clips = data.get("adaptive_clip"), data.get("clip_values")
    if adaptive is None and clips is None:
        return {}

    def finite(value: Any) -> bool:
        return (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        )

    if (
        not isinstance(adaptive, dict)
        or set(adaptive) != set(ADAPTIVE_CLIP_KEYS)
        or not all(finite(v) and v >= 0 for v in adaptive.values())
    ):
        raise ValueError(f"privacy state: a segment has a bad adaptive_clip {adaptive!r}")
    if not isinstance(clips, list) or not all(finite(c) and c > 0 for c in clips):
        raise ValueError("privacy state: a segment's clip_values must be a list of clips > 0")
    return {
        "adaptive_clip": {k: float(v) for k, v in adaptive.items()},
        "clip_values": [float(c) for c in clips],
    }


def _segment_from_data(data: Any) -> TrainingSegment:
    if isinstance(data, dict):
        data = {**dict.fromkeys(_NEWER_SEGMENT_FIELDS - set(data)), **data}
        if data["privacy_unit"] is None:  # saved before user-level training existed
            data["privacy_unit"] = "example"
    if not isinstance(data, dict) or set(data) - set(ADAPTIVE_FIELDS) != set(_SEGMENT_FIELDS):
        raise ValueError(
            f"privacy state: a segment must have exactly the fields {sorted(_SEGMENT_FIELDS)} "
            f"(and with adaptive clipping {list(ADAPTIVE_FIELDS)}), received {data!r}"
        )
    values = _adaptive_from_data(data)
    for name, kind in _SEGMENT_FIELDS.items():
        value = data[name]
        if value is None and name in _OPTIONAL_SEGMENT_FIELDS:
            values[name] = None
            continue
        if name == "privacy_unit":
            ok = value in PRIVACY_UNITS
        elif kind is str:
            ok = isinstance(value, str) and value in SAMPLING_KINDS
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = (
                isinstance(value, numbers.Real)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0
            )
            value = float(value) if ok else value
        if not ok:
            raise ValueError(f"privacy state: segment field {name} has a bad value {value!r}")
        values[name] = value
    return TrainingSegment(**values)


def privacy_state(record: TrainingRecord) -> dict[str, Any]:
    """The accountant state as plain data: the record's counters and the event ledger."""
    try:
        ledger = accounting.PrivacyLedger.from_training_record(record).to_dict()
    except accounting.DatasetSizeUnknownError:
        ledger = None
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "training_record": record.to_dict(),
        "ledger": ledger,
    }


def record_from_state(data: Any) -> TrainingRecord:
    """Inverse of :func:`privacy_state`; checks every field and the ledger's consistency."""
    check_format_header(data, STATE_FORMAT, STATE_VERSION, "keras-privacy privacy state")
    record_data = data.get("training_record")
    if not isinstance(record_data, dict) or not isinstance(record_data.get("segments"), list):
        raise ValueError("privacy state: training_record.segments must be a list")
    record = TrainingRecord([_segment_from_data(s) for s in record_data["segments"]])
    releases = record_data.get("other_releases", [])
    if not isinstance(releases, list) or not all(isinstance(r, dict) for r in releases):
        raise ValueError("privacy state: training_record.other_releases must be a list")
    for release in releases:
        record.add_release(event_from_data(release.get("event")), release.get("note", ""))
    if data.get("ledger") is not None:
        saved = accounting.PrivacyLedger.from_dict(data["ledger"])
        if saved != accounting.PrivacyLedger.from_training_record(record):
            raise ValueError("privacy state: the ledger does not match the training record")
    return record


def save_privacy_state(model_or_record: Any, path: str | os.PathLike) -> None:
    """Write the accountant state as JSON (atomically: a crash leaves the old file)."""
    record = (
        model_or_record
        if isinstance(model_or_record, TrainingRecord)
        else _record_of(model_or_record)
    )
    text = json.dumps(privacy_state(record), indent=1)
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=".privacy-state-", suffix=".tmp", delete=False
    ) as handle:
        handle.write(text)
        temporary = handle.name
    os.replace(temporary, path)


def load_privacy_state(path: str | os.PathLike) -> TrainingRecord:
    """Read a state written by :func:`save_privacy_state` (JSON only; never unpickles)."""
    with open(path, encoding="utf-8") as handle:
        return record_from_state(json.load(handle))


# -- the callback ------------------------------------------------------------------------


class PrivacyBudget(keras.callbacks.Callback):
    """Shows epsilon in the ``fit`` logs and stops training before the budget is exceeded.

    Each epoch, ``logs["epsilon"]`` (shown by the progress bar, kept in ``History``) is the
    example-level epsilon at ``delta`` of all DP training the model has done, including
    earlier ``fit`` calls and, with ``state_path``, earlier runs. During the epoch the
    progress bar shows it too (``live=True``): recomputed with the same accountant every
    few updates, as often as keeps the accounting under ``live_overhead`` of the training
    time. Each live value is epsilon after the updates the bar will show it for: computed
    at update u for ``min(u + k, end of epoch)`` updates, shown until update u + k, so it
    never lags the updates done (an upper bound, exact at each recomputation's horizon
    and at the epoch's end).

    With ``target_epsilon``, the largest number of optimizer updates that keeps epsilon
    <= target is computed when ``fit`` begins, and training stops after the last update
    that fits: epsilon never exceeds the target. If not even one more update fits, ``fit``
    raises :class:`PrivacyBudgetExhaustedError` before training.

    With ``state_path``, the accountant state (training record and event ledger, as JSON)
    is written after every batch, and read back when ``fit`` begins on a model that has no
    training of its own recorded (a model restored from a ``ModelCheckpoint``). The file
    counts every update that ran, including any after the last checkpoint: privacy spent
    on discarded updates stays spent.

    Args:
      delta: the delta of the (epsilon, delta) guarantee.
      target_epsilon: the budget, or None to only report epsilon.
      accountant: ``"pld"`` (default) or ``"rdp"``.
      state_path: JSON file for the accountant state, or None.
      live: show epsilon in the progress bar while an epoch runs.
      live_overhead: the fraction of training time the live epsilon may take (0.05).
      allow_large_delta: accept ``delta >= 1/N``; by default ``fit`` refuses it before
        training (``ValueError``): a guarantee with delta >= 1/N is met by publishing a
        random training example whole.
    """

    def __init__(
        self,
        delta: float,
        target_epsilon: float | None = None,
        accountant: str = "pld",
        state_path: str | os.PathLike | None = None,
        live: bool = True,
        live_overhead: float = 0.05,
        allow_large_delta: bool = False,
    ) -> None:
        super().__init__()
        self.allow_large_delta = bool(allow_large_delta)
        self.live = bool(live)
        self.live_overhead = accounting._checks.check_positive_real(live_overhead, "live_overhead")
        self._live_epsilon: float | None = None
        self._live_interval = 1
        self._since_live = 0
        self._live_valid_until: int | None = None
        self._last_batch_end: float | None = None
        self._step_seconds: float | None = None
        self.delta = accounting._checks.check_delta(delta)
        self.target_epsilon = (
            None
            if target_epsilon is None
            else accounting._checks.check_positive_real(target_epsilon, "target_epsilon")
        )
        self.accountant = accounting._checks.check_accountant(accountant)
        self.state_path = None if state_path is None else os.fspath(state_path)
        #: Epsilon after the last completed epoch (or at the end of training).
        self.epsilon: float | None = None
        #: Updates the current segment may reach within budget (None without a target).
        self.max_updates: int | None = None
        #: True when the last ``fit`` was stopped by the budget.
        self.stopped_by_budget = False

    # Keras calls these.
    def on_train_begin(self, logs: dict | None = None) -> None:
        record = _record_of(self.model)
        self.stopped_by_budget = False
        self.max_updates = None
        self._live_epsilon = self._last_batch_end = self._step_seconds = None
        self._live_interval, self._since_live = 1, 0
        self._live_valid_until = None
        self._restore_earlier_training(record)
        # Raises DatasetSizeUnknownError (or delta >= 1/N) now, not after an epoch.
        accounting.training_record_event(_with_one_more_update(record))
        accounting.record_accounting.check_delta_for_record(
            record, self.delta, self.allow_large_delta
        )
        if self.target_epsilon is None:
            return
        self.max_updates = accounting.max_updates_within_budget(
            record,
            self.target_epsilon,
            self.delta,
            self.accountant,
            allow_large_delta=self.allow_large_delta,
        )
        if record.current.updates + self._updates_per_call() > self.max_updates:
            spent = self._spent()
            raise PrivacyBudgetExhaustedError(
                f"the privacy budget epsilon={self.target_epsilon:g} at delta={self.delta:g} "
                f"is spent: epsilon so far is {spent:.4g} and one more update would exceed it"
            )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        record = _record_of(self.model)
        if self.state_path is not None:
            save_privacy_state(record, self.state_path)
        if self.live:
            self._show_live_epsilon(batch, logs)
        if self.max_updates is None:
            return
        if record.current.updates + self._updates_per_call() > self.max_updates:
            self.model.stop_training = True
            if not self.stopped_by_budget:
                self.stopped_by_budget = True
                warnings.warn(
                    f"PrivacyBudget: stopping after {record.total_updates} optimizer updates; "
                    f"the next would take epsilon above {self.target_epsilon:g} "
                    f"(delta={self.delta:g}).",
                    PrivacyBudgetWarning,
                    stacklevel=user_stacklevel(),  # the user's fit call, not Keras
                )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epsilon = self._spent()
        if logs is not None:
            logs["epsilon"] = self.epsilon

    def on_train_end(self, logs: dict | None = None) -> None:
        self.epsilon = self._spent()
        if self.state_path is not None:
            save_privacy_state(self.model, self.state_path)

    def on_dp_fit_exit(self, model: Any) -> None:
        """Called by the DP model when ``fit`` returns or raises: the state file then
        holds every update that ran, also after an interrupt."""
        if self.state_path is not None:
            save_privacy_state(model, self.state_path)

    # Helpers.
    def _spent(self) -> float:
        return privacy_spent(
            self.model, self.delta, self.accountant, allow_large_delta=self.allow_large_delta
        )

    def _show_live_epsilon(self, batch: int, logs: dict | None) -> None:
        """Recompute epsilon every ``_live_interval`` batches, the interval chosen so that
        accounting time / training time stays below ``live_overhead``; each value covers
        the updates until the next recomputation (see the class docstring)."""
        now = time.perf_counter()
        if self._last_batch_end is not None:
            step = now - self._last_batch_end
            self._step_seconds = (
                step if self._step_seconds is None else (0.9 * self._step_seconds + 0.1 * step)
            )
        self._since_live += 1
        record = _record_of(self.model)
        done = record.current.updates
        stale = self._live_valid_until is None or done > self._live_valid_until
        if self._live_epsilon is None or stale or self._since_live >= self._live_interval:
            per_call = self._updates_per_call()
            ahead = (self._live_interval - 1) * per_call
            steps = (self.params or {}).get("steps")
            if steps:  # never beyond the epoch's end
                ahead = max(0, min(ahead, (steps - batch - 1) * per_call))
            self._live_epsilon = accounting.epsilon_of_record(
                _with_more_updates(record, ahead),
                self.delta,
                self.accountant,
                allow_large_delta=self.allow_large_delta,
            )
            self._live_valid_until = done + ahead
            cost = time.perf_counter() - now
            if self._step_seconds:
                budget = self.live_overhead * self._step_seconds
                self._live_interval = max(1, math.ceil(cost / budget))
            self._since_live = 0
        if logs is not None:
            logs["epsilon"] = self._live_epsilon
        self._last_batch_end = time.perf_counter()

    def _updates_per_call(self) -> int:
        """Most optimizer updates one ``train_function`` call can make."""
        return max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))

    def _restore_earlier_training(self, record: TrainingRecord) -> None:
        if self.state_path is None or not os.path.exists(self.state_path):
            return
        # A model restored from a checkpoint carries the record up to that checkpoint;
        # the state file also counts the updates made after it (spent all the same).
        adopt_saved_record(record, load_privacy_state(self.state_path), record.current)


def _with_more_updates(record: TrainingRecord, count: int) -> TrainingRecord:
    """A copy of ``record`` whose current segment has ``count`` more updates."""
    copy = TrainingRecord.from_dict(record.to_dict())
    if copy.current is not None:
        copy.current.updates += count
    return copy


def _with_one_more_update(record: TrainingRecord) -> TrainingRecord:
    """A copy of ``record`` whose current segment has one more update (for checks)."""
    return _with_more_updates(record, 1)
