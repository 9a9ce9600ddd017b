"""The item a reason names: the known item with the highest affinity, ties to the lower column, in chunks."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.explain import best_by_vectors, best_history_item


def test_best_history_item_matches_brute_force_with_ties_and_chunks():
    rng = np.random.default_rng(0)
    history = sp.random(300, 200, density=0.1, format="lil", random_state=1)
    history[5, :] = 0  # a user without history
    history = sp.csr_matrix(history)
    history.eliminate_zeros()
    history.data[:] = 1.0
    weights = rng.random((200, 200)).round(1)  # coarse: many ties
    weights[3, 7] = np.nan  # an undefined affinity never wins
    rows = np.repeat(np.arange(300), 7)
    cols = rng.integers(0, 200, len(rows))
    expected = []
    for row, col in zip(rows, cols, strict=True):
        known = history[row].indices
        values = np.nan_to_num(weights[known, col], nan=-np.inf)
        expected.append(known[values == values.max()].min() if len(known) else -1)
    for chunk in (1, 50, 1 << 21):  # one pair at a time, a few, everything at once
        got = best_history_item(history, rows, cols, lambda known, target: weights[known, target], chunk=chunk)
        assert np.array_equal(got, expected), chunk
    assert (got[rows == 5] == -1).all()


def test_best_by_vectors_is_the_gathered_rule_as_one_product_per_user():
    """The new items' reasons: one matrix product per user, the same choice as the gathered dot products,
    ties (small integer vectors: exact sums in any order) to the lower column, NaN never wins."""
    rng = np.random.default_rng(3)
    history = sp.random(120, 90, density=0.15, format="lil", random_state=4)
    history[7, :] = 0  # a user without history
    history = sp.csr_matrix(history)
    history.eliminate_zeros()
    vectors = rng.integers(0, 3, (90, 6)).astype(np.float32)  # many exact ties
    vectors[11] = np.nan  # an item whose affinity is undefined
    rows = rng.permutation(np.repeat(np.arange(120), 9))  # pairs of one user scattered through the input
    cols = rng.integers(0, 90, len(rows))

    def gathered(known: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", vectors[known], vectors[target])

    got = best_by_vectors(history, rows, cols, vectors)
    assert np.array_equal(got, best_history_item(history, rows, cols, gathered))
    assert (got[rows == 7] == -1).all() and (got >= 0).sum() > 900
    assert 11 not in got[cols != 11]  # a NaN vector never names itself as the reason
    assert len(best_by_vectors(history, rows[:0], cols[:0], vectors)) == 0
