"""Headline figures: no headline from a tiny slice, an interval beside every figure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from keras_privacy.privacy_tests import (
    AttackInputData,
    AttackResultsCollection,
    AttackType,
    PrivacyMetric,
    PrivacyReportMetadata,
    SlicingSpec,
    headlines,
    plot_by_epochs,
    plot_privacy_vs_accuracy,
    run_attacks,
)
from keras_privacy.privacy_tests.metrics import clopper_pearson_interval


@pytest.mark.parametrize("n, p", [(20, 0.3), (50, 0.02), (200, 0.5)])
def test_clopper_pearson_interval_covers_at_least_the_confidence(n, p):
    # exact coverage: sum the binomial probabilities of the k whose interval holds p
    covered = sum(
        stats.binom.pmf(k, n, p)
        for k in range(n + 1)
        if clopper_pearson_interval(k, n, 0.95)[0] <= p <= clopper_pearson_interval(k, n, 0.95)[1]
    )
    assert covered >= 0.95


def test_clopper_pearson_interval_known_values_and_errors():
    assert clopper_pearson_interval(0, 10) == pytest.approx((0.0, 0.30850), abs=1e-5)
    assert clopper_pearson_interval(1, 1) == pytest.approx((0.025, 1.0))
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson_interval(3, 2)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson_interval(1, 2, 1.0)


def _input(rng, tiny_class_separable=True):
    """1,000 members vs 1,000 non-members, weakly separable; class 9 is a 20 + 20 slice
    that a threshold separates perfectly."""
    labels_train = np.r_[rng.integers(0, 9, 980), np.full(20, 9)]
    labels_test = np.r_[rng.integers(0, 9, 980), np.full(20, 9)]
    loss_train = rng.normal(-0.15, 1.0, 1000)
    loss_test = rng.normal(0.0, 1.0, 1000)
    if tiny_class_separable:
        loss_train[-20:], loss_test[-20:] = -10.0 - rng.random(20), 10.0 + rng.random(20)
    return AttackInputData(
        loss_train=loss_train,
        loss_test=loss_test,
        labels_train=labels_train,
        labels_test=labels_test,
    )


def test_no_headline_from_a_tiny_slice():
    results = run_attacks(
        _input(np.random.default_rng(0)),
        SlicingSpec(entire_dataset=True, by_class=True),
        attack_types=[AttackType.THRESHOLD_ATTACK],
    )
    assert results.get_result_with_max_auc().get_auc() == 1.0  # the 20 + 20 slice
    text = results.summary()
    headline = text.splitlines()
    assert headline[0] == (
        "Best-performing attacks over slices with at least 200 members and non-members "
        "(10 smaller slices left out)"
    )
    assert "on slice Entire dataset" in headline[1] and "AUC of 1.00" not in text
    # every headline figure has its interval
    assert all("95% CI" in line for line in headline[1:5]), text
    small = results.summary(min_slice_size=10)
    assert "an AUC of 1.00 (95% CI" in small and "CLASS=9" in small.splitlines()[1]


def test_largest_slice_when_none_is_big_enough():
    rng = np.random.default_rng(1)
    data = AttackInputData(loss_train=rng.normal(-1, 1, 50), loss_test=rng.normal(0, 1, 50))
    text = run_attacks(data).summary()
    assert text.startswith("Best-performing attacks over the largest slice (no slice has 200")
    assert "Entire dataset" in text


def test_ppv_interval_is_honest_about_one_flagged_example():
    rng = np.random.default_rng(2)
    # one member far above everyone else: PPV 1.00 from a single flagged example
    data = AttackInputData(
        loss_train=np.r_[-50.0, rng.normal(0, 1, 299)], loss_test=rng.normal(0, 1, 300)
    )
    result = run_attacks(data).single_attack_results[0]
    assert result.get_ppv() == 1.0
    low, high, flagged = headlines.ppv_interval(result)
    assert (flagged, high) == (1, 1.0) and low == pytest.approx(0.025)
    assert "1 example flagged" in run_attacks(data).summary()


def test_auc_and_advantage_intervals():
    rng = np.random.default_rng(3)
    data = AttackInputData(loss_train=rng.normal(0, 1, 100), loss_test=rng.normal(0, 1, 100))
    result = run_attacks(data).single_attack_results[0]
    auc = result.get_auc()
    low, high = headlines.auc_interval(result)
    assert low < auc < high and high - low == pytest.approx(2 * 1.96 * 0.0409, abs=0.01)
    low, high = headlines.advantage_interval(result)
    assert low < result.get_attacker_advantage() < high
    low, high = headlines.tpr_at_fpr_interval(result, 0.01)
    assert low <= result.get_tpr_at_fpr(0.01) <= high


def test_privacy_report_axes_start_at_chance_and_skip_tiny_slices():
    collection = AttackResultsCollection([])
    for epoch in (1, 2, 3):
        results = run_attacks(
            _input(np.random.default_rng(epoch)),
            SlicingSpec(entire_dataset=True, by_class=True),
            attack_types=[AttackType.THRESHOLD_ATTACK],
            privacy_report_metadata=PrivacyReportMetadata(0.9, 0.8, epoch, "model"),
        )
        collection.append(results)
    figure = plot_by_epochs(collection, [PrivacyMetric.AUC, PrivacyMetric.ATTACKER_ADVANTAGE])
    assert figure.axes[0].get_ylim() == (0.5, 1.0)
    assert figure.axes[1].get_ylim() == (0.0, 1.0)
    aucs = figure.axes[0].get_lines()[0].get_ydata()
    assert np.all(aucs < 0.7)  # the entire dataset's, not the separable 20 + 20 slice's
    figure = plot_privacy_vs_accuracy(collection, [PrivacyMetric.AUC], min_slice_size=10)
    assert figure.axes[0].get_ylim()[0] == 0.5
    assert np.all(figure.axes[0].get_lines()[0].get_ydata() == 1.0)
