"""The quality benchmark judges a change on every protocol both runs have, and names a mixed one."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from benchmarks.quality import headline, judge, new_items_after, t_cuts
from tasks.split import temporal_cut


def result(w: float, t_warm: float, c0: float, i: float) -> dict:
    def row(metric, value, half, **where):
        return {"model": "hybrid", "metric": metric, "value": value, "ci_low": value - half,
                "ci_high": value + half, **where}

    return {"generated_at": "then",
            "w": {"results": {"hybrid": {"ndcg": w}}},
            "t": {"table": [row("ndcg", t_warm, 0.02, k_shot=None), row("ndcg", 0.50, 0.03, k_shot=0),
                            row("ndcg", 0.40, 0.03, k_shot=3)]},
            "c": {"table": [row("ndcg", c0, 0.02, k_shot=0), row("ndcg_lift", 0.1, 0.05, k_shot=0)]},
            "i": {"table": [row("item_ndcg", i, 0.02, k=100), row("ndcg", 0.01, 0.01, k=10)]}}


def test_headline_reads_each_protocols_published_numbers():
    cells = headline(result(0.49, 0.18, 0.55, 0.52))
    expected = {"W nDCG@10": (0.49, None), "T warm": (0.18, 0.02), "T k=0": (0.50, 0.03), "C k=0": (0.55, 0.02),
                "I items->users @100": (0.52, 0.02)}  # T at k=3 is not a headline; lifts are not values
    assert cells.keys() == expected.keys()
    for label, (value, half) in expected.items():
        assert cells[label][0] == pytest.approx(value)
        assert cells[label][1] == (None if half is None else pytest.approx(half))


def test_a_change_that_lifts_one_protocol_and_costs_another_is_named():
    before = result(0.49, 0.18, 0.55, 0.52)
    lines = judge(result(0.50, 0.15, 0.555, 0.52), before)
    assert any(line.startswith("  W nDCG@10") and line.endswith("beyond") for line in lines)  # +2 % > 1 %
    assert any(line.startswith("  T warm") and line.endswith("beyond") for line in lines)  # -0.03 > 0.02
    assert any(line.startswith("  C k=0") and not line.endswith("beyond") for line in lines)  # +0.005 < 0.02
    assert lines[-1] == "  MIXED: lifts W nDCG@10 and costs T warm"
    assert judge(before, before)[-1] == "  no change beyond a CI"
    assert judge(result(0.49, 0.18, 0.50, 0.52), before)[-1] == "  WORSE on C k=0"


def test_protocol_t_cuts_spread_over_the_log():
    assert t_cuts(5) == t_cuts(9) == (0.70, 0.75, 0.80, 0.85, 0.90)
    assert t_cuts(1) == (0.80,) and t_cuts(2) == (0.70, 0.90) and t_cuts(3) == (0.70, 0.80, 0.90)


def test_protocol_t_new_items_are_the_items_nobody_had_taken_before_the_cut():
    """What known users did next with films first rated after the cut: only those rows, every one of them."""
    start = datetime(2024, 1, 1)
    rows = [(1, 10, 0), (1, 11, 1), (2, 10, 2), (2, 12, 3),  # before the cut: items 10, 11, 12 known
            (1, 12, 5), (1, 20, 6), (2, 20, 7), (2, 21, 8),  # after: known users, items 20 and 21 new
            (3, 20, 9)]  # a user first seen after the cut: cold, not in the warm truth
    data = pl.DataFrame([(u, i, 4.0, start + timedelta(hours=h)) for u, i, h in rows],
                        schema=["user_id", "item_id", "rating", "ts"], orient="row")
    split = temporal_cut(data, 0.4, k_shots=(0,))
    new = new_items_after(split)
    assert new.split == "item_cold" and new.new_items.tolist() == [20, 21]
    assert sorted(zip(new.truth["user_id"], new.truth["item_id"], strict=True)) == [(1, 20), (2, 20), (2, 21)]
