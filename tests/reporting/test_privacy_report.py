"""The privacy report: every section from a real DP run, its numbers, the command line."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_privacy.reporting import figures, record_data
from keras_privacy.reporting.model_report import privacy_report
from keras_privacy.training.record import TrainingRecord, TrainingSegment

ROOT = Path(__file__).resolve().parents[2]


def _record(*segments: TrainingSegment) -> TrainingRecord:
    return TrainingRecord(list(segments))


def _poisson(updates: int = 50, n: int = 6000, batch: int = 120) -> TrainingSegment:
    # sigma 2: a narrow privacy loss distribution, so the PLD accountant is quick
    return TrainingSegment("poisson", n, batch, 2.0, 1.0, updates=updates)


def _sections(path: Path) -> dict[str, bool]:
    return json.loads((path.parent / "report.json").read_text(encoding="utf-8"))["sections"]


def test_report_of_a_record_fills_the_accounting_and_says_what_to_pass_for_the_rest(tmp_path):
    from keras_privacy.accounting import epsilon_of_record

    record = _record(_poisson())
    path = privacy_report(record, tmp_path / "r")
    page = path.read_text(encoding="utf-8")
    data = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert data["delta"] == 1e-4  # the largest power of ten below 1/N = 1/6000
    assert data["epsilon"] == pytest.approx(epsilon_of_record(record, 1e-4), rel=1e-12)
    sections = data["sections"]
    assert sections == {
        "settings": True,
        "epsilon-delta": True,
        "epsilon-over-training": True,
        "membership": False,
        "audit": False,
        "secret-sharer": False,
    }
    assert "Pass membership=((x_train, y_train), (x_held_out, y_held_out))" in page
    assert "Pass audit=AuditResult" in page and "canary_exposures=" in page
    # self-contained: every image embedded, nothing fetched
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page
    for name in ("epsilon_delta.png", "epsilon_over_training.png"):
        png = (tmp_path / "r" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and base64.b64encode(png).decode() in page


def test_epsilon_over_training_matches_the_record_cut_at_each_point():
    from keras_privacy.accounting import epsilon_of_record

    record = _record(_poisson(30), _poisson(20, n=6000, batch=240))
    updates, curves = record_data.epsilon_over_training(record, 1e-5, count=3)
    assert updates == [0, 25, 30, 50]  # evenly spread, and the segment boundary
    for accountant, values in curves.items():
        assert values[0] == 0.0 and values == sorted(values)
        for k, value in zip(updates, values, strict=True):
            exact = epsilon_of_record(record_data.record_until(record, k), 1e-5, accountant)
            # intermediate PLD points use a coarser (still pessimistic) discretization
            assert exact - 1e-9 <= value + 1e-9 and value == pytest.approx(exact, abs=0.02)


def test_shuffled_batches_are_flagged_and_accounted_without_amplification(tmp_path):
    record = _record(TrainingSegment("shuffle", 6000, 120, 2.0, 1.0, updates=100))
    page = privacy_report(record, tmp_path).read_text(encoding="utf-8")
    assert "did not use Poisson sampling" in page
    updates, curves = record_data.epsilon_over_training(record, 1e-5, count=5)
    # one Gaussian per pass of 50 updates: epsilon is flat within a pass, steps at the next
    by_update = dict(zip(updates, curves["pld"], strict=True))
    assert by_update[25] == by_update[50] < by_update[75] == by_update[100]


def test_an_untrained_model_and_a_plain_model(tmp_path):
    path = privacy_report(TrainingRecord(), tmp_path)
    page = path.read_text(encoding="utf-8")
    assert "No DP training recorded" in page and not any(
        filled for name, filled in _sections(path).items() if name != "settings"
    )
    with pytest.raises(ValueError, match="needs a DP model"):
        privacy_report(object(), tmp_path)
    with pytest.raises(ValueError, match="runs the model on the data"):
        privacy_report(_record(_poisson()), tmp_path, membership=(([1], [0]), ([2], [1])))


def test_dp_roc_bound_is_the_hypothesis_testing_region():
    fpr = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    assert np.allclose(figures.dp_roc_bound(fpr, 0.0, 0.0), fpr)  # ε = 0: chance
    bound = figures.dp_roc_bound(fpr, 1.0, 1e-5)
    assert bound[2] == pytest.approx(math.e * 0.01 + 1e-5)
    assert bound[-1] == 1.0 and np.all(np.diff(bound) >= 0)
    # the upper branch: TPR <= 1 - e^-ε (1 - δ - FPR)
    assert bound[3] == pytest.approx(1 - math.exp(-1.0) * (1 - 1e-5 - 0.5))


@pytest.mark.extended
def test_every_section_is_filled_from_a_real_short_dp_run(tmp_path):
    """A small DP model trained for real on the digits, attacked three ways; then the
    saved model's report from the command line gives the same ε without Keras."""
    import keras
    from sklearn.datasets import load_digits

    import keras_privacy as kp
    from keras_privacy.tutorials import privacy_report as tutorial

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    members, non_members = (x[:1000], y[:1000]), (x[1000:], y[1000:])
    canaries = tutorial.make_canaries(
        (64,), 10, repetitions=(1, 8), per_repetition=3, references=255, audit_canaries=200
    )
    x_all, y_all = tutorial.training_set(*members, canaries)
    keras.utils.set_random_seed(0)
    model = kp.make_private(
        keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(10)]
        ),
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        seed=0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_all, y_all, batch_size=128, epochs=2, verbose=0)
    path = tutorial.measure_and_report(model, members, non_members, canaries, 1e-4, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert all(data["sections"].values()), data["sections"]
    assert data["epsilon"] == pytest.approx(model.privacy_spent(1e-4), rel=1e-9)
    assert data["segments"][0]["dataset_size"] == len(x_all)  # canaries count in N
    assert data["segments"][0]["updates"] == model.privacy_record.total_updates > 0
    attacks = {a["attack"]: a for a in data["membership"]}
    assert set(attacks) == {"loss threshold", "logistic regression"}
    for attack in attacks.values():
        assert 0.0 <= attack["auc"] <= 1.0 and attack["non_members"] == len(y) - 1000
        assert attack["tpr_at_0.001_fpr"] is None  # fewer than 1,000 non-members
        assert 0.0 <= attack["tpr_at_0.01_fpr"] <= 1.0
    audit = data["audit"]
    assert audit["num_canaries"] == 200 and audit["canary_kind"] == "input-space"
    assert 0.0 <= audit["epsilon_lower_bound"] <= data["epsilon"]
    assert set(data["canary_exposures"]) == {"1", "8"} and data["canary_space_size"] == 256
    assert all(0.0 <= e <= 8.0 for v in data["canary_exposures"].values() for e in v)
    page = path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 5 and 'class="empty"' not in page

    saved = tmp_path / "model.keras"
    model.save(saved)
    code = (
        "import sys, json; from keras_privacy import cli;"
        f"rc = cli.main(['report', {str(saved)!r}, '--out', {str(tmp_path / 'cli')!r},"
        " '--delta', '1e-4', '--json']);"
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules];"
        "assert rc == 0 and not bad, (rc, bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out)["epsilon"] == pytest.approx(data["epsilon"], rel=1e-12)


def test_the_command_line_refuses_half_an_attack_and_foreign_files(tmp_path, capsys):
    from keras_privacy import cli

    archive = tmp_path / "not_a_model.keras"
    archive.write_text("hello", encoding="utf-8")
    assert cli.main(["report", str(archive), "--out", str(tmp_path / "o")]) == 2
    assert "not a Keras 3 .keras archive" in capsys.readouterr().err
    argv = ["report", str(archive), "--out", str(tmp_path / "o"), "--members", "a.npz"]
    assert cli.main(argv) == 2
    assert "--members and --non-members go together" in capsys.readouterr().err
