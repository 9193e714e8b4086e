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

import dataclasses
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_privacy.reporting import figures, record_data
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

#: The FPRs at which the report reads each attack's TPR.
LOW_FPRS = (0.001, 0.01)

_SAMPLING_WORDS = {
    "poisson": "Poisson sampling (each example joins each batch independently with "
    "probability q; amplification by subsampling applies)",
    "shuffle": "shuffled fixed-size batches (each example once per epoch; no amplification "
    "by sampling is claimed)",
    "fixed_batches": "batches as they arrived (tf.data / generator; accounted as one "
    "Gaussian per pass, no amplification by sampling)",
}


def _fmt_delta(delta: float) -> str:
    return f"{delta:.0e}".replace("e-0", "e-")


def _fmt_eps(epsilon: float | None) -> str:
    """ε with two decimals (three significant digits below 1)."""
    if epsilon is None or not math.isfinite(epsilon):
        return format_number(epsilon)
    return f"{epsilon:.2f}" if epsilon >= 1 else f"{epsilon:.3g}"


_ATTACK_NAMES = {
    "THRESHOLD_ATTACK": "loss threshold",
    "THRESHOLD_ENTROPY_ATTACK": "entropy threshold",
    "LOGISTIC_REGRESSION": "logistic regression",
    "MULTI_LAYERED_PERCEPTRON": "MLP",
    "RANDOM_FOREST": "random forest",
    "K_NEAREST_NEIGHBORS": "k-nearest neighbours",
    "LIRA_ONLINE": "LiRA (online)",
    "LIRA_OFFLINE": "LiRA (offline)",
}


def _attack_name(result: Any) -> str:
    name = getattr(result.attack_type, "name", str(result.attack_type))
    return _ATTACK_NAMES.get(name, name.replace("_", " ").lower())


# -- inputs --------------------------------------------------------------------------


def membership_results(membership: Any, model: Any, delta: float, seed: int = 0) -> list[Any]:
    """The entire-dataset attack results to plot, from what the caller passed.

    ``membership`` is an :class:`~keras_privacy.privacy_tests.AttackResults`, a sequence of
    ``SingleAttackResult``, an :class:`~keras_privacy.privacy_tests.AttackInputData` (the
    loss-threshold and logistic-regression attacks are run on it), or ``(members,
    non_members)``, each an ``(x, y)`` pair that ``model`` (a Keras classifier) is run on.
    """
    from keras_privacy import privacy_tests as pt

    if (
        isinstance(membership, tuple)
        and len(membership) == 2
        and isinstance(membership[0], (tuple, list))
    ):
        if not hasattr(model, "predict"):
            raise ValueError(
                "membership=(members, non_members) runs the model on the data: pass the Keras "
                "model itself (not a saved path or a record), or pass AttackInputData / "
                "AttackResults computed beforehand"
            )
        from keras_privacy.privacy_tests.keras_adapters import attack_input_from_model

        membership = attack_input_from_model(model, tuple(membership[0]), tuple(membership[1]))
    if isinstance(membership, pt.AttackInputData):
        membership = pt.run_attacks(
            membership,
            attack_types=[pt.AttackType.THRESHOLD_ATTACK, pt.AttackType.LOGISTIC_REGRESSION],
            epsilon_lower_bound_delta=delta,
            seed=seed,
        )
    if isinstance(membership, pt.AttackResults):
        results = list(membership.single_attack_results)
    elif isinstance(membership, pt.SingleAttackResult):
        results = [membership]
    elif isinstance(membership, Sequence) and all(
        isinstance(r, pt.SingleAttackResult) for r in membership
    ):
        results = list(membership)
    else:
        raise ValueError(
            "membership must be AttackResults, SingleAttackResult(s), AttackInputData or "
            f"((x_members, y_members), (x_non_members, y_non_members)); received "
            f"{type(membership).__name__}"
        )
    entire = [r for r in results if r.slice_spec.entire_dataset]
    if not entire:
        raise ValueError("membership holds no result on the entire dataset to plot")
    return entire


# -- sections ------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    epsilon_at: dict[str, Any]  # accountant -> (δ -> ε) of the whole record
    record: TrainingRecord
    settings: dict[str, Any]
    delta: float
    accountant: str
    epsilon: float
    epsilon_other: float
    data: dict[str, Any]


def _headline(context: _Context) -> str:
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
        f"probability δ = {_fmt_delta(delta)}. So an attacker who may wrongly accuse at most "
        f"1% of non-members can find at most <b>{tpr:.1%}</b> of the members, whatever they do."
    )
    cards = [
        (f"ε ({context.accountant.upper()})", _fmt_eps(epsilon)),
        ("δ", _fmt_delta(delta)),
        (f"ε ({other.upper()})", _fmt_eps(context.epsilon_other)),
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
        cards.append(("audit: ε ≥", _fmt_eps(audit["epsilon_lower_bound"])))
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
        f'<div class="big">ε = {_fmt_eps(epsilon)} <small>at δ = {_fmt_delta(delta)}, '
        f"{context.accountant.upper()} accountant, example-level</small></div>"
        f"<p>{sentence}</p>"
        f'<div class="cards">{card_html}</div>'
    )


def _settings_section(context: _Context) -> Section:
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
                "example"
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


def _curves_section(context: _Context) -> Section:
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
        [_fmt_delta(d), *(_fmt_eps(curves[a][deltas.index(d)]) for a in ("pld", "rdp"))]
        for d in pick
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


def _training_section(context: _Context) -> Section:
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
        f"{_fmt_eps(curves[context.accountant][len(updates) // 2])}; at the end "
        f"({updates[-1]:,} updates) {_fmt_eps(curves[context.accountant][-1])}."
    )
    context.data["epsilon_over_training"] = {"updates": updates, **curves}
    figure = Figure(
        "epsilon_over_training.png",
        png,
        "epsilon over training",
        f"ε at δ = {_fmt_delta(context.delta)} against optimizer updates.",
    )
    return Section("ε over the course of training", body, [figure], anchor="epsilon-over-training")


def _tpr_cell(result: Any, fpr: float) -> tuple[Any, float | None]:
    non_members = int(result.data_size.get("test", 0))
    if non_members * fpr < 1:
        return f"— (needs ≥ {math.ceil(1 / fpr):,} non-members)", None
    value = float(result.get_tpr_at_fpr(fpr))
    return value, value


def _membership_section(context: _Context, results: list[Any] | None) -> Section:
    title, anchor = "Membership inference", "membership"
    if results is None:
        body = paragraph(
            "Not run. Pass membership=((x_train, y_train), (x_held_out, y_held_out)) to "
            "privacy_report (members are training examples, non-members examples the model "
            "never saw), or AttackInputData / AttackResults from keras_privacy.privacy_tests; "
            "on the command line, --members and --non-members (.npz files with x and y) or "
            "--attack-results (a saved AttackResults JSON)."
        )
        return Section(title, body, filled=False, anchor=anchor)
    epsilon, delta = context.epsilon, context.delta
    rows, curves, saved = [], [], []
    smallest = 1.0
    for result in results:
        label = _attack_name(result)
        roc = result.roc_curve
        curves.append((f"{label} (AUC {result.get_auc():.3f})", roc.fpr, roc.tpr))
        non_members = int(result.data_size.get("test", 0)) or 1
        smallest = min(smallest, 1.0 / non_members)
        low = [_tpr_cell(result, f) for f in LOW_FPRS]
        bound = result.get_epsilon_lower_bound()
        rows.append(
            [
                label,
                result.data_size.get("train"),
                result.data_size.get("test"),
                result.get_auc(),
                *(cell for cell, _ in low),
                result.get_attacker_advantage(),
                bound,
            ]
        )
        saved.append(
            {
                "attack": label,
                "members": result.data_size.get("train"),
                "non_members": result.data_size.get("test"),
                "auc": float(result.get_auc()),
                **{f"tpr_at_{f:g}_fpr": value for f, (_, value) in zip(LOW_FPRS, low, strict=True)},
                "epsilon_lower_bound": None if math.isnan(bound) else float(bound),
            }
        )
    bound_rows = [
        [
            "(ε, δ)-DP bound: no attack can exceed",
            "",
            "",
            "",
            *(float(figures.dp_roc_bound(np.array([f]), epsilon, delta)[0]) for f in LOW_FPRS),
            "",
            "",
        ]
    ]
    header = ["attack", "members", "non-members", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR"]
    header += ["advantage", "ε lower bound"]
    body = paragraph(
        "An attacker guesses, for each example, whether it was in the training data. On "
        "log-log axes the curve shows what matters: how many members an attack finds while "
        "almost never accusing a non-member. The dashed line is the most any attack could "
        "do against this model if its ε is right; the diagonal is guessing."
    )
    body += table(header, rows + bound_rows)
    best = max(results, key=lambda r: r.get_auc())
    if best.get_auc() < 0.55:
        body += callout(
            f"The strongest attack here reaches AUC {best.get_auc():.3f}: close to guessing.",
            "good",
        )
    body += paragraph(
        f"The FPR axis cannot go below 1/(non-members) = {smallest:.2g} (vertical line): "
        "TPR at a smaller FPR needs more held-out examples. A weak attack does not prove "
        "privacy; the ε above does (if the accountant is told the truth).",
        "note",
    )
    context.data["membership"] = saved
    png = figures.roc_png(curves, epsilon, delta, smallest)
    figure = Figure(
        "membership_roc.png",
        png,
        "membership inference ROC, log-log",
        "ROC of each attack (log-log) with the (ε, δ)-DP limit.",
    )
    return Section(title, body, [figure], layout="below", anchor=anchor)


def _audit_section(context: _Context, audit: Any) -> Section:
    title, anchor = "Audit: empirical lower bound vs the accountant", "audit"
    if audit is None:
        body = paragraph(
            "Not run. Pass audit=AuditResult (from keras_privacy.auditing) to show what an "
            "audit proves about this training beside what the accountant claims; on the "
            "command line, --audit FILE.json (AuditResult.to_dict())."
        )
        return Section(title, body, filled=False, anchor=anchor)
    if audit.delta > 0:
        ours = float(context.epsilon_at[context.accountant](audit.delta))
    else:
        ours = math.inf
    claimed = audit.epsilon_claimed if audit.epsilon_claimed is not None else ours
    rows = [
        ["accountant's ε (upper bound)", _fmt_eps(claimed)],
        [
            f"audit's ε lower bound ({audit.confidence:.0%} confidence)",
            _fmt_eps(audit.epsilon_lower_bound),
        ],
        ["δ", _fmt_delta(audit.delta) if audit.delta else "0"],
        ["method", f"{audit.method}, {audit.canary_kind} canaries"],
        [
            "canaries / guesses / correct",
            f"{audit.num_canaries} / {audit.num_guesses} / {audit.num_correct}",
        ],
        ["training runs", audit.num_trials],
    ]
    body = paragraph(
        "An audit attacks the training with canaries and turns its success into a "
        "statistical lower bound on ε. The accountant's ε is an upper bound. A lower bound "
        "above the upper bound would prove the claim wrong; a lower bound below it is "
        "consistent with it (it does not prove the model private)."
    )
    body += table(["", "value"], rows)
    if (
        audit.epsilon_claimed is not None
        and math.isfinite(ours)
        and not math.isclose(audit.epsilon_claimed, ours, rel_tol=0.02)
    ):
        body += paragraph(
            f"The audit compared itself with ε = {_fmt_eps(audit.epsilon_claimed)}; this "
            f"model's record gives ε = {_fmt_eps(ours)} at the audit's δ (an audit of other "
            "runs, or of one DP step rather than the whole training).",
            "note",
        )
    if claimed is not None and audit.epsilon_lower_bound > claimed:
        body += callout(
            f"The audit proves ε ≥ {_fmt_eps(audit.epsilon_lower_bound)} > "
            f"{_fmt_eps(claimed)} claimed: the "
            "training is less private than its accountant says (a bug, or the accountant was "
            "told the wrong sampling or noise).",
            "bad",
        )
    else:
        text = (
            f"Consistent: the audit's bound ({_fmt_eps(audit.epsilon_lower_bound)}) is below "
            f"the claimed ε ({_fmt_eps(claimed)})"
        )
        if audit.epsilon_lower_bound == 0:
            text += (
                "; its canaries did not leak detectably. That is no proof of privacy: a "
                "stronger attack (white-box gradient canaries) may do better"
            )
        elif claimed and math.isfinite(claimed):
            text += f", {audit.epsilon_lower_bound / claimed:.0%} of it"
        body += callout(text + ".", "good")
    context.data["audit"] = {**audit.to_dict(), "epsilon_of_record_at_audit_delta": ours}
    figures_list = []
    if claimed is not None and math.isfinite(claimed):
        png = figures.audit_png(claimed, audit.epsilon_lower_bound, audit.confidence, audit.delta)
        figures_list.append(
            Figure(
                "audit.png",
                png,
                "audit lower bound against accountant epsilon",
                "The shaded range is what neither bound rules out.",
            )
        )
    return Section(title, body, figures_list, anchor=anchor)


def _exposure_section(
    context: _Context, exposures: Mapping[int, Sequence[float]] | None, space_size: int | None
) -> Section:
    title, anchor = "Secret sharer: canary exposure", "secret-sharer"
    if exposures is None:
        body = paragraph(
            "Not run (no canaries). Insert canaries into the training data "
            "(keras_privacy.privacy_tests.insert_canaries), measure their exposure "
            "(compute_exposure_interpolation / _extrapolation) and pass "
            "canary_exposures={times inserted: [exposure of each canary]} and "
            "canary_space_size=|R|; on the command line, --exposures FILE.json."
        )
        return Section(title, body, filled=False, anchor=anchor)
    clean = {int(k): [float(v) for v in values] for k, values in exposures.items()}
    if not clean or any(len(v) == 0 for v in clean.values()):
        raise ValueError("canary_exposures must map each repetition count to its exposures")
    ceiling = math.log2(space_size) if space_size else None
    rows = [
        [f"×{count}", len(v), float(np.mean(v)), float(np.min(v)), float(np.max(v))]
        for count, v in sorted(clean.items())
    ]
    body = paragraph(
        "Random secrets (canaries) were put into the training data, some several times. "
        "Exposure (bits) says how much more likely the model finds a canary than the other "
        "candidates of its format: about log2 e ≈ 1.4 for a secret never seen, up to "
        "log2 |R| when the model has memorised it. DP keeps exposure low unless a canary is "
        "repeated often (a repeated secret is a group of examples)."
    )
    if ceiling is not None:
        body += paragraph(
            f"|R| = {space_size:,} candidates: the largest exposure is {ceiling:.3g} bits."
        )
    body += table(["inserted", "canaries", "mean exposure", "min", "max"], rows)
    context.data["canary_exposures"] = {str(k): v for k, v in clean.items()}
    context.data["canary_space_size"] = space_size
    png = figures.exposure_png(clean, ceiling)
    figure = Figure(
        "canary_exposure.png",
        png,
        "canary exposure by repetitions",
        "Each dot one canary; squares the mean per repetition count.",
    )
    return Section(title, body, [figure], anchor=anchor)


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
    context = _Context(
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
        f"example-level guarantee.",
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
    page.add(_membership_section(context, results))
    page.add(_audit_section(context, audit))
    page.add(_exposure_section(context, canary_exposures, canary_space_size))
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
