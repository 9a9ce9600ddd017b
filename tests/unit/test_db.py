"""The warehouse: named statements bind exactly what they name; a transaction commits whole or not at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_the_warehouse_holds_to_its_memory_limit_and_spills_a_larger_sort(tmp_path):
    """RECSYS_WAREHOUSE_MEMORY_LIMIT bounds DuckDB's buffer pool in the night's process (DuckDB's default is 80%
    of the machine); a sort larger than it still completes, spilling next to the warehouse; a size DuckDB
    cannot read stops at connect with the setting's name."""
    from recsys import db
    from recsys.errors import ConfigError
    from recsys.settings import Settings

    # About three times the limit to sort (6 M rows of ~64 bytes against 122 MiB); at 61 MiB the sort's own
    # buffers, a few MiB a thread, left so little room that it ran out of memory once on a loaded machine.
    settings = Settings(home=tmp_path / "home", warehouse_memory_limit="128MB")
    with db.warehouse(settings) as wh:
        assert wh.scalar("select current_setting('memory_limit')") == "122.0 MiB"
        wh.execute("create table t as select (i * 7919) % 3000017 as x, repeat('v', 40) as pad "
                   "from range(6000000) r(i)")
        wh.execute("create table s as select * from t order by x, pad")
        assert wh.scalar("select count(*) from s") == 6_000_000
        assert wh.scalar("select count(*) from (select x, lag(x) over (order by rowid) as before from s) "
                         "where x < before") == 0
    with pytest.raises(ConfigError, match="RECSYS_WAREHOUSE_MEMORY_LIMIT='lots'"):
        db.connect(Settings(home=tmp_path / "home", warehouse_memory_limit="lots"))


def test_no_progress_bar_is_drawn_where_duckdb_would_draw_one(tmp_path):
    """DuckDB's Python client turns its progress bar on where it thinks the session interactive (`python -c` is
    one): a long query then drew a bar into the night's log. The warehouse and the SQL sandbox turn it off."""
    script = textwrap.dedent(f"""
        import duckdb
        from recsys import db
        from recsys.settings import Settings
        from tasks.query import open_views

        def shown(con):
            return con.execute("select current_setting('enable_progress_bar')").fetchone()[0]

        settings = Settings(home={str(tmp_path / "home")!r})
        settings.ensure_dirs()
        plain = duckdb.connect()
        with db.warehouse(settings) as wh, open_views(settings) as views:
            print(shown(plain), shown(wh.con), shown(views))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False"]  # on by default here, off in both of ours
