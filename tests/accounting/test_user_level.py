"""User-level (max_examples_per_user) epsilon: finite where a sound bound exists.

Every finite value is compared with an independent computation written here: TF Privacy's
RDP group-privacy recipe (Vadhan's lemma, solved with scipy's brentq on dp_accounting's
RDP curve) and the mixture-of-Gaussians PLD built directly from dp_accounting's
``from_mixture_gaussian_mechanism`` with binomial weights computed by hand.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
import pytest
from dp_accounting.pld import privacy_loss_distribution
from scipy import optimize

from keras_privacy import accounting
from keras_privacy.accounting import planning, user_level

# The case TF Privacy answers with RDP: N=1000, B=10, sigma 0.8, 5 epochs, k=5, delta 1e-5.
TFP_CASE = dict(number_of_examples=1000, batch_size=10, noise_multiplier=0.8)


def _rdp_example_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
    )
    return accountant.get_epsilon(delta)


def _reference_rdp_user_epsilon(q: float, sigma: float, steps: int, k: int, delta: float):
    """Solve d (e^{k eps(d)} - 1) / (e^{eps(d)} - 1) = delta for d; return k eps(d)."""

    def gap(log_d: float) -> float:
        eps = _rdp_example_epsilon(q, sigma, steps, math.exp(log_d))
        user_delta = math.exp(log_d) * math.expm1(k * eps) / math.expm1(eps)
        return math.log(user_delta) - math.log(delta)

    log_d = optimize.brentq(gap, math.log(delta) - 150.0, math.log(delta) - 1.0, xtol=1e-12)
    return k * _rdp_example_epsilon(q, sigma, steps, math.exp(log_d)), math.exp(log_d)


@functools.cache
def _reference_mixture_epsilon(q: float, sigma: float, steps: int, k: int, delta: float):
    weights = [math.comb(k, j) * q**j * (1 - q) ** (k - j) for j in range(k + 1)]
    pld = privacy_loss_distribution.from_mixture_gaussian_mechanism(
        standard_deviation=sigma,
        sensitivities=list(range(k + 1)),
        sampling_probs=weights,
        value_discretization_interval=user_level.MIXTURE_PLD_DISCRETIZATION,
    )
    return pld.self_compose(steps).get_epsilon_for_delta(delta)


def test_rdp_user_level_is_finite_where_tf_privacy_is_and_equals_its_formula():
    ours = planning.DpSgdPlan.create(**TFP_CASE, epochs=5, max_examples_per_user=5)
    details = ours.epsilon_details(1e-5, "poisson", "rdp", fallback=False)
    reference, reference_example_delta = _reference_rdp_user_epsilon(0.01, 0.8, 500, 5, 1e-5)
    assert reference == pytest.approx(108.475, abs=1e-3)  # TF Privacy 0.9 prints 108.475
    assert details["epsilon"] == pytest.approx(reference, rel=1e-6)
    assert details["accountant"] == "rdp" and "Vadhan" in details["method"]
    # the answer needs an example-level delta far below delta / k (about 2e-43)
    assert reference_example_delta < 1e-40
    assert details["example_delta"] == pytest.approx(reference_example_delta, rel=1e-3)
    # sound: the example-level delta used meets the user-level delta
    eps, d = details["example_epsilon"], details["example_delta"]
    assert d * math.expm1(5 * eps) / math.expm1(eps) <= 1e-5 * (1 + 1e-12)


def test_pld_user_level_equals_the_mixture_of_gaussians_pld_built_by_hand():
    # a small case (few updates, k = 2) so that building the PLD is quick
    plan = planning.DpSgdPlan.create(1000, 20, 1.0, 1, max_examples_per_user=2)
    details = plan.epsilon_details(1e-5, "poisson", "pld")
    reference = _reference_mixture_epsilon(0.02, 1.0, 50, 2, 1e-5)
    assert math.isfinite(reference)
    assert details["epsilon"] == pytest.approx(reference, rel=1e-9)
    assert details["accountant"] == "pld" and "Ganesh" in details["method"]
    example = accounting.compute_epsilon(1000, 20, 1.0, delta=1e-5, epochs=1)
    assert example < details["epsilon"] < 2 * example + 1.0


@pytest.mark.slow
def test_pld_user_level_on_tf_privacy_case_is_finite_and_below_the_lemma():
    pld = accounting.compute_epsilon(**TFP_CASE, delta=1e-5, epochs=5, max_examples_per_user=5)
    assert pld == pytest.approx(_reference_mixture_epsilon(0.01, 0.8, 500, 5, 1e-5), rel=1e-9)
    assert pld == pytest.approx(13.687, abs=1e-2)
    rdp = accounting.compute_epsilon(
        **TFP_CASE, delta=1e-5, epochs=5, max_examples_per_user=5, accountant="rdp"
    )
    assert pld < rdp


def test_microbatching_halves_the_noise_for_the_mixture():
    plan = planning.DpSgdPlan.create(1000, 20, 2.0, 1, used_microbatching=True)
    user = planning.DpSgdPlan.create(
        1000, 20, 2.0, 1, used_microbatching=True, max_examples_per_user=2
    )
    details = user.epsilon_details(1e-5, "poisson", "pld")
    assert details["epsilon"] == pytest.approx(
        _reference_mixture_epsilon(0.02, 1.0, 50, 2, 1e-5), rel=1e-9
    )
    assert details["epsilon"] > plan.epsilon(1e-5)


@pytest.mark.slow
def test_rdp_falls_back_to_pld_when_the_lemma_gives_no_bound_and_says_so():
    plan = planning.DpSgdPlan.create(1000, 10, 0.8, steps=10, max_examples_per_user=10)
    alone = plan.epsilon_details(1e-5, "poisson", "rdp", fallback=False)
    assert alone["epsilon"] == math.inf
    assert "no example-level delta" in alone["reason"]
    with pytest.raises(ValueError):  # TF Privacy's recipe finds no root either
        _reference_rdp_user_epsilon(0.01, 0.8, 10, 10, 1e-5)
    answered = plan.epsilon_details(1e-5, "poisson", "rdp")
    assert answered["accountant"] == "pld" and answered["fallback_from"] == "rdp"
    assert answered["epsilon"] == pytest.approx(
        _reference_mixture_epsilon(0.01, 0.8, 10, 10, 1e-5), rel=1e-9
    )
    assert accounting.compute_epsilon(
        1000, 10, 0.8, delta=1e-5, steps=10, accountant="rdp", max_examples_per_user=10
    ) == pytest.approx(answered["epsilon"])
    text = accounting.compute_dp_sgd_privacy_statement(
        1000,
        10,
        0.1,
        0.8,
        1e-5,
        used_microbatching=False,
        max_examples_per_user=10,
        accountant="rdp",
    )
    assert "because the rdp accountant gave no finite bound" in text
    assert "PLDAccountant" in text and "inf" not in text


def test_statement_never_prints_inf_without_a_reason():
    text = accounting.compute_dp_sgd_privacy_statement(
        1000, 10, 5, 0.0, 1e-5, used_microbatching=False, max_examples_per_user=5
    )
    # an entry starts with its epsilon column (indent < 12); continuation lines have 12
    entries: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() and 0 < indent < 12:
            entries.append(line)
        elif entries and indent == 12:
            entries[-1] += " " + line.strip()
        else:
            entries.append("")
    inf_entries = [e for e in entries if e.strip().startswith("inf")]
    assert len(inf_entries) == 4
    for entry in inf_entries:
        assert "Infinite because noise_multiplier is 0" in " ".join(entry.split())
    assert "at delta 0" not in text


def test_rdp_statement_gives_tf_privacy_number():
    text = accounting.compute_dp_sgd_privacy_statement(
        1000,
        10,
        5,
        0.8,
        1e-5,
        used_microbatching=False,
        max_examples_per_user=5,
        accountant="rdp",
    )
    assert "108.5" in text and "Vadhan" in text and "inf" not in text
