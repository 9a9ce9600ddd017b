"""Warehouse access: the open warehouse (:class:`Warehouse`: a connection and its SQL folder), named SQL
statements from ``sql/`` and the schema migration.

SQL lives in ``sql/``, one statement per file; values are bound as parameters. Identifiers that depend
on a user's column mapping go through :func:`quote_ident`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import duckdb

from recsys.errors import ConfigError, WarehouseBusyError
from recsys.settings import Settings


@cache
def _read_sql(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Warehouse:
    """The open warehouse: its DuckDB connection and the folder its named statements come from (``sql/``).

    Named statements run through :meth:`run` (exactly the parameters they name); ad-hoc SQL through
    :meth:`execute` / :meth:`sql`; several statements as one through :meth:`transaction`; a frame is visible to
    SQL inside :meth:`registered`. ``con`` is the connection itself, for what reads from it (Polars, Arrow)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, sql_dir: Path):
        self.con, self.sql_dir = con, Path(sql_dir)

    def text(self, name: str) -> str:
        """The statement in ``<sql_dir>/<name>.sql``."""
        return _read_sql(self.sql_dir / f"{name}.sql")

    def run(self, name: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Execute ``<name>.sql`` with exactly the parameters it names and fetch every row (DuckDB 2.0 wants
        results consumed). A parameter the statement does not name, or one it names and is not given, is a
        programming error, raised before the statement runs (a misspelt parameter was silently dropped)."""
        text = self.text(name)
        named, given = set(re.findall(r"\$([A-Za-z_]\w*)", text)), set(params or {})
        if named != given:
            raise ValueError(f"sql/{name}.sql names {sorted(named)}; given {sorted(given)} (unknown: "
                             f"{sorted(given - named)}, missing: {sorted(named - given)})")
        return self.con.execute(text, dict(params or {})).fetchall()

    def execute(self, query: str, params: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        return self.con.execute(query, dict(params) if params else None)

    def sql(self, query: str, params: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyRelation:
        return self.con.sql(query, params=dict(params) if params else None)

    def scalar(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        rows = self.execute(query, params).fetchall()
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements inside commit together, or none does (rolled back on any exception)."""
        self.con.begin()
        try:
            yield
        except BaseException:
            self.con.rollback()
            raise
        self.con.commit()

    @contextmanager
    def registered(self, name: str, frame: Any) -> Iterator[None]:
        """``frame`` (pandas, Arrow) visible to SQL as ``name`` inside the block."""
        self.con.register(name, frame)
        try:
            yield
        finally:
            self.con.unregister(name)

    def close(self) -> None:
        self.con.close()


def connect(settings: Settings, read_only: bool = False) -> Warehouse:
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
    # DuckDB's Python client draws a progress bar on stdout for a query over 2 s wherever it thinks the session
    # interactive (`python -c`, a notebook, a worker started so): a night's log carried one from the increment's
    # duplicate check against 100 M rows. Progress is the flow's to say.
    con.execute("set enable_progress_bar = false")
    try:
        con.execute("set memory_limit = $limit", {"limit": settings.warehouse_memory_limit})
    except duckdb.Error as exc:
        con.close()
        raise ConfigError(f"RECSYS_WAREHOUSE_MEMORY_LIMIT={settings.warehouse_memory_limit!r} is not a memory size "
                          f"DuckDB reads ({str(exc).splitlines()[0][:160]}); write it as 4GB or 512MB") from exc
    wh = Warehouse(con, settings.sql_dir)
    if not read_only:
        migrate(wh)
    return wh


@contextmanager
def warehouse(settings: Settings, read_only: bool = False) -> Iterator[Warehouse]:
    wh = connect(settings, read_only=read_only)
    try:
        yield wh
    finally:
        wh.close()


def migrate(wh: Warehouse) -> None:
    """Create every table in ``sql/schema`` that does not exist yet, and the connection's temp macros
    (idempotent)."""
    for path in sorted((wh.sql_dir / "schema").glob("*.sql")):
        wh.execute(_read_sql(path))
