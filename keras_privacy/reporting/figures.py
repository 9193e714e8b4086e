"""The privacy report's figures, as PNG bytes (matplotlib's Agg canvas, never pyplot).

Each function takes plain numbers and returns the PNG; nothing global (pyplot's state, the
matplotlib backend) is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "audit_png",
    "dp_roc_bound",
    "epsilon_delta_png",
    "epsilon_training_png",
    "exposure_png",
    "roc_png",
]

_DPI = 110
_COLORS = {"pld": "#2456a6", "rdp": "#c2571a", "bound": "#b3261e", "chance": "#7a7f87"}


def _figure(width: float = 5.6, height: float = 3.9) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3, which="major")
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure, axes


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def epsilon_delta_png(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    delta: float,
    epsilon: float,
) -> bytes:
    """ε against δ (log δ axis), one line per accountant (``{"pld": (deltas, eps), ...}``),
    the report's (δ, ε) marked."""
    figure, axes = _figure()
    for name, (deltas, epsilons) in curves.items():
        label = {"pld": "PLD (privacy loss distributions)", "rdp": "RDP (Rényi DP)"}.get(name, name)
        axes.plot(deltas, epsilons, lw=2, color=_COLORS.get(name), label=label)
    if math.isfinite(epsilon):
        axes.plot([delta], [epsilon], "o", color="black", zorder=5)
        axes.annotate(
            f"ε = {epsilon:.2f} at δ = {delta:.0e}",
            (delta, epsilon),
            xytext=(-12, -18),
            textcoords="offset points",
            ha="right",
            fontsize=9,
        )
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("δ (log scale)")
    axes.set_ylabel("ε")
    axes.set_title("Guarantee at each δ: smaller is more private", fontsize=11)
    axes.legend(fontsize=9, loc="best")
    return _png(figure)


def epsilon_training_png(
    updates: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    updates_per_epoch: float | None,
    delta: float,
    segment_starts: Sequence[int] = (),
) -> bytes:
    """ε (at ``delta``) after each number of optimizer updates, one line per accountant;
    a second x axis in epochs when ``updates_per_epoch`` is known; dotted lines where a
    new ``fit`` began."""
    figure, axes = _figure()
    for name, epsilons in curves.items():
        label = {"pld": "PLD", "rdp": "RDP"}.get(name, name)
        axes.plot(updates, epsilons, "o-", ms=3, lw=2, color=_COLORS.get(name), label=label)
    for start in segment_starts:
        axes.axvline(start, color=_COLORS["chance"], ls=":", lw=1)
    axes.set_xlabel("optimizer updates")
    axes.set_ylabel(f"ε at δ = {delta:.0e}")
    axes.set_ylim(bottom=0)
    axes.set_xlim(left=0)
    axes.set_title("Privacy spent over the course of training", fontsize=11)
    if updates_per_epoch:
        top = axes.secondary_xaxis(
            "top",
            functions=(lambda u: u / updates_per_epoch, lambda e: e * updates_per_epoch),
        )
        top.set_xlabel("epochs", fontsize=9)
    axes.legend(fontsize=9, loc="best")
    return _png(figure)


def dp_roc_bound(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The largest TPR any membership test can reach at each FPR against an (ε, δ)-DP
    training run: ``min(1, e^ε FPR + δ, 1 - e^-ε (1 - δ - FPR))`` (Kairouz, Oh &
    Viswanath 2015, the hypothesis-testing view of (ε, δ)-DP)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    if not math.isfinite(epsilon):
        return np.ones_like(fpr)
    first = math.exp(epsilon) * fpr + delta
    second = 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr)
    return np.clip(np.minimum(first, second), 0.0, 1.0)


def roc_png(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    epsilon: float,
    delta: float,
    smallest_fpr: float,
) -> bytes:
    """Membership-inference ROC curves on log-log axes (the low-FPR regime where an attack
    is confident), the chance diagonal and the bound that (ε, δ)-DP puts on any attack."""
    figure, axes = _figure(5.6, 4.4)
    low = max(1e-5, 10 ** math.floor(math.log10(max(smallest_fpr, 1e-12))))
    grid = np.logspace(math.log10(low), 0, 200)
    if math.isfinite(epsilon):
        axes.plot(
            grid,
            dp_roc_bound(grid, epsilon, delta),
            color=_COLORS["bound"],
            lw=1.5,
            ls="--",
            label=f"the most any attack can do at ε = {epsilon:.2f}",
        )
    axes.plot(grid, grid, color=_COLORS["chance"], lw=1, ls=":", label="chance")
    for index, (label, fpr, tpr) in enumerate(curves):
        keep = np.asarray(fpr) > 0
        axes.step(
            np.asarray(fpr)[keep],
            np.maximum(np.asarray(tpr)[keep], low),
            where="post",
            lw=1.8,
            color=f"C{index}",
            label=label,
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, 1)
    axes.set_ylim(low, 1.05)
    axes.axvline(smallest_fpr, color=_COLORS["chance"], lw=0.8)
    axes.set_xlabel("false positive rate (log)")
    axes.set_ylabel("true positive rate (log)")
    axes.set_title("Membership inference: ROC, low-FPR regime", fontsize=11)
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


def audit_png(
    epsilon_claimed: float,
    epsilon_lower_bound: float,
    confidence: float,
    delta: float,
) -> bytes:
    """Where the true ε can be: from the audit's lower bound to the accountant's upper
    bound, on one axis (a lower bound past the upper bound is drawn in red)."""
    figure, axes = _figure(5.6, 2.3)
    axes.grid(False)
    axes.grid(True, axis="x", alpha=0.3)
    axes.spines["left"].set_visible(False)
    axes.set_yticks([])
    low, high = epsilon_lower_bound, epsilon_claimed
    violated = low > high
    color = _COLORS["bound"] if violated else _COLORS["pld"]
    axes.axvspan(min(low, high), max(low, high), ymin=0.35, ymax=0.65, color=color, alpha=0.18)
    axes.plot([low], [0.5], marker=">", ms=12, color=_COLORS["rdp"], ls="none")
    axes.plot([high], [0.5], marker="<", ms=12, color=_COLORS["pld"], ls="none")
    axes.annotate(
        f"audit: ε ≥ {low:.2f}\n({confidence:.0%} confidence)",
        (low, 0.5),
        xytext=(0, 16),
        textcoords="offset points",
        ha="center",
        fontsize=9,
        color=_COLORS["rdp"],
    )
    axes.annotate(
        f"accountant: ε ≤ {high:.2f}",
        (high, 0.5),
        xytext=(0, -24),
        textcoords="offset points",
        ha="center",
        fontsize=9,
        color=_COLORS["pld"],
    )
    top = max(low, high)
    axes.set_xlim(-0.08 * top - 0.05, top * 1.15 + 0.1)
    axes.set_ylim(0, 1)
    axes.set_xlabel(f"ε at δ = {delta:.0e}")
    axes.set_title(
        "The audit refutes the claim" if violated else "The true ε lies in the shaded range",
        fontsize=11,
    )
    return _png(figure)


def exposure_png(exposures: Mapping[int, Sequence[float]], ceiling: float | None) -> bytes:
    """Each canary's exposure against how often it was inserted, with the mean per count
    and the largest possible exposure log2 |R|."""
    figure, axes = _figure()
    counts = sorted(exposures)
    positions = np.arange(len(counts))
    rng = np.random.default_rng(0)
    for position, count in zip(positions, counts, strict=True):
        values = np.asarray(exposures[count], dtype=np.float64)
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        axes.plot(position + jitter, values, "o", ms=4, alpha=0.6, color="C0")
    means = [float(np.mean(exposures[c])) for c in counts]
    axes.plot(positions, means, "s-", color="C1", lw=2, label="mean")
    if ceiling is not None:
        axes.axhline(
            ceiling, color=_COLORS["bound"], ls="--", lw=1.2, label="log2 |R|: fully memorised"
        )
    axes.set_xticks(positions, [f"×{c}" for c in counts])
    axes.set_xlabel("times the canary was in the training data")
    axes.set_ylabel("exposure (bits)")
    axes.set_ylim(bottom=0)
    axes.set_title("Secret sharer: canary exposure", fontsize=11)
    axes.legend(fontsize=9, loc="best")
    return _png(figure)
