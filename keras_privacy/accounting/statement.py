"""The DP-SGD privacy statement: what was assumed and what epsilon follows, in words."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any

from keras_privacy.accounting import _checks, events, planning

_ACCOUNTANT_NAMES = {
    "pld": "privacy loss distributions (dp_accounting PLDAccountant)",
    "rdp": "Renyi DP (dp_accounting RdpAccountant)",
}


@dataclasses.dataclass(frozen=True)
class DpSgdPrivacyReport:
    """Everything the privacy statement says, as data (``to_dict`` is JSON-ready).

    ``epsilon`` maps each sampling assumption (``"shuffle"``, ``"poisson"``) to the
    example-level epsilon; ``user_epsilon`` does the same for the user-level guarantee
    (None unless ``max_examples_per_user`` was given), each with the method used.
    """

    plan: planning.DpSgdPlan
    delta: float
    accountant: str
    epsilon: dict[str, float]
    user_epsilon: dict[str, dict[str, Any]] | None
    #: ``"user"``: the run clipped each user's summed gradient and sampled users
    #: (``fit(user_ids=...)``): N and B count users and ``epsilon`` is user-level.
    privacy_unit: str = "example"

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "number_of_examples": plan.number_of_examples,
            "batch_size": plan.batch_size,
            "sampling_probability": plan.sampling_probability,
            "epochs": plan.epochs,
            "steps": plan.steps,
            "poisson_updates": plan.poisson_updates,
            "shuffle_passes": plan.shuffle_passes,
            "noise_multiplier": plan.noise_multiplier,
            "used_microbatching": plan.used_microbatching,
            "effective_noise_multiplier": events.effective_noise_multiplier(
                plan.noise_multiplier, plan.used_microbatching
            ),
            "delta": self.delta,
            "accountant": self.accountant,
            "neighbouring_relation": dict(events.NEIGHBOURING_RELATIONS),
            "epsilon": {name: _json_number(v) for name, v in self.epsilon.items()},
            "privacy_unit": self.privacy_unit,
            "max_examples_per_user": plan.max_examples_per_user,
            "user_epsilon": None
            if self.user_epsilon is None
            else {
                name: {k: _json_number(v) for k, v in details.items()}
                for name, details in self.user_epsilon.items()
            },
            "assumptions": dict(planning.SAMPLING_DESCRIPTIONS),
        }

    def to_text(self) -> str:
        plan = self.plan
        q = plan.sampling_probability
        if plan.steps is not None:
            length = f"{plan.steps:,} optimizer updates"
        else:
            length = (
                f"{plan.epochs:g} epochs ({plan.poisson_updates:,} optimizer updates at "
                f"expected batch size {plan.batch_size})"
            )
        if plan.used_microbatching:
            clipping = (
                "the clipping unit is a microbatch of several examples: one example changes "
                "one microbatch's clipped gradient, so the L2 sensitivity is 2C and the run "
                f"is accounted with noise multiplier {plan.noise_multiplier:g} / 2"
            )
        else:
            clipping = "each example's gradient clipped on its own (L2 sensitivity C)"
        unit, level, item = "examples", "Example-level", "example"
        if self.privacy_unit == "user":
            unit, level, item = "users", "User-level (one user's rows together)", "user"
            clipping = (
                "each user's summed gradient over their rows clipped as one unit (L2 "
                "sensitivity C for adding or removing a whole user)"
            )
        lines = [
            "DP-SGD privacy statement",
            "",
            f"Training set: N = {plan.number_of_examples:,} {unit}; batch size "
            f"{plan.batch_size} (q = B/N = {q:.6g}); {length}.",
            f"Noise multiplier: {plan.noise_multiplier:g} (noise std / clip norm C); {clipping}.",
            f"Accounting: {_ACCOUNTANT_NAMES[self.accountant]}; delta = {self.delta:g}. The "
            "guarantee covers every intermediate model, not just the final one. Neighbouring "
            f"datasets: with Poisson sampling, one {item} added or removed; with fixed-size "
            f"batches, one {item} replaced by a null {item} that adds no gradient (zero-out: "
            f"adding an {item} would shift every later batch boundary).".replace(
                "an user", "a user"
            ),
            "",
            f"{level} epsilon:",
            f"  {_fmt(self.epsilon['shuffle'])}  with shuffled fixed-size batches, each {item} "
            f"used once per epoch ({plan.shuffle_passes} passes; no amplification by sampling)"
            + _why_infinite({"epsilon": self.epsilon["shuffle"]}, plan),
            f"  {_fmt(self.epsilon['poisson'])}  assuming Poisson sampling (*): each {item} in "
            f"each batch independently with probability q ({plan.poisson_updates:,} updates)"
            + _why_infinite({"epsilon": self.epsilon["poisson"]}, plan),
        ]
        if self.user_epsilon is not None:
            k = plan.max_examples_per_user
            shuffle, poisson = self.user_epsilon["shuffle"], self.user_epsilon["poisson"]
            lines += [
                "",
                f"User-level epsilon (one user's examples added/removed, or zeroed out for "
                f"fixed batches; at most {k} examples per user; delta = {self.delta:g}):",
                f"  {_fmt(shuffle['epsilon'])}  with shuffled batches ({shuffle['method']})"
                + _why_infinite(shuffle, plan),
                f"  {_fmt(poisson['epsilon'])}  assuming Poisson sampling (*) "
                f"({_user_method(poisson, self.accountant)})" + _why_infinite(poisson, plan),
            ]
        lines += [
            "",
            "(*) The Poisson number holds only if batches really were Poisson-sampled (the DP "
            "model does this for in-memory arrays). Shuffled arrays, tf.data pipelines and "
            "generators deliver fixed batches: use the shuffled-batches number for them.",
        ]
        return "\n".join(
            textwrap.fill(
                line,
                width=_WIDTH,
                subsequent_indent=_indent_of(line),
                break_on_hyphens=False,
            )
            for line in lines
        )


_WIDTH = 92


def _indent_of(line: str) -> str:
    """Continuation indent: under the text after an epsilon column, else none."""
    return " " * 12 if line.startswith("  ") else ""


def _fmt(value: float) -> str:
    return f"{value:8.4g}" if math.isfinite(value) else "     inf"


def _user_method(details: dict[str, Any], requested: str) -> str:
    """How a user-level epsilon was obtained, naming the accountant that answered."""
    used = details.get("accountant", requested)
    text = f"{details['method']}; {_ACCOUNTANT_NAMES[used]}"
    if used != requested:
        text += f", because the {requested} accountant gave no finite bound"
    if "example_epsilon" in details and math.isfinite(details["example_epsilon"]):
        text += (
            f"; from example-level epsilon {details['example_epsilon']:.4g} at delta "
            f"{details['example_delta']:.3g}"
        )
    return text


def _why_infinite(details: dict[str, Any], plan: planning.DpSgdPlan) -> str:
    """Empty for a finite epsilon; else why it is infinite and what would answer."""
    if math.isfinite(details["epsilon"]):
        return ""
    if plan.noise_multiplier == 0:
        reason = "noise_multiplier is 0: no finite epsilon exists; add noise"
    else:
        reason = details.get("reason") or (
            "the accountant gives no finite bound at this delta; a larger noise multiplier, "
            "fewer updates or a larger delta would answer"
        )
    return f". Infinite because {reason}"


def _json_number(value: Any) -> Any:
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else str(value)
    return value


def compute_dp_sgd_privacy_report(
    number_of_examples: int,
    batch_size: int,
    noise_multiplier: float,
    delta: float,
    *,
    num_epochs: float | None = None,
    steps: int | None = None,
    used_microbatching: bool = False,
    max_examples_per_user: int | None = None,
    accountant: str = "pld",
    allow_large_delta: bool = False,
    privacy_unit: str = "example",
) -> DpSgdPrivacyReport:
    """Epsilon under each sampling assumption, example- and (optionally) user-level.

    Arguments as in :func:`~keras_privacy.accounting.compute_epsilon` (``num_epochs`` is
    ``epochs``). Both sampling assumptions are always computed so that they can be shown
    side by side, each labelled with what it assumes. ``delta >= 1/N`` is refused
    unless ``allow_large_delta``. ``privacy_unit="user"``: a run trained with
    ``fit(user_ids=...)`` (users Poisson-sampled, each user's summed gradient clipped as one
    unit): ``number_of_examples`` and ``batch_size`` count users, and the statement says
    user-level (``max_examples_per_user``, group privacy of example-level runs, is then
    refused).
    """
    delta = _checks.check_delta(delta)
    accountant = _checks.check_accountant(accountant)
    if privacy_unit not in ("example", "user"):
        raise ValueError(f"privacy_unit must be 'example' or 'user', received {privacy_unit!r}")
    if privacy_unit == "user" and (max_examples_per_user is not None or used_microbatching):
        raise ValueError(
            "privacy_unit='user' already protects whole users (each user's summed gradient "
            "is one clipping unit): max_examples_per_user and used_microbatching do not apply."
        )
    plan = planning.DpSgdPlan.create(
        number_of_examples,
        batch_size,
        noise_multiplier,
        num_epochs,
        steps,
        used_microbatching,
        max_examples_per_user,
        allow_large_delta=allow_large_delta,
    )
    example_plan = dataclasses.replace(plan, max_examples_per_user=None)
    epsilon = {
        sampling: example_plan.epsilon(delta, sampling, accountant)
        for sampling in (events.SHUFFLE, events.POISSON)
    }
    user_epsilon = None
    if plan.max_examples_per_user is not None:
        user_epsilon = {
            sampling: plan.epsilon_details(delta, sampling, accountant)
            for sampling in (events.SHUFFLE, events.POISSON)
        }
    return DpSgdPrivacyReport(plan, delta, accountant, epsilon, user_epsilon, privacy_unit)


def compute_dp_sgd_privacy_statement(
    number_of_examples: int,
    batch_size: int,
    num_epochs: float,
    noise_multiplier: float,
    delta: float,
    used_microbatching: bool = True,
    max_examples_per_user: int | None = None,
    accountant: str = "pld",
    allow_large_delta: bool = False,
    *,
    privacy_unit: str = "example",
) -> str:
    """A readable, multi-line statement of the privacy a DP-SGD run gives.

    Same arguments and defaults as TF Privacy's function of this name (note
    ``used_microbatching=True``: TF Privacy's optimizers clipped microbatches by default;
    pass ``False`` when each example was clipped on its own, as the keras-privacy DP model
    does unless ``num_microbatches`` is set). The statement lists the assumptions, the
    example-level epsilon with shuffled batches (no amplification) and assuming Poisson
    sampling, and, when ``max_examples_per_user`` is given, the user-level epsilon
    (``privacy_unit="user"``: a user-level run, see :func:`compute_dp_sgd_privacy_report`).
    Unlike TF Privacy, ``delta >= 1/N`` is refused unless ``allow_large_delta``.
    """
    return compute_dp_sgd_privacy_report(
        number_of_examples,
        batch_size,
        noise_multiplier,
        delta,
        num_epochs=num_epochs,
        used_microbatching=used_microbatching,
        max_examples_per_user=max_examples_per_user,
        accountant=accountant,
        allow_large_delta=allow_large_delta,
        privacy_unit=privacy_unit,
    ).to_text()
