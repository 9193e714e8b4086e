"""JAX: a padded Poisson batch is clipped in pieces that skip the padding; the result is
the clipped sum of the sampled rows alone, whatever the count."""

import keras
import numpy as np
import pytest
from helpers import flat

import keras_privacy as kp

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the JAX step's padded Poisson batches"
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


def _model(engine):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dropout(0.0),
            keras.layers.Dense(3),
        ]
    )
    private = kp.make_private(model, l2_norm_clip=0.5, noise_multiplier=0.0, engine=engine, seed=0)
    private.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
    return private


@pytest.mark.parametrize("engine", ["fast", pytest.param("vectorized", marks=pytest.mark.extended)])
def test_pieces_equal_the_sampled_rows_alone(engine, rng, monkeypatch):
    from keras_privacy.training.backend.jax import trainer
    from keras_privacy.training.backend.jax.trainer import POISSON_PIECE

    calls = []
    pieces = trainer.JAXDPTrainer._dp_clipped_poisson_pieces
    monkeypatch.setattr(
        trainer.JAXDPTrainer,
        "_dp_clipped_poisson_pieces",
        lambda self, *a: calls.append(1) or pieces(self, *a),
    )

    capacity = 150  # > 2 pieces, not a multiple of a piece
    assert capacity > 2 * POISSON_PIECE and capacity % POISSON_PIECE
    private = _model(engine)
    step, one_row = _compiled(private, capacity), _one_row(private, engine)
    for rows in [0, 1, 32, 33, 150]:
        _check(private, step, one_row, capacity, rows, rng)
    assert len(calls) == 1  # the pieces path ran, traced once for every count
    assert step._cache_size() == 1


def test_small_expected_batches_use_small_pieces(rng, monkeypatch):
    """An expected batch of 8 is clipped in pieces of 4 rows (what the step holds at once
    follows the sampled rows, not the padded capacity), and only the pieces holding
    sampled rows are computed: counts at a piece boundary (4, 8) and one past it (5, 9)
    give the sampled rows' clipped sum, so a last piece dropped, one piece too few at a
    boundary, or a shifted piece fails."""
    from keras_privacy.training.backend.jax import trainer

    expected = [None, 1, 4, 5, 8, 9, 31, 32, 64, 250]
    assert [trainer.poisson_piece(e) for e in expected] == [32, 1, 2, 2, 4, 4, 8, 16, 32, 32]
    pieces = trainer.JAXDPTrainer._dp_clipped_poisson_pieces
    sizes = []
    monkeypatch.setattr(
        trainer.JAXDPTrainer,
        "_dp_clipped_poisson_pieces",
        lambda self, *a: sizes.append(a[-1]) or pieces(self, *a),
    )
    private = _model("fast")
    private._dp_expected_units = 8.0  # as fit sets it for batch_size=8
    step, one_row = _compiled(private, 14), _one_row(private, "fast")
    for rows in [0, 4, 5, 8, 9, 14]:
        _check(private, step, one_row, 14, rows, rng)
    assert sizes == [4]  # traced once, in pieces of 4


def _compiled(private, capacity):
    """The logical batch's clipped sum, jit-compiled as in the step (the sampled count is
    traced: one compilation serves every count)."""
    import jax

    def clipped(trainable, non_trainable, x, y, mask):
        return private._dp_clipped_logical_batch(
            trainable, non_trainable, (x, y, None), mask, None, capacity, 0.5
        )

    return jax.jit(clipped)


def _one_row(private, engine):
    """The reference: one row clipped alone (a batch of one, no padding), jit-compiled."""
    import jax

    def clipped(trainable, non_trainable, x, y):
        batch, _ = private._dp_engines[engine].clipped_gradient_sum(
            private, trainable, non_trainable, x, y, None, num_units=None, l2_norm_clip=0.5
        )
        return batch.grad_sum, batch.unit_losses, batch.norms

    return jax.jit(clipped)


def _check(private, step, one_row, capacity, rows, rng):
    x = np.zeros((capacity, 6), "float32")
    y = np.zeros(capacity, "int64")
    x[:rows] = 100 * rng.normal(size=(rows, 6))  # large: every row is clipped
    y[:rows] = rng.integers(0, 3, rows)
    x[rows:] = rng.normal(size=(capacity - rows, 6))  # padding must not count
    mask = (np.arange(capacity) < rows).astype("float32")
    trainable = [v.value for v in private.trainable_variables]
    non_trainable = [v.value for v in private.non_trainable_variables]
    grad_sum, losses, preds, _, unclipped = step(trainable, non_trainable, x, y, mask)
    assert np.asarray(losses).shape == (capacity,)
    assert np.asarray(preds).shape == (capacity, 3)
    got = flat([np.asarray(g, "float64") for g in grad_sum])
    if rows == 0:
        np.testing.assert_array_equal(got, 0.0)
        assert float(unclipped) == 0.0  # padding never counts as unclipped
        return
    alone = [one_row(trainable, non_trainable, x[i : i + 1], y[i : i + 1]) for i in range(rows)]
    want = sum(flat([np.asarray(g, "float64") for g in grad]) for grad, _, _ in alone)
    ref_losses = np.concatenate([np.asarray(loss) for _, loss, _ in alone])
    ref_norms = np.concatenate([np.asarray(norm) for _, _, norm in alone])
    # float32 sums in another order, and the fast engine's norms (hence clip factors)
    # computed another way: equal within 5e-5 of the sum's norm (a dropped or repeated
    # row would be off by about 1 / rows of it); 1e-5 failed once at 1.4e-5 on JAX
    assert np.linalg.norm(got - want) <= 5e-5 * np.linalg.norm(want)
    np.testing.assert_allclose(np.asarray(losses)[:rows], ref_losses, 1e-5)
    # adaptive clipping's count: the sampled rows the clip left whole, never padding
    assert float(unclipped) == np.sum(ref_norms <= 0.5)
    # every sampled row clipped to 0.5: the sum's norm is at most rows * C
    assert np.linalg.norm(got) <= 0.5 * rows * (1 + 1e-5)
