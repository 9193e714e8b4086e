"""Argument checks shared by the accounting functions.

Every check raises ``ValueError`` naming the argument and the value received, so that a
mistake in a planning call (or on the command line) reads as one clear sentence.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

ACCOUNTANTS = ("pld", "rdp")
SAMPLING_ASSUMPTIONS = ("poisson", "shuffle")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and value.is_integer()


def check_delta(delta: Any, name: str = "delta") -> float:
    """delta must be a real number with 0 < delta < 1."""
    if not _is_real(delta) or not (0.0 < float(delta) < 1.0):
        raise ValueError(f"{name} must be a number with 0 < {name} < 1, received {delta!r}")
    return float(delta)


def check_delta_below_one_over_n(
    delta: float, number_of_examples: int, allow_large_delta: bool = False
) -> float:
    """Refuse ``delta >= 1/N`` unless ``allow_large_delta``.

    Why: the mechanism that publishes each of the N examples, whole, independently with
    probability delta is (0, delta)-DP, and for delta >= 1/N it publishes about one
    example or more in expectation. A guarantee that such a mechanism also meets says
    nothing; delta is usually chosen well below 1/N (e.g. 1e-5 for N = 60,000).
    """
    if not allow_large_delta and delta * number_of_examples >= 1.0:
        raise ValueError(
            f"delta={delta:g} is >= 1/N = {1.0 / number_of_examples:.3g} (N = "
            f"{number_of_examples}): with delta >= 1/N, publishing a random training example "
            "whole meets the guarantee, so it is meaningless; choose delta well below 1/N, "
            "or pass allow_large_delta=True to compute it anyway"
        )
    return delta


def check_positive_real(value: Any, name: str) -> float:
    """A finite real number > 0 (target epsilon, epochs)."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, received {value!r}")
    return float(value)


def check_noise_multiplier(value: Any, name: str = "noise_multiplier") -> float:
    """sigma >= 0 and finite (sigma = 0 means no noise: epsilon is infinite)."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, received {value!r}")
    return float(value)


def check_positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (dataset size, batch size, steps, examples per user)."""
    if not _is_integer(value) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, received {value!r}")
    return int(value)


def check_batch_size(batch_size: Any, number_of_examples: int) -> int:
    """1 <= batch_size <= number_of_examples."""
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size > number_of_examples:
        raise ValueError(
            f"batch_size must be <= number_of_examples ({number_of_examples}), "
            f"received {batch_size!r}"
        )
    return batch_size


def check_accountant(accountant: Any) -> str:
    if not isinstance(accountant, str) or accountant.lower() not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, received {accountant!r}")
    return accountant.lower()


def check_sampling(sampling: Any) -> str:
    if not isinstance(sampling, str) or sampling.lower() not in SAMPLING_ASSUMPTIONS:
        raise ValueError(f"sampling must be one of {SAMPLING_ASSUMPTIONS}, received {sampling!r}")
    return sampling.lower()


def check_examples_per_user(value: Any) -> int | None:
    """None (example-level privacy) or an integer >= 1."""
    if value is None:
        return None
    return check_positive_int(value, "max_examples_per_user")


def check_epochs_or_steps(epochs: Any, steps: Any) -> tuple[float | None, int | None]:
    """Exactly one of epochs (> 0, may be fractional) and steps (integer >= 1)."""
    if (epochs is None) == (steps is None):
        raise ValueError(
            f"give exactly one of epochs and steps, received epochs={epochs!r}, steps={steps!r}"
        )
    if epochs is not None:
        return check_positive_real(epochs, "epochs"), None
    return None, check_positive_int(steps, "steps")


def check_format_header(data: Any, format_name: str, version: int, what: str) -> dict:
    """Check the ``format`` and ``version`` fields of a saved JSON document."""
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise ValueError(f"not a {what} (expected format {format_name!r})")
    if data.get("version") != version:
        raise ValueError(f"{what} version must be {version}, received {data.get('version')!r}")
    return data


def check_other_releases(releases: Any) -> tuple:
    """A sequence of dp_accounting DpEvents, as a tuple (ValueError otherwise)."""
    import dp_accounting

    if isinstance(releases, dp_accounting.DpEvent):
        releases = (releases,)
    try:
        releases = tuple(releases)
    except TypeError:
        raise ValueError(
            f"other_releases must be a sequence of dp_accounting DpEvents, received {releases!r}"
        ) from None
    for event in releases:
        if not isinstance(event, dp_accounting.DpEvent):
            raise ValueError(f"other_releases: {event!r} is not a dp_accounting DpEvent")
    return releases
