"""The bound-vs-theory table of docs/auditing.md: audit lower bounds against the
accountant's ε, for correct and deliberately broken builds.

    KERAS_BACKEND=jax python benchmarks/audit_bounds.py --trials 2000
    KERAS_BACKEND=jax python benchmarks/audit_bounds.py --trials 20000 --multi-run-only
    python benchmarks/audit_bounds.py --gaussian-only

Rows: the Gaussian mechanism simulated exactly (framework-free), then the real DP step of
this backend, both engines, with white-box gradient canaries in full-batch DP-SGD on a
linear model whose canary coordinates the data never move. The broken builds are made
here by monkeypatching, as in tests/auditing/test_white_box.py: clipping off (clip
factors 1), noise halved (noise stddev σC/2), noise once per epoch (only the first of 4
updates per epoch noised). δ = 1e-5, confidence 0.95 throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import numpy as np

from keras_privacy.auditing import (
    claimed_epsilon,
    gaussian_canary_scores,
    multi_run_audit,
    one_run_audit,
)

DELTA = 1e-5
ROWS, FEATURES = 64, 8


def _row(setting, method, result, seconds):
    fraction = result.fraction_of_claimed
    flag = "FLAGGED" if result.violates_claim else "ok"
    print(
        f"| {setting} | {method} | {result.epsilon_claimed:.2f} | "
        f"{result.epsilon_lower_bound:.2f} | {fraction:.2f} | {flag} | {seconds:.0f} |"
    )


def gaussian_rows() -> None:
    rng = np.random.default_rng(0)
    for sigma in (1.0, 2.0):
        claim = claimed_epsilon(sigma, 1, DELTA)
        for m in (1000, 10_000):
            start = time.time()
            included = rng.random(m) < 0.5
            result = one_run_audit(
                gaussian_canary_scores(included, sigma, 1, rng),
                included,
                delta=DELTA,
                epsilon_claimed=claim,
            )
            _row(f"Gaussian mechanism σ={sigma:g}", f"one-run, m={m}", result, time.time() - start)
        for profile, n, extra in (("any", 100_000, {}), ("gaussian", 20_000, {"threshold": 0.5})):
            start = time.time()
            result = multi_run_audit(
                gaussian_canary_scores(np.ones(n, bool), sigma, 1, rng),
                gaussian_canary_scores(np.zeros(n, bool), sigma, 1, rng),
                delta=DELTA,
                epsilon_claimed=claim,
                privacy_profile=profile,
                **extra,
            )
            label = f"multi-run, {2 * n} runs, profile={profile}"
            _row(f"Gaussian mechanism σ={sigma:g}", label, result, time.time() - start)


def dp_step_rows(trials: int, engines: list[str], multi_run_only: bool) -> None:
    import keras

    from keras_privacy import DPSequential
    from keras_privacy.auditing import white_box_audit, white_box_multi_run_audit
    from keras_privacy.training import clipping
    from keras_privacy.training.config import DPConfig

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    informative = rng.normal(size=(ROWS, FEATURES))

    def data(canaries):
        x = np.concatenate([informative, np.zeros((ROWS, canaries))], axis=1).astype("float32")
        return x, (informative[:, 0] > 0).astype("float32")[:, None]

    def model(engine, sigma, canaries, **compile_args):
        m = DPSequential(
            [keras.Input((FEATURES + canaries,)), keras.layers.Dense(1)],
            l2_norm_clip=1.0,
            noise_multiplier=sigma,
            engine=engine,
        )
        m.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.BinaryCrossentropy(from_logits=True),
            **compile_args,
        )
        m.build((None, FEATURES + canaries))
        return m

    def one_run(engine, sigma, epochs, **arguments):
        x, y = data(1000)
        eager = arguments.pop("run_eagerly", False)
        return white_box_audit(
            model(engine, sigma, 1000, run_eagerly=eager),
            x,
            y,
            epochs=epochs,
            num_canaries=1000,
            coordinates=np.arange(FEATURES, FEATURES + 1000),
            seed=0,
            **arguments,
        )

    def multi_run(engine, sigma, steps, runs):
        x, y = data(1)
        return white_box_multi_run_audit(
            lambda: model(engine, sigma, 1),
            x,
            y,
            steps=steps,
            num_trials=runs,
            coordinate=FEATURES,
            seed=0,
        )

    no_clipping = mock.patch.object(
        clipping, "clip_factors", lambda norms, clip, mask=None: keras.ops.ones_like(norms)
    )
    halved = mock.patch.object(
        DPConfig, "noise_stddev", property(lambda s: 0.5 * s.noise_multiplier * s.l2_norm_clip)
    )
    noise_on = [True]
    once_per_epoch = mock.patch.object(
        DPConfig,
        "noise_stddev",
        property(lambda s: s.noise_multiplier * s.l2_norm_clip * float(noise_on[0])),
    )
    schedule = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: noise_on.__setitem__(0, batch == 0)
    )
    for engine in engines:
        where = f"DP-SGD q=1, {backend}/{engine}"
        cases = [
            (
                "correct, σ=2, T=4",
                "one-run white-box, m=1000",
                contextlib.nullcontext(),
                lambda engine=engine: one_run(engine, 2.0, 4),
            ),
            (
                "correct, σ=2, T=4",
                f"multi-run white-box, {trials} runs, gaussian",
                contextlib.nullcontext(),
                lambda engine=engine: multi_run(engine, 2.0, 4, trials),
            ),
            (
                "clipping off, σ=4, T=4",
                "one-run white-box, m=1000",
                no_clipping,
                lambda engine=engine: one_run(engine, 4.0, 4),
            ),
            (
                "noise halved, σ=1, T=2",
                "multi-run white-box, 120 runs, gaussian",
                halved,
                lambda engine=engine: multi_run(engine, 1.0, 2, 120),
            ),
            (
                "noise once per epoch, σ=4, T=8",
                "one-run white-box, m=1000, median",
                once_per_epoch,
                lambda engine=engine: one_run(
                    engine,
                    4.0,
                    2,
                    batch_size=16,
                    statistic="median",
                    callbacks=[schedule],
                    run_eagerly=True,
                ),
            ),
        ]
        if multi_run_only:
            cases = cases[1:2]
        for setting, method, patch, run in cases:
            keras.backend.clear_session()
            start = time.time()
            with patch:
                result = run()
            _row(f"{where}, {setting}", method, result, time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, default=400, help="runs of the correct multi-run audit"
    )
    parser.add_argument("--gaussian-only", action="store_true")
    parser.add_argument("--engines", nargs="+", default=["fast", "vectorized"])
    parser.add_argument(
        "--multi-run-only", action="store_true", help="only the correct multi-run audit"
    )
    args = parser.parse_args()
    print("| setting | audit | claimed ε | lower bound | fraction | verdict | seconds |")
    print("|---|---|---|---|---|---|---|")
    if args.gaussian_only:
        gaussian_rows()
    else:
        dp_step_rows(args.trials, args.engines, args.multi_run_only)


if __name__ == "__main__":
    main()
