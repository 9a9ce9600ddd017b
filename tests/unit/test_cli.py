"""The CLI's own logic (commands that run flows are covered in tests/flows)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import subprocess
import sys
import weakref

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from cli.main import ServerShutdownNoise, UserErrorTracebacks, build_parser, build_serve_schedule, main, release
from recsys.errors import ValidationFailedError


def test_generate_command_writes_three_files(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--users", "20", "--items", "15",
                 "--interactions", "200", "--seed", "1"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"users.csv", "items.csv", "interactions.csv"}
    assert "interactions.csv" in capsys.readouterr().out


def test_bad_mapping_exits_2_with_message(tmp_path, capsys):
    assert main(["ingest", "--source", "csv", "--path", str(tmp_path), "--mapping", str(tmp_path / "no.toml")]) == 2
    assert "mapping file" in capsys.readouterr().err


def test_every_command_and_option_has_help():
    """A command or option without a help text fails here (argparse would print it bare)."""
    parser = build_parser()
    missing = []

    def walk(p, path):
        for action in p._actions:  # noqa: SLF001
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                described = {c.dest: c.help for c in action._choices_actions}  # noqa: SLF001
                for name, sub in action.choices.items():
                    if not described.get(name):
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif action.dest != "help" and not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "recsys")
    assert missing == []


@pytest.mark.parametrize("argv", [["--help"], ["sql", "--help"], ["sql", "select 42 as answer"],
                                  ["nightly", "--no-such-flag"], ["sql", "copy (select 1) to 'x.csv'"]])
def test_commands_that_orchestrate_nothing_never_reach_a_prefect_server(argv, tmp_path):
    """With the API pointed at a closed port, anything that touched Prefect's API would fail or hang."""
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "RECSYS_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    expected = {"--help": 0, "select 42 as answer": 0, "--no-such-flag": 2}.get(argv[-1], 2)
    assert done.returncode == expected, done.stderr
    assert "Traceback" not in done.stderr and "4200" not in done.stderr and "127.0.0.1:9" not in done.stderr


def test_serve_schedule_is_0200_in_the_given_timezone():
    schedule = build_serve_schedule("0 2 * * *", "Europe/Berlin")
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")


def test_deployment_file_declares_schedule_and_trigger():
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    trigger = by_name["train-and-publish"]["triggers"][0]
    assert trigger["expect"] == ["prefect.flow-run.Completed"]
    assert trigger["match_related"]["prefect.resource.name"] == "ingest"
    assert "flow_run.parameters['settings']['home']" in trigger["parameters"]["settings"]["home"]["template"]


def test_validate_command_releases_a_held_batch_after_a_threshold_change(tmp_path, monkeypatch, capsys):
    from recsys import db
    from recsys.settings import Settings
    from tasks import ingest
    from tasks.sources import tabular_specs

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    (tmp_path / "e.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{u},7,1700000000\n" for u in range(1, 21)))
    settings = Settings()
    with db.warehouse(settings) as con:
        ingest.stage_batch(con, settings, tabular_specs("csv", tmp_path / "e.csv"), "r1", "csv")
    assert main(["validate"]) == 4
    assert "expect_column_values_to_be_between(rating)" in capsys.readouterr().err
    monkeypatch.setenv("RECSYS_RATING_MAX", "10")
    monkeypatch.setenv("RECSYS_MEAN_RATING_MAX", "8")
    assert main(["validate", "--run-id", "r1"]) == 0
    assert "promoted" in capsys.readouterr().out
    with db.warehouse(Settings()) as con:
        assert con.scalar("select count(*) from interactions") == 20
    assert main(["validate"]) == 0  # nothing waiting: shows the stored results
    assert "stored results" in capsys.readouterr().out


def test_train_and_evaluate_commands_on_a_small_warehouse(tmp_path, monkeypatch, capsys, small_synthetic):
    from recsys import db
    from recsys.settings import Settings
    from tasks import ingest
    from tasks.sources import synthetic_specs

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_BOOTSTRAP_SAMPLES", "50")
    settings = Settings()
    with db.warehouse(settings) as con:
        ingest.stage_batch(con, settings, synthetic_specs(small_synthetic), "r1", "synthetic")
        ingest.promote_batch(con, "r1")
    assert main(["train", "--models", "popularity", "ease"]) == 0
    out = capsys.readouterr().out
    assert "features: 300 users" in out and "without history" in out
    assert (settings.models_dir.iterdir().__next__() / "ease" / "metadata.json").exists()
    assert main(["evaluate", "--models", "popularity", "segment_popularity"]) == 0
    out = capsys.readouterr().out
    assert "segment_popularity" in out and "report:" in out
    with db.warehouse(settings) as con:
        assert con.scalar("select count(distinct model) from metrics where split <> 'item_cold'") == 2
        # The item-cold protocol scores the same models, its four baselines and the audience model with and
        # without the text encoder on its own fold.
        assert con.scalar("select count(distinct model) from metrics where split = 'item_cold'") == 8
        assert con.scalar("select count(*) from user_features") == 300


def test_sql_errors_are_one_line_and_name_the_parameters(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    assert main(["sql", "--named", "top10_for_user"]) == 2
    assert "this query takes --param user_id=VALUE" in capsys.readouterr().err
    assert main(["sql", "select * from no_such_table"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the query failed") and "Traceback" not in err
    assert main(["sql", "select $x", "--param", "x"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_a_temporary_server_that_does_not_start_ends_in_one_line_saying_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(RECSYS_HOME=str(tmp_path), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
               PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run([sys.executable, "-m", "cli", "ingest", "--source", "synthetic"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "did not start within 0 s" in done.stderr and "PREFECT_API_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_without_a_real_server(tmp_path, monkeypatch, capsys):
    """A temporary Prefect server cannot schedule flows: serve says what to start instead of idling. (The
    session's Prefect test API, once a flow test has started it, is in this process's settings: cleared here,
    or serve would run against it forever.)"""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve"]) == 2
    assert "prefect server start" in capsys.readouterr().err


def test_prefect_records_of_a_user_error_keep_one_line_and_others_are_untouched():
    keep = UserErrorTracebacks()
    failed = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed with exception: %r",
                               (ValidationFailedError("gate stopped\n  row 1"),), None)
    assert keep.filter(failed)
    assert failed.getMessage() == ("Task run failed with exception: ValidationFailedError('gate stopped"
                                   " ... (the whole message follows)")
    other = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "boom\nsecond line", (), None)
    assert keep.filter(other) and other.getMessage() == "boom\nsecond line"


def test_only_the_pool_s_cancelled_reset_at_server_shutdown_is_dropped():
    noise = ServerShutdownNoise()

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", logging.ERROR, __file__, 1,
                                 "Exception during reset or similar", (), (type(error), error, None))

    assert not noise.filter(record(asyncio.CancelledError()))
    assert noise.filter(record(RuntimeError("database is locked")))


def test_a_handled_error_no_longer_keeps_its_frames_locals_alive():
    class Connection:
        pass

    def fail():
        con = Connection()  # noqa: F841 - kept alive by the traceback's frame
        raise ValidationFailedError("gate stopped")

    try:
        fail()
    except ValidationFailedError as exc:
        error = exc
    held = [weakref.ref(obj) for obj in gc.get_objects() if isinstance(obj, Connection)]
    assert held and held[0]() is not None
    release(error)
    assert held[0]() is None


def test_loading_the_deep_model_prints_nothing():
    """TensorFlow's import logs oneDNN lines through absl that no log level silences; a normal run prints none."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    code = "import models.two_tower, sys; print('loaded', file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "loaded\n" and done.stdout == ""


def test_a_bad_run_date_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as stopped:
        main(["nightly", "--run-date", "2026-13-45"])
    assert stopped.value.code == 2
    assert "'2026-13-45' is not a date: give YYYY-MM-DD" in capsys.readouterr().err
    assert not (tmp_path / "home" / "warehouse.duckdb").exists()  # nothing ran, nothing was ingested
    from flows.nightly import night_of
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a date"):  # a deployment's parameter, checked first too
        night_of("2026-13-45")


def test_a_slow_temporary_server_is_retried_within_the_wait_then_one_line(monkeypatch):
    """Under load Prefect's health check raised httpx.ReadTimeout out of the start-up (a 100-line traceback):
    the start is retried within the wait, and only then does one line say what to do."""
    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from cli.main import ServerStartError, start_temporary_server

    calls = {"start": 0, "stop": 0}

    def start(self, timeout=None):
        calls["start"] += 1
        if calls["start"] < 3:
            raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(SubprocessASGIServer, "start", start)
    monkeypatch.setattr(SubprocessASGIServer, "stop", lambda self: calls.__setitem__("stop", calls["stop"] + 1))
    monkeypatch.setattr("cli.main.time.sleep", lambda _: None)
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 60},
                            restore_defaults={PREFECT_API_URL}):
        start_temporary_server()
        assert calls == {"start": 3, "stop": 2}
        monkeypatch.setattr(SubprocessASGIServer, "start", lambda self, timeout=None: (_ for _ in ()).throw(
            httpx.ReadTimeout("timed out")))
        monkeypatch.setattr("cli.main.time.monotonic", iter(range(0, 10_000, 30)).__next__)
        with pytest.raises(ServerStartError) as failed:
            start_temporary_server()
    message = str(failed.value)
    assert "\n" not in message and "did not start within 60 s" in message and "ReadTimeout" in message


@pytest.mark.parametrize(("error", "words"), [
    (OSError(28, "No space left on device", "/data/home/models/ease/train.npz"),
     "/data/home/models/ease/train.npz: the disk is full"),
    (OSError(30, "Read-only file system", "/data/home/warehouse.duckdb"), "the file system is read-only"),
    (__import__("duckdb").IOException(
        'IO Error: Could not write file "/data/home/warehouse.duckdb.wal": No space left on device'),
     "/data/home/warehouse.duckdb.wal: the disk is full"),
])
def test_a_full_disk_or_read_only_home_is_one_line_and_exit_7(monkeypatch, capsys, error, words):
    import cli.main as cli_main

    def fails(args, settings):
        raise error

    monkeypatch.setattr(cli_main, "cmd_generate", fails)
    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        if action.get_default("func") is not None and action.get_default("func").__name__ == "cmd_generate":
            action.set_defaults(func=fails)
    assert main(["generate", "--out", "/nowhere"]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert words in err and "RECSYS_HOME" in err
