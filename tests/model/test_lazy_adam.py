"""The two-tower's optimizer: Adam on every touched row of a large embedding table, nothing on the others."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.towers import LazyAdam, keras


def _steps(optimizer, table: np.ndarray, batches: list[list[int]], jit: bool = False,
           dense: bool = False) -> tuple[np.ndarray, list]:
    """Apply ``optimizer`` to a copy of ``table`` with the gradient of sum(rows ** 2) over each batch's rows
    (duplicates included, as a batch that holds an item twice), sparse or (``dense``) made dense first;
    returns the table and the moments."""
    variable = keras.Variable(table.copy())
    optimizer.build([variable])

    def step(rows):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable.value, rows) ** 2)
        (gradient,) = tape.gradient(loss, [variable.value])
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply([tf.convert_to_tensor(gradient) if dense else gradient], [variable])

    run = tf.function(step, jit_compile=True) if jit else step
    for rows in batches:
        run(tf.constant(rows, dtype=tf.int32))
    return variable.numpy(), [v.numpy() for v in optimizer.variables if len(v.shape) == 2]


def test_lazy_rows_move_like_adam_and_the_others_stay():
    table = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
    batch = [[3, 7, 3, 12]]  # row 3 twice: its gradients add up, as in the dense gradient
    lazy, _ = _steps(LazyAdam(0.1, lazy_rows=10), table, batch)
    # Keras's Adam given the sparse gradient squares each duplicate apart (its second moment is the sum of the
    # squares, not the square of the sum); the dense gradient is the reference.
    dense, _ = _steps(keras.optimizers.Adam(0.1), table, batch, dense=True)
    np.testing.assert_allclose(lazy, dense, rtol=1e-6, atol=1e-7)  # step one: untouched rows have no moments

    untouched = np.setdiff1d(np.arange(40), [3, 7, 12])
    assert np.array_equal(lazy[untouched], table[untouched])


def test_lazy_rows_keep_still_when_a_batch_does_not_touch_them():
    """Dense Adam keeps moving a row on its momentum after its batch; the lazy step moves only the rows a batch
    touched (TF Addons' LazyAdam semantics)."""
    table = np.random.default_rng(1).normal(size=(40, 3)).astype("float32")
    batches = [[3, 7], [12, 20]]
    lazy, lazy_moments = _steps(LazyAdam(0.1, lazy_rows=10), table, batches)
    dense, _ = _steps(keras.optimizers.Adam(0.1), table, batches, dense=True)
    after_first, _ = _steps(LazyAdam(0.1, lazy_rows=10), table, batches[:1])
    assert np.array_equal(lazy[[3, 7]], after_first[[3, 7]])
    assert not np.allclose(dense[[3, 7]], after_first[[3, 7]])
    for moment in lazy_moments:  # rows never touched have no moments
        assert not moment[[0, 1, 2, 30]].any()


def test_small_tables_take_adams_own_step_and_the_lazy_step_compiles():
    table = np.random.default_rng(2).normal(size=(40, 3)).astype("float32")
    batches = [[3, 7, 3], [12, 3]]
    small, _ = _steps(LazyAdam(0.1, lazy_rows=1_000), table, batches)
    dense, _ = _steps(keras.optimizers.Adam(0.1), table, batches)
    assert np.array_equal(small, dense)
    eager, _ = _steps(LazyAdam(0.1, lazy_rows=10), table, batches)
    compiled, _ = _steps(LazyAdam(0.1, lazy_rows=10), table, batches, jit=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-7)
