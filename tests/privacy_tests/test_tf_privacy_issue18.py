"""Issue 18 (A1–A4, A6–A9, A11): TF Privacy's privacy-test behaviours its users rely on."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from keras_privacy.privacy_tests import (
    AttackInputData,
    AttackResults,
    AttackResultsCollection,
    AttackType,
    PrivacyMetric,
    PrivacyReportMetadata,
    SingleSliceSpec,
    SlicingFeature,
    run_attacks,
)


def _results(epoch: int, accuracy_train: float, accuracy_test: float) -> AttackResults:
    rng = np.random.default_rng(epoch)
    data = AttackInputData(
        loss_train=rng.normal(-0.3 * epoch, 1, 200), loss_test=rng.normal(0, 1, 200)
    )
    return run_attacks(
        data,
        attack_types=[AttackType.THRESHOLD_ATTACK],
        privacy_report_metadata=PrivacyReportMetadata(
            accuracy_train=accuracy_train, accuracy_test=accuracy_test, epoch_num=epoch
        ),
    )


# ------------------------------------------------------------------------------ A1


def test_a1_sample_weights_multiply_the_computed_loss():
    logits = np.array([[1.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0])
    weights = np.array([1.0, 0.5])
    data = AttackInputData(
        logits_train=logits,
        logits_test=logits,
        labels_train=labels,
        labels_test=labels,
        sample_weight_train=weights,
        sample_weight_test=np.ones(2),
    )
    unweighted = -np.log(np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(data.get_loss_train(), unweighted * weights)
    np.testing.assert_allclose(data.get_loss_test(), unweighted)


def test_a1_threshold_roc_ranks_the_weighted_losses_unweighted():
    rng = np.random.default_rng(3)
    n = 200
    labels = rng.integers(0, 2, n)
    logits_train, logits_test = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    weights_train, weights_test = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    data = AttackInputData(
        logits_train=logits_train,
        logits_test=logits_test,
        labels_train=labels,
        labels_test=labels,
        sample_weight_train=weights_train,
        sample_weight_test=weights_test,
    )
    # the same attack on the weighted losses given directly, without weights
    reference = AttackInputData(loss_train=data.get_loss_train(), loss_test=data.get_loss_test())
    attack = [AttackType.THRESHOLD_ATTACK]
    auc = run_attacks(data, attack_types=attack).single_attack_results[0].get_auc()
    expected = run_attacks(reference, attack_types=attack).single_attack_results[0].get_auc()
    assert auc == pytest.approx(expected)


# ------------------------------------------------------------------------------ A2


def test_a2_probability_zero_on_the_true_label_gives_a_capped_loss():
    probs_train = np.array([[0.0, 1.0], [0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    probs_test = np.array([[0.5, 0.5], [0.3, 0.7], [1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 0, 1])
    data = AttackInputData(
        probs_train=probs_train, probs_test=probs_test, labels_train=labels, labels_test=labels
    )
    cap = -math.log(1e-8)
    assert data.get_loss_train()[0] == pytest.approx(cap)  # 18.420680...
    assert data.get_loss_test()[2] == pytest.approx(cap)
    results = run_attacks(data, attack_types=[AttackType.THRESHOLD_ATTACK])
    assert np.isfinite(results.single_attack_results[0].get_auc())


# ------------------------------------------------------------------------------ A3


def test_a3_slice_spec_with_feature_none_is_the_entire_dataset():
    spec = SingleSliceSpec(None)
    assert str(spec) == "Entire dataset"
    assert spec.entire_dataset
    assert spec == SingleSliceSpec(SlicingFeature.ENTIRE_DATASET)


# ------------------------------------------------------------------------------ A4


def test_a4_sample_weights_of_shape_n_by_1_are_accepted():
    rng = np.random.default_rng(0)
    loss_train, loss_test = rng.normal(size=10), rng.normal(size=12)
    data = AttackInputData(
        loss_train=loss_train,
        loss_test=loss_test,
        sample_weight_train=np.ones((10, 1)),
        sample_weight_test=np.full((12, 1), 2.0),
    )
    assert data.sample_weight_train.shape == (10,)
    assert data.sample_weight_test.shape == (12,)


# ------------------------------------------------------------------------------ A6


def test_a6_get_flattened_attack_metrics():
    from keras_privacy.privacy_tests.data_structures import get_flattened_attack_metrics

    results = _results(1, 0.9, 0.8)
    types, slices, names, values = get_flattened_attack_metrics(results)
    result = results.single_attack_results[0]
    assert types == ["THRESHOLD_ATTACK"] * 3
    assert slices == ["Entire dataset"] * 3
    assert names == ["adv", "auc", "ppv"]
    assert values == pytest.approx(
        [result.get_attacker_advantage(), result.get_auc(), result.get_ppv()]
    )


# ------------------------------------------------------------------------------ A7


def test_a7_roc_figure_show_works_on_a_non_interactive_backend():
    import matplotlib.pyplot as plt

    from keras_privacy.privacy_tests.plotting import plot_roc_curve

    figure = plot_roc_curve(_results(1, 0.9, 0.8).single_attack_results[0].roc_curve)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-interactive, cannot be shown"
        figure.show()
    assert figure.canvas.manager is not None
    plt.close(figure)


# ------------------------------------------------------------------------------ A8


@pytest.mark.parametrize("metric", ["AUC", "Attacker advantage", "ATTACKER_ADVANTAGE"])
def test_a8_report_metrics_by_name(metric):
    from keras_privacy.privacy_tests.plotting import plot_by_epochs, plot_privacy_vs_accuracy

    collection = AttackResultsCollection([_results(e, 0.5 + 0.1 * e, 0.5) for e in (1, 2)])
    figure = plot_by_epochs(collection, [metric])
    assert len(figure.axes) == 1
    assert figure.get_suptitle() == "Vulnerability per Epoch"  # TF Privacy's titles
    figure = plot_privacy_vs_accuracy(collection, [metric])
    assert figure.get_suptitle() == "Privacy vs Utility Analysis"
    with pytest.raises(ValueError, match="unknown privacy metric"):
        plot_by_epochs(collection, ["AUROC"])


# ------------------------------------------------------------------------------ A9


def test_a9_collection_save_and_load(tmp_path):
    collection = AttackResultsCollection([_results(e, 0.9, 0.8) for e in range(1, 13)])
    collection.save(str(tmp_path / "collection"))
    loaded = AttackResultsCollection.load(str(tmp_path / "collection"))
    assert len(loaded.attack_results_list) == 12
    pairs = zip(collection.attack_results_list, loaded.attack_results_list, strict=True)
    for before, after in pairs:
        assert after.privacy_report_metadata == before.privacy_report_metadata
        assert after.single_attack_results[0].get_auc() == pytest.approx(
            before.single_attack_results[0].get_auc()
        )


# ------------------------------------------------------------------------------ A11


def test_a11_privacy_vs_accuracy_uses_train_accuracy_by_default():
    from keras_privacy.privacy_tests.plotting import plot_privacy_vs_accuracy

    collection = AttackResultsCollection([_results(e, 0.6 + 0.1 * e, 0.5) for e in (1, 2)])
    figure = plot_privacy_vs_accuracy(collection, [PrivacyMetric.AUC])
    line = figure.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [0.7, 0.8])
    assert figure.axes[0].get_xlabel() == "Train accuracy"
    test_figure = plot_privacy_vs_accuracy(collection, [PrivacyMetric.AUC], use_test_accuracy=True)
    np.testing.assert_allclose(test_figure.axes[0].get_lines()[0].get_xdata(), [0.5, 0.5])


# ------------------------------------------------------------------------------ item 2


def test_tf_privacy_loss_function_arguments():
    logits = np.array([-10.0, -5.0, 0.0, 5.0, 10.0])
    data = AttackInputData(
        logits_train=logits,
        logits_test=logits,
        labels_train=np.zeros(5),
        labels_test=np.ones(5),
        loss_function="cross_entropy",
        loss_function_using_logits=True,
    )
    np.testing.assert_allclose(data.get_loss_train(), np.logaddexp(0.0, logits))
    np.testing.assert_allclose(data.get_loss_test(), np.logaddexp(0.0, -logits))
    only_probs = AttackInputData(
        probs_train=np.array([0.5]),
        probs_test=np.array([0.5]),
        labels_train=np.array([1]),
        labels_test=np.array([0]),
        loss_function_using_logits=True,
    )
    with pytest.raises(ValueError, match="no logits"):
        only_probs.get_loss_train()
    with pytest.raises(ValueError, match="loss_train and loss_test"):
        AttackInputData(loss_train=np.ones(2), loss_test=np.ones(2), loss_function="squared")


def test_tf_privacy_is_multihot_labels():
    data = AttackInputData(loss_train=np.ones(2), loss_test=np.ones(2))
    assert not data.is_multihot_labels(None, "null")
    assert not data.is_multihot_labels(np.array([0, 1]), "one dimension")
    assert not data.is_multihot_labels(np.array([[0, 1], [1, 0]]), "one-hot")
    assert data.is_multihot_labels(np.array([[1, 1], [1, 0]]), "multi-hot")
    with pytest.raises(ValueError, match="more than 2"):
        data.is_multihot_labels(np.zeros((2, 2, 2)), "3-D")
