"""``keras-privacy report``: the privacy report of a saved DP model, from the command line.

    keras-privacy report model.keras --out report/ [--delta 1e-5]
        [--members train.npz --non-members held_out.npz | --attack-results attacks.json]
        [--audit audit.json] [--exposures exposures.json]

Reads the model's privacy record from the ``.keras`` archive without Keras; Keras (and
the backend) is imported only for ``--members`` / ``--non-members``, which run the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

__all__ = ["add_report_command", "run_report"]

_EXAMPLE = (
    "example: keras-privacy report model.keras --out report --members train.npz "
    "--non-members test.npz"
)


def add_report_command(commands: Any) -> None:
    """Add the ``report`` subcommand to the ``keras-privacy`` parser's subparsers."""
    report = commands.add_parser(
        "report",
        help="write the privacy report (HTML and PNGs) of a saved DP model",
        description="Write the privacy report of a DP model saved as .keras: one "
        "self-contained report.html (ε, the sampling used, ε(δ) from PLD and RDP, ε over "
        "training, and membership inference, audit and canary exposure when given), the "
        "PNGs and report.json.",
        epilog=_EXAMPLE,
    )
    report.add_argument("model", help="the DP model saved with model.save('....keras')")
    report.add_argument("--out", required=True, help="folder to write the report into")
    report.add_argument(
        "--delta", type=float, default=None, help="δ (default: the largest power of ten < 1/N)"
    )
    report.add_argument(
        "--accountant", choices=("pld", "rdp"), default="pld", help="accountant of the headline ε"
    )
    report.add_argument("--title", default=None, help="the page title (default: the file name)")
    report.add_argument(
        "--members",
        metavar="NPZ",
        help="training examples (.npz with arrays x and y): runs the model (imports Keras)",
    )
    report.add_argument(
        "--non-members",
        metavar="NPZ",
        help="held-out examples (.npz with x and y)",
    )
    report.add_argument(
        "--attack-results", metavar="JSON", help="membership results saved with AttackResults.save"
    )
    report.add_argument("--audit", metavar="JSON", help="an AuditResult as JSON (its to_dict())")
    report.add_argument(
        "--exposures",
        metavar="JSON",
        help='secret-sharer exposures: {"exposures": {"1": [...], "4": [...]}, "space_size": |R|}',
    )
    report.add_argument("--json", action="store_true", help="print report.json instead of a line")


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {what} {path!r}: {error}") from error


def _audit(path: str) -> Any:
    from keras_privacy.auditing import AuditResult

    data = _read_json(path, "--audit")
    if not isinstance(data, dict):
        raise ValueError(f"--audit {path!r} must hold a JSON object (AuditResult.to_dict())")
    names = {f.name for f in dataclasses.fields(AuditResult)}
    try:
        return AuditResult(**{k: v for k, v in data.items() if k in names})
    except TypeError as error:
        raise ValueError(f"--audit {path!r} is not an AuditResult: {error}") from error


def _exposures(path: str) -> tuple[dict[int, list[float]], int | None]:
    data = _read_json(path, "--exposures")
    space = None
    if isinstance(data, dict) and "exposures" in data:
        space = data.get("space_size")
        data = data["exposures"]
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f'--exposures {path!r}: expected {{"exposures": {{times inserted: [exposures]}}, '
            '"space_size": |R|}'
        )
    try:
        return {int(k): [float(v) for v in values] for k, values in data.items()}, space
    except (TypeError, ValueError) as error:
        raise ValueError(f"--exposures {path!r}: {error}") from error


def _npz(path: str, flag: str) -> tuple[Any, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise ValueError(f"{flag} {path!r} must hold arrays named x and y")
            return data["x"], data["y"]
    except OSError as error:
        raise ValueError(f"cannot read {flag} {path!r}: {error}") from error


def run_report(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Write the report; return (a line for the terminal, report.json's content)."""
    from keras_privacy.reporting.model_report import privacy_report

    if (args.members is None) != (args.non_members is None):
        raise ValueError("--members and --non-members go together")
    if args.members is not None and args.attack_results is not None:
        raise ValueError("give either --members/--non-members or --attack-results, not both")
    if not os.path.isfile(args.model):
        raise ValueError(f"no such file: {args.model!r}")
    model: Any = args.model
    membership = None
    if args.members is not None:
        members = _npz(args.members, "--members")
        non_members = _npz(args.non_members, "--non-members")
        from keras_privacy.programs import quiet_tensorflow_startup

        quiet_tensorflow_startup()
        import keras

        import keras_privacy.training

        keras_privacy.training.register_serializable_classes()
        model = keras.models.load_model(args.model)
        membership = (members, non_members)
    elif args.attack_results is not None:
        from keras_privacy.privacy_tests import AttackResults

        membership = AttackResults.load(args.attack_results)
    exposures, space = (None, None) if args.exposures is None else _exposures(args.exposures)
    path = privacy_report(
        model,
        args.out,
        delta=args.delta,
        accountant=args.accountant,
        membership=membership,
        audit=None if args.audit is None else _audit(args.audit),
        canary_exposures=exposures,
        canary_space_size=space,
        title=args.title or os.path.basename(args.model),
    )
    data = json.loads((path.parent / "report.json").read_text(encoding="utf-8"))
    empty = [name for name, filled in data["sections"].items() if not filled]
    epsilon = data["epsilon"]
    shown = f"{epsilon:.3f}" if isinstance(epsilon, float) else str(epsilon)
    line = f"ε = {shown} at δ = {data['delta']:g} ({data['accountant'].upper()}); "
    line += f"report: {path}"
    if empty:
        line += f"\nnot run (no input given): {', '.join(empty)}"
    return line, data
