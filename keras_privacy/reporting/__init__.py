"""Privacy reports: one self-contained HTML page (plus its PNGs) per trained DP model.

:func:`privacy_report` writes the report of one model (also ``keras-privacy report`` on
the command line); :class:`~keras_privacy.reporting.page.Page` is the page machinery the
tutorials' comparison reports use as well. Framework-free: a report of a saved ``.keras``
file reads the archive's config without Keras. Names load on first use, so that the
command line's parser does not load matplotlib.
"""

from __future__ import annotations

from keras_privacy._lazy import lazy_getattr

_LAZY = {
    "Figure": "page",
    "Page": "page",
    "Section": "page",
    "membership_results": "measured_sections",
    "privacy_report": "model_report",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return __all__
