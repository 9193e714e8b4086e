"""Runnable tutorials: ``python -m keras_privacy.tutorials.<name>``."""
