"""Keras adapters for the privacy tests: model outputs, the attack callback, shadow models
and sequence perplexities.

This is the only module of :mod:`keras_privacy.privacy_tests` that imports Keras; the rest
works on NumPy scores. It works with any Keras 3 backend.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
from scipy import special

from keras_privacy.privacy_tests.attacks import run_attacks
from keras_privacy.privacy_tests.data_structures import (
    AttackInputData,
    AttackResults,
    AttackResultsCollection,
    AttackType,
    PrivacyReportMetadata,
    SlicingSpec,
)
from keras_privacy.privacy_tests.lira import (
    ShadowModelScores,
    logit_scaled_confidence,
    logit_scaled_confidence_from_logits,
    make_shadow_in_mask,
)

__all__ = [
    "MembershipInferenceCallback",
    "attack_input_from_model",
    "logit_scaled_confidence_for_model",
    "model_outputs",
    "sequence_log_perplexities",
    "train_shadow_models",
]

_OUTPUT_KINDS = ("auto", "logits", "probabilities")


def _looks_like_probabilities(predictions: np.ndarray) -> bool:
    if np.any(predictions < 0) or np.any(predictions > 1):
        return False
    if predictions.ndim >= 2 and predictions.shape[-1] > 1:
        return bool(np.allclose(predictions.sum(axis=-1), 1.0, atol=1e-3))
    return True


def model_outputs(
    model: keras.Model, x: Any, batch_size: int = 256, output: str = "auto"
) -> tuple[np.ndarray, bool]:
    """The model's predictions on ``x`` as float64, and whether they are logits.

    ``output`` says what the model returns: ``"logits"``, ``"probabilities"``, or ``"auto"``
    (probabilities if every row lies in [0, 1] and, for several classes, sums to 1). Say it
    explicitly when the model's logits could happen to look like probabilities.
    """
    if output not in _OUTPUT_KINDS:
        raise ValueError(f"output must be one of {_OUTPUT_KINDS}, received {output!r}")
    predictions = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64)
    if output == "auto":
        return predictions, not _looks_like_probabilities(predictions)
    return predictions, output == "logits"


def _labels(y: Any) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        return labels.argmax(axis=1)
    return labels.reshape(-1).astype(np.int64)


def attack_input_from_model(
    model: keras.Model,
    train_data: tuple[Any, Any],
    test_data: tuple[Any, Any],
    batch_size: int = 256,
    output: str = "auto",
    sample_weight_train: np.ndarray | None = None,
    sample_weight_test: np.ndarray | None = None,
) -> AttackInputData:
    """:class:`AttackInputData` from a classifier and its members ``train_data = (x, y)`` and
    non-members ``test_data = (x, y)``. Labels may be integers or one-hot."""
    x_train, y_train = train_data
    x_test, y_test = test_data
    outputs_train, train_logits = model_outputs(model, x_train, batch_size, output)
    outputs_test, test_logits = model_outputs(model, x_test, batch_size, output)
    is_logits = train_logits or test_logits
    key = "logits" if is_logits else "probs"
    return AttackInputData(
        **{f"{key}_train": outputs_train, f"{key}_test": outputs_test},
        labels_train=_labels(y_train),
        labels_test=_labels(y_test),
        sample_weight_train=sample_weight_train,
        sample_weight_test=sample_weight_test,
    )


def _accuracy(data: AttackInputData, split: str) -> float | None:
    correct = data.correctly_classified(split)
    return None if correct is None else float(np.mean(correct))


class MembershipInferenceCallback(keras.callbacks.Callback):
    """Runs membership inference attacks every ``every_n_epochs`` epochs during ``fit``.

    At each chosen epoch end it predicts on the held-in (``in_data``, members) and held-out
    (``out_data``, non-members) data, runs the attacks, and writes into the epoch's logs — so
    into ``fit``'s ``History`` — ``{prefix}_auc`` and ``{prefix}_advantage`` (the strongest
    attack over attack types and slices) and ``{prefix}_{attack}_auc`` /
    ``{prefix}_{attack}_advantage`` per attack type. On other epochs these entries are NaN,
    so that every history list has one entry per epoch.

    All results are kept in ``results`` (one :class:`AttackResults` per attacked epoch, with
    accuracies and the epoch number in their metadata), ready for
    :func:`keras_privacy.privacy_tests.plot_by_epochs`.

    Args:
      in_data: ``(x, y)`` examples the model trains on (a subset is enough).
      out_data: ``(x, y)`` examples it never sees.
      attack_types: attacks to run.
      every_n_epochs: attack after epochs N, 2N, ... (counting from 1).
      slicing_spec: slices (default: entire dataset).
      batch_size: prediction batch size.
      output: ``"auto"``, ``"logits"`` or ``"probabilities"``, see :func:`model_outputs`.
      prefix: prefix of the log keys.
      model_variant_label: label in the results' metadata.
      run_attacks_kwargs: further keyword arguments for :func:`run_attacks`.
    """

    def __init__(
        self,
        in_data: tuple[Any, Any],
        out_data: tuple[Any, Any],
        attack_types: Iterable[AttackType] = (AttackType.THRESHOLD_ATTACK,),
        every_n_epochs: int = 1,
        slicing_spec: SlicingSpec | None = None,
        batch_size: int = 256,
        output: str = "auto",
        prefix: str = "mia",
        model_variant_label: str = "Default model variant",
        run_attacks_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be ≥ 1, received {every_n_epochs}")
        if output not in _OUTPUT_KINDS:
            raise ValueError(f"output must be one of {_OUTPUT_KINDS}, received {output!r}")
        self.in_data = in_data
        self.out_data = out_data
        self.attack_types = tuple(attack_types)
        if not self.attack_types:
            raise ValueError("attack_types is empty")
        self.every_n_epochs = every_n_epochs
        self.slicing_spec = slicing_spec
        self.batch_size = batch_size
        self.output = output
        self.prefix = prefix
        self.model_variant_label = model_variant_label
        self.run_attacks_kwargs = dict(run_attacks_kwargs or {})
        self.results: list[AttackResults] = []

    @property
    def results_collection(self) -> AttackResultsCollection:
        return AttackResultsCollection(list(self.results))

    def _log_keys(self) -> list[str]:
        keys = [f"{self.prefix}_auc", f"{self.prefix}_advantage"]
        for attack_type in self.attack_types:
            keys += [
                f"{self.prefix}_{attack_type.name.lower()}_auc",
                f"{self.prefix}_{attack_type.name.lower()}_advantage",
            ]
        return keys

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            logs = {}
        if (epoch + 1) % self.every_n_epochs != 0:
            for key in self._log_keys():
                logs[key] = math.nan
            return
        attack_input = attack_input_from_model(
            self.model, self.in_data, self.out_data, self.batch_size, self.output
        )
        metadata = PrivacyReportMetadata(
            accuracy_train=_accuracy(attack_input, "train"),
            accuracy_test=_accuracy(attack_input, "test"),
            epoch_num=epoch + 1,
            model_variant_label=self.model_variant_label,
        )
        results = run_attacks(
            attack_input,
            self.slicing_spec,
            self.attack_types,
            privacy_report_metadata=metadata,
            **self.run_attacks_kwargs,
        )
        self.results.append(results)
        logs[f"{self.prefix}_auc"] = results.get_result_with_max_auc().get_auc()
        logs[f"{self.prefix}_advantage"] = (
            results.get_result_with_max_attacker_advantage().get_attacker_advantage()
        )
        for attack_type in self.attack_types:
            own = [r for r in results.single_attack_results if r.attack_type == attack_type]
            name = attack_type.name.lower()
            logs[f"{self.prefix}_{name}_auc"] = max((r.get_auc() for r in own), default=math.nan)
            logs[f"{self.prefix}_{name}_advantage"] = max(
                (r.get_attacker_advantage() for r in own), default=math.nan
            )


def _predicted_classes(predictions: np.ndarray, is_logits: bool) -> np.ndarray:
    if predictions.ndim == 1 or predictions.shape[-1] == 1:  # binary, one column
        return (predictions.reshape(-1) > (0.0 if is_logits else 0.5)).astype(np.int64)
    return predictions.argmax(axis=-1)


def logit_scaled_confidence_for_model(
    model: keras.Model, x: Any, y: Any, batch_size: int = 256, output: str = "auto"
) -> np.ndarray:
    """LiRA's φ = log(p_y / (1 − p_y)) of ``model`` on each example of ``(x, y)``."""
    predictions, is_logits = model_outputs(model, x, batch_size, output)
    labels = _labels(y)
    if predictions.ndim == 1 or predictions.shape[-1] == 1:  # binary: one column for class 1
        column = predictions.reshape(-1)
        if is_logits:
            predictions = np.stack([np.zeros_like(column), column], axis=1)
        else:
            predictions = np.stack([1.0 - column, column], axis=1)
    if is_logits:
        return logit_scaled_confidence_from_logits(predictions, labels)
    return logit_scaled_confidence(predictions, labels)


def train_shadow_models(
    build_model: Callable[[], keras.Model],
    x: np.ndarray,
    y: np.ndarray,
    num_shadow_models: int = 8,
    in_mask: np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    fit_kwargs: dict[str, Any] | None = None,
    query_transforms: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None,
    output: str = "auto",
    seed: int | None = 0,
    on_model_trained: Callable[[int, keras.Model], None] | None = None,
    verbose: int | str = "auto",
) -> ShadowModelScores:
    """Train K shadow models on random halves of an in-memory dataset, for LiRA.

    Each model k is built by ``build_model()`` (a fresh, compiled model) and fitted on the
    examples where ``in_mask[k]`` is True (by default each example is in exactly half of the
    models, see :func:`make_shadow_in_mask`). Every model then scores *all* examples with
    LiRA's logit-scaled confidence φ; with ``query_transforms`` (e.g. flips) each transform
    of ``x`` is scored too, giving scores of shape ``(K, N, queries)``.

    Any of the returned models' rows can serve as the target in
    :func:`keras_privacy.privacy_tests.run_lira` (leave-one-model-out evaluation).
    ``on_model_trained(k, model)`` is called after each model, e.g. to save it.

    ``verbose``: 1 shows Keras's progress bar over the K models (with its time estimate),
    0 nothing; ``"auto"`` (default) shows it only when standard output is a terminal.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("the dataset is empty")
    if in_mask is None:
        in_mask = make_shadow_in_mask(num_shadow_models, x.shape[0], seed)
    in_mask = np.asarray(in_mask, dtype=bool)
    if in_mask.shape != (num_shadow_models, x.shape[0]):
        raise ValueError(
            f"in_mask has shape {in_mask.shape}, expected ({num_shadow_models}, {x.shape[0]})"
        )
    transforms = list(query_transforms) if query_transforms else [lambda inputs: inputs]
    labels = _labels(y)
    scores = np.zeros((num_shadow_models, x.shape[0], len(transforms)))
    train_accuracy = np.zeros(num_shadow_models)
    test_accuracy = np.zeros(num_shadow_models)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 0
    bar = None
    if verbose:
        bar = keras.utils.Progbar(
            num_shadow_models, stateful_metrics=["train accuracy"], unit_name="model"
        )
    for k in range(num_shadow_models):
        model = build_model()
        members = in_mask[k]
        model.fit(
            x[members],
            y[members],
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
            **(fit_kwargs or {}),
        )
        for q, transform in enumerate(transforms):
            scores[k, :, q] = logit_scaled_confidence_for_model(
                model, transform(x), y, batch_size=max(batch_size, 256), output=output
            )
        predictions, is_logits = model_outputs(model, x, max(batch_size, 256), output)
        correct = _predicted_classes(predictions, is_logits) == labels
        train_accuracy[k] = correct[members].mean()
        test_accuracy[k] = correct[~members].mean() if (~members).any() else math.nan
        if on_model_trained is not None:
            on_model_trained(k, model)
        if bar is not None:
            bar.update(k + 1, [("train accuracy", train_accuracy[k])])
    if len(transforms) == 1:
        scores = scores[..., 0]
    return ShadowModelScores(scores, in_mask, train_accuracy, test_accuracy)


def sequence_log_perplexities(
    model: keras.Model,
    sequences: np.ndarray,
    score_from: int = 1,
    batch_size: int = 256,
    output: str = "auto",
) -> np.ndarray:
    """Log-perplexity Px(s) = −Σ_{t ≥ score_from} log2 P(s_t | s_<t) of each token sequence.

    ``model`` maps token ids ``(n, T − 1)`` (the sequence without its last token) to
    next-token predictions ``(n, T − 1, vocabulary)``: position t − 1 predicts token t.
    ``score_from`` is the first position scored (≥ 1), e.g. where the secret starts after a
    fixed prefix; earlier tokens only serve as context.
    """
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or sequences.shape[1] < 2:
        raise ValueError(f"sequences must be (n, T) with T ≥ 2, received {sequences.shape}")
    if not 1 <= score_from < sequences.shape[1]:
        raise ValueError(f"score_from must be in [1, {sequences.shape[1]}), received {score_from}")
    predictions, is_logits = model_outputs(model, sequences[:, :-1], batch_size, output)
    if predictions.shape[:2] != (sequences.shape[0], sequences.shape[1] - 1):
        raise ValueError(
            f"the model returned shape {predictions.shape}; expected "
            f"({sequences.shape[0]}, {sequences.shape[1] - 1}, vocabulary)"
        )
    if is_logits:
        log_probs = special.log_softmax(predictions, axis=-1)
    else:
        with np.errstate(divide="ignore"):
            log_probs = np.log(predictions)
    targets = sequences[:, 1:]
    token_log_probs = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return -token_log_probs[:, score_from - 1 :].sum(axis=1) / math.log(2.0)
