"""Metric functions against values worked out by hand, with the edge cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from models.ranking import paired_lift
from tasks.metrics import (
    Catalog,
    _coverage_values,
    aggregate,
    coverage,
    diversity,
    hit_rate,
    map_at_k,
    map_full,
    mrr,
    ndcg,
    novelty,
    popularity_bias,
    precision,
    ranked_lists,
    recall,
)

ITEMS = np.arange(1, 7)  # items 1..6
CATALOG = Catalog(item_ids=ITEMS, popularity=np.array([8, 4, 2, 1, 1, 0], dtype=float),
                  genres=np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], dtype=float), n_train_users=8)


def recs(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32, "score": pl.Float32},
                        orient="row")


def truth(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")


@pytest.fixture
def lists():
    # User 1: list [1, 2, 3], relevant {1, 3}: hits at ranks 1 and 3.
    # User 2: list [4, 5, 6], relevant {6, 2, 3, 1} (4 relevant, more than K): hit at rank 3.
    # User 3: list [1, 2, 3], relevant {5}: no hit.
    r = recs([(1, 1, 1, .9), (1, 2, 2, .8), (1, 3, 3, .7), (2, 4, 1, .9), (2, 5, 2, .8), (2, 6, 3, .7),
              (3, 1, 1, .9), (3, 2, 2, .8), (3, 3, 3, .7)])
    t = truth([(1, 1), (1, 3), (2, 6), (2, 2), (2, 3), (2, 1), (3, 5)])
    return ranked_lists(r, t, 3, CATALOG)


def test_precision_recall_hit_rate(lists):
    assert precision(lists).tolist() == pytest.approx([2 / 3, 1 / 3, 0])
    assert recall(lists).tolist() == pytest.approx([2 / 2, 1 / 4, 0])
    assert hit_rate(lists).tolist() == [1, 1, 0]


def test_ndcg_by_hand(lists):
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    user1 = (d[0] + d[2]) / (d[0] + d[1])  # two relevant: the ideal list has them at ranks 1, 2
    user2 = d[2] / (d[0] + d[1] + d[2])  # four relevant but K = 3: the ideal list fills all three
    assert ndcg(lists).tolist() == pytest.approx([user1, user2, 0.0])


def test_map_at_k_and_full_map(lists):
    user1 = (1 / 1 + 2 / 3) / 2
    user2_at_k = (1 / 3) / 3  # normalised by min(K, relevant) = 3
    user2_full = (1 / 3) / 4  # normalised by all 4 relevant
    assert map_at_k(lists).tolist() == pytest.approx([user1, user2_at_k, 0])
    assert map_full(lists).tolist() == pytest.approx([user1, user2_full, 0])


def test_mrr(lists):
    assert mrr(lists).tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_beyond_accuracy(lists):
    # novelty: -log2(pop/8); item 6 has popularity 0 and counts as 1 (never infinite).
    info = {i: -math.log2(max(p, 1) / 8) for i, p in zip(ITEMS, CATALOG.popularity, strict=True)}
    assert novelty(lists).tolist() == pytest.approx([(info[1] + info[2] + info[3]) / 3,
                                                     (info[4] + info[5] + info[6]) / 3,
                                                     (info[1] + info[2] + info[3]) / 3])
    assert popularity_bias(lists)[0] == pytest.approx((8 + 4 + 2) / 8 / 3)
    # User 1's genres: [1,0], [1,0], [0,1]: pair similarities 1, 0, 0 -> diversity 1 - 1/3.
    # User 2: [0,1], [1,1], [0,0] (no genres): only the first pair counts: cos = 1/sqrt(2).
    div = diversity(lists)
    assert div[0] == pytest.approx(1 - 1 / 3)
    assert div[1] == pytest.approx(1 - (2 * (1 / math.sqrt(2))) / 6)
    value, _, _ = aggregate("coverage", coverage(lists), np.zeros((3, 3), dtype=int), len(ITEMS))
    assert value == pytest.approx(6 / 6)


def test_fewer_than_k_relevant_and_short_lists():
    # A list shorter than K (the user has seen almost everything) counts missing ranks as misses.
    r = recs([(1, 2, 1, .9)])
    lists = ranked_lists(r, truth([(1, 2)]), 3, CATALOG)
    assert lists.items[0].tolist()[1:] == [-1, -1]
    assert precision(lists)[0] == pytest.approx(1 / 3)
    assert ndcg(lists)[0] == pytest.approx(1.0)
    assert recall(lists)[0] == 1.0


def test_users_without_truth_are_excluded():
    r = recs([(1, 1, 1, .9), (2, 1, 1, .9)])
    lists = ranked_lists(r, truth([(1, 1)]), 1, CATALOG)
    assert lists.users.tolist() == [1]


def test_empty_lists_score_zero():
    lists = ranked_lists(recs([]), truth([(1, 1)]), 3, CATALOG)
    assert ndcg(lists).tolist() == [0.0] and precision(lists).tolist() == [0.0] and mrr(lists).tolist() == [0.0]


def test_bootstrap_ci_contains_mean_and_lift_is_paired():
    rng = np.random.default_rng(0)
    base = rng.random(500)
    better = base * 1.2
    resamples = rng.integers(0, 500, size=(300, 500))
    value, lo, hi = aggregate("ndcg", base, resamples, 10)
    assert lo < value < hi and value == pytest.approx(base.mean())
    lift, lo, hi = paired_lift(better, base, resamples)
    # Perfectly paired: every resample shows the same +20 %, so the interval collapses on it.
    assert lift == pytest.approx(0.2) and lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


def test_ties_are_broken_deterministically():
    """Equal scores: the model's tie-breaker (popularity, then item id) decides, the same every time."""
    from datetime import datetime

    from models.registry import build

    inter = pl.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 20, 30], "rating": 1.0, "ts": datetime(2024, 1, 1)})
    uf = pl.DataFrame({"user_id": [1, 2, 3, 4], "gender": "unknown", "age_bucket": "unknown",
                       "occupation": "unknown", "zip_region": "unknown"})
    itf = pl.DataFrame({"item_id": [10, 20, 30], "genres": [[], [], []], "release_year": [None] * 3},
                       schema_overrides={"genres": pl.List(pl.String), "release_year": pl.Int32})
    model = build("popularity").fit(inter, uf, itf, seed=0)
    first = model.recommend([4], n=3)
    assert first["item_id"].to_list() == [10, 20, 30]  # all tied at popularity 1: lower id first
    assert all(model.recommend([4], n=3).equals(first) for _ in range(3))


def test_vectorised_coverage_bootstrap_equals_one_resample_at_a_time():
    rng = np.random.default_rng(3)
    listed = rng.integers(-1, 40, size=(60, 5))  # -1: a shorter list
    resamples = rng.integers(0, 60, size=(203, 60))  # not a multiple of the 8 resamples a byte packs
    _, lo, hi = aggregate("coverage", listed, resamples, 50)
    by_hand = np.array([len(np.unique(listed[r][listed[r] >= 0])) / 50 for r in resamples])
    assert np.array_equal(_coverage_values(listed, 50, resamples), by_hand)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(by_hand, [2.5, 97.5])))


def test_top_n_orders_planted_ties_exactly_by_score_then_tiebreak_rank():
    from models.serving import top_n

    half = np.float32(0.5)
    above = np.nextafter(half, np.float32(1))  # one float32 step above 0.5: a real, tiny difference
    scores = np.array([[half, half, above, half, half],  # ties across the top-3 boundary
                       [0, 0, 0, 0, 0],  # all tied (e.g. EASE with no history)
                       [-np.inf, 1, -np.inf, -np.inf, -np.inf]], dtype=np.float32)  # seen almost everything
    tiebreak = np.array([3, 1, 4, 0, 2])  # rank of each item in the tie order
    items = np.array([10, 11, 12, 13, 14])
    out = top_n(np.array([1, 2, 3]), scores, 3, items, tiebreak)
    by_user = {u: out.filter(pl.col("user_id") == u)["item_id"].to_list() for u in (1, 2, 3)}
    assert by_user[1] == [12, 13, 11]  # the higher score first, then ranks 0 and 1 among the 0.5s
    assert by_user[2] == [13, 11, 14]
    assert by_user[3] == [11]
    assert out["rank"].to_list() == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize("n_items", [40, 3_000, 50_000])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("ranked_ties", [False, True])
def test_top_k_indices_is_the_full_sort_of_each_row_ties_in_tiebreak_order(n_items, k, ranked_ties):
    """The tuning's top-k (each component's candidates, every nDCG) is exactly the first k of each row sorted by
    (score desc, tie-break rank asc; column order by default), as served: distinct scores, heavy ties, one tie
    everywhere, masked items, rows with fewer than k finite scores, and NaNs (below every number, -inf
    included). argpartition chose among ties at the k-th place as its algorithm happened to leave them."""
    from models.ranking import top_k_indices

    rng = np.random.default_rng(n_items + k)
    rows = 40
    scores = rng.standard_normal((rows, n_items)).astype(np.float32)
    scores[:, ::7] = -np.inf  # seen items
    scores[:4] = 0.0  # no signal: ties everywhere
    scores[4:12] = np.round(scores[4:12] * 2) / 2  # a few distinct values, many tied
    scores[12:16] = -np.inf
    scores[12:16, :3] = 1.0  # seen almost everything
    scores[16:20] = np.where(rng.random((4, n_items)) < 0.9, -np.inf, scores[16:20])
    scores[20:22, ::3] = np.nan  # a model's NaNs, among numbers
    scores[22] = np.nan
    scores[22, 5:7] = -np.inf
    scores[23, : n_items // 2] = np.nan
    tiebreak = rng.permutation(n_items).astype(np.int64) if ranked_ties else None
    top = top_k_indices(scores, k, tiebreak)
    assert top.shape == (rows, min(k, n_items))
    columns = np.arange(n_items) if tiebreak is None else tiebreak
    for r in range(rows):
        expected = np.lexsort((columns, -np.nan_to_num(scores[r], nan=-np.inf), np.isnan(scores[r])))[:k]
        assert top[r].tolist() == expected.tolist(), r


@pytest.mark.parametrize("n_items", [40, 3_000, 50_000])
@pytest.mark.parametrize("n", [1, 10, 50])
@pytest.mark.parametrize("tied_rows", [8, 1])
def test_top_n_on_wide_rows_is_the_full_sort_of_each_row(n_items, n, tied_rows):
    """On rows wide enough for the bound from groups' maxima (:func:`models.ranking.nth_best_at_most`), every
    row's list is exactly the first n of the whole row sorted by (score desc, tiebreak asc): rows of distinct
    scores, heavy ties, one tie everywhere, masked items, and rows with fewer than n scorable items. One tied row
    among many leaves the block's candidates few enough that rows are not counted one by one: the lists are
    exact all the same."""
    from models.serving import top_n

    rng = np.random.default_rng(n_items + n)
    rows = 96
    scores = rng.standard_normal((rows, n_items)).astype(np.float32)
    scores[:, ::7] = -np.inf  # seen items
    scores[:tied_rows] = 0.0  # no signal: ties everywhere
    scores[8:16] = np.round(scores[8:16] * 2) / 2  # a few distinct values, many tied
    scores[16:20] = -np.inf
    scores[16:20, :3] = 1.0  # seen almost everything
    scores[20:24] = np.where(rng.random((4, n_items)) < 0.9, -np.inf, scores[20:24])
    scores[24:28, : n_items // 2] = scores[24:28, n_items // 2:][:, : n_items // 2]  # repeated halves
    tiebreak = rng.permutation(n_items).astype(np.int64)
    items = np.arange(n_items, dtype=np.int64) + 7
    out = top_n(np.arange(rows), scores, n, items, tiebreak)
    for r in range(rows):
        order = np.lexsort((tiebreak, -scores[r]))
        expected = [int(items[c]) for c in order[:n] if np.isfinite(scores[r, c])]
        assert out.filter(pl.col("user_id") == r)["item_id"].to_list() == expected, r
