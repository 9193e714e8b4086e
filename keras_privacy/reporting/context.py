"""What every section of the privacy report reads: the accounted record and its ε
(:class:`ReportContext`), and how ε and δ are written."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from keras_privacy.reporting.page import format_number
from keras_privacy.training.record import TrainingRecord


def fmt_delta(delta: float) -> str:
    """δ in short scientific notation (``1e-5``)."""
    return f"{delta:.0e}".replace("e-0", "e-")


def fmt_eps(epsilon: float | None) -> str:
    """ε with two decimals (three significant digits below 1)."""
    if epsilon is None or not math.isfinite(epsilon):
        return format_number(epsilon)
    return f"{epsilon:.2f}" if epsilon >= 1 else f"{epsilon:.3g}"


@dataclasses.dataclass
class ReportContext:
    """The accounted record every section reads: ``epsilon_at`` (accountant -> (δ -> ε) of
    the whole record), the record, the model's DP settings, the report's δ and accountant,
    ε under it and under the other accountant, and ``data`` (what ``report.json`` gets)."""

    epsilon_at: dict[str, Any]  # accountant -> (δ -> ε) of the whole record
    record: TrainingRecord
    settings: dict[str, Any]
    delta: float
    accountant: str
    epsilon: float
    epsilon_other: float
    data: dict[str, Any]
