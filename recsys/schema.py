"""Column names, table names and defaults, defined once and imported everywhere."""

from __future__ import annotations

import polars as pl

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "ts"

DEFAULT_K = 10
DEFAULT_TOP_N = 50

# Canonical columns each landing file kind must provide (required) or may provide (optional).
CANONICAL_COLUMNS: dict[str, dict[str, bool]] = {
    "interactions": {USER_ID: True, ITEM_ID: True, RATING: False, TIMESTAMP: True},
    "users": {USER_ID: True, "age": False, "gender": False, "occupation": False, "zip": False},
    "items": {ITEM_ID: True, "title": False, "release_date": False, "genres": False},
}
FILE_KINDS = ("users", "items", "interactions")  # load order: referenced tables first

# The MovieLens genre vocabulary; the synthetic generator uses the same names.
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
OCCUPATIONS: tuple[str, ...] = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)
AGE_BUCKETS: tuple[tuple[int, int, str], ...] = (
    (0, 17, "under18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"),
    (45, 49, "45-49"), (50, 55, "50-55"), (56, 200, "56+"),
)

# Strategies a published recommendation list can come from.
STRATEGY_WARM = "warm"
STRATEGY_K_SHOT = "k_shot"
STRATEGY_ZERO_SHOT = "zero_shot"

# The published tables' rows, as the models serve them: a user's top-N, each row's reason, an item's best users.
RECOMMENDATION_SCHEMA = {USER_ID: pl.Int64, ITEM_ID: pl.Int64, "rank": pl.Int32, "score": pl.Float32}
REASON_SCHEMA = {"reason_kind": pl.String, "reason_item_id": pl.Int64, "reason_segment": pl.String}
BY_ITEM_SCHEMA = {ITEM_ID: pl.Int64, USER_ID: pl.Int64, "rank": pl.Int32, "score": pl.Float32}
# The evaluation's metrics, one row per (slice, model, metric, k), as stored in the ``metrics`` table.
METRIC_COLUMNS = {"run_id": pl.String, "split": pl.String, "k_shot": pl.Int32, "model": pl.String,
                  "metric": pl.String, "k": pl.Int32, "value": pl.Float64, "ci_low": pl.Float64,
                  "ci_high": pl.Float64, "n_users": pl.Int64, "n_excluded": pl.Int64}
