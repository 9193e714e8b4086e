"""The written part of the health tutorial's report, computed from the measured rows."""

from __future__ import annotations

from collections.abc import Sequence

import keras_privacy as kp
from keras_privacy.tutorials._report import OBJECTIVE, Row, chance_auc_halfwidth, summarize
from keras_privacy.tutorials._training import updates_per_epoch


def _data_text(train, test) -> str:
    n_train, n_test = len(train[0]), len(test[0])
    malignant = int(train[1].sum() + test[1].sum())
    return f"""
Wisconsin Diagnostic Breast Cancer (WDBC): {n_train + n_test} patients ({malignant} malignant),
30 real-valued features of cell nuclei measured on a digitised image of a fine-needle
aspirate. scikit-learn ships the table inside its wheel
(`sklearn/datasets/data/breast_cancer.csv`, read by `sklearn.datasets.load_breast_cancer`):
nothing is downloaded, and the tutorial checks the table's shape (569 × 30) before use.

Split once (stratified, seed 0): {n_train} training rows (the private data; the
membership-inference *members*) and {n_test} held-out rows (test set and *non-members*).
Features are standardised with the training rows' mean and standard deviation. Those 60
numbers are computed from private data and are **not** covered by ε; a strict pipeline
would take the scaling from public knowledge (published feature ranges) or spend a small
part of the budget on noisy statistics.
"""


def _reading_text(rows: Sequence[Row], n_train: int, n_test: int) -> str:
    summaries = summarize(rows)
    halfwidth = chance_auc_halfwidth(n_train, n_test)
    lines = []
    for s in summaries:
        if s.first.target_epsilon == 1.0 and s.first.accountant != OBJECTIVE:
            lines.append(
                f"- {s.first.model} at ε = {s.epsilon:.2f}: σ = {s.first.noise_multiplier:.2f}, "
                f"test AUROC {s.metrics['test AUROC'][0]:.3f}."
            )
    sigma_lines = "\n".join(lines)
    return f"""
N = {n_train} is small for DP-SGD. Each update adds noise of standard deviation σC to a
sum of about B = batch clipped gradients, so the noise in the averaged gradient is σC/B,
and σ must grow with the number of updates for a fixed ε. With N this small one patient's
gradient is a large share of every batch, and the noise needed to hide it is large:

{sigma_lines}

What helps on small data:

- **Fewer parameters.** The noise vector has one coordinate per parameter while the
  clipped signal does not grow with the model: logistic regression (31 parameters) loses
  less to DP than the MLP (513) in the table above.
- **Large batches, few epochs.** For a fixed ε the signal-to-noise ratio of an update
  grows roughly like B/σ, and σ grows more slowly than B (q = B/N): large batches with a
  proportionally larger learning rate are the DP-SGD recipe. `--full` adds a batch-size
  ablation at ε = 1.
- **The clip norm C.** C trades bias (clipping shrinks large gradients) against noise
  (std σC). With a learning rate scaled as 1/C, a smaller C changes only the bias;
  `--full` shows C ∈ {{0.1, 1, 10}} at ε = 1.

**Without DP-SGD.** The "logistic regression (objective perturbation)" rows are the same
model made private another way (`keras_privacy.DPLogisticRegression`): each row is scaled to
L2 norm at most R = 1 (intercept column included; the C column), the summed logistic loss
gets an L2 penalty of at least 1 and a random linear term b·θ with b ~ N(0, (σR)² I) (σ
column), and the objective is minimized exactly, once, on all N rows. Its (ε, δ) comes from
its own analysis (add/remove one row), not from an accountant, and is exactly the target.
Its settings were fixed before looking at this split; `benchmarks/logistic_regression_wdbc.py`
chooses them on a validation split instead, which matters most at small ε.

Membership inference: {n_train} members against {n_test} non-members. An attack that
knows nothing scores AUC 0.5 ± {halfwidth:.3f} (95%, Hanley–McNeil) on sets this size, so
differences smaller than that are noise. A well-regularised logistic regression leaks
little even without DP; DP-SGD's guarantee bounds what *any* attack can do (for small ε
the AUC is provably close to 0.5), whereas the measured AUC is only what these attacks
found.
"""


def _user_text(rows: Sequence[Row], n_train: int, delta: float) -> str:
    row = next((r for r in rows if r.target_epsilon == 1.0 and r.accountant != OBJECTIVE), None)
    if row is None:
        return "Run with ε = 1 among the targets to see the user-level numbers."
    lines = []
    for k in (1, 2, 4):
        epsilon = kp.compute_epsilon(
            n_train,
            row.batch_size,
            row.noise_multiplier,
            delta=delta,
            steps=int(row.epochs) * updates_per_epoch(n_train, row.batch_size),
            max_examples_per_user=None if k == 1 else k,
        )
        lines.append(f"| {k} | {epsilon:.3f} |")
    table = "\n".join(lines)
    return f"""
Here each row is one patient, so example-level ε is patient-level ε. Clinical data often
has several rows per person (both breasts, follow-up visits). Then the unit to protect is
the patient: a patient with k rows is protected at a larger ε. The same run as the
"{row.model}, ε ≤ 1" row (σ = {row.noise_multiplier:.3f}, batch {row.batch_size},
{row.epochs:g} epochs), accounted for patients with up to k rows
(`kp.compute_epsilon(..., max_examples_per_user=k)`):

| k rows per patient | ε at δ = {delta:g} |
|---|---|
{table}

To keep patient-level ε at the target, plan σ with `max_examples_per_user` (the
`keras-privacy noise --max-examples-per-user K` command does it), or cap each patient's
rows at k before training. Better still, train at the patient level:
`fit(x, y, user_ids=patient_ids, max_examples_per_user=k)` Poisson-samples patients and
clips the **sum** of each patient's gradients to C as one unit, so σ is planned over
patients (N and B count patients) instead of being inflated for groups of k rows
(`docs/user_level.md`; the recommendation tutorial compares the two on MovieLens users).
This data set has one row per patient, so here the two are the same training.
"""


def sections(
    rows: Sequence[Row], train, test, delta: float, seconds: float, full: bool, extra_runs: int = 0
) -> list[tuple[str, str]]:
    """(heading, Markdown) pairs for the health report (``extra_runs``: ablation runs)."""
    n_train, n_test = len(train[0]), len(test[0])
    runs = len(rows) + extra_runs
    mode = "--full" if full else "quick (default)"
    how = f"""
`python -m keras_privacy.tutorials.health {"--full " if full else ""}--report-dir DIR`:
{mode} run, {runs} trained models (one row per seed), {seconds:.0f} s for training and
attacks together. DP-SGD: Poisson sampling (q = batch / N), per-example clipping to C,
Gaussian noise σC per update; σ planned with `kp.compute_noise_multiplier` for the
target ε at δ = {delta:g} (PLD accountant) and the ε column is the accountant's value for
the updates actually made. Optimizer: SGD with momentum 0.9. Test AUROC and accuracy on
the {n_test} held-out rows; MIA AUC: the best of the loss-threshold and
logistic-regression attacks of `keras_privacy.privacy_tests`. The objective-perturbation
rows: `DPLogisticRegression(epsilon=target, delta={delta:g}, C=1, data_norm_bound=1)`,
settings fixed in advance (see "Reading the table").
"""
    return [
        ("How this was run", how),
        ("Data", _data_text(train, test)),
        ("Reading the table", _reading_text(rows, n_train, n_test)),
        ("Patients with several rows: user-level privacy", _user_text(rows, n_train, delta)),
    ]
