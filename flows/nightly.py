"""``nightly_flow``: ingest -> validate -> features -> evaluate -> train -> publish, one night's run.

Each step is one task around a plain function in ``tasks/``. Features, evaluation and training are cached
on the warehouse's data fingerprint and the parameters that shape them, so re-running a night whose data
did not change reuses those steps (and re-publishes, which is idempotent).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.ingest import ingest_flow
from recsys import db, runs
from recsys.errors import ConfigError
from recsys.settings import Settings
from tasks import evaluate, features, publish, train


def _step_key(step: str, settings: Settings, fingerprint: str, extra: dict) -> str:
    shaping = settings.model_dump(mode="json", exclude={"sql_dir", "expectations_dir", "top_n", "metric_tolerance"})
    shaping["home"] = str(settings.home.resolve())
    blob = json.dumps({"step": step, "fingerprint": fingerprint, "settings": shaping, **extra}, sort_keys=True)
    return f"{step}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _index_path(settings: Settings, key: str) -> Path:
    return settings.home / "cache" / f"{key}.json"


def _cached(settings: Settings, key: str) -> dict | None:
    """A step's earlier output, if it was recorded and every file it names still exists."""
    path = _index_path(settings, key)
    if not path.exists():
        return None
    output = json.loads(path.read_text())
    files = [v for v in _leaves(output) if isinstance(v, str) and v.startswith(("/", str(settings.home)))]
    return output if all(Path(f).exists() for f in files) else None


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


def _remember(settings: Settings, key: str, output: dict) -> dict:
    path = _index_path(settings, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, default=str))
    return output


def _cache_key(context, parameters) -> str | None:
    """Prefect cache key: the step key plus the recorded output, and only while that output is on disk.

    Hashing the recorded output in means a step recomputed after its files were deleted never matches an
    older persisted result that points at the deleted files.
    """
    settings, key = parameters["settings"], parameters["key"]
    if _cached(settings, key) is None:
        return None
    recorded = _index_path(settings, key).read_bytes()
    return f"{key}-{hashlib.sha256(recorded).hexdigest()[:16]}"


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fingerprint_warehouse(settings: Settings) -> str:
    with db.warehouse(settings) as con:
        return "-".join(str(v) for v in db.run(con, settings, "publish/warehouse_fingerprint")[0])


@task(cache_key_fn=_cache_key, persist_result=True)
def build_features(settings: Settings, run_id: str, key: str) -> dict:
    if (done := _cached(settings, key)) is not None:
        return done
    return _remember(settings, key, features.features_step(settings, run_id))


@task(cache_key_fn=_cache_key, persist_result=True)
def evaluate_models(settings: Settings, run_id: str, key: str, names: list[str]) -> dict:
    if (done := _cached(settings, key)) is not None:
        return done
    return _remember(settings, key, evaluate.evaluate_step(settings, run_id, names))


@task(cache_key_fn=_cache_key, persist_result=True)
def train_models(settings: Settings, run_id: str, key: str, names: list[str]) -> dict:
    if (done := _cached(settings, key)) is not None:
        return done
    return _remember(settings, key, train.train_step(settings, run_id, names))


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def publish_recommendations(settings: Settings, run_id: str, run_date: date, model_dir: str, model: str,
                            metrics_path: str) -> dict:
    return publish.publish_step(settings, run_id, run_date, model_dir, model, metrics_path)


def query_hint(settings: Settings) -> str:
    output = settings.output_dir.resolve()
    return (f"Published under {output}/recommendations/run_date=*/version=*/ . Query it:\n"
            f"  recsys sql \"select * from latest_recommendations where user_id = 1 order by rank limit 10\"\n"
            f"  recsys sql --named top10_for_user --param user_id=1\n"
            f"  duckdb -cmd \"set variable recsys_output = '{output}'\" -cmd \".read sql/views/published.sql\" \\\n"
            f"         -c \"select * from published('recommendations') where user_id = 1 "
            f"order by run_date desc, rank limit 10\"")


def _settings(home: str | None) -> Settings:
    """Settings from the environment; ``home`` overrides RECSYS_HOME (deployment parameters arrive as text)."""
    settings = Settings(home=Path(home)) if home and home != "None" else Settings()
    settings.ensure_dirs()
    return settings


@flow(name="train-and-publish", log_prints=True)
def train_publish_flow(
    run_date: str | None = None,
    models: list[str] | None = None,
    publish_model: str | None = None,
    home: str | None = None,
    ingested: dict | None = None,
) -> dict:
    """features -> evaluate -> train -> publish on what the warehouse holds (chained after ``ingest``)."""
    settings = _settings(home)
    publish_model = publish_model or settings.publish_model
    night = date.fromisoformat(run_date) if run_date and run_date != "None" else datetime.now(UTC).date()
    names = list(models or settings.models)
    if publish_model not in names:
        raise ConfigError(f"publish_model {publish_model!r} is not among the models to train ({', '.join(names)})")
    run_id = runs.new_run_id("nightly")
    progress = create_progress_artifact(0.0, key="nightly-progress", description=f"nightly {night}")
    with db.warehouse(settings) as con:
        runs.start_run(con, settings, run_id, "train-and-publish", run_date=night,
                       params={"models": names, "publish_model": publish_model})
    fingerprint = fingerprint_warehouse(settings)
    feats = build_features(settings, run_id, _step_key("features", settings, fingerprint, {}))
    update_progress_artifact(progress, 20.0)
    evaluation = evaluate_models(settings, run_id, _step_key("evaluate", settings, fingerprint, {"models": names}),
                                 names)
    update_progress_artifact(progress, 60.0)
    trained = train_models(settings, run_id, _step_key("train", settings, fingerprint, {"models": names}), names)
    update_progress_artifact(progress, 90.0)
    published = publish_recommendations(settings, run_id, night, trained["model_dir"], publish_model,
                                        evaluation["metrics"])
    update_progress_artifact(progress, 100.0)
    with db.warehouse(settings) as con:
        runs.finish_run(con, settings, run_id, "published")

    import polars as pl

    heads = evaluate.headline(pl.read_parquet(evaluation["metrics"])).filter(
        pl.col("model").is_in(["popularity", publish_model]))
    create_table_artifact(key="nightly-headline", table=heads.to_dicts(),
                          description=f"nDCG@10 with 95% CI, {night}")
    summary = {
        "run_id": run_id, "run_date": str(night), "fingerprint": fingerprint, "ingest": ingested,
        "features": feats, "evaluation": evaluation, "models": trained, "published": published,
    }
    create_markdown_artifact(key="nightly-summary", markdown=_summary_markdown(summary, heads),
                             description=f"nightly {night}")
    print(_summary_text(summary, heads))
    print(query_hint(settings))
    return summary


@flow(name="nightly", log_prints=True)
def nightly_flow(
    run_date: str | None = None,
    source: str = "synthetic",
    path: str | None = None,
    mapping: dict | None = None,
    users: str | None = None,
    items: str | None = None,
    mapping_dir: str | None = None,
    models: list[str] | None = None,
    publish_model: str | None = None,
    home: str | None = None,
) -> dict:
    """The whole night: the ingest flow (with its validation gate), then train-and-publish."""
    settings = _settings(home)
    ingested = ingest_flow(source=source, path=path, mapping=mapping, users=users, items=items,
                           mapping_dir=mapping_dir, home=str(settings.home))
    return train_publish_flow(run_date=run_date, models=models, publish_model=publish_model,
                              home=str(settings.home), ingested=ingested["totals"])


def _ingest_line(totals: dict | None) -> str:
    if not totals:
        return "ingest: ran separately (this flow was triggered after it)"
    return (f"ingest: {totals['rows_read']:,} read, {totals['rows_accepted']:,} accepted, "
            f"{totals['rows_rejected']:,} rejected, {totals['rows_duplicate']:,} duplicate; gate passed")


def _summary_text(summary: dict, heads) -> str:
    lines = [f"nightly {summary['run_date']} ({summary['run_id']})",
             f"  {_ingest_line(summary['ingest'])}",
             f"  users served: {summary['published']['users']:,} {summary['published']['strategies']}",
             f"  report: {summary['evaluation']['report_html']}"]
    for row in _ordered(heads).iter_rows(named=True):
        lines.append(f"  nDCG@10 {row['model']:18} {row['slice']:10} {row['value']:.4f} "
                     f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
    return "\n".join(lines)


def _summary_markdown(summary: dict, heads) -> str:
    rows = "\n".join(f"| {r['model']} | {r['slice']} | {r['value']:.4f} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] |"
                     for r in _ordered(heads).iter_rows(named=True))
    paths = "\n".join(f"- {k}: `{v}`" for k, v in summary["published"]["paths"].items())
    return (f"# Nightly {summary['run_date']}\n\n"
            f"{_ingest_line(summary['ingest'])}.\n\n"
            f"| model | slice | nDCG@10 | 95% CI |\n|---|---|---|---|\n{rows}\n\n"
            f"Outputs:\n{paths}\n- report: `{summary['evaluation']['report_html']}`\n")


def _ordered(heads):
    """Model, then warm first and cold slices by k numerically."""
    import polars as pl

    k = pl.col("slice").str.extract(r"k=(\d+)").cast(pl.Int32).fill_null(-1)
    return heads.with_columns(_k=k).sort("model", "_k").drop("_k")
