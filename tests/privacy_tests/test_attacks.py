"""Membership inference attacks: they find an overfit model's members and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from keras_privacy.privacy_tests import (
    AttackInputData,
    AttackType,
    SlicingSpec,
    create_attacker_data,
    run_attacks,
)

MEMBERSHIP_ATTACKS = [
    AttackType.THRESHOLD_ATTACK,
    AttackType.THRESHOLD_ENTROPY_ATTACK,
    AttackType.LOGISTIC_REGRESSION,
    AttackType.MULTI_LAYERED_PERCEPTRON,
    AttackType.RANDOM_FOREST,
    AttackType.K_NEAREST_NEIGHBORS,
]


@pytest.mark.parametrize("attack_type", MEMBERSHIP_ATTACKS, ids=str)
def test_attack_beats_chance_on_overfit_model(overfit_attack_input, attack_type):
    result = run_attacks(overfit_attack_input, attack_types=[attack_type]).single_attack_results[0]
    assert result.get_auc() > 0.65
    assert result.get_attacker_advantage() > 0.3
    assert result.get_epsilon_lower_bound() > 1.0


@pytest.mark.parametrize("attack_type", MEMBERSHIP_ATTACKS, ids=str)
def test_attack_near_chance_on_data_the_model_never_saw(unseen_attack_input, attack_type):
    # 800 vs 800 examples: the AUC's standard deviation under no signal is about 0.014
    result = run_attacks(unseen_attack_input, attack_types=[attack_type]).single_attack_results[0]
    assert abs(result.get_auc() - 0.5) < 0.06
    assert result.get_attacker_advantage() < 0.12


@pytest.mark.parametrize(
    "attack_type", [AttackType.RANDOM_FOREST, AttackType.K_NEAREST_NEIGHBORS], ids=str
)
def test_trained_attacks_are_scored_on_data_they_did_not_train_on(attack_type):
    # Pure-noise features: a random forest or 1-NN scored on its own training data would
    # look far better than chance; cross-fitted scores must not.
    rng = np.random.default_rng(0)
    data = AttackInputData(
        logits_train=rng.normal(size=(600, 5)),
        logits_test=rng.normal(size=(600, 5)),
        labels_train=rng.integers(0, 5, 600),
        labels_test=rng.integers(0, 5, 600),
    )
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    memorizing = {
        AttackType.RANDOM_FOREST: lambda seed: RandomForestClassifier(20, random_state=seed),
        AttackType.K_NEAREST_NEIGHBORS: lambda seed: KNeighborsClassifier(1),
    }
    result = run_attacks(
        data, attack_types=[attack_type], attack_model_factories=memorizing
    ).single_attack_results[0]
    assert abs(result.get_auc() - 0.5) < 0.06


def test_balanced_attacker_data_and_every_example_scored():
    rng = np.random.default_rng(1)
    data = AttackInputData(loss_train=rng.exponential(0.5, 100), loss_test=rng.exponential(1, 900))
    attacker_data = create_attacker_data(data, balance=True, seed=0)
    chosen = attacker_data.is_member[attacker_data.balanced_indices]
    assert chosen.sum() == 100 and (1 - chosen).sum() == 100
    unbalanced = create_attacker_data(data, balance=False)
    assert unbalanced.balanced_indices.size == 1000
    result = run_attacks(data, attack_types=[AttackType.LOGISTIC_REGRESSION]).single_attack_results[
        0
    ]
    assert result.membership_scores_train.shape == (100,)
    assert result.membership_scores_test.shape == (900,)
    assert result.roc_curve.test_train_ratio == 9.0
    assert result.get_auc() > 0.6  # members have lower losses


def test_custom_attack_model_is_used(overfit_attack_input):
    calls = []

    def factory(seed):
        calls.append(seed)
        return LogisticRegression(C=0.5, max_iter=500)

    run_attacks(
        overfit_attack_input,
        attack_types=[AttackType.LOGISTIC_REGRESSION],
        attack_model_factories={AttackType.LOGISTIC_REGRESSION: factory},
        cross_validation_folds=3,
    )
    assert calls == [0, 1, 2]


def test_slices_with_too_few_examples_are_skipped(overfit_attack_input):
    results = run_attacks(
        overfit_attack_input,
        SlicingSpec(entire_dataset=True, by_classification_correctness=True),
        [AttackType.THRESHOLD_ATTACK],
        min_num_samples=200,
    )
    sizes = overfit_attack_input.correctly_classified("train")
    assert sizes.sum() == 400  # every member is classified correctly...
    assert "CORRECTLY_CLASSIFIED=False" in results.skipped_slices  # ...so no wrong members
    assert len(results.single_attack_results) >= 1


@pytest.mark.parametrize(
    "attack_types, message",
    [([], "empty"), ([AttackType.LIRA_ONLINE], "shadow"), (["threshold"], "AttackType")],
)
def test_run_attacks_rejects_bad_attack_types(overfit_attack_input, attack_types, message):
    with pytest.raises(ValueError, match=message):
        run_attacks(overfit_attack_input, attack_types=attack_types)


def test_entropy_attack_needs_outputs_or_entropies():
    data = AttackInputData(loss_train=np.ones(4), loss_test=np.zeros(4))
    with pytest.raises(ValueError, match="entropies"):
        run_attacks(data, attack_types=[AttackType.THRESHOLD_ENTROPY_ATTACK])


def test_results_are_reproducible(overfit_attack_input):
    first = run_attacks(overfit_attack_input, attack_types=[AttackType.RANDOM_FOREST], seed=3)
    second = run_attacks(overfit_attack_input, attack_types=[AttackType.RANDOM_FOREST], seed=3)
    assert first.calculate_pd_dataframe().equals(second.calculate_pd_dataframe())
