"""The night's snapshot: the warehouse read once into Parquet, which every later step reads.

DuckDB allows one writer per database file, and at 20 M interactions every read of the warehouse costs
seconds: the night reads it once, here, and hands later steps a small :class:`Snapshot` record (a folder,
a fingerprint, counts). A snapshot is immutable and named by the warehouse's content fingerprint, so an
unchanged warehouse reuses the folder, and a folder is complete or absent (written aside, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys import db
from recsys.errors import EmptyWarehouseError
from recsys.settings import Settings
from tasks.features import Frames

TABLES = ("interactions", "users", "items")


@dataclass(frozen=True)
class Snapshot:
    folder: str
    fingerprint: str
    interactions: int
    users: int
    items: int

    def path(self, table: str) -> Path:
        return Path(self.folder) / f"{table}.parquet"

    def exists(self) -> bool:
        return all(self.path(table).exists() for table in TABLES)

    def frames(self) -> Frames:
        return Frames(*(pl.read_parquet(self.path(table)) for table in TABLES))

    def gate(self) -> pl.DataFrame:
        """The results of the newest validation gate when the snapshot was taken (empty if none)."""
        path = self.path("validation_results")
        return pl.read_parquet(path) if path.exists() else pl.DataFrame()


def warehouse_fingerprint(con, settings: Settings) -> str:
    row = db.run(con, settings, "snapshot/warehouse_fingerprint")[0]
    return hashlib.sha256("-".join(str(v) for v in row).encode()).hexdigest()[:20]


def take_snapshot(settings: Settings) -> Snapshot:
    """Copy interactions, users and items to ``RECSYS_HOME/snapshots/<fingerprint>/`` (once per content)."""
    with db.warehouse(settings) as con:
        fingerprint = warehouse_fingerprint(con, settings)
        counts = {table: db.scalar(con, f"select count(*) from {table}") for table in TABLES}
        if counts["interactions"] == 0:
            raise EmptyWarehouseError("the warehouse has no interactions yet; run `recsys ingest` first")
        folder = settings.home / "snapshots" / fingerprint
        snapshot = Snapshot(str(folder), fingerprint, counts["interactions"], counts["users"], counts["items"])
        if snapshot.exists():
            return snapshot
        staging = settings.home / "snapshots" / f"_staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            for table in (*TABLES, "validation_results"):
                target = str(staging / f"{table}.parquet").replace("'", "''")
                con.execute(f"copy ({db.sql_text(settings, f'snapshot/{table}')}) to '{target}' (format parquet)")
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder from a crash
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return snapshot
