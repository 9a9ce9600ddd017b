"""Training: frames from the warehouse, features for a training fold, fitted and saved models."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from models.base import Recommender
from models.registry import build, model_class
from recsys.errors import EmptyWarehouseError
from recsys.settings import Settings
from tasks import features


@dataclass
class Frames:
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame


def load_frames(con: duckdb.DuckDBPyConnection) -> Frames:
    interactions = features.read_table(con, "select user_id, item_id, coalesce(rating, 1.0) as rating, ts "
                                            "from interactions order by user_id, ts, item_id")
    if interactions.height == 0:
        raise EmptyWarehouseError("the warehouse has no interactions yet; run `recsys ingest` first")
    users = features.read_table(con, "select user_id, age, gender, occupation, zip from users order by user_id")
    items = features.read_table(con, "select item_id, title, release_date, genres from items order by item_id")
    return Frames(interactions, users, items)


def build_features(frames: Frames, train: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """User and item features from the training fold only (no test interaction leaks in)."""
    reference = train["ts"].max() if train.height else datetime(1970, 1, 1)
    return (features.build_user_features(frames.users.lazy(), train.lazy(), reference),
            features.build_item_features(frames.items.lazy(), train.lazy()))


def model_params(name: str, settings: Settings) -> dict:
    """Hyper-parameters that come from settings (the rest are each model's defaults)."""
    deep = {"epochs": settings.epochs, "batch_size": settings.batch_size}
    if name == "two_tower":
        return deep
    if name == "hybrid":
        return {"component_params": {"two_tower": deep}}
    return {}


def train_models(
    names: list[str] | tuple[str, ...], train: pl.DataFrame, user_features: pl.DataFrame,
    item_features: pl.DataFrame, settings: Settings, log=print,
) -> dict[str, Recommender]:
    for name in names:
        model_class(name)  # fail fast on an unknown name, before any training
    fitted: dict[str, Recommender] = {}
    for name in names:
        started = time.perf_counter()
        model = build(name, **model_params(name, settings))
        if hasattr(model, "use_fitted"):
            model.use_fitted(fitted)
        fitted[name] = model.fit(train, user_features, item_features, seed=settings.seed)
        log(f"  trained {name:20} in {time.perf_counter() - started:6.1f} s")
    return fitted


def save_models(models: dict[str, Recommender], folder: Path) -> dict[str, Path]:
    return {name: model.save(Path(folder) / name) for name, model in models.items()}


def format_training(models: dict[str, Recommender], paths: dict[str, Path]) -> str:
    lines = [f"  {'model':20} {'users':>8} {'items':>7} {'interactions':>13} {'seconds':>8}  saved to"]
    for name, model in models.items():
        m = model.meta
        lines.append(f"  {name:20} {m['n_users']:>8,} {m['n_items']:>7,} {m['n_interactions']:>13,} "
                     f"{m['training_seconds']:>8.1f}  {paths.get(name, '')}")
    return "\n".join(lines)


def train_step(settings: Settings, run_id: str, names: list[str] | tuple[str, ...], log=print) -> dict:
    """Fit the production models on everything loaded; save them under models/<run_id>/<model>/."""
    from recsys import db

    with db.warehouse(settings) as con:
        frames = load_frames(con)
    user_features, item_features = build_features(frames, frames.interactions)
    models = train_models(names, frames.interactions, user_features, item_features, settings, log=log)
    paths = save_models(models, settings.models_dir / run_id)
    log(format_training(models, paths))
    return {"model_dir": str(settings.models_dir / run_id), "models": {n: str(p) for n, p in paths.items()}}
