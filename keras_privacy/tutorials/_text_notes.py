"""The written part of the text tutorial's report, computed from the measured rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras_privacy.tutorials._report import Row, chance_auc_halfwidth


def sections(
    rows: Sequence[Row], names: Sequence[str], n_train: int, n_test: int, args, seconds: float
) -> list[tuple[str, str]]:
    """(heading, Markdown) pairs for the text report."""
    plain = next(r for r in rows if not r.private)
    private = [r for r in rows if r.private]
    exposure_keys = [k for k in plain.metrics if k.startswith("exposure")]
    ceiling = math.log2(10**4)
    flag = "--full " if args.full else ""
    how = f"""
`python -m keras_privacy.tutorials.text {flag}--report-dir DIR`: {len(rows)} trained
models, {seconds:.0f} s for training, canary scoring and attacks together. DP-SGD: Poisson
sampling (q = batch / N), per-example clipping to C, Gaussian noise σC per update, Adam;
σ planned with `kp.compute_noise_multiplier` for each target ε at δ = {args.delta:g} (PLD
accountant). The non-private model uses batch {plain.batch_size} and learning rate
{plain.learning_rate:g} (what suits it without noise). "exposure ×r" is the mean exposure
(bits, at most {ceiling:.1f}) of the 3 canaries inserted r times; MIA AUC is the best of
the loss-threshold and logistic-regression membership attacks ({n_train} members,
{n_test} non-members: chance is 0.5 ± {chance_auc_halfwidth(n_train, n_test):.3f}).
"""
    data = f"""
Debian's `wordnet-base` installs the WordNet 3.0 database (`/usr/share/wordnet/data.noun`,
checked at start; nothing is downloaded). Every noun synset's definition (the gloss
before any quoted example) is labelled by its lexicographer file; the {len(names)} largest
are kept: {", ".join(names)}. Words are hashed (CRC-32 mod 4,095, plus 1) into 4,096 ids and
cut or padded to 24: the vocabulary depends on no training text, so it leaks nothing
(a vocabulary of the most frequent training words would be a release not covered by ε).
The model has no position encoding: a definition's topic is mostly in which words it uses.
"""
    lines = []
    if exposure_keys:

        def cells(row: Row) -> str:
            return ", ".join(f"{row.metrics[k]:.1f}" for k in exposure_keys)

        counts = ", ".join(k.split("×")[1] for k in exposure_keys)
        lines.append(
            f"Mean exposure (bits) of the canaries inserted {counts} times: "
            f"{cells(plain)} without DP"
        )
        lines += [f"; {cells(r)} at ε = {r.epsilon:.2f}" for r in private]
        lines.append(". ")
    reading = (
        "".join(lines)
        + f"""
Exposure is what an attacker who can query the model learns about a secret: a code the
model never saw has exposure about log2 e ≈ 1.4 bits on average (its rank among the 10^4
codes is uniform), and {ceiling:.1f} bits means the model ranks the inserted code first.
Without DP the inserted codes rank above chance. They do not reach the top: the
hashed vocabulary puts each nonsense word in a bucket shared with about eight real words,
whose training pulls that bucket toward their own topics, and a bag-of-words model
scores the cross combinations of inserted words as highly as the canaries. With DP-SGD
no single row can move the model much, so a canary seen once is at chance; a code
repeated r times is a group of r examples, protected only at group privacy (about r·ε),
so repeated canaries can keep some exposure at large ε. One set of 9 canaries and one
training run per row: differences of a bit or so are noise.

Membership inference: the non-private model's train and test accuracy are close, so the
attacks gain little on average, and DP keeps them at chance. The canaries show what an
average over {n_train:,} rows hides: the memorisation of individual rows.
"""
    )
    return [("How this was run", how), ("Data", data), ("Reading the table", reading)]
