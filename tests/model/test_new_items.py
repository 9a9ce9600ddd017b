"""New items (no interaction at all) reach the users whose planted taste they fit, and say why."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from model_helpers import featurize, fit_model, load_synthetic

from models.ranking import standardize_rows
from models.registry import build
from models.text import title_token_matrix, title_words
from tasks.generate import GeneratorConfig, generate
from tasks.metrics import item_to_user_values
from tasks.split import item_cold_split

AUDIENCE = 50


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("new-items")
    generate(folder, GeneratorConfig(n_users=1000, n_items=300, n_interactions=40_000, seed=5))
    inter, users, items = load_synthetic(folder)
    split = item_cold_split(inter, 0.2, seed=5)
    uf, itf = featurize(split.train, users, items)
    return split, uf, itf


@pytest.fixture(scope="module")
def fitted(held_out):
    split, uf, itf = held_out
    return {name: fit_model(name, split.train, uf, itf, seed=1) for name in ("content_knn", "random", "hybrid")}


def genre_affinity_lift(model, split) -> float:
    """How much more of its audience's history is in a new item's genres than of everyone's: 1 is random."""
    users = np.sort(split.train["user_id"].unique().to_numpy())
    best = model.serve(users, 10, explain=False, items=split.new_items, users_per_item=AUDIENCE).by_item
    rows = np.searchsorted(model.user_ids, users)
    history = model.train[rows]
    share = np.asarray(history @ model.item_genres) / np.maximum(np.diff(history.indptr)[:, None], 1)  # (users, genres)
    cols = np.searchsorted(model.item_ids, split.new_items)
    lifts = []
    for item, col in zip(split.new_items, cols, strict=True):
        genres = model.item_genres[col] > 0
        audience = np.searchsorted(users, best.filter(pl.col("item_id") == item)["user_id"].to_numpy())
        lifts.append(share[audience][:, genres].sum(axis=1).mean() / share[:, genres].sum(axis=1).mean())
    return float(np.mean(lifts))


def test_new_items_have_no_interactions_and_keep_their_content(held_out):
    split, _, itf = held_out
    assert len(split.new_items) == 60 and split.truth.height > 0
    assert not split.train["item_id"].is_in(split.new_items).any()
    new = itf.filter(pl.col("item_id").is_in(split.new_items))
    assert new.height == 60 and (new["popularity"] == 0).all() and (new["genres"].list.len() > 0).all()


@pytest.mark.parametrize("name", ["content_knn", "hybrid"])
def test_a_new_item_reaches_the_users_who_prefer_its_genres(fitted, held_out, name):
    """The generator plants genre tastes: a new item's audience must lean towards its genres far beyond what
    showing it at random achieves (which stays near 1)."""
    split, _, _ = held_out
    chance = genre_affinity_lift(fitted["random"], split)
    lift = genre_affinity_lift(fitted[name], split)
    assert 0.8 < chance < 1.2, chance
    assert lift > 1.6, (name, lift, chance)


@pytest.mark.parametrize("name", ["content_knn", "hybrid"])
def test_the_users_who_took_a_new_item_are_ranked_far_above_chance(fitted, held_out, name):
    split, _, _ = held_out
    users = np.sort(split.truth["user_id"].unique().to_numpy())

    def item_ndcg(model) -> float:
        best = model.serve(users, 10, explain=False, items=split.new_items, users_per_item=100).by_item
        return float(item_to_user_values(best, split.truth, 100)["item_ndcg"].mean())

    assert item_ndcg(fitted[name]) > 1.5 * item_ndcg(fitted["random"])


def test_collaborative_parts_add_nothing_to_an_item_nobody_has_interacted_with(fitted, held_out):
    split, _, _ = held_out
    hybrid = fitted["hybrid"]
    users = np.sort(split.train["user_id"].unique().to_numpy())[:100]
    block = hybrid._user_block(users, hybrid._history_matrix(users, None))
    block.shared = {}
    scores = hybrid.score_block(block)
    parts = block.shared[("parts", id(hybrid))]
    new = np.searchsorted(hybrid.item_ids, split.new_items)
    for name in ("ease", "item_knn", "segment_popularity"):
        if name in parts:
            assert not parts[name][:, new].any(), name
    assert np.isfinite(scores[:, new]).all() and scores[:, new].std() > 0  # content scores them


def test_title_words_drop_years_articles_and_filler():
    assert title_words("Godfather: Part II, The (1974)") == ["godfather"]
    assert title_words("Cité des enfants perdus, La (1995)") == ["cité", "enfants", "perdus"]
    assert title_words(None) == []
    tokens = title_token_matrix(["Star Wars (1977)", "Return of the Jedi (1983)", None])
    assert tokens.shape[0] == 3 and tokens[0].nnz == 2 and tokens[2].nnz == 0


def test_a_hybrid_refuses_new_item_scorers_that_cannot_read_content(fitted):
    components = fitted["hybrid"].components
    with pytest.raises(ValueError, match="new_item_weights names ease, which cannot score an item"):
        build("hybrid", new_item_weights={"ease": 1.0}).use_components(components)


def test_a_new_items_audience_is_its_content_scorers_when_it_alone_scores_new_items(fitted, held_out):
    """Whom to show a new item to is a comparison across users: the hybrid puts its components on a scale
    common to all users (not per user), so with one new-item scorer the audiences are that scorer's exactly;
    the users' own lists still blend per-user z-scores."""
    split, uf, itf = held_out
    hybrid = fitted["hybrid"]
    only = build("hybrid", new_item_weights={"content_knn": 1.0}).use_components(hybrid.components).use_weights(
        hybrid.weights, hybrid.tuning).fit(split.train, uf, itf, seed=1)
    users = np.sort(split.train["user_id"].unique().to_numpy())
    ours = only.serve(users, 10, explain=False, items=split.new_items, users_per_item=AUDIENCE)
    theirs = hybrid.components["content_knn"].serve(users, 10, explain=False, items=split.new_items,
                                                     users_per_item=AUDIENCE)
    assert ours.by_item.height == AUDIENCE * len(split.new_items)
    assert ours.by_item.select("item_id", "user_id", "rank").equals(theirs.by_item.select("item_id", "user_id", "rank"))
    mean, std = only.audience_scale["content_knn"]
    assert std > 0 and np.allclose(ours.by_item["score"].to_numpy(), (theirs.by_item["score"].to_numpy() - mean) / std,
                                   atol=1e-5)
    # What a per-user z-score would have chosen: other audiences for most new items.
    new = np.sort(split.new_items)
    z = standardize_rows(hybrid.components["content_knn"].score_users(users))[:, np.searchsorted(only.item_ids, new)]
    chosen = ours.by_item.sort("item_id", "rank").group_by("item_id", maintain_order=True).agg("user_id")
    assert np.array_equal(chosen["item_id"].to_numpy(), new)
    overlap = [len(np.intersect1d(users[np.argsort(-z[:, j], kind="stable")[:AUDIENCE]], audience)) / AUDIENCE
               for j, audience in enumerate(chosen["user_id"].to_list())]
    assert np.mean(overlap) < 0.9, np.mean(overlap)
