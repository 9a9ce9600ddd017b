"""The synthetic generator: deterministic, exact sizes, and the structure it promises is really there."""

from __future__ import annotations

import numpy as np
import polars as pl

import tasks.generate as generate_module
from recsys import schema
from tasks.generate import GeneratorConfig, generate


def test_same_seed_same_bytes(tmp_path):
    config = GeneratorConfig(n_users=50, n_items=40, n_interactions=1000, seed=3)
    a = generate(tmp_path / "a", config)
    b = generate(tmp_path / "b", config)
    for kind in a:
        assert a[kind].read_bytes() == b[kind].read_bytes()
    c = generate(tmp_path / "c", GeneratorConfig(n_users=50, n_items=40, n_interactions=1000, seed=4))
    assert c["interactions"].read_bytes() != a["interactions"].read_bytes()


def test_exact_counts_and_valid_values(small_synthetic):
    inter = pl.read_csv(small_synthetic / "interactions.csv")
    users = pl.read_csv(small_synthetic / "users.csv")
    items = pl.read_csv(small_synthetic / "items.csv")
    assert inter.height == 9000
    assert users.height == 300 and items.height == 120
    assert inter.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert inter["rating"].is_between(1, 5).all()
    assert set(inter["user_id"].unique()) <= set(users["user_id"])
    assert set(inter["item_id"].unique()) <= set(items["item_id"])
    genres = items["genres"].str.split("|").explode()
    assert set(genres.unique()) <= set(schema.GENRES)


def test_timestamps_advance_within_each_user(small_synthetic):
    inter = pl.read_csv(small_synthetic / "interactions.csv")
    # The file order per user is time order, and every user's clock moves forward.
    ok = inter.group_by("user_id", maintain_order=True).agg((pl.col("timestamp").diff().drop_nulls() >= 0).all())
    assert ok["timestamp"].all()


def test_popularity_is_skewed(small_synthetic):
    top_decile, _, _ = _shape(small_synthetic)
    assert top_decile > 0.18  # a uniform catalogue would give 0.10


def test_genre_taste_depends_on_demographics(small_synthetic):
    """Planted signal: the genre mix of what women and men pick differs far more than chance."""
    _, total_variation, _ = _shape(small_synthetic)
    assert total_variation > 0.08


def _shape(path):
    """(top decile of items' share of interactions, women's and men's genre mix apart, mean rating)."""
    inter = pl.read_csv(path / "interactions.csv")
    users = pl.read_csv(path / "users.csv")
    items = pl.read_csv(path / "items.csv").with_columns(pl.col("genres").str.split("|"))
    counts = inter["item_id"].value_counts()["count"].sort(descending=True)
    mix = (inter.join(users, on="user_id").join(items, on="item_id").explode("genres")
           .group_by("gender", "genres").len()
           .with_columns(share=pl.col("len") / pl.col("len").sum().over("gender")))
    wide = mix.pivot(on="gender", index="genres", values="share").fill_null(0)
    return (counts.head(len(counts) // 10).sum() / counts.sum(),
            0.5 * np.abs(wide["F"].to_numpy() - wide["M"].to_numpy()).sum(), inter["rating"].mean())


def test_sparse_data_sets_are_drawn_from_pools_with_the_same_planted_structure(tmp_path, monkeypatch):
    """A sparse data set (shop-shaped: far more items than a user takes) is drawn from popularity pools at a
    cost linear in interactions: exact sizes, each pair once, time moving forward, deterministic; and the
    structure the whole-row sampler plants is there (popularity skew, demographic taste), close to it."""
    config = GeneratorConfig(n_users=1500, n_items=6000, n_interactions=60_000, seed=2)
    pooled = generate(tmp_path / "pooled", config)
    assert generate(tmp_path / "again", config)["interactions"].read_bytes() == pooled["interactions"].read_bytes()
    inter = pl.read_csv(pooled["interactions"])
    assert inter.height == 60_000 and inter["rating"].is_between(1, 5).all()
    assert inter.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert inter["item_id"].is_between(1, 6000).all()
    ok = inter.group_by("user_id", maintain_order=True).agg((pl.col("timestamp").diff().drop_nulls() >= 0).all())
    assert ok["timestamp"].all()

    monkeypatch.setattr(generate_module, "POOLED_BELOW_DENSITY", 0.0)  # the whole-row sampler, for reference
    whole = generate(tmp_path / "whole", config)
    assert whole["interactions"].read_bytes() != pooled["interactions"].read_bytes()
    (top, apart, rating), (top_ref, apart_ref, rating_ref) = _shape(tmp_path / "pooled"), _shape(tmp_path / "whole")
    assert abs(top - top_ref) < 0.05 and top > 0.3
    assert 0.7 * apart_ref < apart <= 1.1 * apart_ref
    assert abs(rating - rating_ref) < 0.3
