"""Fashion-MNIST for the tutorial's two modes (the main job and ``--table``): one loader,
below both so that neither imports the other."""

from __future__ import annotations

import argparse
import sys


def load_data(args: argparse.Namespace):
    """Fashion-MNIST ((x_train, y_train), (x_test, y_test)), cut to ``--train-examples``
    (and ``--test-examples`` in table mode); None after printing why it is missing."""
    from keras_privacy.datasets import load_fashion_mnist

    try:
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    if args.train_examples:
        x_train, y_train = x_train[: args.train_examples], y_train[: args.train_examples]
    if args.table and args.test_examples:
        x_test, y_test = x_test[: args.test_examples], y_test[: args.test_examples]
    return (x_train, y_train), (x_test, y_test)
