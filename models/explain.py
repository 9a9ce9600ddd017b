"""Why a row was recommended: the reasons every model gives (a known item it resembles, the user's segment,
popularity), as a mixin of :class:`models.base.Recommender`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from models.serving import DEMOGRAPHIC_COLUMNS, N_DECADES, UserBlock, decade_of


def replace(why: dict[str, np.ndarray], where: np.ndarray, other: dict[str, np.ndarray]) -> None:
    """Put the reasons ``other`` (aligned with ``where``) into ``why`` at ``where``."""
    for key in why:
        why[key][where] = other[key]


def _sorted_csr(history: sp.spmatrix) -> sp.csr_matrix:
    """``history`` as CSR with each row's known items in ascending column order (the tie rule reads it)."""
    history = history.tocsr()
    return history if history.has_sorted_indices else history.sorted_indices()


def best_history_item(history: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
                      affinity: Callable[[np.ndarray, np.ndarray], np.ndarray], chunk: int = 1 << 21) -> np.ndarray:
    """For each (row, col) pair, the known item of that row's history with the highest ``affinity(known,
    col)`` (ties: the lower catalogue column); -1 for a row without history. Vectorised over every (pair,
    known item), about ``chunk`` of them at a time: memory stays bounded however many pairs a block has (a
    1 M-interaction night's one block of 6.9k users x 50 items expands to 50 M)."""
    history = _sorted_csr(history)
    lengths = np.diff(history.indptr)[rows]
    best = np.full(len(rows), -1, dtype=np.int64)
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(rows):
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + chunk, side="right")))
        best[lo:hi] = _best_known(history, rows[lo:hi], cols[lo:hi], lengths[lo:hi], affinity)
        lo = hi
    return best


def best_by_vectors(history: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """:func:`best_history_item` for ``affinity = vectors[known] . vectors[col]``, as one matrix product per
    row of ``history`` (its known items x its pairs' columns) instead of one gathered dot product per (pair,
    known item): 50k new items x 100 users x 100 known items is 500 M gathered rows of ``vectors`` the
    other way, and seconds of SGEMM this way. Same rule: the highest affinity, ties to the lower column (the
    first of the sorted known items), an undefined (NaN) affinity never wins; -1 for a row without history."""
    history = _sorted_csr(history)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    best = np.full(len(rows), -1, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    cuts = np.flatnonzero(np.diff(rows[order])) + 1
    for which in np.split(order, cuts) if len(rows) else ():
        row = rows[which[0]]
        known = history.indices[history.indptr[row]:history.indptr[row + 1]]
        if len(known) == 0:
            continue
        values = vectors[known] @ vectors[cols[which]].T  # (known items, this row's pairs)
        values[np.isnan(values)] = -np.inf
        best[which] = known[np.argmax(values, axis=0)]  # argmax: the first maximum, the lower column
    return best


def _best_known(history: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, lengths: np.ndarray,
                affinity: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    best = np.full(len(rows), -1, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return best
    pair = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    known = history.indices[np.repeat(history.indptr[rows], lengths) + offsets].astype(np.int64)
    values = np.asarray(affinity(known, cols[pair]), dtype=np.float64)
    values[np.isnan(values)] = -np.inf  # an undefined affinity never wins (and never breaks the maximum)
    # Each pair's known items are one contiguous run in ascending column order: the run's maximum, then its
    # first position holding it.
    has = np.flatnonzero(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)])[has]
    top = np.maximum.reduceat(values, starts)
    position = np.where(values == np.repeat(top, lengths[has]), np.arange(total), total)
    best[has] = known[np.minimum.reduceat(position, starts)]
    return best


class Explaining:
    """The explanation methods of a fitted model (its encoding: ``item_ids``, ``vocab``, the items' content)."""

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """Why each recommended (block row, catalogue column) pair was scored high, as :meth:`reasons`.
        Called on the block just scored (its ``shared`` scores are still there). Default: popularity."""
        return self.reasons(rows, np.full(len(rows), "popular", dtype=object))

    def reasons(self, rows: np.ndarray, kinds: np.ndarray, items: np.ndarray | None = None,
                segments: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Reasons aligned with ``rows``: a kind (``neighbour`` or ``content``: a known item it resembles by
        interactions or by content; ``segment``: the user's demographic segment; ``popular``), the catalogue
        column of the item it names (-1 for none) and the segment it names (None for none)."""
        n = len(rows)
        return {"kind": np.asarray(kinds, dtype=object),
                "item": np.full(n, -1, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64),
                "segment": np.full(n, None, dtype=object) if segments is None else np.asarray(segments, dtype=object)}

    def neighbour_reasons(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray,
                          affinity: Callable[[np.ndarray, np.ndarray], np.ndarray], kind: str = "neighbour",
                          segment: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """``kind`` naming the known item with the highest ``affinity(known, recommended)``; for a user
        without history, the user's ``segment`` (:meth:`segment_reasons`) or else ``popular``."""
        return self.history_reasons(users, rows, best_history_item(users.history, rows, cols, affinity), kind, segment)

    def history_reasons(self, users: UserBlock, rows: np.ndarray, item: np.ndarray, kind: str = "neighbour",
                        segment: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """:meth:`neighbour_reasons` for the known items already chosen (``item``, -1 for none)."""
        why = self.reasons(rows, np.where(item >= 0, kind, "popular"), item)
        cold = np.flatnonzero(item < 0)
        if segment and len(cold):
            replace(why, cold, self.segment_reasons(users, rows[cold], segment))
        return why

    def content_vectors(self) -> np.ndarray:
        """(items, genres + decades + text) unit rows of what is known of an item before anyone rates it (the
        text part: the pretrained encoder's vector, where it is on)."""
        decades = np.eye(N_DECADES, dtype=np.float32)[decade_of(self.item_year)][:, 1:]  # decade 0: unknown
        vectors = np.concatenate([self.item_genres, 0.5 * decades, self.item_text], axis=1).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def explain_new_items(self, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Reasons for showing new items to users (the published ``new_items``), without scoring anyone
        again: "similar to <the user's known item closest in genres and decade>", or for a user without
        history "popular with <gender, age>"."""
        user_ids, item_ids = np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
        users = np.unique(user_ids)
        block = self._user_block(users, sp.csr_matrix((len(users), len(self.item_ids)), dtype=np.float32))
        rows = np.searchsorted(users, user_ids)
        item = best_by_vectors(block.history, rows, np.searchsorted(self.item_ids, item_ids), self.content_vectors())
        return self.history_reasons(block, rows, item, kind="content", segment=("gender", "age_bucket"))

    def segment_reasons(self, users: UserBlock, rows: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``segment`` naming the user's cell of ``columns`` (e.g. gender=F, age_bucket=25-34); ``popular``
        where one of them is unknown."""
        codes = users.demographics[rows][:, [DEMOGRAPHIC_COLUMNS.index(c) for c in columns]]
        known = np.all(codes > 0, axis=1)
        labels = np.full(len(rows), None, dtype=object)
        if known.any():  # one label per distinct segment, not per row
            cells, which = np.unique(codes[known], axis=0, return_inverse=True)
            names = [", ".join(f"{c}={self.vocab[c][code]}" for c, code in zip(columns, cell, strict=True))
                     for cell in cells]
            labels[known] = np.asarray(names, dtype=object)[which.ravel()]
        return self.reasons(rows, np.where(known, "segment", "popular"), segments=labels)
