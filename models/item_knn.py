"""Item-based collaborative filtering: cosine item-item similarity with shrinkage, top-k neighbours."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.ranking import Stage, ranked_entries, unseen_moments, with_unscored_items
from models.serving import OwnList, UserBlock
from models.tiled import on_scoring_threads

ROWS_PER_BLOCK = 256  # items a kernel call; the scoring threads take the blocks in turn
DENSE_FROM = 1.0  # an item whose users' items add up to more than this many catalogues is counted densely


class ItemKNN(Recommender):
    """sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrinkage), pruned to each item's k neighbours.

    A user's score for item j is the sum of the similarities between j and the items they know, so users
    unseen in training are served from whatever history they bring (k-shot) without refitting.
    """

    name = "item_knn"
    lists_from_stage = True
    description = "items taken by the same users as the user's items"

    @classmethod
    def default_params(cls) -> dict:
        return {"neighbours": 100, "shrinkage": 10.0}

    def _fit(self, seed: int) -> None:
        x = self.train  # users x items, binary
        n = x.shape[1]
        k = int(self.params["neighbours"])
        kk = min(k, n - 1) if n > 1 else 1
        by_item = x.T.tocsr()  # items x users: an item's users, whose rows the kernel reads
        # The kernel's accumulators are indexed by popularity rank (the tie-break's order): a user's items are
        # mostly popular ones, so the counts a row touches most sit together in cache. At the 100 M shop night's
        # shape that halved the kernel's time (371 -> 195 s a fit on one thread, a sample of item blocks).
        rank = self.tiebreak.astype(np.int32)
        by_rank = self.by_tiebreak()
        norms = np.sqrt(self.item_popularity)[by_rank]  # |U_i|: binary histories' column sums
        ranked_items = rank[x.indices]  # each user's items by rank

        def neighbours(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # one block of items' rows
            hi = min(n, lo + ROWS_PER_BLOCK)
            rows, cols, values = _neighbour_candidates(
                lo, hi, by_item.indptr, by_item.indices, x.indptr, ranked_items, rank, norms,
                np.float32(self.params["shrinkage"]), kk + 1, int(DENSE_FROM * n))
            # Each item's kk most similar, ties at the last place to the more popular (the model's tie-break).
            rows, cols, values, _ = ranked_entries(rows.astype(np.int64) - lo, by_rank[cols], values, hi - lo, kk,
                                                   self.tiebreak)
            return rows + lo, cols, values

        parts = on_scoring_threads(neighbours, list(range(0, n, ROWS_PER_BLOCK)))
        rows, cols, vals = (np.concatenate([part[i] for part in parts]) for i in range(3))
        # similarity[i, j]: j is among i's neighbours; scoring uses history @ similarity.
        self.similarity = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return np.asarray((users.history @ self.similarity).todense(), dtype=np.float32)

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """From the sparse rows of history @ similarity, never densified: a user's candidates are their best
        ``depth`` unseen items with a score (every other item scores 0), the moments the rows' sums less the
        seen items' entries, and the second stage reads the columns it asks for out of the sparse rows."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        scores = sp.csr_matrix(users.history @ self.similarity, dtype=np.float32)
        scores.sum_duplicates()
        n_rows, n_items = scores.shape
        row = np.repeat(np.arange(n_rows), np.diff(scores.indptr))
        data = scores.data.astype(np.float64)
        history = users.seen
        on_seen_rows = sp.csr_matrix(scores.multiply(history))  # the seen items' non-zero scores
        seen, on_seen = history.tocoo(), on_seen_rows.tocoo()  # row-major, as the keys below
        seen_scores = np.zeros(seen.nnz)
        keys = seen.row.astype(np.int64) * n_items + seen.col
        seen_scores[np.searchsorted(keys, on_seen.row.astype(np.int64) * n_items + on_seen.col)] = on_seen.data
        mean, inverse = unseen_moments(np.bincount(row, data, minlength=n_rows),
                                       np.bincount(row, data * data, minlength=n_rows), n_items, seen.row,
                                       seen_scores)
        # Each row's best entries among the unseen ones with a score, ordered as a served list.
        unseen = (scores - on_seen_rows).tocsr()
        unseen.eliminate_zeros()
        keep = np.flatnonzero(unseen.data > 0)
        top = np.full((n_rows, min(depth, n_items)), -1, dtype=np.int64)
        best = np.full(top.shape, -np.inf, dtype=np.float32)
        if top.shape[1]:
            r, c, v, rank = ranked_entries(np.repeat(np.arange(n_rows), np.diff(unseen.indptr))[keep],
                                           unseen.indices[keep], unseen.data[keep], n_rows, top.shape[1],
                                           self.tiebreak)
            top[r, rank], best[r, rank] = c, v

        def scores_at(columns: np.ndarray) -> np.ndarray:
            position = np.full(n_items, -1, dtype=np.int64)
            position[columns] = np.arange(len(columns))
            out = np.zeros((n_rows, len(columns)), dtype=np.float32)
            at = position[scores.indices]
            asked = at >= 0
            out[row[asked], at[asked]] = scores.data[asked]
            return out

        return Stage(top, scores_at, mean=mean, inverse=inverse, best=best)

    def own_list(self, users: UserBlock, keep: np.ndarray, n: int) -> OwnList | None:
        """The block's lists from the sparse first stage, as the full ranking orders them: the items with a
        score first, then, where a user has fewer than ``n``, every other unseen item at score 0 by the
        tie-break (a user without history: the most taken items). Similarities are positive, so are the
        scores of a history without negative weights; with one, 0 would not be the bottom: None."""
        if users.history.nnz and users.history.data.min() < 0:
            return None
        listed = super().own_list(users, keep, n)
        if listed is None:
            return None
        if not listed.top.shape[1] or (listed.top[:, -1] >= 0).all():  # every list full of scored items
            return listed
        # A user with fewer scored items than ``n`` has all of them listed; the rest of the catalogue scores 0.
        top, best = with_unscored_items(listed.top, listed.best, self.by_tiebreak(), users.seen, self.tiebreak)
        return OwnList(top, best, listed.asked)

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"because you rated <the known item most similar to the recommended one>"."""
        return self.neighbour_reasons(users, rows, cols,
                                      lambda known, target: np.asarray(self.similarity[known, target]).ravel())

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "similarity.npz", self.similarity, compressed=False)

    def _load_state(self, path: Path) -> None:
        self.similarity = sp.load_npz(path / "similarity.npz").tocsr()


@numba.njit(nogil=True, cache=True, inline="always")
def _sift_down(heap: np.ndarray, pos: int) -> None:
    """Restore a min-heap (``heap[0]`` the least) below ``pos``."""
    size, value = len(heap), heap[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= value:
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = value


@numba.njit(nogil=True, cache=True)
def _neighbour_candidates(lo, hi, item_ptr, item_users, user_ptr, user_items, rank, norms, shrink, keep, dense_from):  # noqa: PLR0912, PLR0913, PLR0915
    """Items lo..hi's candidate neighbours: for each item i, every item j (a popularity rank, ``user_items``'s
    numbering) that some user of i took, at sim = co(i, j) / (norms[rank i] norms[j] + shrink), kept where it is
    at least the row's ``keep``-th best (every candidate where the row has fewer), positive, and j is not i itself.
    The rows' ties at the bound are all kept: the exact ranking (tie-break included) is the caller's.

    The co-occurrence counts go into one dense int32 row (a cell per item). An item whose users' items add up
    to more than ``dense_from`` (a popular one: its users touch most of the catalogue) is counted without a
    branch and its cells read back in one sweep of the row; a rarer item's touched cells are listed as they are
    first counted, and only they are read and reset. The ``keep``-th best comes from a
    min-heap of ``keep`` values. The work is a fit's sum over users of their items squared (2e10 at the 100 M
    shop night), without scipy's two passes and the product's rows written out: on that night's interactions a
    fit took 126 s on 2 threads, where scipy's product and the selection after it took 725 s in the night, with
    the same neighbours (``tests/model/test_scoring.py``). Releases the GIL: blocks run side by side.
    """
    n = norms.shape[0]
    counts = np.zeros(n, np.int32)
    touched = np.empty(n, np.int32)
    values = np.empty(n, np.float32)
    heap = np.empty(keep, np.float32)
    room = max(16, (hi - lo) * (keep + 1))
    out_rows, out_cols, out_values = np.empty(room, np.int32), np.empty(room, np.int32), np.empty(room, np.float32)
    emitted = 0
    for i in range(lo, hi):
        work = 0
        for p in range(item_ptr[i], item_ptr[i + 1]):
            work += user_ptr[item_users[p] + 1] - user_ptr[item_users[p]]
        m = 0
        if work > dense_from:  # most cells touched: count without listing, then list them in one sweep of the row
            for p in range(item_ptr[i], item_ptr[i + 1]):
                u = item_users[p]
                for q in range(user_ptr[u], user_ptr[u + 1]):
                    counts[user_items[q]] += 1
            for j in range(n):
                if counts[j] != 0:
                    touched[m] = j
                    m += 1
        else:
            for p in range(item_ptr[i], item_ptr[i + 1]):
                u = item_users[p]
                for q in range(user_ptr[u], user_ptr[u + 1]):
                    j = user_items[q]
                    if counts[j] == 0:
                        touched[m] = j
                        m += 1
                    counts[j] += 1
        own, held = rank[i], 0
        norm = norms[own]
        for t in range(m):
            j = touched[t]
            value = np.float32(counts[j]) / (norm * norms[j] + shrink)
            values[t] = value
            counts[j] = 0
            if held < keep:
                heap[held] = value
                held += 1
                if held == keep:
                    for s in range(keep // 2 - 1, -1, -1):
                        _sift_down(heap, s)
            elif value > heap[0]:
                heap[0] = value
                _sift_down(heap, 0)
        bound = heap[0] if held == keep else -np.inf
        for t in range(m):
            value, j = values[t], touched[t]
            if value >= bound and value > 0 and j != own:
                if emitted == room:  # a row's ties at its bound overflowed the room: double it
                    room *= 2
                    out_rows = np.concatenate((out_rows, np.empty(room - emitted, np.int32)))
                    out_cols = np.concatenate((out_cols, np.empty(room - emitted, np.int32)))
                    out_values = np.concatenate((out_values, np.empty(room - emitted, np.float32)))
                out_rows[emitted], out_cols[emitted], out_values[emitted] = i, j, value
                emitted += 1
    return out_rows[:emitted], out_cols[:emitted], out_values[:emitted]
