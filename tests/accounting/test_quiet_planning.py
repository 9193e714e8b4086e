"""Planning in Python shows no dp_accounting notice about skipped RDP orders (issue 21)."""

import logging

from keras_privacy import accounting


def test_noise_search_logs_no_failed_to_converge_notices(caplog):
    caplog.set_level(logging.WARNING)
    # sigma ~0.67 at q ~0.043: dp_accounting skips orders 1.1-1.4 at each search point
    sigma = accounting.compute_noise_multiplier(8, 1e-5, 60000, 2560, epochs=3, accountant="rdp")
    assert 0.6 < sigma < 0.75
    assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
    assert not logging.getLogger("absl").filters  # nothing left behind
    logging.getLogger("absl").warning("other notices pass")
    assert "other notices pass" in caplog.text
