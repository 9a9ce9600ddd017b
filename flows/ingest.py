"""``ingest_flow``: land a source, stage its files, pass the validation gate, promote the batch.

Both ``recsys ingest`` and the nightly flow go through it, so nothing reaches the final tables ungated.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.caching import transient_only
from recsys import db, runs
from recsys.progress import Heartbeat
from recsys.settings import Settings
from tasks import ingest, sources, validate


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=transient_only)
def land_source(
    settings: Settings, source: str, path: str | None, mapping: dict | None,
    users: str | None, items: str | None, mapping_dir: str | None, allow_outside: bool = False,
) -> list[sources.FileSpec]:
    """Resolve the source to file specs (generating or downloading first where needed)."""
    for stray in sources.unread_landing_files(settings):
        print(f"warning: {stray} is in the landing area but no source reads it; new CSV files go to "
              f"{sources.drop_folder(settings, 'csv')}/ (with a mapping.toml), Parquet to "
              f"{sources.drop_folder(settings, 'parquet')}/, and run with --source csv or --source parquet")
    return sources.resolve_source(
        settings, source, Path(path) if path else None, mapping,
        users=Path(users) if users else None, items=Path(items) if items else None,
        mapping_dir=Path(mapping_dir) if mapping_dir else None, allow_outside=allow_outside,
    )


@task(cache_policy=NO_CACHE)
def stage_files(settings: Settings, specs: list[sources.FileSpec], run_id: str, source: str) -> ingest.IngestReport:
    with db.warehouse(settings) as wh:
        for line in runs.recover_stale_runs(wh, run_id):
            print(line)
        runs.start_run(wh, settings, run_id, "ingest", params={
            "source": source, "files": [str(s.path) for s in specs], "kinds": sorted({s.kind for s in specs})})
        return ingest.stage_batch(wh, settings, specs, run_id, source)


@task(cache_policy=NO_CACHE)
def gate_and_promote(settings: Settings, report: ingest.IngestReport, kinds: list[str]) -> ingest.IngestReport:
    """The Great Expectations gate between staging and promotion; a held batch stops the flow."""
    def artifact(result: validate.GateResult) -> None:
        create_markdown_artifact(key="validation-gate", markdown=validate.gate_markdown(result),
                                 description=f"validation gate {report.run_id}")

    with db.warehouse(settings) as wh:
        validate.gate_and_promote(wh, settings, report.run_id, kinds, shown=artifact)
        return ingest.batch_report(wh, report)


@flow(name="ingest", log_prints=True)
def ingest_flow(
    settings: Settings,
    source: str = "synthetic",
    path: str | None = None,
    mapping: dict | None = None,
    users: str | None = None,
    items: str | None = None,
    mapping_dir: str | None = None,
    allow_paths_outside_mapping: bool = False,
    run_id: str | None = None,
) -> dict:
    """Ingest one source into the warehouse. Returns the per-file report as a dict. ``settings``: built
    once by the caller (a deployment gives the fields it sets, ``{"home": ...}``; the rest come from the
    worker's RECSYS_* environment)."""
    settings.ensure_dirs()
    run_id = run_id or runs.new_run_id("ingest")
    with runs.run_lock(settings), runs.failed_on_exit(settings, run_id), Heartbeat(settings.progress_seconds) as beat:
        beat.step("land")
        specs = land_source(settings, source, path, mapping, users, items, mapping_dir, allow_paths_outside_mapping)
        beat.step("stage")
        report = stage_files(settings, specs, run_id, source)
        beat.step("validate and promote")
        report = gate_and_promote(settings, report, sorted({spec.kind for spec in specs}))
    text = ingest.format_report(report)
    print(text)
    create_markdown_artifact(key="ingest-summary", markdown=f"```\n{text}\n```",
                             description=f"ingest {run_id}")
    return report.to_dict()
