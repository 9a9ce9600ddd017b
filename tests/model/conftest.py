from __future__ import annotations

import polars as pl
import pytest
from model_helpers import featurize, load_synthetic


@pytest.fixture(scope="session")
def small_data(small_synthetic):
    """(train interactions, user_features, item_features, cold user ids) from the 300-user fixture."""
    inter, users, items = load_synthetic(small_synthetic)
    cold = users["user_id"].filter(users["user_id"] % 10 == 0).to_numpy()
    train = inter.filter(~pl.col("user_id").is_in(cold))
    uf, itf = featurize(train, users, items)
    return train, uf, itf, cold
