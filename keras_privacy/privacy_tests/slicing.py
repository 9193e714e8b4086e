"""Turning a :class:`SlicingSpec` into slices, and cutting :class:`AttackInputData` by slice."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_privacy.privacy_tests.data_structures import (
    AttackInputData,
    SingleSliceSpec,
    SlicingFeature,
    SlicingSpec,
)

__all__ = ["get_single_slice_specs", "get_slice"]

_PERCENTILE_STEP = 10


def get_single_slice_specs(
    slicing_spec: SlicingSpec, attack_input: AttackInputData
) -> list[SingleSliceSpec]:
    """All single slices that ``slicing_spec`` asks for, in a stable order.

    Raises:
      ValueError: when a requested slicing needs data that ``attack_input`` lacks (labels for
        ``by_class``, labels and outputs for ``by_classification_correctness``, losses for
        ``by_percentiles``), or custom groupings of the wrong length.
    """
    specs: list[SingleSliceSpec] = []
    if slicing_spec.entire_dataset:
        specs.append(SingleSliceSpec())
    if slicing_spec.by_class:
        if attack_input.labels_train is None:
            raise ValueError("slicing by class needs labels_train and labels_test")
        classes = np.union1d(attack_input.labels_train, attack_input.labels_test)
        specs += [SingleSliceSpec(SlicingFeature.CLASS, int(c)) for c in classes]
    if slicing_spec.by_percentiles:
        if attack_input.get_loss_train() is None:
            raise ValueError("slicing by percentiles needs losses (or outputs and labels)")
        specs += [
            SingleSliceSpec(SlicingFeature.PERCENTILE, (low, low + _PERCENTILE_STEP))
            for low in range(0, 100, _PERCENTILE_STEP)
        ]
    if slicing_spec.by_classification_correctness:
        if attack_input.correctly_classified("train") is None:
            raise ValueError(
                "slicing by classification correctness needs labels and logits/probabilities"
            )
        specs += [
            SingleSliceSpec(SlicingFeature.CORRECTLY_CLASSIFIED, True),
            SingleSliceSpec(SlicingFeature.CORRECTLY_CLASSIFIED, False),
        ]
    if slicing_spec.all_custom_train_indices is not None:
        names = slicing_spec.custom_slices_names or {}
        for grouping, (train_groups, test_groups) in enumerate(
            zip(
                slicing_spec.all_custom_train_indices,
                slicing_spec.all_custom_test_indices,
                strict=True,
            )
        ):
            train_groups, test_groups = np.asarray(train_groups), np.asarray(test_groups)
            if train_groups.shape != (attack_input.get_train_size(),):
                raise ValueError(
                    f"custom grouping {grouping} has {train_groups.shape} train entries, "
                    f"expected ({attack_input.get_train_size()},)"
                )
            if test_groups.shape != (attack_input.get_test_size(),):
                raise ValueError(
                    f"custom grouping {grouping} has {test_groups.shape} test entries, "
                    f"expected ({attack_input.get_test_size()},)"
                )
            for group in np.union1d(train_groups, test_groups):
                group = group.item()
                specs.append(
                    SingleSliceSpec(SlicingFeature.CUSTOM, (grouping, group), names.get(group))
                )
    return specs


def _slice_masks(
    spec: SingleSliceSpec, attack_input: AttackInputData, slicing_spec: SlicingSpec | None
) -> tuple[np.ndarray, np.ndarray]:
    n_train, n_test = attack_input.get_train_size(), attack_input.get_test_size()
    if spec.feature == SlicingFeature.ENTIRE_DATASET:
        return np.ones(n_train, bool), np.ones(n_test, bool)
    if spec.feature == SlicingFeature.CLASS:
        return attack_input.labels_train == spec.value, attack_input.labels_test == spec.value
    if spec.feature == SlicingFeature.PERCENTILE:
        loss_train, loss_test = attack_input.get_loss_train(), attack_input.get_loss_test()
        low, high = spec.value
        low_value, high_value = np.percentile(np.concatenate([loss_train, loss_test]), [low, high])
        # half-open buckets [low, high), the last one closed, so that each example is in one
        if high >= 100:
            return (
                (loss_train >= low_value) & (loss_train <= high_value),
                (loss_test >= low_value) & (loss_test <= high_value),
            )
        return (
            (loss_train >= low_value) & (loss_train < high_value),
            (loss_test >= low_value) & (loss_test < high_value),
        )
    if spec.feature == SlicingFeature.CORRECTLY_CLASSIFIED:
        return (
            attack_input.correctly_classified("train") == spec.value,
            attack_input.correctly_classified("test") == spec.value,
        )
    if spec.feature == SlicingFeature.CUSTOM:
        if slicing_spec is None or slicing_spec.all_custom_train_indices is None:
            raise ValueError("a custom slice needs the SlicingSpec that defines its groups")
        grouping, group = spec.value
        return (
            np.asarray(slicing_spec.all_custom_train_indices[grouping]) == group,
            np.asarray(slicing_spec.all_custom_test_indices[grouping]) == group,
        )
    raise ValueError(f"unknown slicing feature {spec.feature}")


def slice_indices(
    attack_input: AttackInputData,
    slice_spec: SingleSliceSpec,
    slicing_spec: SlicingSpec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the members and non-members in the slice."""
    train_mask, test_mask = _slice_masks(slice_spec, attack_input, slicing_spec)
    return np.flatnonzero(train_mask), np.flatnonzero(test_mask)


def get_slice(
    attack_input: AttackInputData,
    slice_spec: SingleSliceSpec,
    slicing_spec: SlicingSpec | None = None,
) -> AttackInputData | None:
    """The part of ``attack_input`` in the slice, or ``None`` when the slice is empty on
    either side (members or non-members)."""
    train_mask, test_mask = _slice_masks(slice_spec, attack_input, slicing_spec)
    if not train_mask.any() or not test_mask.any():
        return None
    fields = {}
    for field in dataclasses.fields(AttackInputData):
        value = getattr(attack_input, field.name)
        if value is None or not isinstance(value, np.ndarray):
            fields[field.name] = value  # absent arrays and flags (multilabel_data) as they are
        else:
            fields[field.name] = value[train_mask if field.name.endswith("_train") else test_mask]
    return AttackInputData(**fields)
