"""Offline evaluation: every model on every slice (warm, cold zero-shot, cold k-shot), with bootstrap CIs
and the lift over popularity. The metric arithmetic itself lives in :mod:`tasks.metrics`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from models.base import Recommender, recommend_together
from models.hybrid import Hybrid
from models.ranking import bootstrap_indices, paired_lift
from recsys import db, progress
from tasks.features import Frames, build_features, store_features
from tasks.metrics import (
    ACCURACY_METRICS,
    METRICS,
    Catalog,
    aggregate,
    ranked_lists,
)
from tasks.report import write_report
from tasks.split import carve_validation, cold_user_split, temporal_split
from tasks.train import fit_models, hybrid_weights, save_warm_starts
from tasks.validate import docs_index

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
    comparisons: tuple[tuple[str, str], ...] = (),
) -> pl.DataFrame:
    """Every metric at every K for every model on every slice, plus lift over ``baseline``.

    ``comparisons``: (model, reference) pairs that also get the paired lift of model over reference, as
    metric ``<metric>_lift_over_<reference>`` (an ablation: the hybrid over the hybrid without a component).

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
        progress.doing(f"scoring {s.split} users" + (f" (k={s.k_shot})" if s.k_shot is not None else "")
                       + f" with {len(models)} models")
        resamples = bootstrap_indices(len(users), n_boot, seed)
        per_model: dict[str, dict[tuple[str, int], np.ndarray]] = {}
        # One blockwise pass for all models: the hybrid reuses its components' scores of each block.
        all_recs = recommend_together(models, users, n=max_k, history=s.history)
        for name, model in models.items():
            recs = all_recs[name]
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
        pairs = [(name, baseline, "lift") for name in per_model if baseline in per_model and name != baseline]
        pairs += [(name, reference, f"lift_over_{reference}") for name, reference in comparisons]
        for name, reference, suffix in pairs:
            for k in ks:
                for metric in ACCURACY_METRICS:
                    value, lo, hi = paired_lift(per_model[name][(metric, k)], per_model[reference][(metric, k)],
                                                resamples)
                    rows.append((run_id, s.split, s.k_shot, name, f"{metric}_{suffix}", k, value, lo, hi,
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


@dataclass(frozen=True)
class Evaluation:
    """What the evaluation step leaves behind, by path."""

    folder: str
    metrics: str
    report_markdown: str
    report_html: str
    weights: str  # the hybrid's tuned blend (JSON), reused by the production fit
    protocol: dict
    warm_starts: dict[str, str]  # saved evaluation-fold fits the production fit continues from (two-tower)

    def exists(self) -> bool:
        return all(Path(p).exists() for p in (self.metrics, self.report_html, self.weights, *self.warm_starts.values()))

    def hybrid_weights(self) -> dict | None:
        return json.loads(Path(self.weights).read_text()) or None


def evaluate_protocol(frames: Frames, names, settings, run_id: str = "", features_dir: Path | None = None,
                      log=print) -> EvaluationResult:
    """Cold users (zero- and k-shot) and warm users (their last 20 % by time), one fit per model.

    Split once: held-out cold test users, each remaining user's latest 20 % as the warm test, and
    validation users carved from what is left for the hybrid's tuning. Each model is fitted once on the
    rest; the hybrid blends those fits.
    """
    cold = cold_user_split(frames.interactions, settings.cold_user_fraction, settings.k_shots, settings.seed)
    warm = temporal_split(cold.train, test_share=0.2)
    fold = carve_validation(warm.train, settings.validation_user_fraction, settings.seed)
    if features_dir is None:
        user_features, item_features = build_features(frames, fold.train)
    else:  # stored, and read back: the fold's models are fitted on exactly what was stored
        user_features, item_features = store_features(frames, fold.train, features_dir).read()
    fitted = fit_models(names, fold.train, user_features, item_features, settings, validation=fold.cases,
                        fold="evaluation fold", log=log)
    models = {name: fitted[name] for name in names}
    train_users = np.sort(fold.train["user_id"].unique().to_numpy())
    slices = [warm_slice(warm.test, train_users), *cold_slices(cold)]
    metrics = evaluate_models(models, slices, settings.ks, settings.seed, settings.bootstrap_samples, run_id=run_id,
                              max_users=settings.max_eval_users)
    protocol = {
        "cold_user_fraction": settings.cold_user_fraction, "cold_users": int(len(cold.cold_users)),
        "k_shots": list(settings.k_shots), "warm": "temporal: last 20% of each warm user's interactions",
        "validation_users": {"cold": int(len(fold.cold_users)), "warm": int(len(fold.warm_users))},
        "ks": list(settings.ks), "seed": settings.seed, "bootstrap_samples": settings.bootstrap_samples,
        "max_eval_users_per_slice": settings.max_eval_users,
        "train_interactions": fold.train.height, "warm_test_interactions": warm.test.height,
    }
    tuning = {name: m.tuning for name, m in models.items() if isinstance(m, Hybrid)}
    return EvaluationResult(metrics, fitted, protocol, tuning)


def evaluate_step(settings, run_id: str, frames: Frames, names, folder: Path, gate: pl.DataFrame | None = None,
                  log=print) -> Evaluation:
    """Run the evaluation protocol, store metrics (DuckDB + Parquet), the hybrid's blend and the report."""
    folder = Path(folder)
    result = evaluate_protocol(frames, names, settings, run_id=run_id, features_dir=folder / "features", log=log)
    docs = docs_index(settings)
    progress.doing("writing the report")
    paths = write_report(result.metrics, folder, run_id, result.protocol, result.tuning, k=min(settings.ks),
                         gate=gate, docs=str(docs) if docs.exists() else None)
    metrics_path = folder / "metrics.parquet"
    result.metrics.write_parquet(metrics_path)
    weights_path = folder / "hybrid_weights.json"
    weights_path.write_text(json.dumps(hybrid_weights(result.models)))
    warm_starts = save_warm_starts(result.models, folder / "models")
    with db.warehouse(settings) as con:
        store_metrics(con, settings, run_id, result.metrics)
    return Evaluation(str(folder), str(metrics_path), str(paths["markdown"]), str(paths["html"]), str(weights_path),
                      result.protocol, warm_starts)


def store_metrics(con, settings, run_id: str, metrics: pl.DataFrame) -> None:
    con.register("metrics_frame", metrics.with_columns(run_id=pl.lit(run_id)).to_arrow())
    try:
        con.begin()
        db.run(con, settings, "publish/delete_metrics", {"run_id": run_id})
        db.run(con, settings, "publish/insert_metrics")
        con.commit()
    finally:
        con.unregister("metrics_frame")
