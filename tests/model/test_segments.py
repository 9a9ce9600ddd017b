"""Segment popularity with a parent segment: a finer segment shrunk towards its coarser one, not towards
everyone, and a user whose finer segment is unknown served by the coarser one."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from models.popularity import shared_rows_ndcg
from models.ranking import ndcg_at_k
from models.registry import build

FINE = ["gender", "age_bucket", "occupation"]
PARENT = ["gender", "age_bucket"]


def fitted(data, **params):
    train, uf, itf, _ = data
    return build("segment_popularity", choose_segment=False, **params).fit(train, uf, itf, seed=0)


def test_a_segment_is_shrunk_towards_its_parent_segment(small_data):
    train, uf, _, _ = small_data
    alpha = 40.0
    model = fitted(small_data, segment=FINE, parent=PARENT, alpha=alpha, parent_alpha=25.0)
    coarse = fitted(small_data, segment=PARENT, alpha=25.0)
    # The closed form, counted here from the interactions: (count_s(i) + alpha p(i | parent(s))) / (n_s + alpha).
    users = train.join(uf.select("user_id", *FINE), on="user_id").drop_nulls(FINE)
    checked = 0
    for (gender, age, occupation), rows in users.group_by(FINE):
        codes = [model.vocab[c].index(str(v)) for c, v in zip(FINE, (gender, age, occupation), strict=True)]
        row = model.segment_scores[np.ravel_multi_index(codes, [len(model.vocab[c]) for c in FINE])]
        parent_row = coarse.segment_scores[np.ravel_multi_index(codes[:2], [len(model.vocab[c]) for c in PARENT])]
        counts = np.zeros(len(model.item_ids))
        np.add.at(counts, np.searchsorted(model.item_ids, rows["item_id"].to_numpy()), 1.0)
        np.testing.assert_allclose(row, (counts + alpha * parent_row) / (counts.sum() + alpha), rtol=1e-5, atol=1e-8)
        checked += 1
    assert checked > 10
    np.testing.assert_allclose(model.segment_scores.sum(axis=1), 1.0, rtol=1e-5)


def test_without_a_parent_a_segment_is_shrunk_towards_everyone(small_data):
    """The flat model is the hierarchy's limit: a parent shrunk infinitely towards global is global."""
    flat = fitted(small_data, segment=FINE, alpha=40.0)
    via_global = fitted(small_data, segment=FINE, parent=PARENT, alpha=40.0, parent_alpha=1e12)
    np.testing.assert_allclose(via_global.segment_scores, flat.segment_scores, rtol=1e-4, atol=1e-9)
    # ... and with a real parent the two differ.
    assert not np.allclose(fitted(small_data, segment=FINE, parent=PARENT, alpha=40.0).segment_scores,
                           flat.segment_scores, rtol=1e-3)


def test_a_user_with_an_unknown_finer_segment_gets_the_parents_ranking(small_data):
    train, uf, itf, cold = small_data
    hidden = uf.with_columns(occupation=pl.when(pl.col("user_id").is_in(cold)).then(None)
                             .otherwise(pl.col("occupation")))
    def fit(**params):
        return build("segment_popularity", choose_segment=False, **params).fit(train, hidden, itf, seed=0)

    model, coarse, flat = fit(segment=FINE, parent=PARENT), fit(segment=PARENT), fit(segment=FINE)
    np.testing.assert_allclose(model.score_users(cold), coarse.score_users(cold), rtol=1e-6)
    assert np.allclose(flat.score_users(cold), flat.global_scores[None, :])  # without a parent: everyone's
    top = model.serve(cold, n=3).top  # and the reason names the coarser segment it was served from
    assert set(top["reason_kind"]) == {"segment"}
    assert not top["reason_segment"].str.contains("occupation").any()
    assert top["reason_segment"].str.starts_with("gender=").all()


def test_the_parent_is_part_of_the_segment(small_data):
    with pytest.raises(ValueError, match="parent"):
        fitted(small_data, segment=PARENT, parent=["occupation"])
    with pytest.raises(ValueError, match="parent"):
        fitted(small_data, segment=PARENT, parent=PARENT)


def test_with_too_few_users_to_tell_the_configured_segment_is_kept(small_data):
    train, uf, itf, _ = small_data  # 270 training users: 54 would be held out, fewer than choose_min_users
    model = build("segment_popularity").fit(train, uf, itf, seed=0)
    assert model.chosen["segment"] == PARENT and model.selection["chosen"] == "as configured"
    assert "choose_min_users" in model.selection["why"]
    np.testing.assert_array_equal(model.segment_scores, fitted(small_data).segment_scores)


def test_held_out_users_sharing_a_row_get_the_ndcg_of_ranking_each_of_them():
    rng = np.random.default_rng(3)
    n_users, n_items = 300, 500
    # Rows with ties (a coarse grid of values), users on 7 of them, truth with explicit zeros stored.
    table = rng.integers(0, 40, size=(9, n_items)).astype(np.float32) / 40
    keys = rng.integers(1, 8, size=n_users)
    truth = sp.random(n_users, n_items, density=0.03, random_state=4, format="csr", dtype=np.float32)
    truth.data[::5] = 0.0
    dense = ndcg_at_k(table[keys], truth.toarray() > 0, 10)
    np.testing.assert_array_equal(shared_rows_ndcg(keys, lambda key: table[key], truth, 10), dense)
    assert dense.min() == 0.0 and dense.max() > 0.0
