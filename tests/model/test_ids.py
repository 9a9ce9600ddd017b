"""A fit's ids: the sorted distinct ids and each row's place among them, whatever range the ids span; and the
encoding one fold's models share."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from models import base
from models.base import distinct_ids, positions_of
from models.registry import build, load_many


@pytest.mark.parametrize("values", [
    np.array([7], dtype=np.int64),
    np.array([5, 3, 5, 9, 3, 3], dtype=np.int64),
    np.array([-4, 2, -4, 0, 11], dtype=np.int64),  # ids below zero
    np.random.default_rng(0).integers(1, 50_000, 200_000),  # a night's users: a narrow range, many rows each
    np.random.default_rng(1).integers(-2**62, 2**62, 10_000),  # hashed ids: searched, not tabled
    np.array([1, 2**40], dtype=np.int64),  # two ids far apart
], ids=["one", "repeats", "negative", "dense", "hashed", "far-apart"])
def test_ids_and_positions_are_numpys_unique_and_search(values):
    expected, inverse = np.unique(values, return_inverse=True)
    ids = distinct_ids(values)
    places = positions_of(ids, values)
    assert ids.dtype == np.int64 and places.dtype == np.int64
    assert np.array_equal(ids, expected) and np.array_equal(places, inverse)
    assert np.array_equal(distinct_ids(values), expected)
    catalogue = np.union1d(expected, expected[:3] + 1)  # more ids than the values use
    assert np.array_equal(positions_of(catalogue, values), np.searchsorted(catalogue, values))


def test_the_table_and_the_search_agree_at_the_edge_of_the_table(monkeypatch):
    values = np.random.default_rng(2).integers(0, 1_000, 5_000)
    ids = distinct_ids(values)
    places = positions_of(ids, values)
    monkeypatch.setattr(base, "ID_TABLE_MAX", 10)  # everything searched now
    searched_ids = distinct_ids(values)
    searched_places = positions_of(searched_ids, values)
    assert np.array_equal(ids, searched_ids) and np.array_equal(places, searched_places)
    assert np.array_equal(positions_of(ids, values), places)


def test_no_ids():
    ids = distinct_ids(np.zeros(0, dtype=np.int64))
    places = positions_of(ids, np.zeros(0, dtype=np.int64))
    assert len(ids) == len(places) == 0


def _encoding_equal(a, b) -> bool:
    for name in a.ENCODING:
        x, y = getattr(a, name), getattr(b, name)
        if sp.issparse(x):
            if x.shape != y.shape or (x != y).nnz:
                return False
        elif isinstance(x, np.ndarray):
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def test_models_fitted_on_the_same_data_share_one_encoding_equal_to_their_own(small_data):
    """A fold's models encode its data once: the next fit on the same interactions and features takes the
    arrays of the last (shared, the same values as its own encoding), mutable values copied; other data (one
    interaction less, one title changed) is encoded afresh."""
    train, uf, itf, _ = small_data
    base.LAST_ENCODING.forget()
    first = build("popularity").fit(train, uf, itf, seed=1)
    assert set(first.ENCODING) <= set(first.__dict__)
    again = build("item_knn").fit(train.reverse(), uf, itf.reverse(), seed=1)  # row order does not matter
    assert again.train is first.train and again.item_ids is first.item_ids and again.tiebreak is first.tiebreak
    assert again.vocab == first.vocab and again.vocab is not first.vocab
    base.LAST_ENCODING.forget()
    fresh = build("item_knn").fit(train, uf, itf, seed=1)
    assert fresh.train is not first.train and _encoding_equal(fresh, again)
    assert np.array_equal(fresh.score_users(fresh.user_ids[:20]), again.score_users(again.user_ids[:20]))
    less = build("popularity").fit(train.slice(1), uf, itf, seed=1)
    assert less.train is not fresh.train and less.train.nnz == fresh.train.nnz - 1
    retitled = itf.with_columns(pl.when(pl.col("item_id") == itf["item_id"][0]).then(pl.lit("Another Title"))
                                .otherwise(pl.col("title")).alias("title"))
    other = build("popularity").fit(train.slice(1), uf, retitled, seed=1)
    assert other.item_tokens is not less.item_tokens and (other.item_tokens != less.item_tokens).nnz


def test_a_training_file_saved_from_the_kept_encoding_loads_as_that_encodings_matrix(small_data, tmp_path):
    """The hybrid's production fit loads its components right after the fits that saved them, in the process
    that keeps their fold's encoding: their training file is that encoding's matrix, not a second copy. The
    same content saved from other data, or loaded once the encoding is let go, is read from the file."""
    train, uf, itf, _ = small_data
    base.LAST_ENCODING.forget()
    fits = {name: build(name).fit(train, uf, itf, seed=1) for name in ("popularity", "item_knn")}
    store = tmp_path / "fold" / ".files"
    paths = {name: model.save(tmp_path / "fold" / name, store=store) for name, model in fits.items()}
    kept = fits["item_knn"].train
    loaded = load_many(paths)
    assert loaded["popularity"].train is kept and loaded["item_knn"].train is kept
    users = fits["item_knn"].user_ids[:25]
    assert loaded["item_knn"].recommend(users, n=10).equals(fits["item_knn"].recommend(users, n=10))

    other = build("popularity").fit(train.slice(1), uf, itf, seed=1)  # now the kept encoding is other data's
    other_path = other.save(tmp_path / "fold" / "other", store=store)
    again = load_many({**paths, "other": other_path})
    assert again["other"].train is other.train
    assert again["item_knn"].train is not kept and again["item_knn"].train is again["popularity"].train
    assert (again["item_knn"].train != kept).nnz == 0 and again["item_knn"].train.dtype == kept.dtype
    base.LAST_ENCODING.forget()
    assert load_many({"other": other_path})["other"].train is not other.train


def test_the_data_fingerprint_is_of_the_pairs_whatever_their_order():
    pairs = pl.DataFrame({"user_id": [1, 1, 2, 3], "item_id": [10, 11, 10, 12], "rating": [5.0, 4.0, 3.0, 1.0]})
    fingerprint = base.data_fingerprint(pairs)
    assert base.data_fingerprint(pairs.reverse()) == fingerprint
    assert base.data_fingerprint(pairs.with_columns(pl.col("rating") * 0)) == fingerprint  # only the pairs count
    crossed = pairs.with_columns(pl.Series("item_id", [10, 10, 11, 12]))  # (1,11),(2,10) become (1,10),(2,11)
    others = [crossed, pairs.slice(1), pairs.vstack(pairs.slice(0, 1)),
              pairs.with_columns(pl.col("user_id").replace(3, 4)), pairs.rename({"user_id": "item_id", "item_id":
                                                                                  "user_id"})]
    assert len({fingerprint, *(base.data_fingerprint(frame) for frame in others)}) == 1 + len(others)


def test_a_fit_on_a_scan_collects_only_the_columns_its_model_reads_and_fits_the_same(small_data):
    """The night's fits read their fold's file as a lazy scan: the encoding collects the pairs (the two-tower also
    their times) and nothing else, and the fit is the frame's fit."""
    train, uf, itf, _ = small_data

    def never_read(batch):
        raise AssertionError("a column no model reads was collected")

    scan = train.lazy().with_columns(rating=pl.col("rating").map_batches(never_read, return_dtype=pl.Float64))
    for name, params in (("item_knn", {"neighbours": 20}),
                         ("two_tower", {"dim": 8, "hidden": 16, "batch_size": 128, "epochs": 1})):
        lazy, eager = (build(name, **params).fit(frame, uf, itf, seed=3) for frame in (scan, train))
        assert lazy._fingerprint == eager._fingerprint and (lazy.train != eager.train).nnz == 0
        users = eager.user_ids[:25]
        assert np.array_equal(lazy.score_users(users), eager.score_users(users))
