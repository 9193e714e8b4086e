"""The written part of the pretrained-language-model tutorial's report, from its rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras_privacy.tutorials._report import Row, chance_auc_halfwidth


def _gap_table(rows: Sequence[Row]) -> str:
    """Per target epsilon: each way's test perplexity, and the share of the DP-from-scratch
    gap to the best non-private perplexity that pretraining closes."""
    plain = [r for r in rows if not r.private]
    best_plain = min(plain, key=lambda r: r.metrics["perplexity"])
    ways = list(dict.fromkeys(r.model for r in rows))
    targets = sorted({r.target_epsilon for r in rows if r.private})
    header = ["target ε", *ways, *(f"gap closed: {w}" for w in ways[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reference = best_plain.metrics["perplexity"]
    for target in targets:
        found = {r.model: r.metrics["perplexity"] for r in rows if r.target_epsilon == target}
        cells = [f"{target:g}", *(f"{found[w]:.2f}" if w in found else "—" for w in ways)]
        scratch = found.get(ways[0], math.nan)
        for way in ways[1:]:
            gap = scratch - reference
            closed = (scratch - found.get(way, math.nan)) / gap if gap > 0 else math.nan
            cells.append("—" if math.isnan(closed) else f"{100 * closed:.0f} %")
        lines.append("| " + " | ".join(cells) + " |")
    plain_cells = ", ".join(f"{r.model} {r.metrics['perplexity']:.2f}" for r in plain)
    return (
        "\n".join(lines) + f"\n\nNon-private test perplexity: {plain_cells}. The gap closed is "
        "(DP from scratch − DP pretrained) / (DP from scratch − best non-private), at the "
        "same ε: 100 % means DP fine-tuning of the pretrained model is as good as the best "
        "non-private model; 0 % means pretraining did not help.\n"
    )


def sections(rows, corpus, validation, public_counts, pretrained, args, seconds) -> list:
    """(heading, Markdown) pairs for the report."""
    n_train, n_test = int((~corpus.train_is_canary).sum()), len(corpus.test[0])
    flag = "--quick " if args.quick else ""
    zero = pretrained["metrics"]
    memory = pretrained.get("peak memory (GB)", math.nan)
    memory_text = "not measured" if math.isnan(memory) else f"{memory:.2f} GB peak"
    how = f"""
`python -m keras_privacy.tutorials.pretrained_language_model {flag}--report-dir DIR`:
{len(rows)} reported models, {seconds:.0f} s in all (pretraining, training, canary scoring,
attacks, learning-rate selection). Model: keras-hub `GPT2Backbone`, 2 layers × 128, 4 heads,
feed-forward 512, tied output embedding, {pretrained["parameters"]:,} parameters; the
character vocabulary of the fortunes tutorial. DP-SGD: Poisson sampling, each sequence's
gradient (of the trainable weights) clipped to C = 1, Gaussian noise σC once per update,
Adam; σ planned per target ε at δ = {args.delta:g} (PLD). The learning rate of each DP way
was chosen at the middle target ε by validation perplexity (table below); non-private runs
use batch 128 and the first rate of each grid. Perplexity is per character on the test
split; MIA AUC is the loss-threshold attack, the {n_train:,} training sequences cut from
fortunes against the {n_test:,} test sequences (chance 0.5 ±
{chance_auc_halfwidth(n_train, n_test):.3f}). "peak memory" is each run's own process
(resident set, TensorFlow's start-up included).
"""
    data = f"""
Public: the GNU Collaborative International Dictionary of English (Debian `dict-gcide`),
{public_counts["paragraphs"]:,} cleaned paragraphs, of which {public_counts["dropped"]} share
8 consecutive words with some fortune and were dropped; a random {public_counts["used"]:,}
({public_counts["characters"]:,} characters, {public_counts["sequences"]:,} sequences of ≤ 30
characters) pretrained the model non-privately for
{pretrained["epochs"]} epoch(s) ({pretrained["seconds"]:.0f} s, {memory_text}).

Private: Debian's fortunes with the canaries of the language-model tutorial
({corpus.canary_format.space_size:,} possible secrets); {len(corpus.train[0]):,} training
sequences, {len(validation[0]):,} validation sequences (a tenth of the training fortunes,
held out whole, for the learning rate only), {n_test:,} test sequences.

Before any private training, the pretrained model has test perplexity {zero["perplexity"]:.2f}
(accuracy {zero["accuracy"]:.3f}) and canary exposure ×64 {zero["exposure ×64"]:.1f}: ε = 0,
as it saw no private data.
"""
    finding = f"""
Does public pretraining close the gap between DP and non-private training?

{_gap_table(rows)}
![canary exposure ×16 vs ε](exposure_16_vs_epsilon.png)
"""
    return [("How this was run", how), ("Data", data), ("The finding", finding)]
