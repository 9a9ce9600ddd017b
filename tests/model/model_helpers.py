"""Helpers shared by the model tests: fast hyper-parameters and synthetic data loading."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from tasks import features

FAST_PARAMS = {
    "popularity": {},
    "segment_popularity": {},
    "item_knn": {"neighbours": 50},
    "ease": {"l2": 50.0},
    "two_tower": {"epochs": 3, "dim": 16, "hidden": 32, "batch_size": 256},
    "hybrid": {"component_params": {"two_tower": {"epochs": 2, "dim": 16, "hidden": 32, "batch_size": 256},
                                    "ease": {"l2": 50.0}},
               "grid_step": 0.25},
}


def load_synthetic(folder):
    inter = (pl.read_csv(folder / "interactions.csv")
             .with_columns(ts=pl.from_epoch("timestamp"), rating=pl.col("rating").cast(pl.Float64))
             .drop("timestamp"))
    users = pl.read_csv(folder / "users.csv", schema_overrides={"zip": pl.String})
    items = pl.read_csv(folder / "items.csv").with_columns(
        genres=pl.col("genres").str.split("|"), release_date=pl.col("release_date").str.to_date())
    return inter, users, items


def featurize(inter, users, items):
    reference = datetime(2030, 1, 1)
    return (features.build_user_features(users.lazy(), inter.lazy(), reference),
            features.build_item_features(items.lazy(), inter.lazy()))


