"""The night's snapshot: the warehouse read once into Parquet, which every later step reads.

DuckDB allows one writer per database file, and at 20 M interactions every read of the warehouse costs
seconds: the night reads it once, here, and hands later steps a small :class:`Snapshot` record (a folder,
a fingerprint, counts). A snapshot is immutable and named by the warehouse's content fingerprint, so an
unchanged warehouse reuses the folder, and a folder is complete or absent (written aside, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys import db, runs
from recsys.errors import EmptyWarehouseError
from recsys.settings import Settings
from tasks.features import Frames
from tasks.item_text import text_vectors

TABLES = ("interactions", "users", "items")


@dataclass(frozen=True)
class Snapshot:
    folder: str
    fingerprint: str
    interactions: int
    users: int
    items: int
    text_encoder: str = "none"  # the items' text vectors beside the tables: text_vectors-<encoder>.parquet

    def path(self, table: str) -> Path:
        return Path(self.folder) / f"{table}.parquet"

    @property
    def text_vectors_path(self) -> Path:
        return Path(self.folder) / f"text_vectors-{self.text_encoder}.parquet"

    def exists(self) -> bool:
        return (all(self.path(table).exists() for table in TABLES)
                and (self.text_encoder == "none" or self.text_vectors_path.exists()))

    def frames(self) -> Frames:
        vectors = pl.read_parquet(self.text_vectors_path) if self.text_encoder != "none" else None
        return Frames(*(pl.read_parquet(self.path(table)) for table in TABLES), text_vectors=vectors)

    def gate(self) -> pl.DataFrame:
        """The results of the newest validation gate when the snapshot was taken (empty if none)."""
        path = self.path("validation_results")
        return pl.read_parquet(path) if path.exists() else pl.DataFrame()


_FINGERPRINT = re.compile(r"^[0-9a-f]{20}$")
# The folders under RECSYS_HOME that hold one folder per snapshot fingerprint: the snapshot, its features.
SNAPSHOTS, FEATURES = "snapshots", "features"
DATA_FOLDERS = (SNAPSHOTS, FEATURES)


def data_folder(settings: Settings, kind: str, fingerprint: str) -> Path:
    """Where the data of ``kind`` (one of :data:`DATA_FOLDERS`) read from the snapshot ``fingerprint`` is kept."""
    return settings.home / kind / fingerprint


def warehouse_fingerprint(wh: db.Warehouse) -> str:
    row = wh.run("snapshot/warehouse_fingerprint")[0]
    return hashlib.sha256("-".join(str(v) for v in row).encode()).hexdigest()[:20]


def is_fingerprint(name: str) -> bool:
    """Whether ``name`` is what :func:`warehouse_fingerprint` names a snapshot (not a staging folder)."""
    return bool(_FINGERPRINT.match(name))


def take_snapshot(settings: Settings, run_id: str | None = None) -> Snapshot:
    """Copy interactions, users and items to ``RECSYS_HOME/snapshots/<fingerprint>/`` (once per content);
    ``run_id``'s record says which snapshot it read."""
    with db.warehouse(settings) as wh:
        fingerprint = warehouse_fingerprint(wh)
        if run_id is not None:
            runs.record_snapshot(wh, run_id, fingerprint)
        counts = {table: wh.scalar(f"select count(*) from {table}") for table in TABLES}
        if counts["interactions"] == 0:
            raise EmptyWarehouseError("the warehouse has no interactions yet; run `recsys ingest` first")
        folder = data_folder(settings, SNAPSHOTS, fingerprint)
        snapshot = Snapshot(str(folder), fingerprint, counts["interactions"], counts["users"], counts["items"],
                            settings.text_encoder)
        if not all(snapshot.path(table).exists() for table in TABLES):
            _copy_tables(wh, settings, folder)
    return with_text_vectors(snapshot, settings)


def _copy_tables(wh: db.Warehouse, settings: Settings, folder: Path) -> None:
    """The tables, written aside and renamed into ``folder``: a folder is complete or absent."""
    staging = data_folder(settings, SNAPSHOTS, f"_staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        for table in (*TABLES, "validation_results"):
            target = str(staging / f"{table}.parquet").replace("'", "''")
            wh.execute(f"copy ({wh.text(f'snapshot/{table}')}) to '{target}' (format parquet)")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder from a crash
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def with_text_vectors(snapshot: Snapshot, settings: Settings) -> Snapshot:
    """The snapshot's items' text vectors beside its tables (once per snapshot and encoder; texts seen on
    an earlier night come from the vector cache)."""
    if settings.text_encoder == "none" or snapshot.text_vectors_path.exists():
        return snapshot
    vectors = text_vectors(pl.read_parquet(snapshot.path("items")), settings)
    staged = snapshot.text_vectors_path.with_name(f"_staging-{uuid.uuid4().hex[:8]}.parquet")
    try:
        vectors.write_parquet(staged)
        os.replace(staged, snapshot.text_vectors_path)
    finally:
        staged.unlink(missing_ok=True)
    return snapshot
