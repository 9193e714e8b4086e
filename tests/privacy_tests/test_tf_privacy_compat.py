"""TF Privacy's privacy-test call forms: same results as the native API, checked by hand."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from scipy import stats

from keras_privacy import privacy_tests as pt
from keras_privacy.privacy_tests import membership_probability, seq2seq
from keras_privacy.privacy_tests import secret_sharer as native_sharer

ROOT = "keras_privacy.compat.tensorflow_privacy.privacy"
MIA = f"{ROOT}.privacy_tests.membership_inference_attack"

# (module path under the compat root, names, the keras-privacy module that defines them)
ALIASES = [
    (f"{MIA}.data_structures", ["AttackInputData", "SlicingSpec", "AttackType"], pt),
    (f"{MIA}.data_structures", ["SingleMembershipProbabilityResult"], membership_probability),
    (f"{MIA}.membership_inference_attack", ["run_attacks"], pt),
    (
        f"{MIA}.membership_inference_attack",
        ["run_membership_probability_analysis"],
        membership_probability,
    ),
    (f"{MIA}.seq2seq_mia", ["Seq2SeqAttackInputData", "run_seq2seq_attack"], seq2seq),
    (f"{MIA}.plotting", ["plot_roc_curve", "plot_histograms"], "plotting"),
    (f"{MIA}.privacy_report", ["plot_by_epochs"], "plotting"),
    (f"{ROOT}.membership_inference_attack.data_structures", ["AttackInputData"], pt),
    (f"{ROOT}.membership_inference_attack.membership_inference_attack", ["run_attacks"], pt),
]


@pytest.mark.parametrize("module, names, native", ALIASES)
def test_tf_privacy_paths_are_aliases_not_copies(module, names, native):
    if native == "plotting":
        native = importlib.import_module("keras_privacy.privacy_tests.plotting")
    compat = importlib.import_module(module)
    for name in names:
        assert getattr(compat, name) is getattr(native, name)
        assert name in compat.__all__


def _two_class_input(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels_train, labels_test = rng.integers(0, 3, n), rng.integers(0, 3, n)
    logits_train, logits_test = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    logits_train[np.arange(n), labels_train] += 2.0  # members: more confident
    logits_test[np.arange(n), labels_test] += 0.5
    return pt.AttackInputData(
        logits_train=logits_train,
        logits_test=logits_test,
        labels_train=labels_train,
        labels_test=labels_test,
    )


def test_run_attacks_accepts_backend_and_returns_slice_indices():
    data = _two_class_input()
    spec = pt.SlicingSpec(entire_dataset=True, by_class=True)
    types = [pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.LOGISTIC_REGRESSION]
    plain = pt.run_attacks(data, spec, types)
    with_forms = pt.run_attacks(data, spec, types, backend="threading", return_slice_indices=True)
    for a, b in zip(plain.single_attack_results, with_forms.single_attack_results, strict=True):
        assert a.get_auc() == b.get_auc()  # the backend changes speed, not results
        if b.slice_spec.entire_dataset:
            assert b.train_indices is None and b.test_indices is None
        else:
            cls = b.slice_spec.value
            np.testing.assert_array_equal(b.train_indices, np.flatnonzero(data.labels_train == cls))
            np.testing.assert_array_equal(b.test_indices, np.flatnonzero(data.labels_test == cls))
    assert plain.single_attack_results[0].train_indices is None


def test_get_result_with_max_epsilon_and_tf_privacy_dataframe():
    data = _two_class_input()
    results = pt.run_attacks(
        data,
        pt.SlicingSpec(entire_dataset=True, by_class=True),
        [pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.THRESHOLD_ENTROPY_ATTACK],
    )
    best = max(results.single_attack_results, key=lambda r: r.get_epsilon_lower_bound())
    assert results.get_result_with_max_epsilon() is best
    ours = results.calculate_pd_dataframe()
    theirs = results.calculate_pd_dataframe(columns="tf_privacy")
    assert list(theirs.columns) == [
        "slice feature",
        "slice value",
        "train size",
        "test size",
        "attack type",
        "Attacker advantage",
        "Positive predictive value",
        "AUC",
        "Epsilon lower bound_1",
        "Epsilon lower bound_2",
        "Epsilon lower bound_3",
        "Epsilon lower bound_4",
        "Epsilon lower bound_5",
    ]
    assert "Epsilon lower bound" in ours.columns and "TPR at 1% FPR" in ours.columns
    for column in ("AUC", "Attacker advantage", "Positive predictive value"):
        np.testing.assert_array_equal(theirs[column].to_numpy(), ours[column].to_numpy())
    np.testing.assert_array_equal(
        theirs["Epsilon lower bound_1"].to_numpy(), ours["Epsilon lower bound"].to_numpy()
    )
    assert theirs["Epsilon lower bound_5"].isna().all()
    assert theirs["slice feature"][0] == "Entire dataset" and theirs["slice value"][0] == ""
    assert set(theirs["slice feature"][2:]) == {"class"} and theirs["slice value"][2] == "0"
    with pytest.raises(ValueError, match="columns"):
        results.calculate_pd_dataframe(columns="other")


def _sigmoid_bce(labels, logits):
    p = 1.0 / (1.0 + np.exp(-logits))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(axis=1)


def test_multilabel_input_is_detected_and_attacked_on_the_summed_loss():
    rng = np.random.default_rng(1)
    n, classes = 200, 4
    labels_train = (rng.random((n, classes)) < 0.5).astype(int)
    labels_test = (rng.random((n, classes)) < 0.5).astype(int)
    labels_train[0] = labels_test[0] = [1, 1, 0, 0]  # certainly multi-hot
    logits_train = rng.normal(size=(n, classes)) + 2.0 * (2 * labels_train - 1)
    logits_test = rng.normal(size=(n, classes)) + 0.5 * (2 * labels_test - 1)
    data = pt.AttackInputData(
        logits_train=logits_train,
        logits_test=logits_test,
        labels_train=labels_train,
        labels_test=labels_test,
    )
    assert data.is_multilabel_data() and data.multilabel_data
    expected_train = _sigmoid_bce(labels_train, logits_train)
    np.testing.assert_allclose(data.get_loss_train(), expected_train, rtol=1e-12)
    np.testing.assert_allclose(
        data.get_loss_test(), _sigmoid_bce(labels_test, logits_test), rtol=1e-12
    )
    result = pt.run_attacks(data).single_attack_results[0]
    by_hand = pt.run_attacks(
        pt.AttackInputData(
            loss_train=expected_train, loss_test=_sigmoid_bce(labels_test, logits_test)
        )
    ).single_attack_results[0]
    assert result.get_auc() == pytest.approx(by_hand.get_auc(), abs=1e-12)
    assert result.get_auc() > 0.7
    with pytest.raises(NotImplementedError):
        pt.run_attacks(data, attack_types=[pt.AttackType.THRESHOLD_ENTROPY_ATTACK])
    # slicing keeps working (the flag travels with the slice)
    pt.run_attacks(data, pt.SlicingSpec(entire_dataset=True, by_percentiles=True))


def test_force_multilabel_data_with_one_hot_rows_and_given_per_class_losses():
    one_hot = np.eye(3, dtype=int)[[0, 1, 2, 0]]
    probs = np.full((4, 3), 0.25)
    data = pt.AttackInputData(
        probs_train=probs,
        probs_test=probs,
        labels_train=one_hot,
        labels_test=one_hot,
        force_multilabel_data=True,
    )
    expected = -(np.log(0.25) + 2 * np.log(0.75))
    np.testing.assert_allclose(data.get_loss_train(), expected)
    per_class = np.arange(8.0).reshape(4, 2)
    given = pt.AttackInputData(loss_train=per_class, loss_test=per_class, multilabel_data=True)
    np.testing.assert_array_equal(given.get_loss_train(), [1.0, 5.0, 9.0, 13.0])
    with pytest.raises(ValueError):  # one-hot 2-D labels are not multi-label unless forced
        pt.AttackInputData(
            probs_train=probs, probs_test=probs, labels_train=one_hot, labels_test=one_hot
        )


def test_membership_probability_by_hand():
    data = pt.AttackInputData(
        loss_train=np.array([0.1, 0.1, 1.0]), loss_test=np.array([1.0, 1.0, 10.0])
    )
    results = membership_probability.run_membership_probability_analysis(data, num_bins=2)
    (single,) = results.membership_prob_results
    # bins on log scale: [0.1, 1), [1, 10]; members 2/3 and 1/3, non-members 0 and 1
    np.testing.assert_allclose(single.train_membership_probs, [1.0, 1.0, 0.25])
    np.testing.assert_allclose(single.test_membership_probs, [0.25, 0.25, 0.25])
    thresholds, precision, recall = single.attack_with_varied_thresholds([0.2, 0.5, 1.1])
    np.testing.assert_array_equal(thresholds, [0.2, 0.5])  # 1.1 flags nobody
    np.testing.assert_allclose(precision, [0.5, 1.0])
    np.testing.assert_allclose(recall, [1.0, 2 / 3])
    text = results.summary(threshold_list=[0.5])
    assert "precision-recall pair is (1.0000, 0.6667)" in text and "AUC" in text


def test_membership_probability_matches_numpy_histograms():
    rng = np.random.default_rng(3)
    train, test = rng.exponential(0.5, 500), rng.exponential(1.0, 400)
    probs_train, probs_test = membership_probability.membership_probabilities(train, test, 15)
    edges = np.logspace(
        np.log10(min(train.min(), test.min())), np.log10(max(train.max(), test.max())), 16
    )
    h_in = np.histogram(train, edges)[0] / train.size
    h_out = np.histogram(test, edges)[0] / test.size
    with np.errstate(invalid="ignore"):
        per_bin = h_in / (h_in + h_out)
    index = np.fmin(np.digitize(train, edges), 15) - 1
    np.testing.assert_allclose(probs_train, per_bin[index])
    assert probs_test.shape == (400,)


def test_seq2seq_attack_ranks_by_hand():
    rng = np.random.default_rng(4)
    vocab, batches = 6, 8

    def batch(member: bool):
        logits = rng.normal(size=(3, 5, vocab))
        labels = rng.integers(0, vocab, size=(3, 5, 1))
        if member:  # the true token gets the top logit
            np.put_along_axis(logits, labels, logits.max(axis=2, keepdims=True) + 1.0, axis=2)
        return logits, labels

    train = [batch(True) for _ in range(batches)]
    test = [batch(False) for _ in range(batches)]
    data = seq2seq.Seq2SeqAttackInputData(
        logits_train=iter([b[0] for b in train]),
        logits_test=iter([b[0] for b in test]),
        labels_train=iter([b[1] for b in train]),
        labels_test=iter([b[1] for b in test]),
        vocab_size=vocab,
        train_size=batches,
        test_size=batches,
    )
    results = seq2seq.run_seq2seq_attack(data)
    result = results.single_attack_results[0]

    def mean_rank(logits, labels):
        ranks = [
            stats.rankdata(-token_logits, method="min")[label] - 1
            for seq_logits, seq_labels in zip(logits, labels[..., 0], strict=True)
            for token_logits, label in zip(seq_logits, seq_labels, strict=True)
        ]
        return np.mean(ranks)

    np.testing.assert_allclose(
        -result.membership_scores_test, [mean_rank(*b) for b in test], rtol=1e-12
    )
    assert np.all(result.membership_scores_train == 0.0)
    assert result.get_auc() == pytest.approx(1.0)
    metadata = results.privacy_report_metadata
    assert metadata.accuracy_train == 1.0
    losses = [
        -sum(
            b[0][s, t, b[1][s, t, 0]] - np.log(np.exp(b[0][s, t]).sum())
            for s in range(3)
            for t in range(5)
        )
        for b in test
    ]
    assert metadata.loss_test == pytest.approx(np.sum(losses) / (3 * batches))


def _tf_privacy_interpolation(canaries, references):
    """TF Privacy's convention, by hand: |R| = len(references), ties go to the references."""
    references = np.asarray(references)
    return np.array(
        [math.log2(references.size) - math.log2(1 + np.sum(references <= c)) for c in canaries]
    )


def test_exposure_dict_of_sequences_form_and_the_documented_difference():
    rng = np.random.default_rng(5)
    references = rng.normal(50, 5, size=999)
    perplexities = {1: rng.normal(48, 5, size=7), 10: rng.normal(30, 5, size=4)}
    compat = importlib.import_module(f"{ROOT}.privacy_tests.secret_sharer.exposures")
    interpolated = compat.compute_exposure_interpolation(perplexities, references)
    extrapolated = compat.compute_exposure_extrapolation(perplexities, references)
    assert set(interpolated) == {1, 10} and set(extrapolated) == {1, 10}
    for key, values in perplexities.items():
        np.testing.assert_array_equal(
            interpolated[key], native_sharer.compute_exposure_interpolation(values, references)
        )
        np.testing.assert_array_equal(
            extrapolated[key], native_sharer.compute_exposure_extrapolation(values, references)
        )
        # no ties here: ours = TF Privacy's + log2((n + 1) / n)
        np.testing.assert_allclose(
            interpolated[key],
            _tf_privacy_interpolation(values, references) + math.log2(1000 / 999),
            rtol=1e-12,
        )
    # the worst canary: TF Privacy's exposure is negative, ours is 0
    worst = {0: [references.max() + 1.0]}
    assert compat.compute_exposure_interpolation(worst, references)[0][0] == 0.0
    assert _tf_privacy_interpolation(worst[0], references)[0] < 0
    # numbers in a mapping still give numbers
    scalar = native_sharer.compute_exposure_interpolation({"a": 10.0}, references)
    assert isinstance(scalar["a"], float)
