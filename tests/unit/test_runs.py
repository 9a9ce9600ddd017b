"""One run per home at a time, and what a crashed run leaves behind is cleared by the next."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import pytest

from cli.main import main
from recsys import db, runs
from recsys.errors import RunLockedError, WarehouseBusyError
from tasks import ingest
from tasks.sources import synthetic_specs


def test_a_second_run_is_refused_while_the_lock_is_held(settings):
    other = os.open(settings.home / "run.lock", os.O_RDWR | os.O_CREAT)  # another process's open file
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunLockedError, match="another recsys run"), runs.run_lock(settings):
            pass
    finally:
        os.close(other)
    with runs.run_lock(settings), runs.run_lock(settings):  # free again, and re-entrant in one process
        pass


def test_the_cli_exits_6_with_a_message_when_the_home_is_busy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    other = os.open(tmp_path / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        assert main(["train", "--models", "popularity"]) == 6
    finally:
        os.close(other)
    assert "another recsys run" in capsys.readouterr().err


def test_a_killed_run_never_leaves_a_stale_lock(settings):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(settings.home / 'run.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError), runs.run_lock(settings):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with runs.run_lock(settings):
        pass


def test_the_next_run_marks_a_dead_run_failed_and_clears_its_staging(con, settings, small_synthetic):
    runs.start_run(con, settings, "dead", "ingest")
    ingest.stage_batch(con, settings, synthetic_specs(small_synthetic), "dead", "synthetic")
    assert con.scalar("select count(*) from staging_interactions") > 0
    runs.start_run(con, settings, "held-before", "ingest")
    runs.finish_run(con, "held-before", "held")  # a held batch is kept for `recsys validate`
    lines = runs.recover_stale_runs(con, "next")
    assert lines and "dead" in lines[0] and "marked failed" in lines[0]
    assert any("abandoned" in line for line in lines)
    status, message = con.execute("select status, message from runs where run_id = 'dead'").fetchall()[0]
    assert status == "failed" and "found by next" in message
    assert con.scalar("select status from runs where run_id = 'held-before'") == "held"
    for table in ("staging_interactions", "staging_users", "staging_items"):
        assert con.scalar(f"select count(*) from {table}") == 0
    assert {s for (s,) in con.execute("select distinct status from ingest_ledger").fetchall()} == {"abandoned"}
    assert con.run("validate/latest_gated_run") == []  # `recsys validate` has nothing to pick up
    assert runs.recover_stale_runs(con, "again") == []
    # The abandoned files load normally next time.
    report = ingest.stage_batch(con, settings, synthetic_specs(small_synthetic), "retry", "synthetic")
    assert all(f.status == "staged" for f in report.files)



def test_a_writer_waits_for_a_reader_then_says_who_to_close(settings):
    db.connect(settings).close()  # the warehouse exists
    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, time\n"
         f"con = duckdb.connect({str(settings.warehouse_path)!r}, read_only=True)\nprint('open', flush=True)\n"
         "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(WarehouseBusyError, match="held by another process"):
            db.connect(settings.model_copy(update={"connect_wait_seconds": 0.5}))
    finally:
        reader.send_signal(signal.SIGKILL)
        reader.wait()
    db.connect(settings).close()  # free again once the reader is gone


@pytest.mark.parametrize(("error", "expected"),
                         [(RuntimeError("disk on fire\nsecond line"), "RuntimeError: disk on fire"),
                                                 (KeyboardInterrupt(), "KeyboardInterrupt: interrupted (Ctrl-C")])
def test_a_run_ended_by_an_error_or_ctrl_c_is_marked_failed_when_it_ends(settings, error, expected):
    from recsys.runs import failed_on_exit, start_run

    with db.warehouse(settings) as con:
        start_run(con, settings, "run-1", "nightly")
    with pytest.raises(type(error)), failed_on_exit(settings, "run-1"):
        raise error
    with db.warehouse(settings) as con:
        ((status, message),) = con.execute("select status, message from runs where run_id = 'run-1'").fetchall()
    assert status == "failed" and message.startswith(expected)


def test_a_run_that_finished_before_the_error_keeps_its_status(settings):
    from recsys.runs import failed_on_exit, finish_run, start_run

    with db.warehouse(settings) as con:
        start_run(con, settings, "run-2", "ingest")
        finish_run(con, "run-2", "held")
    with pytest.raises(RuntimeError), failed_on_exit(settings, "run-2"):
        raise RuntimeError("the gate held the batch")
    with db.warehouse(settings) as con:
        assert con.execute("select status from runs where run_id = 'run-2'").fetchall() == [("held",)]
