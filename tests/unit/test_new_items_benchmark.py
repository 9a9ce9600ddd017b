"""The new-items benchmark's arithmetic, on tables small enough to count by hand."""

from __future__ import annotations

import polars as pl

from benchmarks.new_items import audience_hits, drop_films, list_hits


def test_list_hits_count_real_raters_against_random_exposure():
    truth = pl.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [10, 10, 11, 11]})  # film 10: 2 raters of 10 users
    recs = pl.DataFrame({"user_id": [1, 5, 3, 6], "item_id": [10, 10, 11, 99], "rank": [1, 2, 1, 1]})
    out = list_hits(recs, truth, n_users=10)
    assert out["slots"] == 3 and out["hits"] == 2  # (1, 10) and (3, 11); film 99 is not new
    assert out["expected_at_random"] == 0.6  # three slots, each of a film with 2 raters among 10 users
    assert out["ratio_to_random"] == round(2 / 0.6, 2)


def test_audience_hits_against_the_most_active_users():
    truth = pl.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 10, 10]})
    published = pl.DataFrame({"item_id": [10, 10], "user_id": [1, 2]})
    activity = pl.DataFrame({"user_id": [1, 2, 3, 4], "interactions": [5, 9, 1, 9]})
    out = audience_hits(published, truth, activity, audience=2)
    assert out["raters_reached"] == 2
    assert out["most_active_users_reach"] == 1  # users 2 and 4 (ties by id), of whom only 2 rated film 10
    assert out["ratio_to_most_active"] == 2.0


def test_dropped_films_are_a_seeded_share_of_the_well_rated_ones():
    interactions = pl.DataFrame({"user_id": list(range(30)) * 3, "item_id": [1] * 30 + [2] * 30 + [3] * 5 + [4] * 25})
    dropped = drop_films(interactions, share=0.5, min_ratings=20, seed=0)
    assert len(dropped) == 2 and set(dropped) <= {1, 2, 4}
    assert (dropped == drop_films(interactions, share=0.5, min_ratings=20, seed=0)).all()
