"""AttackInputData validation and derived quantities; results: DataFrame, JSON, summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special

from keras_privacy.privacy_tests import (
    AttackInputData,
    AttackResults,
    AttackType,
    PrivacyReportMetadata,
    SlicingSpec,
    run_attacks,
)


def _logits(n: int, seed: int = 0, classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, classes))


def test_loss_is_cross_entropy_from_logits_and_probs():
    logits = _logits(5)
    labels = np.array([0, 1, 2, 1, 0])
    expected = -special.log_softmax(logits, axis=1)[np.arange(5), labels]
    from_logits = AttackInputData(
        logits_train=logits, logits_test=logits, labels_train=labels, labels_test=labels
    )
    from_probs = AttackInputData(
        probs_train=special.softmax(logits, axis=1),
        probs_test=special.softmax(logits, axis=1),
        labels_train=labels,
        labels_test=labels,
    )
    np.testing.assert_allclose(from_logits.get_loss_train(), expected)
    np.testing.assert_allclose(from_probs.get_loss_test(), expected)


def test_entropy_plain_and_modified():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    plain = AttackInputData(probs_train=probs, probs_test=probs)
    np.testing.assert_allclose(plain.get_entropy_train(), -np.sum(probs * np.log(probs), axis=1))
    modified = AttackInputData(
        probs_train=probs, probs_test=probs, labels_train=labels, labels_test=labels
    )
    # Mentr(p, y) = −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i)
    expected = [
        -(0.3 * np.log(0.7)) - 0.2 * np.log(0.8) - 0.1 * np.log(0.9),
        -(0.9 * np.log(0.1)) - 0.1 * np.log(0.9) - 0.8 * np.log(0.2),
    ]
    np.testing.assert_allclose(modified.get_entropy_train(), expected)


def test_binary_outputs_become_two_columns():
    data = AttackInputData(
        logits_train=np.array([2.0, -1.0]),
        logits_test=np.array([[0.5]]),
        labels_train=np.array([1, 0]),
        labels_test=np.array([1]),
    )
    assert data.num_classes == 2
    np.testing.assert_allclose(
        data.get_loss_train(), [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_train": np.array([]), "loss_test": np.array([1.0])}, "empty"),
        ({"loss_train": np.array([1.0, np.nan]), "loss_test": np.array([1.0])}, "NaN"),
        ({"loss_train": np.array([1.0])}, "only one"),
        ({"loss_train": np.ones((2, 2)), "loss_test": np.ones(2)}, "dimensions"),
        ({}, "nothing to attack"),
        (
            {
                "logits_train": _logits(3),
                "logits_test": _logits(3),
                "probs_train": np.full((3, 3), 1 / 3),
                "probs_test": np.full((3, 3), 1 / 3),
            },
            "not both",
        ),
        (
            {
                "logits_train": _logits(3),
                "logits_test": _logits(2),
                "labels_train": np.array([0, 1]),
                "labels_test": np.array([0, 1]),
            },
            "different lengths",
        ),
        (
            {
                "logits_train": _logits(2),
                "logits_test": _logits(2, classes=4),
            },
            "columns",
        ),
        (
            {
                "logits_train": _logits(2),
                "logits_test": _logits(2),
                "labels_train": np.array([0, 3]),
                "labels_test": np.array([0, 1]),
            },
            "number of output columns",
        ),
        ({"probs_train": np.array([[1.5, -0.5]]), "probs_test": np.array([[0.5, 0.5]])}, "[0, 1]"),
        (
            {
                "loss_train": np.ones(2),
                "loss_test": np.ones(2),
                "sample_weight_train": np.array([1.0, -1.0]),
                "sample_weight_test": np.ones(2),
            },
            "negative",
        ),
    ],
)
def test_invalid_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AttackInputData(**kwargs)


def test_non_integer_labels_rejected():
    with pytest.raises(ValueError, match="integer"):
        AttackInputData(
            logits_train=_logits(2),
            logits_test=_logits(2),
            labels_train=np.array([0.5, 1.0]),
            labels_test=np.array([0, 1]),
        )


@pytest.fixture(scope="module")
def results(overfit_attack_input) -> AttackResults:
    return run_attacks(
        overfit_attack_input,
        SlicingSpec(entire_dataset=True, by_class=True),
        [AttackType.THRESHOLD_ATTACK, AttackType.LOGISTIC_REGRESSION],
        privacy_report_metadata=PrivacyReportMetadata(0.99, 0.6, 5, "overfit"),
    )


def test_dataframe_has_a_row_per_attack_and_slice(results):
    frame = results.calculate_pd_dataframe()
    assert len(frame) == 2 * (1 + 4)
    assert set(frame["attack type"]) == {"THRESHOLD_ATTACK", "LOGISTIC_REGRESSION"}
    row = frame.iloc[frame["AUC"].idxmax()]
    best = results.get_result_with_max_auc()
    assert row["AUC"] == pytest.approx(best.get_auc())
    assert frame["Attacker advantage"].max() == pytest.approx(
        results.get_result_with_max_attacker_advantage().get_attacker_advantage()
    )
    assert frame["Positive predictive value"].max() == pytest.approx(
        results.get_result_with_max_ppv().get_ppv()
    )
    entire = frame[frame["slice feature"] == "Entire dataset"]
    assert (entire["train size"] == 400).all() and (entire["test size"] == 400).all()


def test_summary_names_the_best_attacks(results):
    text = results.summary(by_slices=True)
    best = results.get_result_with_max_auc()
    assert f"achieved an AUC of {best.get_auc():.2f}" in text
    assert "Best-performing attacks over slice: CLASS=0" in text
    assert "ε lower bound" in text


def test_json_round_trip(results, tmp_path):
    parsed = json.loads(results.to_json())
    assert parsed["privacy_report_metadata"]["model_variant_label"] == "overfit"
    assert math.isclose(
        parsed["single_attack_results"][0]["metrics"]["AUC"],
        results.single_attack_results[0].get_auc(),
    )
    path = tmp_path / "results.json"
    results.save(str(path), include_scores=True)
    loaded = AttackResults.load(str(path))
    assert loaded.calculate_pd_dataframe().equals(results.calculate_pd_dataframe())
    np.testing.assert_allclose(
        loaded.single_attack_results[3].membership_scores_test,
        results.single_attack_results[3].membership_scores_test,
    )
    assert loaded.privacy_report_metadata == results.privacy_report_metadata


def test_results_need_at_least_one_result():
    with pytest.raises(ValueError):
        AttackResults([])
