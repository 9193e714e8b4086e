"""``tensorflow_privacy.privacy.privacy_tests``: membership inference and the secret sharer."""
