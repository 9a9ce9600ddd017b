"""Two-stage serving: each component's first stage finds its best unseen items and standardises as the whole
catalogue does, and a hybrid served from them publishes the full ranking's lists, reasons and audiences."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from model_helpers import block_of, fit_model
from polars.testing import assert_frame_equal
from threadpoolctl import threadpool_info

import models.base
import models.ranking
import models.serving
from benchmarks.night import two_stage_agreement
from models.hybrid import Hybrid
from models.ranking import FactorCatalogue, factor_scores, factor_top, served_z_scores, unseen_top
from models.registry import build
from models.serving import UserBlock, serve_together
from models.tiled import one_blas_thread, scoring_pool, side_by_side, use_threads
from tasks.publish import score_step

CAPPED_EASE = {"l2": 50.0, "max_items": 60}  # fitted on half the catalogue: the other half scores 0


@pytest.mark.parametrize("model_name", ["als", "two_tower", "item_knn", "ease", "segment_popularity", "content_knn"])
def test_a_first_stage_lists_each_users_best_unseen_items_and_standardises_as_the_whole_catalogue(
        small_data, model_name):
    """Each model's first stage (its own route: factor products with Gram moments, item-kNN's sparse rows,
    capped EASE's fitted columns, segment tables, or the whole block by default) gives each user's best unseen
    items as the full ranking orders them, and z-scores of any columns equal to standardising the whole
    catalogue's scores over the user's unseen items (also what :meth:`column_z_scores` gives); where the
    block's full scores are shared, those are read."""
    train, uf, itf, cold = small_data
    model = fit_model(model_name, train, uf, itf, seed=3, params=CAPPED_EASE if model_name == "ease" else None)
    block = block_of(model, train, cold)
    whole = model.score_block(block)
    served = served_z_scores(whole, block.history)
    depth = 20
    stage = model.first_stage(block, depth)
    columns = np.flatnonzero(np.arange(len(model.item_ids)) % 3 != 0)
    z = stage.z_at(columns)
    others = np.arange(len(z)) != 31
    np.testing.assert_allclose(z[others], served[others][:, columns], rtol=1e-4, atol=2e-4)
    # The user with two unseen items: float32 row sums less every seen score leave those two items' worth in
    # rounding (served_z_scores is 1 % off there); a stage's float64 moments are near the exact ones.
    row = whole[31].astype(np.float64)
    exact = (row - row[:2].mean()) / row[:2].std() if row[:2].std() > 0 else np.zeros_like(row)
    np.testing.assert_allclose(z[31], exact[columns], rtol=1e-3, atol=1e-3)
    # The columns' z-scores alone (a component weighed only on the items with too little evidence) are the
    # first stage's with no candidates: for the factor models, no product with the catalogue at all.
    # (ALS folds a k-shot user in afresh on each call: its vector agrees to ~1e-6.)
    np.testing.assert_allclose(model.column_z_scores(block, columns), z, rtol=1e-4, atol=1e-4)
    assert np.abs(z[:30]).max() > 1.0
    if model_name not in ("two_tower", "segment_popularity"):  # those read demographics: the rest see nothing
        assert (stage.z_at(np.arange(len(model.item_ids)))[32:] == 0).all()

    expected = unseen_top(whole, block.history, depth, model.tiebreak)
    if model_name == "item_knn":  # an item without a neighbour among the user's scores 0 and is no candidate
        expected[np.take_along_axis(whole, np.maximum(expected, 0), axis=1) <= 0] = -1
    if model_name == "ease":  # beyond the cap every item scores 0 and none is a candidate
        assert model.known is not None and len(model.known) == 60
        on_fitted = unseen_top(whole[:, model.known], block.history.tocsc()[:, model.known], depth,
                               model.tiebreak[model.known])
        expected = np.where(on_fitted >= 0, model.known[np.maximum(on_fitted, 0)], -1)
    np.testing.assert_array_equal(stage.top, expected)
    assert (stage.top[31, 2:] == -1).all() and set(stage.top[31, :2]) <= {0, 1}  # two unseen items: no more

    block.shared = {id(model): whole}
    shared = model.first_stage(block, depth)
    np.testing.assert_array_equal(shared.z_at(columns), served[:, columns])
    np.testing.assert_array_equal(shared.top, unseen_top(whole, block.history, depth, model.tiebreak))


def whole_numbers(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """float32 factors of small whole numbers: their products and sums are exact, whatever order BLAS adds them in."""
    return rng.integers(-8, 9, size=shape).astype(np.float32)


@pytest.mark.parametrize("divisor,with_bias,long_tail", [(1.0, False, False), (0.7, True, False), (1.0, False, True),
                                                         (0.7, True, True)])
def test_a_factor_models_best_items_found_a_tile_at_a_time_are_the_whole_rankings(monkeypatch, divisor, with_bias,
                                                                                  long_tail):
    """:func:`factor_top` scores a 20k-item catalogue in 1,024-column tiles from a bound and lists the same
    columns in the same order as ranking each user's whole row: ordinary users, users whose scores tie
    everywhere (a zero vector), a user who has seen all but three items, a user who has seen a tenth of them
    (the sample's seen items masked), a NaN row, items with identical factors (ties broken by the tie-break
    rank), a depth wider than a tile's share; with factors of like lengths, or a long tail of short ones (most
    tiles then below every bound). The factors are small whole numbers (times a power of two), so every
    product is exact whatever BLAS kernel sums it (on some CPUs a row's floats depend on the rows and columns
    beside it)."""
    rng = np.random.default_rng(7)
    n_items, factors = 20_000, 16
    items = whole_numbers(rng, (n_items, factors))
    if long_tail:
        items[rng.random(n_items) < 0.9] *= 2.0 ** -6
    items[17] = whole_numbers(rng, (1, factors)) * 4
    items[5000:5400] = items[17]  # 401 items tied with item 17 for every user
    vectors = whole_numbers(rng, (40, factors))
    vectors[3] = 0.0
    vectors[9] = items[17] * 3  # item 17 and its 400 twins are this user's best
    vectors[11] = np.nan
    bias = rng.standard_normal(n_items).astype(np.float32) if with_bias else None
    tiebreak = rng.permutation(n_items).astype(np.int64)
    rows = [np.full(n_items - 3, 5), np.full(2000, 6), rng.integers(0, 40, 3000)]
    cols = [np.arange(3, n_items), rng.choice(n_items, 2000, replace=False), rng.integers(0, n_items, 3000)]
    seen = sp.csr_matrix((np.ones(sum(map(len, rows)), dtype=np.float32), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(40, n_items))
    seen.sum_duplicates()
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 40 * 1024)
    assert models.ranking.tile_width(40, n_items) == 1024
    for depth in (10, 50, 700):
        whole = factor_scores(vectors, items, divisor, bias, slice(None))
        expected = unseen_top(whole, seen, depth, tiebreak)
        found, best = factor_top(vectors, FactorCatalogue(items, divisor, bias, tiebreak), seen, depth)
        np.testing.assert_array_equal(found, expected, err_msg=str(depth))
        # The listed items' scores, as the whole row has them (-inf past a list: the NaN row, the user with 3).
        np.testing.assert_array_equal(best, np.where(found >= 0, np.take_along_axis(whole, np.maximum(found, 0), 1),
                                                     -np.inf), err_msg=str(depth))
    assert (found[5, 3:] == -1).all() and set(found[5, :3]) == {0, 1, 2}
    assert (found[11] == -1).all()
    twins = {17, *range(5000, 5400)} - set(seen[9].indices)
    assert 390 < len(twins) and (set(found[9, :len(twins)]) == twins or with_bias)


@pytest.mark.parametrize("divisor,with_bias", [(1.0, False), (0.05, True)])
def test_a_runs_ceiling_is_at_least_every_score_in_it(divisor, with_bias):
    """:meth:`FactorCatalogue.ceilings` bounds from above every float32 score the model computes in each run of
    the ordered catalogue (what skipping a tile relies on), also for a user whose vector is an item's own (the
    score is then the ceiling itself, up to rounding) and a user with a zero vector (each item scores its bias),
    tightly for both; +inf where a factor or the user is NaN."""
    rng = np.random.default_rng(17)
    n_items, factors = 5000, 24
    items = (rng.standard_normal((n_items, factors)) * rng.lognormal(0, 1.5, (n_items, 1))).astype(np.float32)
    items[4321, 3] = np.nan
    bias = rng.standard_normal(n_items).astype(np.float32) if with_bias else None
    catalogue = FactorCatalogue(items, divisor, bias, rng.permutation(n_items).astype(np.int64))
    vectors = (rng.standard_normal((30, factors)) * rng.lognormal(0, 1, (30, 1))).astype(np.float32)
    vectors[:10] = items[catalogue.items[:1000:100]] * 3  # aligned with the items leading ten runs
    vectors[28] = 0.0  # scores each item its bias: the run's ceiling is its highest bias
    vectors[29] = np.nan
    starts = np.arange(0, n_items, 100)
    ceiling = catalogue.ceilings(vectors)(starts)
    scores = catalogue.scores_at(vectors)(slice(None), slice(None))
    assert np.isnan(scores[:, -1]).all() and catalogue.items[-1] == 4321  # the NaN item is ordered last
    run_best = np.fmax.reduceat(np.nan_to_num(scores, nan=-np.inf), starts, axis=1)
    assert (ceiling >= run_best).all()
    assert np.isposinf(ceiling[29]).all() and np.isposinf(ceiling[:, -1]).all()
    np.testing.assert_allclose(ceiling[28, :-1], run_best[28, :-1], rtol=1e-3)
    aligned = run_best[np.arange(10), np.arange(10)]
    if not with_bias:  # the best of those runs is the item the vector copies: the ceiling within 1e-3 of it
        np.testing.assert_allclose(ceiling[np.arange(10), np.arange(10)], aligned, rtol=1e-3)


@pytest.mark.parametrize("divisor,with_bias", [(1.0, False), (0.7, True)])
def test_a_long_tail_catalogue_is_scored_only_in_the_tiles_a_row_can_reach(monkeypatch, divisor, with_bias):
    """Where most items' factors are short (a long tail), a block scores the tiles of the catalogue ordered by
    ceiling (:class:`FactorCatalogue`) that can hold one of its rows' best, and lists exactly what ranking the
    whole rows lists: here under a third of the catalogue, though an item with a NaN factor (no ceiling: its
    tile is scored) and a NaN user (no bound: ranked whole) are in it. Without the tail every tile is scored."""
    rng = np.random.default_rng(13)
    n_items, factors = 20_000, 16
    items = whole_numbers(rng, (n_items, factors))
    tail = rng.random(n_items) < 0.9
    items[tail] *= 2.0 ** -6
    items[123, 4] = np.nan
    vectors = whole_numbers(rng, (40, factors))
    vectors[7] = np.nan
    bias = (rng.integers(-4, 5, n_items) / 8).astype(np.float32) if with_bias else None
    tiebreak = rng.permutation(n_items).astype(np.int64)
    seen = sp.random(40, n_items, density=0.005, format="csr", random_state=5, dtype=np.float32)
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 40 * 1024)
    scored = []
    product = models.ranking.factor_scores

    def counted(vectors_, factors_, divisor_, bias_, columns, out=None):
        scores = product(vectors_, factors_, divisor_, bias_, columns, out)
        scored.append(scores.size)
        return scores

    monkeypatch.setattr(models.ranking, "factor_scores", counted)
    whole = product(vectors, items, divisor, bias, slice(None))
    for depth in (10, 50):
        scored.clear()
        found, best = factor_top(vectors, FactorCatalogue(items, divisor, bias, tiebreak), seen, depth)
        np.testing.assert_array_equal(found, unseen_top(whole, seen, depth, tiebreak), err_msg=str(depth))
        np.testing.assert_array_equal(best, np.where(found >= 0, np.take_along_axis(whole, np.maximum(found, 0), 1),
                                                     -np.inf), err_msg=str(depth))
        assert (found[7] == -1).all() and 123 not in found
        assert sum(scored) < 0.3 * whole.size, (depth, sum(scored) / whole.size)
    items[tail] *= 2.0 ** 6  # no tail: every tile can hold someone's best
    scored.clear()
    factor_top(vectors, FactorCatalogue(items, divisor, bias, tiebreak), seen, 50)
    assert sum(scored) > whole.size


@pytest.mark.parametrize("zero_users", [3, 40])
def test_users_without_signal_list_the_tie_break_order_without_scoring_the_catalogue(monkeypatch, zero_users):
    """Zero vectors (users without history) score every item 0: their lists are their first unseen items in
    tie-break order, the same columns and scores as ranking the whole rows, found without scoring a whole row
    (a block of them only or beside ordinary users); a user who has seen all but two items lists two; where a
    factor is not finite the tie is not one number and the rows are ranked whole, as before."""
    rng = np.random.default_rng(5)
    n_items = 20_000
    items = whole_numbers(rng, (n_items, 8))
    vectors = whole_numbers(rng, (40, 8))
    vectors[:zero_users] = 0.0
    tiebreak = rng.permutation(n_items).astype(np.int64)
    first = np.argsort(tiebreak)
    seen = sp.lil_matrix((40, n_items), dtype=np.float32)
    seen[1, first[[0, 2, 5]]] = 1.0  # a zero user who has seen some of the first items in tie-break order
    seen[2, np.setdiff1d(np.arange(n_items), first[-2:])] = 1.0  # all but the last two
    seen[30, rng.choice(n_items, 50, replace=False)] = 1.0
    seen = seen.tocsr()
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 40 * 1024)
    whole = factor_scores(vectors, items, 1.0, None, slice(None))
    wide = []  # the rows of each call that scored the whole catalogue

    def scores(columns, rows, out=None):
        return factor_scores(vectors[rows], items, 1.0, None, columns, out)

    def counted(columns, rows, out=None):
        if isinstance(columns, slice) and columns == slice(None):
            wide.append(np.arange(40)[rows])
        return scores(columns, rows, out)

    zero = ~vectors.any(axis=1)
    for depth in (10, 60):
        found, best = models.ranking.tiled_top(counted, 40, n_items, seen, depth, tiebreak, zero)
        expected = unseen_top(whole, seen, depth, tiebreak)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_array_equal(best, np.where(found >= 0, np.take_along_axis(whole, np.maximum(found, 0), 1),
                                                     -np.inf))
        assert not any(zero[rows].any() for rows in wide)
        assert (found[2, 2:] == -1).all() and list(found[2, :2]) == list(first[-2:])
    np.testing.assert_array_equal(found[0, :5], first[:5])
    np.testing.assert_array_equal(found[1, :3], first[[1, 3, 4]])
    items[first[1]] = np.nan  # that item scores NaN for everyone and ranks last: the zero users are ranked whole
    whole = factor_scores(vectors, items, 1.0, None, slice(None))
    found, _ = models.ranking.tiled_top(scores, 40, n_items, seen, 10, tiebreak, zero)
    np.testing.assert_array_equal(found, unseen_top(whole, seen, 10, tiebreak))
    assert first[1] not in found[0]


def test_the_tiles_run_side_by_side_with_the_same_lists_on_any_number_of_threads(monkeypatch):
    """The tiles are found in one run per scoring thread (each product on one BLAS thread): one, two or five
    runs give the same lists and scores, bit for bit, a row crowded in one run included; called from a
    scoring thread (a caller already on the pool), the runs go inline instead of waiting on the pool."""
    rng = np.random.default_rng(11)
    n_items = 12_000
    items = whole_numbers(rng, (n_items, 8))
    items[9000:] = items[9000] * 4  # 3,000 twins: the last runs' tiles crowd the rows that like them
    vectors = whole_numbers(rng, (24, 8))
    vectors[4] = items[9000]
    seen = sp.random(24, n_items, density=0.01, format="csr", random_state=3, dtype=np.float32)
    tiebreak = rng.permutation(n_items).astype(np.int64)
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 24 * 1024)
    catalogue = FactorCatalogue(items, 1.0, None, tiebreak)
    found = {}
    try:
        for threads in (1, 2, 5):
            use_threads(threads)
            found[threads] = factor_top(vectors, catalogue, seen, 30)
        found["on the pool"] = scoring_pool().submit(factor_top, vectors, catalogue, seen, 30).result(timeout=600)
    finally:
        use_threads(0)
    expected = unseen_top(factor_scores(vectors, items, 1.0, None, slice(None)), seen, 30, tiebreak)
    for key, (top, best) in found.items():
        np.testing.assert_array_equal(top, expected, err_msg=str(key))
        np.testing.assert_array_equal(best, found[1][1], err_msg=str(key))
    assert set(found[1][0][4]) <= set(range(9000, n_items))


def test_blas_on_one_thread_holds_inside_every_section_and_is_given_back_after_sections_from_many_threads():
    """BLAS is on one thread inside each section (:func:`models.tiled.one_blas_thread`), entered from the main
    thread, from the scoring pool's threads, from threads that overlap and one inside another, and on its own
    count after them all: threadpoolctl lets one thread set OpenBLAS's count at a time, and overlapping sections
    that each restored what they found left it on one thread for good."""
    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    def section() -> set[int]:
        with one_blas_thread():
            with one_blas_thread():
                inner = blas_threads()
            return inner | blas_threads()

    before = blas_threads()
    seen = [section(), *scoring_pool().map(lambda _: section(), range(4)), section()]
    start = threading.Barrier(3)

    def overlapping():
        start.wait(60)
        for _ in range(20):
            seen.append(section())

    threads = [threading.Thread(target=overlapping) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(seen) == 66 and all(inside == {1} for inside in seen), seen
    assert blas_threads() == before


@pytest.mark.parametrize("model_name", ["als", "two_tower", "content_knn", "popularity", "segment_popularity",
                                        "item_knn", "ease"])
def test_a_factor_model_serves_its_own_lists_in_two_stages_as_its_full_ranking(small_data, model_name, monkeypatch):
    """Where its catalogue is tiled (forced here: 8-column tiles of a 120-item catalogue), a factor model serves
    alone from its first stage's ranked lists (:meth:`Recommender.own_list`, no dense array of their columns);
    so do the popularity tables (each row's best less the user's seen items), item-kNN (its scored items, then
    the rest at 0 by the tie-break) and capped EASE (its fitted items' best merged with the items beyond the
    cap at 0, above its negative scores): the same lists, order and scores as ranking every item, for warm,
    k-shot and zero-shot users and a user who has seen all but two items; with reasons and new items'
    audiences; and beside other models (a shared block: evaluation), where its stage is found once a block for
    every reader (here the same model under two names)."""
    train, uf, itf, cold = small_data
    model = fit_model(model_name, train, uf, itf, seed=3, params=CAPPED_EASE if model_name == "ease" else None)
    other = fit_model("popularity", train, uf, itf, seed=3)
    block = block_of(model, train, cold)
    users = np.concatenate([np.sort(train["user_id"].unique().to_numpy()), cold])
    full = model.recommend(users, n=10)
    asked = model.item_ids[::7]
    full_served = model.serve(users, n=10, items=asked, users_per_item=6)
    expected_top = model.first_stage(block, 10).top
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 8)
    monkeypatch.setattr(models.ranking, "TILE_MIN_COLUMNS", 8)
    np.testing.assert_array_equal(model.first_stage(block, 10).top, expected_top)
    widths, stages = [], []
    original, first_stage = type(model).own_list, type(model).first_stage

    def spied(self, users, keep, n):
        found = original(self, users, keep, n)
        widths.append(None if found is None else found.top.shape[1])
        return found

    def counted(self, users, depth):
        if self is model:  # not the other model of the pass (popularity: the same class)
            stages.append(depth)
        return first_stage(self, users, depth)

    monkeypatch.setattr(type(model), "own_list", spied)
    monkeypatch.setattr(type(model), "first_stage", counted)
    # The same lists and order; the scores to float32 rounding (a product of other rows, rounded alike by BLAS on
    # some CPUs, not on all).
    assert_frame_equal(model.recommend(users, n=10), full, rel_tol=1e-6)
    assert widths and all(w == 10 for w in widths)
    widths.clear()
    served = model.serve(users, n=10, items=asked, users_per_item=6)
    assert_frame_equal(served.top, full_served.top, rel_tol=1e-6)  # reasons too
    assert_frame_equal(served.by_item, full_served.by_item, rel_tol=1e-6)
    assert len(served.by_item) == 6 * len(asked)
    assert widths and all(w == 10 for w in widths)
    stages.clear()
    beside = serve_together({"one": model, "popularity": other, "two": model}, users, 10)
    assert_frame_equal(beside["one"].top, full, rel_tol=1e-6)
    assert_frame_equal(beside["two"].top, full, rel_tol=1e-6)
    assert len(stages) == -(-len(users) // model.block_users)  # one stage a block for both names


@pytest.fixture(scope="module")
def hybrid_with_new_items(small_data):
    """The night's hybrid on the fixture with a tenth of the items held out of training (items nobody has
    taken), placed in lists (a new-item rate of 1)."""
    train, uf, itf, cold = small_data
    held = np.sort(train["item_id"].unique().to_numpy())[::10]
    hybrid = fit_model("hybrid", train.filter(~pl.col("item_id").is_in(held)), uf, itf, seed=3)
    return build("hybrid", **{**hybrid.params, "new_item_min_rate": 1.0}).use_components(hybrid.components).use_weights(
        hybrid.weights, hybrid.tuning).fit(train.filter(~pl.col("item_id").is_in(held)), uf, itf, seed=3)


def lists_of(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("user_id", "rank").group_by("user_id", maintain_order=True).agg("item_id", "reason_kind")


def test_a_hybrid_served_in_two_stages_publishes_the_full_rankings_lists(small_data, hybrid_with_new_items,
                                                                        monkeypatch):
    """Forced on a small catalogue (``retrieval_min_items`` 0) in blocks of 6 users: with every item a
    candidate, the lists, their order, reasons and new-item audiences are the full ranking's and the scores
    equal to rounding; with 10 candidates a component (a block's union well short of the catalogue) the lists
    are still the full ones; served beside its components (evaluation), the same lists again. Below
    ``retrieval_min_items`` (the default here) the whole catalogue is ranked."""
    train, uf, itf, cold = small_data
    hybrid = hybrid_with_new_items
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 6 * len(hybrid.item_ids))
    widths = []
    original = Hybrid.candidate_scores

    def spied(self, users, keep, n):
        found = original(self, users, keep, n)
        if found is not None:
            widths.append(len(found[0]))
        return found

    monkeypatch.setattr(Hybrid, "candidate_scores", spied)
    users = np.sort(np.concatenate([train["user_id"].unique().to_numpy(), cold]))
    revealed = train.filter(pl.col("user_id").is_in(cold[:5]))
    new = hybrid.item_ids[hybrid.item_popularity == 0]
    few = hybrid.item_ids[hybrid.item_popularity < 5]
    block = hybrid._user_block(users[:8], hybrid._history_matrix(users[:8], None))
    assert hybrid.candidate_scores(block, np.zeros(0, dtype=np.int64), 10) is None

    def serve(model, **others):
        return serve_together({"hybrid": model, **others}, users, 10, history=revealed, explain=True, items=few,
                              users_per_item=15)["hybrid"]

    full = serve(hybrid)
    placed = full.top.filter(pl.col("item_id").is_in(new))
    assert placed.height > 0 and (placed["reason_kind"] == "content").all()
    for depth in (len(hybrid.item_ids), 10):
        widths.clear()
        # Its own blocks as large as the catalogue's: float32 rows are rounded by the block's shape.
        hybrid.params.update(retrieval_min_items=0, retrieval_depth=depth, retrieval_block_users=6)
        try:
            two = serve(hybrid)
            beside = serve(hybrid, **hybrid.components)
        finally:
            hybrid.params.update({name: build("hybrid").params[name] for name in (
                "retrieval_min_items", "retrieval_depth", "retrieval_block_users")})
        for served in (two, beside):
            assert lists_of(served.top).equals(lists_of(full.top)), depth
            joined = full.top.join(served.top, on=["user_id", "item_id"])
            assert joined.height == full.top.height
            np.testing.assert_allclose(joined["score_right"].to_numpy(), joined["score"].to_numpy(), atol=1e-4)
            assert served.by_item.select("item_id", "user_id", "rank").equals(full.by_item.select(
                "item_id", "user_id", "rank"))
        if depth == 10:
            assert np.mean(widths) < 0.8 * len(hybrid.item_ids), np.mean(widths)


def test_a_hybrid_served_in_two_stages_serves_and_publishes_in_its_own_larger_blocks(
        small_data, hybrid_with_new_items, monkeypatch, tmp_path):
    """Served alone in two stages, a hybrid's blocks are ``retrieval_block_users`` users (its second stage
    holds the block's candidates, not the catalogue): the same lists, order, reasons and audiences as in its
    catalogue-wide blocks; beside its components (evaluation, whose blocks are shared whole) and in one stage it
    keeps those. The publish cuts its users at multiples of the larger block: split in 1 or 3 tasks, the same
    rows bit for bit."""
    train, uf, itf, _ = small_data
    hybrid = hybrid_with_new_items
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 6 * len(hybrid.item_ids))  # 6-user catalogue blocks
    users = np.sort(train["user_id"].unique().to_numpy())
    few = hybrid.item_ids[hybrid.item_popularity < 5]
    assert hybrid.block_users == hybrid.serving_block_users == 6  # 120 items: one stage
    blocks = []
    original = type(hybrid)._user_block

    def counted(self, user_ids, history):
        blocks.append(len(user_ids))
        return original(self, user_ids, history)

    monkeypatch.setattr(type(hybrid), "_user_block", counted)
    forced = ("retrieval_min_items", "retrieval_depth", "retrieval_block_users")
    defaults = {name: hybrid.params[name] for name in forced}
    served = {}
    try:
        for label, block in (("catalogue blocks", 6), ("own blocks", 40)):
            hybrid.params.update(retrieval_min_items=0, retrieval_depth=10, retrieval_block_users=block)
            assert hybrid.serving_block_users == block
            blocks.clear()
            served[label] = hybrid.serve(users, 10, explain=True, items=few, users_per_item=15)
            assert max(blocks) == block and len(blocks) == -(-len(users) // block)
        blocks.clear()
        serve_together({"hybrid": hybrid, **hybrid.components}, users[:30], 10)
        assert max(blocks) == 6
        hybrid.save(tmp_path / "hybrid")
        path = tmp_path / "users.parquet"
        pl.DataFrame({"user_id": users}).write_parquet(path)
        whole = score_step(str(tmp_path / "hybrid"), str(path), 0, 1, 10, str(tmp_path / "one"), 5, 15)
        parts = [score_step(str(tmp_path / "hybrid"), str(path), b, 3, 10, str(tmp_path / "three"), 5, 15)
                 for b in range(3)]
    finally:
        hybrid.params.update(defaults)
    # The same lists to float32 rounding, which a block's shape changes (near-ties may swap places).
    own, catalogue = (lists_of(served[label].top) for label in ("own blocks", "catalogue blocks"))
    assert own["user_id"].equals(catalogue["user_id"])
    assert (own["item_id"] == catalogue["item_id"]).mean() > 0.95
    joined = served["catalogue blocks"].top.join(served["own blocks"].top, on=["user_id", "item_id"])
    assert joined.height > 0.99 * served["catalogue blocks"].top.height
    np.testing.assert_allclose(joined["score_right"].to_numpy(), joined["score"].to_numpy(), atol=1e-4)
    sizes = [pl.read_parquet(part.top)["user_id"].n_unique() for part in parts]
    assert all(size % 40 == 0 for size in sizes[:-1]) and sum(sizes) == len(users)
    assert_frame_equal(pl.concat([pl.read_parquet(part.top) for part in parts]), pl.read_parquet(whole.top))


@pytest.mark.parametrize("depth", [0, 10], ids=["whole catalogue", "two stages"])
def test_blocks_served_side_by_side_give_what_one_by_one_gives(small_data, hybrid_with_new_items, monkeypatch,
                                                               depth):
    """A hybrid beside its components, with reasons and new items' audiences, in 6-user blocks: served on two
    scoring threads (blocks side by side, BLAS on one thread throughout) and on one, the same lists, scores,
    reasons and best users, bit for bit; the blocks did run on the scoring threads."""
    train, _, _, _ = small_data
    hybrid = hybrid_with_new_items
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 6 * len(hybrid.item_ids))
    for name, value in {"retrieval_min_items": 0, "retrieval_depth": depth, "retrieval_block_users": 6}.items():
        monkeypatch.setitem(hybrid.params, name, value)
    users = np.sort(train["user_id"].unique().to_numpy())[:60]
    few = hybrid.item_ids[hybrid.item_popularity < 5]
    threads = []
    original = models.serving._served_block

    def spied(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(models.serving, "_served_block", spied)
    served = {}
    try:
        for count in (1, 2):
            use_threads(count)
            served[count] = serve_together({"hybrid": hybrid, **hybrid.components}, users, 10, explain=True,
                                           items=few, users_per_item=15)
    finally:
        use_threads(0)
    assert len(threads) == 20 and any(name.startswith("recsys-scoring") for name in threads[10:])
    assert not any(name.startswith("recsys-scoring") for name in threads[:10])
    for name in served[1]:
        assert_frame_equal(served[2][name].top, served[1][name].top)
        assert_frame_equal(served[2][name].by_item, served[1][name].by_item)
    assert served[1]["hybrid"].by_item.height > 0


def test_parts_side_by_side_come_back_in_order_with_blas_on_one_thread_in_each():
    """:func:`models.tiled.side_by_side` yields each part's result in the parts' order, every part's products
    computed on one BLAS thread (a product of this shape rounds by the thread count on some CPUs: each part's
    equals the one-thread product), BLAS's own count given back after, and a part's error raised."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 200, 200)).astype(np.float32)
    with one_blas_thread():
        alone = a @ b

    def part(k: int) -> tuple[int, bool, str]:
        time.sleep(0.01 * (k % 3))  # parts finish out of order
        return k, np.array_equal(a @ b, alone), threading.current_thread().name

    before = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    try:
        use_threads(2)
        results = list(side_by_side(part, list(range(9))))
        with pytest.raises(ZeroDivisionError):
            list(side_by_side(lambda k: 1 // (k - 4), list(range(9))))
    finally:
        use_threads(0)
    assert [k for k, _, _ in results] == list(range(9))
    assert all(same for _, same, _ in results)
    assert any(name.startswith("recsys-scoring") for _, _, name in results)
    assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == before


def test_a_served_blocks_shared_scores_go_with_the_block_not_with_the_cyclic_collector(
        small_data, hybrid_with_new_items, monkeypatch):
    """Served beside its components in two stages, with reasons and audiences, a hybrid reads stages kept on
    the block that read their columns back through it (a reference cycle). No block outlives the pass with the
    collector off: each block's scores are dropped when it is done (left to the collector, the blocks of the
    100 M night's item-cold pass piled up by GiBs)."""
    train, _, _, _ = small_data
    hybrid = hybrid_with_new_items
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 6 * len(hybrid.item_ids))
    for name, value in {"retrieval_min_items": 0, "retrieval_depth": 10, "retrieval_block_users": 6}.items():
        monkeypatch.setitem(hybrid.params, name, value)
    users = np.sort(train["user_id"].unique().to_numpy())[:30]
    few = hybrid.item_ids[hybrid.item_popularity < 5]
    stages = []
    original = models.base.Recommender.stage_of

    def kept(self, block, depth):
        stages.append(block.shared is not None and ("stage", id(self)) not in block.shared)
        return original(self, block, depth)

    monkeypatch.setattr(models.base.Recommender, "stage_of", kept)
    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, UserBlock) for o in gc.get_objects())
        served = serve_together({"hybrid": hybrid, **hybrid.components}, users, 10, explain=True, items=few,
                                users_per_item=15)
        alive = sum(isinstance(o, UserBlock) for o in gc.get_objects()) - before
    finally:
        gc.enable()
    assert any(stages), "no stage was kept on a shared block: the case is not exercised"
    assert served["hybrid"].top["user_id"].n_unique() == len(users)
    assert alive == 0


def test_a_hybrid_served_after_its_components_still_decides_how_their_blocks_are_computed(
        small_data, hybrid_with_new_items, monkeypatch):
    """Evaluation lists the hybrid after its components. With the catalogue tiled (forced), a factor model or
    the content neighbourhood beside its hybrid gets each block's scores one way only, whole (the hybrid reads
    the blocks of the components it weighs, in one stage) or as a first stage (its own lists; in two stages
    the one the hybrid read): the hybrid is served first in the pass. (A stage of depth 0, the moments and a
    few columns' z-scores the hybrid reads for items with little evidence, scores no catalogue and is not
    counted.) The lists are those served alone."""
    train, _, _, _ = small_data
    hybrid = hybrid_with_new_items
    users = np.sort(train["user_id"].unique().to_numpy())[:40]
    tiled = ("als", "two_tower", "content_knn")
    alone = {name: model.recommend(users, n=10) for name, model in hybrid.components.items()}
    monkeypatch.setattr(models.ranking, "TILE_CELLS", 8)
    monkeypatch.setattr(models.ranking, "TILE_MIN_COLUMNS", 8)
    calls = {(name, method): 0 for name in tiled for method in ("score_block", "first_stage")}
    for name in tiled:
        model = hybrid.components[name]
        for method in ("score_block", "first_stage"):
            original = getattr(type(model), method)

            def counted(self, *args, _original=original, _key=(name, method), _model=model):
                if self is _model and (len(args) == 1 or args[1] > 0):  # depth 0: no product with the catalogue
                    calls[_key] += 1
                return _original(self, *args)

            monkeypatch.setattr(type(model), method, counted)
    blocks = -(-len(users) // hybrid.block_users)
    # Every blended component weighed for every user, the tiled ones among them.
    monkeypatch.setattr(hybrid, "weights", {b: [1.0] * len(w) for b, w in hybrid.weights.items()})
    assert set(tiled) & set(hybrid.blended)
    for params in ({}, {"retrieval_min_items": 0, "retrieval_depth": 10}):
        calls.update(dict.fromkeys(calls, 0))
        hybrid.params.update(params)
        try:
            served = serve_together({**hybrid.components, "hybrid": hybrid}, users, 10)
        finally:
            hybrid.params.update({name: build("hybrid").params[name] for name in params})
        for name in tiled:
            assert calls[(name, "score_block")] + calls[(name, "first_stage")] == blocks, (name, params, calls)
            # The same lists; the scores to float32 rounding: a component's own list carries the scores its tiles
            # found it by, and BLAS may sum an 8-column tile's entries in another order than the whole row's.
            assert served[name].top.drop("score").equals(alone[name].drop("score")), (name, params)
            np.testing.assert_allclose(served[name].top["score"], alone[name]["score"], rtol=1e-5, err_msg=name)
        for name in hybrid.components:  # the ones served from their own stages too (popularity tables, kNN)
            assert served[name].top.drop("score").equals(alone[name].drop("score")), (name, params)
        whole = {name for name in tiled if calls[(name, "score_block")]}
        assert whole == (set() if params else set(tiled) & set(hybrid.blended)), (whole, params)


def test_the_night_benchmark_judges_the_published_lists_against_the_full_ranking(small_data, hybrid_with_new_items,
                                                                                 tmp_path):
    """``benchmarks.night`` re-ranks a sample of the published users with the whole catalogue: lists served in
    two stages agree with it; lists reordered after serving do not; a night that ranked the whole catalogue
    has nothing to judge."""
    hybrid = hybrid_with_new_items
    users = np.sort(small_data[0]["user_id"].unique().to_numpy())
    assert agreement_of(hybrid, tmp_path / "default", users, hybrid.recommend(users, n=10)) is None
    forced = {"retrieval_min_items": 0, "retrieval_depth": 10}
    default = {name: hybrid.params[name] for name in forced}
    hybrid.params.update(forced)
    try:
        published = hybrid.recommend(users, n=10)
        agreement = agreement_of(hybrid, tmp_path / "two-stage", users, published)
        swapped = published.with_columns(rank=pl.when((pl.col("user_id") % 2 == 0) & (pl.col("rank") <= 2))
                                         .then(3 - pl.col("rank")).otherwise(pl.col("rank")))
        changed = agreement_of(hybrid, tmp_path / "swapped", users, swapped)
    finally:
        hybrid.params.update(default)
    assert agreement == {**agreement, "users": 50, "depth": 10, "same_lists": 1.0, "rows_kept": 1.0}
    assert changed["rows_kept"] == 1.0 and 0.2 < changed["same_lists"] < 0.8  # about half the users reordered


def agreement_of(hybrid, folder, users, published: pl.DataFrame) -> dict | None:
    """:func:`benchmarks.night.two_stage_agreement` of ``hybrid`` saved in ``folder`` with these published lists
    of ``users``, judged on 50 of them."""
    hybrid.save(folder / "hybrid")
    path = folder / "recommendations.parquet"
    published.write_parquet(path)
    return two_stage_agreement(folder, str(path), users=50)


def test_the_audience_floor_is_each_new_items_nth_likeliest_user_in_blocks_of_its_few_columns(
        hybrid_with_new_items, monkeypatch):
    """The floor under a new item's audience is the audience model's ``new_item_users``-th highest log-odds
    over every training user, the same as one block of everyone gives it; its pass reads blocks as wide as the
    new items' columns allow (:meth:`column_block_users`), not the catalogue-wide blocks that made a million
    users 12,500 blocks at 200k items."""
    hybrid = hybrid_with_new_items
    audience = hybrid.components[hybrid.params["audience_model"]]
    new = np.flatnonzero(hybrid.item_popularity == 0)
    size = int(hybrid.params["new_item_users"])
    users = hybrid.user_ids
    assert 0 < len(new) < len(hybrid.item_ids) // 4 and size < len(users)
    everyone = audience.column_scores(audience._user_block(users, audience._history_matrix(users, None)), new)
    expected = np.sort(everyone, axis=0)[len(users) - size]
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 6 * len(hybrid.item_ids))  # 6-user catalogue blocks
    assert audience.block_users == 6
    step = audience.column_block_users(len(new))
    assert step == 6 * len(hybrid.item_ids) // len(new) > 4 * audience.block_users
    blocks = []
    original = type(audience).column_scores

    def counted(self, block, columns):
        blocks.append(len(block.user_ids))
        return original(self, block, columns)

    monkeypatch.setattr(type(audience), "column_scores", counted)
    floor = hybrid._audience_floor()
    np.testing.assert_allclose(floor, expected, atol=2e-5)  # float32 products of another block shape
    assert max(blocks) == step and len(blocks) == -(-len(users) // step)
    monkeypatch.setattr(models.base, "COLUMN_BLOCK_MAX_USERS", 10)  # the users' side bounds a block too
    assert audience.column_block_users(len(new)) == 10 and audience.column_block_users(10**9) == 6


def test_a_shared_blocks_columns_are_scored_once_and_read_back_in_any_order(hybrid_with_new_items, monkeypatch):
    """A block several readers share scores an audience model's columns once: a second ask (other columns,
    overlapping, unsorted, repeated) scores only the ones not yet scored, and every answer is the model's own
    scores of exactly the columns asked, in the order asked."""
    hybrid = hybrid_with_new_items
    audience = hybrid.components[hybrid.params["audience_model"]]
    users = hybrid.user_ids[:7]
    block = audience._user_block(users, audience._history_matrix(users, None))
    block.shared = {}
    n = len(audience.item_ids)
    first = np.array([n - 1, 3, 0, 9, 3])
    second = np.array([9, 12, 1, n - 1, 5, 12])
    asked = []
    original = type(audience).column_scores

    def counted(self, ub, columns):
        asked.append(np.asarray(columns).copy())
        return original(self, ub, columns)

    monkeypatch.setattr(type(audience), "column_scores", counted)
    for columns in (first, second, second[::-1]):
        np.testing.assert_allclose(audience.block_column_scores(block, columns),
                                   original(audience, block, columns), rtol=1e-5, atol=1e-6)
    assert [a.tolist() for a in asked] == [[0, 3, 9, n - 1], [1, 5, 12]]
