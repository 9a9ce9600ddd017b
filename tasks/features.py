"""User and item features with Polars, built from the training fold only.

Lazy frames throughout: at 20 M interactions the aggregations stream through Polars' engine instead of
materialising per-row Python objects. Cold users (no training interactions) get demographic features only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from recsys import db, schema
from recsys.errors import EmptyWarehouseError
from recsys.schema import ITEM_ID, RATING, TIMESTAMP, USER_ID
from recsys.settings import Settings
from tasks.item_text import text_vectors

USER_FEATURE_COLUMNS = (USER_ID, "gender", "age_bucket", "occupation", "zip_region",
                        "activity_count", "mean_rating", "recency_days", "has_history")
ITEM_FEATURE_COLUMNS = (ITEM_ID, "title", "genres", "release_year", "popularity", "log_popularity", "mean_rating")


@dataclass
class Frames:
    """What the warehouse holds: interactions, users and items as Polars frames."""

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    text_vectors: pl.DataFrame | None = None  # (item_id, text_vector) from the pretrained encoder, if on


def load_frames(wh: db.Warehouse, settings: Settings | None = None) -> Frames:
    """The warehouse's tables; with ``settings``, the items' text vectors too (``RECSYS_TEXT_ENCODER``)."""
    interactions = read_table(wh, "select user_id, item_id, coalesce(rating, 1.0) as rating, ts "
                                   "from interactions order by user_id, ts, item_id")
    if interactions.height == 0:
        raise EmptyWarehouseError("the warehouse has no interactions yet; run `recsys ingest` first")
    users = read_table(wh, "select user_id, age, gender, occupation, zip from users order by user_id")
    items = read_table(wh, "select item_id, title, release_date, genres from items order by item_id")
    return Frames(interactions, users, items, text_vectors(items, settings) if settings is not None else None)


def feature_frames(frames: Frames, train: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """User and item features from the training fold only (no test interaction leaks in)."""
    reference = train[TIMESTAMP].max() if train.height else datetime(1970, 1, 1)
    return (build_user_features(frames.users.lazy(), train.lazy(), reference),
            build_item_features(frames.items.lazy(), train.lazy(), frames.text_vectors))


def age_bucket(age: pl.Expr) -> pl.Expr:
    expr = pl.when(age.is_null()).then(pl.lit("unknown"))
    for lo, hi, label in schema.AGE_BUCKETS:
        expr = expr.when(age.is_between(lo, hi)).then(pl.lit(label))
    return expr.otherwise(pl.lit("unknown"))


def zip_region(zipcode: pl.Expr) -> pl.Expr:
    """US zip codes' first digit is a region (0 = north-east ... 9 = west); anything else is 'other'."""
    first = zipcode.str.strip_chars().str.slice(0, 1)
    return (pl.when(zipcode.is_null()).then(pl.lit("unknown"))
            .when(first.str.contains(r"^[0-9]$")).then(first)
            .otherwise(pl.lit("other")))


def build_user_features(users: pl.LazyFrame, train: pl.LazyFrame, reference_time: datetime) -> pl.DataFrame:
    activity = train.group_by(USER_ID).agg(
        activity_count=pl.len().cast(pl.Int64),
        mean_rating=pl.col(RATING).mean(),
        last_ts=pl.col(TIMESTAMP).max(),
    )
    # Users seen in interactions but missing from the users table still get a row.
    ids = pl.concat([users.select(USER_ID), train.select(USER_ID)]).unique()
    return (
        ids.join(users, on=USER_ID, how="left")
        .join(activity, on=USER_ID, how="left")
        .with_columns(
            gender=pl.col("gender").fill_null("unknown"),
            age_bucket=age_bucket(pl.col("age")),
            occupation=pl.col("occupation").fill_null("unknown"),
            zip_region=zip_region(pl.col("zip")),
            activity_count=pl.col("activity_count").fill_null(0),
            recency_days=((pl.lit(reference_time) - pl.col("last_ts")).dt.total_seconds() / 86400.0),
            has_history=pl.col("activity_count").fill_null(0) > 0,
        )
        .select(USER_FEATURE_COLUMNS)
        .sort(USER_ID)
        .collect()
    )


def build_item_features(items: pl.LazyFrame, train: pl.LazyFrame, text_vectors: pl.DataFrame | None = None
                        ) -> pl.DataFrame:
    """Item features; with ``text_vectors``, each item's pretrained text vector as ``text_vector`` (null for
    an item without text)."""
    stats = train.group_by(ITEM_ID).agg(popularity=pl.len().cast(pl.Int64), mean_rating=pl.col(RATING).mean())
    ids = pl.concat([items.select(ITEM_ID), train.select(ITEM_ID)]).unique()
    features = (
        ids.join(items, on=ITEM_ID, how="left")
        .join(stats, on=ITEM_ID, how="left")
        .with_columns(
            genres=pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            release_year=pl.col("release_date").dt.year(),
            popularity=pl.col("popularity").fill_null(0),
        )
        .with_columns(log_popularity=pl.col("popularity").log1p())
        .select(ITEM_FEATURE_COLUMNS)
    )
    if text_vectors is not None:
        features = features.join(text_vectors.lazy(), on=ITEM_ID, how="left")
    return features.sort(ITEM_ID).collect()


def read_table(wh: db.Warehouse, query: str, params: dict | None = None) -> pl.DataFrame:
    """A DuckDB query as a Polars frame, through Arrow."""
    return wh.sql(query, params=params or None).pl()


def write_features(
    wh: db.Warehouse, run_id: str,
    user_features: pl.DataFrame, item_features: pl.DataFrame,
) -> None:
    """Replace the feature tables with this run's (the run_id column says which run built them)."""
    # The text vectors stay in the fold's Parquet (what the models read), not in the warehouse table.
    for name, frame in (("user_features", user_features),
                        ("item_features", item_features.select(ITEM_FEATURE_COLUMNS))):
        with wh.registered("staged", frame.with_columns(run_id=pl.lit(run_id)).to_arrow()):
            wh.execute(f"create or replace table {name} as select * from staged")


@dataclass(frozen=True)
class FeatureSet:
    """One fold's stored features: training reads exactly what was stored here."""

    folder: str
    users: int
    items: int
    users_without_history: int

    @property
    def user_features(self) -> Path:
        return Path(self.folder) / "user_features.parquet"

    @property
    def item_features(self) -> Path:
        return Path(self.folder) / "item_features.parquet"

    def exists(self) -> bool:
        return self.user_features.exists() and self.item_features.exists()

    def read(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        return pl.read_parquet(self.user_features), pl.read_parquet(self.item_features)


def store_features(frames: Frames, train: pl.DataFrame, folder: Path) -> FeatureSet:
    """Build a fold's features and write them as Parquet under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    user_features, item_features = feature_frames(frames, train)
    user_features.write_parquet(folder / "user_features.parquet")
    item_features.write_parquet(folder / "item_features.parquet")
    return FeatureSet(str(folder), user_features.height, item_features.height,
                      int((~user_features["has_history"]).sum()))


def production_features(settings: Settings, run_id: str, frames: Frames, folder: Path) -> FeatureSet:
    """The production fold's features (everything loaded): stored as Parquet and as the warehouse tables."""
    feature_set = store_features(frames, frames.interactions, folder)
    user_features, item_features = feature_set.read()
    with db.warehouse(settings) as wh:
        write_features(wh, run_id, user_features, item_features)
    return feature_set
