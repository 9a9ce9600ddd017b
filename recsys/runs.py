"""Run identity and bookkeeping: every run records its seed and parameters in the ``runs`` table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

import duckdb

from recsys import db
from recsys.settings import Settings


def new_run_id(flow: str, when: datetime | None = None) -> str:
    """Sortable and unique: ``<flow>-YYYYMMDDTHHMMSS-<6 hex>`` (UTC)."""
    when = when or datetime.now(UTC)
    return f"{flow}-{when:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def start_run(
    con: duckdb.DuckDBPyConnection, settings: Settings, run_id: str, flow: str,
    run_date: date | None = None, params: dict | None = None,
) -> None:
    db.run(con, settings, "runs/start_run", {
        "run_id": run_id, "flow": flow, "run_date": run_date, "seed": settings.seed,
        "params": json.dumps(params or {}, default=str, sort_keys=True),
    })


def finish_run(con: duckdb.DuckDBPyConnection, settings: Settings, run_id: str, status: str) -> None:
    db.run(con, settings, "runs/finish_run", {"run_id": run_id, "status": status})


def run_params(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    rows = con.execute("select params from runs where run_id = $run_id", {"run_id": run_id}).fetchall()
    return json.loads(rows[0][0]) if rows and rows[0][0] else {}


@contextmanager
def recorded_run(settings: Settings, flow: str, params: dict | None = None, done: str = "done") -> Iterator[str]:
    """A run id recorded in ``runs`` for the duration of the block: ``done`` on success, else ``failed``."""
    run_id = new_run_id(flow)
    with db.warehouse(settings) as con:
        start_run(con, settings, run_id, flow, params=params)
    status = "failed"
    try:
        yield run_id
        status = done
    finally:
        with db.warehouse(settings) as con:
            finish_run(con, settings, run_id, status)
