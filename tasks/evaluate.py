"""Offline evaluation: metrics at K with bootstrap confidence intervals and lift over popularity.

Every metric is one function with one signature, ``metric(lists: RankedLists) -> np.ndarray``, returning a
value per evaluated user (catalogue coverage, a property of all lists together, returns one value per
list so it can be bootstrapped the same way). Users with no truth items are excluded and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from models.base import Recommender
from models.ranking import ndcg_from_hits

CATALOGUE_METRICS = {"coverage"}


@dataclass
class Catalog:
    """What beyond-accuracy metrics need to know about items (from the training fold)."""

    item_ids: np.ndarray
    popularity: np.ndarray  # training interactions per item
    genres: np.ndarray  # (n_items, n_genres) 0/1
    n_train_users: int

    @classmethod
    def from_model(cls, model: Recommender) -> Catalog:
        return cls(model.item_ids, model.item_popularity, model.item_genres, len(model.user_ids))


@dataclass
class RankedLists:
    """Top-K lists of the evaluated users (users with at least one truth item), aligned row by row."""

    users: np.ndarray  # (U,)
    items: np.ndarray  # (U, K) catalogue indices, -1 where a list is shorter than K
    hits: np.ndarray  # (U, K) bool
    n_relevant: np.ndarray  # (U,)
    catalog: Catalog

    @property
    def k(self) -> int:
        return self.items.shape[1]


def ranked_lists(recs: pl.DataFrame, truth: pl.DataFrame, k: int, catalog: Catalog) -> RankedLists:
    users = np.sort(truth["user_id"].unique().to_numpy())
    n_relevant = truth.group_by("user_id").agg(n=pl.col("item_id").n_unique()).sort("user_id")["n"].to_numpy()
    top = recs.filter((pl.col("rank") <= k) & pl.col("user_id").is_in(users))
    top = top.join(truth.select("user_id", "item_id").unique().with_columns(hit=pl.lit(True)),
                   on=["user_id", "item_id"], how="left").with_columns(pl.col("hit").fill_null(False))
    rows = np.searchsorted(users, top["user_id"].to_numpy())
    cols = top["rank"].to_numpy().astype(np.int64) - 1
    items = np.full((len(users), k), -1, dtype=np.int64)
    hits = np.zeros((len(users), k), dtype=bool)
    items[rows, cols] = np.searchsorted(catalog.item_ids, top["item_id"].to_numpy())
    hits[rows, cols] = top["hit"].to_numpy()
    return RankedLists(users, items, hits, n_relevant.astype(np.int64), catalog)


# ---------------------------------------------------------------------------------------------------------
# Metrics: one function per metric, one signature.


def precision(lists: RankedLists) -> np.ndarray:
    return lists.hits.sum(axis=1) / lists.k


def recall(lists: RankedLists) -> np.ndarray:
    return lists.hits.sum(axis=1) / np.maximum(lists.n_relevant, 1)


def ndcg(lists: RankedLists) -> np.ndarray:
    return ndcg_from_hits(lists.hits.astype(np.float64), lists.n_relevant)


def _precision_at_hits(lists: RankedLists) -> np.ndarray:
    cumulative = np.cumsum(lists.hits, axis=1)
    return (cumulative / np.arange(1, lists.k + 1)[None, :] * lists.hits).sum(axis=1)


def map_at_k(lists: RankedLists) -> np.ndarray:
    """Average precision at K, normalised by min(K, relevant): 1.0 for a perfect list."""
    return _precision_at_hits(lists) / np.maximum(np.minimum(lists.n_relevant, lists.k), 1)


def map_full(lists: RankedLists) -> np.ndarray:
    """Average precision over the top K normalised by all relevant items (Microsoft Recommenders' "MAP")."""
    return _precision_at_hits(lists) / np.maximum(lists.n_relevant, 1)


def hit_rate(lists: RankedLists) -> np.ndarray:
    return lists.hits.any(axis=1).astype(np.float64)


def mrr(lists: RankedLists) -> np.ndarray:
    first = np.argmax(lists.hits, axis=1)
    return np.where(lists.hits.any(axis=1), 1.0 / (first + 1), 0.0)


def _listed(lists: RankedLists) -> tuple[np.ndarray, np.ndarray]:
    valid = lists.items >= 0
    return np.where(valid, lists.items, 0), valid


def novelty(lists: RankedLists) -> np.ndarray:
    """Mean self-information -log2 p(i) of the listed items, p(i) = share of training users with i."""
    items, valid = _listed(lists)
    p = np.maximum(lists.catalog.popularity, 1.0) / max(lists.catalog.n_train_users, 1)
    info = -np.log2(np.minimum(p, 1.0))[items]
    return np.where(valid, info, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def popularity_bias(lists: RankedLists) -> np.ndarray:
    """Average recommendation popularity: mean share of training users who interacted with a listed item."""
    items, valid = _listed(lists)
    share = lists.catalog.popularity / max(lists.catalog.n_train_users, 1)
    return np.where(valid, share[items], 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def diversity(lists: RankedLists) -> np.ndarray:
    """Intra-list diversity: mean pairwise (1 - cosine similarity) of the listed items' genre vectors."""
    items, valid = _listed(lists)
    g = lists.catalog.genres[items] * valid[:, :, None]
    norms = np.linalg.norm(g, axis=2, keepdims=True)
    unit = np.divide(g, norms, out=np.zeros_like(g), where=norms > 0)
    sim = np.einsum("ukg,ulg->ukl", unit, unit)
    n = valid.sum(axis=1)
    pairs = n * (n - 1)
    off_diagonal = sim.sum(axis=(1, 2)) - np.einsum("ukk->u", sim)
    return np.where(pairs > 0, 1.0 - off_diagonal / np.maximum(pairs, 1), 0.0)


def coverage(lists: RankedLists) -> np.ndarray:
    """Catalogue coverage: per user, the listed items as 0/1 rows; aggregated as |union| / catalogue."""
    items, valid = _listed(lists)
    return np.where(valid, items, -1)


METRICS: dict[str, Callable[[RankedLists], np.ndarray]] = {
    "precision": precision, "recall": recall, "ndcg": ndcg, "map_at_k": map_at_k, "map": map_full,
    "hit_rate": hit_rate, "mrr": mrr, "novelty": novelty, "diversity": diversity,
    "popularity_bias": popularity_bias, "coverage": coverage,
}
ACCURACY_METRICS = ("precision", "recall", "ndcg", "map_at_k", "map", "hit_rate", "mrr")


# ---------------------------------------------------------------------------------------------------------
# Aggregation with bootstrap confidence intervals.


def _coverage_value(listed: np.ndarray, n_items: int, rows: np.ndarray | None = None) -> float:
    chosen = listed if rows is None else listed[rows]
    flat = chosen[chosen >= 0]
    return float(len(np.unique(flat)) / max(n_items, 1))


def bootstrap_indices(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


def aggregate(metric: str, values: np.ndarray, resamples: np.ndarray, n_items: int) -> tuple[float, float, float]:
    """(value, 2.5th, 97.5th percentile) over bootstrap resamples of users."""
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    if metric in CATALOGUE_METRICS:
        point = _coverage_value(values, n_items)
        boots = np.array([_coverage_value(values, n_items, rows) for rows in resamples])
    else:
        point = float(values.mean())
        boots = values[resamples].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def paired_lift(model_values: np.ndarray, base_values: np.ndarray, resamples: np.ndarray) -> tuple[float, float, float]:
    """Relative lift mean(model)/mean(baseline) - 1, with a paired bootstrap CI over the same users."""
    base = base_values.mean()
    if len(base_values) == 0 or base <= 0:
        return float("nan"), float("nan"), float("nan")
    point = float(model_values.mean() / base - 1.0)
    boot_base = base_values[resamples].mean(axis=1)
    boot = model_values[resamples].mean(axis=1) / np.where(boot_base > 0, boot_base, np.nan) - 1.0
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------
# Evaluating models on slices.


@dataclass
class Slice:
    """One evaluation slice: whose lists, with what history, against what truth."""

    split: str  # warm | cold
    k_shot: int | None
    truth: pl.DataFrame
    history: pl.DataFrame | None  # None: warm users (their training items are the history) or zero-shot
    excluded_users: int = 0


METRIC_COLUMNS = {"run_id": pl.String, "split": pl.String, "k_shot": pl.Int32, "model": pl.String,
                  "metric": pl.String, "k": pl.Int32, "value": pl.Float64, "ci_low": pl.Float64,
                  "ci_high": pl.Float64, "n_users": pl.Int64, "n_excluded": pl.Int64}


def evaluate_models(
    models: dict[str, Recommender], slices: list[Slice], ks: tuple[int, ...], seed: int, n_boot: int,
    baseline: str = "popularity", run_id: str = "", max_users: int | None = None,
) -> pl.DataFrame:
    """Every metric at every K for every model on every slice, plus lift over ``baseline``.

    ``max_users`` evaluates a seeded random sample of a slice's users (bounded cost at 100k+ users; the
    bootstrap CIs then reflect the sample size).
    """
    rows = []
    max_k = max(ks)
    for s in slices:
        users = np.sort(s.truth["user_id"].unique().to_numpy())
        if max_users and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
            s = Slice(s.split, s.k_shot, s.truth.filter(pl.col("user_id").is_in(users)), s.history,
                      s.excluded_users)
        resamples = bootstrap_indices(len(users), n_boot, seed)
        per_model: dict[str, dict[tuple[str, int], np.ndarray]] = {}
        for name, model in models.items():
            recs = model.recommend(users, n=max_k, history=s.history)
            catalog = Catalog.from_model(model)
            per_model[name] = {}
            for k in ks:
                lists = ranked_lists(recs, s.truth, k, catalog)
                for metric, fn in METRICS.items():
                    values = fn(lists)
                    per_model[name][(metric, k)] = values
                    value, lo, hi = aggregate(metric, values, resamples, len(catalog.item_ids))
                    rows.append((run_id, s.split, s.k_shot, name, metric, k, value, lo, hi, len(users),
                                 s.excluded_users))
        if baseline in per_model:
            for name in per_model:
                if name == baseline:
                    continue
                for k in ks:
                    for metric in ACCURACY_METRICS:
                        value, lo, hi = paired_lift(per_model[name][(metric, k)],
                                                    per_model[baseline][(metric, k)], resamples)
                        rows.append((run_id, s.split, s.k_shot, name, f"{metric}_lift", k, value, lo, hi,
                                     len(users), s.excluded_users))
    return pl.DataFrame(rows, schema=METRIC_COLUMNS, orient="row")


def cold_slices(split) -> list[Slice]:
    return [Slice("cold", k, split.truth[k], split.history[k] if k > 0 else None, split.excluded[k])
            for k in sorted(split.truth)]


def warm_slice(test: pl.DataFrame, train_users: np.ndarray) -> Slice:
    known = test.filter(pl.col("user_id").is_in(train_users))
    excluded = test["user_id"].n_unique() - known["user_id"].n_unique()
    return Slice("warm", None, known, None, excluded)


# ---------------------------------------------------------------------------------------------------------
# The evaluation run: one training on a fold that hides the cold users and each warm user's latest items.


@dataclass
class EvaluationResult:
    metrics: pl.DataFrame
    models: dict[str, Recommender]
    protocol: dict
    tuning: dict


def evaluate_protocol(
    interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, names, settings, run_id: str = "",
    log=print,
) -> EvaluationResult:
    """Cold users (zero- and k-shot) and warm users (their last 20 % by time), one fit per model."""
    from tasks.split import cold_user_split, temporal_split
    from tasks.train import Frames, build_features, train_models

    cold = cold_user_split(interactions, settings.cold_user_fraction, settings.k_shots, settings.seed)
    warm = temporal_split(cold.train, test_share=0.2)
    frames = Frames(interactions, users, items)
    user_features, item_features = build_features(frames, warm.train)
    models = train_models(names, warm.train, user_features, item_features, settings, log=log)
    train_users = np.sort(warm.train["user_id"].unique().to_numpy())
    slices = [warm_slice(warm.test, train_users), *cold_slices(cold)]
    metrics = evaluate_models(models, slices, settings.ks, settings.seed, settings.bootstrap_samples, run_id=run_id,
                              max_users=settings.max_eval_users)
    protocol = {
        "cold_user_fraction": settings.cold_user_fraction, "cold_users": int(len(cold.cold_users)),
        "k_shots": list(settings.k_shots), "warm": "temporal: last 20% of each warm user's interactions",
        "ks": list(settings.ks), "seed": settings.seed, "bootstrap_samples": settings.bootstrap_samples,
        "max_eval_users_per_slice": settings.max_eval_users,
        "train_interactions": warm.train.height, "warm_test_interactions": warm.test.height,
    }
    tuning = {name: m.tuning for name, m in models.items() if hasattr(m, "tuning")}
    return EvaluationResult(metrics, models, protocol, tuning)


def headline(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """nDCG@k per model on warm, cold zero-shot and cold k-shot slices (the report's first table)."""
    view = metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == k))
    view = view.with_columns(slice=pl.when(pl.col("split") == "warm").then(pl.lit("warm"))
                             .otherwise(pl.format("cold k={}", pl.col("k_shot"))))
    return view.select("model", "slice", "value", "ci_low", "ci_high", "n_users")


def evaluate_step(settings, run_id: str, names, log=print) -> dict:
    """Run the evaluation protocol on the warehouse, store metrics (DuckDB + Parquet) and write the report."""
    from recsys import db
    from tasks.report import write_report
    from tasks.train import load_frames

    with db.warehouse(settings) as con:
        frames = load_frames(con)
    result = evaluate_protocol(frames.interactions, frames.users, frames.items, names, settings, run_id=run_id,
                               log=log)
    folder = settings.reports_dir / run_id
    paths = write_report(result.metrics, folder, run_id, result.protocol, result.tuning, k=min(settings.ks))
    metrics_path = folder / "metrics.parquet"
    result.metrics.write_parquet(metrics_path)
    with db.warehouse(settings) as con:
        store_metrics(con, settings, run_id, result.metrics)
    return {"metrics": str(metrics_path), "report_markdown": str(paths["markdown"]),
            "report_html": str(paths["html"]), "protocol": result.protocol}


def store_metrics(con, settings, run_id: str, metrics: pl.DataFrame) -> None:
    from recsys import db

    con.register("metrics_frame", metrics.with_columns(run_id=pl.lit(run_id)).to_arrow())
    try:
        con.begin()
        db.run(con, settings, "publish/delete_metrics", {"run_id": run_id})
        db.run(con, settings, "publish/insert_metrics")
        con.commit()
    finally:
        con.unregister("metrics_frame")
