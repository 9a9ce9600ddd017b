"""Training: frames from the warehouse, features for a training fold, fitted and saved models."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from models.base import Recommender
from models.blend import ValidationCase
from models.hybrid import Hybrid
from models.registry import build, load, load_many, model_class
from models.tiled import use_threads
from recsys import progress
from recsys.settings import Settings
from tasks.features import FeatureSet, Frames, feature_frames
from tasks.split import WARM_TRUTH_SHARE, ValidationFold, carve_validation

# Validation users when the tuning fold is a fold of its own (fit_tuned): it is thrown away after tuning, so
# it can lend many users (a blend's gain of 2 % is within the noise of the nightly's 10 % on ML-100k).
TUNING_FOLD_COLD_SHARE = 0.25
TUNING_FOLD_WARM_SHARE = 0.75


def model_params(name: str, settings: Settings) -> dict:
    """Hyper-parameters that come from settings (the model's ``SETTINGS``; the rest are its defaults)."""
    return {param: getattr(settings, field) for param, field in model_class(name).SETTINGS.items()}


def components_of(name: str) -> list[str]:
    """The fitted models ``name`` composes (a hybrid's components; none for the others)."""
    return model_class(name).needed_components()


def needed(names: list[str] | tuple[str, ...]) -> list[str]:
    """The models to fit for ``names``: a hybrid's components first, each once."""
    order: list[str] = []
    for name in names:
        model_class(name)  # fail fast on an unknown name, before any training
        order += [c for c in components_of(name) if c not in order]
        if name not in order:
            order.append(name)
    return order


def fit_stages(names: list[str] | tuple[str, ...]) -> list[list[str]]:
    """``needed(names)`` in stages whose fits are independent of each other: the single models, then the
    blends of them."""
    order = needed(names)
    stages = [[n for n in order if not components_of(n)], [n for n in order if components_of(n)]]
    return [stage for stage in stages if stage]


def fit_arguments(name: str, fitted: dict[str, FittedModel], validation: str | None = None,
                  weights: str | None = None, warm_from: dict[str, str] | None = None) -> dict:
    """The :func:`fit_model` arguments of ``name`` that differ between models of a fold."""
    blended = components_of(name)
    return {"name": name, "components": {c: fitted[c].path for c in blended} or None,
            "validation": validation if blended else None, "weights": weights if blended else None,
            "warm_from": (warm_from or {}).get(name)}


def fit_one(
    name: str, train: pl.DataFrame, user_features: pl.DataFrame, item_features: pl.DataFrame, settings: Settings, *,
    components: dict[str, Recommender] | None = None, validation: list[ValidationCase] | None = None,
    weights: dict | None = None, warm_from: Recommender | None = None, fold: str = "", log=print,
) -> Recommender:
    """Fit one model on ``train``. A hybrid blends the fitted ``components`` and tunes its weights on
    ``validation`` cases, or takes ``weights`` tuned on another fold (the production fit reuses the
    evaluation fold's). ``warm_from``: another fold's fit of this model to continue from (the two-tower)."""
    started = time.perf_counter()
    label = f" ({fold})" if fold else ""
    model = build(name, **model_params(name, settings))
    if warm_from is not None:
        model.warm_start(warm_from)
    if components_of(name):
        model.compose(components or {}, weights=weights, validation=validation)
    with progress.activity(f"fitting {name}{label}"):
        model.fit(train, user_features, item_features, seed=settings.seed)
    detail = model.summary()
    log(f"  fitted {name:20}{label} in {time.perf_counter() - started:6.1f} s" + (f"  {detail}" if detail else ""))
    return model


def fit_models(
    names: list[str] | tuple[str, ...], train: pl.DataFrame, user_features: pl.DataFrame,
    item_features: pl.DataFrame, settings: Settings, *, validation: list[ValidationCase] | None = None,
    weights: dict | None = None, fold: str = "", log=print,
) -> dict[str, Recommender]:
    """Fit each model once on ``train``, in this process; a hybrid blends the fitted components.
    Returns every fitted model, components included. (The nightly fits each model as a task of its own:
    :func:`fit_model`.)"""
    fitted: dict[str, Recommender] = {}
    for name in needed(names):
        fitted[name] = fit_one(name, train, user_features, item_features, settings, components=fitted,
                               validation=validation, weights=weights, fold=fold, log=log)
    return fitted


@dataclass(frozen=True)
class FittedModel:
    """One saved fit, by path: what a fit task hands on instead of the model."""

    name: str
    path: str

    def exists(self) -> bool:
        return (Path(self.path) / "params.json").exists()


def fit_model(settings: Settings, name: str, train: str, features: FeatureSet, folder: str, fold: str,
             components: dict[str, str] | None = None, validation: str | None = None, weights: str | None = None,
             warm_from: str | None = None) -> FittedModel:
    """Fit one model from files and save it under ``folder/name``: the unit of work a task runner spreads.

    ``train``: a Parquet file of interactions; ``components``: saved fits a hybrid blends; ``validation``: a
    saved :class:`ValidationFold` folder to tune on, or ``weights``: a JSON file of weights tuned elsewhere;
    ``warm_from``: a saved fit of this model to continue from."""
    use_threads(settings.scoring_threads)
    user_features, item_features = features.read()
    loaded = load_many(components or {})
    model = fit_one(name, pl.read_parquet(train), user_features, item_features, settings, components=loaded,
                    validation=ValidationFold.load_cases(validation) if validation else None,
                    weights=json.loads(Path(weights).read_text()) if weights else None,
                    warm_from=load(Path(warm_from)) if warm_from else None, fold=fold)
    saved = FittedModel(name, str(model.save(Path(folder) / name)))
    del model, loaded
    release_memory()
    return saved


def release_memory() -> None:
    """Free a task's models before the next task loads its own. Keras models are reference cycles (layers and
    their graph point at each other), which reference counting never frees: without a collection here, a
    two-tower and what it holds (its training histories: 160 MB at 20 M interactions) would stay until the
    cyclic GC happened to run, one per slice or fit.

    What survives the collection (the libraries' modules, TensorFlow's registries: 600k objects) is then
    frozen out of later collections (``gc.freeze``): a full collection over them cost ~0.4 s a task, ~15 s
    of a small night. Only cycles alive now and dropped later would escape the collector: the flow's own
    records, not a model (the task deleted its models before calling this)."""
    gc.collect()
    gc.freeze()


def hybrid_weights(models: dict[str, Recommender]) -> dict | None:
    """The tuned blend of a fitted set, to hand to another fold's fit."""
    hybrid = models.get("hybrid")
    return {"weights": hybrid.weights, "tuning": hybrid.tuning} if isinstance(hybrid, Hybrid) else None


def fit_tuned(
    names: list[str] | tuple[str, ...], frames: Frames, train: pl.DataFrame, settings: Settings, label: str = "",
    log=print, warm_truth: str = "latest", warm_truth_share: float = WARM_TRUTH_SHARE, ablate: str | None = None,
) -> dict[str, Recommender]:
    """Fit ``names`` on ``train``; a hybrid's weights are tuned first on validation users carved from it.

    Components are then fitted twice (tuning fold, then ``train``): what the nightly does across its
    evaluation and production folds, for callers that have only one fold (the quality benchmark, ``recsys
    train``). The tuning fold is thrown away, so it lends many validation users (TUNING_FOLD_*_SHARE): the
    warm ones lend a share of their interactions to the warm bucket's validation (``warm_truth``,
    ``warm_truth_share``: the shape of the warm test it is for).
    ``ablate``: a component; also returns ``hybrid_without_<it>``, the blend of the other components tuned on
    the same validation users, from the same fits (the ablation of what that component adds).
    """
    weights, lesser = None, None
    if "hybrid" in names:
        fold = carve_validation(train, max(settings.validation_user_fraction, TUNING_FOLD_COLD_SHARE), settings.seed,
                                warm_truth=warm_truth, warm_truth_share=warm_truth_share,
                                warm_share=TUNING_FOLD_WARM_SHARE)
        uf, itf = feature_frames(frames, fold.train)
        tuned = fit_models(["hybrid"], fold.train, uf, itf, settings, validation=fold.cases,
                           fold=f"{label + ', ' if label else ''}hybrid tuning fold", log=log)
        weights = hybrid_weights(tuned)
        if ablate:
            lesser = _without(ablate, tuned).use_validation(fold.cases).fit(fold.train, uf, itf, seed=settings.seed)
    uf, itf = feature_frames(frames, train)
    fitted = fit_models(names, train, uf, itf, settings, weights=weights, fold=label, log=log)
    if lesser is not None:
        fitted[f"hybrid_without_{ablate}"] = _without(ablate, fitted).use_weights(lesser.weights, lesser.tuning).fit(
            train, uf, itf, seed=settings.seed)
    return fitted


def _without(component: str, fitted: dict[str, Recommender]) -> Hybrid:
    """A hybrid of the fitted components but ``component``."""
    params = Hybrid.default_params()
    return build("hybrid", components=[c for c in params["components"] if c != component],
                 new_item_weights={c: w for c, w in params["new_item_weights"].items() if c != component}
                 ).use_components(fitted)


def format_training(paths: dict[str, Path | str]) -> str:
    """A table of saved fits (read from each one's metadata)."""
    lines = [f"  {'model':20} {'users':>8} {'items':>7} {'interactions':>13} {'seconds':>8}  saved to"]
    for name, path in paths.items():
        m = json.loads((Path(path) / "metadata.json").read_text())
        lines.append(f"  {name:20} {m['n_users']:>8,} {m['n_items']:>7,} {m['n_interactions']:>13,} "
                     f"{m['training_seconds']:>8.1f}  {path}")
    return "\n".join(lines)


@dataclass(frozen=True)
class TrainedModels:
    """The production fit, by path: one folder per model."""

    model_dir: str
    models: dict[str, str]

    def exists(self) -> bool:
        return all((Path(p) / "params.json").exists() for p in self.models.values())
