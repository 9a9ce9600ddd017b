"""Splits never leak: no test interaction in training, cold users absent from training."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from tasks.split import (
    carve_validation,
    cold_user_split,
    stratified_split,
    temporal_cut,
    temporal_split,
    user_sample,
)


def interactions(n_users=50, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(200, size=per_user, replace=False)
        for j, i in enumerate(items):
            rows.append((u, int(i), 4.0, datetime(2024, 1, 1) + timedelta(hours=u * 100 + j)))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "ts"], orient="row")


def keys(frame):
    return set(frame.select("user_id", "item_id", "ts").iter_rows())


def test_cold_users_are_absent_from_training_and_history_is_first_k():
    data = interactions()
    split = cold_user_split(data, cold_fraction=0.2, k_shots=(0, 1, 3, 5, 20), seed=1)
    assert len(split.cold_users) == 10
    assert not set(split.train["user_id"].to_list()) & set(split.cold_users.tolist())
    for k in (0, 1, 3, 5, 20):
        history, truth = split.history[k], split.truth[k]
        assert not keys(history) & keys(truth)
        assert keys(history) | keys(truth) == keys(data.filter(pl.col("user_id").is_in(split.cold_users)))
        assert (history.group_by("user_id").len()["len"] <= k).all()
        if k:  # the revealed items are each user's earliest
            latest_history = history.group_by("user_id").agg(pl.col("ts").max())
            earliest_truth = truth.group_by("user_id").agg(pl.col("ts").min())
            joined = latest_history.join(earliest_truth, on="user_id", suffix="_truth")
            assert (joined["ts"] < joined["ts_truth"]).all()
    assert split.excluded[20] == 10 and split.excluded[5] == 0  # 12 interactions each: none left after 20


def test_cold_split_is_seeded():
    data = interactions()
    a = cold_user_split(data, 0.2, (0,), seed=3)
    b = cold_user_split(data, 0.2, (0,), seed=3)
    c = cold_user_split(data, 0.2, (0,), seed=4)
    assert a.cold_users.tolist() == b.cold_users.tolist() != c.cold_users.tolist()


def test_the_evaluation_sample_is_whole_users_within_the_cap_and_the_same_users_as_the_log_grows():
    rng = np.random.default_rng(5)
    per_user = rng.integers(1, 30, size=400)
    data = pl.DataFrame({"user_id": np.repeat(np.arange(400) * 7 + 3, per_user),
                         "item_id": rng.integers(0, 50, size=int(per_user.sum())), "rating": 1.0,
                         "ts": datetime(2024, 1, 1)})
    assert user_sample(data, 0, seed=1) is data and user_sample(data, data.height, seed=1) is data
    sample = user_sample(data, 1000, seed=1)
    kept = set(sample["user_id"].to_list())
    assert 1000 - 30 < sample.height <= 1000 and sample["user_id"].is_sorted()
    assert sample.height == data.filter(pl.col("user_id").is_in(sorted(kept))).height  # whole users only
    assert user_sample(data, 1000, seed=1).equals(sample)
    assert set(user_sample(data, 1000, seed=2)["user_id"].to_list()) != kept
    # Each user's place is their own (id and seed): as new users arrive and old ones add rows, the old users
    # in any sample of the grown log are a prefix of the same order, so one sample holds the other's.
    newcomers = pl.DataFrame({"user_id": np.repeat(np.arange(400, 600) * 7 + 3, 5), "item_id": 1, "rating": 1.0,
                              "ts": datetime(2024, 2, 1)})
    grown = pl.concat([data, data.head(300).with_columns(ts=pl.lit(datetime(2024, 2, 2))), newcomers],
                      how="vertical_relaxed")
    for cap in (500, 1000, 1500, 3000):
        old = set(user_sample(grown, cap, seed=1)["user_id"].to_list()) & set(data["user_id"].to_list())
        assert old <= kept or kept <= old


def test_stratified_split_per_user_75_25_without_overlap():
    data = interactions()
    split = stratified_split(data, ratio=0.75, seed=42)
    assert not keys(split.train) & keys(split.test)
    assert keys(split.train) | keys(split.test) == keys(data)
    assert (split.train.group_by("user_id").len()["len"] == 9).all()  # 12 * 0.75
    again = stratified_split(data, ratio=0.75, seed=42)
    assert keys(again.test) == keys(split.test)


def test_temporal_split_holds_out_each_users_latest():
    data = interactions()
    split = temporal_split(data, test_share=0.2)
    assert not keys(split.train) & keys(split.test)
    last_train = split.train.group_by("user_id").agg(pl.col("ts").max())
    first_test = split.test.group_by("user_id").agg(pl.col("ts").min())
    joined = last_train.join(first_test, on="user_id", suffix="_test")
    assert (joined["ts"] < joined["ts_test"]).all()


def test_validation_is_carved_like_the_warm_test_it_tunes_for():
    """Warm validation truth is each user's latest interactions for the nightly's temporal test, and a seeded
    random share for a random holdout (protocol W); either way it leaves training and nothing is lost."""
    data = interactions(n_users=60, per_user=12)
    latest = carve_validation(data, 0.2, seed=1, warm_truth_share=0.25, warm_share=0.5)
    random = carve_validation(data, 0.2, seed=1, warm_truth="random", warm_truth_share=0.25, warm_share=0.5)
    for fold in (latest, random):
        warm = fold.cases[-1]
        assert len(fold.cold_users) == 12 and len(fold.warm_users) == 30
        assert not set(fold.cold_users.tolist()) & set(fold.warm_users.tolist())
        assert (warm.truth.group_by("user_id").len()["len"] == 3).all()  # 12 * 0.25 per user
        assert not keys(warm.truth) & keys(fold.train) and keys(warm.known) <= keys(fold.train)
        assert keys(warm.known) | keys(warm.truth) == keys(data.filter(pl.col("user_id").is_in(fold.warm_users)))
    joined = (latest.cases[-1].known.group_by("user_id").agg(pl.col("ts").max())
              .join(latest.cases[-1].truth.group_by("user_id").agg(pl.col("ts").min()), on="user_id", suffix="_t"))
    assert (joined["ts"] < joined["ts_t"]).all()  # the latest by time
    joined = (random.cases[-1].known.group_by("user_id").agg(pl.col("ts").max())
              .join(random.cases[-1].truth.group_by("user_id").agg(pl.col("ts").min()), on="user_id", suffix="_t"))
    assert not (joined["ts"] < joined["ts_t"]).all()  # not the latest: spread over each user's history
    again = carve_validation(data, 0.2, seed=1, warm_truth="random", warm_truth_share=0.25, warm_share=0.5)
    assert keys(again.cases[-1].truth) == keys(random.cases[-1].truth)
    with pytest.raises(ValueError, match="warm_truth"):
        carve_validation(data, 0.2, seed=1, warm_truth="oldest")


def test_an_item_cold_validation_fold_holds_items_out_of_everyone_s_training():
    """``warm_truth="items"`` (protocol I's shape): a seeded share of the items leaves the fold's training
    entirely; the warm validation users' truth is what they did with those items, and nothing is lost."""
    data = interactions(n_users=60, per_user=12)
    fold = carve_validation(data, 0.2, seed=1, warm_truth="items", warm_truth_share=0.25, warm_share=0.5)
    warm = fold.cases[-1]
    held = set(warm.truth["item_id"].to_list())
    assert held and not held & set(fold.train["item_id"].to_list())
    assert not set(warm.known["item_id"].to_list()) & held
    assert keys(warm.known) | keys(warm.truth) == keys(data.filter(pl.col("user_id").is_in(fold.warm_users)))
    assert keys(warm.known) <= keys(fold.train)
    again = carve_validation(data, 0.2, seed=1, warm_truth="items", warm_truth_share=0.25, warm_share=0.5)
    assert keys(again.cases[-1].truth) == keys(warm.truth) and again.train.equals(fold.train)


def returning_log(seed=0):
    """Users 0-39 active in the first half of the year, 20-59 in the second: 20-39 come back after mid-year."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        spans = ([0] if u < 20 else [0, 1] if u < 40 else [1])
        for half in spans:
            for j, i in enumerate(rng.choice(200, size=8, replace=False)):
                rows.append((u, int(i), 4.0, datetime(2024, 1, 1) + timedelta(days=180 * half + u, hours=j)))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "ts"], orient="row")


def test_a_window_fold_tunes_on_what_returning_users_did_after_a_moment():
    """``warm_truth="window"`` (the night's shape): the log is cut before its last share of interactions; nobody's
    rows after the moment stay in the fold's training (no future popularity leaks in); the warm users are every
    user known before it who came back, their truth what they did after it; cold users are drawn from the
    others. A log where nobody came back is carved by each user's latest share instead."""
    data = returning_log()
    fold = carve_validation(data, 0.2, seed=1, warm_truth="window", warm_truth_share=0.45)
    moment = fold.train["ts"].max()
    assert data.filter(pl.col("ts") > moment)["ts"].min() > moment
    assert keys(fold.train) | keys(data.filter(pl.col("ts") > moment)) >= keys(data.filter(
        ~pl.col("user_id").is_in(fold.cold_users)))
    before, after = data.filter(pl.col("ts") <= moment), data.filter(pl.col("ts") > moment)
    returning = sorted(set(before.group_by("user_id").len().filter(pl.col("len") >= 6)["user_id"].to_list())
                       & set(after["user_id"].to_list()))
    assert fold.warm_users.tolist() == returning and len(returning) >= 10  # every returning user, only them
    assert set(returning) <= set(range(20, 40))
    warm = fold.cases[-1]
    assert keys(warm.truth) == keys(data.filter(pl.col("user_id").is_in(fold.warm_users) & (pl.col("ts") > moment)))
    assert keys(warm.known) == keys(data.filter(pl.col("user_id").is_in(fold.warm_users) & (pl.col("ts") <= moment)))
    assert keys(warm.known) <= keys(fold.train)
    assert len(fold.cold_users) and not set(fold.cold_users.tolist()) & set(fold.warm_users.tolist())
    assert not set(fold.cold_users.tolist()) & set(after["user_id"].to_list())  # not back after the moment
    assert "window" in fold.shape and f"{len(returning)} known before it who came back" in fold.shape
    again = carve_validation(data, 0.2, seed=1, warm_truth="window", warm_truth_share=0.45)
    assert again.train.equals(fold.train) and keys(again.cases[-1].truth) == keys(warm.truth)
    nobody_back = carve_validation(interactions(n_users=60, per_user=12), 0.2, seed=1, warm_truth="window",
                                   warm_truth_share=0.3, warm_share=0.5)
    assert nobody_back.shape.startswith("latest") and "nobody came back" in nobody_back.shape
    assert (nobody_back.cases[-1].truth.group_by("user_id").len()["len"] == 2).all()  # the latest 20 %, not 30 %


def test_a_temporal_cut_is_a_night_seen_from_the_log():
    """Protocol T: one global moment; before it is training, after it the known users' next interactions (warm)
    and the users first seen after it (cold: their first k by time revealed). Nothing lost, nothing leaks."""
    data = interactions().vstack(  # a user known before the cut who comes back after it
        pl.DataFrame([(3, 150, 5.0, datetime(2024, 1, 1) + timedelta(hours=4_500))],
                     schema=["user_id", "item_id", "rating", "ts"], orient="row"))
    cut = temporal_cut(data, 0.6, k_shots=(0, 1, 3))
    assert (cut.train["ts"] <= cut.cut).all() and (cut.warm["ts"] > cut.cut).all()
    assert cut.train.height == int(0.6 * data.height) + 1  # ties at the cut go to training (none here)
    known = set(cut.train["user_id"])
    assert set(cut.warm["user_id"]) <= known and 3 in set(cut.warm["user_id"])
    assert not known & set(cut.cold.cold_users.tolist())
    for k in (0, 1, 3):
        history, truth = cut.cold.history[k], cut.cold.truth[k]
        assert cut.train.height + cut.warm.height + history.height + truth.height == data.height
        assert (history.group_by("user_id").len()["len"] <= k).all()
        latest_known = history.group_by("user_id").agg(pl.col("ts").max())
        first_truth = truth.group_by("user_id").agg(pl.col("ts").min())
        both = latest_known.join(first_truth, on="user_id", suffix="_truth")
        assert (both["ts"] < both["ts_truth"]).all()
