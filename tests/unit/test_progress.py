"""Heartbeat lines: due only after an interval without one, naming the step and what it is doing."""

from __future__ import annotations

from recsys import progress
from recsys.progress import Heartbeat


def test_a_line_is_due_only_after_an_interval_and_says_what_runs():
    beat = Heartbeat(every=10)
    assert beat.tick(100.0) is None  # no step yet
    beat.step("evaluate", now=100.0)
    assert beat.tick(109.9) is None  # a step shorter than the interval prints nothing
    progress.doing("fitting two_tower (evaluation fold)")
    progress.detail("epoch 3/30, last loss 5.612")
    assert beat.tick(110.0) == "  ... evaluate 10 s: fitting two_tower (evaluation fold): epoch 3/30, last loss 5.612"
    assert beat.tick(115.0) is None
    progress.doing("writing the report")  # a new activity clears the old detail
    assert beat.tick(120.5) == "  ... evaluate 20 s: writing the report"
    beat.step("train", now=121.0)  # a new step starts its own clock and forgets the activity
    assert beat.tick(131.0) == "  ... train 10 s"


def test_the_thread_stops_with_the_block():
    with Heartbeat(every=3600) as beat:
        beat.step("publish")
        assert beat._thread.is_alive()
    assert not beat._thread.is_alive()
    assert progress.current() == ""


def test_an_activity_is_named_only_while_it_runs():
    """A finished fit's last epoch is not repeated by later lines (it was, for 30 s, after the fit ended)."""
    beat = Heartbeat(every=10)
    beat.step("evaluate", now=0.0)
    with progress.activity("fitting two_tower (evaluation fold)"):
        progress.detail("epoch 20/30, last loss 11.015")
        assert beat.tick(10.0) == ("  ... evaluate 10 s: fitting two_tower (evaluation fold): epoch 20/30, "
                                   "last loss 11.015")
    assert beat.tick(20.0) == "  ... evaluate 20 s"
    try:
        with progress.activity("fitting ease"):
            raise RuntimeError("a failed fit")
    except RuntimeError:
        pass
    assert progress.current() == ""
