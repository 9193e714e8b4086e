"""TF Privacy's Keras evaluation forms, on keras-privacy's Keras adapters (imports Keras).

* :func:`run_attack_on_keras_model`: predict on members ``in_train = (x, y)`` and
  non-members ``out_train = (x, y)``, then :func:`~keras_privacy.privacy_tests.run_attacks`.
* :class:`TFPrivacyMembershipInferenceCallback`: TF Privacy's callback arguments on
  :class:`~keras_privacy.privacy_tests.keras_adapters.MembershipInferenceCallback`, which
  attacks after every epoch and writes ``mia_*`` entries into the epoch's logs (so into
  ``History``, and into TensorBoard through ``keras.callbacks.TensorBoard`` placed after it
  in the callback list). It prints nothing (the library never prints) and writes no
  TensorBoard files itself: ``tensorboard_dir`` is refused with that advice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keras_privacy.privacy_tests.attacks import run_attacks
from keras_privacy.privacy_tests.data_structures import AttackResults, AttackType, SlicingSpec
from keras_privacy.privacy_tests.keras_adapters import (
    MembershipInferenceCallback,
    attack_input_from_model,
)

__all__ = ["TFPrivacyMembershipInferenceCallback", "run_attack_on_keras_model"]


def _output_kind(is_logit: bool) -> str:
    return "logits" if is_logit else "probabilities"


def run_attack_on_keras_model(
    model: Any,
    in_train: tuple[Any, Any],
    out_train: tuple[Any, Any],
    slicing_spec: SlicingSpec | None = None,
    attack_types: Iterable[AttackType] = (AttackType.THRESHOLD_ATTACK,),
    is_logit: bool = False,
    batch_size: int = 32,
) -> AttackResults:
    """Attack ``model`` with its members ``in_train`` and non-members ``out_train``.

    ``is_logit`` says whether ``model.predict`` returns logits (else probabilities).
    """
    attack_input = attack_input_from_model(
        model, in_train, out_train, batch_size, _output_kind(is_logit)
    )
    return run_attacks(attack_input, slicing_spec, attack_types)


class TFPrivacyMembershipInferenceCallback(MembershipInferenceCallback):
    """TF Privacy's ``MembershipInferenceCallback(in_train, out_train, slicing_spec,
    attack_types, tensorboard_dir, tensorboard_merge_classifiers, is_logit, batch_size)``."""

    def __init__(
        self,
        in_train: tuple[Any, Any],
        out_train: tuple[Any, Any],
        slicing_spec: SlicingSpec | None = None,
        attack_types: Iterable[AttackType] = (AttackType.THRESHOLD_ATTACK,),
        tensorboard_dir: str | None = None,
        tensorboard_merge_classifiers: bool = False,
        is_logit: bool = False,
        batch_size: int = 32,
    ) -> None:
        if tensorboard_dir is not None or tensorboard_merge_classifiers:
            raise ValueError(
                "tensorboard_dir is not supported: the attack metrics go into the epoch logs "
                "(mia_auc, mia_advantage, ...); put keras.callbacks.TensorBoard(log_dir) after "
                "this callback to write them to TensorBoard"
            )
        super().__init__(
            in_train,
            out_train,
            attack_types=attack_types,
            slicing_spec=slicing_spec,
            batch_size=batch_size,
            output=_output_kind(is_logit),
        )
