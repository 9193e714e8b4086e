"""``tensorflow_privacy.privacy.optimizers``."""
