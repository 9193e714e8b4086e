"""Plots of attack results: ROC curves and privacy-vs-utility reports (PNG via Agg).

Figures are built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no
window opens, no global backend is changed, and nothing is kept alive after saving. Only
``figure.show()`` (as TF Privacy's codelabs call it) hands the figure to ``pyplot``, which
then displays it as any pyplot figure (a window, a notebook's inline image, or a warning
on a non-interactive backend).

Metrics may be given as :class:`PrivacyMetric` members or by their names (``"AUC"``,
``"Attacker advantage"``, or the member name ``"ATTACKER_ADVANTAGE"``), as TF Privacy's
reports accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_privacy.privacy_tests.data_structures import (
    AttackResults,
    AttackResultsCollection,
    PrivacyMetric,
    RocCurve,
    SingleAttackResult,
)
from keras_privacy.privacy_tests.headlines import DEFAULT_MIN_SLICE_SIZE, headline_results

__all__ = [
    "plot_by_epochs",
    "plot_curve_with_area",
    "plot_histograms",
    "plot_privacy_vs_accuracy",
    "plot_roc_curve",
    "save_plot",
]

_DEFAULT_METRICS = (PrivacyMetric.AUC, PrivacyMetric.ATTACKER_ADVANTAGE)


class ReportFigure(Figure):
    """A ``Figure`` that is not managed by pyplot until :meth:`show` is called."""

    def show(self, warn: bool = True) -> None:
        """Display the figure through ``pyplot`` (which it then joins, like
        ``plt.figure()``'s figures; ``plt.close(figure)`` releases it)."""
        if self.canvas.manager is None:
            import matplotlib.pyplot as plt

            holder = plt.figure(figsize=tuple(self.get_size_inches()), dpi=self.dpi)
            manager = holder.canvas.manager
            manager.canvas.figure = self
            self.set_canvas(manager.canvas)
        super().show(warn=warn)


def _new_figure(width: float, height: float) -> Figure:
    figure = ReportFigure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | None) -> None:
    if path is not None:
        figure.savefig(path, format="png", dpi=100, bbox_inches="tight")


def save_plot(figure: Figure, path: str, outformat: str = "png") -> None:
    """Write ``figure`` to ``path`` in ``outformat`` (TF Privacy's helper of this name)."""
    figure.savefig(path, format=outformat, dpi=100, bbox_inches="tight")


def plot_curve_with_area(
    x: Iterable[float], y: Iterable[float], xlabel: str = "x", ylabel: str = "y"
) -> Figure:
    """A curve in the unit square with the area under it shaded, and the diagonal."""
    figure = _new_figure(5.0, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    x, y = list(x), list(y)
    axes.plot([0, 1], [0, 1], "k--", lw=1)
    axes.plot(x, y, lw=2)
    axes.fill_between(x, y, alpha=0.1)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return figure


def plot_histograms(
    train: Iterable[float], test: Iterable[float], threshold: float | None = None
) -> Figure:
    """Normalised histograms of a score for members and non-members, optional threshold."""
    figure = _new_figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.hist(list(train), bins=50, density=True, alpha=0.5, label="members (train)")
    axes.hist(list(test), bins=50, density=True, alpha=0.5, label="non-members (test)")
    if threshold is not None:
        axes.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    axes.set_ylabel("density")
    axes.legend(fontsize="small")
    return figure


def plot_roc_curve(
    roc: RocCurve | SingleAttackResult | AttackResults | Sequence[SingleAttackResult],
    path: str | None = None,
    title: str | None = None,
    log_scale: bool = False,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Plot ROC curve(s) with the chance diagonal; save as PNG when ``path`` is given.

    Accepts one ROC curve, one result, a list of results, or :class:`AttackResults` (all its
    results are drawn, labelled by attack and slice). ``log_scale``
    uses log-log axes, which shows the low-FPR regime. ``labels`` name the curves (default:
    attack type and slice).
    """
    if isinstance(roc, RocCurve):
        curves = [("attack", roc)]
    elif isinstance(roc, SingleAttackResult):
        curves = [(_label(roc), roc.roc_curve)]
    elif isinstance(roc, AttackResults):
        curves = [(_label(r), r.roc_curve) for r in roc.single_attack_results]
    else:
        curves = [(_label(r), r.roc_curve) for r in roc]
    if not curves:
        raise ValueError("nothing to plot")
    if labels is not None:
        if len(labels) != len(curves):
            raise ValueError(f"{len(labels)} labels for {len(curves)} curves")
        curves = [(label, curve) for label, (_, curve) in zip(labels, curves, strict=True)]
    figure = _new_figure(5.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    for label, curve in curves:
        axes.plot(curve.fpr, curve.tpr, lw=1.5, label=f"{label} (AUC {curve.get_auc():.3f})")
    if log_scale:
        axes.plot([1e-5, 1], [1e-5, 1], "k--", lw=1, label="chance")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(1e-5, 1)
        axes.set_ylim(1e-5, 1)
    else:
        axes.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.set_title(title or "Membership inference ROC")
    axes.legend(loc="lower right", fontsize="small")
    _save(figure, path)
    return figure


def _label(result: SingleAttackResult) -> str:
    if result.slice_spec.entire_dataset:
        return str(result.attack_type)
    return f"{result.attack_type}, {result.slice_spec}"


#: Where each metric's axis starts and ends: its chance level and its maximum, so that a
#: report shows how far from chance an attack is rather than magnifying a small trend.
_AXIS_RANGE = {
    PrivacyMetric.AUC: (0.5, 1.0),
    PrivacyMetric.ATTACKER_ADVANTAGE: (0.0, 1.0),
    PrivacyMetric.PPV: (0.0, 1.0),
    PrivacyMetric.TPR_AT_1_PERCENT_FPR: (0.0, 1.0),
    PrivacyMetric.TPR_AT_0_1_PERCENT_FPR: (0.0, 1.0),
}


def _set_metric_axis(axes, privacy_metric: PrivacyMetric) -> None:
    low, high = _AXIS_RANGE.get(privacy_metric, (0.0, None))
    axes.set_ylim(bottom=low, top=high)


def _best_per_results(
    collection: AttackResultsCollection, privacy_metric: PrivacyMetric, min_slice_size: int
) -> dict[str, list[tuple[AttackResults, float]]]:
    """{model variant: [(results, best metric over attacks and big-enough slices)]}."""
    variants: dict[str, list[tuple[AttackResults, float]]] = {}
    for results in collection.attack_results_list:
        metadata = results.privacy_report_metadata
        if metadata is None:
            raise ValueError("each AttackResults in the report needs privacy_report_metadata")
        chosen, _ = headline_results(results.single_attack_results, min_slice_size)
        best = max(r.metric(privacy_metric) for r in chosen)
        variants.setdefault(metadata.model_variant_label, []).append((results, best))
    return variants


def _metric(privacy_metric: PrivacyMetric | str) -> PrivacyMetric:
    if isinstance(privacy_metric, PrivacyMetric):
        return privacy_metric
    for member in PrivacyMetric:
        if privacy_metric in (member.value, member.name):
            return member
    known = ", ".join(repr(m.value) for m in PrivacyMetric)
    raise ValueError(f"unknown privacy metric {privacy_metric!r}; known: {known}")


def _metrics(privacy_metrics: Iterable[PrivacyMetric | str]) -> list[PrivacyMetric]:
    if isinstance(privacy_metrics, (str, PrivacyMetric)):
        privacy_metrics = [privacy_metrics]
    chosen = [_metric(m) for m in privacy_metrics]
    if not chosen:
        raise ValueError("privacy_metrics is empty")
    return chosen


def plot_by_epochs(
    collection: AttackResultsCollection,
    privacy_metrics: Iterable[PrivacyMetric | str] = _DEFAULT_METRICS,
    path: str | None = None,
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
) -> Figure:
    """One panel per metric: the strongest attack's value against the epoch, one line per
    model variant (every result needs ``privacy_report_metadata.epoch_num``).

    The strongest attack is taken over slices with at least ``min_slice_size`` members and
    non-members (the largest slice if none is that big); the AUC axis starts at 0.5
    (chance), the others at 0."""
    chosen = _metrics(privacy_metrics)
    figure = _new_figure(4.5 * len(chosen), 4.0)
    figure.suptitle("Vulnerability per Epoch")
    for index, privacy_metric in enumerate(chosen):
        axes = figure.add_subplot(1, len(chosen), index + 1)
        for variant, points in _best_per_results(
            collection, privacy_metric, min_slice_size
        ).items():
            epochs = [r.privacy_report_metadata.epoch_num for r, _ in points]
            if any(epoch is None for epoch in epochs):
                raise ValueError("plot_by_epochs needs epoch_num in every result's metadata")
            order = sorted(range(len(points)), key=lambda i: epochs[i])
            axes.plot(
                [epochs[i] for i in order], [points[i][1] for i in order], "o-", label=variant
            )
        axes.set_xlabel("Epoch")
        axes.set_ylabel(str(privacy_metric))
        axes.set_title(f"{privacy_metric} by epoch")
        _set_metric_axis(axes, privacy_metric)
        axes.legend(fontsize="small")
    _save(figure, path)
    return figure


def plot_privacy_vs_accuracy(
    collection: AttackResultsCollection,
    privacy_metrics: Iterable[PrivacyMetric | str] = _DEFAULT_METRICS,
    path: str | None = None,
    use_test_accuracy: bool = False,
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
) -> Figure:
    """One panel per metric: the strongest attack's value against the model's accuracy,
    one series per model variant: the privacy–utility trade-off (slices and axes as in
    :func:`plot_by_epochs`).

    The x axis is the training accuracy (``accuracy_train``), as in TF Privacy; with
    ``use_test_accuracy=True`` it is the test accuracy."""
    chosen = _metrics(privacy_metrics)
    figure = _new_figure(4.5 * len(chosen), 4.0)
    figure.suptitle("Privacy vs Utility Analysis")
    which = "accuracy_test" if use_test_accuracy else "accuracy_train"
    for index, privacy_metric in enumerate(chosen):
        axes = figure.add_subplot(1, len(chosen), index + 1)
        for variant, points in _best_per_results(
            collection, privacy_metric, min_slice_size
        ).items():
            accuracies = [getattr(r.privacy_report_metadata, which) for r, _ in points]
            if any(accuracy is None for accuracy in accuracies):
                raise ValueError(f"plot_privacy_vs_accuracy needs {which} in every result")
            order = sorted(range(len(points)), key=lambda i: accuracies[i])
            axes.plot(
                [accuracies[i] for i in order], [points[i][1] for i in order], "o-", label=variant
            )
        axes.set_xlabel("Test accuracy" if use_test_accuracy else "Train accuracy")
        axes.set_ylabel(str(privacy_metric))
        axes.set_title(f"{privacy_metric} vs accuracy")
        _set_metric_axis(axes, privacy_metric)
        axes.legend(fontsize="small")
    _save(figure, path)
    return figure
