"""Training: frames from the warehouse, features for a training fold, fitted and saved models."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from models.base import Recommender
from models.blend import ValidationCase
from models.registry import build, load, load_many, model_class
from models.tiled import use_threads
from recsys import progress
from recsys.memory import release_memory
from recsys.settings import Settings
from tasks.features import FeatureSet
from tasks.split import ValidationFold


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
                  weights: str | None = None, warm_from: dict[str, str] | None = None,
                  last_blend: str | None = None) -> dict:
    """The :func:`fit_model` arguments of ``name`` that differ between models of a fold."""
    blended = components_of(name)
    return {"name": name, "components": {c: fitted[c].path for c in blended} or None,
            "validation": validation if blended else None, "weights": weights if blended else None,
            "warm_from": (warm_from or {}).get(name),
            "last_blend": last_blend if blended and validation and last_blend else None}


def fit_one(
    name: str, train: pl.DataFrame | pl.LazyFrame, user_features: pl.DataFrame, item_features: pl.DataFrame,
    settings: Settings, *,
    components: dict[str, Recommender] | None = None, validation: list[ValidationCase] | None = None,
    weights: dict | None = None, warm_from: Recommender | None = None, last_blend: dict | None = None,
    fold: str = "", log=print,
) -> Recommender:
    """Fit one model on ``train`` (a frame, or a scan the fit collects only what it reads of). A hybrid blends
    the fitted ``components`` and tunes its weights on ``validation`` cases (keeping ``last_blend``'s, last
    night's published blend, where tonight's do not beat them significantly), or takes ``weights`` tuned on
    another fold (the production fit reuses the evaluation fold's). ``warm_from``: another fold's fit of this
    model to continue from (the two-tower)."""
    started = time.perf_counter()
    label = f" ({fold})" if fold else ""
    model = build(name, **model_params(name, settings))
    if warm_from is not None:
        model.warm_start(warm_from)
    if components_of(name):
        model.compose(components or {}, weights=weights, validation=validation, last=last_blend)
    with progress.activity(f"fitting {name}{label}"):
        model.fit(train, user_features, item_features, seed=settings.seed)
    detail = model.summary()
    log(f"  fitted {name:20}{label} in {time.perf_counter() - started:6.1f} s" + (f"  {detail}" if detail else ""))
    return model


# Beside a fold's model folders: the files its models share byte for byte (the training matrix, the encoding),
# one copy each, hard-linked into every model's folder (models.base.write_by_content).
MODEL_FILES = ".files"


@dataclass(frozen=True)
class FittedModel:
    """One saved fit, by path: what a fit task hands on instead of the model."""

    name: str
    path: str

    def exists(self) -> bool:
        return (Path(self.path) / "params.json").exists()


def fit_model(settings: Settings, name: str, train: str, features: FeatureSet, folder: str, fold: str,
             components: dict[str, str] | None = None, validation: str | None = None, weights: str | None = None,
             warm_from: str | None = None, last_blend: str | None = None) -> FittedModel:
    """Fit one model from files and save it under ``folder/name``: the unit of work a task runner spreads.

    ``train``: a Parquet file of interactions; ``components``: saved fits a hybrid blends; ``validation``: a
    saved :class:`ValidationFold` folder to tune on, or ``weights``: a JSON file of weights tuned elsewhere;
    ``warm_from``: a saved fit of this model to continue from; ``last_blend``: last night's published blend (a
    JSON file like ``weights``), kept by the tuning where tonight's is not significantly better."""
    use_threads(settings.scoring_threads, settings.keep_freed_memory)
    user_features, item_features = features.read()
    loaded = load_many(components or {})
    model = fit_one(name, pl.scan_parquet(train), user_features, item_features, settings, components=loaded,
                    validation=ValidationFold.load_cases(validation) if validation else None,
                    weights=json.loads(Path(weights).read_text()) if weights else None,
                    warm_from=load(Path(warm_from)) if warm_from else None,
                    last_blend=json.loads(Path(last_blend).read_text()) if last_blend else None, fold=fold)
    saved = FittedModel(name, str(model.save(Path(folder) / name, store=Path(folder) / MODEL_FILES)))
    del model, loaded
    release_memory()
    return saved


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
