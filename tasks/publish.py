"""Publishing: top-N for every user, per-segment defaults, the publish gate, atomic Parquet partitions.

A night is published as a new immutable version directory,
``<root>/run_date=YYYY-MM-DD/version=<sortable stamp>/data.parquet``: written completely under
``<root>/_staging/`` and then moved into place with one ``os.rename`` of the directory, which is atomic.
Paths never change content, so a reader that opens a file twice (DuckDB reads the footer and the data
separately) can never mix two versions: measured, replacing one file in place tore concurrent DuckDB reads
("don't know what type"). The night's tables share one version stamp, and a version counts only once its
commit marker ``<output>/_commits/run_date=<date>/version=<stamp>`` exists, written after every table of the
night is in place: the night's tables become visible together, or not at all (a kill between two renames
leaves a version nobody reads, cleared by the next publish). The views in ``sql/views`` and
:func:`partition_path` read only the newest committed version of each night; older versions are retired
after a grace period, keeping one more for readers already in flight. Other dates are never touched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from models.registry import load, load_encoding, model_class
from models.serving import merge_best_users, reason_columns
from models.tiled import use_threads
from recsys import db, progress, schema
from recsys.errors import PublishGateError
from recsys.memory import release_memory
from recsys.schema import ITEM_ID, USER_ID
from tasks.snapshot import Snapshot
from tasks.validate import GATE_CHUNK_ROWS, GxRunner, merge_chunks, suite_outcomes, suite_parameters

PARTITION_FILE = "data.parquet"
SCORE_CALL_USERS = 50_000  # users a scoring task serves at a time (its lists written before the next call)
ROW_GROUP_ROWS = 262_144  # a published file's row groups: a reader's `where user_id = ...` skips the others
KEEP_VERSIONS = 2  # the newest, and the one before it for readers that started before the switch
K_SHOT_MAX = 4  # users with 1..4 known interactions are served as k-shot, more as warm


def partition_dir(root: Path, run_date: date) -> Path:
    return Path(root) / f"run_date={run_date.isoformat()}"


def commits_dir(root: Path) -> Path:
    """Where the commit markers of the tables under ``root``'s parent (the output folder) live."""
    return Path(root).parent / "_commits"


def committed_versions(root: Path, run_date: date) -> list[str]:
    """The committed versions of ``run_date`` in ``root``, oldest first. A layout published before commit
    markers existed (no ``_commits`` folder at all) counts every version as committed."""
    markers = commits_dir(root)
    if not markers.exists():
        return sorted(p.name.split("=", 1)[1] for p in partition_dir(root, run_date).glob("version=*"))
    present = {p.name.split("=", 1)[1] for p in partition_dir(root, run_date).glob("version=*")}
    marked = {p.name.split("=", 1)[1] for p in (markers / f"run_date={run_date.isoformat()}").glob("version=*")}
    return sorted(present & marked)


def partition_path(root: Path, run_date: date) -> Path:
    """The data file of the newest committed version of ``run_date`` (which may not exist)."""
    versions = committed_versions(root, run_date)
    return partition_dir(root, run_date) / f"version={versions[-1] if versions else 'none'}" / PARTITION_FILE


def new_version() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class StagedPartition:
    """A partition version written completely under ``_staging``, not yet visible to readers."""

    staging: Path
    final: Path


class ParquetAppender:
    """A Parquet file written frame by frame, each frame's columns cast to the first one's (zstd, row groups of
    :data:`ROW_GROUP_ROWS`): a table written as it is made, never held whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table.cast(self._writer.schema), row_group_size=ROW_GROUP_ROWS)

    def close(self) -> None:
        if self._writer is None:
            raise ValueError(f"{self.path}: nothing was written, not even an empty frame with the table's columns")
        self._writer.close()

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()


class PartitionWriter:
    """A new version of the ``run_date`` partition of ``root``, written frame by frame under
    ``root/_staging`` (``version``: the night's shared stamp; a new one by default) and invisible to readers:
    :meth:`close` gives the :class:`StagedPartition` to commit, :meth:`discard` drops it. A table too large to
    hold at once (the night's lists at 100 M interactions) is written a few users at a time."""

    def __init__(self, root: Path, run_date: date, version: str | None = None):
        version = version or new_version()
        self.staging = Path(root) / "_staging" / version
        self.final = partition_dir(root, run_date) / f"version={version}"
        self.staging.mkdir(parents=True)
        self._file = ParquetAppender(self.staging / PARTITION_FILE)

    def write(self, frame: pl.DataFrame) -> None:
        self._file.write(frame.drop("run_date", strict=False))

    def close(self) -> StagedPartition:
        self._file.close()
        return StagedPartition(self.staging, self.final)

    def discard(self) -> None:
        self._file.abandon()
        shutil.rmtree(self.staging, ignore_errors=True)


def stage_partition(frame: pl.DataFrame, root: Path, run_date: date, version: str | None = None) -> StagedPartition:
    """Write ``frame`` as a new version of the ``run_date`` partition of ``root``, under ``root/_staging``
    (``version``: the night's shared stamp; a new one by default)."""
    writer = PartitionWriter(root, run_date, version)
    try:
        writer.write(frame)
        return writer.close()
    except BaseException:
        writer.discard()
        raise


def commit_partitions(staged: list[StagedPartition], grace_seconds: float = 600.0) -> list[Path]:
    """Make staged versions visible together: each is renamed into place (atomic per table, invisible until
    committed), then one commit marker per (output folder, night, version) is written, atomically, last. A
    kill before the marker publishes nothing. Superseded versions are deleted once they are not among the
    newest ``KEEP_VERSIONS`` committed ones and older than ``grace_seconds``, so a reader that listed the
    files just before the switch can still read them."""
    paths = []
    for part in staged:
        root = part.final.parent.parent
        if not commits_dir(root).exists():
            adopt_uncommitted_layout(root)
        part.final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(part.staging, part.final)
        paths.append(part.final / PARTITION_FILE)
    for marker in dict.fromkeys(commits_dir(p.parent.parent) / p.parent.name / p.name for p in
                                (part.final for part in staged)):
        marker.parent.mkdir(parents=True, exist_ok=True)
        staged_marker = marker.with_name(f".{marker.name}.{uuid.uuid4().hex[:6]}")
        staged_marker.write_text("")
        os.replace(staged_marker, marker)  # the commit: atomic
    now = datetime.now(UTC)
    for part in staged:
        root, night = part.final.parent.parent, part.final.parent
        keep = set(committed_versions(root, date.fromisoformat(night.name.split("=", 1)[1]))[-KEEP_VERSIONS:])
        for old in sorted(night.glob("version=*")):
            version = old.name.split("=", 1)[1]
            stamp = datetime.strptime(version.split("-")[0], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
            if keep and version not in keep and version < max(keep) and (now - stamp).total_seconds() >= grace_seconds:
                shutil.rmtree(old, ignore_errors=True)
                (commits_dir(root) / night.name / old.name).unlink(missing_ok=True)
    return paths


def adopt_uncommitted_layout(root: Path) -> None:
    """Commit markers for every version under ``root``'s output folder published before markers existed, so
    the first publish with markers does not hide the nights already there."""
    output = Path(root).parent
    for version_dir in output.glob("*/run_date=*/version=*"):
        if version_dir.parts[-3].startswith("_"):
            continue
        marker = commits_dir(root) / version_dir.parent.name / version_dir.name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def publish_partition(frame: pl.DataFrame, root: Path, run_date: date, grace_seconds: float = 600.0) -> Path:
    """Publish one table's ``run_date`` partition atomically (:func:`stage_partition`, then commit)."""
    return commit_partitions([stage_partition(frame, root, run_date)], grace_seconds)[0]


def clear_staging(roots: list[Path]) -> list[Path]:
    """Remove what a killed publish left under each ``root/_staging`` (call it holding the run lock: then no
    publish is in flight). Returns what was removed."""
    removed = []
    for root in roots:
        for leftover in sorted((Path(root) / "_staging").glob("*")):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def strategy_of(history_length: np.ndarray) -> np.ndarray:
    return np.where(history_length == 0, schema.STRATEGY_ZERO_SHOT,
                    np.where(history_length <= K_SHOT_MAX, schema.STRATEGY_K_SHOT, schema.STRATEGY_WARM))


@dataclass(frozen=True)
class ScoredBlock:
    """One scoring task's output: its users' top-n with reasons, and its best users for each new item."""

    top: str
    new_items: str


def new_item_ids(model, max_interactions: int) -> np.ndarray:
    """The catalogue's items with fewer than ``max_interactions`` training interactions."""
    return model.item_ids[model.item_popularity < max_interactions]


def score_step(model_path: str, users: str, block: int, blocks: int, n: int, folder: str,
               new_item_max_interactions: int = 5, users_per_item: int = 100, threads: int = 0,
               keep_freed_memory: bool = True, users_per_call: int = SCORE_CALL_USERS) -> ScoredBlock:
    """Top-``n`` of the saved model, with each row's reason, for block ``block`` of ``blocks`` of the users
    in ``users`` (a Parquet file with ``user_id``), and the block's best ``users_per_item`` users for each item
    with fewer than ``new_item_max_interactions`` interactions, all in one blockwise pass, written to
    ``folder``: the unit of scoring a task runner spreads.

    Blocks are contiguous runs of the sorted user ids cut at multiples of the model's own scoring block, so
    every user is scored in the same company whatever the number of blocks: the rows published are the
    same, bit for bit, from one process or many. The block is served about ``users_per_call`` users at a time
    (cut at the same multiples), each call's lists written before the next, and the new items' best users
    merged over the calls (:func:`models.serving.merge_best_users`, exact): the task's memory follows the call,
    not its users (one task served a 100 M night's million users: 50 M rows with reasons, held twice while
    they were concatenated). ``threads``, ``keep_freed_memory``: RECSYS_SCORING_THREADS,
    RECSYS_KEEP_FREED_MEMORY."""
    use_threads(threads, keep_freed_memory)
    model = load(Path(model_path))
    user_ids = np.sort(pl.read_parquet(users, columns=[USER_ID])[USER_ID].to_numpy())
    per = model.serving_block_users
    chunks = -(-len(user_ids) // per)  # the model's blocks, rounded up: each task cuts at their edges
    user_ids = user_ids[chunks * block // blocks * per:chunks * (block + 1) // blocks * per]
    step = per * max(1, users_per_call // per)
    where = Path(folder)
    where.mkdir(parents=True, exist_ok=True)
    top, new = where / f"block-{block:05d}.parquet", where / f"new-items-{block:05d}.parquet"
    lists, best, new_ids = ParquetAppender(top), [], new_item_ids(model, new_item_max_interactions)
    try:
        for lo in range(0, max(len(user_ids), 1), step):  # one call at least: an empty block has columns
            with progress.activity(f"scoring {len(user_ids):,} users with {model.name}"
                                   + (f" (block {block + 1}/{blocks})" if blocks > 1 else "")
                                   + (f", users {lo + 1:,}-{min(lo + step, len(user_ids)):,}"
                                      if len(user_ids) > step else "")):
                served = model.serve(user_ids[lo:lo + step], n, explain=True,
                                     items=new_ids, users_per_item=users_per_item)
            lists.write(served.top)
            best.append(served.by_item)
        lists.close()
    except BaseException:
        lists.abandon()
        raise
    merge_best_users(pl.concat(best), users_per_item).write_parquet(new)
    del model, best, served
    release_memory()  # the model and the blocks kept for the next call: the gate that follows has its own
    return ScoredBlock(str(top), str(new))


def new_items_step(model_path: str, scored: list[ScoredBlock], users_per_item: int, folder: str) -> str:
    """Each new item's best users over all blocks, with the reason to show it to each: the encoding of the
    saved model is enough (no scoring)."""
    best = merge_best_users(pl.concat([pl.read_parquet(b.new_items) for b in scored]), users_per_item)
    model = load_encoding(Path(model_path))
    why = model.explain_new_items(best[USER_ID].to_numpy(), best[ITEM_ID].to_numpy())
    path = Path(folder) / "new_items.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = pl.DataFrame({ITEM_ID: model.item_ids, "interactions": model.item_popularity.astype(np.int64)})
    best.with_columns(reason_columns(model, why)).join(counts, on=ITEM_ID, how="left").write_parquet(path)
    return str(path)


def segment_defaults_step(model_path: str, n: int, folder: str) -> str:
    """A default list per (gender, age bucket) for sign-ups not yet in the users table, plus 'unknown'."""
    model = load(Path(model_path))
    genders = model.vocab["gender"][1:] + ["unknown"]
    ages = model.vocab["age_bucket"][1:] + ["unknown"]
    profiles = pl.DataFrame({"gender": [g for g in genders for _ in ages],
                             "age_bucket": [a for _ in genders for a in ages]})
    recs = model.recommend_for_profiles(profiles, n=n)
    profiles = profiles.with_row_index(USER_ID).with_columns(pl.col(USER_ID).cast(pl.Int64))
    path = Path(folder) / "segment_defaults.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    recs.join(profiles, on=USER_ID).select("gender", "age_bucket", ITEM_ID, "rank", "score").write_parquet(path)
    return str(path)


def reason_text() -> pl.Expr:
    """A reason in words, with the id it names: "because you rated <title> [item 50]", "similar genres to
    <title> [item 7]", "popular with women aged 25-34 [gender=F, age_bucket=25-34]", "popular with all
    users". Reads ``reason_title``, the named item's title."""
    named = pl.format("{} [item {}]",
                      pl.coalesce(pl.col("reason_title"), pl.format("item {}", pl.col("reason_item_id"))),
                      pl.col("reason_item_id"))
    return (pl.when(pl.col("reason_kind") == "neighbour").then(pl.concat_str(pl.lit("because you rated "), named))
            .when(pl.col("reason_kind") == "content").then(pl.concat_str(pl.lit("similar genres to "), named))
            .when(pl.col("reason_kind") == "segment").then(pl.format("popular with {} [{}]",
                                                                     segment_words(pl.col("reason_segment")),
                                                                     pl.col("reason_segment")))
            .otherwise(pl.lit("popular with all users")))


def segment_words(segment: pl.Expr) -> pl.Expr:
    """"gender=F, age_bucket=25-34" -> "women aged 25-34"."""
    gender = segment.str.extract(r"gender=([^,]+)")
    age = segment.str.extract(r"age_bucket=([^,]+)")
    who = (pl.when(gender == "F").then(pl.lit("women")).when(gender == "M").then(pl.lit("men"))
           .when(gender.is_not_null()).then(pl.format("gender {}", gender)).otherwise(pl.lit("people")))
    aged = (pl.when(age == "under18").then(pl.lit(" under 18")).when(age == "56+").then(pl.lit(" aged 56 and over"))
            .when(age.is_not_null()).then(pl.format(" aged {}", age)).otherwise(pl.lit("")))
    return pl.concat_str(who, aged)


def with_reasons(frame: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its item's ``title`` and its reason in words (``reason``, the named item's title looked
    up in ``items`` too)."""
    titles = items.select(ITEM_ID, "title")
    return (frame.join(titles, on=ITEM_ID, how="left", maintain_order="left")
            .join(titles.rename({ITEM_ID: "reason_item_id", "title": "reason_title"}), on="reason_item_id",
                  how="left", maintain_order="left")
            .with_columns(reason=reason_text()).drop("reason_title"))


def build_recommendations(recs: pl.DataFrame, interactions: pl.DataFrame, items: pl.DataFrame, model: str,
                          run_id: str, run_date: date) -> pl.DataFrame:
    """The published rows of scored top-n lists, with the strategy that served each user (from the user's
    rows in ``interactions``, which must hold all of them) and the reason for each item."""
    counts = interactions.group_by(USER_ID).agg(history=pl.len())
    recs = with_reasons(recs.sort(USER_ID, "rank"), items).join(
        counts, on=USER_ID, how="left", maintain_order="left").with_columns(pl.col("history").fill_null(0))
    return recs.select(
        pl.lit(run_date).alias("run_date"), pl.lit(run_id).alias("run_id"), USER_ID, ITEM_ID,
        pl.col("rank").cast(pl.Int32), "score", pl.lit(model).alias("model"),
        pl.Series("strategy", strategy_of(recs["history"].to_numpy())), "title",
        "reason_kind", "reason", "reason_item_id", "reason_segment",
    )


def build_new_items(best: pl.DataFrame, items: pl.DataFrame, model: str, run_id: str, run_date: date) -> pl.DataFrame:
    """The published rows of ``new_items``: per item with few interactions, the users to show it to."""
    return with_reasons(best.sort(ITEM_ID, "rank"), items).select(
        pl.lit(run_date).alias("run_date"), pl.lit(run_id).alias("run_id"), ITEM_ID, "title",
        pl.col("interactions").cast(pl.Int64), USER_ID, pl.col("rank").cast(pl.Int32), "score",
        pl.lit(model).alias("model"), "reason_kind", "reason", "reason_item_id", "reason_segment")


def scored_chunks(scored: list[ScoredBlock], rows: int) -> Iterator[pl.DataFrame]:
    """The scored lists of ``scored``'s blocks about ``rows`` rows at a time (more than any one list holds),
    in user id order, each user's whole list in one chunk: what the publish gate judges at once. A block's rows
    come in user id order (:meth:`Recommender.serve` sorts the users it serves with new items); the blocks'
    users follow one another. At least one chunk, empty where nobody was scored."""
    last, sent = None, False
    for block in scored:
        lazy = pl.scan_parquet(block.top)
        total, start = lazy.select(pl.len()).collect().item(), 0
        while start < total:
            chunk = lazy.slice(start, rows).collect()
            users = chunk[USER_ID].to_numpy()
            if np.any(np.diff(users) < 0) or (last is not None and users[0] <= last):
                raise RuntimeError(f"{block.top}: the scored rows are not in user id order after user {last}: "
                                   "every user must be served once, by one block")
            if start + chunk.height < total:  # the last user's list may go on in the next rows
                chunk = chunk.head(int(np.searchsorted(users, users[-1])))
                if chunk.height == 0:
                    raise ValueError(f"chunks of {rows} rows cannot hold user {users[-1]}'s whole list")
            start += chunk.height
            last, sent = int(users[chunk.height - 1]), True
            yield chunk
    if not sent:
        yield pl.read_parquet(scored[0].top) if scored else pl.DataFrame(schema={
            **schema.RECOMMENDATION_SCHEMA, **schema.REASON_SCHEMA})


def gate_frame(recs: pl.DataFrame, interactions: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """The columns the ``recommendations`` suite checks. Which listed pairs a user has seen is read from the
    interactions that are listed pairs (a semi-join probing the interactions with the lists' pairs), not
    from every distinct (user, item) of the warehouse: at 30 M interactions that set was 6 GiB and 15 s of the
    publish step's peak, the lists' 3 M pairs a few MB."""
    listed = recs.select(USER_ID, ITEM_ID).unique()
    seen = (interactions.lazy().select(USER_ID, ITEM_ID).join(listed.lazy(), on=[USER_ID, ITEM_ID], how="semi")
            .unique().with_columns(is_seen=pl.lit(True)).collect())
    known = items.select(ITEM_ID).unique().with_columns(item_known=pl.lit(True))
    return (recs.select(USER_ID, ITEM_ID, "rank", "score", "model", "strategy", "reason_kind", "reason")
            .with_columns(list_length=pl.len().over(USER_ID).cast(pl.Int64))
            .join(seen, on=[USER_ID, ITEM_ID], how="left", maintain_order="left")
            .join(known, on=ITEM_ID, how="left", maintain_order="left")
            .with_columns(pl.col("is_seen").fill_null(False), pl.col("item_known").fill_null(False))
            .with_columns(pl.col("rank").cast(pl.Int64), pl.col("score").cast(pl.Float64)))


def metric_regressions(current: pl.DataFrame, previous: pl.DataFrame | None, tolerance: float,
                       model: str, metric: str = "ndcg", k: int = schema.DEFAULT_K) -> list[str]:
    """Headline metrics of ``model`` that dropped more than ``tolerance`` (relative) since the last publish."""
    if previous is None or previous.height == 0:
        return []
    keys = ["split", "k_shot"]
    # Users' slices only: the item-cold protocol's numbers rest on a few hundred new items and are reported,
    # not gated.
    pick = ((pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("k") == k)
            & pl.col("split").is_in(["warm", "cold"]))
    now = current.filter(pick).select(*keys, now=pl.col("value"))
    before = previous.filter(pick).select(*keys, before=pl.col("value"))
    joined = now.join(before, on=keys, how="inner", nulls_equal=True)
    bad = joined.filter(pl.col("now") < pl.col("before") * (1 - tolerance))
    return [f"{model} {metric}@{k} on {r['split']}" + (f" k={r['k_shot']}" if r["k_shot"] is not None else "")
            + f": {r['now']:.4f} < {r['before']:.4f} - {tolerance:.0%}" for r in bad.iter_rows(named=True)]


def publish_step(settings, run_id: str, run_date: date, snap: Snapshot, model_name: str,
                 scored: list[ScoredBlock], defaults_path: str, metrics_path: str | None,
                 new_items_path: str | None = None, model_path: str | None = None,
                 chunk_rows: int = GATE_CHUNK_ROWS) -> dict:
    """Gate the scored lists (suite + metric regression) and publish recommendations, new items, defaults and
    metrics.

    ``scored``: the blocks of :func:`score_step`, which together must serve every user exactly once;
    ``new_items_path``: what :func:`new_items_step` made of their new-item candidates. The lists are read,
    given their reasons, judged and written to staging about ``chunk_rows`` rows (a few thousand whole users)
    at a time, each chunk with only its users' interactions from the snapshot (sorted by user: a range read):
    memory follows the chunk, not the night (at 100 M interactions the whole night's 50 M rows beside the
    interactions was more than the machine). The suite's results are merged over the chunks
    (:func:`tasks.validate.merge_chunks`: every list whole in one chunk, so uniqueness per user merges as a
    count); nothing is visible until every table is staged, the gate has passed and the night commits."""
    items = pl.read_parquet(snap.path("items"))
    new_items = build_new_items(pl.read_parquet(new_items_path), items, model_name, run_id, run_date) \
        if new_items_path else None
    defaults = pl.read_parquet(defaults_path).select(
        pl.lit(run_date).alias("run_date"), pl.lit(run_id).alias("run_id"), "gender", "age_bucket", ITEM_ID,
        pl.col("rank").cast(pl.Int32), "score", pl.lit(model_name).alias("model"))
    with db.warehouse(settings) as wh:
        metrics = pl.read_parquet(metrics_path).with_columns(run_id=pl.lit(run_id)) if metrics_path else None
        previous_publish = wh.run("publish/last_published_run", {"run_id": run_id})
        params = suite_parameters(wh, settings, run_id, _now())
    previous = None
    if previous_publish:
        previous_path = partition_path(settings.output_dir / "metrics", previous_publish[0][0])
        previous = pl.read_parquet(previous_path) if previous_path.exists() else None

    out = settings.output_dir
    small = {name: frame for name, frame in
             {"segment_defaults": defaults, "new_items": new_items, "metrics": metrics}.items() if frame is not None}
    names = ["recommendations", *small]  # the staged tables, in this order
    for leftover in clear_staging([out / name for name in names]):
        print(f"removed {leftover}: a publish that was killed before it finished left it")
    version = new_version()  # one stamp for the night's tables: one commit marker makes them visible
    writer = PartitionWriter(out / "recommendations", run_date, version)
    staged: list[StagedPartition] = []
    try:
        with progress.activity("judging and staging the lists"):
            gate, tally = _stream_recommendations(settings, writer, scored, snap.path("interactions"), items,
                                                  model_name, run_id, run_date, params, chunk_rows)
        staged.append(writer.close())
        reasons = [f"suite 'recommendations', expectation {o.label}: observed {o.observed_text()}"
                   + (f"; e.g. {o.failing_rows[:2]}" if o.failing_rows else "")
                   for o in gate if not o.success and o.severity == "critical"]
        if metrics is not None:
            reasons += metric_regressions(metrics, previous, settings.metric_tolerance, model_name,
                                          k=min(settings.ks))
        if not reasons:
            staged += [stage_partition(frame, out / name, run_date, version) for name, frame in small.items()]
    except BaseException:
        writer.discard()
        for part in staged:
            shutil.rmtree(part.staging, ignore_errors=True)
        raise
    with db.warehouse(settings) as wh:
        if reasons:
            for part in staged:
                shutil.rmtree(part.staging, ignore_errors=True)
            wh.run("publish/log_publish", {
                "run_id": run_id, "run_date": run_date, "model": model_name, "status": "rejected",
                "reason": "; ".join(reasons), "users": tally["users"], "rows": tally["rows"], "path": None,
                "model_path": model_path})
            raise PublishGateError(
                f"publish gate kept the last good partition for {run_date}: " + "; ".join(reasons))
        paths = dict(zip(names, commit_partitions(staged), strict=True))
        wh.run("publish/log_publish", {
            "run_id": run_id, "run_date": run_date, "model": model_name, "status": "published", "reason": None,
            "users": tally["users"], "rows": tally["rows"], "path": str(paths["recommendations"]),
            "model_path": model_path})
    return {"paths": {k: str(v) for k, v in paths.items()}, **tally,
            "new_items": new_items[ITEM_ID].n_unique() if new_items is not None else 0}


def _stream_recommendations(settings, writer: PartitionWriter, scored: list[ScoredBlock], interactions: Path,
                            items: pl.DataFrame, model_name: str, run_id: str, run_date: date, params: dict,
                            chunk_rows: int) -> tuple[list, dict]:
    """:func:`publish_step`'s pass over the lists: each chunk's published rows built, judged by the
    ``recommendations`` suite and written to ``writer``; the suite's results merged over the chunks, and what
    was written counted (users, rows, users per strategy, rows per reason)."""
    runner, taken = GxRunner(settings), pl.scan_parquet(interactions).select(USER_ID, ITEM_ID)
    judged, nonnull = [], []
    rows, strategies, reasons = 0, Counter(), Counter()
    for chunk in scored_chunks(scored, max(chunk_rows, 2 * settings.top_n)):
        ids = chunk[USER_ID]
        theirs = (taken.filter(pl.col(USER_ID).is_between(ids.min(), ids.max())).collect()
                  if chunk.height else taken.head(0).collect())
        recs = build_recommendations(chunk, theirs, items, model_name, run_id, run_date)
        frame = gate_frame(recs, theirs, items).to_pandas()
        judged.append(suite_outcomes("recommendations", runner.run(
            "recommendations", frame, params, run_id, [USER_ID, "rank"]), settings))
        nonnull.append(frame.count().to_dict())
        writer.write(recs)
        rows += recs.height
        strategies.update(dict(recs.group_by("strategy").agg(pl.col(USER_ID).n_unique()).iter_rows()))
        reasons.update(dict(recs.group_by("reason_kind").len().iter_rows()))
        progress.detail(f"{sum(strategies.values()):,} users' lists judged and staged")
    return merge_chunks(judged, nonnull, whole=USER_ID), {  # every user in one chunk, with one strategy
        "users": sum(strategies.values()), "rows": rows, "strategies": dict(strategies), "reasons": dict(reasons)}


def last_published_blend(wh: db.Warehouse, run_id: str) -> str | None:
    """The blend file (``weights``, see :meth:`models.base.Recommender.tuned_file`) of the model the newest
    other publish served, where that model is a blend and its folder is still there; else None."""
    rows = wh.run("publish/last_published_run", {"run_id": run_id})
    if not rows or not rows[0][2]:
        return None
    tuned = model_class(rows[0][1]).tuned_file(Path(rows[0][2]))
    return str(tuned) if tuned is not None and tuned.exists() else None


def _now():
    return datetime.now(UTC)
