"""Model names -> classes, and loading a saved model of any kind."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from models.als import ALS
from models.audience import NewItemAudience, NewItemAudienceWithoutText
from models.base import Recommender, SharedFiles
from models.content import Activity, ContentKNN, GenrePopularity, GenreYear, RandomExposure
from models.ease import EASE
from models.hybrid import Hybrid
from models.item_knn import ItemKNN
from models.popularity import Popularity, SegmentPopularity

MODELS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (Popularity, SegmentPopularity, ItemKNN, EASE, ALS, ContentKNN, GenreYear, Activity,
                              GenrePopularity, RandomExposure, NewItemAudience,
                              NewItemAudienceWithoutText, Hybrid)
}
# Models whose module imports a heavy optional library (TensorFlow: seconds to import), loaded on first use.
LAZY_MODELS = {"two_tower": ("models.two_tower", "TwoTower")}


def model_class(name: str) -> type[Recommender]:
    if name in LAZY_MODELS:
        module, attribute = LAZY_MODELS[name]
        return getattr(importlib.import_module(module), attribute)
    try:
        return MODELS[name]
    except KeyError as exc:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available())}") from exc


def available() -> list[str]:
    return [*MODELS, *LAZY_MODELS]


def build(name: str, **params) -> Recommender:
    return model_class(name)(**params)


def load(path: Path) -> Recommender:
    """A saved model; a hybrid's components are loaded with it, sharing what they read alike."""
    return _LoadOnce()(Path(path))


def load_encoding(path: Path) -> Recommender:
    """A saved model's encoding only (catalogue, training histories, features), without its learned state."""
    saved = json.loads((Path(path) / "params.json").read_text())
    return model_class(saved["model"]).load(path, state=False)


def load_many(paths: dict[str, str | Path]) -> dict[str, Recommender]:
    """Load several saved models, each folder once: a hybrid and its components, loaded together, share
    the component objects (so a block of users is scored once for both)."""
    load_once = _LoadOnce()
    return {name: load_once(Path(path)) for name, path in paths.items()}


class _LoadOnce:
    """A loader that reads each folder once. A class, not a recursive closure: a closure that calls itself
    is a reference cycle, and it would hold every model it loaded until the cyclic GC ran."""

    def __init__(self) -> None:
        self.loaded: dict[Path, Recommender] = {}
        self.files = SharedFiles()  # the training matrix and encoding the models of one fold hold alike

    def __call__(self, path: Path) -> Recommender:
        path = Path(path).resolve()
        if path not in self.loaded:
            saved = json.loads((path / "params.json").read_text())
            self.loaded[path] = model_class(saved["model"]).load(path, loader=self, files=self.files)
        return self.loaded[path]
