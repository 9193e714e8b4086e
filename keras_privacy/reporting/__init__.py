"""Privacy reports: one self-contained HTML page (plus its PNGs) per trained DP model.

:func:`privacy_report` writes the report of one model (also ``keras-privacy report`` on
the command line); :class:`~keras_privacy.reporting.page.Page` is the page machinery the
tutorials' comparison reports use as well. Framework-free: a report of a saved ``.keras``
file reads the archive's config without Keras.
"""

from __future__ import annotations

from keras_privacy.reporting.page import Figure, Page, Section
from keras_privacy.reporting.privacy_report import membership_results, privacy_report

__all__ = ["Figure", "Page", "Section", "membership_results", "privacy_report"]
