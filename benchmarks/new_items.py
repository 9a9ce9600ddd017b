"""New items as a downstream user reads them: the published tables of a night in which films lost their ratings.

    recsys benchmark new-items --path ../shared/datasets/ml-100k --out var/benchmarks/new_items.json

MovieLens-100k is loaded by the product's own ingest into a throwaway home; then a seeded ``share`` of the
films with at least ``min_ratings`` ratings lose every rating (they stay in the catalogue with their title,
genres and date: new films, as the night sees them), and the whole train-and-publish flow runs. What is
read is what downstream SQL reads, the published Parquet:

- **lists** (``recommendations``): how many slots hold a new film, and how often the user holding the slot
  really rated it, against what random exposure would give (each slot of film j: raters_j / users);
- **audiences** (``new_items``): how many of the users published for each new film really rated it,
  against the baseline of showing every new film to the ``audience`` most active users.

Targets (issue 29): lists >= 2x random exposure; audiences >= 1.15x the most active users. The held-out
ratings never reach the warehouse; the variant is built in a temporary folder and deleted.

The night runs with ``RECSYS_NEW_ITEM_MIN_RATE`` = ``min_rate`` (default 1): the stripped films are
tonight's arrivals, and no validation window of the past holds an arrival's takes (in this variant the films
never had a rating at any time, so the night's own measured rate is about zero and, with ``--min-rate 0``,
its lists hold none of them).
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.quality import ml100k_dir, write_result
from flows.ingest import ingest_flow
from flows.nightly import train_publish_flow
from recsys import db
from recsys.settings import Settings


def drop_films(interactions: pl.DataFrame, share: float, min_ratings: int, seed: int) -> np.ndarray:
    """A seeded ``share`` of the films rated at least ``min_ratings`` times."""
    counts = interactions.group_by("item_id").len().filter(pl.col("len") >= min_ratings).sort("item_id")
    eligible = counts["item_id"].to_numpy()
    n = max(1, int(round(share * interactions["item_id"].n_unique())))
    return np.sort(np.random.default_rng(seed).choice(eligible, size=min(n, len(eligible)), replace=False))


def list_hits(recommendations: pl.DataFrame, truth: pl.DataFrame, n_users: int) -> dict:
    """New films in the published lists: slots, slots whose user rated the film, and random exposure's
    expected count for the same slots."""
    slots = recommendations.filter(pl.col("item_id").is_in(truth["item_id"].unique().implode()))
    hits = slots.join(truth, on=["user_id", "item_id"], how="semi").height
    raters = truth.group_by("item_id").len()
    expected = float(slots.join(raters, on="item_id", how="left")["len"].fill_null(0).sum()) / max(n_users, 1)
    return {"slots": slots.height, "users_with_a_new_film": slots["user_id"].n_unique(), "hits": hits,
            "expected_at_random": round(expected, 1),
            "ratio_to_random": round(hits / expected, 2) if expected else None}


def audience_hits(new_items: pl.DataFrame, truth: pl.DataFrame, activity: pl.DataFrame, audience: int) -> dict:
    """Real raters among the published audiences of the new films, against the ``audience`` most active users
    (by their ratings in the night's data; ties by user id) shown every new film."""
    films = truth["item_id"].unique().implode()
    published = new_items.filter(pl.col("item_id").is_in(films))
    hits = published.join(truth, on=["user_id", "item_id"], how="semi").height
    heavy = activity.sort(["interactions", "user_id"], descending=[True, False]).head(audience)["user_id"]
    baseline = truth.filter(pl.col("user_id").is_in(heavy.implode())).height
    covered = published["item_id"].n_unique()
    # The baseline over the same films the night published audiences for (all of them, normally).
    baseline_same = truth.filter(pl.col("user_id").is_in(heavy.implode())
                                 & pl.col("item_id").is_in(published["item_id"].unique().implode())).height
    return {"films_with_audiences": covered, "published_pairs": published.height, "raters_reached": hits,
            "most_active_users_reach": baseline_same, "most_active_users_reach_all_films": baseline,
            "ratio_to_most_active": round(hits / baseline_same, 3) if baseline_same else None}


def run(path: Path, share: float, min_ratings: int, seed: int, epochs: int, min_rate: float = 1.0,
        log=print) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recsys-new-items-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, epochs=epochs, new_item_min_rate=min_rate)
        settings.ensure_dirs()
        ingest_flow(settings=settings, source="movielens-100k", path=str(path))
        with db.warehouse(settings) as wh:
            full = wh.sql("select user_id, item_id from interactions").pl()
            dropped = drop_films(full, share, min_ratings, seed)
            wh.execute("delete from interactions where item_id in (select unnest($ids))", {"ids": dropped.tolist()})
        truth = full.filter(pl.col("item_id").is_in(dropped))
        kept = full.filter(~pl.col("item_id").is_in(dropped))
        log(f"  {len(dropped)} films lost their {truth.height:,} ratings; {kept.height:,} ratings stay")
        night = train_publish_flow(settings=settings, run_date=str(date(2026, 12, 2)))
        paths = night["published"]["paths"]
        recommendations = pl.read_parquet(paths["recommendations"])
        new_items = pl.read_parquet(paths["new_items"])
        activity = kept.group_by("user_id").agg(interactions=pl.len())
        n_users = full["user_id"].n_unique()
        audience = int(new_items.group_by("item_id").len()["len"].max() or settings.new_item_users)
        result = {
            "dataset": "MovieLens-100k", "share": share, "min_ratings": min_ratings, "seed": seed,
            "new_item_min_rate": min_rate,
            "films_dropped": int(len(dropped)), "ratings_dropped": truth.height, "users": n_users,
            "list_length": int(recommendations.group_by("user_id").len()["len"].max()),
            "lists": list_hits(recommendations, truth, n_users),
            "audiences": audience_hits(new_items, truth, activity, audience),
            "night_seconds": round(time.perf_counter() - started, 1),
        }
    result["targets"] = {"lists_ratio_to_random_min": 2.0, "audiences_ratio_to_most_active_min": 1.15}
    result["met"] = {"lists": (result["lists"]["ratio_to_random"] or 0) >= 2.0,
                     "audiences": (result["audiences"]["ratio_to_most_active"] or 0) >= 1.15}
    return result


def format_result(r: dict) -> str:
    lists, aud = r["lists"], r["audiences"]
    return "\n".join([
        f"New films on {r['dataset']}: {r['films_dropped']} films (of those with >= {r['min_ratings']} ratings, seed "
        f"{r['seed']}) lost {r['ratings_dropped']:,} ratings; the published tables of the night "
        f"(RECSYS_NEW_ITEM_MIN_RATE {r['new_item_min_rate']}):",
        f"  lists (top {r['list_length']}): {lists['slots']:,} slots hold a new film "
        f"({lists['users_with_a_new_film']:,} "
        f"users); {lists['hits']:,} with a user who rated it, {lists['expected_at_random']:,} expected at random: "
        f"{lists['ratio_to_random']}x (target >= 2x: {'met' if r['met']['lists'] else 'MISSED'})",
        f"  audiences: {aud['published_pairs']:,} users published for {aud['films_with_audiences']} new films reach "
        f"{aud['raters_reached']:,} real raters; the most active users would reach {aud['most_active_users_reach']:,}: "
        f"{aud['ratio_to_most_active']}x (target >= 1.15x: {'met' if r['met']['audiences'] else 'MISSED'})",
        f"  night {r['night_seconds']} s"])


def main(args) -> int:
    result = run(ml100k_dir(args.path), args.share, args.min_ratings, args.seed, args.epochs, args.min_rate)
    return write_result(result, args.out, format_result(result), "")
