"""Issue 18, item 2: TF Privacy's public names import where its users import them; the ones
keras-privacy does not provide fail on use, saying what to use instead."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from keras_privacy.compat._unsupported import UnsupportedError

ROOT = "keras_privacy.compat.tensorflow_privacy.privacy"
MIA = f"{ROOT}.privacy_tests.membership_inference_attack"

# (module, names) that TF Privacy's own test files and examples import
IMPORTED_BY_TF_PRIVACY_FILES = [
    (f"{ROOT}.privacy_tests.epsilon_lower_bound", ["BoundMethod", "EpsilonLowerBound"]),
    (f"{ROOT}.privacy_tests.utils", ["LossFunction"]),
    (f"{ROOT}.fast_gradient_clipping.layer_registry", ["make_default_layer_registry"]),
    (
        f"{MIA}.data_structures",
        [
            "_log_value",
            "DataSize",
            "EpsilonLowerBoundValue",
            "SingleMembershipProbabilityResult",
            "get_flattened_attack_metrics",
            "ENTIRE_DATASET_SLICE_STR",
            "_ABSOLUTE_TOLERANCE",
        ],
    ),
    (f"{MIA}.models", []),
    (
        f"{ROOT}.analysis.compute_dp_sgd_privacy_lib",
        ["_compute_dp_sgd_example_privacy", "_compute_dp_sgd_user_privacy"],
    ),
]


@pytest.mark.parametrize("module, names", IMPORTED_BY_TF_PRIVACY_FILES)
def test_names_import(module, names):
    imported = importlib.import_module(module)
    for name in names:
        getattr(imported, name)


@pytest.mark.parametrize(
    "module, name, instead",
    [
        (f"{ROOT}.privacy_tests.utils", "log_loss", "loss_train"),
        (f"{MIA}.data_structures", "_log_value", "private helper"),
        (f"{ROOT}.analysis.compute_dp_sgd_privacy_lib", "_logexpm1", "statement"),
    ],
)
def test_unsupported_names_fail_on_use_saying_what_to_use(module, name, instead):
    placeholder = getattr(importlib.import_module(module), name)
    with pytest.raises(UnsupportedError, match=instead):
        placeholder(1.0, 2.0)
    with pytest.raises(UnsupportedError, match=instead):
        placeholder.some_attribute  # noqa: B018


def test_names_a_module_lacks_fail_on_import_saying_what_to_use():
    with pytest.raises(ImportError, match="attack_model_factories"):
        exec(f"from {MIA}.models import TrainedAttacker", {})
    with pytest.raises(ImportError, match="not provided by keras-privacy"):
        exec(f"from {MIA}.data_structures import AttackResultsDFColumns", {})


def test_bound_method_names_are_tf_privacys():
    elb = importlib.import_module(f"{ROOT}.privacy_tests.epsilon_lower_bound")
    assert {m.name: m.value for m in elb.BoundMethod} == {
        "KATZ_LOG": "katz-log",
        "ADJUSTED_LOG": "adjusted-log",
        "BAILEY": "bailey",
        "INV_SINH": "inv-sinh",
        "CLOPPER_PEARSON": "clopper-pearson",
    }


def test_epsilon_lower_bound_module_is_keras_privacys_ratio_bounds():
    from keras_privacy.privacy_tests import ratio_bounds

    elb = importlib.import_module(f"{ROOT}.privacy_tests.epsilon_lower_bound")
    for name in ("BoundMethod", "EpsilonLowerBound", "RatioBound"):
        assert getattr(elb, name) is getattr(ratio_bounds, name)
    bound = elb.EpsilonLowerBound(np.ones(50), np.zeros(50), 0.05)
    values = bound.compute_epsilon_lower_bounds(k=1)
    assert set(values) == set(elb.BoundMethod)
    assert all(v.shape == (1,) and v[0] > 0 for v in values.values())


def test_layer_registry_is_a_no_op_that_says_so():
    import keras

    layer_registry = importlib.import_module(f"{ROOT}.fast_gradient_clipping.layer_registry")
    registry = layer_registry.make_default_layer_registry()
    assert registry.is_elem(keras.layers.Dense(2))  # keras-privacy has a fast rule
    assert not registry.is_elem(keras.layers.LSTM(2))  # vectorized engine instead
    with pytest.raises(UnsupportedError, match="register_rule"):
        registry.insert(keras.layers.Dense, lambda *args: None)


def test_data_size_is_accepted_by_single_attack_result():
    data_structures = importlib.import_module(f"{MIA}.data_structures")
    result = data_structures.SingleAttackResult(
        slice_spec=data_structures.SingleSliceSpec(None),
        attack_type=data_structures.AttackType.THRESHOLD_ATTACK,
        roc_curve=data_structures.RocCurve(
            tpr=np.array([0.0, 0.5, 1.0]),
            fpr=np.array([0.0, 0.5, 1.0]),
            thresholds=np.array([2, 1, 0]),
        ),
        data_size=data_structures.DataSize(ntrain=3, ntest=4),
    )
    assert result.data_size == {"train": 3, "test": 4}
    assert result.get_auc() == pytest.approx(0.5)


def test_epsilon_lower_bound_value_in_results_built_by_hand(tmp_path):
    data_structures = importlib.import_module(f"{MIA}.data_structures")
    elb = importlib.import_module(f"{ROOT}.privacy_tests.epsilon_lower_bound")
    value = data_structures.EpsilonLowerBoundValue(
        bounds={
            elb.BoundMethod.KATZ_LOG: np.array([-2.0, -2.0]),
            elb.BoundMethod.ADJUSTED_LOG: np.array([10.0, 1.0]),
            elb.BoundMethod.BAILEY: np.array([]),
        }
    )
    np.testing.assert_array_equal(value.get_max_epsilon_bounds(), [10.0, 1.0])
    result = data_structures.SingleAttackResult(
        slice_spec=data_structures.SingleSliceSpec(None),
        attack_type=data_structures.AttackType.THRESHOLD_ATTACK,
        roc_curve=data_structures.RocCurve(
            tpr=np.array([0.0, 1.0, 1.0]),
            fpr=np.array([0.0, 0.0, 1.0]),
            thresholds=np.array([2, 1, 0]),
        ),
        data_size=data_structures.DataSize(ntrain=1, ntest=1),
        epsilon_lower_bound_value=value,
    )
    assert result.get_epsilon_lower_bound() == 10.0
    results = data_structures.AttackResults([result])
    results.save(str(tmp_path / "results.json"))
    loaded = data_structures.AttackResults.load(str(tmp_path / "results.json"))
    assert loaded.single_attack_results[0].get_epsilon_lower_bound() == 10.0
    empty = data_structures.EpsilonLowerBoundValue(bounds={elb.BoundMethod.BAILEY: np.array([])})
    assert np.isnan(empty.get_max_epsilon())


def test_dp_models_take_tf_privacy_use_xla_and_the_no_op_registry():
    import keras

    layer_registry = importlib.import_module(f"{ROOT}.fast_gradient_clipping.layer_registry")
    dp_keras_model = importlib.import_module(f"{ROOT}.keras_models.dp_keras_model")
    registry = layer_registry.make_default_layer_registry()
    sequential = dp_keras_model.DPSequential(
        l2_norm_clip=1.0,
        noise_multiplier=0.0,
        use_xla=False,
        layer_registry=registry,
        layers=[keras.Input((2,)), keras.layers.Dense(1)],
    )
    inputs = keras.Input((2,))
    functional = dp_keras_model.DPModel(
        inputs=inputs,
        outputs=keras.layers.Dense(1)(inputs),
        l2_norm_clip=1.0,
        noise_multiplier=0.0,
        layer_registry=registry,
    )
    for model in (sequential, functional):
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=4, verbose=0)
    with pytest.raises(TypeError, match="register_rule"):
        dp_keras_model.DPSequential(
            l2_norm_clip=1.0, noise_multiplier=0.0, layer_registry={"Dense": None}
        )
