"""The privacy report of one trained DP model: one HTML page, its PNGs and a JSON summary.

:func:`privacy_report` reads what the model's DP step counted (its
:class:`~keras_privacy.training.record.TrainingRecord`) and writes, into a folder,

* ``report.html``: self-contained (inline CSS, figures embedded as base64 PNG), with
  a headline (ε at δ and what it means), the DP settings and the sampling actually used,
  ε(δ) from the PLD and the RDP accountant, ε over the course of training, membership
  inference ROC curves on log-log axes with TPR at 0.1% and 1% FPR beside the bound that
  (ε, δ)-DP puts on any attack, an audit's empirical lower bound beside the accountant's ε,
  and secret-sharer exposures;
* the same figures as PNG files, and ``report.json`` (every number shown).

A section whose input was not given says what to pass to fill it; no number is ever shown
that was not measured or computed for this model. Framework-free unless ``membership`` is
given as data to run the model on (which needs the Keras model itself).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_privacy.reporting import figures, record_data
from keras_privacy.reporting.context import ReportContext, fmt_delta, fmt_eps
from keras_privacy.reporting.measured_sections import (
    audit_section,
    exposure_section,
    membership_results,
    membership_section,
)
from keras_privacy.reporting.page import (
    Figure,
    Page,
    Section,
    callout,
    format_number,
    paragraph,
    table,
)
from keras_privacy.training.record import POISSON, TrainingRecord

__all__ = ["privacy_report", "membership_results"]

_SAMPLING_WORDS = {
    "poisson": "Poisson sampling (each example joins each batch independently with "
    "probability q; amplification by subsampling applies)",
    "shuffle": "shuffled fixed-size batches (each example once per epoch; no amplification "
    "by sampling is claimed)",
    "fixed_batches": "batches as they arrived (tf.data / generator; accounted as one "
    "Gaussian per pass, no amplification by sampling)",
}


def _headline(context: ReportContext) -> str:
    record, epsilon, delta = context.record, context.epsilon, context.delta
    other = "rdp" if context.accountant == "pld" else "pld"
    if record.total_updates == 0 and not record.other_releases:
        return '<div class="big">No DP training recorded</div>' + paragraph(
            "This model has made no noised update yet: there is nothing to report."
        )
    if not math.isfinite(epsilon):
        return '<div class="big">ε = ∞ <small>not differentially private</small></div>' + paragraph(
            "At least one update added no noise (noise multiplier 0), so no finite ε "
            "holds: treat this model as trained without DP."
        )
    factor = math.exp(epsilon)
    tpr = float(figures.dp_roc_bound(np.array([0.01]), epsilon, delta)[0])
    sentence = (
        "Adding or removing any one training example changes the probability of any outcome "
        f"of this training by at most a factor e<sup>ε</sup> = {factor:.3g}, except with "
        f"probability δ = {fmt_delta(delta)}. So an attacker who may wrongly accuse at most "
        f"1% of non-members can find at most <b>{tpr:.1%}</b> of the members, whatever they do."
    )
    cards = [
        (f"ε ({context.accountant.upper()})", fmt_eps(epsilon)),
        ("δ", fmt_delta(delta)),
        (f"ε ({other.upper()})", fmt_eps(context.epsilon_other)),
        ("optimizer updates", f"{record.total_updates:,}"),
    ]
    current = record.current
    if current is not None:
        cards.append(
            ("noise σ / clip C", f"{current.noise_multiplier:.3g} / {current.l2_norm_clip:.3g}")
        )
    attacks = context.data.get("membership")
    if attacks:
        cards.append(("best attack AUC", f"{max(a['auc'] for a in attacks):.3f}"))
    audit = context.data.get("audit")
    if audit:
        cards.append(("audit: ε ≥", fmt_eps(audit["epsilon_lower_bound"])))
    exposures = context.data.get("canary_exposures")
    if exposures:
        top = max(max(v) for v in exposures.values())
        cards.append(("largest canary exposure", f"{top:.1f} bits"))
    card_html = "".join(
        f'<div class="card"><div class="label">{html.escape(k)}</div>'
        f'<div class="value">{html.escape(v)}</div></div>'
        for k, v in cards
    )
    return (
        f'<div class="big">ε = {fmt_eps(epsilon)} <small>at δ = {fmt_delta(delta)}, '
        f"{context.accountant.upper()} accountant, {context.record.privacy_unit}-level"
        "</small></div>"
        f"<p>{sentence}</p>"
        f'<div class="cards">{card_html}</div>'
    )


def _settings_section(context: ReportContext) -> Section:
    record, settings = context.record, context.settings
    rows = []
    for index, s in enumerate(record.segments, 1):
        q = s.sampling_probability
        epochs = s.updates * s.expected_batch_size / s.dataset_size if q is not None else None
        rows.append(
            [
                f"fit {index}",
                s.sampling,
                s.dataset_size,
                s.expected_batch_size,
                q,
                s.noise_multiplier,
                s.l2_norm_clip,
                "user (summed gradient)"
                if s.privacy_unit == "user"
                else "example"
                if not s.used_microbatching
                else f"microbatch of {s.examples_per_clipping_unit}",
                s.updates,
                epochs,
            ]
        )
    header = ["segment", "sampling", "N", "batch (expected)", "q = B/N", "σ", "C"]
    header += ["clipping unit", "updates", "epochs"]
    body = paragraph(
        "What the DP step itself counted (the model's privacy record), one row per fit: the "
        "accountant is told exactly this."
    )
    body += table(header, rows) if rows else paragraph("No fit has run yet.", "note")
    kinds = {s.sampling for s in record.segments if s.updates}
    for kind in sorted(kinds):
        body += paragraph(f"{kind}: {_SAMPLING_WORDS.get(kind, kind)}.", "note")
    if kinds and kinds != {POISSON}:
        body += callout(
            "Part of the training did not use Poisson sampling, so ε gets no amplification "
            "by subsampling there (it is much larger than a Poisson-sampled run of the same "
            "length would have). Train on in-memory arrays, where fit Poisson-samples every "
            "batch, for the smaller ε.",
            "warn",
        )
    if any(s.used_microbatching for s in record.segments if s.updates):
        body += callout(
            "Gradients were clipped per microbatch of several examples: one example changes "
            "one microbatch, so the sensitivity is 2C and the accountant uses σ/2.",
            "warn",
        )
    if record.other_releases:
        body += "<h3>Other releases from the same data (composed into every ε)</h3>"
        body += table(
            ["note", "DpEvent"],
            [[note or "—", type(event).__name__] for note, event in record.other_releases],
        )
    shown = {k: v for k, v in settings.items() if v is not None}
    if shown:
        body += "<h3>Model settings</h3>" + table(
            ["setting", "value"],
            [
                [k, format_number(v, 4) if isinstance(v, float) else str(v)]
                for k, v in shown.items()
            ],
        )
    body += paragraph(
        "Neighbouring datasets: add or remove one example under Poisson sampling, replace "
        "one example by a null example under fixed-size batches.",
        "note",
    )
    context.data["segments"] = [s.to_dict() for s in record.segments]
    context.data["other_releases"] = [note for note, _ in record.other_releases]
    return Section("DP settings and the sampling actually used", body, anchor="settings")


def _curves_section(context: ReportContext) -> Section:
    delta = context.delta
    low = min(delta, 1e-12)
    n = record_data.largest_dataset_size(context.record)
    high = min(1e-1, 1.0 / n) if n else 1e-2
    pick = sorted({d for d in (1e-10, 1e-8, 1e-6, delta) if low <= d <= high})
    deltas = sorted({*np.logspace(math.log10(low), math.log10(high), 25).tolist(), *pick})
    curves = record_data.epsilon_delta_curves(context.record, deltas, context.epsilon_at)
    png = figures.epsilon_delta_png(
        {name: (deltas, eps) for name, eps in curves.items()}, delta, context.epsilon
    )
    rows = [
        [fmt_delta(d), *(fmt_eps(curves[a][deltas.index(d)]) for a in ("pld", "rdp"))] for d in pick
    ]
    body = paragraph(
        "A DP guarantee is a curve, not a number: every δ has its ε. PLD (privacy loss "
        "distributions) is numerically tight; RDP (Rényi DP) is a looser, classic bound "
        "shown for comparison. Both compose the record's events with dp-accounting."
    )
    body += table(["δ", "ε (PLD)", "ε (RDP)"], rows)
    context.data["epsilon_delta"] = {"delta": deltas, **curves}
    figure = Figure(
        "epsilon_delta.png",
        png,
        "epsilon against delta, PLD and RDP",
        "ε(δ) of the whole training; the dot is the report's δ.",
    )
    return Section("ε(δ): PLD and RDP", body, [figure], anchor="epsilon-delta")


def _training_section(context: ReportContext) -> Section:
    record = context.record
    final = {name: at(context.delta) for name, at in context.epsilon_at.items()}
    updates, curves = record_data.epsilon_over_training(record, context.delta, final=final)
    segment = record.current
    per_epoch = None
    if len({(s.dataset_size, s.expected_batch_size) for s in record.segments}) == 1 and (
        segment is not None and segment.sampling_probability
    ):
        per_epoch = segment.dataset_size / segment.expected_batch_size
    starts = np.cumsum([0] + [s.updates for s in record.segments])[1:-1].tolist()
    png = figures.epsilon_training_png(updates, curves, per_epoch, context.delta, starts)
    body = paragraph(
        "ε at the report's δ after each number of optimizer updates, recomputed from the "
        "record cut at that point: this is the budget a run stopped there would have spent. "
        "ε grows roughly with the square root of the number of updates."
    )
    if starts:
        body += paragraph("Dotted lines: where a new fit began.", "note")
    half = updates[len(updates) // 2]
    body += paragraph(
        f"Half-way ({half:,} updates) ε was "
        f"{fmt_eps(curves[context.accountant][len(updates) // 2])}; at the end "
        f"({updates[-1]:,} updates) {fmt_eps(curves[context.accountant][-1])}."
    )
    context.data["epsilon_over_training"] = {"updates": updates, **curves}
    figure = Figure(
        "epsilon_over_training.png",
        png,
        "epsilon over training",
        f"ε at δ = {fmt_delta(context.delta)} against optimizer updates.",
    )
    return Section("ε over the course of training", body, [figure], anchor="epsilon-over-training")


# -- the report ----------------------------------------------------------------------


def privacy_report(
    model: Any,
    directory: str | os.PathLike,
    *,
    delta: float | None = None,
    accountant: str = "pld",
    membership: Any = None,
    audit: Any = None,
    canary_exposures: Mapping[int, Sequence[float]] | None = None,
    canary_space_size: int | None = None,
    title: str | None = None,
    notes: Sequence[tuple[str, str]] = (),
    seed: int = 0,
) -> Path:
    """Write the privacy report of a trained DP model into ``directory``; return the path
    of its ``report.html`` (beside it: the PNGs and ``report.json``).

    Args:
      model: a DP model (``DPModel``, ``DPSequential``, ``make_private``), the path of one
        saved as ``.keras`` (read without Keras), or its ``TrainingRecord``.
      directory: the folder to write (created if missing).
      delta: δ of the headline ε; default the largest power of ten below 1/N.
      accountant: ``"pld"`` (default) or ``"rdp"`` for the headline ε (the curves show both).
      membership: membership-inference input: ``((x_members, y_members), (x_non_members,
        y_non_members))`` with the Keras model as ``model``, an ``AttackInputData``, an
        ``AttackResults`` or ``SingleAttackResult`` list (entire-dataset results are plotted).
      audit: a :class:`keras_privacy.auditing.AuditResult`.
      canary_exposures: ``{times inserted: [exposure of each canary]}`` (secret sharer).
      canary_space_size: |R|, the number of candidate secrets (marks the largest exposure).
      title: the page's title (default: the model's name).
      notes: extra ``(heading, plain text)`` sections, written last.
      seed: seeds the attacks run on ``membership`` data.

    Raises:
      ValueError: not a DP model; bad ``delta``; unusable ``membership`` input.
      DatasetSizeUnknownError: a fit on batched data gave no ``dataset_size``.
    """
    from keras_privacy.accounting import _checks
    from keras_privacy.accounting.record_accounting import check_delta_for_record

    record, settings = record_data.load_record(model)
    accountant = _checks.check_accountant(accountant)
    delta = record_data.default_delta(record) if delta is None else _checks.check_delta(delta)
    check_delta_for_record(record, delta)
    epsilon_at = record_data.epsilon_functions(record)
    epsilon = float(epsilon_at[accountant](delta))
    other = "rdp" if accountant == "pld" else "pld"
    context = ReportContext(
        epsilon_at,
        record,
        settings,
        delta,
        accountant,
        epsilon,
        float(epsilon_at[other](delta)),
        {"delta": delta, "accountant": accountant, "epsilon": _json(epsilon)},
    )
    name = title or _model_name(model)
    page = Page(
        f"Privacy report: {name}",
        subtitle=f"{record.total_updates:,} DP updates in {len(record.segments)} fit(s); "
        f"{record.privacy_unit}-level guarantee.",
    )
    page.add(_settings_section(context))
    trained = record.total_updates > 0 and math.isfinite(epsilon)
    if trained:
        page.add(_curves_section(context))
        page.add(_training_section(context))
    else:
        why = (
            "No noised update has been recorded yet: train the model with fit first."
            if record.total_updates == 0
            else "ε is infinite (an update without noise): there is no curve to draw."
        )
        for heading, anchor in (
            ("ε(δ): PLD and RDP", "epsilon-delta"),
            ("ε over the course of training", "epsilon-over-training"),
        ):
            page.add(Section(heading, paragraph(why), filled=False, anchor=anchor))
    results = None if membership is None else membership_results(membership, model, delta, seed)
    page.add(membership_section(context, results))
    page.add(audit_section(context, audit))
    page.add(exposure_section(context, canary_exposures, canary_space_size))
    for heading, text in notes:
        body = "".join(paragraph(p) for p in text.split("\n\n"))
        page.add(Section(heading, body, badge=False))
    page.headline = _headline(context)  # after the sections: it summarises their numbers
    context.data["sections"] = {s.anchor: s.filled for s in page.sections}
    path = page.write(directory)
    (Path(directory) / "report.json").write_text(
        json.dumps(context.data, indent=1, default=_json), encoding="utf-8"
    )
    return path


def _model_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    if isinstance(model, TrainingRecord):
        return "training record"
    return str(getattr(model, "name", type(model).__name__))


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else None
    if isinstance(value, np.generic):
        return value.item()
    return value
