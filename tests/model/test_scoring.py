"""Blockwise scoring: the tiled EASE product equals the plain one, and models scored together share blocks."""

from __future__ import annotations

import numpy as np
import polars as pl
import psutil
import pytest
import scipy.sparse as sp
from model_helpers import block_of, fit_model
from polars.testing import assert_frame_equal

import models.base
import models.content
import models.item_knn
from models.ease import DEFAULT_MAX_ITEMS, _cholesky_in_place, _spd_inverse_in_place, memory_item_cap
from models.hybrid import ColumnPart, Hybrid, MixWeight
from models.ranking import nth_best_at_most, nth_best_in_rows, standardize_rows
from models.registry import build, load
from models.serving import BestUsers, item_cooccurrence, merge_best_users, recommend_together
from models.tiled import TILE, TiledMatrix
from tasks.publish import score_step
from tasks.split import carve_validation


@pytest.mark.parametrize("n_cols", [1, 300, 2 * TILE, 2 * TILE + 7])
def test_tiled_product_equals_the_plain_product(n_cols, tmp_path):
    rng = np.random.default_rng(n_cols)
    weights = rng.standard_normal((n_cols, n_cols)).astype(np.float32)
    history = sp.random(37, n_cols, density=0.02, format="csr", dtype=np.float32, random_state=1)
    if n_cols == 300:  # dense enough for the SGEMM path
        history = sp.random(37, n_cols, density=0.3, format="csr", dtype=np.float32, random_state=1)
    keep = np.ones(37, dtype=np.float32)
    keep[3] = 0.0  # a user with no history scores zero everywhere
    history = (sp.diags(keep) @ history).tocsr()
    tiled = TiledMatrix.from_dense(weights)
    np.testing.assert_allclose(tiled.rmatmul(history), history @ weights, rtol=1e-5, atol=1e-5)
    assert np.array_equal(tiled.to_dense(), weights)
    # Written into the given columns of a wider array (a model fitted on part of a catalogue), and read back
    # element by element in any order across tiles.
    columns = np.sort(rng.choice(n_cols + 50, size=n_cols, replace=False))
    wide = np.zeros((37, n_cols + 50), dtype=np.float32)
    assert tiled.rmatmul(history, out=wide, columns=columns) is wide
    np.testing.assert_array_equal(wide[:, columns], tiled.rmatmul(history))
    assert not np.delete(wide, columns, axis=1).any()
    rows, cols = rng.integers(0, n_cols, 500), rng.integers(0, n_cols, 500)
    assert np.array_equal(tiled.take(rows, cols), weights[rows, cols])
    tiled.save(tmp_path / "w.npy")
    again = TiledMatrix.load(tmp_path / "w.npy", n_cols)
    assert again.shape == (n_cols, n_cols) and [t.shape for t in again.tiles] == [t.shape for t in tiled.tiles]
    assert np.array_equal(again.to_dense(), weights) and not again.tiles[0].flags.writeable  # mapped, read-only
    assert np.array_equal(again.rmatmul(history), tiled.rmatmul(history))
    assert np.array_equal(again.take(rows, cols), weights[rows, cols])
    # Saved again over a file a loaded matrix maps: that one keeps its weights (the file is replaced, not
    # rewritten in place), and a new load reads the new ones.
    TiledMatrix.from_dense(2 * weights).save(tmp_path / "w.npy")
    assert np.array_equal(again.to_dense(), weights)
    assert np.array_equal(TiledMatrix.load(tmp_path / "w.npy", n_cols).to_dense(), 2 * weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npy"]
    with pytest.raises(ValueError, match="not a matrix of"):
        TiledMatrix.load(tmp_path / "w.npy", n_cols + 1)


@pytest.mark.parametrize("n", [3, 2 * TILE, 2 * TILE + 300])
def test_ease_weights_are_laid_out_in_the_inverse_memory_and_equal_the_formula(n):
    rng = np.random.default_rng(n)
    x = (rng.random((400, n)) < 0.05).astype(np.float32)
    inverse = np.linalg.inv((x.T @ x + 10 * np.eye(n)).astype(np.float64)).astype(np.float32)
    expected = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(expected, 0.0)
    tiled = TiledMatrix.ease_weights_in_place(inverse)
    assert all(np.shares_memory(tile, inverse) for tile in tiled.tiles)  # no second n x n array
    np.testing.assert_allclose(tiled.to_dense(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n, most", [(237, 40), (90, 40), (64, 64), (65, 64)])
def test_cholesky_in_blocks_is_lapacks_factor_and_reads_one_triangle(n, most):
    """The factorisation in blocks (what a matrix beyond THREADED_POTRF_MAX gets; a small one here) is the
    Cholesky factor, reading only LAPACK's upper triangle of the Fortran view: the other one may hold
    anything (the Gram matrix is built as that triangle alone), and is left as it was."""
    rng = np.random.default_rng(n)
    x = (rng.random((300, n)) < 0.1).astype(np.float32)
    gram = (x.T @ x + 5 * np.eye(n)).astype(np.float32)
    expected = np.linalg.cholesky(gram.astype(np.float64)).T  # upper: gram = U^T U
    matrix = gram.copy()
    matrix[np.triu_indices(n, 1)] = np.nan  # row-major upper = the Fortran view's lower: never read
    assert _cholesky_in_place(matrix.T, most=most, columns=16) == 0
    np.testing.assert_allclose(np.triu(np.nan_to_num(matrix.T)), expected, rtol=2e-5, atol=2e-5)
    assert np.isnan(matrix[np.triu_indices(n, 1)]).all()

    inverse = gram.copy()
    inverse[np.triu_indices(n, 1)] = np.nan
    if n == 237:  # the whole inverse, through the blocks, equals float64's
        result = _spd_inverse_in_place(inverse, block=50, most=most)
        np.testing.assert_allclose(result, np.linalg.inv(gram.astype(np.float64)), rtol=1e-4, atol=1e-6)
        assert np.shares_memory(result, inverse)


def test_cholesky_of_a_matrix_that_is_not_positive_definite_says_where():
    gram = np.eye(120, dtype=np.float32)
    gram[100, 100] = -1.0
    assert _cholesky_in_place(gram.T, most=32) == 101  # LAPACK's 1-based leading minor


@pytest.mark.parametrize("step", [1, 7, 64, 200])
def test_item_cooccurrence_lower_gives_the_lower_triangle_of_every_row_block(step):
    x = sp.random(80, 61, density=0.15, format="csr", dtype=np.float32, random_state=step)
    x.data[:] = 1.0
    full, lower = np.full((61, 61), np.nan, np.float32), np.full((61, 61), np.nan, np.float32)

    def into(target):
        def on_rows(lo, rows):
            target[lo:lo + len(rows), :rows.shape[1]] = rows
        return on_rows

    item_cooccurrence(x, step, into(full))
    item_cooccurrence(x, step, into(lower), lower=True)
    expected = (x.T @ x).toarray()
    assert np.array_equal(full, expected)
    for lo in range(0, 61, step):
        hi = min(61, lo + step)
        assert np.array_equal(lower[lo:hi, :hi], expected[lo:hi, :hi])
        assert np.isnan(lower[lo:hi, hi:]).all()  # nothing beyond the block's last row


@pytest.mark.parametrize(("rows_per_block", "dense_from"), [(256, 1.0), (7, 1.0), (256, 0.0), (7, 0.0)],
                         ids=["one-block", "blocks", "one-block-dense", "blocks-dense"])
@pytest.mark.parametrize("catalogue", ["dealt", "whole"])
def test_item_knn_keeps_each_items_k_most_similar_ties_to_the_more_popular(small_data, monkeypatch, rows_per_block,
                                                                           dense_from, catalogue):
    """The formula, dense, in the test: sim(i, j) = co(i, j) / (sqrt(n_i n_j) + shrinkage) for j != i with a user
    in common, each item's k largest kept, ties at the k-th place to the more popular item (the model's
    tie-break); in one block of items or in blocks of a few rows, each item's counts listed as they are touched
    or (``dense``) read back from the whole row; in a catalogue of the dealt items alone (the least popular
    taken too) or of every item (most never taken). Binary histories make ties common."""
    monkeypatch.setattr(models.item_knn, "ROWS_PER_BLOCK", rows_per_block)
    monkeypatch.setattr(models.item_knn, "DENSE_FROM", dense_from)
    train, uf, itf, _ = small_data
    # Ten rounds, each dealing 60 items to 12 users 5 apiece: every item taken by 10 users, so similarities
    # are shared counts over one denominator, and the tie-break (here the item id) decides many places.
    users, items = np.sort(uf["user_id"].to_numpy())[:120], np.sort(itf["item_id"].to_numpy())[:60]
    rng = np.random.default_rng(0)
    dealt = np.concatenate([rng.permutation(60) for _ in range(10)])
    train = pl.DataFrame({"user_id": np.repeat(users, 5), "item_id": items[dealt]}).join(
        train.select("rating", "ts").head(1), how="cross")
    if catalogue == "dealt":
        itf = itf.filter(pl.col("item_id").is_in(items))
    model = fit_model("item_knn", train, uf, itf, seed=0, params={"neighbours": 7, "shrinkage": 10.0})
    x = model.train.astype(np.float32)
    co = (x.T @ x).toarray()
    norms = np.sqrt(co.diagonal())
    sim = co / (norms[:, None] * norms[None, :] + np.float32(model.params["shrinkage"]))
    np.fill_diagonal(sim, 0.0)
    got = model.similarity.tocsr()
    ties = 0
    for i in range(sim.shape[0]):
        positive = np.flatnonzero(sim[i] > 0)
        order = positive[np.lexsort((model.tiebreak[positive], -sim[i, positive]))][:7]
        ranked = np.sort(sim[i, positive])[::-1]
        ties += len(ranked) > 7 and ranked[6] == ranked[7]  # the 7th and 8th alike: the tie-break chose
        row = slice(got.indptr[i], got.indptr[i + 1])
        assert set(got.indices[row]) == set(order), i
        np.testing.assert_array_equal(np.sort(got.data[row]), np.sort(sim[i, order]))
    assert ties > 10  # the tie-break decided some rows


@pytest.mark.parametrize("lengths", [[30, 28, 31, 0, 29], [2000, 3, 0, 40, 12, 7]], ids=["like", "ragged"])
def test_the_nth_best_of_each_row_is_read_off_the_rows_own_values(lengths):
    """Item-kNN bounds each co-occurrence row by its (k + 1)-th best similarity in the product's own layout:
    rows of like lengths in one padded partition, ragged rows (a popular item's beside rare ones) one by one;
    a row shorter than n has no bound. Many values tie, as shared counts do."""
    rng = np.random.default_rng(1)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 6, size=starts[-1]).astype(np.float32)
    nth = nth_best_in_rows(values, starts, 10)
    for row, length in enumerate(lengths):
        own = np.sort(values[starts[row]:starts[row + 1]])[::-1]
        assert nth[row] == (own[9] if length >= 10 else -np.inf), row


@pytest.mark.parametrize("n", [1, 10, 50])
def test_a_rows_nth_best_is_bounded_from_below_by_its_groups_maxima(n):
    """The bound that lets a row's candidates through (:func:`nth_best_at_most`) keeps every one of the row's n
    best numbers, or lets fewer than n numbers through (the callers then rank that row whole): rows of distinct
    scores, heavy ties, one value everywhere, masked entries (-inf), NaNs among numbers, a group of NaNs alone,
    a row of NaNs and a row of fewer numbers than n above -inf; and it is tight: on rows of distinct scores it
    lets through fewer than twice n values, where -inf would let through all of them, and on a row whose best
    lie in the columns past a whole number of groups (a catalogue ordered by ceiling, worst last or best last)
    it is their n-th best."""
    rng = np.random.default_rng(n)
    rows, width = 15, 64 * n + 37  # not a whole number of groups: the columns past them join the first groups
    values = rng.standard_normal((rows, width)).astype(np.float32)
    values[1] = np.round(values[1] * 2) / 2  # a few values, many tied
    values[2] = 0.0  # no signal
    values[3, ::3] = -np.inf  # seen
    values[4, rng.choice(width, 3 * n, replace=False)] = np.nan
    values[5] = -np.inf
    values[5, : n // 2] = 1.0  # fewer than n numbers above -inf
    values[6, :: 8 * n] = np.nan  # the first group: NaNs alone
    values[7, ::3] = np.nan
    values[8] = np.nan
    values[14, : 64 * n] = -1.0
    values[14, 64 * n:] = np.arange(37, dtype=np.float32)  # the best last
    bound = nth_best_at_most(values, n)
    if n <= 37:
        assert bound[14] == 37 - n
    for r in range(rows):
        numbers = np.sort(values[r][~np.isnan(values[r])])[::-1]
        through = np.count_nonzero(values[r] >= bound[r])
        assert through < n or (len(numbers) >= n and numbers[n - 1] >= bound[r]), r
    distinct = [0, 9, 10, 11, 12, 13]
    through = np.count_nonzero(values[distinct] >= bound[distinct, None], axis=1)
    assert (through >= n).all() and through.mean() < 2 * n, through
    assert (np.count_nonzero(values[[4, 7]] >= bound[[4, 7], None], axis=1) >= n).all()  # NaNs passed over
    narrow = values[:, : 16 * n - 1]  # narrower than two columns a group: the n-th best itself
    np.testing.assert_array_equal(nth_best_at_most(narrow, n),
                                  np.partition(narrow, narrow.shape[1] - n, axis=1)[:, narrow.shape[1] - n])
    if n > 1:  # fewer columns than n: no bound
        assert (nth_best_at_most(values[:, : n - 1], n) == -np.inf).all()


def test_a_hybrid_scored_with_its_components_scores_each_once_and_matches(small_data):
    train, uf, itf, cold = small_data
    hybrid = fit_model("hybrid", train, uf, itf, seed=3)
    models = {"hybrid": hybrid, **hybrid.components}
    users = np.concatenate([np.sort(train["user_id"].unique().to_numpy())[:40], cold[:10]])
    history = train.filter(pl.col("user_id").is_in(users[:5]))
    alone = {name: model.recommend(users, n=10, history=history) for name, model in models.items()}

    calls: dict[str, int] = {}
    for name, model in models.items():
        original = model.score_block

        def counted(block, _name=name, _original=original):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(block)

        model.score_block = counted
    together = recommend_together(models, users, n=10, history=history)
    for name in models:
        assert_frame_equal(together[name], alone[name])
    assert set(calls) == set(models)
    assert all(count == 1 for count in calls.values()), calls  # one block, each model scored once


def test_a_hybrid_standardises_each_component_over_the_unseen_items_as_its_tuning_does(small_data):
    """Served scores are the tuned blend of each component's z-scores with the user's seen items left out of
    the mean and deviation (as when the blend is tuned); counting them, as CF models score them highest, gives
    other scores and another ranking."""
    train, uf, itf, cold = small_data
    hybrid = fit_model("hybrid", train, uf, itf, seed=3)
    users = np.concatenate([np.sort(train["user_id"].unique().to_numpy())[:40], cold[:10]])
    revealed = train.filter(pl.col("user_id") == users[0]).head(3).with_columns(pl.lit(cold[0]).alias("user_id"))
    block = hybrid._user_block(users, hybrid._history_matrix(users, revealed))
    seen = block.history.toarray() > 0
    assert seen[:40].any(axis=1).all() and seen[40].sum() == 3 and not seen[41:].any()

    def blend(mask_first: bool) -> np.ndarray:
        out = np.zeros(seen.shape, dtype=np.float32)
        for name, weight in hybrid._mix(block):
            raw = hybrid.components[name].score_block(block).astype(np.float32)
            z = standardize_rows(np.where(seen, -np.inf, raw) if mask_first else raw)
            out += np.where(np.isneginf(z), 0.0, z) * (weight.by_user * weight.evidence + weight.by_item)
        return out

    served = hybrid.score_block(block)
    assert np.isfinite(served).all()
    np.testing.assert_allclose(served[~seen], blend(mask_first=True)[~seen], rtol=1e-4, atol=1e-4)
    counting_seen = blend(mask_first=False)
    assert np.abs(counting_seen[~seen] - served[~seen]).max() > 0.05


def test_the_blend_is_tuned_on_the_z_scores_it_is_served_with(small_data):
    """Each validation case's component z-scores, as the tuning reads them, are bit for bit those the served
    blend adds (Hybrid.score_block: standardised over the unseen items, 0 where a component cannot score an
    item), the seen items masked: warm users (their training items seen) and cold users with revealed items.
    Standardising after masking gave other roundings (and -inf where serving adds 0). The columns are in the
    served tie-break order (more popular first), so the grid's ties break as the published lists' do."""
    train, uf, itf, _ = small_data
    fold = carve_validation(train, 0.25, seed=2)
    components = {c: fit_model(c, fold.train, uf, itf, seed=2) for c in Hybrid.needed_components()}
    hybrid = build("hybrid", grid_step=0.5, tune_candidates=10**6).use_components(components)
    hybrid = hybrid.use_validation(fold.cases).fit(fold.train, uf, itf, seed=2)
    cases = [case for case in fold.cases if case.truth.height]
    assert {case.as_history for case in cases} == {True, False}
    for case in cases:
        users = np.intersect1d(case.users, case.truth["user_id"].unique().to_numpy())[:30]
        view = hybrid._case_view(hybrid.components, users, case)
        known = case.known.filter(pl.col("user_id").is_in(users))
        block = hybrid._user_block(users, hybrid._history_matrix(users, known if case.as_history else None))
        seen = hybrid._history_matrix(users, known).toarray() > 0
        assert np.array_equal(seen, block.history.toarray() > 0), case.label  # warm: the training items
        order = np.argsort(hybrid.tiebreak)  # the view's columns: the served tie-break order
        assert np.array_equal(view.relevant, (hybrid._history_matrix(users, case.truth).toarray() > 0)[:, order])
        seen = seen[:, order]
        for name, z in zip(hybrid.components, view.z, strict=True):
            served = standardize_rows(hybrid.components[name].block_scores(block), exclude=block.history, fill=0.0)
            assert np.array_equal(z[~seen], served[:, order][~seen]), (case.label, name)
            assert np.isneginf(z[seen]).all(), (case.label, name)


@pytest.mark.parametrize("model_name", ["content_knn", "genre_year"])
def test_content_z_scores_of_a_few_columns_equal_standardising_the_whole_catalogue(small_data, model_name):
    """The content neighbourhood's z-scores of some columns, from each row's mean and deviation computed off the
    profile and the content's Gram matrix, equal scoring every item and standardising over the unseen ones:
    known users, a k-shot user, users with no history (every score 0: no deviation), a user who has seen all
    but two items; and where the block's full scores are already shared, those are read."""
    train, uf, itf, cold = small_data
    model = fit_model(model_name, train, uf, itf, seed=3)
    block = block_of(model, train, cold)
    columns = np.flatnonzero(np.arange(len(model.item_ids)) % 3 == 1)
    whole = standardize_rows(model.score_block(block), exclude=block.history, fill=0.0)
    few = model.column_z_scores(block, columns)
    others = np.arange(len(few)) != 31
    np.testing.assert_allclose(few[others], whole[others][:, columns], rtol=1e-4, atol=1e-4)
    # The user with two unseen items: their deviation is the difference of two scores, so float32 rounding of the
    # whole row (which differs with the CPU's BLAS kernels) moves its z-scores by ~1e-4; against the exact float64
    # standardisation of those two, the moments off the Gram matrix agree (as in test_retrieval).
    row = model.score_block(block)[31].astype(np.float64)
    exact = (row - row[:2].mean()) / row[:2].std() if row[:2].std() > 0 else np.zeros_like(row)
    np.testing.assert_allclose(few[31], exact[columns], rtol=1e-3, atol=1e-3)
    assert (few[32:] == 0).all() and np.abs(few[:30]).max() > 1.0
    block.shared = {id(model): model.score_block(block)}
    np.testing.assert_array_equal(model.column_z_scores(block, columns), whole[:, columns])


@pytest.mark.parametrize("values", [1, 97, 1 << 30])  # one column a chunk, ragged chunks, one chunk
def test_content_scores_added_in_column_chunks_are_the_whole_sum_bit_for_bit(small_data, monkeypatch, values):
    """The sparse part's scores are added to the dense part's a cache-sized chunk of columns at a time: each
    score is the same product summed in the same order, so the catalogue and a few columns score the same bits
    whatever the chunk, and as the profile dotted with each item's content row."""
    train, uf, itf, cold = small_data
    model = fit_model("content_knn", train, uf, itf, seed=3)
    block = block_of(model, train, cold)
    columns = np.flatnonzero(np.arange(len(model.item_ids)) % 3 == 1)
    whole, few = model.score_block(block), model.column_scores(block, columns)
    monkeypatch.setattr(models.content, "CONTENT_ADD_VALUES", values)
    np.testing.assert_array_equal(model.score_block(block), whole)
    np.testing.assert_array_equal(model.column_scores(block, columns), few)
    assert np.abs(whole).max() > 0
    dense, sparse = model._profile(block)
    profile = np.hstack([dense, sparse.toarray()]).astype(np.float64)
    content = np.hstack([p.toarray() if sp.issparse(p) else p for p in model._scoring_parts()]).astype(np.float64)
    np.testing.assert_allclose(whole, profile @ content.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dependent", [[3, 17], list(range(0, 40, 2)) + [17, 33, 39]])
def test_a_blend_weight_is_applied_per_user_and_per_item_only_where_it_depends_on_the_item(dependent):
    """A component's weight is by_user * evidence + by_item; applied as a row scaling plus the whole formula
    on the columns that need it (few interactions, a new-item weight), or as one product where those are most
    of the columns (a wide catalogue's second stage): the same products as the (users, items) weight matrix,
    bit for bit, for any user's weight, 0 too."""
    rng = np.random.default_rng(4)
    part = rng.standard_normal((5, 40)).astype(np.float32)
    part[2, 5] = -np.inf  # a seen item's score
    by_user = np.array([[0.5], [0.0], [1.0], [0.25], [0.0]], dtype=np.float32)
    evidence = np.ones((1, 40), dtype=np.float32)
    evidence[0, dependent] = rng.choice([0.0, 1 / 3, 2 / 3], size=len(dependent))
    evidence[0, 3] = 0.0
    by_item = (np.float32(0.5) * (1 - evidence)).astype(np.float32)
    weight = MixWeight(by_user, evidence, by_item)
    assert weight.item_dependent().tolist() == sorted(set(dependent) | {3})
    applied = part.copy()
    weight.apply(applied)
    expected = part * (by_user * evidence + by_item)
    np.testing.assert_array_equal(applied, expected)
    assert np.array_equal(np.signbit(applied), np.signbit(expected))
    independent = np.setdiff1d(np.arange(40), dependent + [3])
    assert applied[1, 3] != 0 and (applied[1, independent] == 0).all()  # a new item's weight alone
    assert len(MixWeight(by_user, np.ones_like(evidence), np.zeros_like(by_item)).item_dependent()) == 0


@pytest.mark.parametrize("n_users", [40, 600])
@pytest.mark.parametrize("width", [None, 1, 5, 6, 13])
@pytest.mark.parametrize("block", [3, 7, 40])
def test_each_items_best_users_are_kept_exactly_across_blocks(block, width, n_users):
    """Each new item's best m users, kept block by block: the users a sort of everyone by (score desc, user id
    asc) ranks first, ties and unscorable (-inf) users included, whatever the blocks and however many users are
    gathered before a merge (fewer than a block, fewer than m, spanning blocks; late merges that change only
    some items, from their few entrants alone)."""
    rng = np.random.default_rng(block)
    users = np.sort(rng.choice(10_000, size=n_users, replace=False))
    scores = rng.integers(0, 6, size=(n_users, 11)).astype(np.float32)  # few values: ties everywhere
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[:, 4] = -np.inf  # an item nobody can be shown
    scores[:, 7] = rng.standard_normal(n_users)  # distinct scores
    scores[:, 8] = -np.inf  # fewer scorable users than m, the last ones: entrants beside -inf kept ones
    scores[-3:, 8] = [-1.0, 2.0, -5.0]
    scores[0, 7] = np.inf  # not finite: never shown, and the ranks count the shown users only
    place = np.arange(n_users, dtype=np.float32)
    scores[:, 9] = np.where(place < n_users // 5, place, -np.inf)  # every early user enters: whole blocks merged
    # Kept scores below 0 and a riser every 7th user: entrants few beside other items' (a pad is never kept).
    scores[:, 10] = np.where(place % 7 == 3, -1.0 - 1.0 / (place + 1), -10.0 - rng.random(n_users))
    items = np.arange(100, 111)
    best = BestUsers(items, 6, width)
    for lo in range(0, n_users, block):
        best.add(users[lo:lo + block], scores[lo:lo + block])
    got, nth = best.frame(), best.nth_best()
    long = pl.DataFrame({"item_id": np.repeat(items, n_users), "user_id": np.tile(users, len(items)),
                         "score": scores.T.ravel()})
    ordered = (long.sort(["item_id", "score", "user_id"], descending=[False, True, False])
               .group_by("item_id", maintain_order=True).head(6))
    expected = (ordered.filter(pl.col("score").is_finite())
                .with_columns(rank=(pl.int_range(pl.len()).over("item_id") + 1).cast(pl.Int32)))
    assert_frame_equal(got, expected.select(got.columns), check_dtypes=False)
    np.testing.assert_array_equal(nth, ordered.group_by("item_id", maintain_order=True).agg(pl.col("score").min())
                                  ["score"].to_numpy())  # each item's 6th best: -inf with fewer scorable users
    assert 104 not in got["item_id"].to_list() and got.group_by("item_id").len()["len"].max() == 6


@pytest.mark.parametrize("unscorable", [False, True])
def test_standardising_with_excluded_entries_equals_masking_them_first(unscorable):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 50)).astype(np.float32) * 3 + 1
    if unscorable:
        scores[2, 7] = -np.inf  # an item the model cannot score
    scores[4] = 5.0  # a constant row: every z-score 0
    scores[5, :3] += 40.0  # seen items scored far above the rest, as CF models score them
    exclude = sp.random(6, 50, density=0.2, format="lil", random_state=2)
    exclude[5, :3] = 1.0
    exclude = exclude.tocsr()
    masked = scores.copy()
    masked[exclude.toarray() > 0] = -np.inf
    z = standardize_rows(scores, exclude=exclude)
    kept = exclude.toarray() == 0
    np.testing.assert_allclose(z[kept], standardize_rows(masked)[kept], rtol=1e-5, atol=1e-6)
    assert np.isneginf(z[2, 7]) == unscorable and (z[4] == 0).all()
    assert np.isfinite(z[~kept & np.isfinite(scores)]).all()  # excluded items are standardised too, not dropped
    assert np.array_equal(standardize_rows(scores, exclude=sp.csr_matrix(scores.shape)), standardize_rows(scores))


def test_a_wide_rows_deviation_keeps_its_many_small_scores():
    """A 200k-item row as a CF model scores it: a few items far above a long tail of small scores. Summed in
    float32 lanes, the tail's squares fell below the lanes' rounding once the top items were in (2.5e-4 of a
    real EASE row's deviation); the z-scores must stay at float32 rounding of the exact ones, with a seen item
    left out or not, and with an item the model cannot score (the masked path)."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.06, size=(3, 200_000)).astype(np.float32)
    scores[:, :64] = rng.uniform(90.0, 110.0, size=(3, 64))  # in every lane of the first pass
    scores[2, 5] = -np.inf  # this row alone: one such row sends its whole block down the masked path
    exclude = sp.csr_matrix(([1.0], ([1], [70])), shape=scores.shape)
    z = np.vstack([standardize_rows(scores[:2], exclude=exclude[:2]), standardize_rows(scores[2:])])
    for row in range(3):
        values = scores[row].astype(np.float64)
        counted = np.isfinite(values) & (exclude[row].toarray().ravel() == 0)
        exact = (values - values[counted].mean()) / values[counted].std()
        finite = np.isfinite(values)
        np.testing.assert_allclose(z[row, finite], exact[finite], rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("users_per_block", [None, 7])
@pytest.mark.parametrize("blocks", [2, 3, 50])
def test_scoring_in_any_number_of_blocks_publishes_the_same_rows(small_data, tmp_path, monkeypatch, blocks,
                                                                 users_per_block):
    """The publish step's blocks (one task each on a task runner) are cut at the model's own scoring
    blocks: the rows are bit for bit those of one block, whatever the split."""
    train, uf, itf, _ = small_data
    model = fit_model("ease", train, uf, itf, seed=0).save(tmp_path / "ease")
    users = tmp_path / "users.parquet"
    uf.select("user_id").write_parquet(users)
    if users_per_block:  # many of the model's own blocks (by default all 300 users are one: SGEMM rounds a
        monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", users_per_block * len(itf))  # row by M)
    whole = score_step(str(model), str(users), 0, 1, 10, str(tmp_path / "one"), new_item_max_interactions=20,
                       users_per_item=15)
    one = pl.read_parquet(whole.top)
    parts = [score_step(str(model), str(users), b, blocks, 10, str(tmp_path / f"in-{blocks}"),
                        new_item_max_interactions=20, users_per_item=15) for b in range(blocks)]
    many = pl.concat([pl.read_parquet(p.top) for p in parts])
    assert one["user_id"].n_unique() == uf.height
    assert_frame_equal(many, one)  # same users, order, items, reasons and float bits
    # Each block's best users of the new items, merged: the same audiences as one pass over everyone.
    audience = pl.read_parquet(whole.new_items)
    assert audience["item_id"].n_unique() > 0
    assert_frame_equal(merge_best_users(pl.concat([pl.read_parquet(p.new_items) for p in parts]), 15), audience)


def ease_formula(x: np.ndarray, l2: float, alpha: float) -> np.ndarray:
    """EASE on the whole catalogue in float64, with the Gram matrix normalised by item degree: B = diag(s)
    (I - P / diag(P)), P = (S X^T X S + l2' I)^-1, s = degree^-alpha, l2' = l2 * mean(degree^(1 - 2 alpha)) /
    mean(degree) over the items with interactions (an item without any has a zero row and column anyway)."""
    degree = x.sum(axis=0)
    s = np.where(degree > 0, np.maximum(degree, 1) ** -alpha, 1.0)
    d = degree[degree > 0]
    l2 = l2 * np.mean(d ** (1 - 2 * alpha)) / np.mean(d)
    inverse = np.linalg.inv(s[:, None] * (x.T @ x) * s[None, :] + l2 * np.eye(x.shape[1]))
    b = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(b, 0.0)
    return s[:, None] * b


@pytest.mark.parametrize("alpha", [0.0, 0.15, 0.5])
def test_ease_with_degree_normalisation_is_the_normalised_formula(small_data, alpha):
    """The float32, in-place, tiled fit equals the float64 formula for any degree exponent; exponent 0 is
    Steck's plain EASE, and the normalisation changes the ranking (so it is not a no-op)."""
    train, uf, itf, _ = small_data
    model = fit_model("ease", train, uf, itf, seed=0, params={"l2": 50.0, "degree_norm": alpha})
    x = model.train.toarray().astype(np.float64)
    users = np.sort(train["user_id"].unique().to_numpy())[:40]
    rows = np.searchsorted(model.user_ids, users)
    np.testing.assert_allclose(model.score_users(users), x[rows] @ ease_formula(x, model.params["l2"], alpha),
                               rtol=1e-4, atol=1e-5)
    if alpha == 0.0:
        inverse = np.linalg.inv(x.T @ x + model.params["l2"] * np.eye(x.shape[1]))
        plain = -inverse / np.diag(inverse)[None, :]
        np.fill_diagonal(plain, 0.0)
        np.testing.assert_allclose(model.score_users(users), x[rows] @ plain, rtol=1e-4, atol=1e-5)
    else:
        plain = fit_model("ease", train, uf, itf, seed=0, params={"l2": 50.0, "degree_norm": 0.0})
        assert not np.array_equal(np.argsort(-model.score_users(users), axis=1)[:, :10],
                                  np.argsort(-plain.score_users(users), axis=1)[:, :10])


def test_ease_fitted_on_the_items_with_interactions_equals_the_whole_catalogue_formula(small_data, tmp_path):
    """Items nobody interacted with are left out of EASE's Gram matrix (half the Cholesky's flops when a fifth
    of the catalogue is new): the scores are still the whole catalogue's formula, zero for those items, and
    reasons and a save/load round trip read the same weights."""
    train, uf, itf, _ = small_data
    items = np.sort(itf["item_id"].to_numpy())
    new = items[::5]  # a fifth of the catalogue with no interactions
    train = train.filter(~pl.col("item_id").is_in(new))
    model = fit_model("ease", train, uf, itf, seed=0)
    assert model.known is not None and len(model.known) == len(items) - len(new)

    x = model.train.toarray().astype(np.float64)
    expected = ease_formula(x, model.params["l2"], model.params["degree_norm"])
    users = np.sort(train["user_id"].unique().to_numpy())[:30]
    scores = model.score_users(users)
    rows = np.searchsorted(model.user_ids, users)
    np.testing.assert_allclose(scores, x[rows] @ expected, rtol=1e-4, atol=1e-5)
    assert not scores[:, np.isin(model.item_ids, new)].any()

    again = load(model.save(tmp_path / "ease"))
    assert np.array_equal(again.score_users(users), scores)
    assert_frame_equal(again.serve(users, n=10).top, model.serve(users, n=10).top)
    # A model saved before the weights were one mapped .npy (its tiles in an npz) still loads, the same.
    (tmp_path / "ease" / "weights.npy").unlink()
    np.savez(tmp_path / "ease" / "weights.npz", **{f"tile_{t:05d}": tile for t, tile in enumerate(model.weights.tiles)})
    assert np.array_equal(load(tmp_path / "ease").score_users(users), scores)
    known = np.flatnonzero(model.train[rows[0]].toarray()[0])
    column = int(np.flatnonzero(np.isin(model.item_ids, new))[0])
    assert model._weight(known[:1], np.array([column]))[0] == 0.0
    assert model._weight(known[:1], known[1:2])[0] == pytest.approx(expected[known[0], known[1]], rel=1e-4, abs=1e-6)


def test_ease_capped_is_the_formula_on_the_most_taken_items(small_data, tmp_path):
    """With a cap below the items with interactions, EASE is the regression of the ``cap`` most-taken items on
    each other (ties by catalogue order), zero for the others, and the report is told which cap chose them."""
    train, uf, itf, _ = small_data
    model = fit_model("ease", train, uf, itf, seed=0, params={"max_items": 40})
    x = model.train.toarray().astype(np.float64)
    counts = (x > 0).sum(axis=0)
    kept = np.sort(np.argsort(-counts, kind="stable")[:40])
    assert np.array_equal(model.known, kept)
    users = np.sort(train["user_id"].unique().to_numpy())[:30]
    rows = np.searchsorted(model.user_ids, users)
    scores = model.score_users(users)
    expected = x[rows][:, kept] @ ease_formula(x[:, kept], model.params["l2"], model.params["degree_norm"])
    np.testing.assert_allclose(scores[:, kept], expected, rtol=1e-4, atol=1e-5)
    assert not np.delete(scores, kept, axis=1).any()
    assert model.summary().startswith(f"on the 40 most taken of {np.count_nonzero(counts)} items")

    saved = model.save(tmp_path / "ease")
    tuning = type(model).saved_tuning(saved)
    assert tuning == {"items_fitted": 40, "items_with_interactions": int(np.count_nonzero(counts)),
                      "catalogue": len(model.item_ids), "max_items": 40, "cap_from": "RECSYS_EASE_MAX_ITEMS"}
    assert np.array_equal(load(saved).score_users(users), scores)


def test_ease_cap_by_default_is_bounded_by_time_and_a_quarter_of_the_machine_memory(small_data):
    """Unset, the cap is 20,000 items or the largest float32 square in a quarter of this machine's memory
    (deterministic for a machine: its total, not what is free), so a catalogue of this size is fitted whole."""
    train, uf, itf, _ = small_data
    model = fit_model("ease", train, uf, itf, seed=0)
    cap = memory_item_cap()
    assert 1_000 < cap and 4 * cap**2 <= psutil.virtual_memory().total / 4
    assert model.catalogue["max_items"] == min(cap, DEFAULT_MAX_ITEMS)
    assert model.catalogue["cap_from"].startswith("the default")
    assert model.catalogue["items_fitted"] == model.catalogue["items_with_interactions"]


@pytest.mark.parametrize("n_columns", [0, 1, 7])
def test_a_column_part_reads_as_its_dense_array_with_zeros_elsewhere(n_columns):
    """Explaining a blend reads each component's part at the listed (row, column) pairs; a component weighed on
    a few columns keeps just those, and reads exactly as the dense array it replaces."""
    rng = np.random.default_rng(n_columns)
    users, items = 5, 12
    columns = np.sort(rng.choice(items, n_columns, replace=False))
    values = rng.normal(size=(users, n_columns)).astype(np.float32)
    dense = np.zeros((users, items), dtype=np.float32)
    dense[:, columns] = values
    part = ColumnPart(columns, values)
    rows, cols = rng.integers(0, users, 40), rng.integers(0, items, 40)
    assert np.array_equal(part[rows, cols], dense[rows, cols]) and part[rows, cols].dtype == np.float32
    some = np.array([11, 0, 3, 3])
    assert np.array_equal(part[:, some], dense[:, some])
    assert np.array_equal(part[1:3, some], dense[1:3, some])
