"""Progress while a long step runs: a line at most every ``RECSYS_PROGRESS_SECONDS`` (default 10) seconds.

A flow opens a :class:`Heartbeat` and names each step as it starts; code deep inside a step (a model's
epochs, an evaluation slice, a block of users being scored) says what it is doing with :func:`activity` (for
as long as it runs) and :func:`detail`, which cost an assignment. A background thread prints, only while a
step has run longer than the interval since the last line, where it is::

      ... evaluate 40 s: fitting two_tower (evaluation fold): epoch 9/30, loss 5.612

A step shorter than the interval prints nothing extra, so a small night reads as before.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections.abc import Iterator

_state = {"activity": "", "detail": ""}


def doing(activity: str) -> None:
    """What the running step does now (clears the detail)."""
    _state["activity"], _state["detail"] = activity, ""


@contextlib.contextmanager
def activity(text: str) -> Iterator[None]:
    """``with activity("fitting ease"):`` says what runs for as long as it runs, and no longer: once the block
    ends (or raises) the heartbeat stops naming it (it used to repeat a finished fit's last epoch)."""
    doing(text)
    try:
        yield
    finally:
        doing("")


def detail(text: str) -> None:
    """How far the current activity has come (e.g. ``epoch 3/30``)."""
    _state["detail"] = text


def current() -> str:
    activity, more = _state["activity"], _state["detail"]
    return f"{activity}: {more}" if activity and more else activity or more


class Heartbeat:
    """``with Heartbeat(settings.progress_seconds) as beat: beat.step("evaluate"); ...``: a line at most every
    ``every`` seconds while a step runs (0: none)."""

    def __init__(self, every: float, out=None):
        self.every = float(every)
        self.out = out
        self._step, self._started, self._last = "", 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recsys-progress", daemon=True)

    def step(self, name: str, now: float | None = None) -> None:
        doing("")
        self._step, self._started = name, time.monotonic() if now is None else now
        self._last = self._started

    def tick(self, now: float) -> str | None:
        """The line due at ``now``, if a step has run an interval since the last line (or its start)."""
        if not self._step or now - self._last < self.every:
            return None
        self._last = now
        what = current()
        return f"  ... {self._step} {now - self._started:.0f} s" + (f": {what}" if what else "")

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            line = self.tick(time.monotonic())
            if line:
                print(line, file=self.out or sys.stdout, flush=True)

    def __enter__(self) -> Heartbeat:
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._step = ""
        doing("")


def peak_rss_gib() -> float:
    """This process's own peak resident memory so far: ``VmHWM``, the high-water mark of its address space
    since its ``exec``. ``ru_maxrss`` (the fallback where there is no ``/proc``) also counts the parent's pages
    at the fork before the ``exec``: a worker or benchmark step spawned by a large process reported the
    parent's size before doing anything."""
    try:
        return status_gib("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def status_gib(field: str) -> float:
    """A memory field of this process's ``/proc/self/status`` (``VmHWM``, ``VmRSS``), in GiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 2**20
