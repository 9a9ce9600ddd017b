"""Offline evaluation: every model on every slice (warm, cold zero-shot, cold k-shot), with bootstrap CIs
and the lift over popularity. The metric arithmetic itself lives in :mod:`tasks.metrics`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from models.base import Recommender
from models.ranking import bootstrap_indices, paired_lift
from models.registry import load_many, model_class
from models.serving import Served, serve_together
from models.tiled import use_threads
from recsys import db, progress
from recsys.memory import release_memory
from recsys.schema import ITEM_ID, USER_ID
from tasks.features import FeatureSet, Frames, read_table, store_features
from tasks.metrics import (
    ACCURACY_METRICS,
    ENCODER_ABLATION,
    ITEM_COLD_BASELINES,
    ITEM_COLD_MODELS,
    ITEM_METRICS,
    METRICS,
    USER_BASELINES,
    Catalog,
    aggregate,
    item_to_user_values,
    ranked_lists,
)
from tasks.report import HISTORY_NIGHTS, answer_table, write_report
from tasks.split import (
    WARM_TRUTH_SHARE,
    carve_validation,
    cold_user_split,
    item_cold_split,
    temporal_split,
    user_sample,
)
from tasks.validate import docs_index

# ---------------------------------------------------------------------------------------------------------
# Evaluating models on slices.


@dataclass
class Slice:
    """One evaluation slice: whose lists, with what history, against what truth."""

    split: str  # warm | cold | item_cold
    k_shot: int | None
    truth: pl.DataFrame
    history: pl.DataFrame | None  # None: warm users (their training items are the history) or zero-shot
    excluded_users: int = 0
    new_items: np.ndarray | None = None  # item_cold: the held-out items (truth is what users did with them)

    @property
    def name(self) -> str:
        return self.split if self.k_shot is None else f"{self.split}-k{self.k_shot}"

    def save(self, folder: Path) -> str:
        """Write the slice under ``folder/<name>``; returns the name."""
        where = Path(folder) / self.name
        where.mkdir(parents=True, exist_ok=True)
        self.truth.write_parquet(where / "truth.parquet")
        if self.history is not None:
            self.history.write_parquet(where / "history.parquet")
        if self.new_items is not None:
            pl.DataFrame({ITEM_ID: self.new_items.astype(np.int64)}).write_parquet(where / "new_items.parquet")
        (where / "meta.json").write_text(json.dumps({"split": self.split, "k_shot": self.k_shot,
                                                     "excluded_users": self.excluded_users}))
        return self.name

    @classmethod
    def load(cls, where: Path) -> Slice:
        meta = json.loads((Path(where) / "meta.json").read_text())
        history, new = Path(where) / "history.parquet", Path(where) / "new_items.parquet"
        return cls(meta["split"], meta["k_shot"], pl.read_parquet(Path(where) / "truth.parquet"),
                   pl.read_parquet(history) if history.exists() else None, meta["excluded_users"],
                   pl.read_parquet(new)[ITEM_ID].to_numpy() if new.exists() else None)


# The item-cold protocol: users -> items at these K (nDCG@10, recall@50, HR@50), items -> users at
# ITEMS_TO_USERS_K, each against the baselines (tasks.metrics.ITEM_COLD_BASELINES).
ITEM_COLD_KS = (10, 50)
ITEMS_TO_USERS_K = 100


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
    for s in slices:
        users = np.sort(s.truth[USER_ID].unique().to_numpy())
        if max_users and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
            s = Slice(s.split, s.k_shot, s.truth.filter(pl.col(USER_ID).is_in(users)), s.history,
                      s.excluded_users, s.new_items)
        item_cold = s.new_items is not None
        slice_ks = tuple(sorted(set(ks) | set(ITEM_COLD_KS))) if item_cold else tuple(ks)
        resamples = bootstrap_indices(len(users), n_boot, seed)
        per_model: dict[str, dict[tuple[str, int], np.ndarray]] = {}
        # One blockwise pass for all models: the hybrid reuses its components' scores of each block; for new
        # items, each one's best users among these come out of the same pass.
        with progress.activity(f"scoring {s.split} users" + (f" (k={s.k_shot})" if s.k_shot is not None else "")
                               + f" with {len(models)} models"):
            served = serve_together(models, users, n=max(slice_ks), history=s.history, items=s.new_items,
                                    users_per_item=ITEMS_TO_USERS_K if item_cold else 0)
        for name, model in models.items():
            recs = served[name].top
            catalog = Catalog.from_model(model)
            per_model[name] = {}
            for k in slice_ks:
                lists = ranked_lists(recs, s.truth, k, catalog)
                for metric, fn in METRICS.items():
                    values = fn(lists)
                    per_model[name][(metric, k)] = values
                    value, lo, hi = aggregate(metric, values, resamples, len(catalog.item_ids))
                    rows.append((run_id, s.split, s.k_shot, name, metric, k, value, lo, hi, len(users),
                                 s.excluded_users))
        if item_cold:
            rows += _items_to_users(served, s, seed, n_boot, run_id, comparisons)
        references = ITEM_COLD_BASELINES if item_cold else tuple(dict.fromkeys((baseline, *USER_BASELINES)))
        pairs = [(name, reference, "lift" if reference == baseline else f"lift_over_{reference}")
                 for reference in references if reference in per_model for name in per_model if name != reference]
        pairs += [pair for name, reference in comparisons  # a baseline's pair is made once
                  if (pair := (name, reference, f"lift_over_{reference}")) not in pairs]
        for name, reference, suffix in pairs:
            for k in slice_ks:
                for metric in ACCURACY_METRICS:
                    value, lo, hi = paired_lift(per_model[name][(metric, k)], per_model[reference][(metric, k)],
                                                resamples)
                    rows.append((run_id, s.split, s.k_shot, name, f"{metric}_{suffix}", k, value, lo, hi,
                                 len(users), s.excluded_users))
    return pl.DataFrame(rows, schema=METRIC_COLUMNS, orient="row")


def _items_to_users(served: dict[str, Served], s: Slice, seed: int, n_boot: int, run_id: str,
                    comparisons: tuple[tuple[str, str], ...] = ()) -> list[tuple]:
    """Items -> users on an item-cold slice: per new item, how its true users rank among the evaluated users,
    with bootstrap CIs over items (``n_users`` holds the number of items) and the paired lift over each
    item-cold baseline and each ``comparisons`` reference."""
    truth = s.truth.filter(pl.col(ITEM_ID).is_in(s.new_items))
    n_items = truth[ITEM_ID].n_unique()
    resamples = bootstrap_indices(n_items, n_boot, seed)
    values = {name: item_to_user_values(result.by_item, truth, ITEMS_TO_USERS_K) for name, result in served.items()}
    rows = []
    for name, per_item in values.items():
        for metric in ITEM_METRICS:
            value, lo, hi = aggregate(metric, per_item[metric], resamples, 0)
            rows.append((run_id, s.split, s.k_shot, name, metric, ITEMS_TO_USERS_K, value, lo, hi, n_items, 0))
            # Each reference once: a comparison may name a baseline too (protocol T pairs the hybrid with every model).
            references = dict.fromkeys([*ITEM_COLD_BASELINES, *(ref for model, ref in comparisons if model == name)])
            for reference in references:
                if reference in values and reference != name:
                    value, lo, hi = paired_lift(per_item[metric], values[reference][metric], resamples)
                    rows.append((run_id, s.split, s.k_shot, name, f"{metric}_lift_over_{reference}", ITEMS_TO_USERS_K,
                                 value, lo, hi, n_items, 0))
    return rows


def cold_slices(split) -> list[Slice]:
    return [Slice("cold", k, split.truth[k], split.history[k] if k > 0 else None, split.excluded[k])
            for k in sorted(split.truth)]


def warm_slice(test: pl.DataFrame, train_users: np.ndarray) -> Slice:
    known = test.filter(pl.col(USER_ID).is_in(train_users))
    excluded = test[USER_ID].n_unique() - known[USER_ID].n_unique()
    return Slice("warm", None, known, None, excluded)


# ---------------------------------------------------------------------------------------------------------
# The evaluation run: one training on a fold that hides the cold users and each warm user's latest items.
# Split once and stored (split_step); each model fitted once on the fold (tasks.train.fit_model); each slice
# scored by every model (evaluate_slice); then one write-up (write_evaluation_step). The graph is
# tasks/night.py; the steps hand each other paths, so a task runner can spread the fits and the slices.


@dataclass(frozen=True)
class ItemColdFold:
    """The item-cold protocol's fold, stored: training without the held-out items, its features (the new
    items are in the catalogue with their content and no interaction), and its one slice."""

    train: str
    features: FeatureSet
    slice: str

    @staticmethod
    def models(names: list[str]) -> list[str]:
        """What the fold fits and scores: the night's models and the item-cold baselines."""
        return [*names, *(b for b in (*ITEM_COLD_BASELINES, *ITEM_COLD_MODELS) if b not in names)]


@dataclass(frozen=True)
class EvaluationFold:
    """The evaluation protocol's split, stored: the fold to fit on and its features, the tuning fold carved from
    it (validation users, shaped by RECSYS_TUNING_SHAPE) and its features, and the slices to score; and the
    item-cold fold (None where RECSYS_ITEM_COLD_FRACTION is 0)."""

    folder: str
    features: FeatureSet
    tuning_features: FeatureSet
    slices: tuple[str, ...]
    protocol: dict
    item_cold: ItemColdFold | None = None

    @property
    def train(self) -> str:
        return str(Path(self.folder) / "train.parquet")

    @property
    def tuning(self) -> str:
        """The saved :class:`ValidationFold` the blends are tuned on."""
        return str(Path(self.folder) / "tuning")

    def slice(self, name: str) -> Slice:
        return Slice.load(Path(self.folder) / "slices" / name)

    def exists(self) -> bool:
        names = [*self.slices, *([self.item_cold.slice] if self.item_cold else [])]
        return (Path(self.train).exists() and self.features.exists() and self.tuning_features.exists()
                and (self.item_cold is None
                     or (Path(self.item_cold.train).exists() and self.item_cold.features.exists()))
                and all((Path(self.folder) / "slices" / name / "meta.json").exists() for name in names))


@dataclass(frozen=True)
class SliceMetrics:
    """Every model's metrics on one slice, by path."""

    slice: str
    path: str

    def exists(self) -> bool:
        return Path(self.path).exists()


@dataclass(frozen=True)
class Evaluation:
    """What the evaluation step leaves behind, by path."""

    folder: str
    metrics: str
    report_markdown: str
    report_html: str
    protocol: dict
    carry: dict  # what the production fit takes from the evaluation fold's fits: ``weights``, ``warm_from``
    headline: tuple[dict, ...] = ()  # the report's first table: the published model's answer, a row a question

    def paths(self) -> list[str]:
        """The files and folders this record reads: its metrics and report, the fits production takes over."""
        carried = [self.carry["weights"]] if self.carry["weights"] else []
        return [self.metrics, self.report_html, *carried, *self.carry["warm_from"].values()]

    def exists(self) -> bool:
        return all(Path(p).exists() for p in self.paths())


def tuning_shape(settings) -> dict:
    """:func:`tasks.split.carve_validation`'s shape arguments for the night's tuning fold."""
    window = settings.tuning_shape == "window"
    return {"warm_truth": settings.tuning_shape,
            "warm_truth_share": settings.tuning_window if window else WARM_TRUTH_SHARE}


def split_step(settings, frames: Frames, folder: Path) -> EvaluationFold:
    """Cold users (zero- and k-shot) and warm users (their last 20 % by time), split once and stored.

    Held-out cold test users and each remaining user's latest 20 % as the warm test; what is left is the fold the
    models are fitted on, and from it the tuning fold the blends are tuned on (validation users carved in the
    shape of ``settings.tuning_shape``: by default a window cut in time, :func:`tasks.split.carve_validation`).
    """
    folder = Path(folder)
    interactions = user_sample(frames.interactions, settings.evaluation_max_interactions, settings.seed)
    cold = cold_user_split(interactions, settings.cold_user_fraction, settings.k_shots, settings.seed)
    warm = temporal_split(cold.train, test_share=0.2)
    folder.mkdir(parents=True, exist_ok=True)
    warm.train.write_parquet(folder / "train.parquet")
    tuning = carve_validation(warm.train, settings.validation_user_fraction, settings.seed,
                              **tuning_shape(settings))
    tuning.save(folder / "tuning")
    features = store_features(frames, warm.train, folder / "features")
    tuning_features = store_features(frames, tuning.train, folder / "tuning" / "features")
    train_users = np.sort(warm.train[USER_ID].unique().to_numpy())
    slices = [warm_slice(warm.test, train_users), *cold_slices(cold)]
    item_cold, item_protocol = None, {}
    if settings.item_cold_fraction > 0:
        # Drawn from the evaluation fold's training: the item-cold fold sees the same window of time and users as
        # the other slices, less the held-out items (and its fits are smaller than on everything).
        held = item_cold_split(warm.train, settings.item_cold_fraction, settings.seed, everything=interactions)
        where = folder / "item_cold"
        where.mkdir(parents=True, exist_ok=True)
        held.train.write_parquet(where / "train.parquet")
        item_slice = Slice("item_cold", None, held.truth, None, held.excluded_users, held.new_items)
        item_cold = ItemColdFold(str(where / "train.parquet"), store_features(frames, held.train, where / "features"),
                                 item_slice.save(folder / "slices"))
        item_protocol = {"item_cold_fraction": settings.item_cold_fraction, "new_items": int(len(held.new_items)),
                         "item_cold_truth_interactions": held.truth.height,
                         "item_cold": f"{settings.item_cold_fraction:.0%} of items held out of the evaluation "
                                      f"fold's training entirely; users -> items @{list(ITEM_COLD_KS)}, "
                                      f"items -> users @{ITEMS_TO_USERS_K}, "
                                      f"against {' and '.join(ITEM_COLD_BASELINES)}"}
    protocol = {
        "cold_user_fraction": settings.cold_user_fraction, "cold_users": int(len(cold.cold_users)),
        "k_shots": list(settings.k_shots), "warm": "temporal: last 20% of each warm user's interactions",
        "tuning": tuning.shape, "validation_users": {"cold": int(len(tuning.cold_users)),
                                                      "warm": int(len(tuning.warm_users))},
        "ks": list(settings.ks), "seed": settings.seed, "bootstrap_samples": settings.bootstrap_samples,
        "max_eval_users_per_slice": settings.max_eval_users,
        **sample_protocol(frames.interactions, interactions),
        "train_interactions": warm.train.height, "tuning_train_interactions": tuning.train.height,
        "warm_test_interactions": warm.test.height, **item_protocol,
    }
    return EvaluationFold(str(folder), features, tuning_features, tuple(s.save(folder / "slices") for s in slices),
                          protocol, item_cold)


def sample_protocol(everything: pl.DataFrame, sample: pl.DataFrame) -> dict:
    """What the protocol records of :func:`tasks.split.user_sample`: nothing where every user is evaluated."""
    if sample.height == everything.height:
        return {}
    users, of = sample[USER_ID].n_unique(), everything[USER_ID].n_unique()
    return {"evaluation_sample": f"{users:,} of {of:,} users ({sample.height:,} of {everything.height:,} "
                                 "interactions), the first in a seeded order kept from night to night "
                                 "(RECSYS_EVALUATION_MAX_INTERACTIONS): every fold, fit and slice below is "
                                 "theirs, so the models evaluated learned from fewer users than the "
                                 "published ones, which are fitted on everyone",
            "evaluation_sample_users": users, "evaluation_sample_interactions": sample.height}


def evaluate_slice(settings, run_id: str, fold: EvaluationFold, slice_name: str, models: dict[str, str],
                        folder: str) -> SliceMetrics:
    """Every model in ``models`` (saved fits, by path) on one slice of ``fold``, in one blockwise pass."""
    use_threads(settings.scoring_threads, settings.keep_freed_memory)
    loaded = load_many(models)
    ablation = (ENCODER_ABLATION,) if all(name in loaded for name in ENCODER_ABLATION) else ()
    metrics = evaluate_models(loaded, [fold.slice(slice_name)], settings.ks, settings.seed,
                              settings.bootstrap_samples, run_id=run_id, max_users=settings.max_eval_users,
                              comparisons=ablation)
    del loaded
    release_memory()
    path = Path(folder) / f"metrics-{slice_name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_parquet(path)
    return SliceMetrics(slice_name, str(path))


def write_evaluation_step(settings, run_id: str, fold: EvaluationFold, parts: list[SliceMetrics],
                          fitted: dict[str, str], folder: Path, gate: pl.DataFrame | None = None,
                          published: str | None = None, carry: dict | None = None) -> Evaluation:
    """Store metrics (DuckDB + Parquet), the hybrid's blend and the report (the ``published`` model's answer
    first, beside its earlier nights); name the fits to continue from."""
    folder = Path(folder)
    published = published or settings.publish_model
    metrics = pl.concat([pl.read_parquet(part.path) for part in parts])
    tuning = {name: learned for name, path in fitted.items()
              if (learned := model_class(name).saved_tuning(Path(path))) is not None}
    metrics_path = folder / "metrics.parquet"
    metrics.write_parquet(metrics_path)
    with db.warehouse(settings) as wh:
        store_metrics(wh, run_id, metrics)
        history = metrics_history(wh, run_id, published)
        night = wh.run("runs/run_date", {"run_id": run_id})
    docs = docs_index(settings) if settings.data_docs else None
    answer = answer_table(metrics, published, history, k=min(settings.ks))
    with progress.activity("writing the report"):
        paths = write_report(metrics, folder, run_id, fold.protocol, tuning, k=min(settings.ks), gate=gate,
                             docs=str(docs) if docs and docs.exists() else None, published=published, history=history,
                             night=str(night[0][0]) if night and night[0][0] else "", answer=answer,
                             new_item_min_rate=settings.new_item_min_rate)
    return Evaluation(str(folder), str(metrics_path), str(paths["markdown"]), str(paths["html"]), fold.protocol,
                      carry or {"weights": None, "warm_from": {}}, tuple(answer[0].to_dicts()))


def metrics_history(wh: db.Warehouse, run_id: str, model: str, nights: int = HISTORY_NIGHTS) -> pl.DataFrame:
    """``model``'s headline metrics on the last ``nights`` nights evaluated before ``run_id``, each with its
    outcome (published, rejected by the publish gate with the reason, failed)."""
    return read_table(wh, wh.text("publish/metrics_history"),
                      {"run_id": run_id, "model": model, "nights": nights})


def store_metrics(wh: db.Warehouse, run_id: str, metrics: pl.DataFrame) -> None:
    with wh.registered("metrics_frame", metrics.with_columns(run_id=pl.lit(run_id)).to_arrow()), wh.transaction():
        wh.run("publish/delete_metrics", {"run_id": run_id})
        wh.run("publish/insert_metrics")
