"""Compatibility layers for code written against other libraries.

:mod:`keras_privacy.compat.tensorflow_privacy` mirrors TensorFlow Privacy's module paths:
``from tensorflow_privacy.X import Y`` becomes
``from keras_privacy.compat.tensorflow_privacy.X import Y``. Every name there is a
keras-privacy implementation, or a thin wrapper onto one where TF Privacy's arguments
differ; see docs/coming_from_tf_privacy.md for what differs.
"""
