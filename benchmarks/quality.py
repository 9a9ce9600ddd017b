"""Quality benchmark: protocol W (warm, the Microsoft Recommenders ML-100k protocol: a random split), protocol T
(the night's own shape: the log cut at a moment, what the known users did next, the users first seen after it;
5 cuts), protocol C (cold users),
protocol I (new items: 20 % of the items held out of training entirely, 5 seeds) and protocol Z (what each
demographic tells about a user with no history: protocol C's k=0 users, segment popularity over finer
segments, each shrunk towards gender x age).

    recsys benchmark quality --dataset ml-100k --path ../shared/datasets/ml-100k --out var/benchmarks/q.json
    recsys benchmark quality --protocols i      # new items only

Prints a readable table and writes every number, the protocol, seeds, versions and wall time as JSON.
Targets (checked and reported, never asserted in tests): best warm CF nDCG@10 >= 0.48 on protocol W; on
protocol C a model beating popularity at k=0 with a CI excluding zero, and a hybrid never below popularity.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.peers import INSTALL_HINT, PEER_CLASSES, PEERS, missing_peers
from models.base import Recommender, library_versions
from models.hybrid import Hybrid
from models.registry import build, load_many
from recsys import db
from recsys.errors import ConfigError
from recsys.schema import ITEM_ID, USER_ID
from recsys.settings import Settings
from tasks import ingest, night
from tasks.evaluate import (
    ITEM_COLD_BASELINES,
    ItemColdFold,
    Slice,
    cold_slices,
    evaluate_models,
    tuning_shape,
    warm_slice,
)
from tasks.features import Frames, feature_frames, load_frames, store_features
from tasks.generate import GeneratorConfig, generate
from tasks.item_text import text_vectors
from tasks.metrics import ITEM_METRICS, Catalog, map_full, ndcg, precision, ranked_lists, recall
from tasks.report import strongest_item_baseline
from tasks.sources import movielens_specs, synthetic_specs
from tasks.split import (
    WARM_TRUTH_SHARE,
    ValidationFold,
    carve_validation,
    cold_user_split,
    item_cold_split,
    stratified_split,
    temporal_cut,
)
from tasks.train import components_of

# Microsoft Recommenders, ML-100k, their benchmark notebook (MAP is their full MAP, not MAP@K).
MSR_ML100K = {
    "BiVAE": {"ndcg": 0.475077, "precision": 0.411771, "recall": 0.219145, "map": 0.146126},
    "BPR": {"ndcg": 0.441997, "precision": 0.388229, "recall": 0.212522, "map": 0.132478},
    "LightGCN": {"ndcg": 0.419846, "precision": 0.379626, "recall": 0.144336, "map": 0.088526},
    "NCF": {"ndcg": 0.396118, "precision": 0.347296, "recall": 0.180775, "map": 0.107720},
    "SAR": {"ndcg": 0.382461, "precision": 0.330753, "recall": 0.176385, "map": 0.110591},
}
CF_MODELS = ("item_knn", "ease", "als")
# The ablation of the pretrained encoder: the models that read the items' text vectors, refitted on the same
# splits and seeds without them as "<model>_without_text", paired user by user (protocol C) or item by item
# (protocol I). The hybrid reads text only through its audience model (items nobody has taken are placed by
# it; every other item is scored by components that never read text), so ``hybrid_without_text`` is the
# same blend with the audience model refitted without text, tuned again on the same validation fold (the
# rate at which new items earn list places is measured with that model's probabilities): exact, and no deep
# model is fitted twice. The
# two-tower's own content tower is not ablated here (its rows show what it scores with the encoder on).
TEXT_READERS = ("hybrid", "content_knn", "new_item_audience")


# Validation users of a protocol's tuning fold: the fold is thrown away after tuning, so it can lend many users
# (a blend's gain of 2 % is within the noise of the nightly's 10 % on ML-100k).
TUNING_FOLD_COLD_SHARE = 0.25
TUNING_FOLD_WARM_SHARE = 0.75


def fit_tuned(names: list[str], frames: Frames, train: pl.DataFrame, settings: Settings, label: str = "",
              warm_truth: str = "latest", warm_truth_share: float = WARM_TRUTH_SHARE,
              ablate: str | None = None, ablate_text: bool = False,
              continue_fits: bool = False, tune_als: bool = False,
              last_blend: dict | None = None) -> dict[str, Recommender]:
    """``names`` fitted on ``train`` through the night's graph (:func:`tasks.night.fit_tuned`): a blend's weights
    tuned first on validation users carved from ``train`` (``warm_truth``, ``warm_truth_share``: the shape of the
    warm test they stand for), then every model on all of it with the tuned blend. Each fit starts from scratch
    (the protocols' numbers are a model's), or with ``continue_fits`` continues the tuning fold's fit where a
    model can (the two-tower), as the production fit continues the evaluation fold's: what is published.
    Returns the fitted models, loaded.
    ``ablate``: a component; also returns ``hybrid_without_<it>``, the blend of the other components tuned on
    the same validation users from the same fits (what that component adds). ``ablate_text``: also returns the
    text readers without the pretrained encoder (:func:`without_text`). ``tune_als``: also returns ``als_tuned``
    (:func:`als_tuned_on` the same validation users). ``last_blend``: the blend of the night before (a saved
    hybrid's weights and tuning), which the tuning keeps where this one is not significantly better."""
    with tempfile.TemporaryDirectory(prefix="recsys-quality-") as work:
        folder = Path(work)
        train.write_parquet(folder / "train.parquet")
        feats = store_features(frames, train, folder / "features")
        fold = tuning = tuning_features = None
        if any(components_of(name) for name in names):
            fold = carve_validation(train, max(settings.validation_user_fraction, TUNING_FOLD_COLD_SHARE),
                                    settings.seed, warm_truth=warm_truth, warm_truth_share=warm_truth_share,
                                    warm_share=TUNING_FOLD_WARM_SHARE)
            tuning = str(fold.save(folder / "tuning"))
            tuning_features = store_features(frames, fold.train, folder / "tuning" / "features")
        last = None
        if last_blend is not None:
            last = folder / "last_blend.json"
            last.write_text(json.dumps(last_blend))
        fitted, tuned = night.fit_tuned(night.InProcess(), settings, list(names), str(folder / "train.parquet"),
                                        feats, str(folder / "models"), label, tuning=tuning,
                                        tuning_features=tuning_features, continue_fits=continue_fits,
                                        last_blend=str(last) if last else None)
        models = load_many({name: fit.path for name, fit in fitted.items()})
        tuned_models = (load_many({name: fit.path for name, fit in tuned.items()})
                        if fold is not None and (ablate or ablate_text) else None)  # only the ablations read them
        if ablate and fold is not None:  # a tuning fold (and its features) exists
            uf, itf = tuning_features.read()
            lesser = _without(ablate, tuned_models).use_validation(fold.cases).fit(fold.train, uf, itf,
                                                                                   seed=settings.seed)
            uf, itf = feats.read()
            models[f"hybrid_without_{ablate}"] = _without(ablate, models).use_weights(
                lesser.weights, lesser.tuning).fit(train, uf, itf, seed=settings.seed)
        if ablate_text:
            models.update(without_text(frames, train, settings.seed, models, fold, tuned_models))
        if tune_als and fold is not None:
            models["als_tuned"] = als_tuned_on(fold, frames, train, settings.seed)
    return models


# ALS's hyper-parameters searched on a protocol's own validation users: factors x l2 x alpha (15 iterations).
ALS_GRID = tuple({"factors": f, "regularization": r, "alpha": a} for f in (16, 24, 48, 96)
                 for r in (3.0, 10.0, 30.0, 100.0) for a in (1.0, 4.0, 10.0))


def als_tuned_on(fold: ValidationFold, frames: Frames, train: pl.DataFrame, seed: int) -> Recommender:
    """implicit's ALS with the :data:`ALS_GRID` cell that ranks the tuning ``fold``'s warm validation users' truth
    best (nDCG@10; the first best in grid order), refitted on ``train``: a baseline tuned on the protocol's own
    validation, beside the product's ALS (whose defaults were chosen on protocol W)."""
    warm = fold.cases[-1]
    users = np.sort(warm.truth[USER_ID].unique().to_numpy())
    uf, itf = feature_frames(frames, fold.train)

    def validation_ndcg(params: dict) -> float:
        model = build("als", **params).fit(fold.train, uf, itf, seed=seed)
        return float(ndcg(ranked_lists(model.recommend(users, n=10), warm.truth, 10, Catalog.from_model(model))).mean())

    scores = [validation_ndcg(params) for params in ALS_GRID]
    uf, itf = feature_frames(frames, train)
    return build("als", **ALS_GRID[int(np.argmax(scores))]).fit(train, uf, itf, seed=seed)


def _without(component: str, fitted: dict[str, Recommender]) -> Hybrid:
    """A hybrid of the fitted components but ``component``."""
    params = Hybrid.default_params()
    return build("hybrid", components=[c for c in params["components"] if c != component],
                 new_item_weights={c: w for c, w in params["new_item_weights"].items() if c != component}
                 ).use_components(fitted)


def without_text(frames: Frames, train: pl.DataFrame, seed: int, fitted: dict[str, Recommender],
                 fold=None, tuned: dict[str, Recommender] | None = None) -> dict[str, Recommender]:
    """``<model>_without_text`` for the text readers among ``fitted`` (empty when the encoder is off). The
    hybrid's is tuned again on the tuning ``fold`` with the audience model without text fitted there (its
    ``tuned`` components), so the rate at which it places new items is measured with that audience model's
    probabilities, not borrowed from the one with text."""
    if frames.text_vectors is None:
        return {}
    plain_frames = dataclasses.replace(frames, text_vectors=None)
    uf, itf = feature_frames(plain_frames, train)
    plain = {f"{n}_without_text": build(n).fit(train, uf, itf, seed=seed)
             for n in ("content_knn", "new_item_audience") if n in fitted}
    hybrid = fitted.get("hybrid")
    if hybrid is not None and "new_item_audience_without_text" in plain:
        params = {**hybrid.params, "audience_model": "new_item_audience_without_text"}
        weights, tuning = hybrid.weights, hybrid.tuning
        if fold is not None and tuned is not None and "hybrid" in tuned:
            fold_uf, fold_itf = feature_frames(plain_frames, fold.train)
            audience = build("new_item_audience_without_text").fit(fold.train, fold_uf, fold_itf, seed=seed)
            retuned = build("hybrid", **params).use_components(
                {**tuned["hybrid"].components, "new_item_audience_without_text": audience}).use_validation(
                fold.cases).fit(fold.train, fold_uf, fold_itf, seed=seed)
            weights, tuning = retuned.weights, retuned.tuning
        plain["hybrid_without_text"] = build("hybrid", **params).use_components(
            {**hybrid.components, **plain}).use_weights(weights, tuning).fit(train, uf, itf, seed=seed)
    return plain


def text_comparisons(models: dict[str, Recommender]) -> tuple[tuple[str, str], ...]:
    return tuple((n, f"{n}_without_text") for n in TEXT_READERS if n in models and f"{n}_without_text" in models)


def load_ml100k(path: Path) -> Frames:
    """Read MovieLens-100k through the product's own ingest (into a throwaway warehouse)."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        with db.warehouse(settings) as wh:
            ingest.stage_batch(wh, settings, movielens_specs(path), "benchmark", "movielens-100k")
            ingest.promote_batch(wh, "benchmark")
            return load_frames(wh)


def load_synthetic(seed: int = 42, config: GeneratorConfig | None = None) -> Frames:
    """Generated data (``config``, else the default shape with ``seed``) read through the product's ingest."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        generate(Path(home) / "data", config or GeneratorConfig(seed=seed))
        with db.warehouse(settings) as wh:
            ingest.stage_batch(wh, settings, synthetic_specs(Path(home) / "data"), "benchmark", "synthetic")
            ingest.promote_batch(wh, "benchmark")
            return load_frames(wh)


def fit_peers(names: list[str], frames: Frames, train: pl.DataFrame, seed: int, log) -> dict[str, Recommender]:
    """LightFM fitted on exactly what our models are fitted on (``benchmarks/peers.py``)."""
    uf, itf = feature_frames(frames, train)
    fitted = {}
    for name in names:
        started = time.perf_counter()
        fitted[name] = PEER_CLASSES[name]().fit(train, uf, itf, seed=seed)
        log(f"  fitted {name:20} (peer) in {time.perf_counter() - started:6.1f} s")
    return fitted


def protocol_w(frames: Frames, names, settings: Settings, log, peers: tuple[str, ...] = (),
               continue_fits: bool = False) -> dict:
    split = stratified_split(frames.interactions, ratio=0.75, seed=42, by="user")
    started = time.perf_counter()
    # The hybrid's warm bucket is tuned on validation shaped like this protocol's test: a random quarter of
    # each validation user's interactions (a blend tuned on the latest interactions does not carry over).
    models = {name: model for name, model in fit_tuned(names, frames, split.train, settings, label="protocol W",
                                                       warm_truth="random", warm_truth_share=0.25,
                                                       continue_fits=continue_fits).items()
              if name in names}
    models.update(fit_peers(list(peers), frames, split.train, settings.seed, log))
    results = {}
    users = np.sort(split.test["user_id"].unique().to_numpy())
    for name, model in models.items():
        recs = model.recommend(users, n=10)
        lists = ranked_lists(recs, split.test, 10, Catalog.from_model(model))
        results[name] = {"ndcg": float(ndcg(lists).mean()), "precision": float(precision(lists).mean()),
                         "recall": float(recall(lists).mean()), "map": float(map_full(lists).mean()),
                         "train_seconds": model.meta["training_seconds"]}
    best_cf = max(CF_MODELS, key=lambda n: results.get(n, {}).get("ndcg", -1))
    return {"protocol": "stratified per-user 75/25 random split, seed 42 (python_stratified_split)",
            "test_users": int(len(users)), "results": results, "reference": MSR_ML100K,
            "best_cf": best_cf, "best_cf_ndcg": results.get(best_cf, {}).get("ndcg"),
            "target_best_cf_ndcg": 0.48, "hybrid_tuning": getattr(models.get("hybrid"), "tuning", None),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def over_seeds(metrics: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per (model, metric, ``column``): the mean over seeds of the value and of the per-seed CI bounds, the
    seeds' spread, how many seeds' CIs clear zero, and the mean number of users (items, for items -> users)."""
    return (metrics.group_by("model", "metric", column)
            .agg(value=pl.col("value").mean(), ci_low=pl.col("ci_low").mean(), ci_high=pl.col("ci_high").mean(),
                 seed_std=pl.col("value").std(), seeds_ci_above_zero=(pl.col("ci_low") > 0).sum(),
                 seeds_ci_below_zero=(pl.col("ci_high") < 0).sum(), n_users=pl.col("n_users").mean())
            .sort("metric", "model", column))


def protocol_c(frames: Frames, names, settings: Settings, seeds: list[int], log, peers: tuple[str, ...] = (),
               continue_fits: bool = False) -> dict:
    per_seed = []
    started = time.perf_counter()
    for seed in seeds:
        seeded = settings.model_copy(update={"seed": seed})
        split = cold_user_split(frames.interactions, settings.cold_user_fraction, settings.k_shots, seed)
        ablate = "two_tower" if {"hybrid", "two_tower"} <= set(names) else None  # what the deep model adds
        fitted = fit_tuned(names, frames, split.train, seeded, label=f"protocol C, seed {seed}", ablate=ablate,
                           ablate_text=True, continue_fits=continue_fits)
        models = {name: model for name, model in fitted.items() if name in names or name == f"hybrid_without_{ablate}"
                  or name.removesuffix("_without_text") in names}
        models.update(fit_peers(list(peers), frames, split.train, seed, log))
        comparisons = ((("hybrid", f"hybrid_without_{ablate}"),) if ablate else ()) + text_comparisons(models)
        metrics = evaluate_models(models, cold_slices(split), (10,), seed, settings.bootstrap_samples,
                                  comparisons=comparisons)
        per_seed.append(metrics.with_columns(seed=pl.lit(seed)))
    all_metrics = pl.concat(per_seed)
    table = over_seeds(all_metrics.filter(pl.col("metric").is_in(["ndcg", "ndcg_lift", "coverage"])
                                          | pl.col("metric").str.starts_with("ndcg_lift_over_")), "k_shot")
    ndcg_table = table.filter(pl.col("metric") == "ndcg")
    lift0 = table.filter((pl.col("metric") == "ndcg_lift") & (pl.col("k_shot") == 0))
    winners = lift0.filter((pl.col("ci_low") > 0) & ~pl.col("model").str.ends_with("_without_text"))["model"].to_list()
    pop = dict(ndcg_table.filter(pl.col("model") == "popularity").select("k_shot", "value").iter_rows())
    hyb = dict(ndcg_table.filter(pl.col("model") == "hybrid").select("k_shot", "value").iter_rows())
    below = [k for k in pop if k in hyb and hyb[k] < pop[k]]
    return {"protocol": f"{settings.cold_user_fraction:.0%} of users held out entirely; first k interactions "
                        f"by time revealed as history, the rest are the truth",
            "seeds": seeds, "k_shots": list(settings.k_shots), "table": table.to_dicts(),
            "models_beating_popularity_at_k0_ci_excluding_zero": winners,
            "hybrid_below_popularity_at_k": below,
            "wall_seconds": round(time.perf_counter() - started, 1)}


# Protocol Z's segments: each demographic beyond gender x age, shrunk towards gender x age with these alphas
# (pseudo-interactions of the parent segment), and all four together.
ZERO_SHOT_ALPHAS = (1000.0, 5000.0, 20000.0)
ZERO_SHOT_EXTRA = (("occupation",), ("zip_region",), ("occupation", "zip_region"))


def zero_shot_variants() -> dict[str, tuple[str, dict]]:
    """Protocol Z's models: name -> (model, params)."""
    base = ["gender", "age_bucket"]
    fixed = {"choose_segment": False}
    variants = {"popularity": ("popularity", {}), "gender x age": ("segment_popularity", {"segment": base, **fixed})}
    for extra in ZERO_SHOT_EXTRA:
        for alpha in ZERO_SHOT_ALPHAS:
            variants[f"+{'+'.join(extra)} a={alpha:g}"] = ("segment_popularity", {
                "segment": [*base, *extra], "parent": base, "alpha": alpha, **fixed})
    # The product's model: gender x age unless a finer segment proves itself on held-out training users.
    variants["segment_popularity"] = ("segment_popularity", {})
    return variants


# Where protocol T cuts the log: quantiles of its interaction times (a night is run at each).
T_CUTS = (0.70, 0.75, 0.80, 0.85, 0.90)
T_METRICS = ("ndcg", "recall", "map_at_k")


def t_cuts(n: int) -> tuple[float, ...]:
    """``n`` of :data:`T_CUTS`, spread over them (all five from n >= 5; the middle one for n = 1)."""
    if n >= len(T_CUTS):
        return T_CUTS
    if n <= 1:
        return (T_CUTS[len(T_CUTS) // 2],)
    return tuple(T_CUTS[round(i * (len(T_CUTS) - 1) / (n - 1))] for i in range(n))


def protocol_t(frames: Frames, names, settings: Settings, cuts: tuple[float, ...] | list[float], log,
               peers: tuple[str, ...] = (), continue_fits: bool = False) -> dict:
    """The night's own shape: the log cut at a moment (``cuts``: quantiles of its interaction times), every model
    fitted on what was known then (a blend tuned as the nightly tunes, on the tuning fold of RECSYS_TUNING_SHAPE;
    ``als_tuned``: ALS with its hyper-parameters chosen on the same validation users),
    and scored on what the users known then did next (warm) and on the users first seen after it (cold, their
    first k interactions revealed). Each cut is one night; CIs are per night (bootstrap over users), the table
    averages the nights. Every model is paired against the published one (``hybrid_lift_over_<model>``)."""
    per_cut, tuned = [], []
    started = time.perf_counter()
    last_blend = None  # the cuts are nights in time order: each keeps the blend of the one before unless beaten
    for index, quantile in enumerate(sorted(cuts)):
        split = temporal_cut(frames.interactions, quantile, settings.k_shots)
        seeded = settings.model_copy(update={"seed": index})
        # The baselines of new items too: the known users' next interactions include films nobody had rated.
        fitted = fit_tuned(ItemColdFold.models(list(names)), frames, split.train, seeded,
                           label=f"protocol T, cut at {quantile:.0%}", continue_fits=continue_fits,
                           tune_als="als" in names, last_blend=last_blend if seeded.keep_last_blend else None,
                           **tuning_shape(seeded))
        if "hybrid" in fitted:
            last_blend = {"weights": fitted["hybrid"].weights, "tuning": fitted["hybrid"].tuning}
        models = {name: model for name, model in fitted.items() if name in (*names, "als_tuned")}
        record = {"cut": quantile}
        if "als_tuned" in fitted:
            record["als_tuned"] = fitted["als_tuned"].params
        warm = fitted["hybrid"].tuning.get("warm") if "hybrid" in fitted else None
        if warm:
            record["warm"] = {key: warm[key] for key in ("users", "weights", "chosen", "ndcg_components", "last_night")
                              if key in warm}
        tuned.append(record)
        models.update(fit_peers(list(peers), frames, split.train, index, log))
        new = new_items_after(split)
        log(f"  protocol T, cut at {quantile:.0%} of the log ({split.cut}): {split.train.height:,} interactions "
            f"known, {split.warm.height:,} next ones of {split.warm[USER_ID].n_unique():,} known users "
            f"({new.truth.height:,} with {len(new.new_items):,} items nobody had taken), "
            f"{len(split.cold.cold_users):,} new users")
        train_users = np.sort(split.train[USER_ID].unique().to_numpy())
        comparisons = paired_with_hybrid(models)
        metrics = evaluate_models(models, [warm_slice(split.warm, train_users), *cold_slices(split.cold)], (10,),
                                  index, settings.bootstrap_samples, comparisons=comparisons)
        if len(new.new_items):
            metrics = pl.concat([metrics, evaluate_models(fitted, [new], (10,), index, settings.bootstrap_samples,
                                                          comparisons=paired_with_hybrid(fitted))])
        per_cut.append(metrics.with_columns(seed=pl.lit(index), cut=pl.lit(quantile)))
    all_metrics = pl.concat(per_cut)
    keep = (pl.col("split") != "item_cold") & (
        pl.col("metric").is_in(T_METRICS) | pl.col("metric").is_in([f"{m}_lift" for m in T_METRICS])
        | pl.col("metric").str.starts_with("ndcg_lift_over_"))
    table = over_seeds(all_metrics.filter(keep & (pl.col("k") == 10)), "k_shot")
    new_items = all_metrics.filter((pl.col("split") == "item_cold") & (
        pl.col("metric").str.starts_with("ndcg") | pl.col("metric").str.starts_with("item_ndcg")))
    warm_ndcg = all_metrics.filter((pl.col("split") == "warm") & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    per_night = warm_ndcg.pivot(on="model", index="cut", values="value").sort("cut")
    return {"protocol": "global temporal cut of the log at each of the cuts (quantiles of interaction time): "
                        "train on what was known then; warm = the known users' interactions after it; cold = "
                        "users first seen after it (first k revealed)",
            "cuts": list(cuts), "table": table.to_dicts(), "warm_ndcg_per_cut": per_night.to_dicts(),
            "new_items": over_seeds(new_items, "k").to_dicts(), "tuned": tuned,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def paired_with_hybrid(models: dict) -> tuple[tuple[str, str], ...]:
    """The published model against every other model evaluated beside it (none without a hybrid)."""
    return tuple(("hybrid", name) for name in models if "hybrid" in models and name != "hybrid")


def new_items_after(split) -> Slice:
    """Protocol T's new items: what the known users did next with items nobody had taken before the cut (users ->
    items counts only them, from the whole catalogue; items -> users ranks those users for each)."""
    known = split.train[ITEM_ID].unique().implode()
    truth = split.warm.filter(~pl.col(ITEM_ID).is_in(known))
    return Slice("item_cold", None, truth, None, 0, np.sort(truth[ITEM_ID].unique().to_numpy()))


def format_temporal(t: dict) -> list[str]:
    lines = ["", f"Protocol T (the night's shape: the log cut at {t['cuts']} of its time): @10, mean over cuts "
                 "[mean 95% CI]"]
    cells = {(r["model"], r["metric"], r["k_shot"]): r for r in t["table"]}
    models = sorted({r["model"] for r in t["table"]})
    ks = sorted({r["k_shot"] for r in t["table"] if r["k_shot"] is not None})

    def cell(model, metric, k):
        c = cells.get((model, metric, k))
        return (f"{c['value']:.4f} [{c['ci_low']:.3f},{c['ci_high']:.3f}]" if c else "-").rjust(24)

    lines.append(f"  {'warm: model':24} " + " ".join(f"{m:>24}" for m in ("nDCG", "recall", "MAP")))
    for model in models:
        lines.append(f"  {model:24} " + " ".join(cell(model, m, None) for m in T_METRICS))
    lines.append(f"  {'new users: nDCG':24} " + " ".join(f"{'k=' + str(k):>24}" for k in ks))
    for model in models:
        lines.append(f"  {model:24} " + " ".join(cell(model, "ndcg", k) for k in ks))
    lifts = sorted({r["metric"].removeprefix("ndcg_lift_over_") for r in t["table"]
                    if r["model"] == "hybrid" and r["metric"].startswith("ndcg_lift_over_")})
    for reference in lifts:
        row = [r for r in t["table"] if r["model"] == "hybrid" and r["metric"] == f"ndcg_lift_over_{reference}"]
        lines.append(f"  hybrid over {reference:18} " + "; ".join(
            f"{'warm' if r['k_shot'] is None else 'k=' + str(r['k_shot'])} {r['value']:+.1%} "
            f"[{r['ci_low']:+.1%},{r['ci_high']:+.1%}] {r['seeds_ci_above_zero']}/{len(t['cuts'])}"
            for r in sorted(row, key=lambda r: -1 if r["k_shot"] is None else r["k_shot"])))
    new = {(r["model"], r["metric"], r["k"]): r for r in t.get("new_items", [])}
    if new:
        lines.append("  items nobody had taken before the cut, in the known users' next interactions:")
        lines.append(f"  {'model':24} {'users -> items nDCG@10':>24} {'items -> users nDCG@100':>24}")
        for model in sorted({m for m, _, _ in new}):
            lines.append(f"  {model:24} " + " ".join(
                (f"{c['value']:.4f} [{c['ci_low']:.3f},{c['ci_high']:.3f}]" if (c := new.get((model, metric, k)))
                 else "-").rjust(24) for metric, k in (("ndcg", 10), ("item_ndcg", 100))))
    return lines


def protocol_z(frames: Frames, settings: Settings, seeds: list[int], log) -> dict:
    """What the demographics tell about a new user (protocol C's users at k=0, same seeds and splits):
    segment popularity on gender x age against finer segments that add occupation, zip region
    or both, each shrunk towards its gender x age segment; paired lifts over popularity and over gender x
    age. A finer segment that helps is signal a model reading it could use; one that hurts at every
    shrinkage says the data holds none beyond gender x age at this size."""
    variants = zero_shot_variants()
    compared = [name for name in variants if name not in ("popularity", "gender x age")]
    chosen = []
    per_seed = []
    started = time.perf_counter()
    for seed in seeds:
        split = cold_user_split(frames.interactions, settings.cold_user_fraction, (0,), seed)
        uf, itf = feature_frames(frames, split.train)
        models = {name: build(model, **params).fit(split.train, uf, itf, seed=seed)
                  for name, (model, params) in variants.items()}
        log(f"  protocol Z, seed {seed}: fitted {len(models)} segment models; segment_popularity: "
            f"{models['segment_popularity'].summary()}")
        chosen.append({"seed": seed, **models["segment_popularity"].chosen})
        metrics = evaluate_models(models, cold_slices(split), (10,), seed, settings.bootstrap_samples,
                                  comparisons=tuple((name, "gender x age") for name in compared))
        per_seed.append(metrics.with_columns(seed=pl.lit(seed)))
    table = over_seeds(pl.concat(per_seed).filter(
        pl.col("metric").is_in(["ndcg", "ndcg_lift", "coverage", "ndcg_lift_over_gender x age"])), "k_shot")
    return {"protocol": "protocol C's held-out users at k=0 (no history): demographics only", "seeds": seeds,
            "models": {name: {"model": m, "params": p} for name, (m, p) in variants.items()},
            "segment_popularity_chose": chosen,
            "table": table.to_dicts(), "wall_seconds": round(time.perf_counter() - started, 1)}


def format_zero_shot(z: dict) -> list[str]:
    cells = {(r["model"], r["metric"]): r for r in z["table"]}
    n = len(z["seeds"])

    def lift(c):
        return (f"{c['value']:+.1%} [{c['ci_low']:+.1%},{c['ci_high']:+.1%}] {c['seeds_ci_above_zero']}/{n} up "
                f"{c['seeds_ci_below_zero']}/{n} down") if c else "-"

    lines = ["", f"Protocol Z (what demographics tell at k=0, seeds {z['seeds']}): mean over seeds; lifts paired, "
                 "[mean 95% CI], seeds whose CI is above / below zero",
             f"  {'segments':30} {'nDCG@10':>8} {'coverage':>9}  {'lift over popularity':42} lift over gender x age"]
    for model in z["models"]:
        c = cells.get((model, "ndcg"))
        if c is None:
            continue
        lines.append(f"  {model:30} {c['value']:8.4f} {cells[(model, 'coverage')]['value']:9.1%}  "
                     f"{lift(cells.get((model, 'ndcg_lift'))):42} "
                     f"{lift(cells.get((model, 'ndcg_lift_over_gender x age')))}")
    picks = [" x ".join(c["segment"]) + (f" a={c['alpha']:g}" if c["parent"] else "")
             for c in z["segment_popularity_chose"]]
    lines.append(f"  segment_popularity chose, per seed: {'; '.join(picks)}")
    return lines


def protocol_i(frames: Frames, names, settings: Settings, seeds: list[int], log, continue_fits: bool = False) -> dict:
    """Item cold start: per seed, ``item_cold_fraction`` of the items held out of training entirely; users ->
    items (nDCG@10, recall@50, HR@50 on the new items, from the whole catalogue) and items -> users
    (nDCG@100 over users, per new item), against the baselines (random exposure, genre popularity, genres +
    exact year, the most active users), and each text reader against itself without the encoder."""
    per_seed = []
    started = time.perf_counter()
    models_i = ItemColdFold.models([*names, "new_item_audience"])
    for seed in seeds:
        seeded = settings.model_copy(update={"seed": seed})
        split = item_cold_split(frames.interactions, settings.item_cold_fraction, seed)
        # Tuned on validation shaped like this test: the same share of the training items held out of the
        # fold entirely, what the validation users did with them its window (whether new items earn list
        # places is measured there: models.hybrid.Hybrid._new_item_rates).
        fitted = fit_tuned(models_i, frames, split.train, seeded, label=f"protocol I, seed {seed}",
                           warm_truth="items", warm_truth_share=settings.item_cold_fraction, ablate_text=True,
                           continue_fits=continue_fits)
        models = {n: m for n, m in fitted.items() if n.removesuffix("_without_text") in models_i}
        item_slice = Slice("item_cold", None, split.truth, None, split.excluded_users, split.new_items)
        metrics = evaluate_models(models, [item_slice], (10,), seed, settings.bootstrap_samples,
                                  comparisons=text_comparisons(models))
        per_seed.append(metrics.with_columns(seed=pl.lit(seed)))
    references = (*ITEM_COLD_BASELINES, *(f"{n}_without_text" for n in TEXT_READERS))
    keep = [f"{m}{suffix}" for m in ("ndcg", "recall", "hit_rate", *ITEM_METRICS)
            for suffix in ("", *(f"_lift_over_{b}" for b in references))]
    table = over_seeds(pl.concat(per_seed).filter(pl.col("metric").is_in(keep)), "k")
    return {"protocol": f"{settings.item_cold_fraction:.0%} of items held out of training entirely (their content "
                        "stays in the catalogue); users -> items from the whole catalogue, items -> users over the "
                        "evaluated users", "seeds": seeds, "table": table.to_dicts(),
            "wall_seconds": round(time.perf_counter() - started, 1)}


ITEM_COLUMNS = (("ndcg", 10), ("recall", 50), ("hit_rate", 50), ("item_ndcg", 100))


def format_item_cold(i: dict) -> list[str]:
    lines = ["", f"Protocol I (new items, seeds {i['seeds']}): value [mean 95% CI over seeds]"]
    cells = {(r["model"], r["metric"], r["k"]): r for r in i["table"]}
    header = ["users->items nDCG@10", "recall@50", "HR@50", "items->users nDCG@100"]
    lines.append(f"  {'model':28} " + " ".join(f"{h:>24}" for h in header))
    for model in sorted({r["model"] for r in i["table"]}):
        lines.append(f"  {model:28} " + " ".join(
            (f"{c['value']:.4f} [{c['ci_low']:.3f},{c['ci_high']:.3f}]" if (c := cells.get((model, m, k))) else "-"
             ).rjust(24) for m, k in ITEM_COLUMNS))
    table = pl.DataFrame(i["table"])  # the mean over seeds, as the report's rows of one night
    strongest = {(m, k): strongest_item_baseline(table, m, k) for m, k in (("ndcg", 10), ("item_ndcg", 100))}
    lines.append("  lift over random and over the strongest baseline (" + ", ".join(
        f"{m}@{k}: {b}" for (m, k), b in strongest.items()) + "), and over the same model without the pretrained "
        "encoder (paired, mean of seeds; seeds with CI > 0):")
    for model in sorted({r["model"] for r in i["table"]} - set(ITEM_COLD_BASELINES)):
        parts = []
        for metric, k in (("ndcg", 10), ("item_ndcg", 100)):
            for base in ("random", strongest[(metric, k)], f"{model}_without_text"):
                c = cells.get((model, f"{metric}_lift_over_{base}", k))
                if c:
                    parts.append(f"{metric}@{k} vs {base} {c['value']:+.1%} [{c['ci_low']:+.1%},{c['ci_high']:+.1%}] "
                                 f"{c['seeds_ci_above_zero']}/{len(i['seeds'])}")
        if parts:
            lines.append(f"    {model:28} " + "; ".join(parts))
    return lines


def headline(result: dict, model: str = "hybrid") -> dict[str, tuple[float, float | None]]:
    """The published model's numbers a change is judged by, per protocol: {label: (value, CI half-width or None)}.
    W: nDCG@10 (one split, no CI); T: warm and k = 0 / 5 nDCG@10 (mean over cuts); C: nDCG@10 at every k; I:
    items -> users nDCG@100 (means over seeds)."""
    cells: dict[str, tuple[float, float | None]] = {}
    if "w" in result and model in result["w"]["results"]:
        cells["W nDCG@10"] = (result["w"]["results"][model]["ndcg"], None)
    for key, label, column, metric in (("t", "T", "k_shot", "ndcg"), ("c", "C", "k_shot", "ndcg"),
                                       ("i", "I", "k", "item_ndcg")):
        for r in (result.get(key) or {}).get("table", []):
            if r["model"] != model or r["metric"] != metric:
                continue
            if key == "t" and r[column] not in (None, 0, 5):
                continue
            where = ("warm" if r[column] is None else f"k={r[column]}") if column == "k_shot" else "@100"
            cells[f"{label} {'items->users ' if key == 'i' else ''}{where}"] = (
                r["value"], (r["ci_high"] - r["ci_low"]) / 2)
    return cells


def judge(result: dict, earlier: dict, model: str = "hybrid") -> list[str]:
    """This run against ``earlier`` on every headline both have: the change, and whether it is beyond the earlier
    run's CI (W has none: a change over 1 % counts). Ends with a verdict naming what rose and what fell."""
    now, before = headline(result, model), headline(earlier, model)
    lines = ["", f"Against {earlier.get('generated_at', 'the earlier run')} ({model}; beyond = outside the earlier "
                 "run's 95% CI, or over 1 % where a protocol has none)"]
    rose, fell = [], []
    for label in [label for label in before if label in now]:
        (value, _), (old, half) = now[label], before[label]
        change = value - old
        beyond = abs(change) > (half if half is not None else 0.01 * abs(old))
        lines.append(f"  {label:24} {old:.4f} -> {value:.4f}  {change / old if old else 0.0:+6.1%}"
                     f"{'  beyond' if beyond else ''}")
        if beyond:
            (rose if change > 0 else fell).append(label)
    if rose and fell:
        lines.append(f"  MIXED: lifts {', '.join(rose)} and costs {', '.join(fell)}")
    elif fell:
        lines.append(f"  WORSE on {', '.join(fell)}")
    elif rose:
        lines.append(f"  better on {', '.join(rose)}, nothing worse beyond its CI")
    else:
        lines.append("  no change beyond a CI")
    return lines


def format_tables(result: dict) -> str:
    lines = []
    if "w" in result:
        w = result["w"]
        lines += ["Protocol W (warm, MSR ML-100k protocol): @10",
                  f"  {'model':22} {'nDCG':>8} {'P':>8} {'R':>8} {'MAP':>8}"]
        for name, r in w["results"].items():
            lines.append(f"  {name:22} {r['ndcg']:8.4f} {r['precision']:8.4f} {r['recall']:8.4f} {r['map']:8.4f}")
        for name, r in w["reference"].items():
            lines.append(f"  {'MSR ' + name:22} {r['ndcg']:8.4f} {r['precision']:8.4f} {r['recall']:8.4f} "
                         f"{r['map']:8.4f}")
        status = "met" if (w["best_cf_ndcg"] or 0) >= w["target_best_cf_ndcg"] else "MISSED"
        lines.append(f"  target best CF nDCG@10 >= 0.48: {w['best_cf']} {w['best_cf_ndcg']:.4f} ({status})")
    if "c" in result:
        c = result["c"]
        lines += ["", f"Protocol C (cold users, seeds {c['seeds']}): nDCG@10 [mean 95% CI over seeds]"]
        rows = [r for r in c["table"] if r["metric"] == "ndcg"]
        ks = sorted({r["k_shot"] for r in rows})
        lines.append(f"  {'model':26} " + " ".join(f"{'k=' + str(k):>22}" for k in ks))
        for model in sorted({r["model"] for r in rows}):
            cells = {r["k_shot"]: r for r in rows if r["model"] == model}
            lines.append(f"  {model:26} " + " ".join(
                (f"{cells[k]['value']:.4f} [{cells[k]['ci_low']:.3f},{cells[k]['ci_high']:.3f}]" if k in cells
                 else "-").rjust(22) for k in ks))  # "-": not applicable (ALS cannot rank a user with no items)
        lines.append(f"  beats popularity at k=0 (CI > 0): {c['models_beating_popularity_at_k0_ci_excluding_zero']}")
        coverage = [r for r in c["table"] if r["metric"] == "coverage"]
        if coverage:
            lines.append("  catalogue coverage of the cold users' top-10 lists (share of items listed to anyone):")
            for model in sorted({r["model"] for r in coverage}):
                cells = {r["k_shot"]: r["value"] for r in coverage if r["model"] == model}
                lines.append(f"    {model:24} " + " ".join(f"k={k} {cells[k]:.1%}" for k in ks if k in cells))
        for label, metric, model in (("hybrid's lift over popularity", "ndcg_lift", "hybrid"),
                                     ("what the two-tower adds to the hybrid",
                                      "ndcg_lift_over_hybrid_without_two_tower",
                                      "hybrid"),
                                     ("what the pretrained encoder adds to the hybrid",
                                      "ndcg_lift_over_hybrid_without_text", "hybrid"),
                                     ("what the pretrained encoder adds to content_knn",
                                      "ndcg_lift_over_content_knn_without_text", "content_knn")):
            cells = sorted((r for r in c["table"] if r["metric"] == metric and r["model"] == model),
                           key=lambda r: r["k_shot"])
            if cells:
                lines.append(f"  {label} (paired, mean of seeds; seeds with CI > 0):")
                lines.append("    " + "  ".join(
                    f"k={r['k_shot']} {r['value']:+.1%} [{r['ci_low']:+.1%},{r['ci_high']:+.1%}] "
                    f"{r['seeds_ci_above_zero']}/"
                    f"{len(c['seeds'])}" for r in cells))
        lines.append(f"  hybrid below popularity at k: {c['hybrid_below_popularity_at_k'] or 'never'}")
    if "t" in result:
        lines += format_temporal(result["t"])
    if "i" in result:
        lines += format_item_cold(result["i"])
    if "z" in result:
        lines += format_zero_shot(result["z"])
    return "\n".join(lines)


def run(dataset: str, path: Path | None, seeds: int, names, epochs: int, protocols=("w", "t", "c", "i", "z"), log=print,
        peers: bool = False, continue_fits: bool = False) -> dict:
    started = time.perf_counter()
    missing = missing_peers() if peers else []
    if missing:
        raise ConfigError(f"--peers needs {', '.join(missing)}: {INSTALL_HINT}")
    peer_names = PEERS if peers else ()
    settings = Settings(epochs=epochs, bootstrap_samples=500)
    if dataset == "ml-100k":
        frames = load_ml100k(ml100k_dir(path))
    else:
        frames = load_synthetic()
    names = list(names or settings.models)  # the nightly's models (RECSYS_MODELS)
    result: dict = {"dataset": dataset, "generated_at": datetime.now(UTC).isoformat(), "models": names,
                    "versions": library_versions(), "continue_fits": continue_fits,
                    "settings": settings.model_dump(mode="json", exclude={"sql_dir", "expectations_dir", "home"})}
    frames.text_vectors = text_vectors(frames.items, settings, log=log)
    if "w" in protocols:
        result["w"] = protocol_w(frames, names, settings, log, peer_names, continue_fits)
    if "t" in protocols:
        result["t"] = protocol_t(frames, names, settings, t_cuts(seeds), log, peer_names, continue_fits)
    if "c" in protocols:
        result["c"] = protocol_c(frames, names, settings, list(range(seeds)), log, peer_names, continue_fits)
    if "i" in protocols:
        result["i"] = protocol_i(frames, names, settings, list(range(seeds)), log, continue_fits)
    if "z" in protocols:
        result["z"] = protocol_z(frames, settings, list(range(seeds)), log)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def ml100k_dir(path: str | Path | None) -> Path:
    """The MovieLens-100k folder: ``path``, else the ``ml100k_dir`` setting (RECSYS_ML100K_DIR, else
    ../shared/datasets/ml-100k beside the repository)."""
    return Path(path) if path else Settings().ml100k_dir


def write_result(result: dict, out: str | Path, table: str, footer: str) -> int:
    """A benchmark's JSON to ``out`` and its table (and ``footer``) to stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(table)
    print(f"{footer}JSON: {out}")
    return 0


def main(args) -> int:
    earlier = json.loads(Path(args.against).read_text()) if getattr(args, "against", None) else None
    result = run(args.dataset, Path(args.path) if args.path else None, args.seeds, args.models, args.epochs,
                 protocols=tuple(args.protocols), peers=args.peers,
                 continue_fits=getattr(args, "continue_fits", False))
    table = format_tables(result)
    if earlier is not None:
        judgement = judge(result, earlier)
        result["against"] = {"file": str(args.against), "judgement": judgement[1:]}
        table += "\n" + "\n".join(judgement)
    return write_result(result, args.out, table, f"\nwall time {result['wall_seconds']} s; ")
