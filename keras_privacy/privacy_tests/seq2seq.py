"""Membership inference on sequence-to-sequence models, as TF Privacy defines it.

The unit attacked is a *batch* of target sequences (members: a batch of training pairs).
For each token the model's logits over the vocabulary rank the true token:
``rank = #{v : z_v > z_true}`` (0 = the model's top choice; ties count in the token's
favour). A batch's score is the mean rank over all its tokens, and the threshold attack
flags batches with a low mean rank (members are expected to be ranked higher). The result
also records, in its ``PrivacyReportMetadata``, the loss (the mean over sequences of the
summed token cross-entropy) and the token accuracy of each side.

Framework-free: logits and labels are NumPy arrays, ``(num_sequences, num_tokens,
vocab_size)`` and ``(num_sequences, num_tokens)`` (or ``(..., 1)``) per batch; sequences of
different lengths may come as lists of 2-D/1-D arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from scipy import special

from keras_privacy.privacy_tests.attacks import run_attacks
from keras_privacy.privacy_tests.data_structures import (
    AttackInputData,
    AttackResults,
    AttackType,
    PrivacyReportMetadata,
)

__all__ = ["Seq2SeqAttackInputData", "run_seq2seq_attack"]


@dataclasses.dataclass
class Seq2SeqAttackInputData:
    """Batches of logits and target labels of members (train) and non-members (test).

    Attributes:
      logits_train, logits_test: iterables of batches of logits, each
        ``(num_sequences, num_tokens, vocab_size)``.
      labels_train, labels_test: iterables of batches of target token ids, each
        ``(num_sequences, num_tokens)`` or ``(num_sequences, num_tokens, 1)``.
      vocab_size: size of the target vocabulary.
      train_size, test_size: the number of batches on each side.
    """

    logits_train: Iterable[np.ndarray] | None = None
    logits_test: Iterable[np.ndarray] | None = None
    labels_train: Iterable[np.ndarray] | None = None
    labels_test: Iterable[np.ndarray] | None = None
    vocab_size: int | None = None
    train_size: int = 0
    test_size: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` unless logits, labels and sizes are all given."""
        for kind in ("logits", "labels"):
            if getattr(self, f"{kind}_train") is None or getattr(self, f"{kind}_test") is None:
                raise ValueError(f"{kind}_train and {kind}_test must both be given")
        for name in ("vocab_size", "train_size", "test_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, received {value!r}")


@dataclasses.dataclass
class _SideSummary:
    mean_ranks: np.ndarray  # one per batch
    loss: float  # mean over sequences of the summed token cross-entropy
    accuracy: float  # fraction of tokens whose top logit is the true token


def _summarize(logits_batches: Iterable[np.ndarray], labels_batches: Iterable) -> _SideSummary:
    mean_ranks, total_loss, sequences, correct, tokens = [], 0.0, 0, 0, 0
    for batch_logits, batch_labels in zip(logits_batches, labels_batches, strict=True):
        batch_ranks = []
        for logits, labels in zip(batch_logits, batch_labels, strict=True):
            logits = np.asarray(logits, dtype=np.float64)
            labels = np.asarray(labels).reshape(-1).astype(np.int64)
            if logits.ndim != 2 or logits.shape[0] != labels.size:
                raise ValueError(
                    f"a sequence's logits must be (num_tokens, vocab_size) with one label "
                    f"per token, received {logits.shape} and {labels.size} labels"
                )
            rows = np.arange(labels.size)
            true_logits = logits[rows, labels]
            batch_ranks.append(np.sum(logits > true_logits[:, None], axis=1))
            log_probs = special.log_softmax(logits, axis=1)
            total_loss += float(-log_probs[rows, labels].sum())
            sequences += 1
            correct += int(np.sum(np.argmax(logits, axis=1) == labels))
            tokens += labels.size
        if not batch_ranks:
            raise ValueError("empty batch")
        mean_ranks.append(float(np.mean(np.concatenate(batch_ranks))))
    if not mean_ranks:
        raise ValueError("no batches")
    return _SideSummary(np.array(mean_ranks), total_loss / sequences, correct / tokens)


def run_seq2seq_attack(
    attack_input: Seq2SeqAttackInputData,
    privacy_report_metadata: PrivacyReportMetadata | None = None,
    balance_attacker_training: bool = True,
) -> AttackResults:
    """Threshold attack on the batches' mean token rank (see the module docstring).

    ``privacy_report_metadata`` (a new one if None) receives the loss and accuracy of
    both sides.
    """
    attack_input.validate()
    train = _summarize(attack_input.logits_train, attack_input.labels_train)
    test = _summarize(attack_input.logits_test, attack_input.labels_test)
    metadata = privacy_report_metadata or PrivacyReportMetadata()
    metadata.loss_train, metadata.loss_test = train.loss, test.loss
    metadata.accuracy_train, metadata.accuracy_test = train.accuracy, test.accuracy
    return run_attacks(
        AttackInputData(loss_train=train.mean_ranks, loss_test=test.mean_ranks),
        attack_types=(AttackType.THRESHOLD_ATTACK,),
        privacy_report_metadata=metadata,
        balance_attacker_training=balance_attacker_training,
    )
