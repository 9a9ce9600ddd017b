"""A dense item x item matrix laid out for sparse-history scoring: ``history @ weights`` near the hardware.

Scoring a block of users against a dense item-item matrix (EASE) reads one weight row per known
interaction; done row by row (scipy's CSR x dense) it streams the 27k-float row from memory for every
interaction and runs at about 5 GFLOP/s on this machine, memory-bound. Here the weights are stored as
column tiles (``TILE`` columns each, contiguous; EASE's are laid out in the inverse's own memory), the block's
history is taken by item (CSC), and each tile
is one product: a weight row segment is loaded once and added to every user of the block who knows that
item, into an output tile that stays in cache. Tiles are independent, so they run on a thread pool (scipy
releases the GIL). Measured on 27k items, 600 users x 145 interactions: 14 GFLOP/s against 4.8 for the
plain product (2 cores). Results are identical to ``history @ weights`` (same sums, same order per cell).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from recsys import memory

TILE = 1024  # columns per tile: an output tile of one scoring block (600 users) stays within the cache
# Above this share of known items per user, a dense SGEMM of the block is faster than the sparse product
# (SGEMM ~150 GFLOP/s of which this share is useful, against ~14 GFLOP/s for the sparse product).
DENSE_FROM = 0.06


_THREADS = {"wanted": 0}


def use_threads(threads: int, keep_freed_memory: bool = True) -> None:
    """How this process's blockwise work runs from now on: on how many threads (``RECSYS_SCORING_THREADS``; 0:
    every core the process may use), and whether the blocks it frees are kept for the next block
    (``RECSYS_KEEP_FREED_MEMORY``, :func:`recsys.memory.keep_freed_memory`). Set by each step that fits or
    scores, from its settings."""
    _THREADS["wanted"] = threads
    memory.keep_freed_memory(keep_freed_memory)


def thread_count() -> int:
    """The threads :func:`use_threads` asked for: every core this process may use unless told otherwise."""
    return _THREADS["wanted"] or len(os.sched_getaffinity(0))


def scoring_pool() -> ThreadPoolExecutor:
    """The threads blockwise scoring and top-n selection share (numpy and scipy release the GIL)."""
    return _pool(thread_count())


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=_POOL_PREFIX)


_POOL_PREFIX = "recsys-scoring"


def on_scoring_threads(work: Callable[[Any], Any], parts: Sequence[Any]) -> list[Any]:
    """``work`` of each part on the scoring threads, results in order; inline where the caller is one of them
    already (a part that waited on the pool from inside it could wait for itself)."""
    if len(parts) < 2 or threading.current_thread().name.startswith(_POOL_PREFIX):
        return [work(part) for part in parts]
    return list(scoring_pool().map(work, parts))


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the block: many small products (a tile of a block's scores, ~1 MB), each spread
    over every core, paid a wake and a join a call; on a busy machine a call waited for a core each time. The
    tiles run side by side instead (:func:`on_scoring_threads`). 266 users x 60k items x 24 factors a block:
    248-262 ms with BLAS's own threads on a busy machine, 59-88 ms on one.

    OpenBLAS's thread count is the process's: sections from several threads take turns (threadpoolctl lets one
    thread set it at a time, and two overlapping sections, each restoring what it found, left BLAS on one thread
    for good). A section inside another in the same thread is free, and so is one inside a part of
    :func:`side_by_side`, whose caller holds BLAS on one thread for the whole pass."""
    if getattr(_PASS, "pinned", False):
        yield
        return
    with _BLAS_TURN, _blas_controller().limit(limits=1, user_api="blas"):
        yield


_BLAS_TURN = threading.RLock()
_PASS = threading.local()  # .pinned: this thread runs a part of a side_by_side pass


def side_by_side(work: Callable[[Any], Any], parts: Sequence[Any]) -> Iterator[Any]:
    """``work`` of each part side by side on the scoring threads, the results yielded in the parts' order, with
    BLAS on one thread throughout, set once by the caller's thread: a product's floats depend on OpenBLAS's
    thread count (7 of 8 shapes measured), so it must not change with what another part is doing; and a count
    set from a scoring thread did not always take (measured: after the caller's own section, a pool thread's
    left BLAS on two), while the caller's holds for the pool. A part starts once the one a thread count before it
    is taken, so a few results are held at a time, not all. Work inside a part that would use the scoring
    threads runs inline on the part's thread (:func:`on_scoring_threads`). One by one, in the caller's thread,
    with one thread or where the caller is a scoring thread itself."""
    with one_blas_thread():
        threads = thread_count()
        if threads < 2 or len(parts) < 2 or threading.current_thread().name.startswith(_POOL_PREFIX):
            yield from (work(part) for part in parts)
            return

        def pinned(part: Any) -> Any:
            _PASS.pinned = True
            try:
                return work(part)
            finally:
                _PASS.pinned = False

        started = deque()
        try:
            for part in parts:
                started.append(scoring_pool().submit(pinned, part))
                if len(started) > threads:
                    yield started.popleft().result()
            while started:
                yield started.popleft().result()
        finally:  # the caller stopped early (an error): what has not started does not, what has is waited for
            for future in started:
                future.cancel()
            for future in started:
                if not future.cancelled():
                    future.exception()


@cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded libraries once: ~ms a call


class TiledMatrix:
    """A float32 (n_rows, n_cols) matrix stored as contiguous column tiles of ``TILE`` columns (one tile up to
    ``2 * TILE`` columns: small catalogues gain nothing from tiling); the last tile may be narrower."""

    def __init__(self, tiles: list[np.ndarray]):
        self.tiles = tiles  # each (n_rows, width_t), C-contiguous
        self.starts = np.concatenate([[0], np.cumsum([t.shape[1] for t in tiles])]).astype(np.int64)
        self.n_cols = int(self.starts[-1])

    @staticmethod
    def _bounds(n_cols: int) -> list[tuple[int, int]]:
        width = max(1, n_cols) if n_cols <= 2 * TILE else TILE
        return [(lo, min(n_cols, lo + width)) for lo in range(0, max(n_cols, 1), width)]

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> TiledMatrix:
        matrix = np.asarray(matrix, dtype=np.float32)
        return cls([np.ascontiguousarray(matrix[:, lo:hi]) for lo, hi in cls._bounds(matrix.shape[1])])

    @classmethod
    def ease_weights_in_place(cls, inverse: np.ndarray, row_scale: np.ndarray | None = None) -> TiledMatrix:
        """EASE's B = I - P diag(P)^-1 with a zero diagonal, laid out in tiles in P's own memory; with
        ``row_scale``, diag(row_scale) B (the history read on a normalised scale).

        P is symmetric, so B's columns lo..hi are P's rows lo..hi, scaled and transposed: each row block is
        rewritten, in place, as the tile it becomes (one block's temporary at a time, no second n^2 array).
        ``inverse`` (C-contiguous) is consumed: afterwards its memory holds the tiles, not P.
        """
        n = inverse.shape[0]
        if not inverse.flags.c_contiguous or inverse.shape != (n, n):
            raise ValueError("ease weights: expected a square C-contiguous inverse")
        diagonal = np.diag(inverse).copy()
        flat = inverse.reshape(-1)
        tiles = []
        for lo, hi in cls._bounds(n):
            tile = np.ascontiguousarray((inverse[lo:hi] / -diagonal[lo:hi, None]).T)  # (n, hi - lo)
            tile[np.arange(lo, hi), np.arange(hi - lo)] = 0.0
            if row_scale is not None:
                tile *= row_scale[:, None]
            region = flat[lo * n:hi * n].reshape(n, hi - lo)  # the memory of rows lo..hi, read above
            region[...] = tile
            tiles.append(region)
        return cls(tiles)

    @property
    def shape(self) -> tuple[int, int]:
        return self.tiles[0].shape[0], self.n_cols

    def to_dense(self) -> np.ndarray:
        return np.concatenate(self.tiles, axis=1)

    def rmatmul(self, rows: sp.spmatrix, out: np.ndarray | None = None,
                columns: np.ndarray | None = None) -> np.ndarray:
        """``rows @ self`` as a dense float32 (len(rows), n_cols) array; or written into ``out``'s ``columns``
        (ascending, one for each of this matrix's columns; a model fitted on part of a catalogue), each tile
        where it lands, on the tile's thread (no second pass over the block to scatter it).

        Histories denser than ``DENSE_FROM`` (small catalogues: 11 % at 1.3k items) go through BLAS SGEMM
        tile by tile, which beats any sparse product there; sparser ones through the tiled sparse product.
        """
        if out is None:
            out = np.empty((rows.shape[0], self.n_cols), dtype=np.float32)
        if rows.shape[0] == 0:
            return out
        dense = rows.nnz >= DENSE_FROM * rows.shape[0] * rows.shape[1]
        history = np.asarray(rows.toarray(), dtype=np.float32) if dense else sp.csc_matrix(rows, dtype=np.float32)

        def one(t: int) -> None:
            lo, hi = self.starts[t], self.starts[t + 1]
            if columns is None:
                out[:, lo:hi] = history @ self.tiles[t]
            else:
                out[:, columns[lo:hi]] = history @ self.tiles[t]

        if dense:  # BLAS runs its own threads
            for t in range(len(self.tiles)):
                one(t)
        else:
            on_scoring_threads(one, list(range(len(self.tiles))))
        return out

    def take(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The elements ``matrix[rows[i], cols[i]]``, tile by tile."""
        out = np.empty(len(rows), dtype=np.float32)
        tile = (np.searchsorted(self.starts, cols, side="right") - 1).astype(np.int16)  # < 2^15 tiles
        order = np.argsort(tile, kind="stable")  # a radix sort of 16-bit keys: the pairs grouped by tile
        bounds = np.searchsorted(tile[order], np.arange(len(self.tiles) + 1))
        for t in np.flatnonzero(np.diff(bounds)):
            here = order[bounds[t]:bounds[t + 1]]
            out[here] = self.tiles[t][rows[here], cols[here] - self.starts[t]]
        return out

    def save(self, path: Path) -> None:
        """Write the tiles one after another as one flat float32 ``.npy`` (no zip: numpy's ``savez`` spent
        4 s a 1.6 GB EASE on its checksums), beside a new name and then renamed over ``path``, so a process
        that has the old file mapped keeps reading the old weights."""
        path = Path(path)
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(staged, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                         "fortran_order": False,
                                                         "shape": (self.shape[0] * self.n_cols,)})
                for tile in self.tiles:
                    f.write(memoryview(np.ascontiguousarray(tile, dtype=np.float32)).cast("B"))
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, n_rows: int) -> TiledMatrix:
        """The matrix :meth:`save` wrote, of ``n_rows`` rows, mapped read-only from the file (the page cache
        holds it once for every process that scores with it; nothing is read until a tile is used). A matrix
        saved before 2026-12-04 (its tiles in an ``.npz`` beside ``path``) is read into memory instead."""
        path, legacy = Path(path), Path(path).with_suffix(".npz")
        if not path.exists() and legacy.exists():
            with np.load(legacy) as saved:
                return cls([saved[key] for key in sorted(saved.files)])
        flat = np.asarray(np.load(path, mmap_mode="r"))
        if n_rows <= 0 or flat.size % n_rows:
            raise ValueError(f"{path}: {flat.size:,} weights are not a matrix of {n_rows:,} rows")
        n_cols = flat.size // n_rows
        tiles, start = [], 0
        for lo, hi in cls._bounds(n_cols):
            tiles.append(flat[start:start + n_rows * (hi - lo)].reshape(n_rows, hi - lo))
            start += n_rows * (hi - lo)
        return cls(tiles)
