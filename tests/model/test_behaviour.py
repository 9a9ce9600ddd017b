"""Behaviour on synthetic data with a planted demographic signal: the models must really use it."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import featurize, fit_model, load_synthetic

from models.registry import build
from tasks.generate import GeneratorConfig, generate
from tasks.metrics import Catalog, bootstrap_indices, ndcg, ranked_lists
from tasks.split import cold_user_split


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    generate(folder, GeneratorConfig(n_users=1000, n_items=300, n_interactions=40_000, seed=5))
    inter, users, items = load_synthetic(folder)
    split = cold_user_split(inter, cold_fraction=0.2, k_shots=(0, 5), seed=5)
    uf, itf = featurize(split.train, users, items)
    return split, uf, itf


def cold_ndcg(model, split, k_shot):
    truth = split.truth[k_shot]
    users = np.sort(truth["user_id"].unique().to_numpy())
    recs = model.recommend(users, n=10, history=split.history[k_shot] if k_shot else None)
    return float(ndcg(ranked_lists(recs, truth, 10, Catalog.from_model(model))).mean())


def test_two_tower_zero_shot_beats_popularity_clearly(planted):
    split, uf, itf = planted
    pop = build("popularity").fit(split.train, uf, itf, seed=1)
    deep = build("two_tower", epochs=15).fit(split.train, uf, itf, seed=1)
    pop_score, deep_score = cold_ndcg(pop, split, 0), cold_ndcg(deep, split, 0)
    assert deep_score > pop_score * 1.10, (deep_score, pop_score)


def test_two_tower_ignores_nothing_it_needs(planted):
    """Shuffling demographics across users must hurt zero-shot quality: the tower relies on them."""
    split, uf, itf = planted
    shuffled = uf.with_columns(uf[c].shuffle(seed=3) for c in ("gender", "age_bucket", "occupation"))
    real = build("two_tower", epochs=15).fit(split.train, uf, itf, seed=1)
    blind = build("two_tower", epochs=15).fit(split.train, shuffled, itf, seed=1)
    assert cold_ndcg(real, split, 0) > cold_ndcg(blind, split, 0) + 0.02


@pytest.mark.parametrize("k_shot", [0, 5])
def test_hybrid_is_not_worse_than_its_best_part_on_held_out_users(planted, k_shot):
    """On cold test users it was never tuned on, the blend is not significantly below any component."""
    split, uf, itf = planted
    hybrid = fit_model("hybrid", split.train, uf, itf, seed=1)
    assert hybrid.tuning, "the hybrid tuned nothing"
    truth = split.truth[k_shot]
    users = np.sort(truth["user_id"].unique().to_numpy())
    history = split.history[k_shot] if k_shot else None

    def per_user(model):
        recs = model.recommend(users, n=10, history=history)
        return ndcg(ranked_lists(recs, truth, 10, Catalog.from_model(model)))

    blend = per_user(hybrid)
    resamples = bootstrap_indices(len(users), 500, seed=0)
    for name, component in hybrid.components.items():
        gap = (blend - per_user(component))[resamples].mean(axis=1)
        assert np.percentile(gap, 97.5) >= 0, (name, k_shot, float(gap.mean()))
    if k_shot == 0:  # CF alone cannot rank users with no history: the blend must not lean on it
        zero = hybrid.tuning["0"]["weights"]
        assert zero["ease"] == 0 and zero["item_knn"] == 0
