"""PNG plots: ROC curves and privacy-vs-utility reports."""

from __future__ import annotations

import numpy as np
import pytest

from keras_privacy.privacy_tests import (
    AttackInputData,
    AttackResultsCollection,
    AttackType,
    PrivacyMetric,
    PrivacyReportMetadata,
    plot_by_epochs,
    plot_privacy_vs_accuracy,
    plot_roc_curve,
    run_attacks,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(shift: float, epoch: int, label: str, accuracy: float):
    rng = np.random.default_rng(epoch)
    data = AttackInputData(loss_train=rng.normal(-shift, 1, 200), loss_test=rng.normal(0, 1, 200))
    return run_attacks(
        data,
        attack_types=[AttackType.THRESHOLD_ATTACK],
        privacy_report_metadata=PrivacyReportMetadata(0.9, accuracy, epoch, label),
    )


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_roc_plot_has_curve_and_diagonal(tmp_path):
    results = _results(1.0, 1, "model", 0.8)
    path = tmp_path / "roc.png"
    figure = plot_roc_curve(results.get_result_with_max_auc(), str(path))
    assert _is_png(path)
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2  # the ROC curve and the chance diagonal
    np.testing.assert_allclose(lines[1].get_xdata(), [0, 1])
    np.testing.assert_allclose(lines[1].get_ydata(), [0, 1])
    log_path = tmp_path / "roc_log.png"
    plot_roc_curve(results, str(log_path), log_scale=True)
    assert _is_png(log_path)


def test_privacy_reports(tmp_path):
    collection = AttackResultsCollection([])
    for label, shifts in (("non-private", [0.5, 1.0, 2.0]), ("DP", [0.0, 0.1, 0.2])):
        for epoch, shift in enumerate(shifts, 1):
            collection.append(_results(shift, epoch, label, 0.5 + 0.1 * epoch))
    by_epochs = tmp_path / "by_epochs.png"
    figure = plot_by_epochs(
        collection, [PrivacyMetric.AUC, PrivacyMetric.ATTACKER_ADVANTAGE], str(by_epochs)
    )
    assert _is_png(by_epochs) and len(figure.axes) == 2
    series = {line.get_label(): line.get_ydata() for line in figure.axes[0].get_lines()}
    assert set(series) == {"non-private", "DP"}
    assert np.all(np.diff(series["non-private"]) > 0)  # AUC grows with the shift
    vs_accuracy = tmp_path / "vs_accuracy.png"
    plot_privacy_vs_accuracy(collection, [PrivacyMetric.EPSILON_LOWER_BOUND], str(vs_accuracy))
    assert _is_png(vs_accuracy)
    frame = collection.calculate_pd_dataframe()
    assert set(frame["model variant"]) == {"non-private", "DP"} and len(frame) == 6


def test_report_needs_metadata():
    rng = np.random.default_rng(0)
    data = AttackInputData(loss_train=rng.normal(size=20), loss_test=rng.normal(size=20))
    collection = AttackResultsCollection([run_attacks(data)])
    with pytest.raises(ValueError, match="metadata"):
        plot_by_epochs(collection)
