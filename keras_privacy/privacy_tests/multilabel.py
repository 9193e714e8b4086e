"""Multi-label attack inputs: multi-hot labels reduced to one loss per example.

A multi-label classifier outputs one independent probability per class,
``p_c = sigmoid(z_c)`` (or given probabilities), and its labels are multi-hot rows
``y in {0, 1}^C``. Its per-example loss is the binary cross-entropy summed over classes,

    loss(y, p) = - sum_c [ y_c log p_c + (1 - y_c) log(1 - p_c) ],

computed from logits as ``sum_c softplus(z_c) - y_c z_c`` (exact, no clipping); from
probabilities with ``p`` clipped to ``[1e-12, 1 - 1e-12]`` so that the loss stays finite.
As in TF Privacy, the threshold attack thresholds this per-example sum, and a trained
attack sees the outputs and this loss; entropy attacks are not defined for multi-label
data (``NotImplementedError``). Given per-class losses ``(n, C)`` are summed over classes.

Data are multi-label when ``force_multilabel_data`` or ``multilabel_data`` is set, or when
both label arrays are 2-D with as many columns as the outputs and some row has more than
one positive class (TF Privacy's rule; one-hot rows alone are not multi-label).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Probabilities are clipped to [_EPS, 1 - _EPS] before taking logs.
_EPS = 1e-12


def is_multihot(labels: Any) -> bool:
    """A 2-D 0/1 array with at least one row holding more than one positive class."""
    if labels is None:
        return False
    array = np.asarray(labels)
    if array.ndim != 2:
        return False
    row_sums = array.sum(axis=1)
    return bool(np.any(row_sums > 1))


def is_multilabel(data: Any) -> bool:
    """Whether ``data`` (an ``AttackInputData``) holds multi-label data; caches the answer."""
    if data.force_multilabel_data:
        data.multilabel_data = True
    if data.multilabel_data is not None:
        return bool(data.multilabel_data)
    outputs = data.logits_train if data.logits_train is not None else data.probs_train
    if outputs is None or data.labels_train is None or data.labels_test is None:
        return False  # decided again when the data change; nothing to reduce
    labels_train, labels_test = np.asarray(data.labels_train), np.asarray(data.labels_test)
    answer = (
        labels_train.ndim == 2
        and labels_test.ndim == 2
        and np.asarray(outputs).ndim == 2
        and labels_train.shape[1] == np.asarray(outputs).shape[1]
        and is_multihot(labels_train)
        and is_multihot(labels_test)
    )
    data.multilabel_data = bool(answer)
    return data.multilabel_data


def binary_cross_entropy(
    labels: np.ndarray, logits: np.ndarray | None = None, probs: np.ndarray | None = None
) -> np.ndarray:
    """Per-example, per-class binary cross-entropy ``(n, C)`` (see the module docstring)."""
    labels = np.asarray(labels, dtype=np.float64)
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("multi-label labels must be multi-hot (0/1) rows")
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        return np.logaddexp(0.0, z) - labels * z
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p))


def reduce_to_losses(data: Any) -> None:
    """Replace multi-hot labels (and per-class losses) by the summed per-example loss.

    The multi-hot labels are kept in ``data.multihot_labels_train`` / ``_test``. Calling
    it again (after the labels are gone) changes nothing.
    """
    for split in ("train", "test"):
        loss = getattr(data, f"loss_{split}")
        if loss is not None and np.asarray(loss).ndim == 2:
            setattr(data, f"loss_{split}", np.asarray(loss, dtype=np.float64).sum(axis=1))
        labels = getattr(data, f"labels_{split}")
        if labels is None or np.asarray(labels).ndim != 2:
            continue
        if getattr(data, f"loss_{split}") is None:
            logits = getattr(data, f"logits_{split}")
            probs = getattr(data, f"probs_{split}")
            if logits is None and probs is None:
                raise ValueError("multi-label data need logits, probabilities or losses")
            per_class = binary_cross_entropy(
                labels,
                None if logits is None else np.asarray(logits),
                None if probs is None else np.asarray(probs),
            )
            setattr(data, f"loss_{split}", per_class.sum(axis=1))
        setattr(data, f"multihot_labels_{split}", np.asarray(labels))
        setattr(data, f"labels_{split}", None)
