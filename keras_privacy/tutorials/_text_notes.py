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
    best = max(private, key=lambda r: r.epsilon, default=None)
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
    if best is not None and exposure_keys:
        top = exposure_keys[-1]
        lines.append(
            f"The canaries inserted most often ({top}) reach {plain.metrics[top]:.1f} bits "
            f"of exposure without DP and {best.metrics[top]:.1f} bits with DP-SGD at "
            f"ε = {best.epsilon:.2f}. "
        )
    reading = (
        "".join(lines)
        + """
A canary's exposure is what an attacker who can query the model learns about the secret:
about 1.4 bits is chance (the code's rank among the 10^4 codes is uniform), 13.3 bits means
the model ranks the inserted code first. DP-SGD bounds every example's influence, so a
code seen once (or a few times) cannot be singled out; a code repeated r times is a
group of r examples, protected at group privacy (roughly r·ε), which is why the ×16
canaries are the last to lose their exposure as ε grows.

Membership inference on this model is weak even without DP (the model generalises:
train and test accuracy are close), so the MIA AUC column mainly shows that DP keeps it
at chance; the canaries show memorisation that an average over 50,000 rows hides.
"""
    )
    return [("How this was run", how), ("Data", data), ("Reading the table", reading)]
