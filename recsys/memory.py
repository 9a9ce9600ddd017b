"""Whether a process keeps the memory it frees, for the next block of the same size (glibc's ``mallopt``).

The night works in blocks: per scoring block, each component's users x items float32 scores (64 MB at the
default block of 16 M cells), their z-scores, the blend, the masks. glibc serves every allocation above its
mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed, so the
next block's array of the same size is faulted in again, page by page. On this project's machine (a VM whose
host backs the pages a guest has just given back slowly) that was 40 % of the hybrid's scoring of a block
(the hybrid of a 10 M shop night, 20k items, blocks of 800 users: 58 -> 35 ns a cell, three runs each) and 20 %
of the publish pass with reasons and audiences (8,000 users: 8.6 -> 6.9 s; the same rows bit for bit, peak RSS
+2 %); the whole 10 M shop night, back to back on the same data, 1,095 -> 945 s (evaluate 737 -> 634, publish
149 -> 97), the same published rows, peak RSS 5.20 -> 5.38 GiB. Kept, a freed block stays in the process's
heap and the next block reuses it: ``M_MMAP_MAX`` 0 (large allocations come from the heap too) and a 2 GiB
``M_TRIM_THRESHOLD`` (the heap's free top is given back only past that). The arithmetic is the same; only
where the arrays live changes.

The cost: memory a step freed stays with the process for its next allocations from glibc, not for other
allocators (DuckDB's and Polars' own), so a process that frees a large scoring working set and then loads a
large table can peak higher. ``RECSYS_KEEP_FREED_MEMORY=false`` restores glibc's behaviour. Only on glibc
(Linux); elsewhere nothing changes.

What a step kept is given back when the step ends (:func:`give_back`, from :func:`release_memory`):
the blocks are reused within a step, and the next step starts from what is alive, not from the last step's
largest working set. The local night runs its steps in one process, one after another. Replaying a 30 M
shop night's production fits in one process (300k users x 60k items, the night's own files, 2026-12-05):
without it the resident memory between fits climbed 2.5 -> 2.9 -> 3.7 -> 4.7 -> 5.0 -> 5.1 GiB and the
two-tower's fit peaked at 7.84 GiB on top of it; with it the fits start from 1.6-2.1 GiB and the peak is
6.07 GiB (the same fits, 301 s -> 297 s). What stays after a two-tower fit (~1.5 GiB at 30 M) is
TensorFlow's own, alive, not a free heap.
"""

from __future__ import annotations

import ctypes
import gc
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEPT = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}

_STATE = {"kept": False}


def _libc():
    """glibc, where it has ``mallopt`` (Linux with glibc); None elsewhere (another system, or musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(keep: bool = True) -> bool:
    """From now on, this process keeps (``keep``) the large blocks it frees for its next allocations, or gives
    them back at once as glibc does by default (restored only where this process changed it, and what it kept
    until then given back with ``malloc_trim``). Returns whether freed memory is kept now."""
    if keep == _STATE["kept"]:
        return keep
    libc = _libc()
    if libc is None:
        return False
    for option, value in (KEPT if keep else GLIBC_DEFAULTS).items():
        if not libc.mallopt(option, value):
            return _STATE["kept"]
    _STATE["kept"] = keep
    if not keep:
        give_back()
    return keep


def give_back() -> None:
    """Give the free memory of every heap of this process back to the system now (glibc's ``malloc_trim(0)``:
    the free top of each heap, and the whole free pages inside it), whether or not freed blocks are kept.
    For the end of a step: the next step's arrays are faulted in afresh (a fraction of a second a GiB), and
    the process's resident memory is what is alive. Only on glibc; elsewhere nothing happens."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_gib() -> dict[str, float] | None:
    """What glibc's allocator holds now, over all its arenas (``mallinfo2``), in GiB: ``in_use`` (allocated
    blocks, mapped ones included) and ``free`` (freed, kept in its heaps). The rest of a process's anonymous
    memory is other allocators' (Polars' jemalloc, TensorFlow's, DuckDB's) or the interpreter's arenas. None
    where glibc is not the allocator or is older than 2.33."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"in_use": (info.uordblks + info.hblkhd) / 2**30, "free": info.fordblks / 2**30}


def release_memory() -> None:
    """Free a task's models before the next task loads its own. Keras models are reference cycles (layers and
    their graph point at each other), which reference counting never frees: without a collection here, a
    two-tower and what it holds (its training histories: 160 MB at 20 M interactions) would stay until the
    cyclic GC happened to run, one per slice or fit.

    What survives the collection (the libraries' modules, TensorFlow's registries: 600k objects) is then
    frozen out of later collections (``gc.freeze``): a full collection over them cost ~0.4 s a task, ~15 s
    of a small night. Only cycles alive now and dropped later would escape the collector: the flow's own
    records, not a model (the task deleted its models before calling this).

    Last, what the task freed and the process kept for its next block is given back (:func:`give_back`): the
    next task starts from what is alive."""
    gc.collect()
    gc.freeze()
    give_back()
