"""Shared fixtures: a deliberately overfit classifier and data it never saw.

The model is a scikit-learn MLP trained to 100% training accuracy on 400 noisy examples
(15% flipped labels, 40 features), so its losses on members and non-members differ a lot.
"""

from __future__ import annotations

import pytest
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier

from keras_privacy.privacy_tests import AttackInputData

NUM_TRAIN = 400


@pytest.fixture(scope="session")
def classification_data():
    x, y = make_classification(
        n_samples=2400,
        n_features=40,
        n_informative=8,
        n_classes=4,
        flip_y=0.15,
        random_state=0,
    )
    return x, y


@pytest.fixture(scope="session")
def overfit_model(classification_data):
    x, y = classification_data
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    model.fit(x[:NUM_TRAIN], y[:NUM_TRAIN])
    assert model.score(x[:NUM_TRAIN], y[:NUM_TRAIN]) > 0.99  # it did overfit
    return model


def _attack_input(model, x, y, members, nonmembers) -> AttackInputData:
    return AttackInputData(
        probs_train=model.predict_proba(x[members]),
        probs_test=model.predict_proba(x[nonmembers]),
        labels_train=y[members],
        labels_test=y[nonmembers],
    )


@pytest.fixture(scope="session")
def overfit_attack_input(classification_data, overfit_model) -> AttackInputData:
    """Members: the 400 training examples; non-members: 400 unseen ones."""
    x, y = classification_data
    return _attack_input(overfit_model, x, y, slice(0, 400), slice(400, 800))


@pytest.fixture(scope="session")
def unseen_attack_input(classification_data, overfit_model) -> AttackInputData:
    """ "Members" and non-members both drawn from data the model never saw (800 each)."""
    x, y = classification_data
    return _attack_input(overfit_model, x, y, slice(800, 1600), slice(1600, 2400))
