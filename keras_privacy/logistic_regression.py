"""Differentially private logistic regression by objective perturbation.

A scikit-learn estimator, free of any deep-learning framework (NumPy, SciPy, scikit-learn).
It minimizes an L2-regularized logistic loss to which a random linear term has been added
(objective perturbation; Chaudhuri, Monteleoni and Sarwate 2011; Kifer, Smith and Thakurta
2012, Algorithm 1, which TF Privacy's ``logistic_regression`` module implements). The
privacy guarantee below is derived for this estimator's exact objective, for
add/remove-one-row neighbours.

**The mechanism.** Each row ``x`` is first projected to the ball of radius
``R = data_norm_bound`` (with ``fit_intercept``, the constant column ``c =
intercept_scaling``, ``R / 2`` by default, is part of the row: the features are scaled to
norm at most ``sqrt(R**2 - c**2)``, then ``c`` is appended). With labels ``y`` in {0, 1}, the
output is the exact minimizer of

    J(theta) = sum_i l(theta; x_i, y_i) + (Lambda / 2) ||theta||**2 + <b, theta>,

``l(theta; x, y) = log(1 + exp(theta.x)) - y theta.x``, ``Lambda = max(1 / C, Lambda_min)``
and ``b ~ N(0, sigma**2 I)``. ``C`` is scikit-learn's: for ``Lambda = 1 / C`` and no
``b``, this is ``LogisticRegression(C=C)``'s objective (divided by ``C``). The sum, and not
a mean over rows, keeps the objective of a neighbour one term apart.

**The constants.** The gradient of one row's loss is ``a x`` with ``a = sigmoid(theta.x) -
y`` in (-1, 0) for ``y = 1`` and in (0, 1) for ``y = 0``, so ``l`` is ``R``-Lipschitz; its
Hessian ``p (1 - p) x x^T`` has rank one and eigenvalue at most ``beta = R**2 / 4``
(``R**2 / 4``-smooth). The budget is split as ``epsilon = epsilon_1 + epsilon_2``:
``epsilon_1 = log(1 + beta / Lambda)`` pays for the Jacobian and ``epsilon_2`` for the
noise. If ``1 / C`` already gives ``epsilon_1 <= epsilon / 2``, then ``Lambda = 1 / C``;
otherwise ``epsilon_1 = epsilon / 2`` and ``Lambda = Lambda_min =
beta / (exp(epsilon / 2) - 1)`` (the extra regularization is ``Lambda_min - 1 / C``).
With ``t = Phi^-1(1 - delta)``, the noise scale is ``sigma = R / (sqrt(t**2 + 2 epsilon_2) - t)``.

**The proof, in short.** ``J`` is ``Lambda``-strongly convex, so ``b -> theta`` is a
bijection with inverse ``b(theta) = -grad L_D(theta) - Lambda theta``, and the output has
density ``nu(b_D(theta)) det(H_D(theta) + Lambda I)``. For ``D' = D + {(x, y)}``,
``b_D'(theta) = b_D(theta) - a x``. (i) Jacobian: the determinant ratio is ``det(I + A^-1
E)`` with ``E`` of rank one and eigenvalue <= ``beta`` and ``A >= Lambda I``, so it lies in
[1, 1 + beta / Lambda]: at most ``epsilon_1`` in log. (ii) Gaussian: the log ratio of the
noise densities is ``(a^2 ||x||^2 - 2 a <b, x>) / (2 sigma^2)`` (or with ``+``), and as
``a`` has the label's sign, it is at most ``R^2 / (2 sigma^2) + R max(0, g) / sigma`` with
``g = ±<b, x> / (sigma ||x||) ~ N(0, 1)``, the same for every ``theta`` since ``x`` is
fixed. It exceeds ``epsilon_2`` only when ``g > t``, with probability ``delta``; so the
privacy loss exceeds ``epsilon`` with probability at most ``delta`` in both directions,
which gives (epsilon, delta)-DP. Replace-one neighbours are two add/remove steps:
(2 epsilon, (1 + e^epsilon) delta) by group privacy.

**More than two classes**: one-vs-rest, ``K`` binary problems on the same rows, each run
at (epsilon / K, delta / K) with independent noise; basic composition gives (epsilon,
delta).

**What is assumed.** The analysis is for the exact minimizer. The solver (L-BFGS, then
Newton steps) stops when the perturbed objective's gradient norm is at most ``tol``; the
distance to the exact minimizer is then at most ``gradient_norm_ / Lambda`` (strong
convexity), recorded in ``optimality_gap_bound_``, and not covered by the guarantee (a
float64 rounding-level gap by default). Everything computed from the data before ``fit``
(a ``StandardScaler`` fitted on the private rows, hyperparameters chosen on them) is
outside the guarantee too.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import optimize, special, stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from keras_privacy.accounting._checks import (
    check_delta,
    check_delta_below_one_over_n,
    check_positive_real,
)

__all__ = ["DPLogisticRegression", "objective_perturbation_parameters"]


def objective_perturbation_parameters(
    epsilon: float, delta: float, data_norm_bound: float, C: float = 1.0
) -> dict[str, float]:
    """The regularization and noise of one binary objective perturbation at (ε, δ).

    For rows of L2 norm at most ``R = data_norm_bound`` (intercept column included) and
    add/remove-one-row neighbours: ``beta = R**2 / 4`` bounds the Hessian of one row's
    logistic loss; the Jacobian share is ``epsilon_1 = log(1 + beta / Lambda)``, at most
    ``epsilon / 2``, with ``Lambda = max(1 / C, beta / (exp(epsilon / 2) - 1))``; the rest,
    ``epsilon_2 = epsilon - epsilon_1``, pays for ``b ~ N(0, sigma**2 I)`` with ``sigma =
    R / (sqrt(t**2 + 2 epsilon_2) - t)``, ``t = Phi^-1(1 - delta)`` (``Phi`` the standard
    normal CDF).

    Args:
        epsilon: ε > 0 of this binary problem.
        delta: δ in (0, 1) of this binary problem.
        data_norm_bound: ``R`` > 0.
        C: scikit-learn's inverse regularization strength (``1 / C`` multiplies
            ``||theta||**2 / 2`` in the summed objective).

    Returns:
        A dict with ``regularization`` (``Lambda``), ``extra_regularization`` (``Lambda -
        1 / C``), ``noise_std`` (``sigma``), ``epsilon_jacobian`` and ``epsilon_noise``.
    """
    beta = data_norm_bound**2 / 4.0
    user = 1.0 / C
    if math.log1p(beta / user) <= epsilon / 2.0:
        regularization = user
    else:
        regularization = beta / math.expm1(epsilon / 2.0)
    epsilon_1 = math.log1p(beta / regularization)
    epsilon_2 = epsilon - epsilon_1
    t = float(stats.norm.isf(delta))
    # R / (sqrt(t^2 + 2 e2) - t), written without the cancellation
    sigma = data_norm_bound * (math.sqrt(t * t + 2.0 * epsilon_2) + t) / (2.0 * epsilon_2)
    return {
        "regularization": regularization,
        "extra_regularization": regularization - user,
        "noise_std": sigma,
        "epsilon_jacobian": epsilon_1,
        "epsilon_noise": epsilon_2,
    }


def _objective(
    theta: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float, b: np.ndarray
) -> tuple[float, np.ndarray]:
    """The summed perturbed objective J and its gradient."""
    z = X @ theta
    loss = np.sum(np.logaddexp(0.0, z) - y * z)
    grad = X.T @ (special.expit(z) - y) + lam * theta + b
    return float(loss + 0.5 * lam * theta @ theta + b @ theta), grad


def _minimize(
    X: np.ndarray, y: np.ndarray, lam: float, b: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, float, int]:
    """L-BFGS on J / n, then Newton steps until ||grad J|| <= tol.

    Returns ``(theta, ||grad J(theta)||, iterations)``.
    """
    n, d = X.shape
    result = optimize.minimize(
        lambda th: tuple(v / n for v in _objective(th, X, y, lam, b)),
        np.zeros(d),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-8, "ftol": 1e-13},
    )
    theta, iterations = result.x, int(result.nit)
    grad = _objective(theta, X, y, lam, b)[1]
    for _ in range(20):  # J is smooth and strongly convex: Newton converges fast from here
        if np.linalg.norm(grad) <= tol:
            break
        p = special.expit(X @ theta)
        hessian = (X * (p * (1.0 - p))[:, None]).T @ X + lam * np.eye(d)
        step = np.linalg.solve(hessian, grad)
        scale, norm = 1.0, np.linalg.norm(grad)
        while True:  # damped Newton on the gradient norm (values differ by rounding here)
            new_grad = _objective(theta - scale * step, X, y, lam, b)[1]
            if np.linalg.norm(new_grad) < norm or scale < 1e-6:
                break
            scale /= 2.0
        if np.linalg.norm(new_grad) >= norm:
            break
        theta, grad = theta - scale * step, new_grad
        iterations += 1
    return theta, float(np.linalg.norm(grad)), iterations


class DPLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2-regularized logistic regression, (ε, δ)-DP by objective perturbation.

    The mechanism, its constants and its proof are in the module's docstring
    (``keras_privacy.logistic_regression``): rows projected to L2 norm
    ``data_norm_bound`` (intercept column included), the summed logistic loss plus
    ``(Lambda / 2) ||theta||**2`` plus ``<b, theta>`` with Gaussian ``b``, minimized
    exactly. Neighbouring datasets differ by one row added or removed. Two classes: one
    problem at (ε, δ); ``K > 2`` classes: one-vs-rest, each at (ε / K, δ / K).

    Hyperparameter search (``GridSearchCV``) on the private rows spends privacy that this
    ε does not count: tune on public data or a held-out split that is not part of the
    private training set.

    Args:
        epsilon: ε > 0 of the whole fit.
        delta: δ, with 0 < δ < 1 and δ < 1 / n_samples unless ``allow_large_delta``.
        C: inverse regularization strength, as scikit-learn's ``LogisticRegression``
            (``1 / C`` multiplies ``||theta||**2 / 2`` in the summed loss). Raised as
            needed for privacy; see ``regularization_``.
        data_norm_bound: ``R``: each row (with the intercept column) is scaled to L2 norm
            at most ``R``, in ``fit`` and at prediction. Part of the mechanism.
        fit_intercept: append a constant column ``intercept_scaling``; its weight, times
            ``intercept_scaling``, is the intercept (regularized with the rest).
        intercept_scaling: the constant ``c``, with ``0 < c < data_norm_bound``; the
            features get norm at most ``sqrt(R**2 - c**2)``. ``None``: ``R / 2``.
        max_iter: L-BFGS iterations.
        tol: the gradient norm of the summed perturbed objective at which ``fit`` stops
            (the analysis assumes the exact minimizer; see ``optimality_gap_bound_``).
            Newton steps form the d × d Hessian: meant for up to a few thousand features.
        random_state: seed or ``numpy.random.Generator``/``RandomState`` for the noise.
            Any fixed seed makes the noise predictable: use ``None`` for a real release.
        allow_large_delta: allow ``delta >= 1 / n_samples`` (a meaningless guarantee).

    Attributes:
        classes_: the labels seen in ``fit``.
        coef_: shape (1, n_features) for two classes, (K, n_features) otherwise; applies
            to rows after the norm projection.
        intercept_: shape (1,) or (K,).
        epsilon_: ε of the fit (the sum over one-vs-rest problems).
        delta_: δ of the fit.
        noise_std_: σ of ``b`` in each binary problem.
        regularization_: ``Lambda`` used in each binary problem.
        epsilon_jacobian_: ``epsilon_1`` of each binary problem (the Jacobian's share).
        epsilon_noise_: ``epsilon_2`` of each binary problem (the noise's share).
        n_problems_: 1 for two classes, ``K`` for one-vs-rest.
        n_iter_: solver iterations (L-BFGS and Newton) of each binary problem.
        gradient_norm_: largest ``||grad J||`` at the returned parameters.
        optimality_gap_bound_: ``gradient_norm_ / regularization_``, a bound on the
            distance to the exact minimizer.
        n_features_in_: number of features.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        C: float = 1.0,
        data_norm_bound: float = 1.0,
        fit_intercept: bool = True,
        intercept_scaling: float | None = None,
        max_iter: int = 1000,
        tol: float = 1e-8,
        random_state: Any = None,
        allow_large_delta: bool = False,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.C = C
        self.data_norm_bound = data_norm_bound
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.allow_large_delta = allow_large_delta

    def _check_params(self) -> None:
        check_positive_real(self.epsilon, "epsilon")
        check_delta(self.delta)
        check_positive_real(self.C, "C")
        check_positive_real(self.data_norm_bound, "data_norm_bound")
        check_positive_real(self.tol, "tol")
        if self.fit_intercept and self.intercept_scaling is not None:
            c = check_positive_real(self.intercept_scaling, "intercept_scaling")
            if c >= self.data_norm_bound:
                raise ValueError(
                    f"intercept_scaling must be < data_norm_bound ({self.data_norm_bound!r}): "
                    f"the intercept column is part of the row norm, received {c!r}"
                )

    def _intercept_constant(self) -> float:
        if self.intercept_scaling is None:
            return float(self.data_norm_bound) / 2.0
        return float(self.intercept_scaling)

    def _project(self, X: np.ndarray) -> np.ndarray:
        """Rows scaled to the norm bound, with the intercept column appended."""
        radius = float(self.data_norm_bound)
        if self.fit_intercept:
            radius = math.sqrt(radius**2 - self._intercept_constant() ** 2)
        norms = np.linalg.norm(X, axis=1)
        scale = np.minimum(1.0, radius / np.maximum(norms, np.finfo(float).tiny))
        X = X * scale[:, None]
        if self.fit_intercept:
            X = np.hstack([X, np.full((X.shape[0], 1), self._intercept_constant())])
        return X

    def fit(self, X: Any, y: Any) -> DPLogisticRegression:
        """Fit on ``X`` (n_samples, n_features) and labels ``y``; returns ``self``.

        Raises:
            ValueError: bad ε, δ (or δ >= 1 / n_samples), C, norm bound, non-finite ``X``,
                fewer than two classes or continuous labels.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y must contain at least two classes, received one class: {self.classes_[0]!r}"
            )
        n = X.shape[0]
        check_delta_below_one_over_n(float(self.delta), n, self.allow_large_delta)
        problems = 1 if len(self.classes_) == 2 else len(self.classes_)
        eps_each, delta_each = float(self.epsilon) / problems, float(self.delta) / problems
        params = objective_perturbation_parameters(
            eps_each, delta_each, float(self.data_norm_bound), float(self.C)
        )
        lam, sigma = params["regularization"], params["noise_std"]
        Xp = self._project(X)
        rng = (
            self.random_state
            if isinstance(self.random_state, np.random.Generator)
            else check_random_state(self.random_state)
        )
        targets = [self.classes_[1]] if problems == 1 else list(self.classes_)
        thetas, grad_norms, iterations = [], [], []
        for target in targets:
            b = rng.normal(0.0, sigma, size=Xp.shape[1])
            theta, grad_norm, n_iter = _minimize(
                Xp, (y == target).astype(float), lam, b, int(self.max_iter), float(self.tol)
            )
            thetas.append(theta)
            grad_norms.append(grad_norm)
            iterations.append(max(n_iter, 1))
        self.n_iter_ = np.array(iterations)
        theta = np.array(thetas)
        if self.fit_intercept:
            self.coef_ = theta[:, :-1]
            self.intercept_ = theta[:, -1] * self._intercept_constant()
        else:
            self.coef_, self.intercept_ = theta, np.zeros(len(thetas))
        self.epsilon_, self.delta_ = float(self.epsilon), float(self.delta)
        self.noise_std_, self.regularization_ = sigma, lam
        self.epsilon_jacobian_, self.epsilon_noise_ = (
            params["epsilon_jacobian"],
            params["epsilon_noise"],
        )
        self.n_problems_ = problems
        self.gradient_norm_ = max(grad_norms)
        self.optimality_gap_bound_ = self.gradient_norm_ / lam
        if self.gradient_norm_ > self.tol:
            warnings.warn(
                f"the perturbed objective's gradient norm is {self.gradient_norm_:.3g} > tol"
                f" = {self.tol:g}: the analysis assumes the exact minimizer (distance at most"
                f" {self.optimality_gap_bound_:.3g}); raise max_iter",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``coef_ . x + intercept_`` of the norm-projected rows; 1-D for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xp = self._project(X)
        if self.fit_intercept:
            Xp = Xp[:, :-1]
        scores = Xp @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes) (one-vs-rest: normalized)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = special.expit(scores)
            return np.column_stack([1.0 - p, p])
        p = special.expit(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def privacy_statement(self) -> str:
        """The guarantee of the fitted model, in words."""
        check_is_fitted(self)
        split = (
            ""
            if self.n_problems_ == 1
            else f" It is {self.n_problems_} one-vs-rest problems, each at "
            f"(ε = {self.epsilon_ / self.n_problems_:.4g}, δ = "
            f"{self.delta_ / self.n_problems_:.3g}), composed."
        )
        return (
            f"DPLogisticRegression (objective perturbation) is (ε = {self.epsilon_:.4g}, "
            f"δ = {self.delta_:.3g})-differentially private for one training row added or "
            f"removed (for one row replaced: (2ε, (1 + e^ε) δ), by group privacy).{split} "
            f"Each row was scaled to L2 norm at most {self.data_norm_bound:g} (intercept "
            "column included); the objective has L2 regularization "
            f"Λ = {self.regularization_:.4g} and a linear term with Gaussian noise "
            f"σ = {self.noise_std_:.4g} per coordinate (ε spent "
            f"{self.epsilon_jacobian_:.3g} on the Jacobian, {self.epsilon_noise_:.3g} on "
            "the noise). The guarantee assumes the exact minimizer: the returned "
            f"parameters are within {self.optimality_gap_bound_:.2g} of it. It covers "
            "the fit only: preprocessing fitted on the same rows (e.g. a StandardScaler) "
            "and hyperparameter search on them are not included."
        )
