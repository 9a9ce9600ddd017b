"""ingest_flow end to end under the session's Prefect harness."""

from __future__ import annotations

import duckdb

from flows.ingest import ingest_flow


def test_ingest_flow_loads_and_is_idempotent(prefect_harness, tmp_path, ml100k_dir):
    home = tmp_path / "home"
    first = ingest_flow(source="movielens-100k", path=str(ml100k_dir), home=str(home))
    assert first["totals"]["rows_accepted"] == 100_000 + 943 + 1682
    second = ingest_flow(source="movielens-100k", path=str(ml100k_dir), home=str(home))
    assert [f["status"] for f in second["files"]] == ["skipped"] * 3
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.sql("select count(*) from interactions").fetchall() == [(100_000,)]
        assert con.sql("select count(*) from runs where status = 'loaded'").fetchall() == [(2,)]
