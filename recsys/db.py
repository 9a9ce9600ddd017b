"""Warehouse access: connections, SQL files from ``sql/`` and the schema migration.

SQL lives in ``sql/``, one statement per file; values are bound as parameters. Identifiers that depend
on a user's column mapping go through :func:`quote_ident`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import duckdb

from recsys.errors import WarehouseBusyError
from recsys.settings import Settings


@cache
def _read_sql(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def sql_text(settings: Settings, name: str) -> str:
    """The statement in ``sql/<name>.sql``."""
    return _read_sql(settings.sql_dir / f"{name}.sql")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(settings: Settings, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating it and its schema when writable).

    DuckDB allows one writing process per file, or many readers: while another process holds the file (a
    reader with ``duckdb -readonly``, say) this waits up to ``settings.connect_wait_seconds`` for it to let
    go, then says who to close.
    """
    path = settings.warehouse_path
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + settings.connect_wait_seconds
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusyError(
                    f"{path} is held by another process ({str(exc).splitlines()[0][:200]}); close it, or read "
                    f"the published Parquet instead (`recsys sql`)") from exc
            time.sleep(0.5)
    # Epoch seconds and ISO strings mean UTC, whatever the machine's zone.
    con.execute("set TimeZone = 'UTC'")
    if not read_only:
        migrate(con, settings)
    return con


@contextmanager
def warehouse(settings: Settings, read_only: bool = False):
    con = connect(settings, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def migrate(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Create every table in ``sql/schema`` that does not exist yet (idempotent)."""
    for path in sorted((settings.sql_dir / "schema").glob("*.sql")):
        con.execute(_read_sql(path))


def run(
    con: duckdb.DuckDBPyConnection, settings: Settings, name: str, params: Mapping[str, Any] | None = None
) -> list[tuple]:
    """Execute ``sql/<name>.sql`` with exactly the parameters it names and fetch every row (DuckDB 2.0 wants
    results consumed). A parameter the statement does not name, or one it names and is not given, is a
    programming error, raised before the statement runs (a misspelt parameter was silently dropped)."""
    text = sql_text(settings, name)
    named, given = set(re.findall(r"\$([A-Za-z_]\w*)", text)), set(params or {})
    if named != given:
        raise ValueError(f"sql/{name}.sql names {sorted(named)}; given {sorted(given)} (unknown: "
                         f"{sorted(given - named)}, missing: {sorted(named - given)})")
    return con.execute(text, dict(params or {})).fetchall()


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    rows = con.execute(sql, dict(params or {})).fetchall()
    return rows[0][0] if rows else None
