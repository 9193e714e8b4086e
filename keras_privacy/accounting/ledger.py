"""A privacy ledger that saves as plain JSON: the DpEvents composed so far, with counts.

The ledger is an ordered list of entries ``(event, count)``: ``count`` occurrences of one
mechanism (for DP-SGD with Poisson sampling, one entry per stretch of identical optimizer
updates; with shuffled batches, one Gaussian per pass). Its epsilon is that of the
composition ``ComposedDpEvent([SelfComposedDpEvent(event, count), ...])``.

Saving writes only numbers, strings and lists; loading accepts only the event types listed
in ``_EVENT_TYPES`` (never unpickles, never imports anything named in the file), and
rebuilds the same events in the same order, so the restored ledger gives a bit-identical
epsilon.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any

import dp_accounting

from keras_privacy.accounting import _checks, accountants, events

LEDGER_FORMAT = "keras-privacy/privacy-ledger"
LEDGER_VERSION = 1
_MAX_NESTING = 32


def _number(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"privacy ledger: {what} must be a number, received {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"privacy ledger: {what} must be >= 0, received {value!r}")
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"privacy ledger: {what} must be an integer >= 0, received {value!r}")
    return value


def event_to_data(event: dp_accounting.DpEvent) -> dict[str, Any]:
    """Plain-data form of a DpEvent built from the supported event types."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return {"type": "no_op"}
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return {"type": "non_private"}
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return {"type": "gaussian", "noise_multiplier": float(event.noise_multiplier)}
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return {
            "type": "poisson_sampled",
            "sampling_probability": float(event.sampling_probability),
            "event": event_to_data(event.event),
        }
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return {
            "type": "self_composed",
            "count": int(event.count),
            "event": event_to_data(event.event),
        }
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return {"type": "composed", "events": [event_to_data(e) for e in event.events]}
    raise ValueError(f"privacy ledger: cannot save event type {type(event).__name__}")


def event_from_data(data: Any, _depth: int = 0) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_data`; rejects anything else with ValueError."""
    if _depth > _MAX_NESTING:
        raise ValueError("privacy ledger: events nested too deeply")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError(
            f"privacy ledger: an event must be an object with a type, received {data!r}"
        )
    kind = data["type"]
    if kind == "no_op":
        return dp_accounting.NoOpDpEvent()
    if kind == "non_private":
        return dp_accounting.NonPrivateDpEvent()
    if kind == "gaussian":
        return dp_accounting.GaussianDpEvent(
            _number(data.get("noise_multiplier"), "noise_multiplier")
        )
    if kind == "poisson_sampled":
        q = _number(data.get("sampling_probability"), "sampling_probability")
        if q > 1:
            raise ValueError(f"privacy ledger: sampling_probability must be <= 1, received {q!r}")
        return dp_accounting.PoissonSampledDpEvent(
            q, event_from_data(data.get("event"), _depth + 1)
        )
    if kind == "self_composed":
        return dp_accounting.SelfComposedDpEvent(
            event_from_data(data.get("event"), _depth + 1), _count(data.get("count"), "count")
        )
    if kind == "composed":
        children = data.get("events")
        if not isinstance(children, list):
            raise ValueError("privacy ledger: a composed event needs a list of events")
        return dp_accounting.ComposedDpEvent([event_from_data(c, _depth + 1) for c in children])
    raise ValueError(f"privacy ledger: unknown event type {kind!r}")


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """``count`` occurrences of ``event``, described in words by ``note``."""

    event: dp_accounting.DpEvent
    count: int
    note: str = ""


class PrivacyLedger:
    """Ordered record of the mechanisms run on the data, for accounting and saving.

    Use :meth:`record` once per mechanism run (one optimizer update under Poisson
    sampling): identical consecutive events are merged into one entry with a count, so the
    ledger stays small however long training runs.
    """

    def __init__(self, entries: list[LedgerEntry] | None = None) -> None:
        self._entries: list[LedgerEntry] = list(entries or [])

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    @property
    def num_events(self) -> int:
        """Total occurrences recorded (sum of counts)."""
        return sum(entry.count for entry in self._entries)

    def record(self, event: dp_accounting.DpEvent, count: int = 1, note: str = "") -> None:
        """Append ``count`` occurrences of ``event`` (merged with the last entry if equal)."""
        if not isinstance(event, dp_accounting.DpEvent):
            raise ValueError(f"event must be a dp_accounting DpEvent, received {event!r}")
        count = _count(count, "count")
        if count == 0:
            return
        if self._entries and self._entries[-1].event == event:
            last = self._entries[-1]
            self._entries[-1] = dataclasses.replace(last, count=last.count + count)
        else:
            self._entries.append(LedgerEntry(event, count, note))

    def dp_event(self) -> dp_accounting.DpEvent:
        """The composition of all entries, in order."""
        parts = [dp_accounting.SelfComposedDpEvent(e.event, e.count) for e in self._entries]
        if not parts:
            return dp_accounting.NoOpDpEvent()
        return dp_accounting.ComposedDpEvent(parts)

    def epsilon(self, delta: float, accountant: str = "pld") -> float:
        """Epsilon of everything recorded, at ``delta``."""
        return accountants.epsilon_for_event(self.dp_event(), delta, accountant)

    def delta(self, epsilon: float, accountant: str = "pld") -> float:
        """Delta of everything recorded, at ``epsilon``."""
        return accountants.delta_for_event(self.dp_event(), epsilon, accountant)

    @classmethod
    def from_training_record(cls, record: Any) -> PrivacyLedger:
        """Ledger of a :class:`~keras_privacy.training.record.TrainingRecord`.

        One entry per other release of the record, then one per segment: Poisson segments
        record one Poisson-subsampled Gaussian per optimizer update; shuffled / fixed-batch
        segments one Gaussian per pass (see :mod:`keras_privacy.accounting.events`).

        Raises:
          DatasetSizeUnknownError: a segment with updates lacks its dataset size.
        """
        ledger = cls()
        for note, event in getattr(record, "other_releases", ()):
            ledger._entries.append(LedgerEntry(event, 1, note or "other release"))
        for index, segment in enumerate(record.segments, 1):
            event = events.segment_event(segment)
            if isinstance(event, dp_accounting.SelfComposedDpEvent):
                unit = "optimizer update" if segment.sampling == events.POISSON else "pass"
                note = f"segment {index}: {segment.sampling}, {event.count} x {unit}"
                ledger._entries.append(LedgerEntry(event.event, event.count, note))
        return ledger

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "entries": [
                {"event": event_to_data(e.event), "count": e.count, "note": e.note}
                for e in self._entries
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> PrivacyLedger:
        _checks.check_format_header(data, LEDGER_FORMAT, LEDGER_VERSION, "privacy ledger")
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ValueError("privacy ledger: entries must be a list")
        ledger = cls()
        for item in entries:
            if not isinstance(item, dict):
                raise ValueError(f"privacy ledger: an entry must be an object, received {item!r}")
            note = item.get("note", "")
            ledger._entries.append(
                LedgerEntry(
                    event_from_data(item.get("event")),
                    _count(item.get("count"), "count"),
                    note if isinstance(note, str) else "",
                )
            )
        return ledger

    def to_json(self, **json_kwargs: Any) -> str:
        """JSON text; floats are written with ``repr`` precision, so they read back exactly."""
        return json.dumps(self.to_dict(), **json_kwargs)

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyLedger) and self._entries == other._entries

    def __repr__(self) -> str:
        return f"PrivacyLedger({self.num_events} events in {len(self._entries)} entries)"
