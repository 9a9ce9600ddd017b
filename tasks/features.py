"""User and item features with Polars, built from the training fold only.

Lazy frames throughout: at 20 M interactions the aggregations stream through Polars' engine instead of
materialising per-row Python objects. Cold users (no training interactions) get demographic features only.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from recsys import db, schema
from recsys.settings import Settings

USER_FEATURE_COLUMNS = ("user_id", "gender", "age_bucket", "occupation", "zip_region",
                        "activity_count", "mean_rating", "recency_days", "has_history")
ITEM_FEATURE_COLUMNS = ("item_id", "genres", "release_year", "popularity", "log_popularity", "mean_rating")


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
    activity = train.group_by("user_id").agg(
        activity_count=pl.len().cast(pl.Int64),
        mean_rating=pl.col("rating").mean(),
        last_ts=pl.col("ts").max(),
    )
    # Users seen in interactions but missing from the users table still get a row.
    ids = pl.concat([users.select("user_id"), train.select("user_id")]).unique()
    return (
        ids.join(users, on="user_id", how="left")
        .join(activity, on="user_id", how="left")
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
        .sort("user_id")
        .collect()
    )


def build_item_features(items: pl.LazyFrame, train: pl.LazyFrame) -> pl.DataFrame:
    stats = train.group_by("item_id").agg(popularity=pl.len().cast(pl.Int64), mean_rating=pl.col("rating").mean())
    ids = pl.concat([items.select("item_id"), train.select("item_id")]).unique()
    return (
        ids.join(items, on="item_id", how="left")
        .join(stats, on="item_id", how="left")
        .with_columns(
            genres=pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            release_year=pl.col("release_date").dt.year(),
            popularity=pl.col("popularity").fill_null(0),
        )
        .with_columns(log_popularity=pl.col("popularity").log1p())
        .select(ITEM_FEATURE_COLUMNS)
        .sort("item_id")
        .collect()
    )


def read_table(con: duckdb.DuckDBPyConnection, query: str, params: dict | None = None) -> pl.DataFrame:
    """A DuckDB query as a Polars frame, through Arrow."""
    return con.sql(query, params=params or None).pl()


def write_features(
    con: duckdb.DuckDBPyConnection, settings: Settings, run_id: str,
    user_features: pl.DataFrame, item_features: pl.DataFrame,
) -> None:
    """Replace the feature tables with this run's (the run_id column says which run built them)."""
    for name, frame in (("user_features", user_features), ("item_features", item_features)):
        staged = frame.with_columns(run_id=pl.lit(run_id))  # noqa: F841 - queried by name below
        con.execute(f"create or replace table {name} as select * from staged")


def features_step(settings: Settings, run_id: str) -> dict:
    """Build both feature tables from everything loaded (the production training fold) and store them."""
    from tasks.train import build_features, load_frames

    with db.warehouse(settings) as con:
        frames = load_frames(con)
        user_features, item_features = build_features(frames, frames.interactions)
        write_features(con, settings, run_id, user_features, item_features)
    return {"user_features": user_features.height, "item_features": item_features.height,
            "users_without_history": int((~user_features["has_history"]).sum())}
