"""The written part of the language-model tutorial's report, computed from the rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras_privacy.tutorials._report import Row, chance_auc_halfwidth


def _exposure_table(rows: Sequence[Row], counts: Sequence[int]) -> str:
    """Exposure by repetition count, interpolated and extrapolated, one line per model."""
    header = ["model", "ε", *(f"×{r}" for r in counts), *(f"×{r} (extrap.)" for r in counts)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        epsilon = "∞" if math.isinf(row.epsilon) else f"{row.epsilon:.2f}"
        cells = [row.model, epsilon]
        cells += [f"{row.metrics[f'exposure ×{r}']:.1f}" for r in counts]
        cells += [f"{row.metrics[f'exposure ×{r} (extrapolated)']:.1f}" for r in counts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sections(rows: Sequence[Row], corpus, args, seconds: float) -> list[tuple[str, str]]:
    """(heading, Markdown) pairs for the language-model report."""
    plain = next(r for r in rows if not r.private)
    counts = sorted(set(corpus.repetitions))
    n_train, n_test = int((~corpus.train_is_canary).sum()), len(corpus.test[0])
    ceiling = corpus.max_exposure
    flag = "--full " if args.full else ""
    how = f"""
`python -m keras_privacy.tutorials.language_model {flag}--report-dir DIR`: {len(rows)}
trained models, {seconds:.0f} s for training, canary scoring and attacks together. DP-SGD:
Poisson sampling (q = batch / N), each sequence's gradient clipped to C, Gaussian noise
σC per update, Adam; σ planned with `kp.compute_noise_multiplier` for each target ε at
δ = {args.delta:g} (PLD accountant) and the exact number of updates. The non-private model
uses batch {plain.batch_size}, learning rate {plain.learning_rate:g} and {plain.epochs:g}
epochs (what suits it without noise). Perplexity is per character, exp of the mean
cross-entropy over every held-out character and end-of-sequence token; accuracy is the
next-character accuracy on the same positions. MIA AUC is the loss-threshold attack on each
sequence's mean loss: the {n_train:,} training sequences cut from fortunes (the canary
copies left out) against the {n_test:,} held-out ones; chance is
0.5 ± {chance_auc_halfwidth(n_train, n_test):.3f}.
"""
    data = f"""
Debian's `fortunes` (`/usr/share/games/fortunes`, checked at start; nothing is
downloaded): {len(corpus.train_fortunes) + len(corpus.test_fortunes):,} distinct fortunes
from seven files, lower-cased, characters outside a fixed set of 48 letters, digits and
punctuation turned into spaces. A tenth of the fortunes ({len(corpus.test_fortunes):,}) is
held out whole; the others are wrapped at word boundaries into sequences of at most 30
characters. The vocabulary is the fixed character set, so it reveals nothing about the
training text. Canaries "my number is ddddd" ({corpus.canary_format.space_size:,} possible
secrets): three inserted each {", ".join(str(r) for r in counts if r)} times, and three
controls never inserted ("×0").
"""
    reading = f"""
Exposure is log2 |R| − log2 rank of a canary's log-perplexity of its digits among all
{corpus.canary_format.space_size:,} candidates (at most {ceiling:.1f} bits; a secret the
model never saw has about log2 e ≈ 1.4 on average). Extrapolated exposure fits a skew-normal
to the candidates' log-perplexities and can exceed {ceiling:.1f} bits when a canary is far
ahead of every other candidate. Each cell is the mean of three canaries from one training
run: differences of a bit or two are noise.

ε bounds what the model reveals about **one sequence**. A canary inserted k times is k
sequences, protected only by group privacy of size k (roughly kε): at ε = 8 a canary seen
16 or 64 times has no meaningful protection, and its exposure shows how much the model
actually memorised. Without DP the model learns the repeated canaries first; DP-SGD's
clipping bounds each copy's pull and the noise hides the rarely repeated ones.

{_exposure_table(rows, counts)}"""
    return [("How this was run", how), ("Data", data), ("Reading the table", reading)]
