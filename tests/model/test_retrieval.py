"""Two-stage serving: each component's first stage finds its best unseen items and standardises as the whole
catalogue does, and a hybrid served from them publishes the full ranking's lists, reasons and audiences."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from model_helpers import block_of, fit_model

import models.base
from benchmarks.night import two_stage_agreement
from models.hybrid import Hybrid
from models.ranking import served_z_scores, unseen_top
from models.registry import build
from models.serving import serve_together

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

    def spied(self, users, keep):
        found = original(self, users, keep)
        if found is not None:
            widths.append(len(found[0]))
        return found

    monkeypatch.setattr(Hybrid, "candidate_scores", spied)
    users = np.sort(np.concatenate([train["user_id"].unique().to_numpy(), cold]))
    revealed = train.filter(pl.col("user_id").is_in(cold[:5]))
    new = hybrid.item_ids[hybrid.item_popularity == 0]
    few = hybrid.item_ids[hybrid.item_popularity < 5]
    block = hybrid._user_block(users[:8], hybrid._history_matrix(users[:8], None))
    assert hybrid.candidate_scores(block, np.zeros(0, dtype=np.int64)) is None

    def serve(model, **others):
        return serve_together({"hybrid": model, **others}, users, 10, history=revealed, explain=True, items=few,
                              users_per_item=15)["hybrid"]

    full = serve(hybrid)
    placed = full.top.filter(pl.col("item_id").is_in(new))
    assert placed.height > 0 and (placed["reason_kind"] == "content").all()
    for depth in (len(hybrid.item_ids), 10):
        widths.clear()
        hybrid.params.update(retrieval_min_items=0, retrieval_depth=depth)
        try:
            two = serve(hybrid)
            beside = serve(hybrid, **hybrid.components)
        finally:
            hybrid.params.update(retrieval_min_items=build("hybrid").params["retrieval_min_items"],
                                 retrieval_depth=build("hybrid").params["retrieval_depth"])
        for served in (two, beside):
            assert lists_of(served.top).equals(lists_of(full.top)), depth
            joined = full.top.join(served.top, on=["user_id", "item_id"])
            assert joined.height == full.top.height
            np.testing.assert_allclose(joined["score_right"].to_numpy(), joined["score"].to_numpy(), atol=1e-4)
            assert served.by_item.select("item_id", "user_id", "rank").equals(full.by_item.select(
                "item_id", "user_id", "rank"))
        if depth == 10:
            assert np.mean(widths) < 0.8 * len(hybrid.item_ids), np.mean(widths)


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
