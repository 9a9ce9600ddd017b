"""Downstream SQL: DuckDB views over the published Parquet, and read-only queries against them.

Readers never open the live warehouse file (DuckDB allows one writer); they read the published Parquet.
The query connection is a sandbox that DuckDB itself enforces: once the views are defined, file access is
limited to the published output folder (``allowed_directories`` with ``enable_external_access = false``),
nothing spills to a temporary directory (``temp_directory = ''``: DuckDB added ``./.tmp`` of wherever the
command ran to the allowed folders), memory is capped (``RECSYS_SQL_MEMORY_LIMIT``), no extension can be
installed or loaded, and the configuration is locked. A query runs at most ``RECSYS_SQL_TIMEOUT_SECONDS``
(the connection is interrupted). Statements are checked too: one SELECT (or an EXPLAIN of one, or one of
the PRAGMAs that only read; ``IMPORT DATABASE`` parses as a PRAGMA too), since the allowed folder itself
must not be written.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import duckdb
import polars as pl

from recsys.errors import ConfigError, RecsysError
from recsys.settings import Settings

MACROS = ("published", "latest_published")
VIEW_ORDER = ("recommendations", "latest_recommendations", "explained_recommendations", "new_items",
              "latest_new_items", "segment_defaults", "model_metrics", "cold_start_curve", "metrics_history")
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}
READ_ONLY_PRAGMAS = {"table_info", "show_tables", "show_tables_expanded", "show", "version", "functions",
                     "database_size", "storage_info", "collations", "platform"}
QUERY_NAME = re.compile(r"[A-Za-z0-9_]{1,100}")


def open_views(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down DuckDB with every view in ``sql/views`` defined over ``RECSYS_HOME/output``."""
    root = str(Path(settings.output_dir).resolve())
    con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    con.execute("set variable recsys_output = $root", {"root": root})
    for name in (*MACROS, *VIEW_ORDER):
        try:
            con.execute((settings.sql_dir / "views" / f"{name}.sql").read_text())
        except (duckdb.IOException, duckdb.CatalogException) as exc:
            if "No files" not in str(exc) and "does not exist" not in str(exc):
                raise
            # Nothing published for this view yet: leave it undefined (run_readonly says so).
    con.execute("set temp_directory = ''")  # no spilling: nothing outside the output folder is touched
    con.execute("set enable_progress_bar = false")  # the answer alone on stdout, in a notebook or `python -c` too
    con.execute("set memory_limit = $limit", {"limit": settings.sql_memory_limit})
    con.execute("set allowed_directories = $dirs", {"dirs": [root.rstrip("/") + "/"]})
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")
    return con


def run_readonly(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None):
    """Run one read-only statement; anything that writes is refused."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise ConfigError("recsys sql runs exactly one statement")
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        raise ConfigError(f"recsys sql is read-only: a {kind} statement is not allowed")
    if kind == "PRAGMA":  # IMPORT DATABASE (which writes tables and reads files) is a PRAGMA to the parser
        name = re.match(r"\s*pragma\s+(\w+)", sql, flags=re.IGNORECASE)
        if name is None or name.group(1).lower() not in READ_ONLY_PRAGMAS:
            raise ConfigError("recsys sql is read-only: only the PRAGMAs that read are allowed ("
                              + ", ".join(sorted(READ_ONLY_PRAGMAS)) + ")")
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: only a plain query may be explained
        inner = re.sub(r"^\s*explain(\s+analy[sz]e)?\b", "", sql, flags=re.IGNORECASE)
        inner_kind = con.extract_statements(inner)[0].type.name if inner.strip() else "nothing"
        if inner_kind != "SELECT":
            raise ConfigError(f"recsys sql is read-only: EXPLAIN of a {inner_kind} statement is not allowed")
    wanted = sorted(set(re.findall(r"\$([A-Za-z_]\w*)", sql)))
    missing = [name for name in wanted if name not in (params or {})]
    if missing:
        raise ConfigError("this query takes " + ", ".join(f"--param {name}=VALUE" for name in wanted)
                          + f" (missing: {', '.join(missing)})")
    params = {k: v for k, v in (params or {}).items() if k in wanted}
    try:
        return con.sql(sql, params=params or None)
    except duckdb.PermissionException as exc:
        raise ConfigError("recsys sql reads only the published tables (views over RECSYS_HOME/output): "
                          f"{str(exc).splitlines()[0]}") from exc
    except (duckdb.IOException, duckdb.CatalogException) as exc:
        if "No files" in str(exc) or any(f"{view} does not exist" in str(exc) for view in VIEW_ORDER):
            raise RecsysError("nothing is published yet for this query: run `recsys nightly` (or `make run`) "
                              f"first ({str(exc).splitlines()[0]})") from exc
        raise ConfigError(f"the query failed: {str(exc).splitlines()[0]}") from exc
    except duckdb.Error as exc:
        raise ConfigError(f"the query failed: {str(exc).splitlines()[0]}") from exc


def fetch_readonly(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None, timeout_seconds: float
                   ) -> pl.DataFrame:
    """:func:`run_readonly`, fetched as a frame within ``timeout_seconds`` (then the connection is
    interrupted and the query fails with a message saying so)."""
    relation = run_readonly(con, sql, params)
    timer = threading.Timer(timeout_seconds, con.interrupt) if timeout_seconds > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return relation.pl()
    except duckdb.InterruptException as exc:
        raise ConfigError(f"the query ran longer than RECSYS_SQL_TIMEOUT_SECONDS={timeout_seconds:g} and was "
                          "stopped: filter it further (a run_date, a user), or raise the limit") from exc
    except duckdb.OutOfMemoryException as exc:
        raise ConfigError("the query needs more memory than RECSYS_SQL_MEMORY_LIMIT allows: filter it further, "
                          f"or raise the limit ({str(exc).splitlines()[0]})") from exc
    except duckdb.Error as exc:
        raise ConfigError(f"the query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        if timer is not None:
            # Joined, not only cancelled: a timer thread still waking when the interpreter exits is killed
            # mid-unwind by CPython's finalisation and aborts the process ("FATAL: exception not rethrown").
            timer.cancel()
            timer.join()


def parse_param(value: str) -> int | str:
    """A --param value: an integer when written in ASCII digits (an Arabic-Indic "١٢" is text, not 12)."""
    return int(value) if re.fullmatch(r"-?[0-9]{1,18}", value) else value


def named_query(settings: Settings, name: str) -> str:
    if not QUERY_NAME.fullmatch(name):
        raise ConfigError(f"a named query is a file name in sql/queries (letters, digits, _), not {name[:100]!r}")
    path = settings.sql_dir / "queries" / f"{name}.sql"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in (settings.sql_dir / "queries").glob("*.sql")))
        raise ConfigError(f"no query named {name!r}; known: {known}")
    return path.read_text()
