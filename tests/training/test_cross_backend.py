"""A DP model saved on one Keras backend loads and keeps training with DP on another.

The model is saved by a separate process on the *other* backend (Keras fixes its backend
at import), then loaded here and trained: the DP settings and the privacy record carry
over, the noise state and the seed do not.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_privacy as kp

ROOT = Path(__file__).resolve().parents[2]
BACKEND = keras.backend.backend()
# A cycle (TensorFlow <- PyTorch <- JAX <- TensorFlow) in the default suite: every backend
# saves once and loads once; the other direction of each pair runs with -m slow.
CYCLE = {"tensorflow": "torch", "torch": "jax", "jax": "tensorflow"}
OTHERS = [
    pytest.param(
        other,
        marks=[
            *(() if CYCLE.get(BACKEND) == other else (pytest.mark.slow,)),
            pytest.mark.skipif(
                importlib.util.find_spec(other) is None, reason=f"needs {other} installed"
            ),
        ],
    )
    for other in ("tensorflow", "jax", "torch")
    if other != BACKEND
]

SAVE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    import keras_privacy as kp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 2, size=64)
    model = kp.DPSequential(
        l2_norm_clip=0.7,
        noise_multiplier=1.2,
        seed=3,
        layers=[keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)],
    )
    model.compile(
        optimizer=kp.DPKerasSGDOptimizer(l2_norm_clip=0.7, noise_multiplier=1.2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model.save(sys.argv[1])
    np.save(sys.argv[2], model.predict(x, verbose=0))
    print(model.privacy_record.total_updates)
    """
)


@pytest.mark.parametrize("other", OTHERS)
def test_saved_on_another_backend_loads_and_trains_with_dp(tmp_path, other):
    path, preds = tmp_path / "model.keras", tmp_path / "preds.npy"
    env = {**os.environ, "KERAS_BACKEND": other, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SAVE, str(path), str(preds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    updates = int(done.stdout.strip().splitlines()[-1])
    # keras_privacy imports its model classes lazily; they register with Keras's
    # serialization when first touched (as in the other tests of a full run).
    assert kp.DPSequential is not None
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kp.DPSequential)
    assert (loaded.dp_config.l2_norm_clip, loaded.dp_config.noise_multiplier) == (0.7, 1.2)
    assert loaded.dp_config.seed is None
    assert loaded.privacy_record.total_updates == updates > 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 2, size=64)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), np.load(preds), rtol=1e-5, atol=1e-6)
    before = [np.array(w) for w in loaded.get_weights()]
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert loaded.privacy_record.total_updates == updates + 4
    assert loaded.privacy_record.current.noise_multiplier == 1.2
    assert any(not np.allclose(a, b) for a, b in zip(before, loaded.get_weights(), strict=True))
