"""Errors and warnings that keep training from silently losing its privacy."""


class PrivacyError(ValueError):
    """Raised where going on would train without the promised differential privacy."""


class SamplingWarning(UserWarning):
    """The batches were not sampled the way the privacy accountant's best bound assumes."""
