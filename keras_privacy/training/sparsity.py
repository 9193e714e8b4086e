"""Sparsity-preserving DP-SGD for embedding tables (DP-AdaFEST: Ghazi, Huang, Kamath,
Kumar, Manurangsi, Sinha, Zhang, NeurIPS 2023), written once on ``keras.ops``.

Plain DP-SGD noises every row of every table on every update. With
``sparsity_preserving=SparsityPreserving(...)`` each update of a model whose
``keras.layers.Embedding`` tables are handled by the fast engine's Embedding rule does,
for a logical batch of clipping units ``u`` (examples, or microbatches), on each table
with ``V`` rows:

1. **Contributions.** Unit ``u`` touches the distinct rows ``T_u`` (its token ids). Its
   contribution vector is ``w_u 1[T_u]`` with ``w_u = min(1, c0 / sqrt(|T_u|))``, so
   ``||w_u 1[T_u]||_2 <= c0`` (the contribution bound) and each row gets at most 1 from
   one unit. The row counts are ``n_v = sum_u w_u 1[v in T_u]``.
2. **Partition selection.** ``n_v + N(0, (sigma_s c0)^2)`` for *every* row ``v``, then
   ``S = {v : noisy n_v > tau}``. With ``K`` sparse tables in one model each table's
   counts get ``N(0, K (sigma_s c0)^2)`` instead (:func:`per_table`): a unit's
   contribution vectors have norm ``c0`` in each table, ``sqrt(K) c0`` together.
   For the rows no unit touched (``n_v = 0``) this is a
   Bernoulli(``p``) draw per row with ``p = P(N(0, (sigma_s c0)^2) > tau)``; it is drawn
   as such, from one uniform per row (a table-sized *boolean*, never a table-sized noise
   or gradient tensor); only the touched rows get a Gaussian.
3. **Gradient.** The clipped sum ``sum_u clip_C(g_u)`` exactly as plain DP-SGD
   computes it (all variables together clipped to ``C``), restricted to ``S`` on the
   table; ``N(0, (sigma C)^2)`` is added to the rows of ``S`` only, and to every
   coordinate of the dense variables as always. A row outside ``S`` gets exactly zero
   update (and no noise), so the optimizer sees only the rows of ``S``.

**Privacy.** Neighbouring relation: add or remove one example (one clipping unit; with
microbatches one example changes one unit, doubling both sensitivities, as for plain
DP-SGD). The update releases ``(n + Z_s, G + Z_g)`` restricted by post-processing: the
noisy counts over all ``V`` rows (sensitivity ``c0``, noise ``sigma_s c0``) and the noisy
clipped gradient sum (sensitivity ``C``, noise ``sigma C``), both computed from the same
sampled batch. Scaling each part by its noise standard deviation gives isotropic unit
noise and a joint sensitivity ``sqrt(1/sigma^2 + 1/sigma_s^2)``, so the update is *one*
Gaussian mechanism with noise multiplier::

    sigma_eff = (sigma^-2 + sigma_s^-2)^(-1/2)

and the worst case is attained (an example whose gradient has norm ``C`` and whose
contribution vector has norm ``c0``), so this is exact, not a bound. Poisson sampling
amplifies it as one subsampled Gaussian: the accountant's event per update is
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma_eff))`` (equivalently a
``ComposedDpEvent`` of the two Gaussians inside the sampled event; the paper's
analysis composes them the same way). Everything the update outputs -- which rows are
selected, and their noised gradients -- is a function of those two noisy vectors and of
data-independent randomness, so ``sigma_eff`` accounts for all of it.

**Floating point and static shapes.** The Gaussians are the backends' floating-point
samplers, as for plain DP-SGD. On JAX (static shapes) at most
:func:`false_positive_capacity` false positives are noised per update; more happen with
probability below 1e-40, independently of the data, which changes ``delta`` by less
than float64 can show (see that function). TensorFlow and PyTorch have no such cap.

**Optimizers.** TensorFlow: the table's gradient reaches the optimizer as
``tf.IndexedSlices`` of the selected rows; Keras's SGD (with or without momentum),
Adam, Adagrad and RMSprop apply it to those rows only (checked: ``update_step`` receives
the slices). JAX and PyTorch: Keras's optimizers take dense gradients, so the table's
gradient is a dense tensor that is zero outside the selected rows (no noise is drawn
there); with SGD those rows do not move. Any optimizer's own data-independent changes
(weight decay, AdamW) still move every row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from keras import ops

from keras_privacy.training.errors import PrivacyError


@dataclasses.dataclass(frozen=True)
class SparsityPreserving:
    """Settings of sparsity-preserving DP-SGD (see the module docstring for the math).

    Attributes:
      selection_noise_multiplier: ``sigma_s > 0``: the row counts get noise
        ``N(0, (sigma_s c0)^2)``. The update's privacy is that of one Gaussian with
        ``(sigma^-2 + sigma_s^-2)^(-1/2)`` (:func:`combined_noise_multiplier`).
      threshold: ``tau >= 0``, in examples: a row is updated when its noisy count
        exceeds it. Larger: fewer false positives (rows noised that no example touched,
        each with probability :attr:`false_positive_probability`) and more hot rows
        missed.
      contribution_bound: ``c0 > 0``, the L2 bound on one unit's contribution vector (a
        unit touching ``k`` distinct rows adds ``min(1, c0 / sqrt(k))`` to each).
    """

    selection_noise_multiplier: float
    threshold: float
    contribution_bound: float = 1.0

    def __post_init__(self) -> None:
        for name, low, strict in (
            ("selection_noise_multiplier", 0.0, True),
            ("threshold", 0.0, False),
            ("contribution_bound", 0.0, True),
        ):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < low or (strict and value == low):
                raise PrivacyError(
                    f"SparsityPreserving.{name} must be a finite number "
                    f"{'>' if strict else '>='} {low}, received {value!r}."
                )

    @property
    def selection_stddev(self) -> float:
        """The noise standard deviation on the row counts: ``sigma_s c0``."""
        return self.selection_noise_multiplier * self.contribution_bound

    @property
    def false_positive_probability(self) -> float:
        """``p = P(N(0, (sigma_s c0)^2) > tau)``: how likely an untouched row is selected."""
        return 0.5 * math.erfc(self.threshold / (self.selection_stddev * math.sqrt(2.0)))

    def to_config(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Any) -> SparsityPreserving | None:
        """``None``, a :class:`SparsityPreserving`, or its ``to_config`` dict."""
        if config is None or isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls(**config)
        raise PrivacyError(
            "sparsity_preserving must be None, a keras_privacy.SparsityPreserving or its "
            f"config dict, received {type(config).__name__}. TF Privacy's "
            "SparsityPreservingDPSGDConfig is accepted by the compatibility layer "
            "(keras_privacy.compat.tensorflow_privacy)."
        )


def per_table(config: SparsityPreserving, tables: int) -> SparsityPreserving:
    """The settings one of ``tables`` sparse tables selects its rows with: count noise
    ``sqrt(tables) sigma_s c0``. One unit's contribution vector has norm at most ``c0`` in
    *each* table, so its contribution vectors over all tables together have norm up to
    ``sqrt(tables) c0``; noise ``sqrt(tables)`` times larger keeps the joint release of the
    counts a Gaussian with noise multiplier ``sigma_s``, which is what the accountant is
    told (TF Privacy scales its selection noise by ``sqrt(tables)`` for the same reason)."""
    if tables < 1:
        raise ValueError(f"tables must be >= 1, received {tables!r}")
    if tables == 1:
        return config
    return dataclasses.replace(
        config, selection_noise_multiplier=config.selection_noise_multiplier * math.sqrt(tables)
    )


def combined_noise_multiplier(noise_multiplier: float, selection_noise_multiplier: float) -> float:
    """``(sigma^-2 + sigma_s^-2)^(-1/2)``: the noise multiplier of the one Gaussian
    mechanism that the gradient noise and the selection noise of an update make
    together (0 if either is 0: that part then has no privacy)."""
    if noise_multiplier <= 0 or selection_noise_multiplier <= 0:
        return 0.0
    return (noise_multiplier**-2 + selection_noise_multiplier**-2) ** -0.5


def split_noise_multiplier_tf_privacy(
    noise_multiplier: float, budget_fraction: float, tables: int = 1
) -> tuple[float, float]:
    """``(selection sigma_s, gradient sigma)`` as TF Privacy's
    ``sparse_noise_utils.split_noise_multiplier`` derives them from its
    ``sparse_selection_privacy_budget_fraction`` ``f`` and the model's ``sigma``, so
    that a TF Privacy configuration trains with the same noise here. With
    ``r = f / (1 - f)``: ``sigma_s = sqrt(tables) sigma sqrt(1 + r^2)`` and the gradient
    gets ``sigma sqrt(1 + r^2) / r``; the combination is ``sigma`` again (for one table).
    Note what the formula does: the selection's share of ``1 / sigma^2`` is
    ``1 / (1 + r^2)``, so a *small* ``f`` gives the selection *most* of the budget.
    """
    if not 0.0 < budget_fraction < 1.0:
        raise PrivacyError(
            "sparse_selection_privacy_budget_fraction must be strictly between 0 and 1, "
            f"received {budget_fraction!r}."
        )
    ratio = budget_fraction / (1.0 - budget_fraction)
    scale = noise_multiplier * math.sqrt(1.0 + ratio**2)
    return math.sqrt(tables) * scale, scale / ratio


class SparseRows(NamedTuple):
    """A table's share of the clipped sum, by row: ``values[i]`` is the clipped sum of
    row ``ids[i]`` and ``counts[i]`` its contribution count ``n_v``. Unused slots have id
    ``-1`` and zero values and counts; an id may repeat (chunks, pieces) until
    :func:`coalesce`."""

    ids: Any
    values: Any
    counts: Any


def contribution_weights(distinct_rows: Any, real_units: Any, bound: float) -> Any:
    """``[U]``: ``w_u = min(1, c0 / sqrt(|T_u|))`` for real units (0 for padding units),
    so a unit's contribution vector has L2 norm ``<= c0`` and adds at most 1 per row."""
    k = ops.maximum(ops.cast(distinct_rows, "float32"), 1.0)
    weights = ops.minimum(1.0, bound / ops.sqrt(k))
    return weights * ops.cast(real_units, "float32")


def concat_rows(parts: list[SparseRows]) -> SparseRows:
    """The rows of several batches or chunks together (ids may repeat)."""
    return SparseRows(*(ops.concatenate(list(t), axis=0) for t in zip(*parts, strict=True)))


def coalesce_counts(
    rows: SparseRows, segment_sum: Any, argsort: Any = ops.argsort, in_order: bool = False
) -> tuple[Any, Any, Any, Any]:
    """:func:`coalesce` without summing the values: ``(ids, counts, slot_values,
    segment)``, the merged ids and counts (``len(ids)`` slots, sorted ids first, unused
    slots ``-1`` last), the slots' values in id order, and each of those slots' merged
    slot (nondecreasing). :func:`selected_values` then sums the values of the selected
    rows only.

    ``segment_sum(data, segments, slots)`` sums ``data`` by its (sorted, nondecreasing)
    ``segments`` into ``slots`` rows; ``argsort`` sorts the ids. With ``in_order`` the
    caller has checked that the ids are already sorted with any unused slots last (the
    Embedding rule's rows from one pass come so: its segments are sorted by
    ``(id, unit)``), and they are not sorted again; rows out of order would keep equal
    ids in separate slots."""
    ids = ops.cast(rows.ids, "int32")
    slots = ids.shape[0] if ids.shape[0] is not None else ops.shape(ids)[0]
    big = ops.where(ids < 0, ops.cast(2**31 - 1, "int32"), ids)
    sorted_ids, values, counts = big, rows.values, rows.counts
    if not in_order:
        order = argsort(big)
        sorted_ids = ops.take(big, order)
        values = ops.take(rows.values, order, axis=0)
        counts = ops.take(rows.counts, order)
    first = ops.concatenate(
        [ops.ones((1,), "bool"), ops.not_equal(sorted_ids[1:], sorted_ids[:-1])]
    )
    segment = ops.cumsum(ops.cast(first, "int32")) - 1
    counts = segment_sum(counts, segment, slots)
    # Each segment's id from its first slot (int32 sums: exact for any table size).
    leader = ops.logical_and(first, sorted_ids < 2**31 - 1)
    merged = segment_sum(ops.where(leader, sorted_ids + 1, 0), segment, slots) - 1
    return merged, counts, values, segment


def coalesce(
    rows: SparseRows, segment_sum: Any, argsort: Any = ops.argsort, in_order: bool = False
) -> SparseRows:
    """The same rows with every id once (values and counts of equal ids summed), in
    ``len(ids)`` slots, sorted ids first and unused slots (id ``-1``) last (arguments as
    for :func:`coalesce_counts`)."""
    ids, counts, values, segment = coalesce_counts(rows, segment_sum, argsort, in_order)
    slots = ids.shape[0] if ids.shape[0] is not None else ops.shape(ids)[0]
    return SparseRows(ids, segment_sum(values, segment, slots), counts)


def selected_values(
    slot_values: Any, segment: Any, selected: Any, compress: Any, segment_sum: Any
) -> Any:
    """``[S', dim]``: the summed values of the selected merged slots (``selected``:
    ``[slots]`` bool over :func:`coalesce_counts`'s merged slots), in slot order, from
    only the slots of selected rows (backends with dynamic shapes: ``compress(x, mask)``
    keeps the entries of ``x`` where ``mask`` holds, ``segment_sum(data, segments)`` sums
    by sorted segments ``0..S'-1``). The same sums as :func:`coalesce`'s values at the
    selected slots, without summing the rows that no update uses."""
    keep = ops.take(selected, segment)
    rank = ops.cumsum(ops.cast(selected, "int32")) - 1
    return segment_sum(compress(slot_values, keep), ops.take(rank, compress(segment, keep)))


def in_id_order(ids: Any) -> Any:
    """``[]`` bool: whether ``ids`` are sorted ascending with any unused slots (id
    ``-1``) last, as :func:`coalesce` with ``in_order`` requires."""
    big = ops.where(ids < 0, ops.cast(2**31 - 1, ids.dtype), ids)
    return ops.all(big[1:] >= big[:-1])


def touched_selection(rows: SparseRows, config: SparsityPreserving, normals: Any) -> Any:
    """``[S]`` bool: the (coalesced) touched rows whose noisy count exceeds the
    threshold; ``normals`` are ``[S]`` standard normals (one per slot)."""
    noisy = ops.cast(rows.counts, "float32") + config.selection_stddev * normals
    return ops.logical_and(rows.ids >= 0, noisy > config.threshold)


def false_positive_mask(
    rows: SparseRows, config: SparsityPreserving, uniforms: Any, vocabulary: int
) -> Any:
    """``[V]`` bool: the rows no unit touched that are selected, each independently with
    probability ``p`` (``uniforms``: ``[V]`` U[0, 1) numbers; a touched row's own noisy
    count decides for it instead). A boolean per row, never a per-row Gaussian."""
    chosen = uniforms < config.false_positive_probability
    safe = ops.where(rows.ids >= 0, rows.ids, vocabulary)
    padded = ops.concatenate([chosen, ops.zeros((1,), "bool")])
    updates = ops.zeros(ops.shape(safe), "bool")
    padded = ops.scatter_update(padded, ops.expand_dims(safe, -1), updates)
    return padded[:vocabulary]


def false_positive_ids(
    ids: Any, config: SparsityPreserving, uniforms: Any, vocabulary: int, compress: Any
) -> Any:
    """The ids (ascending) of the rows no unit touched that are selected, each with
    probability ``p`` (``uniforms``: ``[V]`` U[0, 1) numbers), as
    :func:`false_positive_mask` selects them, for backends with dynamic shapes
    (``compress(x, mask)`` keeps the entries of ``x`` where ``mask`` holds). ``ids`` are
    coalesced (sorted, unused slots ``-1`` last): the few rows with ``u_v < p`` are looked
    up in them, instead of building a table-sized mask of the touched rows."""
    chosen = compress(
        ops.arange(vocabulary, dtype="int32"), uniforms < config.false_positive_probability
    )
    ids = ops.cast(ids, "int32")
    touched = ops.concatenate(
        [ops.where(ids >= 0, ids, vocabulary), ops.full((1,), vocabulary, "int32")]
    )
    at = ops.take(touched, ops.searchsorted(touched, chosen))
    return compress(chosen, ops.not_equal(at, chosen))


__all__ = [
    "SparseRows",
    "SparsityPreserving",
    "coalesce",
    "coalesce_counts",
    "combined_noise_multiplier",
    "concat_rows",
    "contribution_weights",
    "false_positive_capacity",
    "false_positive_ids",
    "false_positive_mask",
    "in_id_order",
    "per_table",
    "selected_values",
    "sparse_tables",
    "split_noise_multiplier_tf_privacy",
    "touched_selection",
]


def sparse_tables(config: Any, grad_sum: list) -> list[int]:
    """The positions of the tables in an engine's clipped sum that come by row; raises
    if sparsity-preserving DP-SGD was asked for and no table came by row (the vectorized
    engine trains the model, or it has no Embedding with the fast rule): training
    would otherwise silently be plain DP-SGD with a different privacy account."""
    tables = [i for i, g in enumerate(grad_sum) if isinstance(g, SparseRows)]
    if config.sparsity_preserving is not None and not tables:
        raise PrivacyError(
            "sparsity_preserving is set, but no embedding table of this model is handled "
            "by the fast engine's Embedding rule (the model has no keras.layers.Embedding, "
            "or it is trained by the vectorized engine: engine='vectorized', or the fast "
            "engine could not be exact for it; engine='fast' says why). Remove "
            "sparsity_preserving or make the model trainable by the fast engine."
        )
    return tables


def false_positive_capacity(vocabulary: int, probability: float, log_tail: float = -92.1) -> int:
    """A static bound ``k`` on the false positives of one update, for backends with
    static shapes (JAX): their number is Binomial(V, p) and data-independent, and
    ``P(Binomial(V, p) >= k) <= exp(log_tail)`` (default ``1e-40``) by the Chernoff
    bound ``exp(-V KL(k/V || p))``.

    What the cap costs: beyond ``k`` false positives the JAX step noises only the first
    ``k`` (in id order) and leaves the others unselected. That step equals the exact
    mechanism except on an event of probability ``eta <= 1e-40`` that does not depend on
    the data, so ``T`` updates that are ``(eps, delta)``-DP exactly are
    ``(eps, delta + (1 + e^eps) T eta)``-DP as run: for ``T = 1e9`` and ``eps = 10``,
    ``2e-27``, below the float64 resolution of any ``delta >= 1e-10`` the accountant
    reports. TensorFlow and PyTorch have no cap (dynamic shapes)."""
    if probability <= 0:
        return 1
    if probability >= 1:
        return vocabulary

    def log_bound(k: int) -> float:
        a = k / vocabulary
        if a >= 1:
            return vocabulary * math.log(probability)
        kl = a * math.log(a / probability) + (1 - a) * math.log((1 - a) / (1 - probability))
        return -vocabulary * kl

    low, high = max(1, math.ceil(vocabulary * probability)), vocabulary
    if log_bound(high) > log_tail:
        return vocabulary
    while low < high:
        mid = (low + high) // 2
        if log_bound(mid) <= log_tail:
            high = mid
        else:
            low = mid + 1
    return max(1, min(vocabulary, low))
