"""The increment benchmark on a small warehouse: both statements that compare a batch with what is loaded find
exactly the copies planted, each measured in a process of its own."""

from __future__ import annotations

from benchmarks.increment import format_table, run


def test_the_plan_and_the_gate_find_exactly_the_planted_copies_of_loaded_rows():
    result = run(loaded=5_000, batch=1_000)
    steps = {s["step"]: s for s in result["steps"]}
    assert steps["plan (promotion)"]["duplicates"] == steps["gate batch query"]["duplicates"] == 10
    assert all(s["peak_rss_gib"] > 0 for s in result["steps"])
    assert "gate batch query" in format_table([result])
