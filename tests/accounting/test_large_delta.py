"""delta >= 1/N is refused everywhere a user states it, unless explicitly allowed.

A mechanism that publishes each of the N examples whole with probability delta is
(0, delta)-DP; with delta >= 1/N it publishes about one example or more, so such a
guarantee is meaningless (issue 21: ``compute_epsilon(N=1000, ..., delta=0.5)`` was 0).
"""

import keras
import numpy as np
import pytest

import keras_privacy as kp
from keras_privacy import accounting, cli

WHY = "publishing a random training example whole"


@pytest.mark.parametrize(
    "call",
    [
        lambda **kw: accounting.compute_epsilon(1000, 10, 1.0, delta=0.5, epochs=1, **kw),
        lambda **kw: accounting.compute_epsilon(1000, 10, 1.0, delta=1e-3, steps=5, **kw),
        lambda **kw: accounting.compute_noise_multiplier(1.0, 0.01, 1000, 10, epochs=1, **kw),
        lambda **kw: accounting.compute_max_steps(1.0, 0.01, 1000, 10, 1.0, **kw),
        lambda **kw: accounting.compute_max_epochs(1.0, 0.01, 1000, 10, 1.0, **kw),
        lambda **kw: accounting.compute_dp_sgd_privacy_report(1000, 10, 1.0, 0.01, steps=5, **kw),
    ],
)
def test_planning_refuses_delta_of_one_over_n_or_more(call):
    with pytest.raises(ValueError, match=WHY):
        call()
    call(allow_large_delta=True)  # the explicit opt-out computes it


def test_delta_just_below_one_over_n_is_accepted():
    assert accounting.compute_epsilon(1000, 10, 1.0, delta=0.99e-3, steps=5) > 0


def test_cli_refuses_large_delta_with_one_line(capsys):
    argv = ["epsilon", "--n", "100", "--batch-size", "10", "--noise-multiplier", "1"]
    argv += ["--epochs", "1", "--delta", "0.5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and WHY in err and "--allow-large-delta" in err
    assert "allow_large_--delta" not in err
    assert cli.main([*argv, "--allow-large-delta"]) == 0


def _model():
    model = kp.DPSequential(
        layers=[keras.Input((4,)), keras.layers.Dense(2)],
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        seed=1,
    )
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_privacy_budget_refuses_large_delta_before_training():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 4)).astype("float32"), rng.integers(0, 2, size=2000)
    model = _model()
    with pytest.raises(ValueError, match=WHY):
        model.fit(x, y, batch_size=100, epochs=1, verbose=0, callbacks=[kp.PrivacyBudget(0.01)])
    assert model.privacy_record.total_updates == 0
    budget = kp.PrivacyBudget(0.01, accountant="rdp", allow_large_delta=True)
    model.fit(x, y, batch_size=100, epochs=1, verbose=0, callbacks=[budget])
    assert budget.epsilon > 0
    with pytest.raises(ValueError, match=WHY):
        model.privacy_spent(0.01)
    assert model.privacy_spent(1e-4) > 0
