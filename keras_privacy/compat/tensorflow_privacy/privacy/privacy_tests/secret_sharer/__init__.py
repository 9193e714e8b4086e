"""``tensorflow_privacy.privacy.privacy_tests.secret_sharer``."""
