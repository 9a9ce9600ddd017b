"""The ``recsys`` command line. Each command is a thin shell around a flow or a task function.

Exit codes: 0 success; 1 unexpected error; 2 bad arguments, mapping or unavailable source;
3 one or more files could not be parsed at all (the others were loaded); 4 the validation gate held
the batch back; 5 the publish gate kept the last good partition; 6 another run holds this home (or the
warehouse file) longer than RECSYS_LOCK_WAIT_SECONDS / RECSYS_CONNECT_WAIT_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
import traceback
from datetime import date
from pathlib import Path

import duckdb
import httpx
import polars as pl
from prefect.schedules import Cron
from prefect.settings import (
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from benchmarks import new_items, quality
from flows.ingest import ingest_flow
from flows.nightly import SERVE_DEPLOYMENT, nightly_flow, serve_nightly
from recsys import db, runs
from recsys.errors import ConfigError, RecsysError, storage_error
from recsys.progress import Heartbeat
from recsys.settings import Settings, quiet_libraries
from tasks import night, validate
from tasks.generate import GeneratorConfig, generate
from tasks.query import fetch_readonly, named_query, open_views, parse_param
from tasks.report import headline_table
from tasks.snapshot import take_snapshot
from tasks.sources import load_mapping, with_overrides

EXIT_OK, EXIT_ERROR, EXIT_FILES_FAILED = 0, 1, 3
EPHEMERAL_STARTUP_SECONDS = 180


def _mapping_from_args(args: argparse.Namespace) -> dict | None:
    mapping = load_mapping(Path(args.mapping)) if args.mapping else {}
    flags = {
        "user_id": args.user_col, "item_id": args.item_col, "rating": args.rating_col,
        "timestamp": args.timestamp_col, "timestamp_format": args.timestamp_format,
        "delimiter": args.delimiter,
    }
    if any(value is not None for value in flags.values()):
        base = mapping.get("interactions", {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"})
        mapping["interactions"] = with_overrides(base, **flags)
    return mapping or None


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    config = GeneratorConfig(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                             seed=args.seed)
    with Heartbeat(settings.progress_seconds) as beat:  # a line every 10 s: 100 M rows take minutes
        beat.step("generate")
        paths = generate(Path(args.out), config)
    for kind, path in paths.items():
        print(f"{kind:13} {path}")
    return EXIT_OK


class ServerStartError(RecsysError):
    """The temporary Prefect API server did not answer within the start-up wait."""


def start_temporary_server() -> None:
    """Start Prefect's temporary API server before a flow runs, retrying within the start-up wait.

    Prefect's own start polls the server's health with httpx and lets a read timeout escape (a server that
    is up but slow on a loaded machine): the night ended in a 100-line traceback. Here a failed start is
    stopped and tried again until PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS has passed, then one line
    says what to do. Nothing happens where PREFECT_API_URL names a real server."""
    settings = get_current_settings()
    if settings.api.url:
        return
    # The server module imports Prefect's whole API app (FastAPI, SQLAlchemy): only commands that orchestrate.
    from prefect.server.api.server import SubprocessASGIServer

    waited = settings.server.ephemeral.startup_timeout_seconds
    deadline = time.monotonic() + waited
    while True:
        server = SubprocessASGIServer()
        try:
            server.start(timeout=max(1, int(deadline - time.monotonic())) if waited > 0 else None)
            return
        except (httpx.HTTPError, RuntimeError) as exc:
            server.stop()
            if time.monotonic() >= deadline or waited <= 0:
                raise ServerStartError(
                    f"the temporary Prefect API server did not start within {waited} s (a busy machine? last: "
                    f"{type(exc).__name__}). Start one with `.venv/bin/prefect server start` and set "
                    "PREFECT_API_URL=http://127.0.0.1:4200/api, or raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
                ) from None
            time.sleep(1.0)


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's one settings object: RECSYS_* from the environment, with the flags that are settings."""
    overrides = {"synthetic_size": getattr(args, "synthetic_size", None)}
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    mapping = _mapping_from_args(args)
    start_temporary_server()
    report = ingest_flow(
        settings=settings, source=args.source, path=args.path, mapping=mapping, users=args.users, items=args.items,
        mapping_dir=str(Path(args.mapping).resolve().parent) if args.mapping else None,
        allow_paths_outside_mapping=args.allow_paths_outside_mapping,
    )
    failed = [f for f in report["files"] if f["status"] == "failed"]
    if failed:
        print(f"{len(failed)} file(s) could not be parsed at all; see the messages above", file=sys.stderr)
        return EXIT_FILES_FAILED
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    with runs.run_lock(settings), db.warehouse(settings) as wh:
        run_id = args.run_id
        if run_id is None:
            waiting = wh.run("validate/latest_gated_run")
            if not waiting:
                print("no batch is waiting in staging or held back; stored results of the latest gated run:")
                rows = wh.execute("select run_id from validation_results order by validated_at desc "
                                   "limit 1").fetchall()
                run_id = rows[0][0] if rows else None
                if run_id is None:
                    print("  (none: nothing has been validated yet)")
                    return EXIT_OK
                for row in wh.run("validate/stored_results", {"run_id": run_id}):
                    print("  " + " | ".join("" if v is None else str(v) for v in row))
                return EXIT_OK
            run_id = waiting[0][0]
        # Which kinds the source had decides whether unknown users/items are registered or rejected: the
        # ingest run records it; for a batch staged outside the flow, the ledger's kinds stand in.
        kinds = set(runs.run_params(wh, run_id).get("kinds") or [
            kind for (kind,) in wh.execute("select distinct kind from ingest_ledger where run_id = $run_id",
                                            {"run_id": run_id}).fetchall()])
        validate.gate_and_promote(wh, settings, run_id, kinds)
        print(f"batch {run_id} passed the gate and was promoted")
    return EXIT_OK


def cmd_nightly(args: argparse.Namespace, settings: Settings) -> int:
    mapping = _mapping_from_args(args)
    start_temporary_server()
    nightly_flow(settings=settings, run_date=args.run_date, source=args.source, path=args.path, mapping=mapping,
                 users=args.users, items=args.items,
                 mapping_dir=str(Path(args.mapping).resolve().parent) if args.mapping else None,
                 allow_paths_outside_mapping=args.allow_paths_outside_mapping,
                 models=args.models, publish_model=args.publish_model)
    return EXIT_OK


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Production models on everything loaded: the night's graph up to its production fit (the hybrid's blend
    is tuned on the evaluation fold's validation users, and the two-tower continues from that fold's fit)."""
    settings.ensure_dirs()
    names = args.models or list(settings.models)
    with runs.run_lock(settings), runs.recorded_run(settings, "train", {"models": names}, done="trained") as run_id:
        snap = take_snapshot(settings)
        steps = night.InProcess()
        feats = night.build_features(settings, run_id, snap)
        print(f"features: {feats.users:,} users ({feats.users_without_history:,} without history), "
              f"{feats.items:,} items")
        _, fitted = night.fit_evaluation_fold(steps, settings, run_id, snap, names)
        trained = night.train_night(steps, settings, run_id, snap, feats, names,
                                    **night.carry_over({name: fit.path for name, fit in fitted.items()}))
    print(f"models saved under {trained.model_dir}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """The night's evaluation (the same graph as the nightly flow's), in this process."""
    settings.ensure_dirs()
    names = args.models or list(settings.models)
    with runs.run_lock(settings), runs.recorded_run(settings, "evaluate", {"models": names},
                                                    done="evaluated") as run_id:
        result = night.evaluate_night(night.InProcess(), settings, run_id, take_snapshot(settings), names,
                                      settings.publish_model if settings.publish_model in names else names[-1])
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        print(headline_table(pl.read_parquet(result.metrics), k=min(settings.ks)))
    print(f"report: {result.report_html}\nmetrics: {result.metrics} (and the `metrics` table)")
    return EXIT_OK


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    sql = named_query(settings, args.query) if args.named else args.query
    bad = [p for p in args.param or [] if "=" not in p]
    if bad:
        raise ConfigError(f"--param takes NAME=VALUE, not {bad[0]!r}")
    params = dict(p.split("=", 1) for p in args.param or [])
    con = open_views(settings)
    frame = fetch_readonly(con, sql, {k: parse_param(v) for k, v in params.items()}, settings.sql_timeout_seconds)
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, tbl_width_chars=200):
        print(frame)
    return EXIT_OK


def build_serve_schedule(cron: str, timezone: str):
    return Cron(cron, timezone=timezone)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The single-process alternative to a work pool: this process schedules and runs the nightly flow."""
    if not get_current_settings().api.url:
        raise ConfigError("recsys serve needs a running Prefect server (the temporary one cannot schedule flows): "
                          "start `.venv/bin/prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    timezone = args.timezone or settings.timezone
    print(f"serving the nightly flow as deployment nightly/{SERVE_DEPLOYMENT} ({args.cron} {timezone})", flush=True)
    # Every night runs on the settings this command started with (RECSYS_* then), its home made absolute.
    frozen = settings.model_copy(update={"home": settings.home.resolve()}).model_dump(mode="json")
    asyncio.run(serve_nightly([build_serve_schedule(args.cron, timezone)],
                              {"settings": frozen, "source": args.source, "path": args.path}))
    print("stopped")
    return EXIT_OK


def cmd_benchmark(args: argparse.Namespace, settings: Settings) -> int:
    return new_items.main(args) if args.benchmark == "new-items" else quality.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic data set with planted structure")
    gen.add_argument("--out", required=True, help="folder for users.csv, items.csv, interactions.csv")
    gen.add_argument("--users", type=int, default=1500, help="users (default 1500; ~3%% sign up without interactions)")
    gen.add_argument("--items", type=int, default=600, help="items (default 600)")
    gen.add_argument("--interactions", type=int, default=75_000, help="interactions (default 75,000)")
    gen.add_argument("--seed", type=int, default=42, help="seed of the planted structure (default 42)")
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="load a source into the warehouse (incremental, idempotent)")
    _add_source_args(ing)
    ing.set_defaults(func=cmd_ingest)

    val = sub.add_parser("validate", help="re-run the validation gate on a staged or held batch")
    val.add_argument("--run-id", help="the ingest run to validate (default: the newest staged or held batch)")
    val.set_defaults(func=cmd_validate)

    nig = sub.add_parser("nightly", help="ingest, validate, features, evaluate, train and publish one night")
    _add_source_args(nig)
    nig.add_argument("--run-date", type=_run_date, help="the night to publish, YYYY-MM-DD (default: today, UTC)")
    nig.add_argument("--models", nargs="+", help="models to train (default: RECSYS_MODELS)")
    nig.add_argument("--publish-model", help="the model whose lists are published (default: RECSYS_PUBLISH_MODEL, "
                                             "hybrid)")
    nig.set_defaults(func=cmd_nightly)

    tr = sub.add_parser("train", help="build features and train the models on everything in the warehouse")
    tr.add_argument("--models", nargs="+", help="models to train (default: RECSYS_MODELS)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="cold-start and warm evaluation with CIs; writes metrics and a report")
    ev.add_argument("--models", nargs="+", help="models to evaluate (default: RECSYS_MODELS)")
    ev.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("sql", help="read-only SQL over the published Parquet (views from sql/views)")
    q.add_argument("query", help="a SELECT statement, or with --named the name of a file in sql/queries")
    q.add_argument("--named", action="store_true", help="run sql/queries/<query>.sql")
    q.add_argument("--param", action="append", help="NAME=VALUE bound as $NAME (repeatable)")
    q.add_argument("--limit", type=int, default=50, help="rows to print")
    q.set_defaults(func=cmd_sql)

    sv = sub.add_parser("serve", help="run the nightly flow on a schedule in this process (flow.serve)")
    sv.add_argument("--cron", default="0 2 * * *", help="cron schedule (default 02:00 daily)")
    sv.add_argument("--timezone", help="timezone of the cron schedule (default RECSYS_TIMEZONE, UTC)")
    sv.add_argument("--source", default="synthetic", choices=["synthetic", "movielens-100k", "csv", "parquet"],
                    help="the nightly's source (default synthetic)")
    sv.add_argument("--path", help="file or folder of the source")
    sv.set_defaults(func=cmd_serve)

    bench = sub.add_parser("benchmark", help="reproducible benchmarks (see benchmarks/)")
    bsub = bench.add_subparsers(dest="benchmark", required=True)
    qual = bsub.add_parser("quality", help="warm (MSR protocol) and cold-start quality on a dataset")
    qual.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "synthetic"],
                      help="MovieLens-100k (RECSYS_ML100K_DIR or --path) or the synthetic generator")
    qual.add_argument("--path", help="dataset folder (ml-100k: the folder with u.data)")
    qual.add_argument("--out", default="var/benchmarks/quality.json", help="JSON output file")
    qual.add_argument("--seeds", type=int, default=5,
                      help="seeds of protocols C (cold users) and I (new items); cuts of protocol T (at most 5)")
    qual.add_argument("--protocols", nargs="+", choices=["w", "t", "c", "i", "z"],
                      default=["w", "t", "c", "i", "z"],
                      help="w: warm (MSR, a random split), t: the night's shape (the log cut in time: what known "
                           "users do next, users first seen after), c: cold users, i: new items (item cold "
                           "start), z: what each demographic tells about a user with no history")
    qual.add_argument("--models", nargs="+", help="models (default: the nightly's, RECSYS_MODELS)")
    qual.add_argument("--epochs", type=int, default=30, help="two-tower epochs (early stopping applies)")
    qual.add_argument("--peers", action="store_true",
                      help="also run LightFM and implicit ALS on the same splits (pip install '.[peers]')")
    qual.add_argument("--continue-fits", action="store_true",
                      help="fit each protocol's models as production is fitted: continuing the tuning fold's fit "
                           "where a model can (the two-tower), not from scratch")
    qual.add_argument("--against", help="an earlier run's JSON: judge this run's published model against it on every "
                                        "protocol both ran (a change that lifts one and costs another is named)")
    qual.set_defaults(func=cmd_benchmark)
    new = bsub.add_parser("new-items", help="new films in the published lists and audiences (MovieLens-100k with "
                                            "a share of films stripped of their ratings)")
    new.add_argument("--path",
                     help="the MovieLens-100k folder (default RECSYS_ML100K_DIR or ../shared/datasets/ml-100k)")
    new.add_argument("--share", type=float, default=0.1, help="share of the films that lose their ratings (0.1)")
    new.add_argument("--min-ratings", type=int, default=20, help="only films with at least this many ratings (20)")
    new.add_argument("--seed", type=int, default=0, help="which films (seeded)")
    new.add_argument("--epochs", type=int, default=30, help="two-tower epochs (early stopping applies)")
    new.add_argument("--min-rate", type=float, default=1.0,
                     help="RECSYS_NEW_ITEM_MIN_RATE of the night (1: the stripped films are tonight's arrivals, "
                          "which no validation window has seen; 0: the night's own measured rate)")
    new.add_argument("--out", default="var/benchmarks/new_items.json", help="JSON output file")
    new.set_defaults(func=cmd_benchmark)
    return parser


def _run_date(text: str) -> str:
    """argparse type: a YYYY-MM-DD date, checked before anything runs."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a date: give YYYY-MM-DD, e.g. 2026-12-02") from exc


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="synthetic", choices=["synthetic", "movielens-100k", "csv", "parquet"],
                   help="where the data comes from (default synthetic: generated under RECSYS_HOME/landing)")
    p.add_argument("--path", help="file or folder of the source (synthetic/movielens: a folder); "
                                  "omitted: generate (synthetic) or download (movielens-100k)")
    p.add_argument("--synthetic-size", choices=["small", "full"],
                   help="synthetic source without --path: small (default, a first result in about two minutes) or "
                        "full (1,500 users, 75k interactions); sets RECSYS_SYNTHETIC_SIZE for this run")
    p.add_argument("--mapping", help="TOML file mapping your columns to user_id, item_id, rating, timestamp")
    p.add_argument("--users", help="users file (csv/parquet sources)")
    p.add_argument("--items", help="items file (csv/parquet sources)")
    p.add_argument("--user-col", help="column holding the user id")
    p.add_argument("--item-col", help="column holding the item id")
    p.add_argument("--rating-col", help="column holding the rating or weight (optional)")
    p.add_argument("--timestamp-col", help="column holding the time")
    p.add_argument("--timestamp-format", help="auto (default), epoch, iso, or a strptime format")
    p.add_argument("--delimiter", help="field separator of CSV files (default ',')")
    p.add_argument("--allow-paths-outside-mapping", action="store_true",
                   help="let a mapping's [table] path point outside the mapping file's folder")


class TemporaryServerNotice(logging.Filter):
    """Prefect announces its temporary API server with a link to its docs on every call: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Starting temporary server"):
            record.msg = record.msg.split("\n", 1)[0] + " (set PREFECT_API_URL to use a running server instead)"
        return True


class ServerShutdownNoise(logging.Filter):
    """When the temporary Prefect server stops at the end of a command, SQLAlchemy may still be resetting one of
    its pooled SQLite connections; the server's event loop cancels that, and the pool logs the cancellation as an
    error with a traceback after the night has finished (Prefect's SQLite pool; nothing is lost). Only that
    record is dropped: any other error of the pool is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _error_names(cls: type = RecsysError) -> set[str]:
    return {cls.__name__}.union(*(_error_names(sub) for sub in cls.__subclasses__()))


class UserErrorTracebacks(logging.Filter):
    """Prefect logs every failed task and flow run with its traceback and the error's whole message, three or
    four times over; for a user error (a bad path, mapping or file: a RecsysError) the message the CLI prints
    last says everything, so Prefect's records keep only their first line and no traceback."""

    def __init__(self):
        super().__init__()
        self.names = _error_names()  # once: the filter sees every record of Prefect's run loggers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RecsysError):
            record.exc_info, record.exc_text = None, None
        message = record.getMessage()
        if any(name in message for name in self.names):
            first = message.split("\\n", 1)[0].split("\n", 1)[0]
            if len(first) < len(message):
                record.msg, record.args = f"{first} ... (the whole message follows)", ()
        return True


def release(error: BaseException) -> None:
    """Drop the frames a handled error keeps alive (and, through them, closed DuckDB connections), so the
    interpreter's exit does not end with DuckDB's nanobind listing them as leaked instances."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    gc.collect()


def prefect_settings() -> dict:
    """Prefect settings for this process, where the user has not set them: a busy 2-core machine can take
    over a minute to start the temporary API server (Prefect waits 20 s by default), and its telemetry only
    adds log noise. Commands that orchestrate nothing never start that server at all."""
    wanted = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_SECONDS,
              PREFECT_SERVER_ANALYTICS_ENABLED: False}
    return {setting: value for setting, value in wanted.items() if setting.name not in os.environ}


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()  # telemetry of the temporary Prefect server only adds log noise ("database is locked")
    logging.getLogger("prefect").addFilter(TemporaryServerNotice())
    # A logger's filter sees only its own records: the pool logs under its class's name.
    logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool").addFilter(ServerShutdownNoise())
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(UserErrorTracebacks())
    args = build_parser().parse_args(argv)
    updates = prefect_settings()
    try:
        with temporary_settings(updates=updates):
            return args.func(args, settings_from(args))
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        release(exc)
        return exc.exit_code
    except (OSError, duckdb.Error) as exc:
        storage = storage_error(exc)
        if storage is None:
            raise
        print(f"error: {storage}", file=sys.stderr)
        release(exc)
        return storage.exit_code
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        waited = updates.get(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                             get_current_settings().server.ephemeral.startup_timeout_seconds)
        print(f"error: the temporary Prefect API server did not start within {waited} s (a busy machine?). Start "
              f"one with `.venv/bin/prefect server start` and set "
              f"PREFECT_API_URL=http://127.0.0.1:4200/api, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
