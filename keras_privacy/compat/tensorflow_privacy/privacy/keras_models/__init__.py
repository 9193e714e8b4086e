"""``tensorflow_privacy.privacy.keras_models``."""
