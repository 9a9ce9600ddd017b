"""The benchmark's peer (LightFM) behaves as Recommenders on our data: an optional extra."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lightfm", reason="peers are an optional extra: pip install '.[peers]'")

from benchmarks.peers import PEER_CLASSES  # noqa: E402
from models.registry import build  # noqa: E402
from tasks.metrics import Catalog, ndcg, ranked_lists  # noqa: E402
from tasks.split import stratified_split  # noqa: E402


@pytest.mark.parametrize("name", sorted(PEER_CLASSES))
def test_a_peer_learns_the_planted_structure_and_survives_save_and_load(name, small_data, tmp_path):
    train, uf, itf, _ = small_data
    split = stratified_split(train, ratio=0.75, seed=1)
    peer = PEER_CLASSES[name]().fit(split.train, uf, itf, seed=1)
    users = np.sort(split.test["user_id"].unique().to_numpy())
    recs = peer.recommend(users, n=10)
    assert recs.group_by("user_id").len()["len"].max() == 10
    popularity = build("popularity").fit(split.train, uf, itf, seed=1)
    score = float(ndcg(ranked_lists(recs, split.test, 10, Catalog.from_model(peer))).mean())
    base = float(ndcg(ranked_lists(popularity.recommend(users, n=10), split.test, 10,
                                   Catalog.from_model(popularity))).mean())
    assert score > base, (name, score, base)
    again = PEER_CLASSES[name].load(peer.save(tmp_path / name))
    assert again.recommend(users, n=10).equals(recs)
