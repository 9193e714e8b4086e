"""Membership inference attacks on scores, and :func:`run_attacks`.

Two families:

* **Threshold attacks** (Yeom et al. 2018; Song & Mittal 2021): the membership score is
  −loss (``THRESHOLD_ATTACK``) or −(modified) entropy (``THRESHOLD_ENTROPY_ATTACK``); every
  threshold on it is an attack, and the ROC curve sweeps them all.
* **Trained attacks** (Shokri et al. 2017, in the simplified form TF Privacy uses): a
  scikit-learn classifier learns to tell members from non-members from the model's outputs
  (logits or probabilities, plus the loss when available). The attack data are balanced by
  downsampling the larger of the two sets, and split into ``cross_validation_folds``
  stratified folds: each fold is scored by a classifier trained on the other folds, so an
  attack classifier is never evaluated on data it was trained on. Examples left out by the
  balancing are scored by the average of the fold classifiers (none of which saw them), so
  every example gets an out-of-sample membership score.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from keras_privacy.privacy_tests import metrics
from keras_privacy.privacy_tests.data_structures import (
    AttackInputData,
    AttackResults,
    AttackType,
    PrivacyReportMetadata,
    RocCurve,
    SingleAttackResult,
    SingleSliceSpec,
    SlicingSpec,
)
from keras_privacy.privacy_tests.slicing import get_single_slice_specs, get_slice, slice_indices

__all__ = [
    "AttackerData",
    "create_attacker_data",
    "default_attack_model",
    "run_attacks",
    "run_threshold_attack",
    "run_trained_attack",
]

AttackModelFactory = Callable[[int], ClassifierMixin]


def default_attack_model(attack_type: AttackType, seed: int = 0) -> ClassifierMixin:
    """The scikit-learn classifier used for a trained attack (features standardized)."""
    if attack_type == AttackType.LOGISTIC_REGRESSION:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if attack_type == AttackType.MULTI_LAYERED_PERCEPTRON:
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(64,),
                alpha=1e-3,
                max_iter=200,
                early_stopping=True,
                random_state=seed,
            ),
        )
    if attack_type == AttackType.RANDOM_FOREST:
        return RandomForestClassifier(
            n_estimators=50, min_samples_leaf=5, n_jobs=1, random_state=seed
        )
    if attack_type == AttackType.K_NEAREST_NEIGHBORS:
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=15))
    raise ValueError(f"{attack_type} is not a trained attack")


class AttackerData:
    """Features and membership labels for a trained attack.

    Attributes:
      features: ``(n_train + n_test, d)``; members first.
      is_member: 1 for members (train), 0 for non-members (test).
      sample_weights: per-example weights, or ``None``.
      balanced_indices: indices into ``features`` of the balanced subset the attack is
        trained and cross-validated on.
    """

    def __init__(
        self,
        features: np.ndarray,
        is_member: np.ndarray,
        sample_weights: np.ndarray | None,
        balanced_indices: np.ndarray,
    ) -> None:
        self.features = features
        self.is_member = is_member
        self.sample_weights = sample_weights
        self.balanced_indices = balanced_indices


def _attack_features(attack_input: AttackInputData, split: str) -> np.ndarray:
    columns = []
    outputs = getattr(attack_input, f"logits_or_probs_{split}")
    if outputs is not None:
        columns.append(outputs.astype(np.float64))
    loss = attack_input._loss(split)
    if loss is not None:
        columns.append(loss[:, None])
    if not columns:
        columns.append(attack_input._entropy(split)[:, None])
    return np.concatenate(columns, axis=1)


def create_attacker_data(
    attack_input: AttackInputData, balance: bool = True, seed: int = 0
) -> AttackerData:
    """Build the trained attacks' data; with ``balance``, downsample the larger side so that
    the attack classifier sees as many members as non-members (the balanced in/out sampling
    TF Privacy documents)."""
    features_train = _attack_features(attack_input, "train")
    features_test = _attack_features(attack_input, "test")
    n_train, n_test = features_train.shape[0], features_test.shape[0]
    features = np.concatenate([features_train, features_test])
    is_member = np.concatenate([np.ones(n_train, int), np.zeros(n_test, int)])
    weights = None
    if attack_input.has_nonnull_sample_weights():
        weights = np.concatenate(
            [attack_input.sample_weight_train, attack_input.sample_weight_test]
        ).astype(np.float64)
    members = np.arange(n_train)
    nonmembers = np.arange(n_train, n_train + n_test)
    if balance and n_train != n_test:
        rng = np.random.default_rng(seed)
        size = min(n_train, n_test)
        members = np.sort(rng.choice(members, size, replace=False))
        nonmembers = np.sort(rng.choice(nonmembers, size, replace=False))
    return AttackerData(features, is_member, weights, np.concatenate([members, nonmembers]))


def _fit(
    model: ClassifierMixin, features: np.ndarray, labels: np.ndarray, weights: np.ndarray | None
) -> None:
    # k-NN cannot ask for more neighbours than there are training examples
    neighbour_params = [k for k in model.get_params() if k.endswith("n_neighbors")]
    for key in neighbour_params:
        if model.get_params()[key] > labels.size:
            model.set_params(**{key: labels.size})
    # early stopping holds out a stratified validation split, impossible on tiny slices
    for key in [k for k in model.get_params() if k.endswith("early_stopping")]:
        if model.get_params()[key] and labels.size < 50:
            model.set_params(**{key: False})
    fit_kwargs = {}
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if weights is not None and "sample_weight" in inspect.signature(final.fit).parameters:
        if isinstance(model, Pipeline):
            fit_kwargs = {f"{model.steps[-1][0]}__sample_weight": weights}
        else:
            fit_kwargs = {"sample_weight": weights}
    with warnings.catch_warnings():
        # an attack classifier that stops before convergence is still a valid attack
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels, **fit_kwargs)


def _member_probability(model: ClassifierMixin, features: np.ndarray) -> np.ndarray:
    probabilities = model.predict_proba(features)
    column = list(model.classes_).index(1)
    return probabilities[:, column]


def _result(
    slice_spec: SingleSliceSpec,
    attack_type: AttackType,
    scores_train: np.ndarray,
    scores_test: np.ndarray,
    attack_input: AttackInputData,
    epsilon_delta: float,
    epsilon_confidence: float,
    epsilon_method: str,
    seed: int,
) -> SingleAttackResult:
    # Sample weights act where TF Privacy applies them (weighted losses, weighted fitting of
    # the trained attacks); the ROC counts every example once.
    fpr, tpr, thresholds = metrics.roc_curve(scores_train, scores_test)
    n_train, n_test = scores_train.size, scores_test.size
    method = epsilon_method if min(n_train, n_test) >= 2 else "uniform"
    bound = metrics.compute_epsilon_lower_bound(
        scores_train,
        scores_test,
        delta=epsilon_delta,
        confidence=epsilon_confidence,
        method=method,
        seed=seed,
    )
    return SingleAttackResult(
        slice_spec=slice_spec,
        attack_type=attack_type,
        roc_curve=RocCurve(tpr, fpr, thresholds, test_train_ratio=n_test / n_train),
        data_size={"train": n_train, "test": n_test},
        membership_scores_train=scores_train,
        membership_scores_test=scores_test,
        epsilon_lower_bound=bound,
    )


def run_threshold_attack(
    attack_input: AttackInputData,
    attack_type: AttackType = AttackType.THRESHOLD_ATTACK,
    slice_spec: SingleSliceSpec | None = None,
    epsilon_lower_bound_delta: float = 0.0,
    epsilon_lower_bound_confidence: float = 0.95,
    epsilon_lower_bound_method: str = "holdout",
    seed: int = 0,
) -> SingleAttackResult:
    """Threshold attack: membership score −loss (or −entropy for
    ``THRESHOLD_ENTROPY_ATTACK``)."""
    if attack_type == AttackType.THRESHOLD_ATTACK:
        train, test = attack_input.get_loss_train(), attack_input.get_loss_test()
        needed = "losses (or logits/probabilities with labels)"
    elif attack_type == AttackType.THRESHOLD_ENTROPY_ATTACK:
        train, test = attack_input.get_entropy_train(), attack_input.get_entropy_test()
        needed = "entropies (or logits/probabilities)"
    else:
        raise ValueError(f"{attack_type} is not a threshold attack")
    if train is None:
        raise ValueError(f"{attack_type} needs {needed}")
    return _result(
        slice_spec or SingleSliceSpec(),
        attack_type,
        -train,
        -test,
        attack_input,
        epsilon_lower_bound_delta,
        epsilon_lower_bound_confidence,
        epsilon_lower_bound_method,
        seed,
    )


def run_trained_attack(
    attack_input: AttackInputData,
    attack_type: AttackType,
    slice_spec: SingleSliceSpec | None = None,
    balance_attacker_training: bool = True,
    cross_validation_folds: int = 2,
    attack_model_factory: AttackModelFactory | None = None,
    epsilon_lower_bound_delta: float = 0.0,
    epsilon_lower_bound_confidence: float = 0.95,
    epsilon_lower_bound_method: str = "holdout",
    seed: int = 0,
) -> SingleAttackResult:
    """Train a scikit-learn attack classifier with cross-fitting (see module docstring).

    ``attack_model_factory(seed)`` may supply another classifier with ``predict_proba``.
    """
    if not attack_type.is_trained_attack:
        raise ValueError(f"{attack_type} is not a trained attack")
    if cross_validation_folds < 2:
        raise ValueError(f"cross_validation_folds must be ≥ 2, received {cross_validation_folds}")
    data = create_attacker_data(attack_input, balance_attacker_training, seed)
    balanced = data.balanced_indices
    labels_balanced = data.is_member[balanced]
    smallest = int(min(labels_balanced.sum(), (1 - labels_balanced).sum()))
    if smallest < cross_validation_folds:
        raise ValueError(
            f"{attack_type} needs at least {cross_validation_folds} members and non-members, "
            f"the smaller side has {smallest}"
        )
    scores = np.zeros(data.features.shape[0])
    left_out = np.setdiff1d(np.arange(data.features.shape[0]), balanced)
    folds = StratifiedKFold(n_splits=cross_validation_folds, shuffle=True, random_state=seed)
    for fold, (fit_part, score_part) in enumerate(
        folds.split(data.features[balanced], labels_balanced)
    ):
        model = (attack_model_factory or (lambda s: default_attack_model(attack_type, s)))(
            seed + fold
        )
        fit_indices = balanced[fit_part]
        weights = None if data.sample_weights is None else data.sample_weights[fit_indices]
        _fit(model, data.features[fit_indices], data.is_member[fit_indices], weights)
        scores[balanced[score_part]] = _member_probability(
            model, data.features[balanced[score_part]]
        )
        if left_out.size:
            scores[left_out] += _member_probability(model, data.features[left_out])
    scores[left_out] /= cross_validation_folds
    n_train = attack_input.get_train_size()
    return _result(
        slice_spec or SingleSliceSpec(),
        attack_type,
        scores[:n_train],
        scores[n_train:],
        attack_input,
        epsilon_lower_bound_delta,
        epsilon_lower_bound_confidence,
        epsilon_lower_bound_method,
        seed,
    )


def run_attacks(
    attack_input: AttackInputData,
    slicing_spec: SlicingSpec | None = None,
    attack_types: Iterable[AttackType] = (AttackType.THRESHOLD_ATTACK,),
    privacy_report_metadata: PrivacyReportMetadata | None = None,
    balance_attacker_training: bool = True,
    min_num_samples: int = 1,
    cross_validation_folds: int = 2,
    attack_model_factories: Mapping[AttackType, AttackModelFactory] | None = None,
    epsilon_lower_bound_delta: float = 0.0,
    epsilon_lower_bound_confidence: float = 0.95,
    epsilon_lower_bound_method: str = "holdout",
    seed: int = 0,
    backend: str | None = None,
    return_slice_indices: bool = False,
) -> AttackResults:
    """Run each attack in ``attack_types`` on each slice of ``slicing_spec``.

    Args:
      attack_input: the members' and non-members' outputs/losses.
      slicing_spec: which slices to attack (default: the entire dataset only).
      attack_types: threshold attacks and/or trained attacks.
      privacy_report_metadata: accuracies, epoch, model label, kept with the results.
      balance_attacker_training: downsample the larger side for trained attacks.
      min_num_samples: slices with fewer members or non-members than this are skipped
        (trained attacks also need at least ``cross_validation_folds`` of each).
      cross_validation_folds: folds for the trained attacks' cross-fitting.
      attack_model_factories: optional ``{attack type: factory(seed) -> classifier}``.
      epsilon_lower_bound_delta: δ of the empirical ε lower bound attached to each result.
      epsilon_lower_bound_confidence: the confidence of that bound.
      epsilon_lower_bound_method: the method of that bound.
      seed: seeds the balancing, the folds, the attack models and the ε holdout split.
      backend: a joblib backend (``"threading"``, ``"loky"``...) for the scikit-learn
        attack models that run jobs in parallel (as in TF Privacy); ``None`` runs them as
        configured (single-threaded by default). It changes speed, not results.
      return_slice_indices: attach each slice's member and non-member indices to its
        results (``train_indices``, ``test_indices``; not for the entire dataset).

    Returns:
      :class:`AttackResults`; slices (and attack × slice pairs) with too few examples are
      listed in ``skipped_slices``.
    """
    attack_types = tuple(attack_types)
    if not attack_types:
        raise ValueError("attack_types is empty")
    for attack_type in attack_types:
        if not isinstance(attack_type, AttackType):
            raise ValueError(f"not an AttackType: {attack_type!r}")
        if attack_type in (AttackType.LIRA_ONLINE, AttackType.LIRA_OFFLINE):
            raise ValueError(
                f"{attack_type} needs shadow models; use keras_privacy.privacy_tests.lira"
            )
    if attack_input.is_multilabel_data() and AttackType.THRESHOLD_ENTROPY_ATTACK in attack_types:
        raise NotImplementedError("entropy attacks are not defined for multi-label data")
    if backend is not None:
        import joblib

        with joblib.parallel_backend(backend):
            return run_attacks(
                attack_input,
                slicing_spec,
                attack_types,
                privacy_report_metadata,
                balance_attacker_training,
                min_num_samples,
                cross_validation_folds,
                attack_model_factories,
                epsilon_lower_bound_delta,
                epsilon_lower_bound_confidence,
                epsilon_lower_bound_method,
                seed,
                None,
                return_slice_indices,
            )
    slicing_spec = slicing_spec or SlicingSpec()
    factories = dict(attack_model_factories or {})
    results: list[SingleAttackResult] = []
    skipped: list[str] = []
    for slice_spec in get_single_slice_specs(slicing_spec, attack_input):
        sliced = get_slice(attack_input, slice_spec, slicing_spec)
        if sliced is None or min(sliced.get_train_size(), sliced.get_test_size()) < max(
            1, min_num_samples
        ):
            skipped.append(str(slice_spec))
            continue
        smaller_side = min(sliced.get_train_size(), sliced.get_test_size())
        for attack_type in attack_types:
            common = {
                "epsilon_lower_bound_delta": epsilon_lower_bound_delta,
                "epsilon_lower_bound_confidence": epsilon_lower_bound_confidence,
                "epsilon_lower_bound_method": epsilon_lower_bound_method,
                "seed": seed,
            }
            if attack_type.is_trained_attack:
                if smaller_side < cross_validation_folds:
                    skipped.append(f"{slice_spec} ({attack_type})")
                    continue
                result = run_trained_attack(
                    sliced,
                    attack_type,
                    slice_spec,
                    balance_attacker_training=balance_attacker_training,
                    cross_validation_folds=cross_validation_folds,
                    attack_model_factory=factories.get(attack_type),
                    **common,
                )
            else:
                result = run_threshold_attack(sliced, attack_type, slice_spec, **common)
            if return_slice_indices and not slice_spec.entire_dataset:
                result.train_indices, result.test_indices = slice_indices(
                    attack_input, slice_spec, slicing_spec
                )
            results.append(result)
    if not results:
        raise ValueError("no slice had enough examples to attack; skipped: " + ", ".join(skipped))
    return AttackResults(results, privacy_report_metadata, skipped)
