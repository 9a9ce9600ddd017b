"""The SQL sandbox's second round: no temporary folder, a time and memory limit, no IMPORT DATABASE, named
queries and parameters that cannot be bent."""

from __future__ import annotations

import pytest

from recsys.errors import ConfigError
from recsys.settings import Settings
from tasks.query import fetch_readonly, named_query, open_views, parse_param, run_readonly


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DuckDB's default temporary folder is ./.tmp of wherever the command runs
    settings = Settings(home=tmp_path / "home", sql_memory_limit="1GB", sql_timeout_seconds=0.5)
    settings.ensure_dirs()
    with open_views(settings) as con:
        yield settings, con


def test_the_temporary_folder_is_not_readable(sandbox, tmp_path):
    _, con = sandbox
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("secret")
    with pytest.raises(ConfigError):
        run_readonly(con, "select * from read_text('.tmp/secret.txt')").fetchall()
    assert con.sql("select current_setting('temp_directory')").fetchall() == [("",)]


def test_a_query_runs_within_the_time_and_memory_limits(sandbox):
    settings, con = sandbox
    with pytest.raises(ConfigError, match="RECSYS_SQL_TIMEOUT_SECONDS=0.5"):
        fetch_readonly(con, "select count(*) from range(100000000) a, range(100000) b, range(1000) c", None,
                       settings.sql_timeout_seconds)
    ((limit,),) = con.sql("select current_setting('memory_limit')").fetchall()
    assert limit.endswith("MiB") and float(limit.split()[0]) < 1024  # 1GB, not 80 % of the machine
    assert fetch_readonly(con, "select 41 + 1 as answer", None, 5)["answer"].to_list() == [42]


@pytest.mark.parametrize("sql", ["import database '/tmp'", "IMPORT DATABASE 'x'", "pragma enable_profiling",
                                 "pragma threads=64"])
def test_only_pragmas_that_read_are_allowed(sandbox, sql):
    _, con = sandbox
    with pytest.raises(ConfigError, match="read-only"):
        run_readonly(con, sql)


def test_a_pragma_that_reads_still_works(sandbox):
    _, con = sandbox
    assert run_readonly(con, "pragma version").fetchall()


def test_named_queries_are_names_and_parameters_ascii_digits(tmp_path):
    settings = Settings(home=tmp_path)
    for name in ("../views/published", "/etc/passwd", "top10_for_user/../../x"):
        with pytest.raises(ConfigError, match="a named query is a file name"):
            named_query(settings, name)
    assert "select" in named_query(settings, "top10_for_user").lower()
    assert parse_param("12") == 12 and parse_param("-3") == -3
    assert parse_param("١٢") == "١٢" and parse_param("1.5") == "1.5"
