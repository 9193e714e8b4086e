"""TF Privacy's training and accounting paths under keras_privacy.compat.tensorflow_privacy."""

from __future__ import annotations

import importlib

import dp_accounting
import pytest

import keras_privacy as kp
from keras_privacy import accounting
from keras_privacy.training import optimizers

ROOT = "keras_privacy.compat.tensorflow_privacy"


@pytest.mark.parametrize(
    "module, name, native",
    [
        (ROOT, "DPKerasSGDOptimizer", kp.DPKerasSGDOptimizer),
        (ROOT, "DPKerasAdamOptimizer", kp.DPKerasAdamOptimizer),
        (ROOT, "DPSequential", kp.DPSequential),
        (ROOT, "VectorizedDPKerasSGDOptimizer", optimizers.VectorizedDPKerasSGDOptimizer),
        (f"{ROOT}.privacy.optimizers.dp_optimizer_keras", "DPKerasSGDOptimizer", None),
        (f"{ROOT}.privacy.optimizers.dp_optimizer_keras", "DPKerasAdagradOptimizer", None),
        (f"{ROOT}.privacy.keras_models.dp_keras_model", "DPModel", kp.DPModel),
        (f"{ROOT}.privacy.keras_models.dp_keras_model", "DPSequential", kp.DPSequential),
    ],
)
def test_training_names_are_the_keras_privacy_classes(module, name, native):
    value = getattr(importlib.import_module(module), name)
    assert value is (native if native is not None else getattr(kp, name))


def test_compute_dp_sgd_privacy_returns_rdp_epsilon_and_order():
    lib = importlib.import_module(f"{ROOT}.privacy.analysis.compute_dp_sgd_privacy_lib")
    old = importlib.import_module(f"{ROOT}.privacy.analysis.compute_dp_sgd_privacy")
    assert old.compute_dp_sgd_privacy is lib.compute_dp_sgd_privacy
    epsilon, order = lib.compute_dp_sgd_privacy(60000, 256, 1.1, 60, 1e-5)
    assert epsilon == pytest.approx(
        accounting.compute_epsilon(60000, 256, 1.1, delta=1e-5, epochs=60, accountant="rdp")
    )
    assert epsilon == pytest.approx(2.597, abs=1e-3)
    # independent: dp_accounting directly, TF Privacy's event for this call
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(256 / 60000, dp_accounting.GaussianDpEvent(1.1)),
            14063,
        )
    )
    assert (epsilon, order) == pytest.approx(rdp.get_epsilon_and_optimal_order(1e-5))


# TF Privacy's order list for compute_dp_sgd_privacy (a fact of its API)
TF_PRIVACY_ORDERS = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, *range(5, 64), 128, 256]


@pytest.mark.parametrize(
    "n, batch_size, sigma, epochs, strictly_smaller",
    [
        (25000, 250, 0.3, 10, False),  # best order 1.25: the default orders alone gave 79.401
        (50000, 500, 0.2, 100, True),  # best order 1.1, below TF Privacy's list: 1524 vs 5473
        (60000, 256, 0.5, 10, True),
    ],
)
def test_compute_dp_sgd_privacy_never_above_tf_privacy_orders(
    n, batch_size, sigma, epochs, strictly_smaller
):
    lib = importlib.import_module(f"{ROOT}.privacy.analysis.compute_dp_sgd_privacy_lib")
    epsilon, _ = lib.compute_dp_sgd_privacy(n, batch_size, sigma, epochs, 1e-5)
    rdp = dp_accounting.rdp.RdpAccountant([*TF_PRIVACY_ORDERS, 512])
    event = dp_accounting.PoissonSampledDpEvent(
        batch_size / n, dp_accounting.GaussianDpEvent(sigma)
    )
    rdp.compose(dp_accounting.SelfComposedDpEvent(event, -(-epochs * n // batch_size)))
    tf_privacy_epsilon = rdp.get_epsilon(1e-5)
    assert epsilon <= tf_privacy_epsilon * (1 + 1e-12)
    if strictly_smaller:
        assert epsilon < 0.995 * tf_privacy_epsilon


def test_statement_takes_tf_privacy_accountant_type():
    lib = importlib.import_module(f"{ROOT}.privacy.analysis.compute_dp_sgd_privacy_lib")
    args = (60000, 256, 60, 1.1, 1e-5)
    rdp = lib.compute_dp_sgd_privacy_statement(
        *args, used_microbatching=False, accountant_type=lib.AccountantType.RDP
    )
    assert "Renyi DP" in rdp and "2.597" in rdp
    assert "privacy loss distributions" in lib.compute_dp_sgd_privacy_statement(
        *args, accountant_type="PLD"
    )
    assert "privacy loss distributions" in lib.compute_dp_sgd_privacy_statement(*args)
    with pytest.raises(ValueError, match="accountant"):
        lib.compute_dp_sgd_privacy_statement(*args, accountant_type="GDP")


def test_compute_noise_is_the_rdp_calibration():
    lib = importlib.import_module(f"{ROOT}.privacy.analysis.compute_noise_from_budget_lib")
    sigma = lib.compute_noise(60000, 256, 3.0, 60, 1e-5, 0.1)
    assert sigma == accounting.compute_noise_multiplier(
        3.0, 1e-5, 60000, 256, epochs=60, accountant="rdp"
    )
    assert (
        accounting.compute_epsilon(60000, 256, sigma, delta=1e-5, epochs=60, accountant="rdp")
        <= 3.0
    )
