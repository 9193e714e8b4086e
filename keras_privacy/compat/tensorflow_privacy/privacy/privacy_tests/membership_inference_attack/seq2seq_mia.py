"""``...membership_inference_attack.seq2seq_mia``: attacks on seq2seq models."""

from __future__ import annotations

from keras_privacy.privacy_tests.seq2seq import (  # noqa: F401
    Seq2SeqAttackInputData,
    run_seq2seq_attack,
)

__all__ = [
    "Seq2SeqAttackInputData",
    "run_seq2seq_attack",
]
