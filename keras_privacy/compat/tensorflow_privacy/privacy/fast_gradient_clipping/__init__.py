"""``tensorflow_privacy.privacy.fast_gradient_clipping``: only ``layer_registry``."""
