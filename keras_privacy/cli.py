"""``keras-privacy``: plan the privacy of a DP-SGD run from the command line.

Imports no deep-learning framework, so it answers in about a second.

Examples::

    keras-privacy epsilon --n 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    keras-privacy noise --n 60000 --batch-size 256 --epochs 60 --target-epsilon 3 --delta 1e-5
    keras-privacy epochs --n 60000 --batch-size 256 --noise-multiplier 1.1 \\
        --target-epsilon 3 --delta 1e-5
    keras-privacy report model.keras --out report/

``report`` (in :mod:`keras_privacy.reporting.command`) reads a saved DP model's record
without Keras; it imports Keras only to run the model on ``--members`` data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

from keras_privacy import programs

_DESCRIPTION = """\
Privacy accounting for DP-SGD (differentially private training).

A DP-SGD run is described by: the number of training examples N (--n), the batch size
per optimizer update (--batch-size; with gradient accumulation, batch x accumulation
steps), the noise multiplier sigma (noise standard deviation / clipping norm), and its
length (--epochs or --steps). The guarantee is (epsilon, delta)-differential privacy for
adding or removing one example (or one user, with --max-examples-per-user). Smaller
epsilon means more privacy; delta is usually chosen below 1/N.
"""

_SAMPLING_HELP = (
    "how batches are drawn: 'poisson' (each example joins each batch independently with "
    "probability batch_size/N; the keras-privacy DP model does this for in-memory arrays) "
    "or 'shuffle' (shuffled fixed-size batches, e.g. tf.data; no amplification by sampling "
    "is claimed). Default: poisson. The 'epsilon' command always shows both."
)


def _add_run_arguments(parser: argparse.ArgumentParser, *, needs_length: bool) -> None:
    parser.add_argument(
        "--n", type=int, required=True, metavar="N", help="number of training examples"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="(expected) examples per optimizer update",
    )
    parser.add_argument(
        "--delta",
        type=float,
        required=True,
        help="target delta, 0 < delta < 1/N (delta >= 1/N is refused: publishing a random "
        "example whole meets such a guarantee)",
    )
    parser.add_argument(
        "--allow-large-delta",
        action="store_true",
        help="accept delta >= 1/N anyway",
    )
    if needs_length:
        length = parser.add_mutually_exclusive_group(required=True)
        length.add_argument("--epochs", type=float, help="passes over the data (may be fractional)")
        length.add_argument(
            "--steps", type=int, help="number of optimizer updates (instead of --epochs)"
        )
    parser.add_argument(
        "--accountant",
        choices=("pld", "rdp"),
        default="pld",
        help="'pld' (privacy loss distributions, tighter; default) or 'rdp' (Renyi DP, faster)",
    )
    microbatching = parser.add_mutually_exclusive_group()
    microbatching.add_argument(
        "--used-microbatching",
        action="store_true",
        help="gradients were clipped per microbatch of several examples: sensitivity doubles "
        "(accounted as noise multiplier / 2)",
    )
    microbatching.add_argument(
        "--microbatches",
        type=int,
        metavar="M",
        help="number of microbatches per batch; implies --used-microbatching when the "
        "microbatches hold more than one example (M < batch size)",
    )
    parser.add_argument(
        "--max-examples-per-user",
        type=int,
        metavar="K",
        help="also give user-level privacy for users with at most K examples (group "
        "privacy of an example-level run)",
    )
    parser.add_argument(
        "--privacy-unit",
        choices=("example", "user"),
        default="example",
        help="'user': a run trained with fit(..., user_ids=...) (users Poisson-sampled, each "
        "user's summed gradient clipped as one unit): --n and --batch-size count users and "
        "epsilon is user-level (default: 'example')",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress display on stderr (there is none when stderr is not a terminal)",
    )


def _add_noise_multiplier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--noise-multiplier", type=float, required=True, help="sigma: noise std / clipping norm"
    )


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-epsilon", type=float, required=True, help="privacy budget epsilon > 0"
    )
    parser.add_argument(
        "--sampling", choices=("poisson", "shuffle"), default="poisson", help=_SAMPLING_HELP
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-privacy",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="{epsilon,noise,epochs,report}"
    )

    epsilon = commands.add_parser(
        "epsilon",
        help="print the privacy statement (epsilon) of a planned or finished run",
        description="Print the privacy statement of a DP-SGD run: epsilon with shuffled "
        "batches and assuming Poisson sampling, side by side, each with its assumption.",
        epilog="example: keras-privacy epsilon --n 60000 --batch-size 256 "
        "--noise-multiplier 1.1 --epochs 60 --delta 1e-5",
    )
    _add_noise_multiplier(epsilon)
    _add_run_arguments(epsilon, needs_length=True)

    noise = commands.add_parser(
        "noise",
        help="find the smallest noise multiplier that meets a target epsilon",
        description="Find the smallest noise multiplier whose epsilon is at most the target "
        "(never above it).",
        epilog="example: keras-privacy noise --n 60000 --batch-size 256 --epochs 60 "
        "--target-epsilon 3 --delta 1e-5",
    )
    _add_target(noise)
    _add_run_arguments(noise, needs_length=True)

    epochs = commands.add_parser(
        "epochs",
        help="find how many epochs (and steps) fit in a target epsilon",
        description="Find the largest number of epochs and of optimizer steps whose epsilon "
        "is at most the target.",
        epilog="example: keras-privacy epochs --n 60000 --batch-size 256 "
        "--noise-multiplier 1.1 --target-epsilon 3 --delta 1e-5",
    )
    _add_noise_multiplier(epochs)
    _add_target(epochs)
    _add_run_arguments(epochs, needs_length=False)

    from keras_privacy.reporting.command import add_report_command  # argparse only

    add_report_command(commands)
    return parser


def _used_microbatching(args: argparse.Namespace) -> bool:
    if args.microbatches is not None:
        if args.microbatches < 1:
            raise ValueError(
                f"--microbatches must be an integer >= 1, received {args.microbatches}"
            )
        return args.microbatches < args.batch_size
    return bool(args.used_microbatching)


def _number(value: float) -> Any:
    return value if math.isfinite(value) else "inf"


def _validate(args: argparse.Namespace) -> None:
    """Check every value before the accountants (``dp_accounting``, ~1 s) are imported."""
    from keras_privacy.accounting import _checks  # pure Python: loads no accountant

    n = _checks.check_positive_int(args.n, "number_of_examples")
    _checks.check_batch_size(args.batch_size, n)
    _checks.check_delta_below_one_over_n(_checks.check_delta(args.delta), n, args.allow_large_delta)
    if "noise_multiplier" in args:
        _checks.check_noise_multiplier(args.noise_multiplier)
    if "target_epsilon" in args:
        _checks.check_positive_real(args.target_epsilon, "target_epsilon")
    if "epochs" in args:
        _checks.check_epochs_or_steps(args.epochs, args.steps)
    _checks.check_examples_per_user(args.max_examples_per_user)
    microbatched = _used_microbatching(args)
    if args.privacy_unit == "user" and (args.max_examples_per_user is not None or microbatched):
        raise ValueError(
            "--privacy-unit user counts users in --n and --batch-size (each user's summed "
            "gradient is one clipped unit): --max-examples-per-user (group privacy of "
            "example-level runs) and microbatching do not apply to it"
        )
    if args.privacy_unit == "user" and getattr(args, "sampling", "poisson") != "poisson":
        raise ValueError(
            "--privacy-unit user: fit(..., user_ids=...) samples users by Poisson sampling "
            "only; drop --sampling shuffle"
        )


def _run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from keras_privacy import accounting

    common = {
        "used_microbatching": _used_microbatching(args),
        "max_examples_per_user": args.max_examples_per_user,
        "accountant": args.accountant,
        "allow_large_delta": args.allow_large_delta,
    }
    if args.command == "epsilon":
        report = accounting.compute_dp_sgd_privacy_report(
            args.n,
            args.batch_size,
            args.noise_multiplier,
            args.delta,
            num_epochs=args.epochs,
            steps=args.steps,
            privacy_unit=args.privacy_unit,
            **common,
        )
        text, data = report.to_text(), report.to_dict()
        data["privacy_unit"] = args.privacy_unit
        if args.noise_multiplier == 0:
            data["reason"] = (
                "epsilon is infinite: --noise-multiplier 0 adds no noise, so the run is not "
                "differentially private"
            )
            text += "\n" + data["reason"]
        return text, data

    if args.command == "noise":
        sigma = accounting.compute_noise_multiplier(
            args.target_epsilon,
            args.delta,
            args.n,
            args.batch_size,
            epochs=args.epochs,
            steps=args.steps,
            sampling=args.sampling,
            **common,
        )
        achieved = accounting.compute_epsilon(
            args.n,
            args.batch_size,
            sigma,
            delta=args.delta,
            epochs=args.epochs,
            steps=args.steps,
            sampling=args.sampling,
            **common,
        )
        length = f"{args.epochs:g} epochs" if args.steps is None else f"{args.steps} steps"
        unit = "users" if args.privacy_unit == "user" else "examples"
        level = "user-level " if args.privacy_unit == "user" else ""
        text = (
            f"noise multiplier: {sigma:.4f}\n"
            f"(gives {level}epsilon = {achieved:.4f} <= {args.target_epsilon:g} at delta = "
            f"{args.delta:g} for N = {args.n} {unit}, batch size {args.batch_size} {unit}, "
            f"{length}, {args.sampling} sampling, {args.accountant.upper()} accountant)"
        )
        data = {
            "noise_multiplier": sigma,
            "epsilon": _number(achieved),
            "target_epsilon": args.target_epsilon,
            "delta": args.delta,
            "sampling": args.sampling,
            "privacy_unit": args.privacy_unit,
            **common,
        }
        return text, data

    epochs, steps = _max_epochs_and_steps(accounting, args, common)
    level = "user-level " if args.privacy_unit == "user" else ""
    text = (
        f"max epochs: {epochs}\nmax optimizer steps: {steps}\n"
        f"({level}epsilon <= {args.target_epsilon:g} at delta = {args.delta:g}, noise multiplier "
        f"{args.noise_multiplier:g}, {args.sampling} sampling, "
        f"{args.accountant.upper()} accountant)"
    )
    data = {
        "max_epochs": epochs,
        "max_steps": steps,
        "target_epsilon": args.target_epsilon,
        "delta": args.delta,
        "noise_multiplier": args.noise_multiplier,
        "sampling": args.sampling,
        "privacy_unit": args.privacy_unit,
        **common,
    }
    if epochs == 0:
        data["reason"] = _why_no_epoch_fits(accounting, args, common, steps)
        text += "\n" + data["reason"]
    return text, data


def _max_epochs_and_steps(
    accounting: Any, args: argparse.Namespace, common: dict[str, Any]
) -> tuple[int, int]:
    """``compute_max_epochs`` and ``compute_max_steps`` with one search instead of two.

    Each library function runs the other's search for its own answer; here the search runs
    once and the other number follows by the library's rule (``tests`` check they agree).
    """
    budget = (args.target_epsilon, args.delta, args.n, args.batch_size, args.noise_multiplier)
    if args.sampling == "poisson":
        steps = accounting.compute_max_steps(*budget, sampling=args.sampling, **common)
        # compute_max_epochs: ceil(E N / B) <= S  <=>  E <= S B / N
        return math.floor(steps * args.batch_size / args.n + 1e-12), steps
    epochs = accounting.compute_max_epochs(*budget, sampling=args.sampling, **common)
    # compute_max_steps: whole passes of floor(N / B) updates
    return epochs, epochs * max(1, args.n // args.batch_size)


def _why_no_epoch_fits(
    accounting: Any, args: argparse.Namespace, common: dict[str, Any], steps: int
) -> str:
    """One line: why ``epochs`` found no epoch within the target epsilon."""
    if args.noise_multiplier == 0:
        return (
            "why: --noise-multiplier 0 adds no noise, so not even one step is private "
            "(epsilon is infinite)"
        )
    one_step = args.sampling == "poisson" and steps == 0
    epsilon = accounting.compute_epsilon(
        args.n,
        args.batch_size,
        args.noise_multiplier,
        delta=args.delta,
        epochs=None if one_step else 1,
        steps=1 if one_step else None,
        sampling=args.sampling,
        **common,
    )
    what = "a single optimizer step" if one_step else "one epoch"
    per_epoch = math.ceil(args.n / args.batch_size)
    fits = "" if one_step or steps == 0 else f" (only {steps} of its {per_epoch} steps fit)"
    return (
        f"why: {what} already gives epsilon = {epsilon:.3g} > --target-epsilon "
        f"{args.target_epsilon:g}{fits}; raise --noise-multiplier or --target-epsilon"
    )


_DOING = {
    "epsilon": "computing epsilon",
    "noise": "searching for the noise multiplier",
    "epochs": "searching for the longest run",
}

#: Library argument names as the command line spells them, for error messages.
_FLAG_NAMES = {
    "number_of_examples": "--n",
    "batch_size": "--batch-size",
    "noise_multiplier": "--noise-multiplier",
    "target_epsilon": "--target-epsilon",
    "max_examples_per_user": "--max-examples-per-user",
    "epochs": "--epochs",
    "steps": "--steps",
    "delta": "--delta",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 usage or value error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "report":
        return _report(args)
    try:
        _validate(args)
        # dp_accounting logs numerical warnings through absl; they are not actionable here.
        logging.getLogger("absl").setLevel(logging.ERROR)
        doing = f"{_DOING[args.command]} ({args.accountant.upper()} accountant)"
        with programs.spinner(doing, programs.show_progress(args.no_progress, sys.stderr)):
            text, data = _run(args)
    except ValueError as error:
        message = str(error)
        for name, flag in _FLAG_NAMES.items():
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
        message = message.replace("allow_large_delta=True", "--allow-large-delta")
        print(f"keras-privacy {args.command}: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _report(args: argparse.Namespace) -> int:
    from keras_privacy.reporting.command import run_report

    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        text, data = run_report(args)
    except ValueError as error:
        print(f"keras-privacy report: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
