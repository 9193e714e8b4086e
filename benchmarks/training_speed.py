"""Examples/s and peak memory: non-private ``fit`` vs DP ``fit``, measured in one run.

    python benchmarks/training_speed.py [--models cnn mlp embedding transformer]
        [--modes plain vectorized fast secure adaptive] [--steps 40]
    # the keras-hub models (pip install keras-hub; random weights, nothing downloaded):
    python benchmarks/training_speed.py --models gpt2 gpt2-lora bert bert-lora gpt2-small \
        --modes plain fast --steps 2

    # one pinned core, one thread (the figures in docs/performance.md):
    TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 taskset -c 0 \
        python benchmarks/training_speed.py
    # the same on JAX (the DP step is jit-compiled, as Keras's own step):
    KERAS_BACKEND=jax XLA_FLAGS="--xla_cpu_multi_thread_eigen=false \
        intra_op_parallelism_threads=1" taskset -c 0 python benchmarks/training_speed.py
    # and on PyTorch (eager, as Keras's own torch step):
    KERAS_BACKEND=torch OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/training_speed.py

Models (batch 250): the TF Privacy tutorial CNN and an MLP 784-512-512-10 on
Fashion-MNIST (random data if the Debian package is missing); Embedding(10000, 64) x 64
tokens -> GlobalAveragePooling1D -> Dense 64 -> Dense 2 and a small transformer text
classifier (Embedding 20000 x 128, sequence 128, two encoder blocks of MultiHeadAttention
+ Dense + LayerNormalization) on random tokens. keras-hub models (issue 22's targets, random
tokens, random initial weights, SGD): ``gpt2`` is a GPT2Backbone of 4 layers x 512 (8 heads,
feed-forward 2048), vocabulary 32,000, sequence 128, with the token embedding reused as the
output layer (29.1 M trainable parameters), trained on next-token targets at batch 32;
``bert`` is a BertBackbone of the same shape with a Dense(2) head on its pooled output, at
batch 32; ``-lora`` enables keras-hub's LoRA (rank 8, query and value projections; the
backbone frozen); ``gpt2-small`` is GPT-2 small's shape (12 x 768, vocabulary 50,257,
sequence 256, 124 M parameters) at batch 8. They run at most 3 timed steps (gpt2-small 2)
after as many warm-up steps: seconds per step on one core. Modes: non-private ``fit`` and DP ``fit``
with the vectorized and the fast clipping engine. Each (model, mode) runs in its own
process so that its peak resident memory is its own. Speed is timed over a second epoch
(all 60,000 examples for non-private ``fit``; ``--steps`` Poisson updates for DP ``fit``),
after a first epoch that traces and warms up; the steps actually run are counted. Prints a table
(examples per wall-clock second, and per CPU second of the process, which is what one
dedicated core gives when another process shares the pinned one) and the DP/non-private
ratios. This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from keras_privacy import programs

BATCH = 250
MODELS = ("cnn", "mlp", "embedding", "transformer", "embedding_1m")
# keras-hub models (issue 22): built from configs with random weights (nothing downloaded)
HUB_MODELS = ("gpt2", "gpt2-lora", "bert", "bert-lora", "gpt2-small")
MODES = ("plain", "vectorized", "fast", "sparse")
#: Not run by default: the fast engine with secure_noise=True, or with an AdaptiveClip;
#: "fixed": engine="auto" with sampling="shuffle" (batches of exactly the batch size, as
#: non-private ``fit``: the engine's own memory and speed, without Poisson batches' random
#: sizes, whose largest draw sets a Poisson run's peak memory).
EXTRA_MODES = ("secure", "adaptive", "fixed")
# (layers, width, heads, vocabulary, sequence, batch) of the keras-hub models
HUB_SHAPES = {
    "gpt2": (4, 512, 8, 32_000, 128, 32),  # 29.1 M trainable parameters (tied embedding)
    "bert": (4, 512, 8, 32_000, 128, 32),
    "gpt2-small": (12, 768, 12, 50_257, 256, 8),  # GPT-2 small's shape: 124 M parameters
}
LORA_RANK = 8
# most timed steps per (model, mode) run: the keras-hub models take seconds a step
MAX_STEPS = {"transformer": (8, 16), "gpt2": (3, 3), "bert": (3, 3), "gpt2-small": (2, 2)}
#: Batch size per model where it is not BATCH.
BATCHES = {"embedding_1m": 1024}
#: Sparsity-preserving DP-SGD for mode "sparse" (selection sigma_s 2, threshold 10
#: examples: an untouched row is selected with probability 2.9e-7 per update).
SPARSITY = {"selection_noise_multiplier": 2.0, "threshold": 10.0}


def embedding_1m_model():
    """The recommender-sized table: Embedding(1,000,000, 64) x 64 tokens."""
    import keras

    return keras.Sequential(
        [
            keras.Input((64,), dtype="int32"),
            keras.layers.Embedding(1_000_000, 64),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(2),
        ],
        name="embedding_1m",
    )


def embedding_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((64,), dtype="int32"),
            keras.layers.Embedding(10000, 64),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(2),
        ],
        name="embedding",
    )


def transformer_model(vocab=20000, length=128, width=128, heads=4, blocks=2):
    import keras

    inputs = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(vocab, width)(inputs)
    for _ in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, width // heads)(h, h)
        h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
        f = keras.layers.Dense(2 * width, activation="relu")(h)
        f = keras.layers.Dense(width)(f)
        h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h), name="transformer")


def _shape(model_name: str) -> tuple[int, ...]:
    return HUB_SHAPES[model_name.removesuffix("-lora")]


def batch_size(model_name: str) -> int:
    if os.environ.get("KP_BENCHMARK_BATCH"):  # --batch: one batch size for every model
        return int(os.environ["KP_BENCHMARK_BATCH"])
    return _shape(model_name)[-1] if model_name in HUB_MODELS else BATCHES.get(model_name, BATCH)


def hub_model(model_name: str):
    """A keras-hub GPT-2 language model (tied output embedding, next-token logits) or a
    BERT classifier (pooled output -> Dense 2) of ``HUB_SHAPES``; ``-lora``: keras-hub's
    ``enable_lora(8)`` (query and value projections; the rest frozen, the head trained)."""
    import keras
    import keras_hub

    layers, width, heads, vocabulary, length, _ = _shape(model_name)
    config = dict(
        vocabulary_size=vocabulary,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=4 * width,
        dropout=0.0,
        max_sequence_length=length,
    )
    token_ids = keras.Input((length,), dtype="int32")
    ones = keras.ops.ones_like(token_ids)
    if model_name.startswith("gpt2"):
        backbone = keras_hub.models.GPT2Backbone(**config)
        hidden = backbone({"token_ids": token_ids, "padding_mask": ones})
        outputs = backbone.token_embedding(hidden, reverse=True)
    else:
        backbone = keras_hub.models.BertBackbone(**config)
        inputs = {"token_ids": token_ids, "segment_ids": 0 * ones, "padding_mask": ones}
        outputs = keras.layers.Dense(2)(backbone(inputs)["pooled_output"])
    if model_name.endswith("-lora"):
        backbone.enable_lora(LORA_RANK)
    return keras.Model(token_ids, outputs, name=model_name.replace("-", "_"))


def _data(model_name: str):
    import numpy as np

    rng = np.random.default_rng(0)
    if model_name in HUB_MODELS:
        _, _, _, vocabulary, length, batch = _shape(model_name)
        x = rng.integers(0, vocabulary, (16 * max(batch, batch_size(model_name)), length))
        x = x.astype("int32")
        if model_name.startswith("gpt2"):  # next-token targets
            return x, np.roll(x, -1, axis=1)
        return x, rng.integers(0, 2, len(x))
    if model_name == "embedding":
        return rng.integers(0, 10000, (60000, 64)).astype("int32"), rng.integers(0, 2, 60000)
    if model_name == "embedding_1m":
        # Item ids with a Zipf(1.1) popularity, as in recommender logs: a few hot rows,
        # a long tail touched once or never.
        ids = np.minimum(rng.zipf(1.1, (100_000, 64)) - 1, 999_999).astype("int32")
        return ids, rng.integers(0, 2, 100_000)
    if model_name == "transformer":
        return rng.integers(0, 20000, (20000, 128)).astype("int32"), rng.integers(0, 2, 20000)
    try:
        from keras_privacy.datasets import load_fashion_mnist

        (x, y), _ = load_fashion_mnist()
    except FileNotFoundError:
        x, y = rng.random((60000, 28, 28, 1), dtype="float32"), rng.integers(0, 10, 60000)
    if model_name == "mlp":
        x = x.reshape(len(x), -1)
    return x, y


def _measure(model_name: str, mode: str, steps: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import resource

    import keras
    import numpy as np

    import keras_privacy as kp
    from keras_privacy.models import mlp, tutorial_cnn

    x, y = _data(model_name)
    builders = {
        "cnn": tutorial_cnn,
        "mlp": mlp,
        "embedding": embedding_model,
        "transformer": transformer_model,
        "embedding_1m": embedding_1m_model,
    }
    model = hub_model(model_name) if model_name in HUB_MODELS else builders[model_name]()
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    batch = batch_size(model_name)
    if mode != "plain":
        # "fast" runs engine="auto": the fast engine where it is exact, which is reported;
        # "secure" and "adaptive" are "fast" with secure_noise=True / an AdaptiveClip;
        # "sparse" the fast engine with sparsity-preserving DP-SGD on the tables.
        engine = {"fast": "auto", "sparse": "fast"}.get(mode, "auto")
        if mode == "vectorized":
            engine = "vectorized"
        clip = kp.AdaptiveClip(clipped_count_stddev=batch / 20) if mode == "adaptive" else 1.0
        sparsity = kp.SparsityPreserving(**SPARSITY) if mode == "sparse" else None
        model = kp.make_private(
            model,
            l2_norm_clip=clip,
            noise_multiplier=1.1,
            engine=engine,
            secure_noise=mode == "secure",
            sparsity_preserving=sparsity,
            **({"sampling": "shuffle"} if mode == "fixed" else {}),
        )
    # Language models: the mean next-token cross-entropy over the batch's tokens, which is
    # each sequence's mean for a DP unit of one sequence (Keras's built-in loss: the fast
    # engine computes every unit's loss in one batched call).
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    epochs = []  # (seconds, steps) per epoch; the steps actually run are counted

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu, self.steps = time.perf_counter(), time.process_time(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_epoch_end(self, epoch, logs=None):
            wall, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
            epochs.append((wall, cpu, self.steps))

    if mode in ("plain", "fixed"):
        # Full passes over the arrays (Keras's array iterator ends after one pass).
        x, y = x[: steps * batch], y[: steps * batch]
        model.fit(x, y, batch_size=batch, epochs=2, verbose=0, callbacks=[Timer()])
    else:
        # The Poisson stream is endless: an "epoch" is `steps` updates.
        model.fit(
            x, y, batch_size=batch, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[Timer()]
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, cpu_seconds, ran = epochs[1]
    used = getattr(model, "dp_engine_used", None)
    return {
        "model": model_name,
        "mode": mode
        if used in (None, mode) or mode in EXTRA_MODES or mode == "sparse"
        else f"auto:{used}",
        "trainable": trainable,
        "batch": batch,
        "examples_per_s": ran * batch / seconds,
        # Per CPU second of this process (all its threads): what one dedicated core would
        # give, when another process shares the pinned core.
        "examples_per_cpu_s": ran * batch / cpu_seconds,
        "step_ms": 1000 * seconds / ran,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + HUB_MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES + EXTRA_MODES)
    parser.add_argument("--steps", type=int, default=40, help="timed updates per run")
    parser.add_argument("--batch", type=int, help="batch size of every model (default: its own)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.batch:
        os.environ["KP_BENCHMARK_BATCH"] = str(args.batch)  # read by the workers
    if args.worker:
        print(json.dumps(_measure(*args.worker, args.steps)))
        return
    rows = []
    runs = [(model_name, mode) for model_name in args.models for mode in args.modes]
    with programs.progress(programs.show_progress(args.no_progress)) as bar:
        task = bar.add_task("benchmark runs", total=len(runs))
        for model_name, mode in runs:
            bar.update(task, description=f"{model_name} {mode}")
            # plain: all 60,000 examples (transformer: 20,000); DP: --steps updates
            full_passes = mode in ("plain", "fixed")
            steps = args.steps if not full_passes else (80 if model_name == "transformer" else 240)
            if model_name.removesuffix("-lora") in MAX_STEPS:
                most_dp, most_plain = MAX_STEPS[model_name.removesuffix("-lora")]
                steps = min(steps, most_dp if not full_passes else most_plain)
            if model_name == "embedding_1m":  # 100,000 examples, batch 1,024
                steps = min(steps, 20 if mode != "plain" else 40)
            done = subprocess.run(
                [sys.executable, __file__, "--worker", model_name, mode, "--steps", str(steps)],
                capture_output=True,
                text=True,
            )
            bar.advance(task)
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["?"])[-1][:80]
                print(f"{model_name} {mode}: failed ({error})", file=sys.stderr, flush=True)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)  # each run as it ends (kept if cut short)
    import keras

    print(f"Keras backend: {keras.backend.backend()}")
    print(
        f"{'model':<12}{'mode':<16}{'trainable':>12}{'batch':>6}{'examples/s':>12}"
        f"{'per CPU s':>11}{'ms/step':>10}{'peak RSS MB':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<12}{r['mode']:<16}{r['trainable']:>12,}{r['batch']:>6}"
            f"{r['examples_per_s']:>12,.3g}{r['examples_per_cpu_s']:>11,.3g}"
            f"{r['step_ms']:>10.1f}{r['peak_rss_mb']:>13,.0f}"
        )
    for model_name in args.models:
        plain = next((r for r in rows if r["model"] == model_name and r["mode"] == "plain"), None)
        for r in rows:
            if plain is None or r["model"] != model_name or r is plain:
                continue
            print(
                f"{model_name} {r['mode']}: DP / non-private speed = "
                f"{r['examples_per_s'] / plain['examples_per_s']:.2f}x "
                f"(per CPU s {r['examples_per_cpu_s'] / plain['examples_per_cpu_s']:.2f}x), "
                f"memory = {r['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"
            )


if __name__ == "__main__":
    main()
