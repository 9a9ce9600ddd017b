"""nightly_flow end to end on small synthetic data: every user served, views queryable, caching, the gate."""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl
import pytest

from flows.nightly import nightly_flow
from recsys.errors import PublishGateError
from recsys.settings import Settings
from tasks import publish
from tasks.query import VIEW_ORDER, named_query, open_views, run_readonly

N = 10


@pytest.fixture(scope="module")
def night(prefect_harness, small_synthetic, tmp_path_factory):
    home = tmp_path_factory.mktemp("nightly")
    mp = pytest.MonkeyPatch()
    for key, value in {"RECSYS_EPOCHS": "2", "RECSYS_TOP_N": str(N), "RECSYS_BOOTSTRAP_SAMPLES": "50",
                       "RECSYS_HOME": str(home)}.items():
        mp.setenv(key, value)
    first = nightly_flow(run_date="2026-11-20", source="synthetic", path=str(small_synthetic))
    second = nightly_flow(run_date="2026-11-20", source="synthetic", path=str(small_synthetic))
    yield Settings(), first, second
    mp.undo()


def test_every_user_gets_exactly_n_including_zero_history(night):
    settings, first, _ = night
    recs = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        users = {u for (u,) in con.sql("select user_id from users").fetchall()}
        silent = {u for (u,) in con.sql("select user_id from users anti join interactions using (user_id)").fetchall()}
    assert silent, "the fixture must contain users with no interactions"
    counts = recs.group_by("user_id").len()
    assert set(counts["user_id"]) == users
    assert (counts["len"] == N).all()
    zero = recs.filter(pl.col("user_id").is_in(list(silent)))
    assert set(zero["strategy"]) == {"zero_shot"}
    assert first["published"]["users"] == len(users)


def test_rerun_reuses_unchanged_steps_and_replaces_the_partition(night):
    _, first, second = night
    assert second["fingerprint"] == first["fingerprint"]
    assert second["models"]["model_dir"] == first["models"]["model_dir"]  # training reused
    assert second["evaluation"]["metrics"] == first["evaluation"]["metrics"]  # evaluation reused
    settings = night[0]
    recs = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    assert set(recs["run_id"]) == {second["run_id"]}


@pytest.mark.parametrize("view", VIEW_ORDER)
def test_every_view_reads_the_published_run(night, view):
    con = open_views(night[0])
    assert run_readonly(con, f"select count(*) from {view}").fetchall()[0][0] > 0


@pytest.mark.parametrize(("query", "params"), [("top10_for_user", {"user_id": 1}), ("item_reach", None),
                                               ("coverage_per_day", None), ("strategy_mix", None)])
def test_every_named_query_runs(night, query, params):
    con = open_views(night[0])
    rows = run_readonly(con, named_query(night[0], query), params).fetchall()
    assert rows
    if query == "top10_for_user":
        assert [r[1] for r in rows] == list(range(1, 11))


def test_sql_is_read_only(night):
    from recsys.errors import ConfigError

    con = open_views(night[0])
    with pytest.raises(ConfigError, match="read-only"):
        run_readonly(con, "copy (select 1) to 'x.csv'")


def test_regressed_run_keeps_the_last_good_partition(night, tmp_path):
    settings, first, second = night
    path = publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20))
    before = path.read_bytes()
    worse = pl.read_parquet(second["evaluation"]["metrics"]).with_columns(pl.col("value") * 0.5)
    worse_path = tmp_path / "worse.parquet"
    worse.write_parquet(worse_path)
    with pytest.raises(PublishGateError, match="kept the last good partition"):
        publish.publish_step(settings, "regressed-run", date(2026, 11, 20), second["models"]["model_dir"], "hybrid",
                             str(worse_path))
    assert path.read_bytes() == before
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        status = con.sql("select status, reason from publish_log where run_id = 'regressed-run'").fetchall()
    assert status[0][0] == "rejected" and "ndcg@10" in status[0][1]
