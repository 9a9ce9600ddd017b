"""Helpers shared by the model tests: fast hyper-parameters, synthetic data loading, a block of every kind of
user."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from models.base import Recommender
from models.hybrid import Hybrid
from models.registry import build
from models.serving import UserBlock
from tasks import features
from tasks.split import carve_validation

FAST_PARAMS = {
    "popularity": {},
    "segment_popularity": {},
    "item_knn": {"neighbours": 50},
    "ease": {"l2": 50.0},
    "als": {"factors": 16, "regularization": 1.0, "iterations": 8},
    "content_knn": {},
    "genre_popularity": {},
    "random": {},
    "genre_year": {},
    "activity": {},
    "new_item_audience": {},
    "new_item_audience_without_text": {},
    "two_tower": {"epochs": 3, "dim": 16, "hidden": 32, "batch_size": 256},
    "hybrid": {"grid_step": 0.25},
}


def fit_model(name: str, train, uf, itf, seed: int, params: dict | None = None, **carve) -> Recommender:
    """Fit one model the way the nightly does; a hybrid's components are fitted first with fast parameters,
    its weights tuned on validation users carved from ``train`` (``carve``: carve_validation's options), then
    the components refitted on all of it."""
    params = FAST_PARAMS[name] if params is None else params
    if name != "hybrid":
        return build(name, **params).fit(train, uf, itf, seed=seed)
    fold = carve_validation(train, 0.2, seed, **carve)

    def fit(interactions, **blend):
        components = {c: fit_model(c, interactions, uf, itf, seed) for c in Hybrid.needed_components(params)}
        hybrid = build("hybrid", **params).use_components(components)
        hybrid = hybrid.use_weights(**blend) if "weights" in blend else hybrid.use_validation(fold.cases)
        return hybrid.fit(interactions, uf, itf, seed=seed)

    tuned = fit(fold.train)
    return fit(train, weights=tuned.weights, tuning=tuned.tuning)


def load_synthetic(folder):
    inter = (pl.read_csv(folder / "interactions.csv")
             .with_columns(ts=pl.from_epoch("timestamp"), rating=pl.col("rating").cast(pl.Float64))
             .drop("timestamp"))
    users = pl.read_csv(folder / "users.csv", schema_overrides={"zip": pl.String})
    items = pl.read_csv(folder / "items.csv").with_columns(
        genres=pl.col("genres").str.split("|"), release_date=pl.col("release_date").str.to_date())
    return inter, users, items


def featurize(inter, users, items, text_vectors=None):
    reference = datetime(2030, 1, 1)
    return (features.build_user_features(users.lazy(), inter.lazy(), reference),
            features.build_item_features(items.lazy(), inter.lazy(), text_vectors))


def block_of(model: Recommender, train: pl.DataFrame, cold) -> UserBlock:
    """Known users, a k-shot user, users with no history (zero-shot) and a user who has seen all but two items."""
    users = np.concatenate([np.sort(train["user_id"].unique().to_numpy())[:30], cold[:4]])
    revealed = train.filter(pl.col("user_id") == users[0]).head(3).with_columns(pl.lit(cold[0]).alias("user_id"))
    everything = pl.DataFrame({"user_id": np.full(len(model.item_ids) - 2, cold[1]),
                               "item_id": model.item_ids[2:]}).with_columns(pl.col("user_id").cast(pl.Int64))
    block = model._user_block(users, model._history_matrix(users, pl.concat([revealed, everything], how="diagonal")))
    assert block.history_length[30] == 3 and block.history_length[31] == len(model.item_ids) - 2
    assert (block.history_length[32:] == 0).all()
    return block
