"""The tutorials' report machinery: aggregation, the Markdown table, plots, the planner."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from keras_privacy.tutorials import _report
from keras_privacy.tutorials._report import Row


def _row(model="LR", target=1.0, seed=0, auroc=0.9, mia=0.55, epsilon=None):
    private = target is not None
    return Row(
        model=model,
        target_epsilon=target,
        epsilon=(target if epsilon is None else epsilon) if private else math.inf,
        noise_multiplier=2.5 if private else 0.0,
        l2_norm_clip=1.0 if private else None,
        batch_size=128,
        epochs=30,
        learning_rate=0.5,
        accountant="pld" if private else "—",
        metrics={"test AUROC": auroc},
        mia_auc=mia,
        seconds=3.0,
        seed=seed,
    )


def test_summarize_groups_by_model_and_target_with_sample_sd():
    rows = [_row(seed=0, auroc=0.8), _row(seed=1, auroc=0.9), _row(target=None, auroc=0.95)]
    summaries = _report.summarize(rows)
    assert [(s.first.model, s.first.target_epsilon, s.runs) for s in summaries] == [
        ("LR", 1.0, 2),
        ("LR", None, 1),
    ]
    mean, sd = summaries[0].metrics["test AUROC"]
    assert mean == pytest.approx(0.85)
    assert sd == pytest.approx(math.sqrt(2 * 0.05**2))  # ddof = 1
    assert summaries[1].metrics["test AUROC"] == (pytest.approx(0.95), 0.0)


def test_summarize_keeps_runs_of_other_settings_apart():
    """A learning-rate grid's runs are rows of their own, not seeds of one row (the
    pretrained-LM tutorial's selection table averaged its two rates)."""
    rows = [_row(seed=0), dataclasses.replace(_row(seed=0), learning_rate=0.1), _row(seed=1)]
    summaries = _report.summarize(rows)
    assert [(s.first.learning_rate, s.runs) for s in summaries] == [(0.5, 2), (0.1, 1)]


def test_markdown_table_has_settings_and_measurements_per_row():
    table = _report.markdown_table([_row(target=None, auroc=0.97), _row(seed=0), _row(seed=1)])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| model | target ε | ε | σ | C | batch | epochs | lr |")
    assert "test AUROC" in lines[0] and "MIA AUC" in lines[0]
    assert len(lines) == 4  # header, rule, two summaries
    assert "| LR | non-private | ∞ | 0 | — | 128 |" in lines[2]
    assert "| LR | 1 | 1 | 2.5 | 1 | 128 | 30 | 0.5 | pld | 0.900 ± 0.000 |" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_chance_auc_halfwidth_matches_hanley_mcneil_and_shrinks_with_n():
    # A = 0.5: SE^2 = (0.25 + (m-1)/12 + (n-1)/12) / (m n).
    m, n = 341, 228
    expected = 1.96 * math.sqrt((0.25 + (m - 1) / 12 + (n - 1) / 12) / (m * n))
    assert _report.chance_auc_halfwidth(m, n) == pytest.approx(expected)
    assert _report.chance_auc_halfwidth(4 * m, 4 * n) < _report.chance_auc_halfwidth(m, n) / 1.9
    with pytest.raises(ValueError):
        _report.chance_auc_halfwidth(0, 10)


def test_write_report_writes_markdown_and_two_pngs(tmp_path):
    rows = [
        _row(target=None, auroc=0.97, mia=0.6),
        *(_row(target=t, auroc=0.8 + t / 100, mia=0.5 + t / 100) for t in (0.5, 1.0, 4.0)),
        _row(model="MLP", target=None, auroc=0.98),
        _row(model="MLP", target=1.0, auroc=0.7),
    ]
    path = _report.write_report(
        tmp_path / "out",
        "Title",
        rows,
        "test AUROC",
        sections=[("Notes", "Some *text*.")],
        extra_tables=[("Ablation", [_row(model="LR, batch 32")])],
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n| model |")
    assert "![test AUROC vs ε](test_auroc_vs_epsilon.png)" in text
    assert "## Ablation\n\n| model |" in text and "| LR, batch 32 |" in text
    assert text.rstrip().endswith("Some *text*.")
    records = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert len(records) == len(rows) + 1 and records[0]["epsilon"] == "inf"
    assert records[1]["metrics"] == {"test AUROC": pytest.approx(0.805)}
    for name in ("test_auroc_vs_epsilon.png", "mia_auc_vs_epsilon.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_write_report_writes_the_same_report_as_one_html_page(tmp_path):
    pytest.importorskip("markdown", reason="pip install 'keras-privacy[tutorials]'")
    rows = [_row(target=None, auroc=0.97), _row(target=1.0, auroc=0.81, mia=0.52)]
    _report.write_report(
        tmp_path,
        "Title",
        rows,
        "test AUROC",
        sections=[("Notes", "Some *text*.\n\n| a |\n|---|\n| 1 |")],
    )
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>Title</title>" in page
    assert "<b>LR</b> at ε = 1: test AUROC 0.81 (without DP: 0.97)" in page
    assert "<th>MIA AUC</th>" in page and "<td>non-private</td>" in page
    assert page.count('src="data:image/png;base64,') == 2  # both plots, embedded
    assert "<em>text</em>" in page and "<td>1</td>" in page  # the notes' Markdown rendered


def test_write_report_columns_choose_the_main_table_metrics_and_json_keeps_all(tmp_path):
    rows = [
        dataclasses.replace(_row(target=t), metrics={"ppl": 5.0 + i, "extra": 7.25})
        for i, t in enumerate((None, 2.0))
    ]
    path = _report.write_report(tmp_path, "T", rows, "ppl", columns=["ppl"])
    header = path.read_text(encoding="utf-8").splitlines()[2]
    assert "| ppl |" in header and "extra" not in header
    assert "| 6.000 |" in path.read_text(encoding="utf-8")
    records = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [r["metrics"] for r in records] == [
        {"ppl": 5.0, "extra": 7.25},
        {"ppl": 6.0, "extra": 7.25},
    ]
    assert "extra" in _report.markdown_table(rows)  # all metrics without columns


def test_plan_noise_meets_the_target_for_the_updates_fit_makes():
    pytest.importorskip("keras")
    import keras_privacy as kp
    from keras_privacy.tutorials._training import plan_noise, updates_per_epoch

    assert updates_per_epoch(341, 128) == 3  # round(2.66): what fit's Poisson sampler does
    assert updates_per_epoch(10, 100) == 1
    sigma = plan_noise(1.0, 1e-4, 341, 128, epochs=30)
    steps = 30 * 3
    assert kp.compute_epsilon(341, 128, sigma, delta=1e-4, steps=steps) <= 1.0
    assert kp.compute_epsilon(341, 128, sigma * 0.98, delta=1e-4, steps=steps) > 1.0


def test_health_data_is_the_real_wdbc_table():
    from keras_privacy.tutorials.health import load_data

    (x_train, y_train), (x_test, y_test) = load_data()
    assert x_train.shape == (341, 30) and x_test.shape == (228, 30)
    assert int(y_train.sum() + y_test.sum()) == 212  # malignant cases in WDBC
    assert math.isclose(float(x_train.mean()), 0.0, abs_tol=1e-5)
