"""LiRA: the score transform, the Gaussian fits, and the attack on synthetic and real models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from keras_privacy.privacy_tests import (
    AttackType,
    ShadowModelScores,
    lira_offline_scores,
    lira_online_scores,
    logit_scaled_confidence,
    logit_scaled_confidence_from_logits,
    make_shadow_in_mask,
    run_lira,
)
from keras_privacy.privacy_tests.metrics import auc, roc_curve


def test_logit_scaled_confidence_equals_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)) * 5
    labels = rng.integers(0, 4, 50)
    probs = special.softmax(logits, axis=1)
    p_true = probs[np.arange(50), labels]
    expected = np.log(p_true) - np.log1p(-p_true)
    np.testing.assert_allclose(logit_scaled_confidence_from_logits(logits, labels), expected)
    np.testing.assert_allclose(logit_scaled_confidence(probs, labels), expected, rtol=1e-6)
    # several queries per example: (n, queries, C) -> (n, queries)
    stacked = np.stack([logits, logits + 1.0], axis=1)
    assert logit_scaled_confidence_from_logits(stacked, labels).shape == (50, 2)


def test_logit_scaled_confidence_is_stable_for_confident_logits():
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    values = logit_scaled_confidence_from_logits(logits, np.array([0, 0]))
    np.testing.assert_allclose(values, [1000.0, -1000.0])


def test_shadow_mask_puts_each_example_in_half_the_models():
    mask = make_shadow_in_mask(8, 1000, seed=0)
    assert mask.shape == (8, 1000)
    assert (mask.sum(axis=0) == 4).all()
    assert mask.sum(axis=1).min() > 400 and mask.sum(axis=1).max() < 600
    with pytest.raises(ValueError):
        make_shadow_in_mask(1, 10)


def _synthetic(num_models=33, num_examples=4000, shift=1.0, seed=0):
    """φ of example i under model k: a_i + shift·[i in k] + N(0, 1) noise; the per-example
    offsets a_i (hardness) vary with std 3, which defeats any global threshold."""
    rng = np.random.default_rng(seed)
    hardness = rng.normal(0, 3, num_examples)
    mask = make_shadow_in_mask(num_models, num_examples, seed)
    scores = hardness + shift * mask + rng.normal(0, 1, (num_models, num_examples))
    return ShadowModelScores(scores, mask)


@pytest.mark.parametrize("online", [True, False])
def test_lira_recovers_the_per_example_optimal_auc(online):
    # For each example the in/out distributions are N(a_i + d, 1) and N(a_i, 1), so the best
    # per-example test has AUC Φ(d/√2) = 0.760 for d = 1; a global threshold on φ reaches
    # only Φ(d/√(2·(1 + 9))) = 0.588.
    shadow = _synthetic()
    result = run_lira(shadow, target_model_indices=[0, 1, 2], online=online)
    best = result.single_attack_results[0]
    assert best.attack_type == (AttackType.LIRA_ONLINE if online else AttackType.LIRA_OFFLINE)
    assert best.get_auc() == pytest.approx(stats.norm.cdf(1 / np.sqrt(2)), abs=0.03)
    target = shadow.scores[0]
    fpr, tpr, _ = roc_curve(target[shadow.in_mask[0]], target[~shadow.in_mask[0]])
    assert auc(fpr, tpr) < 0.62 < best.get_auc()


def test_lira_fixed_variance_and_queries():
    shadow = _synthetic(num_models=9, num_examples=2000)
    queries = np.stack([shadow.scores, shadow.scores + 0.1], axis=-1)  # two "augmentations"
    mask = shadow.in_mask
    online = lira_online_scores(queries[0], queries[1:], mask[1:], fix_variance=True)
    offline = lira_offline_scores(queries[0], queries[1:], mask[1:], fix_variance=True)
    for scores in (online, offline):
        fpr, tpr, _ = roc_curve(scores[mask[0]], scores[~mask[0]])
        assert auc(fpr, tpr) > 0.65  # global threshold: 0.588, per-example optimum: 0.760


def test_lira_near_chance_without_membership_signal():
    shadow = _synthetic(shift=0.0)
    for online in (True, False):
        result = run_lira(shadow, target_model_indices=[0, 1], online=online)
        assert abs(result.single_attack_results[0].get_auc() - 0.5) < 0.03


def test_lira_input_errors():
    shadow = _synthetic(num_models=5, num_examples=50)
    with pytest.raises(ValueError, match="target scores"):
        lira_online_scores(shadow.scores[0, :10], shadow.scores[1:], shadow.in_mask[1:])
    with pytest.raises(ValueError, match="in_mask"):
        lira_online_scores(shadow.scores[0], shadow.scores[1:], shadow.in_mask[2:])
    all_out = np.zeros_like(shadow.in_mask[1:])
    with pytest.raises(ValueError, match="no 'in' shadow model"):
        lira_online_scores(shadow.scores[0], shadow.scores[1:], all_out)
    bad = shadow.scores.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ShadowModelScores(bad, shadow.in_mask)
    with pytest.raises(ValueError, match="out of range"):
        run_lira(shadow, target_model_indices=[7])


def _logistic_regression_phi(x_fit, y_fit, x_all, y_all):
    model = LogisticRegression(C=1e3, max_iter=300)
    model.fit(x_fit, y_fit)
    return logit_scaled_confidence(model.predict_proba(x_all), y_all)


@pytest.fixture(scope="module")
def lira_data():
    x, y = make_classification(
        n_samples=600, n_features=60, n_informative=10, n_classes=3, flip_y=0.2, random_state=1
    )
    return x, y


def test_lira_on_overfit_models_beats_chance(lira_data):
    # 16 weakly regularized logistic regressions on random halves of 300 noisy examples
    x, y = lira_data[0][:300], lira_data[1][:300]
    mask = make_shadow_in_mask(16, 300, seed=0)
    scores = np.stack([_logistic_regression_phi(x[m], y[m], x, y) for m in mask])
    shadow = ShadowModelScores(scores, mask)
    online = run_lira(shadow, target_model_indices=[0, 1, 2, 3], online=True)
    assert online.single_attack_results[0].get_auc() > 0.7
    assert online.single_attack_results[0].get_tpr_at_fpr(0.01) > 0.02  # chance: 0.01
    offline = run_lira(shadow, target_model_indices=[0, 1, 2, 3], online=False)
    assert offline.single_attack_results[0].get_auc() > 0.6


def test_lira_on_a_model_that_never_saw_the_data_is_near_chance(lira_data):
    x, y = lira_data[0][:300], lira_data[1][:300]
    mask = make_shadow_in_mask(16, 300, seed=0)
    scores = np.stack([_logistic_regression_phi(x[m], y[m], x, y) for m in mask[1:]])
    # the target model trains on the other 300 examples only; "members" are a random half
    target = _logistic_regression_phi(lira_data[0][300:], lira_data[1][300:], x, y)
    online = lira_online_scores(target, scores, mask[1:])
    fpr, tpr, _ = roc_curve(online[mask[0]], online[~mask[0]])
    assert abs(auc(fpr, tpr) - 0.5) < 0.1  # 150 vs 150 examples: std ≈ 0.033
