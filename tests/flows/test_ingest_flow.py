"""ingest_flow end to end under the session's Prefect harness."""

from __future__ import annotations

import duckdb
import pytest

from flows.ingest import ingest_flow
from recsys.errors import ValidationFailedError
from recsys.settings import Settings


def test_ingest_flow_loads_and_is_idempotent(prefect_harness, tmp_path, ml100k_dir):
    home = tmp_path / "home"
    first = ingest_flow(settings=Settings(home=home), source="movielens-100k", path=str(ml100k_dir))
    assert first["totals"]["rows_accepted"] == 100_000 + 943 + 1682
    second = ingest_flow(settings=Settings(home=home), source="movielens-100k", path=str(ml100k_dir))
    assert [f["status"] for f in second["files"]] == ["skipped"] * 3
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.sql("select count(*) from interactions").fetchall() == [(100_000,)]
        assert con.sql("select count(*) from runs where status = 'loaded'").fetchall() == [(2,)]


def test_ingest_flow_stops_on_a_critical_failure(prefect_harness, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "e.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{u},42,1700000000\n" for u in range(1, 21)))
    home = tmp_path / "home"
    with pytest.raises(ValidationFailedError, match="expect_column_values_to_be_between\\(rating\\)"):
        ingest_flow(settings=Settings(home=home), source="csv", path=str(folder))
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.sql("select count(*) from interactions").fetchall() == [(0,)]
        assert con.sql("select status from runs").fetchall() == [("held",)]


def test_a_stray_landing_file_is_named_and_the_given_path_still_loads(prefect_harness, tmp_path, small_synthetic,
                                                                       caplog):
    home = tmp_path / "home"
    stray = home / "landing" / "synthetic" / "somewhere" / "new_ratings.csv"
    stray.parent.mkdir(parents=True)
    stray.write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    report = ingest_flow(settings=Settings(home=home), source="synthetic", path=str(small_synthetic))
    assert report["totals"]["rows_accepted"] > 9000
    # log_prints: a task's print goes to the flow run's log
    assert f"warning: {stray} is in the landing area but no source reads it" in caplog.text


def test_files_dropped_in_the_csv_folder_load_each_night(prefect_harness, tmp_path):
    home = tmp_path / "home"
    drop = home / "landing" / "csv"
    drop.mkdir(parents=True)
    (drop / "monday.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{u % 7 + 1},4,{1_700_000_000 + u}\n" for u in range(1, 41)))
    assert ingest_flow(settings=Settings(home=home), source="csv")["totals"]["rows_accepted"] == 40
    (drop / "tuesday.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{u % 5 + 1},3,{1_700_100_000 + u}\n" for u in range(1, 41)))
    second = ingest_flow(settings=Settings(home=home), source="csv")
    assert [f["status"] for f in second["files"]] == ["skipped", "loaded"]


def test_a_user_error_is_not_retried_and_prints_no_traceback(prefect_harness, tmp_path, monkeypatch, capfd):
    from cli.main import main

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    assert main(["ingest", "--source", "csv", "--path", str(tmp_path / "nonexistent")]) == 2
    out, err = capfd.readouterr()
    assert "no such file or folder" in err
    assert "Traceback" not in out + err and "Retry" not in out + err
