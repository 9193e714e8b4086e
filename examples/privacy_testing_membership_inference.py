"""Membership inference on Fashion-MNIST: overfit, well-generalizing and DP-trained models.

Trains three small Keras classifiers on Fashion-MNIST (read offline from the Debian package
``dataset-fashion-mnist``), attacks each with threshold and trained membership inference
attacks, prints the summaries, and saves the ROC curves and a privacy-by-epoch report as PNG
(and the results as JSON) in ``--output-dir`` (default: a new temporary folder).

    python examples/privacy_testing_membership_inference.py [--data-dir DIR] [--output-dir DIR]

On a terminal a progress bar follows the training and the attacks (``--no-progress`` hides
it). Measured on two shared CPU cores: see the README.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

from keras_privacy.programs import (
    progress,
    progress_callback,
    quiet_tensorflow_startup,
    show_progress,
    torch_program_threads,
)

torch_program_threads()  # before Keras imports PyTorch (see its docstring)
quiet_tensorflow_startup()  # before Keras imports TensorFlow

import keras  # noqa: E402

import keras_privacy as kp  # noqa: E402
from keras_privacy import privacy_tests as pt  # noqa: E402
from keras_privacy.datasets import load_fashion_mnist  # noqa: E402
from keras_privacy.privacy_tests.keras_adapters import (  # noqa: E402
    MembershipInferenceCallback,
    attack_input_from_model,
)

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


def load_fashion_mnist_flat(data_dir: str):
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    return (x_train.reshape(-1, 784), y_train), (x_test.reshape(-1, 784), y_test)


def build_model(dropout: float = 0.0) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10),  # logits
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


ATTACKS = [
    pt.AttackType.THRESHOLD_ATTACK,
    pt.AttackType.THRESHOLD_ENTROPY_ATTACK,
    pt.AttackType.LOGISTIC_REGRESSION,
    pt.AttackType.RANDOM_FOREST,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--output-dir", default=None, help="where to write plots and JSON (default: a temp folder)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.output_dir is None:
        output = pathlib.Path(tempfile.mkdtemp(prefix="keras_privacy_mi_"))
    else:
        output = pathlib.Path(args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    with progress(show_progress(args.no_progress)) as bar:
        run(args, output, bar)


def run(args: argparse.Namespace, output: pathlib.Path, bar) -> None:

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_flat(args.data_dir)
    # Non-members come from the test set, never trained on by either model.
    x_out, y_out = x_test[:1000], y_test[:1000]

    # 1. A model that memorizes: 1,000 examples, 50 epochs, no regularization.
    #    The callback attacks it every 10 epochs and logs AUC/advantage into the history.
    x_small, y_small = x_train[:1000], y_train[:1000]
    overfit = build_model()
    callback = MembershipInferenceCallback(
        in_data=(x_small, y_small),
        out_data=(x_out, y_out),
        every_n_epochs=10,
        model_variant_label="overfit (1k examples, 50 epochs)",
    )
    history = overfit.fit(
        x_small,
        y_small,
        epochs=50,
        batch_size=64,
        verbose=0,
        callbacks=[callback, progress_callback(bar, "overfit model", 50)],
    )
    print(
        "threshold-attack AUC by epoch:", [round(a, 3) for a in history.history["mia_auc"][9::10]]
    )

    # 2. A model that generalizes: 30,000 examples, 3 epochs, dropout. We attack 1,000 of
    #    its training examples against the same 1,000 non-members.
    general = build_model(dropout=0.3)
    general.fit(
        x_train[:30000],
        y_train[:30000],
        epochs=3,
        batch_size=128,
        verbose=0,
        callbacks=[progress_callback(bar, "generalizing model", 3)],
    )

    # 3. The overfit recipe (1,000 examples, 50 epochs) trained with DP-SGD.
    private = kp.make_private(build_model(), l2_norm_clip=1.0, noise_multiplier=1.1, seed=0)
    private.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    private.fit(
        x_small,
        y_small,
        epochs=50,
        batch_size=50,
        verbose=0,
        callbacks=[progress_callback(bar, "DP-SGD model", 50)],
    )
    epsilon = kp.compute_epsilon(len(x_small), 50, 1.1, delta=1e-5, epochs=50, sampling="poisson")
    print(f"DP model: ε = {epsilon:.2f} at δ = 1e-5 (PLD accountant)")

    results = {}
    task = bar.add_task("attacks (3 models)", total=3)
    for name, model, members in (
        ("overfit", overfit, (x_small, y_small)),
        ("generalizing", general, (x_train[:1000], y_train[:1000])),
        (f"DP (eps={epsilon:.1f})", private, (x_small, y_small)),
    ):
        attack_input = attack_input_from_model(model, members, (x_out, y_out))
        train_accuracy = float(np.mean(attack_input.correctly_classified("train")))
        test_accuracy = float(np.mean(attack_input.correctly_classified("test")))
        results[name] = pt.run_attacks(
            attack_input,
            pt.SlicingSpec(entire_dataset=True, by_class=True),
            attack_types=ATTACKS,
            privacy_report_metadata=pt.PrivacyReportMetadata(
                train_accuracy, test_accuracy, model_variant_label=name
            ),
        )
        print(
            f"\n=== {name} model: train accuracy {train_accuracy:.3f}, "
            f"test accuracy {test_accuracy:.3f} ==="
        )
        print(results[name].summary(by_slices=False))
        frame = results[name].calculate_pd_dataframe()
        entire = frame[frame["slice feature"] == "Entire dataset"]
        print(
            entire[
                ["attack type", "AUC", "Attacker advantage", "TPR at 1% FPR", "Epsilon lower bound"]
            ].to_string(index=False)
        )
        results[name].save(str(output / f"{name.split()[0].lower()}_results.json"))
        bar.advance(task)

    entire_dataset = [
        r
        for name in results
        for r in results[name].single_attack_results
        if r.slice_spec.entire_dataset and r.attack_type == pt.AttackType.THRESHOLD_ATTACK
    ]
    pt.plot_roc_curve(
        entire_dataset,
        str(output / "roc.png"),
        title="Threshold attack: overfit, generalizing and DP models",
        labels=list(results),
    )
    pt.plot_roc_curve(results["overfit"].get_result_with_max_auc(), str(output / "roc_best.png"))
    pt.plot_by_epochs(callback.results_collection, path=str(output / "privacy_by_epoch.png"))
    print(f"\nPlots and JSON results written to {output.resolve()}")


if __name__ == "__main__":
    main()
