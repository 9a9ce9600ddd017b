"""The two-tower: its cost per night is bounded, production continues the evaluation fold's fit, and the content
tower that serves new items leaves the warm path alone."""

from __future__ import annotations

import random
import threading

import numpy as np
import polars as pl
import scipy.sparse as sp
from keras import ops

from models.registry import build

FAST = {"dim": 8, "hidden": 16, "batch_size": 128}


def test_example_budget_caps_the_epochs(small_data):
    train, uf, itf, _ = small_data
    model = build("two_tower", **FAST, epochs=30, max_examples_per_epoch=2_000, example_budget=6_000,
                  patience=100).fit(train, uf, itf, seed=3)
    # An epoch is at most a quarter of the budget, so early stopping can end a capped fit a quarter at a time.
    assert model.training_["examples_per_epoch"] == 1_500
    assert model.training_["epochs_planned"] == 4 and model.training_["epochs_run"] == 4
    assert not model.training_["warm_started"] and not model.training_["jit_compile"]


def test_the_budget_follows_the_data(small_data):
    """A fit sees at most ``passes`` times its training examples: a small night does not pay a large one's cap."""
    train, uf, itf, _ = small_data
    model = build("two_tower", **FAST, epochs=30, passes=2, patience=100).fit(train, uf, itf, seed=3)
    t = model.training_
    planned = t["epochs_planned"] * t["examples_per_epoch"]
    assert t["epochs_run"] == t["epochs_planned"] == 4  # a budget of two passes, in quarters
    # Every interaction is a training example but the validation share (at most a fifth).
    assert 2 * 0.8 * train.height - 4 * FAST["batch_size"] <= planned <= 2 * train.height


def test_a_compiled_fit_is_deterministic(small_data):
    """XLA compiles the training step of a large fit ("auto"); forced here on a small one: same seed, same
    weights, bit for bit."""
    train, uf, itf, _ = small_data
    # No validation data: only the training step is compiled (half the test's time is compiling).
    fits = [build("two_tower", **FAST, epochs=1, jit_compile=True, validation_share=0.0, min_validation_examples=0)
            .fit(train, uf, itf, seed=3) for _ in range(2)]
    assert all(f.training_["jit_compile"] for f in fits)
    for a, b in zip(fits[0].net.get_weights(), fits[1].net.get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_the_nets_initial_weights_come_from_its_seed_alone(small_data, monkeypatch):
    """An unseeded Keras initializer draws its seed from Python's process-wide ``random``, which other threads
    (Prefect's, an earlier test's) move at any time: on a busy CI machine the same seed built other weights,
    and two fits meant to share their warm path did not. The net reads nothing from that stream."""
    train, uf, itf, _ = small_data
    model = build("two_tower", **FAST, epochs=1, validation_share=0.0, min_validation_examples=0).fit(
        train, uf, itf, seed=3)
    # Draws from the stream by this thread, counted while the net is built. Comparing the stream's state before
    # and after raced with those other threads: under load a thread an earlier test left in the worker moved it
    # in between (the suite failed so once), whatever the net did.
    me, draws = threading.get_ident(), []

    def counted(name: str):
        original = getattr(random, name)

        def drawn(*args, **kwargs):
            if threading.get_ident() == me:
                draws.append(name)
            return original(*args, **kwargs)

        return drawn

    for name in ("random", "randint", "randrange", "getrandbits", "uniform", "choice", "sample", "shuffle"):
        monkeypatch.setattr(random, name, counted(name))
    weights = []
    for moved in (1, 2):
        random.seed(moved)  # what another thread's draw does to the stream
        weights.append(model._build_net().get_weights())
    assert draws == []
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_a_small_fit_keeps_enough_validation_examples_to_stop_early(small_data):
    """5 % of a small night was under one batch, so it had no validation data and ran every epoch; it now
    keeps at least ``min_validation_examples`` (at most a fifth of the data) and can stop early."""
    train, uf, itf, _ = small_data
    assert train.height * 0.05 < 1024  # the case that ran every epoch before
    model = build("two_tower", **{**FAST, "batch_size": 1024}, epochs=3, min_validation_examples=600).fit(
        train, uf, itf, seed=3)
    assert model.training_["best_val_loss"] is not None
    assert len(model.history_["val_loss"]) == model.training_["epochs_run"]


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
    assert np.array_equal(new_items[shared], old_items[np.searchsorted(earlier.item_ids, later.item_ids[shared])])
    # The content tower (what serves items with no interactions) carries over whole.
    for layer, before in zip(later.net.content_mlp, earlier.net.content_mlp, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), before.get_weights(), strict=True))


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
        if bucket == "blend":  # which components were blended, not a bucket's result
            continue
        assert tuned[10][bucket]["ndcg_blend"] >= full["ndcg_blend"] - 0.02, (bucket, tuned[10][bucket], full)


def test_the_content_tower_does_not_change_the_warm_path(small_data):
    """The content tower (what serves items with no interactions) learns beside the item tower with the user
    tower's gradient stopped: with it or without it, known users and items get the same vectors."""
    train, uf, itf, _ = small_data
    held_out = np.sort(train["item_id"].unique().to_numpy())[::7]  # items with no training interaction
    part = train.filter(~pl.col("item_id").is_in(held_out))
    fits = {w: build("two_tower", **FAST, epochs=2, content_weight=w).fit(part, uf, itf, seed=5) for w in (0.0, 1.0)}
    known = fits[1.0].item_popularity > 0
    assert (~known).sum() >= len(held_out) // 2
    users = np.sort(part["user_id"].unique().to_numpy())[:50]
    block = fits[1.0]._user_block(users, sp.csr_matrix((len(users), len(fits[1.0].item_ids)), dtype=np.float32))
    assert np.array_equal(fits[0.0].user_embeddings(block), fits[1.0].user_embeddings(block))
    assert np.array_equal(fits[0.0].item_embeddings[known], fits[1.0].item_embeddings[known])
    # The trained content tower, not the untrained one, places the items nobody has taken.
    assert not np.allclose(fits[0.0].item_embeddings[~known], fits[1.0].item_embeddings[~known])


def test_first_items_follow_time_and_the_training_rows():
    from models.towers import first_items_by_time

    inter = pl.DataFrame({"user_id": [7, 7, 7, 7, 3, 3], "item_id": [30, 10, 20, 10, 20, 30],
                          "ts": [5, 9, 1, 2, 4, 4]})
    # user 3: items 20 and 30 at the same time (the lower column first); user 7: 20, then 10 (its earliest
    # of two), then 30.
    order = first_items_by_time(inter, np.array([3, 7]), np.array([10, 20, 30]))
    assert order.tolist() == [1, 2, 1, 0, 2]


def test_first_items_are_the_pairs_earliest_rows_in_time_order_as_a_lexsort_finds_them():
    """Against the plain definition (every row sorted by user, time and item; each pair's first row kept, in
    that order), on rows with repeated pairs and tied times; datetimes as the warehouse stores them."""
    from models.towers import first_items_by_time

    rng = np.random.default_rng(4)
    n = 20_000
    users, items = rng.integers(0, 300, n) * 7 + 11, rng.integers(0, 50, n) * 3
    ts = rng.integers(0, 40, n)  # few distinct times: many ties
    inter = pl.DataFrame({"user_id": users, "item_id": items, "ts": pl.Series(ts * 1_000_000).cast(pl.Datetime("us"))})
    user_ids, item_ids = np.unique(users), np.unique(items)
    rows, cols = np.searchsorted(user_ids, users), np.searchsorted(item_ids, items)
    order = np.lexsort((cols, ts, rows))
    _, first = np.unique(rows[order] * len(item_ids) + cols[order], return_index=True)
    expected = cols[order][np.sort(first)]
    assert np.array_equal(first_items_by_time(inter, user_ids, item_ids), expected)
    # Ordered for users of ~chunk_rows interactions at a time: the same, whether the rows come by user (as a
    # snapshot's do: each chunk a slice) or in any order.
    by_user = inter.sort("user_id", maintain_order=True)
    for chunk_rows in (1, 997, 5_000):
        assert np.array_equal(first_items_by_time(inter, user_ids, item_ids, chunk_rows), expected)
        assert np.array_equal(first_items_by_time(by_user, user_ids, item_ids, chunk_rows), expected)
