"""The warehouse: named statements bind exactly what they name; a transaction commits whole or not at all."""

from __future__ import annotations

import pandas as pd
import pytest


def test_a_named_statement_refuses_unknown_and_missing_parameters(con):
    misspelt = r"sql/runs/finish_run.sql names \['run_id', 'status'\].*unknown: \['stauts'\]"
    with pytest.raises(ValueError, match=misspelt):
        con.run("runs/finish_run", {"run_id": "r", "stauts": "done"})
    with pytest.raises(ValueError, match=r"missing: \['status'\]"):
        con.run("runs/finish_run", {"run_id": "r"})
    con.run("runs/start_run", {"run_id": "r", "flow": "f", "run_date": None, "seed": 1, "params": "{}"})
    con.run("runs/finish_run", {"run_id": "r", "status": "done"})
    assert con.scalar("select status from runs where run_id = 'r'") == "done"


def test_a_transaction_commits_whole_or_not_at_all(con):
    con.execute("create table t (x integer)")
    with pytest.raises(RuntimeError), con.transaction():
        con.execute("insert into t values (1)")
        raise RuntimeError("mid-way")
    assert con.scalar("select count(*) from t") == 0
    with con.transaction():
        con.execute("insert into t values (1)")
        con.execute("insert into t values (2)")
    assert con.scalar("select count(*) from t") == 2


def test_a_registered_frame_is_visible_inside_the_block_only(con):
    with con.registered("frame", pd.DataFrame({"x": [1, 2, 3]})):
        assert con.scalar("select sum(x) from frame") == 6
    with pytest.raises(Exception, match="frame"):
        con.scalar("select sum(x) from frame")
