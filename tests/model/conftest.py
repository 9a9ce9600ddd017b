from __future__ import annotations

import polars as pl
import pytest
from model_helpers import featurize, load_synthetic

from recsys.settings import Settings
from tasks.item_text import text_vectors


@pytest.fixture(scope="session")
def small_data(small_synthetic, tmp_path_factory):
    """(train interactions, user_features, item_features, cold user ids) from the 300-user fixture, with the
    pretrained encoder's text vectors (120 titles: about a second, offline)."""
    inter, users, items = load_synthetic(small_synthetic)
    cold = users["user_id"].filter(users["user_id"] % 10 == 0).to_numpy()
    train = inter.filter(~pl.col("user_id").is_in(cold))
    settings = Settings(home=tmp_path_factory.mktemp("encoder-home"))
    uf, itf = featurize(train, users, items, text_vectors(items, settings, log=lambda _: None))
    return train, uf, itf, cold
