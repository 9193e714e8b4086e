"""Planning in Python shows no dp_accounting notice about skipped RDP orders (issue 21)."""

import logging

from keras_privacy import accounting
from keras_privacy.accounting.accountants import _SkippedOrderFilter


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_noise_search_logs_no_failed_to_converge_notices():
    logger = logging.getLogger("absl")
    seen, level = _Records(), logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.WARNING)
    try:
        # sigma ~0.67 at q ~0.043: dp_accounting skips orders 1.1-1.4 at each search point
        sigma = accounting.compute_noise_multiplier(
            8, 1e-5, 60000, 2560, epochs=3, accountant="rdp"
        )
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert 0.6 < sigma < 0.75
    assert not [r for r in seen.records if "failed to converge" in r.getMessage()]
    assert not logger.filters  # nothing left behind
    other = logging.LogRecord("absl", logging.WARNING, __file__, 1, "other notice", None, None)
    assert _SkippedOrderFilter().filter(other)  # only that notice is held back
