"""A process that keeps the memory it frees reuses a freed scoring block instead of giving it back and faulting
it in again (recsys.memory); told not to, it gives a large block back as glibc does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.tiled import use_threads
from recsys import memory

# Measured in a fresh interpreter: a process that has kept freed blocks serves a new one from them, whatever it
# is told later, so only a clean heap shows the policy itself. A default scoring block: 16 M float32 cells, 64 MB,
# above glibc's largest mmap threshold.
PROBE = """
import numpy as np
from recsys import memory

def resident_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

def returned_mib():
    block = np.ones(16_000_000, dtype=np.float32)  # touched: resident
    before = resident_mib()
    del block
    return before - resident_mib()

kept = memory.keep_freed_memory({keep})
returned_mib()  # the first block after start-up may come from a mapping either way
kept_returned = returned_mib()
before = resident_mib()
memory.give_back()
print(kept, kept_returned, before - resident_mib())
"""


def freed_block_returned_mib(keep: bool) -> tuple[bool, float, float]:
    """In a fresh interpreter told to keep freed memory or not: whether it keeps it, how much resident memory a
    freed 64 MB block gives back, and how much more :func:`memory.give_back` gives back after it."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(keep=keep)], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


@pytest.fixture
def restore_policy():
    kept = memory._STATE["kept"]
    yield
    memory.keep_freed_memory(kept)


@pytest.mark.skipif(memory._libc() is None, reason="glibc's mallopt is not here")
def test_a_freed_block_is_kept_or_given_back_as_told():
    kept, returned, _ = freed_block_returned_mib(keep=False)
    assert not kept and returned > 48  # unmapped at once: the next block is faulted in again
    kept, returned, later = freed_block_returned_mib(keep=True)
    assert kept and returned < 16  # kept in the heap for the next block
    assert returned + later > 48  # and given back when the step ends


def test_steps_set_the_policy_from_their_settings(restore_policy):
    use_threads(0, keep_freed_memory=False)
    assert memory._STATE["kept"] is False
    use_threads(0)
    assert memory._STATE["kept"] is (memory._libc() is not None)


def test_elsewhere_nothing_changes(monkeypatch, restore_policy):
    memory.keep_freed_memory(False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory(True) is False and memory._STATE["kept"] is False
