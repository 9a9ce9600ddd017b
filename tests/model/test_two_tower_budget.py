"""The two-tower's cost per night is bounded, and production continues the evaluation fold's fit."""

from __future__ import annotations

import numpy as np
import polars as pl
from keras import ops

from models.registry import build

FAST = {"dim": 8, "hidden": 16, "batch_size": 128}


def test_example_budget_caps_the_epochs(small_data):
    train, uf, itf, _ = small_data
    model = build("two_tower", **FAST, epochs=30, max_examples_per_epoch=2_000, example_budget=6_000,
                  patience=100).fit(train, uf, itf, seed=3)
    assert model.training_["epochs_planned"] == 3 and model.training_["epochs_run"] == 3
    assert not model.training_["warm_started"]


def test_warm_start_carries_known_rows_by_id(small_data):
    train, uf, itf, _ = small_data
    users = np.sort(train["user_id"].unique().to_numpy())
    earlier_part = train.filter(pl.col("user_id").is_in(users[::2]))  # an earlier fold: half the users
    earlier = build("two_tower", **FAST, epochs=2).fit(earlier_part, uf, itf, seed=3)
    later = build("two_tower", **FAST, epochs=5, learning_rate=0.0, warm_start_budget=1)
    later.warm_start(earlier)
    later.fit(train, uf, itf, seed=4)
    assert later.training_["warm_started"] and later.training_["epochs_planned"] == 1
    new_users = ops.convert_to_numpy(later.net.user_id.embeddings)
    old_users = ops.convert_to_numpy(earlier.net.user_id.embeddings)
    rows = np.searchsorted(later.user_ids, earlier.user_ids)
    assert np.array_equal(new_users[rows + 1], old_users[1:])  # every user of the earlier fold, by id
    new_items = ops.convert_to_numpy(later.net.item_id.embeddings)
    old_items = ops.convert_to_numpy(earlier.net.item_id.embeddings)
    shared = np.isin(later.item_ids, earlier.item_ids)
    # Row 0 is the unknown item's (items with no interactions read it), then one row per catalogue item.
    assert np.array_equal(new_items[1:][shared], old_items[1:][np.searchsorted(earlier.item_ids, later.item_ids[shared])])
    assert np.array_equal(new_items[0], old_items[0])


def test_pruned_blend_search_scores_like_the_full_search(small_data):
    """The hybrid's grid search on each user's candidate union reaches the full search's best blends."""
    from model_helpers import fit_model

    from models.hybrid import Hybrid
    from tasks.split import carve_validation

    train, uf, itf, _ = small_data
    fold = carve_validation(train, 0.25, seed=2)
    components = {c: fit_model(c, fold.train, uf, itf, seed=2) for c in Hybrid.needed_components()}
    tuned = {}
    for candidates in (10, 10_000):  # 4 x 10 = 40 of 120 columns, against the whole catalogue
        hybrid = build("hybrid", grid_step=0.25, tune_candidates=candidates).use_components(components)
        tuned[candidates] = hybrid.use_validation(fold.cases).fit(fold.train, uf, itf, seed=2).tuning
    for bucket, full in tuned[10_000].items():
        assert tuned[10][bucket]["ndcg_blend"] >= full["ndcg_blend"] - 0.02, (bucket, tuned[10][bucket], full)
