"""User-level DP on MovieLens: group privacy over capped ratings against per-user clipping.

Both rows train the recommendation tutorial's two-tower matrix factorisation
(``keras_privacy.tutorials._recommender``, sampled softmax with 16 uniform negatives) on
the same leave-one-out split of the MovieLens ratings (671 users; each user's latest
rating held out for HR@10 / NDCG@10), every user's training ratings capped at ``k``
(default 32), for the same user-level target epsilon at the same delta:

* **group privacy** (what the tutorial's user-level row does): example-level DP-SGD,
  Poisson over ratings, sigma planned with ``max_examples_per_user=k``;
* **per-user clipping**: ``fit(..., user_ids=users, max_examples_per_user=k)``, Poisson
  over users, each user's summed gradient clipped to C, sigma planned over users.

The settings are the tutorial's, fixed in advance (nothing is tuned on the held-out
ratings): 20 epochs, SGD with momentum 0.9, clip C = 1, learning rate scaled to the noise
(``0.002 x B / sigma``, B = the expected batch in the row's own unit), expected batch
8192 ratings for group privacy and the same expected number of ratings per update for
per-user clipping (8192 / mean capped ratings per user, in users). Run from the
repository root: ``python benchmarks/user_level_movielens.py [--target 8] [--cap 32]``.
"""

from __future__ import annotations

import argparse
import time

import keras

import keras_privacy as kp
from keras_privacy.tutorials import _movielens as ml
from keras_privacy.tutorials import _recommender as rec


def _train(data, inputs, labels, batch, sigma, epochs, seed, **fit):
    keras.utils.set_random_seed(seed)
    model = rec.two_tower(data.num_users, data.num_items, 17, 32)
    private = kp.make_private(model, l2_norm_clip=1.0, noise_multiplier=sigma)
    lr = float(f"{0.002 * batch / sigma:.3g}")
    private.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    cpu = time.process_time()
    private.fit(inputs, labels, batch_size=batch, epochs=epochs, verbose=0, **fit)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return private, model, lr, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=float, default=8.0, help="user-level target epsilon")
    parser.add_argument("--cap", type=int, default=32, help="k, ratings per user")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8192, help="expected ratings per update")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    delta = 1e-5
    data = ml.cap_per_user(ml.leave_one_out(ml.load_ratings(), seed=0), args.cap, seed=0)
    n, users = data.num_train, data.num_users
    inputs, labels = ml.sampled_examples(
        data.train_users, data.train_items, data.num_items, 16, args.seed
    )
    print(f"MovieLens: {n} training ratings (<= {args.cap} per user), {users} users")
    rows = []

    # Group privacy: example-level DP-SGD, epsilon for a user with <= k ratings.
    batch = min(args.batch, n // 2)
    steps = args.epochs * max(1, round(n / batch))
    sigma = kp.compute_noise_multiplier(
        args.target, delta, n, batch, steps=steps, max_examples_per_user=args.cap
    )
    private, model, lr, seconds, cpu = _train(
        data, inputs, labels, batch, sigma, args.epochs, args.seed
    )
    made = private.privacy_record.total_updates
    eps = kp.compute_epsilon(
        n, batch, sigma, delta=delta, steps=made, max_examples_per_user=args.cap
    )
    rows.append(("group privacy (example-level, k)", batch, sigma, lr, eps, model, seconds, cpu))

    # Per-user clipping: Poisson over users, the same expected ratings per update.
    per_user = n / users
    user_batch = max(1, min(users, round(batch / per_user)))
    steps = args.epochs * max(1, round(users / user_batch))
    sigma = kp.compute_noise_multiplier(args.target, delta, users, user_batch, steps=steps)
    private, model, lr, seconds, cpu = _train(
        data,
        inputs,
        labels,
        user_batch,
        sigma,
        args.epochs,
        args.seed,
        user_ids=data.train_users,
        max_examples_per_user=args.cap,
    )
    eps = private.privacy_spent(delta)
    rows.append(("per-user clipping (user_ids)", user_batch, sigma, lr, eps, model, seconds, cpu))

    print(
        f"\nuser-level target eps {args.target:g}, delta {delta:g}, {args.epochs} epochs, "
        f"k = {args.cap}, engine used: {private.dp_engine_used}"
    )
    print("| method | expected batch | σ | lr | user-level ε | HR@10 | NDCG@10 | s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b, s, lr, eps, model, seconds, cpu in rows:
        metrics = rec.ranking_metrics(model, data)
        unit = "users" if "user_ids" in name else "ratings"
        print(
            f"| {name} | {b} {unit} | {s:.3f} | {lr:g} | {eps:.2f} | {metrics['HR@10']:.4f} | "
            f"{metrics['NDCG@10']:.4f} | {seconds:.0f} | {cpu:.0f} |"
        )


if __name__ == "__main__":
    main()
