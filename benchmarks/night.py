"""The whole night at scale: the same flows ``recsys nightly`` runs, on synthetic data of ML-20M or a shop's shape.

    python -m benchmarks.night --sizes 1000000 5000000 20000000 --out var/benchmarks/night.json
    python -m benchmarks.night --sizes 5000000 --runners local dask   # the same night, side by side
    python -m benchmarks.night --shape shop --sizes 10000000 30000000 100000000
    python -m benchmarks.night --shape shop --sizes 2000000 --items 100000   # a wide catalogue
    python -m benchmarks.night --shape shop --sizes 30000000 --keep var/nights   # then benchmarks.fits --home
    python -m benchmarks.night --shape shop --sizes 10000000 --later-night 0.01   # and the night after it

Shapes: ``ml20m`` (6,925 users and 1,337 items a million interactions, ML-20M's at 20 M) and ``shop`` (100
interactions a user, 2,000 items a million: 10 M -> 100k users x 20k items, 100 M -> 1 M x 200k; popularity
Zipf, as the generator plants); ``--items`` sets the catalogue whatever the shape.

For each size (and task runner: ``local``, or ``dask`` with a LocalCluster of ``--dask-workers`` processes),
in a fresh home: generate (not timed as part of the night), then the ingest flow and the train-and-publish
flow, each step's wall seconds and the flow process's peak RSS after it; with Dask also the peak RSS of its
largest child process (a Dask worker, or Prefect's temporary API server) and the content hash of what was
published, which must be the local run's. Next to them, in the
same run and on the same files: DuckDB's raw ``read_csv`` of the interactions (the ingest ceiling) and a
numpy float32 SGEMM (the scoring ceiling), against which ingest rows/s and the production EASE's and ALS's scoring
GFLOP/s are reported. With ``--later-night``, the night after it on the same warehouse, as a schedule runs it:
the next day's interactions of the same users and items loaded as an increment, the texts already embedded
(a first night pays for loading everything and embedding every text; the nights after do not), in a fresh process
of its own. Prints a JSON and a table. Targets (20 M): <= 30 min, <= 12 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
from prefect import flow

from benchmarks import write_results
from flows.ingest import ingest_flow
from flows.nightly import train_publish_flow
from models.registry import load
from recsys.errors import PublishGateError
from recsys.progress import peak_rss_gib
from recsys.settings import Settings
from tasks.generate import SYNTHETIC_FILES, GeneratorConfig, generate

# Users and items a million interactions. ML-20M: 138,493 users and 26,744 items rated at 20 M interactions.
SHAPES = {"ml20m": (6_925, 1_337), "shop": (10_000, 2_000)}
FIRST_NIGHT = date(2026, 11, 23)  # the run date the first night publishes under; a later night the day after


def shape(n_interactions: int, name: str = "ml20m", items: int | None = None) -> tuple[int, int]:
    users_per_million, items_per_million = SHAPES[name]
    millions = n_interactions / 1e6
    return max(200, int(users_per_million * millions)), items or max(100, int(items_per_million * millions))


def best_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls of ``work``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    return 2 * n**3 / best_seconds(lambda: a @ a, repeats) / 1e9


def raw_read_csv_rows_per_s(path: Path) -> float:
    """DuckDB's own ``read_csv`` of the file into a table (sniffed types, no checks): the ingest ceiling."""
    with duckdb.connect() as con:
        started = time.perf_counter()
        con.execute("create table raw as select * from read_csv($path)", {"path": str(path)})
        seconds = time.perf_counter() - started
        rows = con.sql("select count(*) from raw").fetchall()[0][0]
    return rows / seconds


@flow(name="benchmark-warm-up")
def warm_up() -> None:
    """Start Prefect's temporary API server before anything is timed (15-60 s on 2 cores)."""


def scoring_gflops(model_dir: Path, model: str = "ease", users: int = 20_000) -> float:
    """Blockwise scoring of the production EASE, its useful flops (:func:`ease_scoring_flops`) a second."""
    fitted = load(model_dir / model)
    ids = fitted.user_ids[:users]
    flops = ease_scoring_flops(fitted, len(ids))
    started = time.perf_counter()
    fitted.recommend(ids, n=50)
    return flops / (time.perf_counter() - started) / 1e9


def ease_scoring_flops(fitted, users: int) -> float:
    """EASE's scoring of its first ``users`` users: a sparse history times the dense weights, 2 flops for each
    known interaction with a fitted item and each fitted item. Past the memory cap (``fitted.known``) the
    other items are not multiplied: counting the whole catalogue and every interaction overstated the rate by
    more than the catalogue's width over the cap (10x at 200k items)."""
    history = fitted.train[:users]
    if fitted.known is not None:
        history = history[:, fitted.known]
    return 2.0 * history.nnz * history.shape[1]


def factor_scoring_gflops(model_dir: Path, model: str = "als", users: int = 20_000) -> tuple[float, float]:
    """The production factor model's whole recommend path (per block: a bound on each user's n-th best from the
    first columns of the catalogue ordered by ceiling, the user vectors times the item factors of the tiles that
    can reach it, seen items masked, top-N of the entries above the bound; :func:`models.ranking.factor_top`) in
    GFLOP/s of the product a dense scoring computes (2 * users * items * factors): the rate at which exact lists
    come, which passes the SGEMM's own where the skipped tiles outweigh the selection; and numpy's SGEMM of the
    same thin shape (users x factors times factors x items), whose output, not its arithmetic, is the cost."""
    fitted = load(model_dir / model)
    ids = fitted.user_ids[:users]
    factors = fitted.solver.item_factors
    flops = 2 * len(ids) * factors.shape[0] * factors.shape[1]
    started = time.perf_counter()
    fitted.recommend(ids, n=50)
    scoring = flops / (time.perf_counter() - started) / 1e9
    left = fitted.solver.user_factors[: min(len(ids), 2048)]
    thin = 2 * left.shape[0] * factors.shape[0] * factors.shape[1] / best_seconds(lambda: left @ factors.T) / 1e9
    return scoring, thin


def two_stage_agreement(model_dir: Path, recommendations: str, users: int = 4000, seed: int = 0) -> dict | None:
    """Where the published hybrid served its catalogue in two stages (:meth:`models.hybrid.Hybrid.candidate_scores`),
    what that changed in the published lists: for a seeded sample of the published users, the same hybrid's
    full ranking of the whole catalogue against their published lists (the users whose list is the same item
    for item and in order; the published rows the full lists hold), and the full ranking's seconds a million
    users. None where the night ranked the whole catalogue."""
    hybrid = load(model_dir / "hybrid")
    depth, widest = int(hybrid.params["retrieval_depth"]), int(hybrid.params["retrieval_min_items"])
    if depth <= 0 or len(hybrid.item_ids) < widest:
        return None
    published = pl.read_parquet(recommendations, columns=["user_id", "item_id", "rank"])
    ids = published["user_id"].unique().sort().to_numpy()
    sample = np.sort(np.random.default_rng(seed).choice(ids, size=min(users, len(ids)), replace=False))
    mine = published.filter(pl.col("user_id").is_in(pl.Series(sample).implode())).sort("user_id", "rank")
    hybrid.params["retrieval_depth"] = 0
    started = time.perf_counter()
    full = hybrid.recommend(sample, n=int(mine["rank"].max())).sort("user_id", "rank")
    seconds = time.perf_counter() - started
    lists = [f.group_by("user_id", maintain_order=True).agg("item_id") for f in (mine, full)]
    both = lists[0].join(lists[1], on="user_id", how="left")
    kept = mine.join(full, on=["user_id", "item_id"], how="semi").height
    return {"users": int(len(sample)), "depth": depth,
            "same_lists": round(float((both["item_id"] == both["item_id_right"]).mean()), 4),
            "rows_kept": round(kept / max(mine.height, 1), 4),
            "full_ranking_s_per_million_users": round(seconds * 1e6 / max(len(sample), 1), 1)}


def published_hash(path: str, rows: int = 1_000_000) -> str:
    """The content of a published partition as CSV in (user_id, rank) order, without its run id: equal for equal
    answers. Read ``rows`` at a time (a 100 M night publishes 50 M rows: ~10 GB of CSV held at once); the
    partition is written in that order, which is checked rather than assumed."""
    digest, lazy = hashlib.sha256(), pl.scan_parquet(path).drop("run_id")
    total, last = lazy.select(pl.len()).collect().item(), None
    for start in range(0, max(total, 1), rows):
        chunk = lazy.slice(start, rows).collect()
        keys = chunk.select("user_id", "rank")
        if not keys.equals(keys.sort("user_id", "rank")) or (
                last is not None and chunk.height and (keys.row(0) <= last)):
            raise ValueError(f"{path}: rows are not in (user_id, rank) order near row {start:,}")
        last = keys.row(-1) if chunk.height else last
        digest.update(chunk.write_csv(include_header=start == 0).encode())
    return digest.hexdigest()[:16]


def timed_night(settings: Settings, landing: Path, run_date: date, models: list[str] | None,
                may_hold: bool = False) -> tuple[dict, dict, list[dict], float, float]:
    """The ingest flow on ``landing``, then the train-and-publish flow for ``run_date``, each timed: what they
    returned, every step's seconds and peak RSS (the ingest's first), and the two flows' seconds. With
    ``may_hold``, a night the publish gate holds (the product's verdict on a later night, exit 5 from the
    command line: the last good partition stays) is a result: ``night["held"]`` says why, its steps one."""
    started = time.perf_counter()
    ingested = ingest_flow(settings=settings, source="synthetic", path=str(landing))
    ingest_seconds = time.perf_counter() - started
    started = time.perf_counter()
    try:
        night = train_publish_flow(settings=settings, run_date=str(run_date), models=models,
                                   ingested=ingested["totals"])
    except PublishGateError as held:
        if not may_hold:
            raise
        night = {"held": str(held), "steps": [{"step": "snapshot to publish (gate held)",
                                               "seconds": round(time.perf_counter() - started, 1),
                                               "peak_rss_gib": round(peak_rss_gib(), 2)}]}
    night_seconds = time.perf_counter() - started
    steps = [{"step": "ingest (stage + gate + promote)", "seconds": round(ingest_seconds, 1), "peak_rss_gib": None},
             *night["steps"]]
    return ingested, night, steps, ingest_seconds, night_seconds


def run_size(n: int, home: Path, epochs: int, models: list[str] | None, runner: str = "local",
             dask_workers: int = 2, shape_name: str = "ml20m", items: int | None = None) -> dict:
    n_users, n_items = shape(n, shape_name, items)
    started = time.perf_counter()
    landing = home / "generated"  # a --path source, outside the landing area
    generate(landing, first_night_data(n_users, n_items, n))
    generate_seconds = time.perf_counter() - started
    raw = raw_read_csv_rows_per_s(landing / SYNTHETIC_FILES["interactions"])
    warm_up()
    settings = Settings(home=home, epochs=epochs, task_runner=runner, dask_workers=dask_workers)
    ingested, night, steps, ingest_seconds, night_seconds = timed_night(settings, landing, FIRST_NIGHT, models)
    rows = ingested["totals"]["rows_read"]
    gemm = sgemm_gflops()
    scoring = scoring_gflops(Path(night["models"].model_dir))
    factor_scoring, thin_gemm = factor_scoring_gflops(Path(night["models"].model_dir))
    agreement = two_stage_agreement(Path(night["models"].model_dir), night["published"]["paths"]["recommendations"])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {"interactions": n, "shape": shape_name, "runner": runner,
            "workers": dask_workers if runner == "dask" else 0, "users": n_users, "items": n_items,
            "generate_seconds": round(generate_seconds, 1), "steps": steps,
            "total_seconds": round(ingest_seconds + night_seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "peak_rss_child_gib": round(children, 2),
            "published_hash": published_hash(night["published"]["paths"]["recommendations"]),
            "two_stage": agreement,
            "ingest_rows_per_s": round(rows / ingest_seconds), "raw_read_csv_rows_per_s": round(raw),
            "ingest_vs_raw": round(rows / ingest_seconds / raw, 3),
            "scoring_gflops": round(scoring, 2), "sgemm_gflops": round(gemm, 1),
            "scoring_vs_sgemm": round(scoring / gemm, 3),
            "als_scoring_gflops": round(factor_scoring, 2), "als_shape_sgemm_gflops": round(thin_gemm, 1),
            "als_scoring_vs_sgemm": round(factor_scoring / gemm, 3)}


def first_night_data(n_users: int, n_items: int, n: int) -> GeneratorConfig:
    """The generator's settings of a benchmark night's data: ``n`` interactions of ``n_users`` and ``n_items``."""
    return GeneratorConfig(n_users=n_users, n_items=n_items, n_interactions=n, seed=1)


def next_day_data(first: GeneratorConfig, share: float) -> GeneratorConfig:
    """The day after ``first``'s window: the same users and items (drawn first from the same seed, so their files
    are byte for byte the first night's and the ingest's ledger skips them) taking about ``share`` of the first
    night's interactions again, all within that one day (each user who takes anything takes at least 5, as the
    generator draws them)."""
    start = date.fromisoformat(first.start) + timedelta(days=first.days)
    return dataclasses.replace(first, n_interactions=max(1, round(first.n_interactions * share)),
                               start=start.isoformat(), days=1)


def run_later_night(n: int, home: Path, epochs: int, models: list[str] | None, runner: str = "local",
                    dask_workers: int = 2, shape_name: str = "ml20m", items: int | None = None,
                    share: float = 0.01) -> dict:
    """The night after :func:`run_size`'s on its warehouse, as a schedule runs it: the next day's interactions
    (:func:`next_day_data`) ingested into the loaded warehouse, then the train-and-publish flow, the item texts
    already embedded. Each step's wall seconds, this process's peak RSS (its own: run in a fresh process) and
    the published hash."""
    n_users, n_items = shape(n, shape_name, items)
    landing = home / "generated-next-day"
    generate(landing, next_day_data(first_night_data(n_users, n_items, n), share))
    warm_up()
    settings = Settings(home=home, epochs=epochs, task_runner=runner, dask_workers=dask_workers)
    ingested, night, steps, ingest_seconds, night_seconds = timed_night(
        settings, landing, FIRST_NIGHT + timedelta(days=1), models, may_hold=True)
    totals = ingested["totals"]
    return {"rows_read": totals["rows_read"], "rows_accepted": totals["rows_accepted"], "steps": steps,
            "total_seconds": round(ingest_seconds + night_seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            **({"gate_held": night["held"], "published_hash": None} if "held" in night else
               {"published_hash": published_hash(night["published"]["paths"]["recommendations"])})}


def format_table(results: list[dict]) -> str:
    names = list(dict.fromkeys(s["step"] for r in results for s in r["steps"]))
    head = f"{'step':34}" + "".join(f"{r['interactions'] / 1e6:>4g} M {r.get('runner', 'local'):>5} s  {'GiB':>5}"
                                    for r in results)
    lines = [head]
    for name in names:
        cells = []
        for r in results:
            s = next((s for s in r["steps"] if s["step"] == name), None)
            rss = "" if s is None or s["peak_rss_gib"] is None else f"{s['peak_rss_gib']:5.1f}"
            cells.append(f"{s['seconds'] if s else float('nan'):11.1f}  {rss:>5}")
        lines.append(f"{name:34}" + "".join(cells))
    for key in ("users", "items", "generate_seconds", "total_seconds", "peak_rss_gib", "peak_rss_child_gib",
                "published_hash", "ingest_vs_raw", "scoring_vs_sgemm", "als_scoring_vs_sgemm"):
        lines.append(f"{key:34}" + "".join(f"{r.get(key, '-')!s:>18}" for r in results))
    for r in results:
        if later := r.get("later_night"):
            steps = ", ".join(f"{s['step'].split(' (')[0]} {s['seconds']:,.1f}" for s in later["steps"])
            outcome = (f"hash {later['published_hash']}" if later.get("published_hash") else
                       f"not published: {later.get('gate_held', 'no hash')}")
            lines.append(f"the night after at {r['interactions'] / 1e6:g} M (+{later['rows_read']:,} rows read): "
                         f"{later['total_seconds']:,.1f} s ({steps}), peak {later['peak_rss_gib']} GiB, {outcome}")
        if t := r.get("two_stage"):
            lines.append(f"served in two stages at {r['interactions'] / 1e6:g} M (top {t['depth']} a component): "
                         f"against the full ranking of {t['users']:,} sampled users, same lists {t['same_lists']:.4f}, "
                         f"published rows kept {t['rows_kept']:.4f} (full ranking "
                         f"{t['full_ranking_s_per_million_users']:,.0f} s a million users)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="ml20m", help="users and items per interaction")
    parser.add_argument("--items", type=int, help="the catalogue's size, whatever the shape")
    parser.add_argument("--epochs", type=int, default=30, help="two-tower epochs (early stopping applies)")
    parser.add_argument("--models", nargs="+", help="models (default: RECSYS_MODELS)")
    parser.add_argument("--runners", nargs="+", choices=["local", "dask"], default=["local"],
                        help="task runners to run each size with, one after the other (RECSYS_TASK_RUNNER)")
    parser.add_argument("--dask-workers", type=int, default=2, help="worker processes of the dask runner's cluster")
    parser.add_argument("--out", default="var/benchmarks/night.json")
    parser.add_argument("--keep", help="keep each night's home under this folder (for benchmarks.fits), "
                                       "not in a temporary folder removed after it")
    parser.add_argument("--later-night", type=float, default=0.0, metavar="SHARE",
                        help="then the night after on the same warehouse, as a schedule runs it: the next day's "
                             "interactions (about SHARE of the first night's; each active user takes at least 5) "
                             "ingested and the night run again, its texts already embedded (default: none)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one size, this process
    parser.add_argument("--next-day", action="store_true", help=argparse.SUPPRESS)  # internal: its night after
    parser.add_argument("--home", help=argparse.SUPPRESS)  # internal: the child's home, made by the parent
    args = parser.parse_args(argv)
    shape_args = (args.epochs, args.models, args.runners[0], args.dask_workers, args.shape, args.items)
    if args.one:  # a child: one night in a fresh process, so its peak RSS is its own
        home = Path(args.home)
        if args.next_day:
            result = run_later_night(args.sizes[0], home, *shape_args, share=args.later_night)
        else:
            result = run_size(args.sizes[0], home, *shape_args)
        Path(args.out).write_text(json.dumps(result))
        return 0
    results = []
    for n in args.sizes:
        for runner in args.runners:
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
            home = tempfile.mkdtemp(prefix=f"night-{n}-{runner}-", dir=args.keep)
            try:
                command = [sys.executable, "-m", "benchmarks.night", "--one", "--sizes", str(n), "--epochs",
                           str(args.epochs), "--runners", runner, "--dask-workers", str(args.dask_workers),
                           "--shape", args.shape, "--home", home,
                           *(["--items", str(args.items)] if args.items else []),
                           *(["--models", *args.models] if args.models else [])]
                result = _child(command)
                if args.later_night > 0:
                    result["later_night"] = _child([*command, "--next-day", "--later-night", str(args.later_night)])
            finally:
                if not args.keep:
                    shutil.rmtree(home, ignore_errors=True)
            results.append({**result, **({"home": home} if args.keep else {})})
            print(json.dumps(results[-1]), flush=True)
    write_results(results, args.out, format_table(results))
    return 0


def _child(command: list[str]) -> dict:
    """One night in a fresh process (its peak RSS its own): what it wrote to ``--out``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([*command, "--out", out.name], check=True)
        return json.loads(Path(out.name).read_text())


if __name__ == "__main__":
    raise SystemExit(main())
