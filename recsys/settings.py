"""One typed, frozen settings object, read from ``RECSYS_*`` environment variables.

Built at the entry point (CLI, flow) and passed down; importing this module has no side effects.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys import schema

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Defaults for the libraries the project runs, where the user has not set them: TensorFlow's C++ start-up
# lines, and the telemetry of Prefect and Great Expectations, are noise in a night's output.
LIBRARY_DEFAULTS = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "DO_NOT_TRACK": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false"}


def quiet_libraries() -> None:
    """Set :data:`LIBRARY_DEFAULTS` in this process's environment where unset (before the libraries load)."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", frozen=True, extra="ignore")

    home: Path = Field(Path("var"), description="Root of the warehouse, models, outputs and landing files.")
    seed: int = Field(42, description="Seed of every stochastic step; recorded with each run.")

    # Rating scale and time window used by ingest and the validation gate.
    rating_min: float = 1.0
    rating_max: float = 5.0
    timestamp_floor: datetime = datetime(1990, 1, 1)

    # Validation gate tuning (see expectations/*.json for which checks use them).
    duplicate_share_max: float = 0.05
    volume_band: float = Field(0.9, description="Allowed relative deviation of a batch from the trailing mean.")
    volume_window: int = Field(7, description="How many previous loaded batches form the trailing mean.")
    mean_rating_min: float = 2.5
    mean_rating_max: float = 4.5
    new_user_share_max: float = 0.5
    volume_critical: bool = False
    data_docs: bool = Field(False, description="Also build Great Expectations' Data Docs under RECSYS_HOME/gx (HTML "
                            "that loads its styles from the internet); the report's gate section has every result.")
    drift_critical: bool = False

    # Evaluation and publishing.
    top_n: int = schema.DEFAULT_TOP_N
    ks: tuple[int, ...] = (schema.DEFAULT_K,)
    k_shots: tuple[int, ...] = (0, 1, 3, 5, 10, 20)
    cold_user_fraction: float = 0.2
    item_cold_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Items held out entirely by the item-cold "
                                      "evaluation (0 turns it off).")
    new_item_max_interactions: int = Field(5, ge=1, description="Items with fewer interactions are published "
                                           "in new_items with the users to show them to.")
    new_item_users: int = Field(100, ge=1, description="Users published per new item; an item nobody has taken "
                                "enters only their lists.")
    validation_user_fraction: float = 0.1
    tuning_shape: Literal["window", "latest"] = Field("window", description="What the blend is tuned on: window "
                                                      "(the night's shape: a tuning fold cut in time before the "
                                                      "last tuning_window of the evaluation fold's interactions, "
                                                      "tuned on what the users known then did in it) or latest "
                                                      "(each validation user's latest 20 %).")
    tuning_window: float = Field(0.3, gt=0.0, lt=1.0, description="The window's share of the evaluation fold's "
                                 "interactions, by time.")
    keep_last_blend: bool = Field(True, description="Each bucket of the blend keeps the weights of the last "
                                  "published night unless tonight's choice beats them significantly on tonight's "
                                  "validation users (false: tuned afresh every night).")
    keep_nights: int = Field(3, ge=0, description="Nights whose working files (fitted models, folds, splits: "
                             "several GB at 20 M interactions) are kept; older nights keep their reports and "
                             "metrics, and the published model is always kept; snapshots no kept night read go with "
                             "them (0: keep everything).")
    bootstrap_samples: int = 1000
    max_eval_users: int = Field(5000, description="Users sampled per evaluation slice (bounds cost at scale).")
    evaluation_max_interactions: int = Field(20_000_000, ge=0, description="The night's evaluation (its tuning, "
                                             "evaluation and item-cold folds, their fits and slices) is carved "
                                             "from the users first in a seeded order (the same users night after "
                                             "night) whose interactions come to at most this many; production "
                                             "fits and serves every user (0: evaluate on every user).")
    metric_tolerance: float = Field(0.10, description="Allowed relative drop of headline metrics vs last publish.")

    # Models.
    models: tuple[str, ...] = ("popularity", "segment_popularity", "item_knn", "ease", "als", "content_knn",
                               "two_tower", "hybrid")
    publish_model: str = "hybrid"
    timezone: str = "UTC"
    verbose: bool = Field(False, description="Per-epoch lines from Keras (RECSYS_VERBOSE=1).")
    epochs: int = 30
    ease_max_items: int = Field(0, ge=0, description="EASE is fitted on at most this many items, the most taken "
                                "(0: 20,000 or what a quarter of this machine's memory holds, the smaller); the "
                                "hybrid's other components rank the rest.")
    # Item text (title, genres) embedded by a pretrained sentence encoder (models/text_encoder.py), read by the
    # content models and the two-tower's content tower; ``none`` turns it off (the models then read genres,
    # year and title words only).
    text_encoder: Literal["minilm", "none"] = Field("minilm", description="minilm | none (RECSYS_TEXT_ENCODER).")
    text_encoder_model_path: Path | None = Field(None, description="The encoder's ONNX file, if not the installed "
                                                 "package's; it must still match the pinned sha256.")
    text_vector_cache: Path | None = Field(None, description="Where item text vectors are kept between nights, "
                                           "keyed by the text's hash (default RECSYS_HOME/embeddings).")
    new_item_slots: int = Field(2, ge=0, description="At most this many items nobody has taken yet in a user's "
                                "top 10, placed where they are likelier to be taken than the known item they "
                                "displace (0: new items only in new_items).")
    new_item_min_rate: float = Field(0.0, ge=0, description="A floor under the validation window's measured rate "
                                     "at which users take items nobody had taken before it (the rate that scales "
                                     "a new item's probability before it competes for a list place): set it when "
                                     "tonight's untaken items are arrivals the window cannot have seen (1: as the "
                                     "audience model calibrates them on items held out of training); 0 trusts "
                                     "the window.")
    retrieval_depth: int = Field(50, ge=0, description="Wide catalogues are served in two stages: each of the "
                                 "hybrid's components names its best this many unseen items a user, and the "
                                 "blend ranks their union (0: the whole catalogue ranked at any width).")
    retrieval_min_items: int = Field(50_000, ge=0, description="Catalogues of at least this many items are served "
                                     "in two stages (below it a block's candidates are a large share of the "
                                     "catalogue, and ranking all of it costs about as much).")
    retrieval_block_users: int = Field(320, ge=1, description="Users a block when a hybrid serves a wide "
                                       "catalogue in two stages (at least its catalogue-wide block): a block "
                                       "holds its users' candidates, not the catalogue, and fewer blocks cost "
                                       "less of the fixed work of each (new items' audiences, the towers' calls).")
    batch_size: int = 1024
    scoring_threads: int = Field(0, ge=0, description="Threads of blockwise scoring and top-N selection (0: every "
                                 "core this process may use).")
    keep_freed_memory: bool = Field(True, description="Keep the large blocks a step frees for its next blocks "
                                    "instead of giving them back to the system at once (recsys.memory: 20-40 % "
                                    "of scoring on this machine; false: glibc's default).")
    progress_seconds: float = Field(10.0, ge=0, description="A heartbeat line at most this often while a step "
                                    "runs (0: none).")

    # Where the night's independent work runs (model fits, evaluation slices, scoring blocks): ``local`` in
    # this process, one task at a time; ``dask`` on a Dask cluster through prefect-dask, the one at
    # ``dask_address`` or, without one, a LocalCluster of ``dask_workers`` processes started for the night.
    task_runner: Literal["local", "dask"] = Field("local", description="local | dask (RECSYS_TASK_RUNNER).")
    dask_address: str | None = Field(None, description="Scheduler of an existing Dask cluster, tcp://host:8786.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster started without an address.")

    lock_wait_seconds: float = Field(0.0, description="How long a run waits for another run on the same home.")
    connect_wait_seconds: float = Field(60.0, description="How long a connection waits for a reader to let go.")

    warehouse_memory_limit: str = Field("4GB", description="DuckDB's memory_limit on the warehouse connection: "
                                        "its buffer pool (cached table blocks, sorts, joins), which spills to "
                                        "the warehouse's .tmp folder beyond it. DuckDB's own default, 80% of the "
                                        "machine, let the ingest of 30 M interactions hold 8 GiB beside the "
                                        "night's arrays in the same process.")
    sql_timeout_seconds: float = Field(60.0, ge=0, description="recsys sql: a query running longer is stopped (0: "
                                       "no limit).")
    sql_memory_limit: str = Field("2GB", description="recsys sql: DuckDB's memory_limit for a query (it does not "
                                  "spill to disk).")

    synthetic_size: Literal["small", "full"] = Field("small", description="The synthetic source's default data: "
                                                     "small (800 users, 30k interactions: a first result in about "
                                                     "two minutes) or full (1,500 users, 75k).")

    ml100k_url: str = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    ml100k_dir: Path = Field(PROJECT_ROOT.parent / "shared" / "datasets" / "ml-100k",
                             description="Where the benchmarks and tests find MovieLens-100k (RECSYS_ML100K_DIR; "
                                         "its licence forbids copying it into the repository).")
    sql_dir: Path = PROJECT_ROOT / "sql"
    expectations_dir: Path = PROJECT_ROOT / "expectations"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def output_dir(self) -> Path:
        return self.home / "output"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def text_vector_dir(self) -> Path:
        return self.text_vector_cache or self.home / "embeddings"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def ensure_dirs(self) -> None:
        """Create the home layout. Called by entry points, never at import."""
        for path in (self.home, self.models_dir, self.output_dir, self.landing_dir, self.reports_dir):
            path.mkdir(parents=True, exist_ok=True)
