"""What a DP training run did, in the terms the privacy accountant needs.

This module is plain Python (no Keras, no TensorFlow): the accountant and the CLI read it.

A :class:`TrainingRecord` is a list of :class:`TrainingSegment` s. Each call to ``fit`` on a
DP model opens one segment, because each call may sample differently (arrays are
Poisson-sampled; a ``tf.data`` pipeline arrives in fixed batches). Within a segment every
optimizer update is the same mechanism:

* the clipped contributions of one logical batch (expected size ``expected_batch_size``)
  are summed, each contribution having L2 norm at most ``l2_norm_clip``;
* Gaussian noise with standard deviation ``noise_multiplier * l2_norm_clip`` is added once.

``updates`` counts optimizer updates (not ``train_step`` calls: under gradient accumulation
several calls make one update).

A record may also hold **other releases** computed from the same training data (a
``dp_accounting.DpEvent`` each, e.g. a private second moment of the features released
before training): every epsilon computed from the record -- ``PrivacyBudget``'s live and
per-epoch figures and its budget, ``privacy_spent``, the saved privacy state -- composes
them with the training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Each example joins each logical batch independently with probability q = B / N.
POISSON = "poisson"
#: Data shuffled once per epoch and cut into fixed-size batches: each example is in
#: exactly one batch per epoch. No Poisson amplification applies.
SHUFFLE = "shuffle"
#: Batches arrived already formed (tf.data, generators, PyDataset). The order and the
#: batching are outside our control; accounting must not assume Poisson sampling.
FIXED_BATCHES = "fixed_batches"

SAMPLING_KINDS = (POISSON, SHUFFLE, FIXED_BATCHES)

#: The neighbouring relation of a segment: one example, or all of one user's examples.
EXAMPLE = "example"
USER = "user"
PRIVACY_UNITS = (EXAMPLE, USER)

#: A segment's fields that only adaptive clipping sets (``None`` otherwise).
ADAPTIVE_FIELDS = ("adaptive_clip", "clip_values")
#: The keys of a segment's ``adaptive_clip``.
ADAPTIVE_CLIP_KEYS = (
    "target_quantile",
    "learning_rate",
    "clipped_count_stddev",
    "gradient_noise_multiplier",
    "count_noise_multiplier",
)


@dataclasses.dataclass
class TrainingSegment:
    """One homogeneous stretch of DP training (one ``fit`` call).

    Attributes:
      sampling: one of ``"poisson"``, ``"shuffle"``, ``"fixed_batches"``.
      dataset_size: N, the number of training examples, when known.
      expected_batch_size: examples per optimizer update (the logical batch; under
        Poisson sampling its expectation ``q * N``).
      noise_multiplier: sigma; the noise standard deviation is ``sigma * l2_norm_clip``.
      l2_norm_clip: C, the bound on each clipping unit's contribution.
      num_microbatches: ``None`` when each example is clipped on its own; otherwise the
        number of microbatches per batch, each microbatch being the clipping unit.
      examples_per_clipping_unit: 1 for per-example clipping, else the microbatch size.
      updates: optimizer updates done in this segment so far.
      adaptive_clip: ``None`` for a fixed clip. With adaptive clipping
        (:mod:`keras_privacy.training.adaptive_clip`) the settings and the split of the
        noise: ``target_quantile``, ``learning_rate``, ``clipped_count_stddev`` (s),
        ``gradient_noise_multiplier`` (sigma_g) and ``count_noise_multiplier`` (2 s),
        which compose to ``noise_multiplier``; ``l2_norm_clip`` is then the clip of the
        segment's first update.
      clip_values: with adaptive clipping, the clip ``C_t`` each update of the segment
        used, in order (as logged under ``l2_norm_clip``).
      privacy_unit: ``"example"`` (the neighbouring relation adds or removes one
        example) or ``"user"`` (``fit(user_ids=...)``: it adds or removes all of one
        user's examples; ``dataset_size`` and ``expected_batch_size`` then count users,
        and each user's combined gradient is the clipping unit, see
        :mod:`keras_privacy.training.users`).
      selection_noise_multiplier: ``sigma_s`` of sparsity-preserving DP-SGD's partition
        selection (``None``: plain DP-SGD). Each update is then one Gaussian mechanism
        with noise multiplier ``(sigma^-2 + sigma_s^-2)^(-1/2)``
        (:meth:`accounted_noise_multiplier`; :mod:`keras_privacy.training.sparsity`).
    """

    sampling: str
    dataset_size: int | None
    expected_batch_size: int | None
    noise_multiplier: float
    l2_norm_clip: float
    num_microbatches: int | None = None
    examples_per_clipping_unit: int = 1
    updates: int = 0
    adaptive_clip: dict[str, float] | None = None
    clip_values: list[float] | None = None
    selection_noise_multiplier: float | None = None
    privacy_unit: str = "example"

    @property
    def accounted_noise_multiplier(self) -> float:
        """The noise multiplier of each update's Gaussian mechanism: ``sigma``, or with a
        partition selection ``(sigma^-2 + sigma_s^-2)^(-1/2)`` (the two Gaussians on the
        same sampled batch, scaled to unit noise, are one Gaussian whose sensitivity is
        the norm of the two sensitivities; the worst case attains it)."""
        sigma = float(self.noise_multiplier)
        if self.selection_noise_multiplier is None:
            return sigma
        selection = float(self.selection_noise_multiplier)
        if sigma <= 0 or selection <= 0:
            return 0.0
        return (sigma**-2 + selection**-2) ** -0.5

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_KINDS:
            raise ValueError(
                f"sampling must be one of {SAMPLING_KINDS}, received {self.sampling!r}"
            )
        if self.privacy_unit not in PRIVACY_UNITS:
            raise ValueError(
                f"privacy_unit must be one of {PRIVACY_UNITS}, received {self.privacy_unit!r}"
            )

    @property
    def used_microbatching(self) -> bool:
        """True when the clipping unit holds more than one example.

        Adding or removing one example then changes one microbatch's clipped gradient
        rather than removing a whole clipped contribution, which doubles the L2
        sensitivity (2C instead of C) under the add/remove-one relation.
        """
        return self.examples_per_clipping_unit > 1

    @property
    def sampling_probability(self) -> float | None:
        """q = expected_batch_size / dataset_size, when both are known."""
        if not self.dataset_size or not self.expected_batch_size:
            return None
        return min(1.0, self.expected_batch_size / self.dataset_size)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data; the adaptive-clipping fields only when set, so a
        fixed-clip segment has the same fields as before adaptive clipping existed."""
        data = dataclasses.asdict(self)
        for name in ADAPTIVE_FIELDS:
            if data[name] is None:
                del data[name]
        if data["privacy_unit"] == EXAMPLE:  # the format from before user-level training
            del data["privacy_unit"]
        return data


@dataclasses.dataclass
class TrainingRecord:
    """All DP training a model has done, as segments in order, and the other releases
    from the same data (``(note, DpEvent)`` pairs; see :meth:`add_release`)."""

    segments: list[TrainingSegment] = dataclasses.field(default_factory=list)
    other_releases: list[tuple[str, Any]] = dataclasses.field(default_factory=list)

    def add_release(self, event: Any, note: str = "") -> None:
        """Record that ``event`` (a ``dp_accounting.DpEvent``, under the same
        add-or-remove-one-example relation as the training) was also computed from the
        training data, so that every epsilon of this record composes it with training."""
        from keras_privacy.accounting._checks import check_other_releases

        (event,) = check_other_releases([event])
        self.other_releases.append((str(note), event))

    @property
    def total_updates(self) -> int:
        return sum(s.updates for s in self.segments)

    @property
    def current(self) -> TrainingSegment | None:
        return self.segments[-1] if self.segments else None

    @property
    def privacy_unit(self) -> str:
        """``"example"`` or ``"user"``: the unit every epsilon of this record protects.

        Raises:
          ValueError: segments with updates protect different units (user-level and
            example-level training of one model compose to no single guarantee here).
        """
        units = {s.privacy_unit for s in self.segments if s.updates}
        if len(units) > 1:
            raise ValueError(
                "This record mixes user-level (fit(user_ids=...)) and example-level "
                "training; their guarantees are for different neighbouring relations and "
                "are not composed. Train a model at one level only."
            )
        return units.pop() if units else EXAMPLE

    @property
    def poisson_throughout(self) -> bool:
        """True when every segment with updates used Poisson sampling."""
        return all(s.sampling == POISSON for s in self.segments if s.updates)

    def to_dict(self) -> dict[str, Any]:
        from keras_privacy.accounting.ledger import event_to_data

        data: dict[str, Any] = {"segments": [s.to_dict() for s in self.segments]}
        if self.other_releases:
            data["other_releases"] = [
                {"note": note, "event": event_to_data(event)} for note, event in self.other_releases
            ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecord:
        from keras_privacy.accounting.ledger import event_from_data

        releases = data.get("other_releases", [])
        if not isinstance(releases, list):
            raise ValueError("training record: other_releases must be a list")
        return cls(
            [TrainingSegment(**s) for s in data.get("segments", [])],
            [(str(r.get("note", "")), event_from_data(r.get("event"))) for r in releases],
        )

    def describe(self) -> str:
        """A human-readable account of the sampling and updates so far."""
        if not self.segments:
            return "No DP training has been done yet."
        lines = []
        for i, s in enumerate(self.segments, 1):
            q = s.sampling_probability
            users = s.privacy_unit == USER
            lines.append(
                f"segment {i}: {s.updates} updates, "
                + ("user-level, " if users else "")
                + f"sampling={s.sampling}, "
                + (
                    f"N={s.dataset_size} users, expected users per batch={s.expected_batch_size}"
                    if users
                    else f"N={s.dataset_size}, expected batch={s.expected_batch_size}"
                )
                + (f", q={q:.6g}" if q is not None else "")
                + f", noise_multiplier={s.noise_multiplier}, l2_norm_clip={s.l2_norm_clip}"
                + (
                    f", sparsity-preserving selection noise_multiplier="
                    f"{s.selection_noise_multiplier} (accounted sigma "
                    f"{s.accounted_noise_multiplier:.6g})"
                    if s.selection_noise_multiplier is not None
                    else ""
                )
                + (
                    ", per-user clipping (each user's summed gradient)"
                    if users
                    else f", microbatches of {s.examples_per_clipping_unit} examples"
                    if s.used_microbatching
                    else ", per-example clipping"
                )
                + (_describe_adaptive(s) if s.adaptive_clip else "")
            )
        return "\n".join(lines)


def _describe_adaptive(segment: TrainingSegment) -> str:
    a = segment.adaptive_clip
    clips = segment.clip_values or []
    span = f", clip {min(clips):.4g}..{max(clips):.4g} (last {clips[-1]:.4g})" if clips else ""
    return (
        f", adaptive clip (quantile {a['target_quantile']}, learning rate "
        f"{a['learning_rate']}, count stddev {a['clipped_count_stddev']}: gradient noise "
        f"multiplier {a['gradient_noise_multiplier']:.6g}, count noise multiplier "
        f"{a['count_noise_multiplier']:.6g}){span}"
    )
