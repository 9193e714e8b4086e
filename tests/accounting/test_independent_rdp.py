"""The Poisson-subsampled Gaussian's epsilon against a computation written here.

Nothing below calls dp_accounting. The reference is Mironov, Talwar & Zhang (2019),
"Renyi Differential Privacy of the Sampled Gaussian Mechanism": with
``mu0 = N(0, sigma^2)`` and ``mu = (1 - q) N(0, sigma^2) + q N(1, sigma^2)``, one step has
RDP ``log(A_alpha) / (alpha - 1)`` at order alpha, where

* ``A_alpha = E_{z ~ mu0}[(mu(z) / mu0(z))^alpha]`` (any real alpha > 1), and
* for integer alpha,
  ``A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2))``.

RDP composes additively over steps and is converted to (epsilon, delta) with the improved
conversion ``eps = rdp - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha)``
(Canonne, Kamath & Steinke 2020, Prop. 12; Asoodeh et al. 2020): the one dp_accounting's
``rdp.compute_epsilon`` uses, minimised over its orders (which include every integer in
2..63 and 128, 256, 512, 1024, plus fractional orders 1.1..10.9).

The project's RDP epsilon is checked two ways:

* **matched**: the same conversion over exactly the project's order set (dp_accounting's
  default orders, written out below), with ``A_alpha`` from the integral at every order;
  equal to the project's value to 1e-4 (dp_accounting's fractional-order series lands up
  to ~1e-5 above the quadrature, never below);
* **bracketed**, without relying on the order set: no larger than the minimum over the
  integer orders 2..63, 128..1024 (which the project's set contains; more orders can only
  lower the minimum), and no smaller than the minimum over real orders on a 0.01 grid
  around the optimum (finer than any order set, so nothing the project reports can be
  lower).

The two formulas for ``A_alpha`` are cross-checked against each other at integer orders.
:func:`test_plausible_accounting_bugs_are_rejected` shows that epsilons computed from
slightly wrong inputs (q, sigma, steps, delta) fail the check. PLD epsilons are checked
against the RDP upper bound, the exact one-step epsilon (hockey-stick divergence by
quadrature) and, without subsampling, the exact Gaussian epsilon (Balle & Wang 2018).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

from keras_privacy import accounting
from keras_privacy.training.record import TrainingRecord, TrainingSegment

#: dp_accounting's default RDP orders (``rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS``),
#: which the project's ``"rdp"`` accountant uses, written out here.
PROJECT_ORDERS = (*(1 + x / 10 for x in range(1, 100)), *range(11, 64), 128, 256, 512, 1024)
#: The integer orders among them (the upper bound of the bracket uses these).
INTEGER_ORDERS = (*range(2, 64), 128, 256, 512, 1024)
#: dp_accounting evaluates fractional orders by a truncated series, which we see land up
#: to ~1e-5 above the quadrature (never below it); this is the tolerance on that side.
SERIES = 1e-4
#: Orders searched for the integer optimum that centres the fine real-order grid.
SEARCH_ORDERS = tuple(range(2, 1025))
#: Half-width (in orders) and step of the real-order grid of the lower bound.
WINDOW, GRID_STEP = 3, 0.01
#: Relative slack for floating point only (the two formulas agree to ~1e-12).
FP = 1e-9


# -- the independent computation -----------------------------------------------------------


def log_a_binomial(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha >= 2: the binomial sum, in log space (float64)."""
    k = np.arange(alpha + 1, dtype=np.float64)
    log_terms = (k * k - k) / (2.0 * sigma**2)
    if q < 1.0:
        log_binomial = gammaln(alpha + 1.0) - gammaln(k + 1.0) - gammaln(alpha - k + 1.0)
        log_terms = log_terms + log_binomial + (alpha - k) * math.log1p(-q) + k * math.log(q)
    else:  # only k = alpha survives: A = exp((alpha^2 - alpha) / (2 sigma^2))
        log_terms = np.where(k == alpha, log_terms, -np.inf)
    return float(logsumexp(log_terms))


def log_a_integral(q: float, sigma: float, alpha: float) -> float:
    """log E_{z~mu0}[(mu(z)/mu0(z))^alpha] for real alpha > 1, by quadrature in log space.

    The integrand has its modes near z = 0 and z = alpha and Gaussian tails of width sigma;
    a Riemann sum with step sigma/40 over [-20 sigma, alpha + 20 sigma] is exact to
    ~1e-12 for such smooth, rapidly decaying integrands.
    """
    z = np.arange(-20.0 * sigma, alpha + 20.0 * sigma, sigma / 40.0)
    log_mu0 = -z * z / (2.0 * sigma**2) - math.log(sigma * math.sqrt(2.0 * math.pi))
    log_ratio = (2.0 * z - 1.0) / (2.0 * sigma**2)  # log(N(1, s^2)(z) / N(0, s^2)(z))
    if q < 1.0:
        log_ratio = np.logaddexp(math.log1p(-q), math.log(q) + log_ratio)
    return float(logsumexp(log_mu0 + alpha * log_ratio) + math.log(z[1] - z[0]))


def rdp_to_epsilon(total_rdp: float, alpha: float, delta: float) -> float:
    """The improved RDP -> (epsilon, delta) conversion at one order."""
    return (
        total_rdp
        - (math.log(delta) + math.log(alpha)) / (alpha - 1.0)
        + math.log((alpha - 1.0) / alpha)
    )


#: A mechanism: a list of (q, sigma, steps) parts composed one after the other.
Parts = list[tuple[float, float, int]]


def _total_rdp(parts: Parts, alpha: float, log_a) -> float:
    return sum(steps * log_a(q, sigma, alpha) for q, sigma, steps in parts) / (alpha - 1.0)


def epsilon_upper(parts: Parts, delta: float, orders=INTEGER_ORDERS) -> float:
    """Epsilon at the best integer order of ``orders``, from the binomial sum."""
    return max(
        0.0, min(rdp_to_epsilon(_total_rdp(parts, a, log_a_binomial), a, delta) for a in orders)
    )


def epsilon_lower(parts: Parts, delta: float) -> float:
    """Epsilon at the best real order on a fine grid around the optimum, from the integral."""
    by_order = [
        rdp_to_epsilon(_total_rdp(parts, a, log_a_binomial), a, delta) for a in SEARCH_ORDERS
    ]
    best = SEARCH_ORDERS[int(np.argmin(by_order))]
    start = max(1.01, best - WINDOW)
    grid = np.round(np.arange(start, best + WINDOW + GRID_STEP / 2, GRID_STEP), 2)
    return max(
        0.0,
        min(rdp_to_epsilon(_total_rdp(parts, float(a), log_a_integral), a, delta) for a in grid),
    )


def epsilon_same_orders(parts: Parts, delta: float) -> float:
    """Epsilon over exactly the project's order set, from the integral (any real order)."""
    return max(
        0.0,
        min(
            rdp_to_epsilon(_total_rdp(parts, float(a), log_a_integral), a, delta)
            for a in PROJECT_ORDERS
        ),
    )


def matches(value: float, parts: Parts, delta: float) -> bool:
    """``value`` is the epsilon over the project's own orders (to series accuracy)."""
    expected = epsilon_same_orders(parts, delta)
    return expected * (1 - FP) <= value <= expected * (1 + SERIES)


def bracket(parts: Parts, delta: float) -> tuple[float, float]:
    return epsilon_lower(parts, delta), epsilon_upper(parts, delta)


def within(value: float, lower_upper: tuple[float, float]) -> bool:
    lower, upper = lower_upper
    return lower * (1 - FP) <= value <= upper * (1 + FP)


# -- the cases ------------------------------------------------------------------------------

#: (N, B, sigma, steps, delta, same_orders); q = B / N; the project's RDP epsilon noted.
#: ``same_orders=False``: dp_accounting's fractional-order series does not converge for
#: q = 0.3 at orders 1.1..1.8 and drops them (it logs a warning), so its value is only
#: bracketed, not matched order for order (it is 0.2% above the full-order-set value).
CASES = [
    pytest.param(60000, 256, 1.1, 10000, 1e-5, True, id="q0.0043-s1.1-T10000"),  # 2.1616
    pytest.param(60000, 256, 1.1, 2000, 1e-5, True, id="q0.0043-s1.1-T2000"),  # 1.0452
    pytest.param(1000, 10, 2.0, 500, 1e-5, True, id="q0.01-s2-T500"),  # 0.4792, order 31
    pytest.param(10000, 100, 0.8, 300, 1e-6, True, id="q0.01-s0.8-T300"),  # 3.1596, order 5
    pytest.param(64, 8, 2.0, 10, 1e-3, True, id="q0.125-s2-T10"),  # 0.7182 (callback tests)
    pytest.param(1000, 1, 0.6, 1000, 1e-5, True, id="q0.001-s0.6-T1000"),  # 2.5454
    pytest.param(100, 30, 1.5, 40, 1e-5, False, id="q0.3-s1.5-T40"),  # 7.9402, large q
    pytest.param(500, 500, 5.0, 100, 1e-5, True, id="q1-s5-T100"),  # 10.7255, no sampling
    pytest.param(100, 100, 10.0, 1000, 1e-5, True, id="q1-s10-T1000"),  # 19.0536
]


@pytest.mark.parametrize("q, sigma", [(0.004, 1.1), (0.1, 2.0), (0.3, 0.7), (0.001, 0.6)])
def test_the_two_independent_formulas_for_a_alpha_agree(q, sigma):
    for alpha in (2, 3, 5, 10, 31, 64):
        binomial = log_a_binomial(q, sigma, alpha)
        integral = log_a_integral(q, sigma, alpha)
        assert integral == pytest.approx(binomial, rel=1e-9, abs=1e-15), alpha
    # Power: the sum with a wrong exponent ((k^2 + k) instead of (k^2 - k)) disagrees.
    k = np.arange(11.0)
    wrong = logsumexp(
        gammaln(11.0)
        - gammaln(k + 1)
        - gammaln(11 - k)
        + (10 - k) * math.log1p(-q)
        + k * math.log(q)
        + (k * k + k) / (2 * sigma**2)
    )
    assert wrong != pytest.approx(log_a_integral(q, sigma, 10), rel=1e-6)


def test_without_subsampling_the_sum_is_the_gaussian_rdp():
    """q = 1: A_alpha = exp(alpha (alpha - 1) / (2 sigma^2)), RDP alpha / (2 sigma^2)."""
    for sigma in (0.7, 5.0):
        for alpha in (2, 7, 40):
            rdp = log_a_binomial(1.0, sigma, alpha) / (alpha - 1)
            assert rdp == pytest.approx(alpha / (2 * sigma**2), rel=1e-12)
            rdp = log_a_integral(1.0, sigma, alpha) / (alpha - 1)
            assert rdp == pytest.approx(alpha / (2 * sigma**2), rel=1e-9)


@pytest.mark.parametrize("n, b, sigma, steps, delta, same_orders", CASES)
def test_compute_epsilon_rdp_matches_the_independent_computation(
    n, b, sigma, steps, delta, same_orders
):
    project = accounting.compute_epsilon(n, b, sigma, delta=delta, steps=steps, accountant="rdp")
    parts = [(b / n, sigma, steps)]
    lower, upper = bracket(parts, delta)
    assert within(project, (lower, upper)), (project, lower, upper)
    assert upper <= 1.05 * lower  # the bracket is a few percent wide at most
    if same_orders:
        assert matches(project, parts, delta), (project, epsilon_same_orders(parts, delta))
    if b == n:  # no subsampling: the plain Gaussian RDP composition, alpha T / (2 sigma^2)
        gaussian = min(rdp_to_epsilon(a * steps / (2 * sigma**2), a, delta) for a in PROJECT_ORDERS)
        assert project == pytest.approx(gaussian, rel=1e-12)


def test_epochs_give_ceil_n_over_b_updates_per_epoch():
    n, b, sigma, delta = 1000, 30, 1.2, 1e-5  # 1000 / 30 = 33.3 updates per epoch
    project = accounting.compute_epsilon(n, b, sigma, delta=delta, epochs=3, accountant="rdp")
    assert matches(project, [(b / n, sigma, 100)], delta)  # ceil(3 * 1000 / 30)
    assert not matches(project, [(b / n, sigma, 99)], delta)  # power: an update fewer


def test_microbatching_is_accounted_with_half_the_noise_multiplier():
    n, b, sigma, steps, delta = 10000, 100, 2.0, 500, 1e-5
    project = accounting.compute_epsilon(
        n, b, sigma, delta=delta, steps=steps, accountant="rdp", used_microbatching=True
    )
    assert matches(project, [(b / n, sigma / 2, steps)], delta)
    assert not matches(project, [(b / n, sigma, steps)], delta)


def _poisson_segment(n, b, sigma, updates):
    return TrainingSegment(
        sampling="poisson",
        dataset_size=n,
        expected_batch_size=b,
        noise_multiplier=sigma,
        l2_norm_clip=1.0,
        updates=updates,
    )


def test_epsilon_of_record_composes_segments_additively_in_rdp():
    delta = 1e-5
    one = TrainingRecord([_poisson_segment(60000, 256, 1.1, 3000)])
    parts = [(256 / 60000, 1.1, 3000)]
    project = accounting.epsilon_of_record(one, delta, "rdp")
    assert matches(project, parts, delta) and within(project, bracket(parts, delta))
    # Two fits with different q and sigma: RDP adds order by order, then one conversion.
    two = TrainingRecord(
        [_poisson_segment(60000, 256, 1.1, 3000), _poisson_segment(60000, 1024, 2.0, 400)]
    )
    parts = [(256 / 60000, 1.1, 3000), (1024 / 60000, 2.0, 400)]
    project = accounting.epsilon_of_record(two, delta, "rdp")
    assert matches(project, parts, delta), (project, epsilon_same_orders(parts, delta))
    assert within(project, bracket(parts, delta))
    # Power: adding the two segments' epsilons (a looser composition) is rejected, and so
    # is forgetting either segment.
    added = sum(epsilon_same_orders([part], delta) for part in parts)
    assert not matches(added, parts, delta)
    for kept in parts:
        assert not matches(epsilon_same_orders([kept], delta), parts, delta)


def test_plausible_accounting_bugs_are_rejected():
    """Epsilons computed from slightly wrong inputs (what a bug would hand the accountant)
    fail the comparison with the right inputs, in both directions."""
    n, b, sigma, steps, delta = 10000, 100, 0.8, 300, 1e-6
    parts = [(b / n, sigma, steps)]

    def project(**change):
        args = {"batch_size": b, "noise_multiplier": sigma, "steps": steps, "delta": delta}
        args.update(change)
        return accounting.compute_epsilon(n, accountant="rdp", **args)

    assert matches(project(), parts, delta)
    bugs = {
        "q from the chunk, not the logical batch (B/2)": project(batch_size=b // 2),
        "q counted twice (2B)": project(batch_size=2 * b),
        "one update fewer": project(steps=steps - 1),
        "one update more": project(steps=steps + 1),
        "sigma 1% too large": project(noise_multiplier=sigma * 1.01),
        "sigma halved (microbatching misapplied)": project(noise_multiplier=sigma / 2),
        "no amplification (q = 1)": project(batch_size=n),
        "delta 10x larger": project(delta=10 * delta),
    }
    accepted = {name: eps for name, eps in bugs.items() if matches(eps, parts, delta)}
    assert not accepted, accepted
    # The order-set-agnostic bracket alone rejects every under-report among them.
    lower, _ = bracket(parts, delta)
    for name in ("q from the chunk, not the logical batch (B/2)", "one update fewer"):
        assert bugs[name] < lower * (1 - FP), name
    for name in ("sigma 1% too large", "delta 10x larger"):
        assert bugs[name] < lower * (1 - FP), name


# -- PLD --------------------------------------------------------------------------------------


def _gaussian_delta(epsilon: float, mu: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism with mu = sensitivity / std
    (Balle & Wang 2018, Theorem 8)."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


def _one_step_exact_epsilon(q: float, sigma: float, delta: float) -> float:
    """Exact epsilon of ONE Poisson-subsampled Gaussian step (add or remove), from the
    hockey-stick divergence by quadrature. T steps cannot have a smaller epsilon."""
    z = np.arange(-30 * sigma, 1 + 30 * sigma, sigma / 400)
    h = z[1] - z[0]
    p0 = norm.pdf(z, scale=sigma)
    p1 = (1 - q) * p0 + q * norm.pdf(z, loc=1, scale=sigma)

    def delta_at(epsilon):
        e = math.exp(epsilon)
        return max(np.sum(np.maximum(p1 - e * p0, 0)), np.sum(np.maximum(p0 - e * p1, 0))) * h

    return brentq(lambda e: delta_at(e) - delta, 0.0, 50.0, xtol=1e-10)


def test_pld_is_positive_tighter_than_the_rdp_bound_and_above_one_step():
    n, b, sigma, steps, delta = 1000, 10, 1.0, 100, 1e-5
    q = b / n
    pld = accounting.compute_epsilon(n, b, sigma, delta=delta, steps=steps, accountant="pld")
    rdp_upper = epsilon_upper([(q, sigma, steps)], delta)
    one_step = _one_step_exact_epsilon(q, sigma, delta)
    assert 0 < one_step <= pld <= rdp_upper, (one_step, pld, rdp_upper)  # ~0.20, 0.72, 1.22
    # Power, upper side: the PLD epsilon without amplification (q = 1) is rejected.
    no_amplification = accounting.compute_epsilon(
        n, n, sigma, delta=delta, steps=steps, accountant="pld"
    )
    assert no_amplification > rdp_upper
    # Power, lower side: a record that lost its updates (epsilon 0) fails ``0 < ...``, and
    # a q ten times too small (one update) falls below the exact one-step epsilon.
    record = TrainingRecord([_poisson_segment(n, b, sigma, 0)])
    assert accounting.epsilon_of_record(record, delta, "pld") == 0
    tiny_q = accounting.compute_epsilon(n, 1, sigma, delta=delta, steps=1, accountant="pld")
    assert tiny_q < one_step


def test_pld_without_subsampling_is_the_exact_gaussian():
    """q = 1 (Poisson event) and shuffled passes: T Gaussians of multiplier sigma are one
    Gaussian with mu = sqrt(T) / sigma, whose epsilon is known exactly."""
    n, sigma, steps, delta = 100, 10.0, 100, 1e-5
    exact = brentq(
        lambda e: _gaussian_delta(e, math.sqrt(steps) / sigma) - delta, 0, 100, xtol=1e-13
    )  # ~4.377
    poisson = accounting.compute_epsilon(n, n, sigma, delta=delta, steps=steps)
    shuffle = accounting.compute_epsilon(n, n, sigma, delta=delta, epochs=steps, sampling="shuffle")
    # The PLD is pessimistic (discretization 1e-4): never below exact, and close to it.
    assert exact - 1e-9 <= poisson <= exact + 1e-3, (exact, poisson)
    assert shuffle == pytest.approx(exact, abs=1e-9)
    # Power: one step fewer is ~0.025 smaller, outside the tolerance.
    fewer = accounting.compute_epsilon(n, n, sigma, delta=delta, steps=steps - 1)
    assert not exact - 1e-9 <= fewer <= exact + 1e-3
