"""``tensorflow_privacy.privacy.membership_inference_attack`` (TF Privacy's older path)."""
