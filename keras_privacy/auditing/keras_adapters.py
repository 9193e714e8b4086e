"""Keras adapters for auditing: white-box gradient canaries injected into the DP step,
and input-space canaries inserted into the training data.

White-box gradient canaries (Nasr et al. 2021, 2023; the "Dirac canaries" of Steinke et
al. 2023). Canary ``i`` is a clipping unit whose gradient is ``a·C·e_{j_i}``: ``a ≥ 1``
times the clip norm along one coordinate ``j_i`` of the trainable weights. It is clipped
by the library's own clipping arithmetic
(:func:`keras_privacy.training.clipping.clip_factors`, which every engine uses), so a
correct build adds exactly ``C`` along ``j_i`` to the clipped sum of every update, before
the noise; a build that does not clip adds ``a·C``. Adding or removing such a unit is the
neighbouring relation DP-SGD protects (any unit of norm ≤ C after clipping), so the
audit measures the DP step itself.

How they get in. :class:`GradientCanaries` wraps the model's clipping engines, *on this
one model object only* and only inside ``with canaries.installed():``: the wrapper calls
the real engine and adds the included canaries' clipped gradient to the sum of the
logical batch's first chunk. Nothing in the library changes; outside the ``with`` block
(and on every other model) training is exactly what it was. (One corner: on JAX a Poisson
batch of capacity above 64 rows that samples no row at all skips its only chunk, and the
canaries with it; the audit is then conservative, never inflated.) The canaries are in every
update, so white-box audits are of full-batch training (q = 1), and the claim they are
checked against is the accountant's ε for T Gaussian mechanisms
(:func:`~keras_privacy.auditing.claimed_epsilon`).

The score. With plain SGD (no momentum, no weight decay) the total change of weight
``j`` over T updates is ``-(lr / B) · Σ_t (clipped sum_t + noise_t)[j]``, so
``-Δw_j · B / (lr · C)`` is the canary's summed contribution in units of C: ``T`` (if
included, and the data's gradient along ``j`` is zero) plus ``N(0, T σ²)``. Coordinates
the data never moves (e.g. weights of an input feature that is always 0) give the
tightest audit; others only add spread.

Input-space canaries (black-box). Mislabelled or out-of-distribution examples, each
added to the training set with probability 1/2, scored after training by minus their
loss (:func:`input_space_audit`). Weaker than gradient canaries, but they audit the whole
pipeline (sampling, data handling) as a user would run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_privacy.auditing.multi_run import run_multi_run_audit
from keras_privacy.auditing.one_run import one_run_audit
from keras_privacy.auditing.results import AuditResult
from keras_privacy.auditing.theory import claimed_epsilon
from keras_privacy.training import clipping

__all__ = [
    "GradientCanaries",
    "input_space_audit",
    "white_box_audit",
    "white_box_multi_run_audit",
]


class _CanaryEngine:
    """A clipping engine plus the included canaries' clipped gradients (first chunk of
    each logical batch only, so that they enter each update once)."""

    def __init__(self, engine: Any, canaries: GradientCanaries) -> None:
        self._engine = engine
        self._canaries = canaries

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def clipped_gradient_sum(
        self, model: Any, *args: Any, l2_norm_clip: float, unit_offset: Any = 0, **kwargs: Any
    ) -> Any:
        result = self._engine.clipped_gradient_sum(
            model, *args, l2_norm_clip=l2_norm_clip, unit_offset=unit_offset, **kwargs
        )
        batch, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, None)
        first_chunk = ops.cast(ops.equal(unit_offset, 0), "float32")
        extra = self._canaries.clipped_gradient(l2_norm_clip)
        grad_sum = [g + first_chunk * c for g, c in zip(batch.grad_sum, extra, strict=True)]
        batch = dataclasses.replace(batch, grad_sum=grad_sum)
        return (batch, *rest) if rest is not None else batch


class GradientCanaries:
    """``num_canaries`` white-box gradient canaries for one DP model (see the module).

    Args:
      model: a built DP model (``DPSequential``, ``DPModel``, ``make_private``'s result).
      num_canaries: m.
      coordinates: m distinct indices into the model's trainable weights, flattened and
        concatenated in ``model.trainable_variables`` order; default: m distinct
        coordinates drawn at random.
      included: which canaries are in the run (m booleans); default: each with
        probability 1/2, drawn from ``seed``.
      gradient_scale: a, the canary's raw gradient norm in units of C (≥ 1, default 10);
        clipping takes it down to C, and a build that does not clip shows a-fold.
      seed: seeds the default coordinates and inclusion.

    Use::

        canaries = GradientCanaries(model, 1000, seed=0)
        before = canaries.weights()
        with canaries.installed():
            model.fit(x, y, batch_size=len(x), epochs=steps)
        scores = canaries.scores(before, learning_rate=lr, divisor=len(x))
    """

    def __init__(
        self,
        model: Any,
        num_canaries: int,
        *,
        coordinates: np.ndarray | None = None,
        included: np.ndarray | None = None,
        gradient_scale: float = 10.0,
        seed: int | None = None,
    ) -> None:
        if getattr(model, "_dp_engines", None) is None:
            raise TypeError("GradientCanaries needs a DP model (DPSequential, DPModel, ...)")
        if not model.built:
            raise ValueError("build the model (or train it once) before adding canaries")
        if isinstance(num_canaries, bool) or int(num_canaries) != num_canaries or num_canaries < 1:
            raise ValueError(f"num_canaries must be a whole number >= 1, received {num_canaries}")
        if not gradient_scale >= 1.0:
            raise ValueError(f"gradient_scale must be >= 1, received {gradient_scale}")
        self.model = model
        self.num_canaries = int(num_canaries)
        self.gradient_scale = float(gradient_scale)
        self._shapes = [tuple(v.shape) for v in model.trainable_variables]
        sizes = [int(np.prod(s)) for s in self._shapes]
        total = int(sum(sizes))
        rng = np.random.default_rng(seed)
        if coordinates is None:
            if self.num_canaries > total:
                raise ValueError(
                    f"{num_canaries} canaries need as many coordinates; the model has {total}"
                )
            coordinates = rng.choice(total, size=self.num_canaries, replace=False)
        coordinates = np.asarray(coordinates, dtype=np.int64)
        if (
            coordinates.shape != (self.num_canaries,)
            or np.unique(coordinates).size != self.num_canaries
            or coordinates.min() < 0
            or coordinates.max() >= total
        ):
            raise ValueError(f"coordinates must be {num_canaries} distinct indices in [0, {total})")
        if included is None:
            included = rng.random(self.num_canaries) < 0.5
        included = np.asarray(included, dtype=bool)
        if included.shape != (self.num_canaries,):
            raise ValueError(f"included must have shape ({num_canaries},)")
        self.coordinates = coordinates
        self.included = included
        # The included canaries' raw gradients summed: a·e_j per canary (times C later).
        direction = np.zeros(total, dtype=np.float32)
        direction[coordinates[included]] = self.gradient_scale
        bounds = np.cumsum([0, *sizes])
        self._direction = [
            direction[bounds[i] : bounds[i + 1]].reshape(shape)
            for i, shape in enumerate(self._shapes)
        ]

    def clipped_gradient(self, l2_norm_clip: float) -> list:
        """The included canaries' gradients after clipping, one tensor per trainable
        variable: each canary's raw gradient (norm a·C) times the library's clip factor."""
        raw_norm = ops.convert_to_tensor([self.gradient_scale * l2_norm_clip], "float32")
        factor = clipping.clip_factors(raw_norm, l2_norm_clip)[0]
        return [
            ops.convert_to_tensor(d, "float32") * (factor * l2_norm_clip) for d in self._direction
        ]

    @contextlib.contextmanager
    def installed(self) -> Iterator[GradientCanaries]:
        """Inject the canaries into this model's DP step for the duration of the block."""
        model = self.model
        if "_dp_engines" in model.__dict__:
            raise RuntimeError("canaries are already installed on this model")
        engines = {name: _CanaryEngine(e, self) for name, e in type(model)._dp_engines.items()}
        object.__setattr__(model, "_dp_engines", engines)
        model.train_function = None  # retrace with the wrapped engines
        try:
            yield self
        finally:
            del model.__dict__["_dp_engines"]
            model.train_function = None

    def weights(self) -> np.ndarray:
        """The canaries' coordinates of the trainable weights, now (float64). On JAX, inside
        ``fit``, the variables are first synced from the training state, as Keras's own
        callbacks do."""
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        flat = np.concatenate(
            [
                np.ravel(np.asarray(ops.convert_to_numpy(v.value), dtype=np.float64))
                for v in self.model.trainable_variables
            ]
        )
        return flat[self.coordinates]

    def scores(
        self, weights_before: np.ndarray, *, learning_rate: float, divisor: float
    ) -> np.ndarray:
        """Each canary's summed contribution in units of C: ``-Δw_j · B / (lr · C)``
        (``divisor`` is B, the DP step's public divisor: the batch size under full-batch
        training). Valid for plain SGD (no momentum, no weight decay)."""
        clip = self.model._dp_require_config().l2_norm_clip
        change = self.weights() - np.asarray(weights_before, dtype=np.float64)
        return -change * float(divisor) / (float(learning_rate) * clip)


def _check_plain_sgd(model: Any) -> float:
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not isinstance(optimizer, keras.optimizers.SGD):
        raise ValueError(
            "white_box_audit reads the noised gradient off the weights, which needs plain "
            f"SGD; the model's optimizer is {type(optimizer).__name__}"
        )
    if float(optimizer.momentum) != 0.0 or getattr(optimizer, "weight_decay", None):
        raise ValueError("white_box_audit needs SGD without momentum or weight decay")
    if callable(optimizer._learning_rate) or isinstance(
        optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        raise ValueError("white_box_audit needs a constant learning rate")
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def white_box_audit(
    model: Any,
    x: Any,
    y: Any,
    *,
    epochs: int,
    batch_size: int | None = None,
    num_canaries: int = 1000,
    coordinates: np.ndarray | None = None,
    delta: float = 1e-5,
    confidence: float = 0.95,
    gradient_scale: float = 10.0,
    guess_counts: Any = None,
    statistic: str = "sum",
    seed: int | None = None,
    **fit_arguments: Any,
) -> AuditResult:
    """A one-run white-box audit of ``model``'s DP step: ``fit`` on ``(x, y)`` for
    ``epochs`` with ``num_canaries`` gradient canaries, each included with probability
    1/2 and then present in every update; the bound of Steinke et al.
    (:func:`~keras_privacy.auditing.one_run_audit`), compared with the accountant's ε for
    T Gaussian mechanisms of the model's noise multiplier at ``delta``, T being the
    updates the DP step counted.

    ``batch_size`` defaults to the whole of ``x`` (full-batch DP-SGD, q = 1); a smaller
    one changes how the data are batched, not the canaries (still in every update, so the
    claim stays that of T Gaussian mechanisms). The model must be a compiled DP model
    with plain SGD; it is trained (its weights change). ``fit_arguments`` go to ``fit``
    (``verbose`` defaults to 0).

    The weights along the canaries' coordinates are read after every update (the
    white-box adversary sees every iterate, as DP-SGD's accounting allows), giving each
    canary's contribution per update in units of C. ``statistic`` combines them into its
    score: ``"sum"`` (the likelihood-ratio statistic for correct DP-SGD, the tightest) or
    ``"median"`` (robust: exposes updates that were not noised at all).

    Raises:
      ValueError: an optimizer other than plain SGD with a constant learning rate, a model
        without noise, or bad canary arguments.
    """
    config = model._dp_require_config()
    if not config.noise_multiplier > 0:
        raise ValueError("the model adds no noise (noise_multiplier=0): there is no ε to audit")
    learning_rate = _check_plain_sgd(model)
    rows = len(keras.tree.flatten(x)[0])
    batch_size = rows if batch_size is None else int(batch_size)
    if not model.built:
        model._symbolic_build(data_batch=(x[:1], y[:1], None))
    canaries = GradientCanaries(
        model,
        num_canaries,
        coordinates=coordinates,
        gradient_scale=gradient_scale,
        seed=seed,
    )
    if statistic not in ("sum", "median"):
        raise ValueError(f"statistic must be 'sum' or 'median', received {statistic!r}")
    trajectory = [canaries.weights()]
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: trajectory.append(canaries.weights())
    )
    updates_before = model._dp_counters()["updates"]
    fit_arguments.setdefault("verbose", 0)
    callbacks = [*fit_arguments.pop("callbacks", []), recorder]
    with canaries.installed():
        model.fit(
            x, y, batch_size=batch_size, epochs=int(epochs), callbacks=callbacks, **fit_arguments
        )
    updates = model._dp_counters()["updates"] - updates_before
    # Each update's contribution along each canary's coordinate, in units of C.
    per_update = -np.diff(np.stack(trajectory), axis=0) * (
        batch_size / (learning_rate * config.l2_norm_clip)
    )
    scores = per_update.sum(axis=0) if statistic == "sum" else np.median(per_update, axis=0)
    return one_run_audit(
        scores,
        canaries.included,
        guess_counts=guess_counts,
        delta=delta,
        confidence=confidence,
        epsilon_claimed=claimed_epsilon(config.noise_multiplier, updates, delta),
        canary_kind="white-box gradient",
    )


def white_box_multi_run_audit(
    build_model: Callable[[], Any],
    x: Any,
    y: Any,
    *,
    steps: int,
    num_trials: int,
    coordinate: int | None = None,
    delta: float = 1e-5,
    confidence: float = 0.95,
    privacy_profile: str = "gaussian",
    threshold: float | None = None,
    gradient_scale: float = 10.0,
    seed: int | None = None,
) -> AuditResult:
    """A multi-run white-box audit: ``num_trials`` full-batch runs of ``steps`` updates
    (``train_on_batch`` on all of ``(x, y)``),
    each with one gradient canary (at ``coordinate``) included by a fair coin.

    ``build_model()`` must return a fresh compiled DP model (plain SGD, built) each time
    it is called; it is called twice (one model trains with the canary installed, one
    without, so neither retraces between trials), and every trial starts both from the
    same initial weights, with fresh noise. The score is the canary coordinate's summed
    update in units of C (``T`` + noise with the canary, noise alone without, when the
    data never moves that coordinate). With ``privacy_profile="gaussian"`` the default
    threshold is ``steps / 2``, fixed before any run (so no selection is paid for); see
    :func:`~keras_privacy.auditing.multi_run_audit`.
    """
    with_canary, without_canary = build_model(), build_model()
    learning_rate = _check_plain_sgd(with_canary)
    config = with_canary._dp_require_config()
    if not config.noise_multiplier > 0:
        raise ValueError("the model adds no noise (noise_multiplier=0): there is no ε to audit")
    rows = len(keras.tree.flatten(x)[0])
    initial = with_canary.get_weights()
    if coordinate is None:
        total = sum(int(np.prod(v.shape)) for v in with_canary.trainable_variables)
        coordinate = int(np.random.default_rng(seed).integers(total))
    canaries = {
        True: GradientCanaries(
            with_canary, 1, coordinates=[coordinate], included=[True], gradient_scale=gradient_scale
        ),
        False: GradientCanaries(without_canary, 1, coordinates=[coordinate], included=[False]),
    }
    updates = []

    def train_and_score(include: bool, trial: int) -> float:
        canary = canaries[include]
        canary.model.set_weights(initial)
        before = canary.weights()
        counted = canary.model._dp_counters()["updates"]
        for _ in range(int(steps)):  # one full-batch update each (cheaper than fit)
            canary.model.train_on_batch(x, y)
        updates.append(canary.model._dp_counters()["updates"] - counted)
        return float(canary.scores(before, learning_rate=learning_rate, divisor=rows)[0])

    if privacy_profile == "gaussian" and threshold is None:
        threshold = steps / 2.0
    with canaries[True].installed():
        result = run_multi_run_audit(
            train_and_score,
            num_trials,
            seed=seed,
            delta=delta,
            confidence=confidence,
            canary_kind="white-box gradient",
            privacy_profile=privacy_profile,
            threshold=threshold,
        )
    if len(set(updates)) != 1:
        raise RuntimeError(f"the runs made different numbers of updates: {sorted(set(updates))}")
    claim = claimed_epsilon(config.noise_multiplier, updates[0], delta)
    return dataclasses.replace(result, epsilon_claimed=claim)


def input_space_audit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    canary_x: np.ndarray,
    canary_y: np.ndarray,
    *,
    epsilon_claimed: float | None = None,
    delta: float = 1e-5,
    confidence: float = 0.95,
    guess_counts: Any = None,
    seed: int | None = None,
    **fit_arguments: Any,
) -> AuditResult:
    """A one-run black-box audit with input-space canaries.

    Each canary example (``canary_x[i]``, ``canary_y[i]``: e.g. a training image with a
    wrong label, or an out-of-distribution input) joins the training set with probability
    1/2; ``model.fit`` then trains on the union as a user would (``fit_arguments``: batch
    size, epochs, ...). Each canary is scored by minus its loss under the trained model
    (per-example ``model.loss``), and the one-run bound is computed. ``epsilon_claimed``
    is what the accountant says for this ``fit`` (e.g. ``model.privacy_spent(delta)``
    after it, when left ``None``).
    """
    canary_x = np.asarray(canary_x)
    canary_y = np.asarray(canary_y)
    m = len(canary_x)
    included = np.random.default_rng(seed).random(m) < 0.5
    train_x = np.concatenate([np.asarray(x), canary_x[included]])
    train_y = np.concatenate([np.asarray(y), canary_y[included]])
    fit_arguments.setdefault("verbose", 0)
    model.fit(train_x, train_y, **fit_arguments)
    if epsilon_claimed is None:
        epsilon_claimed = model.privacy_spent(delta, allow_large_delta=True)
    predictions = model.predict(canary_x, verbose=0)
    loss = keras.losses.get(model.loss)
    if hasattr(loss, "get_config"):
        loss = loss.__class__.from_config({**loss.get_config(), "reduction": "none"})
    per_example = np.asarray(ops.convert_to_numpy(loss(canary_y, predictions)), dtype=np.float64)
    per_example = per_example.reshape(m, -1).mean(axis=1)
    return one_run_audit(
        -per_example,
        included,
        guess_counts=guess_counts,
        delta=delta,
        confidence=confidence,
        epsilon_claimed=epsilon_claimed,
        canary_kind="input-space",
    )
