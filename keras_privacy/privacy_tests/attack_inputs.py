"""What a membership inference attack is given: the attack types, slices of the data,
and :class:`AttackInputData` (the target model's outputs on members and non-members).

Everything is NumPy; no deep-learning framework is imported. The names follow TensorFlow
Privacy's API; :mod:`keras_privacy.privacy_tests.data_structures` gathers them under its
module name.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import special

__all__ = [
    "AttackInputData",
    "AttackType",
    "SingleSliceSpec",
    "SlicingFeature",
    "SlicingSpec",
]


class AttackType(enum.Enum):
    """Kinds of membership inference attack."""

    LOGISTIC_REGRESSION = "lr"
    MULTI_LAYERED_PERCEPTRON = "mlp"
    RANDOM_FOREST = "rf"
    K_NEAREST_NEIGHBORS = "knn"
    THRESHOLD_ATTACK = "threshold"
    THRESHOLD_ENTROPY_ATTACK = "threshold-entropy"
    LIRA_ONLINE = "lira-online"
    LIRA_OFFLINE = "lira-offline"

    @property
    def is_trained_attack(self) -> bool:
        """True for attacks that fit a scikit-learn classifier on the model's outputs."""
        return self in _TRAINED_ATTACKS

    def __str__(self) -> str:
        return self.name


_TRAINED_ATTACKS = frozenset(
    {
        AttackType.LOGISTIC_REGRESSION,
        AttackType.MULTI_LAYERED_PERCEPTRON,
        AttackType.RANDOM_FOREST,
        AttackType.K_NEAREST_NEIGHBORS,
    }
)


class SlicingFeature(enum.Enum):
    """What a slice of the data is defined by."""

    ENTIRE_DATASET = "Entire dataset"
    CLASS = "class"
    PERCENTILE = "percentile"
    CORRECTLY_CLASSIFIED = "correctly_classified"
    CUSTOM = "custom"


@dataclasses.dataclass(frozen=True)
class SingleSliceSpec:
    """One slice: a feature and its value (``feature=None`` or ``ENTIRE_DATASET`` for the
    entire dataset, as in TF Privacy's ``SingleSliceSpec(None)``).

    Values: a class index for ``CLASS``; a ``(low, high)`` pair of loss percentiles for
    ``PERCENTILE``; ``True``/``False`` for ``CORRECTLY_CLASSIFIED``; ``(grouping, group)`` for
    ``CUSTOM``, ``grouping`` being the index of the user-supplied grouping.
    """

    feature: SlicingFeature | None = SlicingFeature.ENTIRE_DATASET
    value: Any = None
    name: str | None = None

    def __post_init__(self) -> None:
        # TF Privacy writes the entire dataset as feature None
        if self.feature is None:
            object.__setattr__(self, "feature", SlicingFeature.ENTIRE_DATASET)

    @property
    def entire_dataset(self) -> bool:
        return self.feature == SlicingFeature.ENTIRE_DATASET

    def __str__(self) -> str:
        if self.entire_dataset:
            return "Entire dataset"
        if self.name is not None:
            return f"{self.feature.name}={self.name}"
        if self.feature == SlicingFeature.PERCENTILE:
            low, high = self.value
            return f"Loss percentiles: {low}-{high}"
        return f"{self.feature.name}={self.value}"

    def value_label(self) -> str:
        if self.name is not None:
            return self.name
        if self.feature == SlicingFeature.PERCENTILE:
            return f"{self.value[0]}-{self.value[1]}"
        return "" if self.value is None else str(self.value)


@dataclasses.dataclass
class SlicingSpec:
    """Which slices of the data to attack separately.

    Attributes:
      entire_dataset: attack all examples together.
      by_class: one slice per class label.
      by_percentiles: ten slices by deciles of the per-example loss (members and non-members
        pooled), from the lowest losses (0-10) to the highest (90-100).
      by_classification_correctness: one slice of correctly, one of wrongly classified
        examples.
      all_custom_train_indices, all_custom_test_indices: user-defined groupings. Each is a
        list with one integer array per grouping, giving every training (resp. test) example
        its group id in that grouping; each group becomes a slice.
      custom_slices_names: optional ``{group id: name}`` for the custom groups.
    """

    entire_dataset: bool = True
    by_class: bool = False
    by_percentiles: bool = False
    by_classification_correctness: bool = False
    all_custom_train_indices: Sequence[np.ndarray] | None = None
    all_custom_test_indices: Sequence[np.ndarray] | None = None
    custom_slices_names: dict[int, str] | None = None

    def __post_init__(self) -> None:
        train, test = self.all_custom_train_indices, self.all_custom_test_indices
        if (train is None) != (test is None):
            raise ValueError(
                "all_custom_train_indices and all_custom_test_indices must be given together"
            )
        if train is not None and len(train) != len(test):
            raise ValueError(
                "all_custom_train_indices and all_custom_test_indices need the same number "
                f"of groupings, received {len(train)} and {len(test)}"
            )


def _validate_array(name: str, value: Any, expected_ndims: Iterable[int]) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim not in tuple(expected_ndims):
        raise ValueError(
            f"{name} must have {' or '.join(map(str, expected_ndims))} dimensions, "
            f"received shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _to_two_columns(values: np.ndarray, from_logits: bool) -> np.ndarray:
    """Binary outputs of shape (n,) or (n, 1) → two-column logits/probabilities."""
    column = values.reshape(-1).astype(np.float64)
    if from_logits:
        return np.stack([np.zeros_like(column), column], axis=1)
    return np.stack([1.0 - column, column], axis=1)


#: Smallest probability a cross-entropy loss is computed from, so that a predicted
#: probability of 0 on the true label gives the finite loss −log(1e-8) ≈ 18.42 (TF Privacy's
#: cap) instead of ∞.
SMALLEST_PROBABILITY = 1e-8


def _log_probabilities(logits: np.ndarray | None, probs: np.ndarray | None) -> np.ndarray:
    if logits is not None:
        return special.log_softmax(logits.astype(np.float64), axis=1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(probs.astype(np.float64), 0.0, 1.0))


def _column(value: Any) -> Any:
    """``(n, 1)`` per-example values (sample weights, losses, ...) → ``(n,)``."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim == 2 and array.shape[1] == 1:
        return array.reshape(-1)
    return array


@dataclasses.dataclass
class AttackInputData:
    """What an attacker sees about members (train) and non-members (test).

    Give whichever you have: logits *or* probabilities (``(n, num_classes)``; binary
    classifiers may give ``(n,)`` or ``(n, 1)``: the logit or probability of class 1),
    integer labels, per-example losses, per-example entropies, and optional sample weights.
    Missing losses are computed as the cross-entropy −log p_y from logits/probabilities and
    labels; missing entropies as Song & Mittal's (2021) modified entropy
    Mentr(p, y) = −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i) when labels are known, and
    as the Shannon entropy −Σ_i p_i log p_i otherwise. Natural logarithms throughout.

    Computed losses are capped as TF Privacy caps them: ℓ = −log max(p_y, 10⁻⁸) ≤ 18.42, so a
    probability of exactly 0 on the true label (common in float32 model outputs) gives a
    finite loss. With sample weights w, computed losses are w·ℓ (TF Privacy's weighting:
    the threshold attack ranks the weighted losses, and the trained attacks are fitted with
    the weights); losses given as ``loss_train``/``loss_test`` are used as given. Sample
    weights (and losses, entropies) of shape ``(n, 1)`` are read as ``(n,)``.

    The data are validated on construction and raise ``ValueError`` for empty sets,
    mismatched lengths, NaN, labels out of range or giving both logits and probabilities.

    TF Privacy's ``loss_function`` is accepted only as the cross-entropy (``None``,
    ``"cross_entropy"`` or its ``LossFunction.CROSS_ENTROPY``); for any other loss give
    ``loss_train``/``loss_test`` computed with it (``ValueError`` says so).
    ``loss_function_using_logits=True`` (``False``) requires logits (probabilities) to
    compute losses from, and ``get_loss_train/test`` raise ``ValueError`` without them.
    """

    logits_train: np.ndarray | None = None
    logits_test: np.ndarray | None = None
    probs_train: np.ndarray | None = None
    probs_test: np.ndarray | None = None
    labels_train: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    loss_train: np.ndarray | None = None
    loss_test: np.ndarray | None = None
    entropy_train: np.ndarray | None = None
    entropy_test: np.ndarray | None = None
    sample_weight_train: np.ndarray | None = None
    sample_weight_test: np.ndarray | None = None
    multilabel_data: bool | None = None
    force_multilabel_data: bool = False
    loss_function: Any = None
    loss_function_using_logits: bool | None = None

    def __post_init__(self) -> None:
        self.validate()

    def is_multihot_labels(self, arr: Any, arr_name: str) -> bool:
        """Whether ``arr`` holds multi-hot labels: 2-D, some row with more than one
        positive class (TF Privacy's check; ``None`` and 1-D give False, more than 2-D
        raises ``ValueError``)."""
        from keras_privacy.privacy_tests import multilabel

        if arr is not None and np.ndim(arr) > 2:
            raise ValueError(f"{arr_name} has more than 2 dimensions")
        return multilabel.is_multihot(arr)

    def is_multilabel_data(self) -> bool:
        """Multi-label data: multi-hot ``(n, num_classes)`` labels (see ``multilabel``)."""
        from keras_privacy.privacy_tests import multilabel

        return multilabel.is_multilabel(self)

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check shapes, emptiness and values; raise ``ValueError`` with the reason.

        Multi-label data (``multilabel_data``/``force_multilabel_data``, or multi-hot 2-D
        labels) are first reduced to per-example losses: see
        :mod:`keras_privacy.privacy_tests.multilabel`.
        """
        _check_loss_function(self.loss_function)
        if self.is_multilabel_data():
            from keras_privacy.privacy_tests import multilabel

            multilabel.reduce_to_losses(self)
        for split in ("train", "test"):
            for kind in ("loss", "entropy", "sample_weight"):
                attribute = f"{kind}_{split}"
                setattr(self, attribute, _column(getattr(self, attribute)))
            for kind, ndims in (
                ("logits", (1, 2)),
                ("probs", (1, 2)),
                ("labels", (1,)),
                ("loss", (1,)),
                ("entropy", (1,)),
                ("sample_weight", (1,)),
            ):
                attribute = f"{kind}_{split}"
                setattr(
                    self, attribute, _validate_array(attribute, getattr(self, attribute), ndims)
                )
        for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight"):
            given = [getattr(self, f"{kind}_{split}") is not None for split in ("train", "test")]
            if given[0] != given[1]:
                raise ValueError(f"{kind} given for only one of train and test")
        if self.logits_train is not None and self.probs_train is not None:
            raise ValueError("give logits or probabilities, not both")
        if (
            self.logits_train is None
            and self.probs_train is None
            and self.loss_train is None
            and self.entropy_train is None
        ):
            raise ValueError("nothing to attack: give logits, probabilities, losses or entropies")
        for split in ("train", "test"):
            # binary outputs become two columns, so that everything downstream is (n, C)
            for kind, from_logits in (("logits", True), ("probs", False)):
                values = getattr(self, f"{kind}_{split}")
                if values is not None and (values.ndim == 1 or values.shape[1] == 1):
                    setattr(self, f"{kind}_{split}", _to_two_columns(values, from_logits))
            sizes = {
                kind: getattr(self, f"{kind}_{split}").shape[0]
                for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight")
                if getattr(self, f"{kind}_{split}") is not None
            }
            if len(set(sizes.values())) > 1:
                raise ValueError(f"the {split} arrays have different lengths: {sizes}")
        outputs_train, outputs_test = self.logits_or_probs_train, self.logits_or_probs_test
        if outputs_train is not None and outputs_train.shape[1] != outputs_test.shape[1]:
            raise ValueError(
                f"train and test outputs have {outputs_train.shape[1]} and "
                f"{outputs_test.shape[1]} columns"
            )
        if self.probs_train is not None:
            for split in ("train", "test"):
                probs = getattr(self, f"probs_{split}")
                if np.any(probs < 0) or np.any(probs > 1):
                    raise ValueError(f"probs_{split} has values outside [0, 1]")
        if self.labels_train is not None:
            for split in ("train", "test"):
                labels = getattr(self, f"labels_{split}")
                if not np.issubdtype(labels.dtype, np.integer):
                    if np.all(np.mod(labels, 1) == 0):
                        labels = labels.astype(np.int64)
                        setattr(self, f"labels_{split}", labels)
                    else:
                        raise ValueError(f"labels_{split} must be integer class indices")
                if np.any(labels < 0):
                    raise ValueError(f"labels_{split} has negative values")
                if outputs_train is not None and np.any(labels >= outputs_train.shape[1]):
                    raise ValueError(
                        f"labels_{split} has values ≥ the number of output columns "
                        f"({outputs_train.shape[1]})"
                    )
        if (
            self.loss_train is None
            and self.entropy_train is None
            and self.labels_train is None
            and outputs_train is None
        ):
            raise ValueError("cannot derive losses: give labels with the logits/probabilities")
        for split in ("train", "test"):
            weights = getattr(self, f"sample_weight_{split}")
            if weights is not None and np.any(weights < 0):
                raise ValueError(f"sample_weight_{split} has negative values")

    # ----------------------------------------------------------------- accessors
    @property
    def logits_or_probs_train(self) -> np.ndarray | None:
        return self.logits_train if self.logits_train is not None else self.probs_train

    @property
    def logits_or_probs_test(self) -> np.ndarray | None:
        return self.logits_test if self.logits_test is not None else self.probs_test

    @property
    def num_classes(self) -> int | None:
        outputs = self.logits_or_probs_train
        if outputs is not None:
            return int(outputs.shape[1])
        if self.labels_train is not None:
            return int(max(self.labels_train.max(), self.labels_test.max())) + 1
        return None

    def get_train_size(self) -> int:
        return _first_length(self, "train")

    def get_test_size(self) -> int:
        return _first_length(self, "test")

    def has_nonnull_sample_weights(self) -> bool:
        return self.sample_weight_train is not None

    def _log_probs(self, split: str) -> np.ndarray | None:
        logits = getattr(self, f"logits_{split}")
        probs = getattr(self, f"probs_{split}")
        if logits is None and probs is None:
            return None
        return _log_probabilities(logits, probs)

    def _loss(self, split: str) -> np.ndarray | None:
        given = getattr(self, f"loss_{split}")
        if given is not None:
            return given.astype(np.float64)
        labels = getattr(self, f"labels_{split}")
        log_probs = self._log_probs(split)
        if labels is None or log_probs is None:
            return None
        using_logits = self.loss_function_using_logits
        if using_logits is not None:
            needed = "logits" if using_logits else "probs"
            if getattr(self, f"{needed}_{split}") is None:
                raise ValueError(
                    f"loss_function_using_logits={using_logits}, but no {needed} were given"
                )
        log_p_true = np.maximum(log_probs[np.arange(labels.size), labels], _LOG_SMALLEST)
        loss = -log_p_true
        weights = getattr(self, f"sample_weight_{split}")
        if weights is not None:
            loss = loss * weights.astype(np.float64)
        return loss

    def _entropy(self, split: str) -> np.ndarray | None:
        given = getattr(self, f"entropy_{split}")
        if given is not None:
            return given.astype(np.float64)
        log_probs = self._log_probs(split)
        if log_probs is None:
            return None
        probs = np.exp(log_probs)
        labels = getattr(self, f"labels_{split}")
        if labels is None:
            return -np.sum(special.xlogy(probs, probs), axis=1)
        rows = np.arange(labels.size)
        p_true = probs[rows, labels]
        with np.errstate(divide="ignore"):
            log_one_minus = np.log1p(-np.minimum(probs, 1.0))
        terms = -probs * log_one_minus
        terms = np.where(probs > 0, terms, 0.0)
        terms[rows, labels] = 0.0
        true_term = -special.xlogy(1.0 - p_true, p_true)
        # p_y = 0 gives an infinite loss; cap the term so the score stays finite
        true_term = np.where(np.isfinite(true_term), true_term, np.finfo(np.float64).max / 4)
        other = np.where(np.isfinite(terms), terms, np.finfo(np.float64).max / 4)
        return true_term + other.sum(axis=1)

    def get_loss_train(self) -> np.ndarray | None:
        """Per-example loss of members (given, or cross-entropy from outputs and labels)."""
        return self._loss("train")

    def get_loss_test(self) -> np.ndarray | None:
        """Per-example loss of non-members."""
        return self._loss("test")

    def get_entropy_train(self) -> np.ndarray | None:
        """Per-example (modified) prediction entropy of members."""
        return self._entropy("train")

    def get_entropy_test(self) -> np.ndarray | None:
        """Per-example (modified) prediction entropy of non-members."""
        return self._entropy("test")

    def correctly_classified(self, split: str) -> np.ndarray | None:
        outputs = getattr(self, f"logits_or_probs_{split}")
        labels = getattr(self, f"labels_{split}")
        if outputs is None or labels is None:
            return None
        return np.argmax(outputs, axis=1) == labels

    def __str__(self) -> str:
        parts = [f"AttackInputData(train size={self.get_train_size()}, "]
        parts.append(f"test size={self.get_test_size()}")
        for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight"):
            if getattr(self, f"{kind}_train") is not None:
                parts.append(f", {kind}")
        return "".join(parts) + ")"


_LOG_SMALLEST = float(np.log(SMALLEST_PROBABILITY))


def _check_loss_function(loss_function: Any) -> None:
    """Only the cross-entropy is computed here (TF Privacy's default ``loss_function``)."""
    name = getattr(loss_function, "value", loss_function)
    if loss_function is None or name == "cross_entropy":
        return
    raise ValueError(
        f"loss_function={loss_function!r}: AttackInputData computes only the cross-entropy; "
        "for another loss give loss_train and loss_test computed with it"
    )


def _first_length(data: AttackInputData, split: str) -> int:
    for kind in ("logits", "probs", "labels", "loss", "entropy", "sample_weight"):
        value = getattr(data, f"{kind}_{split}")
        if value is not None:
            return int(value.shape[0])
    raise ValueError("AttackInputData holds no data")
