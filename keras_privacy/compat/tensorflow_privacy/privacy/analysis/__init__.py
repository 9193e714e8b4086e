"""``tensorflow_privacy.privacy.analysis``: DP-SGD accounting."""
