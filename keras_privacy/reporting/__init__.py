"""Privacy reports: one self-contained HTML page (plus its PNGs) per trained DP model.

:func:`privacy_report` writes the report of one model (also ``keras-privacy report`` on
the command line); :class:`~keras_privacy.reporting.page.Page` is the page machinery the
tutorials' comparison reports use as well. Framework-free: a report of a saved ``.keras``
file reads the archive's config without Keras. Names load on first use, so that the
command line's parser does not load matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Figure": "page",
    "Page": "page",
    "Section": "page",
    "membership_results": "model_report",
    "privacy_report": "model_report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
