"""The tutorials' training loop: one model at one target epsilon, measured and attacked.

For a target epsilon the noise multiplier is planned before training with
:func:`keras_privacy.compute_noise_multiplier`: the smallest sigma whose epsilon after
``epochs`` Keras epochs of Poisson sampling (q = B / N; ``epochs x round(N / B)`` updates,
as ``fit`` makes them) is at most the target at ``delta``. The run is then trained with
``make_private`` and a :class:`~keras_privacy.PrivacyBudget` callback, which shows
epsilon as it grows and would stop training before the target is exceeded; the epsilon
reported is the accountant's value for the updates actually made.

Membership inference: members are the training rows, non-members held-out rows; the
attacks are the project's threshold attack on the loss and a logistic-regression attack
on the model's outputs (:func:`keras_privacy.privacy_tests.run_attacks`). The best AUC over
them is reported: 0.5 means the attacker does no better than chance.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

import keras_privacy as kp
from keras_privacy import privacy_tests as pt
from keras_privacy.privacy_tests.keras_adapters import attack_input_from_model
from keras_privacy.training.callbacks import PrivacyBudgetWarning
from keras_privacy.tutorials._report import Row

__all__ = [
    "EpochLines",
    "Recipe",
    "membership_auc",
    "plan_noise",
    "quiet_accounting_logs",
    "train_at_target",
    "updates_per_epoch",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training settings shared by the private and the non-private run of a model.

    ``optimizer`` is "sgd" (with ``momentum``) or "adam". ``ema``: when set, the model
    keeps an exponential moving average of its weights, w_ema <- ema * w_ema + (1 - ema) * w
    after every update, and ends ``fit`` with the average as its weights (Keras's
    ``use_ema``). Averaging DP-SGD's iterates is post-processing: it costs no privacy.
    """

    batch_size: int
    epochs: int
    learning_rate: float
    l2_norm_clip: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    ema: float | None = None

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        average = {}
        if self.ema is not None:
            average = {"use_ema": True, "ema_momentum": self.ema, "ema_overwrite_frequency": None}
        if self.optimizer == "adam":
            return keras.optimizers.Adam(self.learning_rate, **average)
        return keras.optimizers.SGD(self.learning_rate, momentum=self.momentum, **average)


def updates_per_epoch(number_of_examples: int, batch_size: int) -> int:
    """Optimizer updates in one Keras epoch of Poisson-sampled ``fit``: round(N / B)."""
    return max(1, round(number_of_examples / batch_size))


def quiet_accounting_logs() -> None:
    """Hide dp-accounting's RDP convergence warnings (orders it excludes; harmless, and the
    values used are checked) from a tutorial's terminal. For programs, not the library."""
    logging.getLogger("absl").setLevel(logging.ERROR)


def plan_noise(
    target_epsilon: float,
    delta: float,
    number_of_examples: int,
    batch_size: int,
    epochs: int,
    accountant: str = "pld",
    other_releases: tuple = (),
) -> float:
    """The smallest sigma with epsilon <= ``target_epsilon`` after ``epochs`` Keras epochs
    of Poisson-sampled DP-SGD: ``epochs x round(N / B)`` updates, each a Gaussian with
    sampling probability q = B / N, composed with ``other_releases`` (DpEvents of what
    else was computed on the training rows)."""
    return kp.compute_noise_multiplier(
        target_epsilon,
        delta,
        number_of_examples,
        batch_size,
        steps=epochs * updates_per_epoch(number_of_examples, batch_size),
        accountant=accountant,
        other_releases=other_releases,
    )


def membership_auc(
    model: keras.Model,
    members: tuple[Any, Any],
    non_members: tuple[Any, Any],
    seed: int = 0,
) -> float:
    """Best AUC of the threshold (loss) and logistic-regression membership attacks."""
    attack_input = attack_input_from_model(model, members, non_members, output="logits")
    results = pt.run_attacks(
        attack_input,
        attack_types=[pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.LOGISTIC_REGRESSION],
        seed=seed,
    )
    return float(results.get_result_with_max_auc().get_auc())


class EpochLines(keras.callbacks.Callback):
    """Prints one line every ``every`` epochs: the run, the epoch, epsilon so far (from
    :class:`~keras_privacy.PrivacyBudget`, which must come first in ``callbacks``) and the
    validation metric ``monitor``."""

    def __init__(self, label: str, epochs: int, monitor: str, every: int = 1) -> None:
        super().__init__()
        self.label, self.epochs, self.monitor, self.every = label, epochs, monitor, max(1, every)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        parts = [f"  {self.label}: epoch {done:>3}/{self.epochs}"]
        if "epsilon" in logs:
            parts.append(f"ε {float(logs['epsilon']):6.3f}")
        if self.monitor in logs:
            parts.append(f"{self.monitor} {float(logs[self.monitor]):.4f}")
        print("  ".join(parts), flush=True)


def train_at_target(
    name: str,
    build: Callable[[], keras.Model],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    recipe: Recipe,
    target_epsilon: float | None,
    delta: float,
    loss: keras.losses.Loss,
    evaluate: Callable[[keras.Model], dict[str, float]],
    monitor_metric: keras.metrics.Metric | str,
    seed: int = 0,
    accountant: str = "pld",
    noise_seed: int | None = None,
    progress_every: int = 1,
    attack: bool | Callable[[keras.Model, tuple[Any, Any], tuple[Any, Any]], float] = True,
    other_releases: tuple = (),
) -> Row:
    """Train ``build()`` on ``train`` (privately unless ``target_epsilon`` is None), then
    measure ``evaluate(model)`` and the membership-inference AUC (``train`` vs ``test``).

    ``seed`` fixes the weight initialisation and the non-private data order; the DP noise
    and sampling are fixed only by ``noise_seed`` (tests only). ``loss`` must be per
    example (a Keras loss is). ``monitor_metric`` is compiled in and shown as ``val_*``
    on ``test`` each epoch (held-out data, not the private rows). ``attack``: True for
    :func:`membership_auc`, False for none (NaN), or a function ``(model, members,
    non_members) -> AUC`` (for models whose outputs are not one prediction per example).
    ``other_releases``: (note, DpEvent) pairs for what else was computed on the training
    rows (e.g. private feature statistics); sigma is planned for their composition with
    the run, and the model's record holds them, so the epsilon shown during training and
    the one reported both compose them with the run.
    """
    quiet_accounting_logs()
    keras.utils.set_random_seed(seed)
    x_train, y_train = train
    n = len(x_train)
    model = build()
    sigma, callbacks = 0.0, []
    if target_epsilon is not None:
        sigma = plan_noise(
            target_epsilon,
            delta,
            n,
            recipe.batch_size,
            recipe.epochs,
            accountant,
            tuple(event for _, event in other_releases),
        )
        model = kp.make_private(
            model, l2_norm_clip=recipe.l2_norm_clip, noise_multiplier=sigma, seed=noise_seed
        )
        # The record composes them with training in every epsilon it gives: the live and
        # per-epoch figures, the budget, and the one reported below.
        for note, event in other_releases:
            model.privacy_record.add_release(event, note)
        callbacks.append(kp.PrivacyBudget(delta, target_epsilon, accountant=accountant, live=False))
    label = name + (" non-private" if target_epsilon is None else f" ε≤{target_epsilon:g}")
    metric_name = monitor_metric if isinstance(monitor_metric, str) else monitor_metric.name
    callbacks.append(EpochLines(label, recipe.epochs, f"val_{metric_name}", progress_every))
    model.compile(optimizer=recipe.make_optimizer(), loss=loss, metrics=[monitor_metric])
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The budget is planned to end with the last update: its "stopping" notice at the
        # end of the final epoch says only that; fewer updates are reported below.
        warnings.simplefilter("ignore", PrivacyBudgetWarning)
        model.fit(
            x_train,
            y_train,
            batch_size=recipe.batch_size,
            epochs=recipe.epochs,
            validation_data=test,
            callbacks=callbacks,
            verbose=0,
        )
    seconds = time.perf_counter() - start
    if target_epsilon is not None:
        planned = recipe.epochs * updates_per_epoch(n, recipe.batch_size)
        made = model.privacy_record.total_updates
        if made < planned:
            print(f"  {label}: the budget stopped training after {made} of {planned} updates")
    epsilon = math.inf
    if target_epsilon is not None:
        ledger = kp.PrivacyLedger.from_training_record(model.privacy_record)
        epsilon = ledger.epsilon(delta, accountant)
    metrics = evaluate(model)
    if callable(attack):
        mia = attack(model, train, test)
    else:
        mia = membership_auc(model, train, test, seed) if attack else math.nan
    sys.stdout.flush()
    return Row(
        model=name,
        target_epsilon=target_epsilon,
        epsilon=float(epsilon),
        noise_multiplier=float(sigma),
        l2_norm_clip=None if target_epsilon is None else recipe.l2_norm_clip,
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        accountant=accountant if target_epsilon is not None else "—",
        metrics=metrics,
        mia_auc=mia,
        seconds=seconds,
        seed=seed,
    )
