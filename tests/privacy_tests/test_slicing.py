"""Slices: which examples each slice holds."""

from __future__ import annotations

import numpy as np
import pytest

from keras_privacy.privacy_tests import (
    AttackInputData,
    SingleSliceSpec,
    SlicingFeature,
    SlicingSpec,
    get_single_slice_specs,
    get_slice,
)


@pytest.fixture()
def data() -> AttackInputData:
    rng = np.random.default_rng(0)
    logits_train, logits_test = rng.normal(size=(60, 3)), rng.normal(size=(40, 3))
    return AttackInputData(
        logits_train=logits_train,
        logits_test=logits_test,
        labels_train=np.arange(60) % 3,
        labels_test=np.arange(40) % 3,
    )


def test_specs_for_every_slicing(data):
    spec = SlicingSpec(
        entire_dataset=True,
        by_class=True,
        by_percentiles=True,
        by_classification_correctness=True,
        all_custom_train_indices=[np.arange(60) % 2],
        all_custom_test_indices=[np.arange(40) % 2],
        custom_slices_names={0: "even", 1: "odd"},
    )
    specs = get_single_slice_specs(spec, data)
    features = [s.feature for s in specs]
    assert features.count(SlicingFeature.ENTIRE_DATASET) == 1
    assert features.count(SlicingFeature.CLASS) == 3
    assert features.count(SlicingFeature.PERCENTILE) == 10
    assert features.count(SlicingFeature.CORRECTLY_CLASSIFIED) == 2
    assert [str(s) for s in specs if s.feature == SlicingFeature.CUSTOM] == [
        "CUSTOM=even",
        "CUSTOM=odd",
    ]


def test_class_slice_keeps_that_class(data):
    sliced = get_slice(data, SingleSliceSpec(SlicingFeature.CLASS, 1))
    assert (sliced.labels_train == 1).all() and sliced.get_train_size() == 20
    np.testing.assert_array_equal(sliced.logits_test, data.logits_test[data.labels_test == 1])


def test_percentile_slices_partition_the_data(data):
    spec = SlicingSpec(entire_dataset=False, by_percentiles=True)
    sizes = [
        get_slice(data, s).get_train_size() + get_slice(data, s).get_test_size()
        for s in get_single_slice_specs(spec, data)
    ]
    assert sum(sizes) == 100
    lowest = get_slice(data, SingleSliceSpec(SlicingFeature.PERCENTILE, (0, 10)))
    all_losses = np.r_[data.get_loss_train(), data.get_loss_test()]
    assert lowest.get_loss_train().max() <= np.percentile(all_losses, 10)


def test_correctness_slices(data):
    correct = get_slice(data, SingleSliceSpec(SlicingFeature.CORRECTLY_CLASSIFIED, True))
    wrong = get_slice(data, SingleSliceSpec(SlicingFeature.CORRECTLY_CLASSIFIED, False))
    assert (correct.logits_train.argmax(1) == correct.labels_train).all()
    assert (wrong.logits_test.argmax(1) != wrong.labels_test).all()
    assert correct.get_train_size() + wrong.get_train_size() == 60


def test_custom_slice_and_empty_slice(data):
    spec = SlicingSpec(
        all_custom_train_indices=[np.where(np.arange(60) < 10, 5, 7)],
        all_custom_test_indices=[np.full(40, 7)],
    )
    five = SingleSliceSpec(SlicingFeature.CUSTOM, (0, 5))
    assert get_slice(data, five, spec) is None  # no test example in group 5
    seven = get_slice(data, SingleSliceSpec(SlicingFeature.CUSTOM, (0, 7)), spec)
    assert seven.get_train_size() == 50 and seven.get_test_size() == 40


def test_slicing_errors(data):
    with pytest.raises(ValueError, match="same number"):
        SlicingSpec(all_custom_train_indices=[np.zeros(60)], all_custom_test_indices=[])
    with pytest.raises(ValueError, match="together"):
        SlicingSpec(all_custom_train_indices=[np.zeros(60)])
    bad = SlicingSpec(
        all_custom_train_indices=[np.zeros(3)], all_custom_test_indices=[np.zeros(40)]
    )
    with pytest.raises(ValueError, match="train entries"):
        get_single_slice_specs(bad, data)
    losses_only = AttackInputData(loss_train=np.ones(3), loss_test=np.ones(3))
    with pytest.raises(ValueError, match="labels"):
        get_single_slice_specs(SlicingSpec(by_class=True), losses_only)
