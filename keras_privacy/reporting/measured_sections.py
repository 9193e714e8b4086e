"""The report's sections on what attacks measured: membership inference (ROC curves and
TPR at low FPR beside the (ε, δ)-DP bound), an audit's lower bound beside the accountant's
ε, and secret-sharer exposure. Each section says what to pass when it was not run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_privacy.reporting import figures
from keras_privacy.reporting.context import ReportContext, fmt_delta, fmt_eps
from keras_privacy.reporting.page import Figure, Section, callout, paragraph, table

#: The FPRs at which the report reads each attack's TPR.
LOW_FPRS = (0.001, 0.01)

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


def _tpr_cell(result: Any, fpr: float) -> tuple[Any, float | None]:
    non_members = int(result.data_size.get("test", 0))
    if non_members * fpr < 1:
        return f"— (needs ≥ {math.ceil(1 / fpr):,} non-members)", None
    value = float(result.get_tpr_at_fpr(fpr))
    return value, value


def membership_section(context: ReportContext, results: list[Any] | None) -> Section:
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


def audit_section(context: ReportContext, audit: Any) -> Section:
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
        ["accountant's ε (upper bound)", fmt_eps(claimed)],
        [
            f"audit's ε lower bound ({audit.confidence:.0%} confidence)",
            fmt_eps(audit.epsilon_lower_bound),
        ],
        ["δ", fmt_delta(audit.delta) if audit.delta else "0"],
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
            f"The audit compared itself with ε = {fmt_eps(audit.epsilon_claimed)}; this "
            f"model's record gives ε = {fmt_eps(ours)} at the audit's δ (an audit of other "
            "runs, or of one DP step rather than the whole training).",
            "note",
        )
    if claimed is not None and audit.epsilon_lower_bound > claimed:
        body += callout(
            f"The audit proves ε ≥ {fmt_eps(audit.epsilon_lower_bound)} > "
            f"{fmt_eps(claimed)} claimed: the "
            "training is less private than its accountant says (a bug, or the accountant was "
            "told the wrong sampling or noise).",
            "bad",
        )
    else:
        text = (
            f"Consistent: the audit's bound ({fmt_eps(audit.epsilon_lower_bound)}) is below "
            f"the claimed ε ({fmt_eps(claimed)})"
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


def exposure_section(
    context: ReportContext, exposures: Mapping[int, Sequence[float]] | None, space_size: int | None
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
