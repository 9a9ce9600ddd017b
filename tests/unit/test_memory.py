"""A process that keeps the memory it frees reuses a freed scoring block instead of giving it back and faulting
it in again (recsys.memory); told not to, it gives a large block back as glibc does."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from models.tiled import use_threads
from recsys import memory

BLOCK = 16_000_000  # float32 cells: a default scoring block, 64 MB, above glibc's largest mmap threshold


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def freed_block_returned_mib() -> float:
    """How much resident memory a freed 64 MB block gives back."""
    block = np.ones(BLOCK, dtype=np.float32)  # touched: resident
    before = resident_mib()
    del block
    return before - resident_mib()


@pytest.fixture
def restore_policy():
    kept = memory._STATE["kept"]
    yield
    memory.keep_freed_memory(kept)


@pytest.mark.skipif(memory._mallopt() is None, reason="glibc's mallopt is not here")
def test_a_freed_block_is_kept_or_given_back_as_told(restore_policy):
    assert memory.keep_freed_memory(False) is False
    assert freed_block_returned_mib() > 48  # unmapped at once: the next block is faulted in again
    assert memory.keep_freed_memory(True) is True
    freed_block_returned_mib()  # the first block after the switch may still come from a mapping
    assert freed_block_returned_mib() < 16  # kept in the heap for the next block


def test_steps_set_the_policy_from_their_settings(restore_policy):
    use_threads(0, keep_freed_memory=False)
    assert memory._STATE["kept"] is False
    use_threads(0)
    assert memory._STATE["kept"] is (memory._mallopt() is not None)


def test_elsewhere_nothing_changes(monkeypatch, restore_policy):
    memory.keep_freed_memory(False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory(True) is False and memory._STATE["kept"] is False
