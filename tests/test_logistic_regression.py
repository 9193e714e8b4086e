"""DPLogisticRegression: the privacy argument checked numerically, the noise, the limit of
large ε, scikit-learn compatibility, errors and accuracy on WDBC. Framework-free."""

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from keras_privacy.logistic_regression import (
    DPLogisticRegression,
    _minimize,
    _objective,
    objective_perturbation_parameters,
)

ROOT = Path(__file__).resolve().parents[1]


def _rows(rng, n, d, radius):
    """Random rows of norm at most ``radius`` (some on the sphere) and 0/1 labels."""
    X = rng.normal(size=(n, d))
    X *= (radius * rng.uniform(0.2, 1.0, size=n) / np.linalg.norm(X, axis=1))[:, None]
    X[: n // 3] *= radius / np.linalg.norm(X[: n // 3], axis=1)[:, None]
    return X, rng.integers(0, 2, size=n).astype(float)


def _b_of_theta(theta, X, y, lam):
    """The inverse map: the noise b for which theta minimizes J_D (b = -grad of the rest)."""
    return -_objective(theta, X, y, lam, np.zeros_like(theta))[1]


def _log_density(theta, X, y, lam, sigma):
    """log p_D(theta) = log nu(b_D(theta)) + log det(H_D(theta) + Lambda I)."""
    b = _b_of_theta(theta, X, y, lam)
    p = special.expit(X @ theta)
    hessian = (X * (p * (1 - p))[:, None]).T @ X + lam * np.eye(len(theta))
    return stats.norm.logpdf(b, scale=sigma).sum() + np.linalg.slogdet(hessian)[1]


# (a) the privacy argument, quantity by quantity


def test_one_row_moves_the_inverse_map_by_a_times_x_with_the_label_sign():
    """b_D'(theta) - b_D(theta) = -a x with |a| < 1 and a's sign fixed by the label, so
    the shift has norm < R (add/remove neighbours), whatever theta."""
    rng = np.random.default_rng(0)
    R, lam = 1.5, 0.3
    X, y = _rows(rng, 40, 4, R)
    for _ in range(200):
        theta = rng.normal(scale=rng.choice([0.1, 3.0, 30.0]), size=4)
        x, label = X[0], y[0]
        shift = _b_of_theta(theta, X, y, lam) - _b_of_theta(theta, X[1:], y[1:], lam)
        a = special.expit(theta @ x) - label
        np.testing.assert_allclose(shift, -a * x, atol=1e-9)
        assert np.linalg.norm(shift) < R + 1e-12
        assert (-1 <= a <= 0) if label == 1 else (0 <= a <= 1)  # = 0: expit saturates


def test_one_rows_hessian_is_at_most_r_squared_over_4_and_the_jacobian_ratio_is_bounded():
    rng = np.random.default_rng(1)
    R, lam = 2.0, 0.05
    beta = R**2 / 4
    X, y = _rows(rng, 30, 5, R)
    for _ in range(200):
        theta = rng.normal(scale=rng.choice([0.01, 1.0, 10.0]), size=5)
        x = X[0]
        p = special.expit(theta @ x)
        assert np.linalg.eigvalsh(p * (1 - p) * np.outer(x, x)).max() <= beta + 1e-12
        logdets = []
        for rows in (X, X[1:]):
            q = special.expit(rows @ theta)
            h = (rows * (q * (1 - q))[:, None]).T @ rows + lam * np.eye(5)
            logdets.append(np.linalg.slogdet(h)[1])
        assert 0 <= logdets[0] - logdets[1] <= math.log1p(beta / lam) + 1e-12


def test_the_minimizer_is_a_bijection_of_the_noise():
    """theta(b) recovers b through the inverse map, and distinct b give distinct theta."""
    rng = np.random.default_rng(2)
    X, y = _rows(rng, 50, 3, 1.0)
    lam = 0.4
    thetas = []
    for _ in range(20):
        b = rng.normal(scale=3.0, size=3)
        theta, grad_norm, _ = _minimize(X, y, lam, b, 1000, 1e-10)
        assert grad_norm <= 1e-10
        np.testing.assert_allclose(_b_of_theta(theta, X, y, lam), b, atol=1e-9)
        thetas.append(theta)
    assert len({tuple(np.round(t, 8)) for t in thetas}) == 20


@pytest.mark.parametrize("order", ["D_then_D_prime", "D_prime_then_D"])
def test_the_privacy_loss_exceeds_epsilon_with_probability_at_most_delta(order):
    """Privacy loss log p_D(theta) / p_D'(theta) at outputs drawn from D, computed from the
    change of variables: each draw stays below the proof's pointwise bound, and the
    fraction above epsilon is at most delta (a large delta, to be measurable)."""
    rng = np.random.default_rng(3)
    R, epsilon, delta = 1.0, 1.0, 0.2
    X, y = _rows(rng, 25, 3, R)
    big, small = (X, y), (X[1:], y[1:])
    first, second = (big, small) if order == "D_then_D_prime" else (small, big)
    params = objective_perturbation_parameters(epsilon, delta, R, C=1.0)
    lam, sigma = params["regularization"], params["noise_std"]
    losses = []
    for _ in range(250):
        b = rng.normal(scale=sigma, size=3)
        theta, _, _ = _minimize(*first, lam, b, 1000, 1e-10)
        loss = _log_density(theta, *first, lam, sigma) - _log_density(theta, *second, lam, sigma)
        g = abs(b @ X[0]) / (sigma * np.linalg.norm(X[0]))
        assert loss <= params["epsilon_jacobian"] + R**2 / (2 * sigma**2) + R * g / sigma + 1e-6
        losses.append(loss)
    assert np.mean(np.array(losses) > epsilon) <= delta


# (b) the noise


@pytest.mark.parametrize(("epsilon", "delta", "R", "C"), [(1, 1e-5, 1, 1), (0.3, 1e-3, 2, 50)])
def test_noise_scale_matches_the_formula_and_the_gaussian_tail_is_delta(epsilon, delta, R, C):
    params = objective_perturbation_parameters(epsilon, delta, R, C)
    t = stats.norm.isf(delta)
    e1, e2 = params["epsilon_jacobian"], params["epsilon_noise"]
    assert e1 <= epsilon / 2 + 1e-12 and e1 + e2 == pytest.approx(epsilon)
    assert e1 == pytest.approx(math.log1p(R**2 / 4 / params["regularization"]))
    assert params["regularization"] >= 1 / C
    sigma = params["noise_std"]
    assert sigma == pytest.approx(R / (math.sqrt(t * t + 2 * e2) - t), rel=1e-9)
    # P[R^2 / (2 sigma^2) + R g / sigma > epsilon_2] = delta
    tail = stats.norm.sf((e2 - R**2 / (2 * sigma**2)) * sigma / R)
    assert tail == pytest.approx(delta, rel=1e-6)


def test_the_noise_is_tighter_than_kifer_et_al_at_the_same_split():
    for epsilon in (0.1, 0.5, 1, 4, 8):
        for delta in (1e-3, 1e-5, 1e-8):
            ours = objective_perturbation_parameters(epsilon, delta, 1.0, C=1e-9)["noise_std"]
            kifer = math.sqrt(8 * math.log(2 / delta) + 4 * epsilon) / epsilon
            assert ours < kifer


def test_the_fitted_noise_has_the_stated_std():
    """b recovered from each fitted theta (the inverse map) is N(0, sigma^2)."""
    rng = np.random.default_rng(4)
    X, y = _rows(rng, 60, 4, 1.0)
    b_values = []
    for seed in range(60):
        model = DPLogisticRegression(epsilon=2.0, delta=1e-3, fit_intercept=False)
        model.set_params(random_state=seed).fit(X, y)
        b_values.append(_b_of_theta(model.coef_[0], X, y, model.regularization_))
    b_values = np.concatenate(b_values) / model.noise_std_
    assert stats.kstest(b_values, "norm").pvalue > 1e-3


# (c) large epsilon: scikit-learn's LogisticRegression


def test_large_epsilon_approaches_sklearn_with_the_same_c():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    model = DPLogisticRegression(epsilon=1e9, delta=1e-5, C=3.0, random_state=0).fit(X, y)
    assert model.regularization_ == pytest.approx(1 / 3.0)
    reference = LogisticRegression(C=3.0, fit_intercept=False, tol=1e-12, max_iter=10000)
    reference.fit(model._project(X), y)
    np.testing.assert_allclose(
        np.append(model.coef_[0], model.intercept_[0] / 0.5), reference.coef_[0], atol=1e-3
    )
    assert np.mean(model.predict(X) == reference.predict(model._project(X))) == 1.0


# (d) seeds


def test_a_seed_reproduces_the_fit_and_other_seeds_differ():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    fits = [DPLogisticRegression(random_state=s).fit(X, y).coef_ for s in (7, 7, 8)]
    np.testing.assert_array_equal(fits[0], fits[1])
    assert not np.allclose(fits[0], fits[2])
    generators = [np.random.default_rng(3), np.random.RandomState(3)]
    for rng in generators:
        fit = DPLogisticRegression(random_state=rng).fit(X, y).coef_
        assert np.isfinite(fit).all()


# (e) scikit-learn


def test_pipeline_and_grid_search():
    X, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), DPLogisticRegression(epsilon=4.0, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.8
    assert pipe.predict_proba(X[:3]).shape == (3, 2)
    search = GridSearchCV(pipe, {"dplogisticregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_["dplogisticregression__C"] in (0.1, 1.0)


def test_more_than_two_classes_split_the_budget():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    y = np.array(["a", "b", "c"])[X[:, :2].argmax(axis=1) + (X[:, 2] > 2)]
    model = DPLogisticRegression(epsilon=30.0, delta=1e-4, random_state=0).fit(X, y)
    assert model.coef_.shape == (3, 3) and model.n_problems_ == 3
    expected = objective_perturbation_parameters(10.0, 1e-4 / 3, 1.0, 1.0)["noise_std"]
    assert model.noise_std_ == pytest.approx(expected)
    assert set(model.predict(X)) <= {"a", "b", "c"} and model.score(X, y) > 0.6
    np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1.0)
    assert "3 one-vs-rest problems" in model.privacy_statement()


# All of scikit-learn's checks pass with a fixed seed (no sample_weight: a weighted row would
# change the sensitivity).
@parametrize_with_checks([DPLogisticRegression(random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# (f) errors


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"epsilon": 0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1.0}, "epsilon must be a finite number > 0"),
        ({"delta": 0.0}, "0 < delta < 1"),
        ({"delta": 1.0}, "0 < delta < 1"),
        ({"delta": 0.05}, "delta=0.05 is >= 1/N"),
        ({"C": 0}, "C must be"),
        ({"data_norm_bound": -1}, "data_norm_bound must be"),
        ({"intercept_scaling": 2.0}, "intercept_scaling must be < data_norm_bound"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    X, y = _rows(np.random.default_rng(6), 40, 2, 1.0)
    with pytest.raises(ValueError, match=message):
        DPLogisticRegression(**params).fit(X, y)


def test_large_delta_when_allowed_and_bad_data():
    X, y = _rows(np.random.default_rng(7), 40, 2, 1.0)
    DPLogisticRegression(delta=0.05, allow_large_delta=True).fit(X, y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DPLogisticRegression().fit(bad, y)
    with pytest.raises(ValueError, match="at least two classes"):
        DPLogisticRegression().fit(X, np.zeros(40))
    with pytest.raises(ValueError, match="Unknown label type"):
        DPLogisticRegression().fit(X, np.linspace(0, 1, 40))


# (g) accuracy on a real dataset


def test_wdbc_accuracy_at_large_epsilon():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from logistic_regression_wdbc import DELTA, evaluate, wdbc_split
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    data = wdbc_split()
    scores = evaluate(8.0, {"C": 1.0, "data_norm_bound": 1.0}, data, range(3), "test")
    assert DELTA * len(data["train"][1]) < 1
    assert scores[:, 0].mean() > 0.9 and scores[:, 1].mean() > 0.95


def test_the_module_imports_no_framework():
    code = (
        "import sys, keras_privacy; keras_privacy.DPLogisticRegression;"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
