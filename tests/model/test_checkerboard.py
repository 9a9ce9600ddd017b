"""A hand-checkable fixture: a checkerboard where each user's one missing same-parity item is the answer."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import pytest

from models.registry import build

SIZE = 20


def checkerboard():
    """User u has interacted with every item of its parity except item u, which is held out."""
    rows = [(u, i) for u in range(SIZE) for i in range(SIZE) if (u + i) % 2 == 0 and i != u]
    inter = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                          "rating": 1.0, "ts": datetime(2024, 1, 1)})
    uf = pl.DataFrame({"user_id": list(range(SIZE)), "gender": "unknown", "age_bucket": "unknown",
                       "occupation": "unknown", "zip_region": "unknown"})
    itf = pl.DataFrame({"item_id": list(range(SIZE)), "genres": [[]] * SIZE, "release_year": [None] * SIZE},
                       schema_overrides={"genres": pl.List(pl.String), "release_year": pl.Int32})
    return inter, uf, itf


@pytest.mark.parametrize(("name", "params"), [("item_knn", {"neighbours": SIZE, "shrinkage": 0.0}),
                                              ("ease", {"l2": 1.0})])
def test_cf_models_recover_the_held_out_item(name, params):
    inter, uf, itf = checkerboard()
    model = build(name, **params).fit(inter, uf, itf, seed=0)
    top1 = model.recommend(np.arange(SIZE), n=1).sort("user_id")
    assert top1["item_id"].to_list() == list(range(SIZE))


def test_popularity_cannot_solve_it():
    """The fixture is not trivially solved: a model without personalisation gets at most a few right."""
    inter, uf, itf = checkerboard()
    top1 = build("popularity").fit(inter, uf, itf, seed=0).recommend(np.arange(SIZE), n=1).sort("user_id")
    assert (top1["item_id"].to_numpy() == np.arange(SIZE)).sum() <= 2
