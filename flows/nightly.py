"""``nightly_flow``: ingest -> validate -> snapshot -> features -> evaluate -> train -> publish, one night.

The flow is a table of contents: each step is one task around a plain function in ``tasks/`` and hands the
next a small record (paths, a fingerprint, counts). The warehouse is read once, into a snapshot; each model
is fitted once on the evaluation fold and once for production. Features, evaluation and training are
cached by Prefect (``flows/caching.py``) on the snapshot's fingerprint, the settings that shape them and the
project's code, so a night whose data did not change reuses them (and re-publishes, which is idempotent).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from datetime import UTC, date, datetime

import polars as pl
from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runner import Runner
from prefect.task_runners import TaskRunner

from flows.caching import transient_only
from flows.ingest import ingest_flow
from flows.runners import parallelism, run_all, run_here, task_runner
from recsys import db, runs
from recsys.errors import ConfigError
from recsys.progress import Heartbeat, peak_rss_gib
from recsys.settings import Settings
from tasks import night, publish, retention, snapshot
from tasks.report import markdown_table
from tasks.snapshot import Snapshot

snapshot_warehouse = task(snapshot.take_snapshot, name="snapshot_warehouse", cache_policy=NO_CACHE, retries=2,
                          retry_delay_seconds=5, retry_condition_fn=transient_only)

# The night's steps (tasks/night.py) as Prefect tasks, cached by flows/caching.py.
RUN_NAMES = {night.fit_model: "fit-{name} ({fold})", night.evaluate_slice: "evaluate-{slice_name}"}
TASKS = {step: task(step, task_run_name=RUN_NAMES.get(step)) for step in night.STEPS}


class OnPrefect:
    """:class:`tasks.night.Steps` on Prefect: ``one`` a cached task in the flow's thread, ``many`` cached tasks
    on the night's task runner (one at a time locally, side by side on Dask)."""

    def __init__(self, runner: TaskRunner, settings: Settings):
        self.runner, self.settings = runner, settings

    def one(self, step, **call):
        return run_here(self.settings, TASKS[step], call)

    def many(self, step, calls: list[dict]) -> list:
        return run_all(self.runner, self.settings, TASKS[step], calls)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only,
      task_run_name="score-block-{block}")
def score_users(model_path: str, users: str, block: int, blocks: int, n: int, folder: str,
                new_item_max_interactions: int, users_per_item: int, threads: int,
                keep_freed_memory: bool = True) -> publish.ScoredBlock:
    return publish.score_step(model_path, users, block, blocks, n, folder, new_item_max_interactions, users_per_item,
                              threads, keep_freed_memory)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def rank_new_items(model_path: str, scored: list[publish.ScoredBlock], users_per_item: int, folder: str) -> str:
    return publish.new_items_step(model_path, scored, users_per_item, folder)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def segment_defaults(model_path: str, n: int, folder: str) -> str:
    return publish.segment_defaults_step(model_path, n, folder)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def publish_recommendations(settings: Settings, run_id: str, run_date: date, snap: Snapshot, model: str,
                            scored: list[publish.ScoredBlock], defaults: str, metrics_path: str,
                            new_items: str, model_path: str) -> dict:
    return publish.publish_step(settings, run_id, run_date, snap, model, scored, defaults, metrics_path,
                                new_items, model_path)


class Progress:
    """One line per step with its elapsed time, the Prefect progress artifact, a timing record, and while a
    step runs longer than RECSYS_PROGRESS_SECONDS a heartbeat line saying what it is doing."""

    def __init__(self, day: date, names: list[str], every: float):
        self.artifact = create_progress_artifact(0.0, key="nightly-progress", description=f"nightly {day}")
        self.names, self.done = names, 0
        self.started = self.last = time.perf_counter()
        self.timings: list[dict] = []
        self.beat = Heartbeat(every)

    def __enter__(self) -> Progress:
        self.beat.__enter__()
        self.beat.step(self.names[0])
        return self

    def __exit__(self, *exc) -> None:
        self.beat.__exit__(*exc)

    def step(self, name: str, detail: str = "") -> None:
        if self.done + 1 < len(self.names):
            self.beat.step(self.names[self.done + 1])
        self.done += 1
        now = time.perf_counter()
        self.timings.append({"step": name, "seconds": round(now - self.last, 2),
                             "peak_rss_gib": round(peak_rss_gib(), 2)})
        self.last = now
        update_progress_artifact(self.artifact, 100.0 * self.done / len(self.names))
        print(f"[{self.done}/{len(self.names)}] {name:10} {self.timings[-1]['seconds']:7.1f} s"
              + (f"  {detail}" if detail else ""))


def query_hint(partition: str) -> str:
    """How to query what was just published, as commands that run from the repository root."""
    return (f"Published {partition}\nQuery it from the repository root:\n"
            "  .venv/bin/recsys sql \"select * from latest_recommendations where user_id = 1 order by rank "
            "limit 10\"\n"
            f"  .venv/bin/recsys sql --named top10_for_user --param user_id=1\n"
            f"  make sql Q=\"select strategy, count(distinct user_id) from latest_recommendations group by 1\"")


def night_of(run_date: str | None) -> date:
    """The night to publish: ``run_date`` (YYYY-MM-DD) or today in UTC; a bad date is a ConfigError before
    any work (it was found only after ingest had committed)."""
    if not run_date or run_date == "None":
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(str(run_date))
    except ValueError as exc:
        raise ConfigError(f"--run-date {str(run_date)[:40]!r} is not a date: give YYYY-MM-DD, e.g. 2026-12-02") from exc


@flow(name="train-and-publish", log_prints=True)
def train_publish_flow(
    settings: Settings,
    run_date: str | None = None,
    models: list[str] | None = None,
    publish_model: str | None = None,
    ingested: dict | None = None,
) -> dict:
    """snapshot -> features -> evaluate -> train -> publish on what the warehouse holds (chained after ``ingest``)."""
    settings.ensure_dirs()
    publish_model = publish_model or settings.publish_model
    day = night_of(run_date)
    names = list(models or settings.models)
    if publish_model not in names:
        raise ConfigError(f"publish_model {publish_model!r} is not among the models to train ({', '.join(names)})")
    run_id = runs.new_run_id("nightly")
    with runs.run_lock(settings), runs.failed_on_exit(settings, run_id):
        return _train_publish(settings, run_id, day, names, publish_model, ingested)


def _train_publish(settings: Settings, run_id: str, day: date, names: list[str], publish_model: str,
                   ingested: dict | None) -> dict:
    with db.warehouse(settings) as wh:
        for line in runs.recover_stale_runs(wh, run_id):
            print(line)
        runs.start_run(wh, settings, run_id, "train-and-publish", run_date=day,
                       params={"models": names, "publish_model": publish_model})
        last_blend = publish.last_published_blend(wh, run_id) if settings.keep_last_blend else None
    runner = task_runner(settings)
    with Progress(day, ["snapshot", "features", "evaluate", "train", "publish"],
                  settings.progress_seconds) as progress, runner:
        snap = snapshot_warehouse(settings, run_id)
        progress.step("snapshot", f"{snap.interactions:,} interactions, {snap.users:,} users, {snap.items:,} items")
        steps = OnPrefect(runner, settings)
        feats = steps.one(night.build_features, settings=settings, run_id=run_id, snap=snap)
        progress.step("features", f"{feats.users:,} users ({feats.users_without_history:,} without history), "
                                  f"{feats.items:,} items")
        evaluation = night.evaluate_night(steps, settings, run_id, snap, names, publish_model, last_blend)
        progress.step("evaluate", evaluation.report_html)
        trained = night.train_night(steps, settings, run_id, snap, feats, names, **evaluation.carry)
        progress.step("train", trained.model_dir)
        published = publish_night(runner, settings, run_id, day, snap, trained.models[publish_model],
                                  publish_model, evaluation.metrics)
        progress.step("publish", published["paths"]["recommendations"])
    with db.warehouse(settings) as wh:
        runs.finish_run(wh, run_id, "published")
        read = runs.snapshots_read(wh)
    # Under the run lock, after the publish. Tonight's records may point into earlier nights (cached steps):
    # those nights stay, so an unchanged next night still finds them.
    pruned = retention.prune_old_nights(settings, run_id, [*trained.models.values(), *evaluation.paths()], read)

    heads = list(evaluation.headline)
    create_table_artifact(key="nightly-headline", table=heads,
                          description=f"{publish_model} tonight ({day}): 95% CIs, lifts over the strongest baseline")
    summary = {
        "run_id": run_id, "run_date": str(day), "fingerprint": snap.fingerprint, "ingest": ingested,
        "snapshot": snap, "features": feats, "evaluation": evaluation, "models": trained, "published": published,
        "steps": progress.timings, "pruned": pruned, "keep_nights": settings.keep_nights,
    }
    create_markdown_artifact(key="nightly-summary", markdown=_summary_markdown(summary, heads, publish_model),
                             description=f"nightly {day}")
    print(_summary_text(summary, heads, publish_model))
    print(query_hint(published["paths"]["recommendations"]))
    return summary


@flow(name="nightly", log_prints=True)
def nightly_flow(
    settings: Settings,
    run_date: str | None = None,
    source: str = "synthetic",
    path: str | None = None,
    mapping: dict | None = None,
    users: str | None = None,
    items: str | None = None,
    mapping_dir: str | None = None,
    allow_paths_outside_mapping: bool = False,
    models: list[str] | None = None,
    publish_model: str | None = None,
) -> dict:
    """The whole night: the ingest flow (with its validation gate), then train-and-publish, on one
    ``settings`` (built once by the caller; a deployment gives ``{"home": ...}`` and the worker's environment
    the rest)."""
    night_of(run_date)  # arguments are checked before any work
    settings.ensure_dirs()
    with runs.run_lock(settings):  # held across both flows: no other run slips in between
        ingested = ingest_flow(settings=settings, source=source, path=path, mapping=mapping, users=users,
                               items=items, mapping_dir=mapping_dir,
                               allow_paths_outside_mapping=allow_paths_outside_mapping)
        return train_publish_flow(settings=settings, run_date=run_date, models=models, publish_model=publish_model,
                                  ingested=ingested["totals"])


def publish_night(runner: TaskRunner, settings: Settings, run_id: str, day: date, snap: Snapshot, model_path: str,
                  model: str, metrics_path: str) -> dict:
    """Every user scored and explained in blocks (one task per block, as many as the runner runs at once),
    the segment defaults beside them; the new items' best users from the same blocks; then the gate and the
    atomic publish, in this process."""
    folder = settings.home / "scoring" / run_id
    blocks = parallelism(runner)
    defaults = runner.submit(segment_defaults, {"model_path": model_path, "n": settings.top_n, "folder": str(folder)})
    try:
        scored = run_all(runner, settings, score_users, [
            {"model_path": model_path, "users": str(snap.path("users")), "block": block, "blocks": blocks,
             "n": settings.top_n, "folder": str(folder),
             "new_item_max_interactions": settings.new_item_max_interactions,
             "users_per_item": settings.new_item_users, "threads": settings.scoring_threads,
             "keep_freed_memory": settings.keep_freed_memory}
            for block in range(blocks)], cache=False)
        new_items = rank_new_items(model_path, scored, settings.new_item_users, str(folder))
        return publish_recommendations(settings, run_id, day, snap, model, scored, defaults.result(), metrics_path,
                                       new_items, model_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _ingest_line(totals: dict | None) -> str:
    if not totals:
        return "ingest: ran separately (this flow was triggered after it)"
    return (f"ingest: {totals['rows_read']:,} read, {totals['rows_accepted']:,} accepted, "
            f"{totals['rows_rejected']:,} rejected, {totals['rows_duplicate']:,} duplicate; gate passed")


def _sample_note(protocol: dict) -> str:
    if "evaluation_sample_users" not in protocol:
        return ""
    return (f" (evaluated on a fixed sample of {protocol['evaluation_sample_users']:,} users, "
            f"{protocol['evaluation_sample_interactions']:,} interactions: RECSYS_EVALUATION_MAX_INTERACTIONS)")


def _summary_text(summary: dict, heads: list[dict], model: str) -> str:
    """What a person reads at the end of a night: what was loaded and served, then the published model's
    answer (the report's first table) as aligned text."""
    lines = [f"nightly {summary['run_date']} ({summary['run_id']})",
             f"  {_ingest_line(summary['ingest'])}",
             f"  users served: {summary['published']['users']:,} {summary['published']['strategies']}",
             f"  reasons: {summary['published']['reasons']}; new items with users to show them to: "
             f"{summary['published']['new_items']:,}",
             f"  report: {summary['evaluation'].report_html}{_sample_note(summary['evaluation'].protocol)}"]
    lines.append(f"  {summary['pruned'].line(summary['keep_nights'])}")
    if heads:
        columns = list(heads[0])
        widths = {c: max(len(c), *(len(str(r[c])) for r in heads)) for c in columns}
        lines.append(f"  {model} tonight:")
        lines += ["    " + "  ".join(f"{str(r[c]):{widths[c]}}" for c in columns).rstrip()
                  for r in [dict(zip(columns, columns, strict=True)), *heads]]
    return "\n".join(lines)


def _summary_markdown(summary: dict, heads: list[dict], model: str) -> str:
    table = "\n".join(markdown_table(pl.DataFrame(heads))) + "\n\n" if heads else ""
    paths = "\n".join(f"- {k}: `{v}`" for k, v in summary["published"]["paths"].items())
    return (f"# Nightly {summary['run_date']}: {model}\n\n"
            f"{_ingest_line(summary['ingest'])}.\n\n{table}"
            f"Outputs:\n{paths}\n- report: `{summary['evaluation'].report_html}`\n")


SERVE_DEPLOYMENT = "nightly-serve"  # not "nightly": that name belongs to deployments/prefect.yaml


async def serve_nightly(schedules: list, parameters: dict, stop: asyncio.Event | None = None) -> None:
    """Schedule and run the nightly flow in this process (``recsys serve``) until SIGINT/SIGTERM or ``stop``.

    Under its own deployment name, so the work-pool deployment of the same flow is left alone. The first
    signal stops the runner cleanly: the loop ends, runs in flight are cancelled, this deployment's
    schedule is paused (the runner's shutdown), and the process exits 0.
    """
    stop = stop or asyncio.Event()
    runner = Runner(name="recsys-serve")
    await runner.aadd_flow(nightly_flow, name=SERVE_DEPLOYMENT, schedules=schedules, parameters=parameters,
                           tags=["recsys", "nightly", "serve"])
    started = asyncio.create_task(runner.start())
    await asyncio.sleep(0)  # let the runner install its own handlers first; ours replace them
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready: Ctrl-C (or SIGTERM) stops it", flush=True)
    try:
        done, _ = await asyncio.wait([started, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if started not in done:
            print("stopping: no new runs will start; waiting for the runner to shut down ...", flush=True)
            while not runner.started and not started.done():  # a signal during start-up: let it finish first
                await asyncio.sleep(0.1)
            if runner.started:
                await runner.astop()
            await started
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
