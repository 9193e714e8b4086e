"""``tensorflow_privacy.privacy.privacy_tests.membership_inference_attack``."""
