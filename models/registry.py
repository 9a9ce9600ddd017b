"""Model names -> classes, and loading a saved model of any kind."""

from __future__ import annotations

import json
from pathlib import Path

from models.base import Recommender
from models.ease import EASE
from models.hybrid import Hybrid
from models.item_knn import ItemKNN
from models.popularity import Popularity, SegmentPopularity

MODELS: dict[str, type[Recommender]] = {
    cls.name: cls for cls in (Popularity, SegmentPopularity, ItemKNN, EASE, Hybrid)
}


def model_class(name: str) -> type[Recommender]:
    if name == "two_tower":  # imported lazily: TensorFlow takes seconds to import
        from models.two_tower import TwoTower

        return TwoTower
    try:
        return MODELS[name]
    except KeyError as exc:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(available())}") from exc


def available() -> list[str]:
    return [*MODELS, "two_tower"]


def build(name: str, **params) -> Recommender:
    return model_class(name)(**params)


def load(path: Path) -> Recommender:
    saved = json.loads((Path(path) / "params.json").read_text())
    return model_class(saved["model"]).load(path)
