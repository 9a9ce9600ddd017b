"""A fit's ids: the sorted distinct ids and each row's place among them, whatever range the ids span."""

from __future__ import annotations

import numpy as np
import pytest

from models import base
from models.base import distinct_ids, positions_of


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
