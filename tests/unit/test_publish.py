"""Atomic publishing and the publish gate's metric regression rule."""

from __future__ import annotations

import threading
from datetime import date

import duckdb
import numpy as np
import polars as pl

from tasks.publish import metric_regressions, partition_path, publish_partition, strategy_of


def frame(n: int, marker: int) -> pl.DataFrame:
    return pl.DataFrame({"user_id": np.arange(n), "item_id": np.full(n, marker), "rank": np.ones(n, dtype=np.int32)})


def test_rerun_replaces_only_its_own_date(tmp_path):
    root = tmp_path / "recommendations"
    publish_partition(frame(10, 1), root, date(2026, 1, 1))
    publish_partition(frame(20, 2), root, date(2026, 1, 2))
    publish_partition(frame(30, 3), root, date(2026, 1, 1))
    first = pl.read_parquet(partition_path(root, date(2026, 1, 1)))
    second = pl.read_parquet(partition_path(root, date(2026, 1, 2)))
    assert (first.height, first["item_id"][0]) == (30, 3)
    assert (second.height, second["item_id"][0]) == (20, 2)
    assert sorted(p.name for p in root.iterdir()) == ["_staging", "run_date=2026-01-01", "run_date=2026-01-02"]
    assert list((root / "_staging").iterdir()) == []  # nothing left behind
    hive = duckdb.sql(f"select run_date, count(*) from read_parquet('{root}/run_date=*/*.parquet', "
                      "hive_partitioning=true) group by 1 order by 1").fetchall()
    assert hive == [(date(2026, 1, 1), 30), (date(2026, 1, 2), 20)]


def test_readers_never_see_a_partial_partition(tmp_path):
    """A reader polling while partitions are rewritten sees the old rows or the new rows, nothing else."""
    root = tmp_path / "recommendations"
    old, new = frame(300_000, 1), frame(600_000, 2)
    publish_partition(old, root, date(2026, 1, 1))
    seen: set[tuple[int, int]] = set()
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        con = duckdb.connect()
        while not stop.is_set():
            try:
                seen.add(con.sql(f"select count(*), max(item_id) from read_parquet('{root}/run_date=*/*.parquet')")
                         .fetchall()[0])
            except duckdb.Error as exc:  # a torn file would surface here
                errors.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    for k in range(6):
        publish_partition(new if k % 2 == 0 else old, root, date(2026, 1, 1))
    stop.set()
    reader.join()
    assert errors == []
    assert seen <= {(300_000, 1), (600_000, 2)}
    assert len(seen) >= 1


def test_strategy_by_history_length():
    assert strategy_of(np.array([0, 1, 4, 5, 100])).tolist() == ["zero_shot", "k_shot", "k_shot", "warm", "warm"]


def metrics(value: float) -> pl.DataFrame:
    return pl.DataFrame({"split": ["warm", "cold"], "k_shot": [None, 0], "model": "hybrid", "metric": "ndcg",
                         "k": 10, "value": [value, value]}, schema_overrides={"k_shot": pl.Int32})


def test_metric_regression_rule():
    assert metric_regressions(metrics(0.5), None, 0.1, "hybrid") == []
    assert metric_regressions(metrics(0.46), metrics(0.5), 0.1, "hybrid") == []  # -8 %: within tolerance
    reasons = metric_regressions(metrics(0.40), metrics(0.5), 0.1, "hybrid")
    assert len(reasons) == 2 and "warm" in reasons[0] and "cold k=0" in reasons[1]
