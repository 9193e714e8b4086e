"""``tensorflow_privacy.privacy``."""
