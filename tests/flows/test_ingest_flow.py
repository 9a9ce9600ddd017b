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


def test_ingest_flow_stops_on_a_critical_failure(prefect_harness, tmp_path):
    import pytest

    from recsys.errors import ValidationFailedError

    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "e.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{u},42,1700000000\n" for u in range(1, 21)))
    home = tmp_path / "home"
    with pytest.raises(ValidationFailedError, match="expect_column_values_to_be_between\\(rating\\)"):
        ingest_flow(source="csv", path=str(folder), home=str(home))
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.sql("select count(*) from interactions").fetchall() == [(0,)]
        assert con.sql("select status from runs").fetchall() == [("held",)]
