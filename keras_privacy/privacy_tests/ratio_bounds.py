"""Lower confidence bounds on ratios of binomial proportions, and the ε bounds they give.

Notation. An attack flags an example as a member when its score passes a threshold. Out of
``n1`` positives (members) it flags ``x1`` (true positives), out of ``n2`` negatives
(non-members) ``x2`` (false positives): p1 = x1 / n1 is the TPR, p2 = x2 / n2 the FPR,
q = 1 − p. :class:`RatioBound` computes, for each pair of counts, a one-sided lower
confidence bound L on the ratio p1 / p2 at level ``alpha``: P[p1 / p2 ≥ L] ≥ 1 − alpha
(exactly or conservatively for Clopper–Pearson, approximately for the others). With
z = Φ⁻¹(1 − alpha) > 0, the methods (:class:`BoundMethod`) are the ones compared by Aho &
Bowyer (2015, doi:10.1111/2041-210X.12304):

* ``KATZ_LOG`` (Katz et al. 1978): L = (p1/p2) · exp(−z · sqrt(q1/x1 + q2/x2)).
* ``ADJUSTED_LOG`` (Walters 1979): with every count and size increased by ½,
  L = exp(log(p1'/p2') − z · sqrt(1/x1' − 1/n1' + 1/x2' − 1/n2')).
* ``BAILEY`` (Bailey 1987), a cube-root transform:
  L = (p1/p2) · [(1 − (z/3)·sqrt(q1/x1 + q2/x2 − z²q1q2/(9x1x2))) / (1 − z²q2/(9x2))]³.
* ``INV_SINH`` (Newcombe 2001): L = (p1/p2) · exp(−2 · asinh((z/2) ·
  sqrt(1/x1 − 1/n1 + 1/x2 − 1/n2))).
* ``CLOPPER_PEARSON`` (as in Jagielski et al. 2020, arXiv:2006.07709): the exact
  Clopper–Pearson lower bound of p1 divided by the exact upper bound of p2, each one-sided
  at level alpha/2, so that both hold together with probability ≥ 1 − alpha (union bound):
  lower(x, n) is the alpha/2 quantile of Beta(x, n − x + 1), upper(x, n) the 1 − alpha/2
  quantile of Beta(x + 1, n − x).

Zeros and undefined ratios (TF Privacy's conventions, so that results agree with its):

* No true positives (x1 = 0): L = 0 for all methods except ``ADJUSTED_LOG``, whose ½
  correction gives a positive bound unless x2 = 0 as well (then L = 0).
* No false positives (x2 = 0): ``KATZ_LOG`` and ``BAILEY`` use x2 = ½, ``INV_SINH`` uses
  x2 = z²; ``ADJUSTED_LOG`` needs nothing; ``CLOPPER_PEARSON``'s upper bound of p2 is then
  1 − (alpha/2)^(1/n2) > 0.
* Both counts at their maximum (x1 = n1 and x2 = n2): ``KATZ_LOG``, ``ADJUSTED_LOG`` and
  ``INV_SINH`` use n − ½ for both. ``BAILEY`` uses n − ½ for either count at its maximum.
* ``CLOPPER_PEARSON`` gives 0 when the lower bound of p1 is 0 (x1 = 0) or the upper bound of
  p2 is 1 (x2 = n2).
* Where a formula is still undefined (NaN, e.g. a negative square root in ``BAILEY`` for
  tiny counts), the bound is 0: no evidence.

ε from the ratios (:class:`EpsilonLowerBound`). If a mechanism is ε-DP (pure, δ = 0), every
test of its outputs on neighbouring datasets has TPR ≤ e^ε · FPR and TNR ≤ e^ε · FNR, so
ε ≥ log(TPR/FPR) and ε ≥ log(TNR/FNR). For each threshold, log L of those two ratios is a
lower confidence bound on ε at level alpha; with ``two_sided_threshold`` the reversed tests
(flag the examples *below* the threshold) add log L of FPR/TPR and FNR/TNR. These are
bounds for δ = 0 only: under (ε, δ)-DP with δ > 0 they do not bound ε.

Which function to use. :class:`EpsilonLowerBound` is TF Privacy's tool: it returns one bound
per threshold and ratio, each valid at level alpha *for a threshold fixed in advance*. Its
largest value, picked after scanning many thresholds on the same scores, is **not** a valid
bound at level alpha: with m ratios scanned (2 or 4 per threshold), pass alpha / m
(Bonferroni) to keep the top value valid, or choose the threshold on other data.
:func:`keras_privacy.privacy_tests.compute_epsilon_lower_bound` gives one (ε, δ) bound whose
confidence already accounts for the choice of threshold (a held-out split, or a union bound
over all cut points), and handles δ > 0: use it for a reported number, and this module to
compare methods or reproduce TF Privacy's figures. Both treat the scores as independent
draws; for one model scored on many members and non-members the result is an indication of
leakage, not a certified bound.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from keras_privacy.privacy_tests._arrays import one_dimensional_values
from keras_privacy.privacy_tests.metrics import clopper_pearson_upper

__all__ = [
    "BoundMethod",
    "EpsilonLowerBound",
    "RatioBound",
    "counts_at_thresholds",
    "ratio_lower_bound",
]

ArrayLike = np.ndarray | Sequence[float] | float


class BoundMethod(enum.Enum):
    """A lower confidence bound for a ratio of two binomial proportions (see the module)."""

    KATZ_LOG = "katz-log"
    ADJUSTED_LOG = "adjusted-log"
    BAILEY = "bailey"
    INV_SINH = "inv-sinh"
    CLOPPER_PEARSON = "clopper-pearson"


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 0.5:
        raise ValueError(
            f"alpha must be in (0, 0.5) (a one-sided level, e.g. 0.05), received {alpha}"
        )
    return alpha


def _check_size(name: str, size: float) -> float:
    value = float(size)
    if not (np.isfinite(value) and value > 0 and value == round(value)):
        raise ValueError(f"{name} must be a positive whole number, received {size!r}")
    return value


def _check_counts(name: str, counts: ArrayLike, size: float, size_name: str) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(array < 0) or np.any(array > size):
        raise ValueError(f"{name} must lie in [0, {size_name}] = [0, {size:g}]")
    return array


# Each bound takes float arrays x1, x2 (same shape), sizes n1, n2 and z = Φ⁻¹(1 − alpha) > 0.
def _joint_maximum_shrunk(
    x1: np.ndarray, n1: float, x2: np.ndarray, n2: float
) -> tuple[np.ndarray, np.ndarray]:
    at_max = (x1 == n1) & (x2 == n2)
    return np.where(at_max, n1 - 0.5, x1), np.where(at_max, n2 - 0.5, x2)


def _katz_log(x1: np.ndarray, n1: float, x2: np.ndarray, n2: float, z: float) -> np.ndarray:
    x1, x2 = _joint_maximum_shrunk(x1, n1, x2, n2)
    x2 = np.where(x2 == 0, 0.5, x2)
    p1, p2 = x1 / n1, x2 / n2
    spread = np.sqrt((1 - p1) / x1 + (1 - p2) / x2)
    return np.where(x1 == 0, 0.0, p1 / p2 * np.exp(-z * spread))


def _adjusted_log(x1: np.ndarray, n1: float, x2: np.ndarray, n2: float, z: float) -> np.ndarray:
    x1, x2 = _joint_maximum_shrunk(x1, n1, x2, n2)
    a1, a2, m1, m2 = x1 + 0.5, x2 + 0.5, n1 + 0.5, n2 + 0.5
    log_ratio = np.log(a1 / m1) - np.log(a2 / m2)
    spread = np.sqrt(1 / a1 - 1 / m1 + 1 / a2 - 1 / m2)
    return np.where((x1 == 0) & (x2 == 0), 0.0, np.exp(log_ratio - z * spread))


def _bailey(x1: np.ndarray, n1: float, x2: np.ndarray, n2: float, z: float) -> np.ndarray:
    x1 = np.where(x1 == n1, n1 - 0.5, x1)
    x2 = np.where(x2 == n2, n2 - 0.5, x2)
    x2 = np.where(x2 == 0, 0.5, x2)
    p1, p2 = x1 / n1, x2 / n2
    q1, q2 = 1 - p1, 1 - p2
    root = np.sqrt(q1 / x1 + q2 / x2 - z**2 * q1 * q2 / (9 * x1 * x2))
    cube = ((1 - z / 3 * root) / (1 - z**2 * q2 / (9 * x2))) ** 3
    return np.where(x1 == 0, 0.0, p1 / p2 * cube)


def _inv_sinh(x1: np.ndarray, n1: float, x2: np.ndarray, n2: float, z: float) -> np.ndarray:
    x1, x2 = _joint_maximum_shrunk(x1, n1, x2, n2)
    x2 = np.where(x2 == 0, z**2, x2)
    spread = np.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    ratio = (x1 / n1) / (x2 / n2)
    return np.where(x1 == 0, 0.0, ratio * np.exp(-2 * np.arcsinh(z / 2 * spread)))


def _clopper_pearson(
    x1: np.ndarray, n1: float, x2: np.ndarray, n2: float, alpha: float
) -> np.ndarray:
    half = alpha / 2
    p1_low = np.where(x1 == 0, 0.0, stats.beta.ppf(half, np.maximum(x1, 1e-300), n1 - x1 + 1))
    p2_high = clopper_pearson_upper(x2, n2, 1 - half)
    return np.where((p1_low <= 0) | (p2_high >= 1), 0.0, p1_low / p2_high)


_FORMULAS: dict[BoundMethod, Callable[..., np.ndarray]] = {
    BoundMethod.KATZ_LOG: _katz_log,
    BoundMethod.ADJUSTED_LOG: _adjusted_log,
    BoundMethod.BAILEY: _bailey,
    BoundMethod.INV_SINH: _inv_sinh,
}


def _as_method(method: BoundMethod | str) -> BoundMethod:
    if isinstance(method, BoundMethod):
        return method
    try:
        return BoundMethod(method)
    except ValueError:
        known = ", ".join(m.value for m in BoundMethod)
        raise ValueError(f"unknown bound method {method!r}; known: {known}") from None


def ratio_lower_bound(
    x1: ArrayLike,
    n1: float,
    x2: ArrayLike,
    n2: float,
    alpha: float,
    method: BoundMethod | str = BoundMethod.KATZ_LOG,
) -> np.ndarray:
    """Lower confidence bound at level ``alpha`` on (x1/n1) / (x2/n2), elementwise.

    ``x1`` and ``x2`` are counts of the same shape (each within [0, its size]); the result has
    that shape (0-d for scalars). ``method`` is a :class:`BoundMethod` or its value
    (``"katz-log"``, ...). Formulas and the handling of zeros: see the module docstring.

    Raises:
      ValueError: alpha outside (0, 0.5), a size that is not a positive whole number,
        counts that are negative, above their size, non-finite or of different shapes, or an
        unknown method.
    """
    alpha = _check_alpha(alpha)
    method = _as_method(method)
    n1, n2 = _check_size("n1", n1), _check_size("n2", n2)
    x1_array = _check_counts("x1", x1, n1, "n1")
    x2_array = _check_counts("x2", x2, n2, "n2")
    if x1_array.shape != x2_array.shape:
        raise ValueError(
            f"x1 and x2 must have the same shape, received {x1_array.shape} and {x2_array.shape}"
        )
    z = float(stats.norm.isf(alpha))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if method is BoundMethod.CLOPPER_PEARSON:
            bound = _clopper_pearson(x1_array, n1, x2_array, n2, alpha)
        else:
            bound = _FORMULAS[method](x1_array, n1, x2_array, n2, z)
    return np.where(np.isnan(bound), 0.0, bound)


class RatioBound:
    """Lower confidence bounds on TPR / FPR = (tp / pos_size) / (fp / neg_size).

    TF Privacy's interface to :func:`ratio_lower_bound`: give the counts once, then ask for
    one method (:meth:`compute_bound`) or several (:meth:`compute_bounds`). ``tp`` and ``fp``
    are counts of the same shape (scalars give a float back, arrays an array).

    Example::

        rb = RatioBound(tp=[100, 90], fp=[10, 5], pos_size=110, neg_size=80, alpha=0.05)
        rb.compute_bound(BoundMethod.KATZ_LOG)   # array of 2 lower bounds on TPR / FPR

    Raises:
      ValueError: as :func:`ratio_lower_bound` (alpha outside (0, 0.5), counts outside
        [0, size], mismatched shapes, sizes that are not positive whole numbers).
    """

    def __init__(
        self,
        tp: ArrayLike,
        fp: ArrayLike,
        pos_size: int,
        neg_size: int,
        alpha: float,
    ) -> None:
        self._alpha = _check_alpha(alpha)
        self._pos_size = _check_size("pos_size", pos_size)
        self._neg_size = _check_size("neg_size", neg_size)
        self._tp = _check_counts("tp", tp, self._pos_size, "pos_size")
        self._fp = _check_counts("fp", fp, self._neg_size, "neg_size")
        if self._tp.shape != self._fp.shape:
            raise ValueError(
                "tp and fp must have the same shape, received "
                f"{self._tp.shape} and {self._fp.shape}"
            )
        self.available_methods: Mapping[BoundMethod, Callable[[], float | np.ndarray]] = (
            types.MappingProxyType({method: self._bound_function(method) for method in BoundMethod})
        )

    def _bound_function(self, method: BoundMethod) -> Callable[[], float | np.ndarray]:
        return lambda: self.compute_bound(method)

    def compute_bound(self, method: BoundMethod | str) -> float | np.ndarray:
        """The lower bounds of TPR / FPR with ``method``: a float for scalar counts."""
        bound = ratio_lower_bound(
            self._tp, self._pos_size, self._fp, self._neg_size, self._alpha, method
        )
        return float(bound) if bound.ndim == 0 else bound

    def compute_bounds(
        self, methods: Iterable[BoundMethod | str] | None = None
    ) -> dict[BoundMethod, float | np.ndarray]:
        """``{method: compute_bound(method)}`` for ``methods`` (default: every method)."""
        chosen = list(BoundMethod) if methods is None else [_as_method(m) for m in methods]
        return {method: self.compute_bound(method) for method in chosen}


def counts_at_thresholds(
    pos_scores: ArrayLike,
    neg_scores: ArrayLike,
    thresholds: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive counts of "positive iff score passes a threshold".

    With ``thresholds`` given, an example passes threshold t when its score is strictly
    greater than t; the counts come in the order of ``thresholds``. Without, every distinct
    score s is a threshold, passed by scores ≥ s, in decreasing order of s (so the last entry
    flags everybody). Returns ``(tp, fp)`` as integer arrays.

    Raises:
      ValueError: scores that are not one-dimensional, empty or contain NaN; thresholds that
        are not one-dimensional or contain NaN.
    """
    pos = np.sort(one_dimensional_values("pos_scores", pos_scores))
    neg = np.sort(one_dimensional_values("neg_scores", neg_scores))
    if thresholds is None:
        cuts = np.unique(np.concatenate([pos, neg]))[::-1]
        side = "left"
    else:
        cuts = np.asarray(thresholds, dtype=np.float64)
        if cuts.ndim != 1 or np.any(np.isnan(cuts)):
            raise ValueError("thresholds must be a one-dimensional array without NaN")
        side = "right"
    tp = pos.size - np.searchsorted(pos, cuts, side=side)
    fp = neg.size - np.searchsorted(neg, cuts, side=side)
    return tp.astype(np.int64), fp.astype(np.int64)


class EpsilonLowerBound:
    """Pure-ε lower bounds, one per threshold and ratio, from attack scores.

    For each threshold (``thresholds``, or every distinct score; see
    :func:`counts_at_thresholds`) the counts tp, fp, tn, fn give lower confidence bounds at
    level ``alpha`` on TPR/FPR and TNR/FNR, and with ``two_sided_threshold`` (default) also
    on FPR/TPR and FNR/TNR. The log of each positive ratio bound is a lower bound on ε for
    ε-DP (δ = 0); ratio bounds of 0 (no evidence) are dropped.

    Each value holds at level alpha for its own, fixed, threshold; the largest of them does
    not, without a correction for the number of thresholds scanned (see the module
    docstring). Negative values are returned as they are (they show no leakage).

    Example::

        lb = EpsilonLowerBound(member_scores, nonmember_scores, alpha=0.05)
        lb.compute_epsilon_lower_bound(BoundMethod.CLOPPER_PEARSON, k=5)  # 5 largest

    Raises:
      ValueError: scores that are not one-dimensional, empty or contain NaN; alpha outside
        (0, 0.5); thresholds that are not one-dimensional or contain NaN.
    """

    def __init__(
        self,
        pos_scores: ArrayLike,
        neg_scores: ArrayLike,
        alpha: float,
        two_sided_threshold: bool = True,
        thresholds: ArrayLike | None = None,
    ) -> None:
        alpha = _check_alpha(alpha)
        pos = one_dimensional_values("pos_scores", pos_scores)
        neg = one_dimensional_values("neg_scores", neg_scores)
        tp, fp = counts_at_thresholds(pos, neg, thresholds)
        fn, tn = pos.size - tp, neg.size - fp
        self._ratios = [
            RatioBound(tp, fp, pos.size, neg.size, alpha),  # TPR / FPR
            RatioBound(tn, fn, neg.size, pos.size, alpha),  # TNR / FNR
        ]
        if two_sided_threshold:
            self._ratios += [
                RatioBound(fp, tp, neg.size, pos.size, alpha),  # FPR / TPR
                RatioBound(fn, tn, pos.size, neg.size, alpha),  # FNR / TNR
            ]

    def compute_epsilon_lower_bound(
        self, method: BoundMethod | str, k: int | None = None
    ) -> np.ndarray:
        """log of every positive ratio bound, largest first; only the ``k`` largest if given.

        Raises:
          ValueError: an unknown method, or ``k`` that is not a positive integer.
        """
        method = _as_method(method)
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"k must be a positive integer or None, received {k!r}")
        ratios = np.concatenate([np.ravel(ratio.compute_bound(method)) for ratio in self._ratios])
        epsilons = -np.sort(-np.log(ratios[ratios > 0]))
        return epsilons if k is None else epsilons[: int(k)]

    def compute_epsilon_lower_bounds(
        self, methods: Iterable[BoundMethod | str] | None = None, k: int | None = None
    ) -> dict[BoundMethod, np.ndarray]:
        """``{method: compute_epsilon_lower_bound(method, k)}`` (default: every method)."""
        chosen = list(BoundMethod) if methods is None else [_as_method(m) for m in methods]
        return {method: self.compute_epsilon_lower_bound(method, k) for method in chosen}
