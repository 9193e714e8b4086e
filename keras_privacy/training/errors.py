"""Errors and warnings that keep training from silently losing its privacy."""


class PrivacyError(ValueError):
    """Raised where going on would train without the promised differential privacy."""


class SamplingWarning(UserWarning):
    """The batches were not sampled the way the privacy accountant's best bound assumes."""


class BatchMixingWarning(UserWarning):
    """The model mixes the examples of a batch (a layer's output for one example depends on
    the others), so DP training runs each example through it alone: that computation sees
    one example at a time in training and the whole batch in evaluation. Make it an error
    with ``warnings.simplefilter("error", keras_privacy.BatchMixingWarning)``."""
