"""nightly_flow end to end on small synthetic data: every user served, views queryable, caching, the gate."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from benchmarks import fits as fits_benchmark
from flows.caching import CODE_FOLDERS, code_fingerprint
from flows.nightly import _summary_text, nightly_flow, train_publish_flow
from models.base import Recommender
from models.registry import load
from recsys import db, runs
from recsys.errors import ConfigError, PublishGateError
from recsys.settings import Settings
from tasks import features, publish
from tasks import night as night_steps
from tasks.query import VIEW_ORDER, named_query, open_views, run_readonly
from tasks.split import user_sample
from tasks.train import components_of, needed

pytestmark = pytest.mark.slow

N = 10


FITS: Counter = Counter()  # fits of the module's first night, by model (test_each_model_is_fitted_once_per_fold)
LAST_BLENDS: list = []  # the last night's blend each night's evaluation was given, in order


@pytest.fixture(scope="module")
def night(prefect_harness, small_synthetic, tmp_path_factory):
    home = tmp_path_factory.mktemp("nightly")
    mp = pytest.MonkeyPatch()
    # Items with fewer than 40 interactions count as new here, so the small fixture has some to publish.
    for key, value in {"RECSYS_EPOCHS": "2", "RECSYS_TOP_N": str(N), "RECSYS_BOOTSTRAP_SAMPLES": "50",
                       "RECSYS_HOME": str(home), "RECSYS_NEW_ITEM_MAX_INTERACTIONS": "40"}.items():
        mp.setenv(key, value)
    original = Recommender.fit

    def counting(self, *args, **kwargs):
        FITS[self.name] += 1
        return original(self, *args, **kwargs)

    mp.setattr(Recommender, "fit", counting)
    evaluate = night_steps.evaluate_night

    def recording(*args, **kwargs):
        LAST_BLENDS.append(kwargs.get("last_blend", args[6] if len(args) > 6 else None))
        return evaluate(*args, **kwargs)

    mp.setattr(night_steps, "evaluate_night", recording)
    settings = Settings()
    first = nightly_flow(settings=settings, run_date="2026-11-20", source="synthetic", path=str(small_synthetic))
    mp.setattr(Recommender, "fit", original)
    second = nightly_flow(settings=settings, run_date="2026-11-20", source="synthetic", path=str(small_synthetic))
    yield settings, first, second
    mp.undo()


def test_each_night_starts_its_tuning_from_the_blend_the_last_night_published(night):
    """The first night has nothing to keep; the second is given the hybrid the first published (its blend file),
    found through the publish log."""
    settings, first, second = night
    published = first["models"].models["hybrid"]
    assert LAST_BLENDS == [None, str(Path(published) / "weights.json")]
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        logged = con.sql("select model, model_path from publish_log where status = 'published' order by published_at")
        assert logged.fetchall() == [("hybrid", published), ("hybrid", second["models"].models["hybrid"])]


def test_every_user_gets_exactly_n_including_zero_history(night):
    settings, first, _ = night
    recs = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        users = {u for (u,) in con.sql("select user_id from users").fetchall()}
        silent = {u for (u,) in con.sql("select user_id from users anti join interactions using (user_id)").fetchall()}
    assert silent, "the fixture must contain users with no interactions"
    counts = recs.group_by("user_id").len()
    assert set(counts["user_id"]) == users
    assert (counts["len"] == N).all()
    zero = recs.filter(pl.col("user_id").is_in(list(silent)))
    assert set(zero["strategy"]) == {"zero_shot"}
    assert first["published"]["users"] == len(users)


def test_rerun_reuses_unchanged_steps_and_replaces_the_partition(night):
    _, first, second = night
    assert second["fingerprint"] == first["fingerprint"]
    assert second["models"] == first["models"]  # training reused
    assert second["evaluation"] == first["evaluation"]  # evaluation reused
    assert second["features"] == first["features"]
    settings = night[0]
    recs = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    assert set(recs["run_id"]) == {second["run_id"]}


@pytest.mark.parametrize("view", VIEW_ORDER)
def test_every_view_reads_the_published_run(night, view):
    with open_views(night[0]) as con:
        assert run_readonly(con, f"select count(*) from {view}").fetchall()[0][0] > 0


@pytest.mark.parametrize(("query", "params"), [("top10_for_user", {"user_id": 1}), ("item_reach", None),
                                               ("coverage_per_day", None), ("strategy_mix", None),
                                               ("reasons_for_user", {"user_id": 1}), ("new_items_overview", None),
                                               ("metrics_history", None)])
def test_every_named_query_runs(night, query, params):
    with open_views(night[0]) as con:
        rows = run_readonly(con, named_query(night[0], query), params).fetchall()
    assert rows
    if query in ("top10_for_user", "reasons_for_user"):
        assert [r[1 if query == "top10_for_user" else 0] for r in rows] == list(range(1, 11))
    if query == "new_items_overview":
        item = rows[0][0]
        with open_views(night[0]) as con:
            audience = run_readonly(con, named_query(night[0], "new_item_audience"), {"item_id": item}).fetchall()
        assert len(audience) == rows[0][-1] and [r[0] for r in audience] == list(range(1, len(audience) + 1))


def test_every_published_row_says_why_and_names_something_real(night):
    """neighbour/content name an item the user has interacted with; segment names the user's own segment."""
    settings, first, _ = night
    recs = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    assert recs["reason"].null_count() == 0 and (recs["reason"].str.len_chars() > 10).all()
    assert set(recs["reason_kind"]) <= {"neighbour", "content", "segment", "popular"}
    assert {"neighbour", "segment"} <= set(recs["reason_kind"]), recs["reason_kind"].value_counts()
    frames = first["snapshot"].frames()
    seen = frames.interactions.select("user_id", pl.col("item_id").alias("reason_item_id"), known=pl.lit(True)).unique()
    named = recs.filter(pl.col("reason_kind").is_in(["neighbour", "content"])).join(
        seen, on=["user_id", "reason_item_id"], how="left")
    assert named.height and named["known"].fill_null(False).all(), named.filter(pl.col("known").is_null())
    titles = frames.items.select(pl.col("item_id").alias("reason_item_id"), reason_title="title")
    sample = named.join(titles, on="reason_item_id").head(50)
    assert sample.height and all(r["reason"].endswith(f"{r['reason_title']} [item {r['reason_item_id']}]")
                                 for r in sample.iter_rows(named=True))
    users = frames.users.with_columns(age_bucket=features.age_bucket(pl.col("age")))
    segments = recs.filter(pl.col("reason_kind") == "segment").join(users, on="user_id")
    assert segments.height and all(f"gender={r['gender']}" in r["reason_segment"]
                                   and f"age_bucket={r['age_bucket']}" in r["reason_segment"]
                                   for r in segments.iter_rows(named=True))


def test_new_items_are_published_with_their_audience(night):
    settings, first, _ = night
    new = pl.read_parquet(publish.partition_path(settings.output_dir / "new_items", date(2026, 11, 20)))
    counts = first["snapshot"].frames().interactions.group_by("item_id").agg(real=pl.len())
    checked = new.join(counts, on="item_id", how="left").with_columns(pl.col("real").fill_null(0))
    assert new.height and (checked["interactions"] == checked["real"]).all() and (checked["real"] < 40).all()
    assert new.group_by("item_id").len()["len"].max() <= 100
    assert new["reason"].null_count() == 0 and set(new["reason_kind"]) <= {"content", "segment", "popular"}
    seen = first["snapshot"].frames().interactions.select("user_id", "item_id")
    assert new.join(seen, on=["user_id", "item_id"], how="semi").height == 0  # never to someone who has it


ATTACKS = {
    "copy to a file": "copy (select 1) to 'x.csv'",
    "explain analyze of a copy into the output folder":
        "explain analyze copy (select * from recommendations limit 1) to "
        "'{out}/recommendations/run_date=2099-01-01/x.parquet'",
    "explain of a copy": "explain copy (select 1) to '{out}/y.csv'",
    "read_text of a system file": "select * from read_text('/etc/passwd')",
    "read_csv of a system file": "select * from read_csv('/etc/passwd')",
    "glob outside the output": "select * from glob('/root/*')",
    "escape the output folder": "select * from read_text('{out}/../warehouse.duckdb')",
    "unlock the configuration": "set enable_external_access = true",
    "attach the warehouse": "attach '{home}/warehouse.duckdb'",
    "load an extension": "load httpfs",
    "two statements": "select 1; select 2",
    "import a database": "import database '{home}'",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_sql_sandbox_refuses(night, attack):
    settings = night[0]
    out = settings.output_dir.resolve()
    sql = ATTACKS[attack].format(out=out, home=settings.home.resolve())
    with open_views(settings) as con:
        with pytest.raises(ConfigError):
            run_readonly(con, sql).fetchall()
        assert not (out / "recommendations" / "run_date=2099-01-01").exists()
        assert run_readonly(con, "select count(*) from latest_recommendations").fetchall()[0][0] > 0


def test_regressed_run_keeps_the_last_good_partition(night, tmp_path):
    settings, first, second = night
    path = publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20))
    before = path.read_bytes()
    worse = pl.read_parquet(second["evaluation"].metrics).with_columns(pl.col("value") * 0.5)
    worse_path = tmp_path / "worse.parquet"
    worse.write_parquet(worse_path)
    model = second["models"].models["hybrid"]
    scored = [publish.score_step(model, str(second["snapshot"].path("users")), 0, 1, N, str(tmp_path / "scored"))]
    defaults = publish.segment_defaults_step(model, N, str(tmp_path / "scored"))
    with pytest.raises(PublishGateError, match="kept the last good partition"):
        publish.publish_step(settings, "regressed-run", date(2026, 11, 20), second["snapshot"], "hybrid",
                             scored, defaults, str(worse_path))
    assert path.read_bytes() == before
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        status = con.sql("select status, reason from publish_log where run_id = 'regressed-run'").fetchall()
    assert status[0][0] == "rejected" and "ndcg@10" in status[0][1]


def test_the_lists_are_judged_and_written_a_few_users_at_a_time_with_the_whole_nights_verdict(night, tmp_path):
    """Publishing in chunks of whole users (three lists a chunk, over four scoring blocks) writes exactly the rows
    the night published at once, and the gate judges the whole night: one seen item planted in the last chunk
    is caught with the night's row count, and nothing of that night becomes visible."""
    settings, _, second = night
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(settings.warehouse_path, home / settings.warehouse_path.name)
    copy = settings.model_copy(update={"home": home})
    assert copy.warehouse_path == home / settings.warehouse_path.name
    model, snap = second["models"].models["hybrid"], second["snapshot"]
    users = str(snap.path("users"))
    scored = [publish.score_step(model, users, block, 4, N, str(tmp_path / "scored")) for block in range(4)]
    defaults = publish.segment_defaults_step(model, N, str(tmp_path / "scored"))
    done = publish.publish_step(copy, "chunked-run", date(2026, 11, 21), snap, "hybrid", scored, defaults, None,
                                chunk_rows=3 * N)
    published = pl.read_parquet(publish.partition_path(settings.output_dir / "recommendations", date(2026, 11, 20)))
    chunked = pl.read_parquet(done["paths"]["recommendations"])
    assert chunked.drop("run_id").equals(published.drop("run_id"))
    assert done["users"] == published["user_id"].n_unique() and done["rows"] == published.height

    last = pl.read_parquet(scored[-1].top)
    user = last["user_id"][-1]
    taken = pl.read_parquet(snap.path("interactions")).filter(pl.col("user_id") == user)["item_id"][0]
    last.with_columns(pl.when(pl.int_range(pl.len()) == last.height - 1).then(taken).otherwise(pl.col("item_id"))
                      .alias("item_id")).write_parquet(scored[-1].top)
    with pytest.raises(PublishGateError, match=rf"is_seen\): observed 1 of {published.height} rows"):
        publish.publish_step(copy, "seen-run", date(2026, 11, 22), snap, "hybrid", scored, defaults, None,
                             chunk_rows=3 * N)
    assert not (copy.output_dir / "recommendations" / "run_date=2026-11-22").exists()
    assert not list((copy.output_dir / "recommendations" / "_staging").glob("*"))


def test_a_scoring_task_serves_its_users_a_few_blocks_at_a_time_with_the_same_rows(night, tmp_path, monkeypatch):
    """A scoring task writes its lists call by call (a few scoring blocks a call) and merges the new items' best
    users over the calls: the same rows, bit for bit, as serving all its users in one call."""
    import models.base

    _, _, second = night
    model, users = second["models"].models["hybrid"], str(second["snapshot"].path("users"))
    monkeypatch.setattr(models.base, "SCORE_BLOCK_CELLS", 7 * len(load(model).item_ids))  # blocks of 7 users
    once = publish.score_step(model, users, 0, 1, N, str(tmp_path / "once"), 40, users_per_call=10**9)
    calls = publish.score_step(model, users, 0, 1, N, str(tmp_path / "calls"), 40, users_per_call=20)
    assert pl.read_parquet(calls.top).equals(pl.read_parquet(once.top))
    assert pl.read_parquet(calls.new_items).equals(pl.read_parquet(once.new_items))
    assert pl.read_parquet(once.new_items).height > 0 and pl.read_parquet(once.top)["user_id"].n_unique() > 100


def test_a_changed_setting_recomputes_evaluation(night, small_synthetic):
    settings, _, second = night
    changed = settings.model_copy(update={"bootstrap_samples": 60})
    third = train_publish_flow(settings=changed, run_date="2026-11-20")
    assert third["features"] == second["features"]  # features do not depend on the bootstrap
    assert third["evaluation"] != second["evaluation"]
    # Only scoring reads the bootstrap: the evaluation fold's fits are reused, not fitted again.
    assert third["evaluation"].carry == second["evaluation"].carry
    # The new evaluation's report answers first and compares with the night published before it.
    report = Path(third["evaluation"].report_markdown).read_text()
    assert "## Tonight (2026-11-20): hybrid, the published model" in report.splitlines()[4]
    assert "| since 2026-11-20 |" in report and "(was 0." in report
    assert "![history](history.png)" in report and (Path(third["evaluation"].folder) / "history.png").exists()


def test_deleted_model_files_are_recomputed_not_trusted(night):
    """A cached fit whose folder was deleted is fitted again (and what blends it); the others are reused."""
    settings, _, second = night
    shutil.rmtree(second["models"].models["ease"])
    again = train_publish_flow(settings=settings, run_date="2026-11-20")
    assert again["models"].exists() and again["evaluation"] == second["evaluation"]
    moved = {name for name, path in again["models"].models.items() if path != second["models"].models[name]}
    assert moved == {"ease", "hybrid"}, moved


def test_changed_code_changes_the_cache_key(tmp_path):
    for folder in CODE_FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "models" / "ease.py").write_text("L2 = 500\n")
    before = code_fingerprint(tmp_path)
    (tmp_path / "models" / "ease.py").write_text("L2 = 400\n")
    assert code_fingerprint(tmp_path) != before


def test_the_blend_is_tuned_on_a_fold_cut_in_time_and_carried_to_the_evaluation_fold(night):
    """The night's shape: the tuning fold is the evaluation fold's training before a moment (nobody's later rows in
    it), tuned on what the users known then did after it; the evaluation fold's hybrid (fitted on all of its
    training) and production blend with the weights tuned there."""
    _, first, _ = night
    evaluation = first["evaluation"]
    folder = Path(evaluation.folder)
    keys = ["user_id", "item_id", "ts"]
    tuning_train = pl.read_parquet(folder / "tuning" / "train.parquet")
    truth = pl.read_parquet(folder / "tuning" / "validation_truth.parquet").filter(pl.col("case") == "warm")
    known = pl.read_parquet(folder / "tuning" / "validation_known.parquet").filter(pl.col("case") == "warm")
    fold_train = pl.read_parquet(folder / "train.parquet")
    assert truth.height and tuning_train["ts"].max() < truth["ts"].min()
    assert truth["user_id"].is_in(known["user_id"].implode()).all()  # known before the moment, back after it
    assert tuning_train.select(keys).join(fold_train.select(keys), on=keys, how="anti").is_empty()
    assert fold_train.filter(pl.col("ts") > tuning_train["ts"].max()).height >= truth.height
    assert evaluation.protocol["tuning"].startswith("window: the last 30% of the interactions by time")
    blend = [json.loads((path / "hybrid" / "weights.json").read_text())["weights"]
             for path in (folder / "models" / "tuning", folder / "models",
                          Path(first["models"].models["hybrid"]).parent)]
    assert blend[0] == blend[1] == blend[2]


def test_each_model_is_fitted_once_per_fold(night):
    # Once per fold: the evaluation fold, the item-cold fold and production; the hybrid's components (its audience
    # model too) once more, on the tuning fold its blend is tuned on; the item-cold baselines and the audience
    # model's twin without the text encoder once.
    blended = {*components_of("hybrid"), "hybrid"}
    assert FITS == Counter({**{name: 3 + (name in blended) for name in Settings().models}, "random": 1,
                            "new_item_audience": 4, "genre_popularity": 1, "genre_year": 1, "activity": 1,
                            "new_item_audience_without_text": 1}), FITS


def test_the_fits_benchmark_replays_the_nights_production_fits_one_by_one(night):
    """``benchmarks.fits`` on a night's home: every model the production fit fits, in its order, each with its
    seconds and resident memory; its scratch folder removed after."""
    settings = night[0]
    result = fits_benchmark.replay(Path(settings.home), give_back=True)
    assert (settings.models_dir / result["night"] / settings.publish_model / "params.json").exists()
    assert [f["model"] for f in result["fits"]] == needed([*settings.models, settings.publish_model])
    assert all(f["seconds"] >= 0 and 0 < f["start_gib"] <= f["peak_gib"] and f["after_gib"] > 0
               for f in result["fits"])
    # After each fit: its anonymous part, and glibc's share of it (in use; the rest is other allocators').
    assert all(0 < f["glibc_in_use_after_gib"] < f["anon_after_gib"] <= f["after_gib"] for f in result["fits"])
    assert "glibc" in fits_benchmark.format_table([result])
    assert result["peak_gib"] == max(f["peak_gib"] for f in result["fits"])
    assert not list(Path(settings.home).glob("fits-benchmark-*"))


def test_the_report_opens_with_the_encoder_and_states_the_audience_weights(night):
    """The night quantifies what the pretrained encoder adds to new items' audiences (first line of the
    report) and states the audience model's weights, learned on held-out training items."""
    _, first, _ = night
    report = Path(first["evaluation"].report_markdown).read_text()
    first_screen = report.split("## Nights over time")[0]
    (line,) = [line for line in first_screen.splitlines()
               if line.startswith("**New items and the pretrained encoder:**")]
    assert "all-MiniLM-L6-v2" in line and "strongest baseline" in line
    assert "| new items: who to show them to | items -&gt; users nDCG@100 |" in first_screen
    assert '"new_item_audience"' in report and '"standardised_weights"' in report and '"activity"' in report
    snapshot = first["snapshot"]
    vectors = pl.read_parquet(snapshot.text_vectors_path)
    assert snapshot.text_encoder == "minilm" and vectors.height == snapshot.items
    assert vectors["text_vector"].dtype == pl.Array(pl.Float32, 384)


def test_the_item_cold_fold_is_the_evaluation_folds_training_less_the_new_items(night):
    """The item-cold fold trains on the evaluation fold's training less the held-out items (the same window of
    time and users as the other slices); its truth is every interaction of its users with those items. The
    evaluation fold's two-tower and ALS continue the tuning fold's fits, as production continues theirs; the
    item-cold fold's start from scratch (the tuning fold saw the held-out items)."""
    _, first, _ = night
    folder = Path(first["evaluation"].folder)
    fold_train = pl.read_parquet(folder / "train.parquet")
    item_cold_train = pl.read_parquet(folder / "item_cold" / "train.parquet")
    keys = ["user_id", "item_id", "ts"]
    new_items = pl.read_parquet(folder / "slices" / "item_cold" / "new_items.parquet")["item_id"].implode()
    assert item_cold_train.select(keys).join(fold_train.select(keys), on=keys, how="anti").is_empty()
    assert not item_cold_train["item_id"].is_in(new_items).any()
    assert item_cold_train.height == fold_train.filter(~pl.col("item_id").is_in(new_items)).height
    truth = pl.read_parquet(folder / "slices" / "item_cold" / "truth.parquet")
    assert truth["item_id"].is_in(new_items).all() and truth.height > fold_train["item_id"].is_in(new_items).sum()

    def training(path: Path, model: str) -> dict:
        if model == "als":
            return json.loads((path / "als" / "training.json").read_text())
        return json.loads((path / "two_tower" / "training_history.json").read_text())["training"]

    production = Path(first["models"].models["two_tower"]).parent
    for model in ("two_tower", "als"):
        assert not training(folder / "models" / "tuning", model)["warm_started"]
        assert training(folder / "models", model)["warm_started"]
        assert not training(folder / "models-item-cold", model)["warm_started"]
        assert training(production, model)["warm_started"]


def test_a_night_prunes_older_working_files_and_keeps_what_its_records_read(night):
    """With keep_nights 1 the night removes older nights' models and folds, keeping every report and the nights
    its (cached) records point at: the published hybrid and its components still load."""
    settings = night[0]
    stray = "nightly-20200101T000000-abcdef"  # an old failed night's leftovers
    (settings.models_dir / stray / "ease").mkdir(parents=True)
    (settings.models_dir / stray / "ease" / "params.json").write_text("{}")
    (settings.reports_dir / stray / "slices").mkdir(parents=True)
    (settings.reports_dir / stray / "report.html").write_text("<html>")
    old_data = "0123456789abcdef0123"  # a snapshot no kept night read, and its features
    for name in ("snapshots", "features"):
        (settings.home / name / old_data).mkdir(parents=True)
    latest = train_publish_flow(settings=settings.model_copy(update={"keep_nights": 1}), run_date="2026-11-20")
    assert stray in latest["pruned"].nights and latest["pruned"].bytes > 0
    assert latest["pruned"].snapshots == (old_data,)
    assert not any((settings.home / name / old_data).exists() for name in ("snapshots", "features"))
    assert Path(latest["snapshot"].folder).is_dir() and Path(latest["features"].user_features).exists()
    with db.warehouse(settings, read_only=True) as wh:
        assert runs.snapshots_read(wh)[latest["run_id"]] == latest["fingerprint"]
    assert not (settings.models_dir / stray).exists() and not (settings.reports_dir / stray / "slices").exists()
    assert (settings.reports_dir / stray / "report.html").exists()
    assert latest["models"].exists() and latest["evaluation"].exists()
    assert latest["run_id"] not in latest["models"].models["hybrid"]  # cached: it sits in an earlier night
    hybrid = load(Path(latest["models"].models["hybrid"]))
    assert set(hybrid.components) >= {"ease", "two_tower"}
    assert "and 1 older snapshot removed" in _summary_text(latest, [], "hybrid")


def test_at_scale_the_evaluation_is_a_fixed_sample_of_users_and_production_fits_everyone(night):
    """RECSYS_EVALUATION_MAX_INTERACTIONS: every fold, fit and slice of the evaluation is the sampled users'
    (the report's protocol says how many), while production fits and serves every user."""
    settings = night[0]
    # Less than half of the fixture's interactions: the evaluated models learn from fewer users than the last
    # night's did, so their metrics drop and the publish gate would (rightly) keep the last partition.
    changed = settings.model_copy(update={"evaluation_max_interactions": 4000, "metric_tolerance": 1.0})
    capped = train_publish_flow(settings=changed, run_date="2026-11-20")
    everything = pl.read_parquet(capped["snapshot"].path("interactions"))
    sampled = set(user_sample(everything, 4000, settings.seed)["user_id"].to_list())
    protocol = capped["evaluation"].protocol
    assert 0 < protocol["evaluation_sample_interactions"] <= 4000
    assert protocol["evaluation_sample_users"] == len(sampled) < everything["user_id"].n_unique()
    folder = Path(capped["evaluation"].folder)
    read = [folder / "train.parquet", folder / "item_cold" / "train.parquet", folder / "tuning" / "train.parquet",
            *(folder / "slices").glob("*/truth.parquet")]
    assert len(read) >= 10
    for path in read:
        assert set(pl.read_parquet(path)["user_id"].unique().to_list()) <= sampled, path
    report = Path(capped["evaluation"].report_markdown).read_text()
    assert f"**Evaluated on a sample of users:** {len(sampled):,} of " in report.split("## Every model")[0]
    assert f"evaluated on a fixed sample of {len(sampled):,} users" in _summary_text(capped, [], "hybrid")
    production = load(Path(capped["models"].models["als"]))
    assert len(production.user_ids) == everything["user_id"].n_unique()
