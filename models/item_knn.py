"""Item-based collaborative filtering: cosine item-item similarity with shrinkage, top-k neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.ranking import Stage, nth_best_in_rows, ranked_entries, unseen_moments, with_unscored_items
from models.serving import OwnList, UserBlock, item_cooccurrence

BLOCK_CELLS = 8_000_000  # item rows of the co-occurrence product at a time: at most this many cells a block


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
        norms = np.sqrt(np.asarray(self.train.astype(np.float32).sum(axis=0)).ravel())
        k = int(self.params["neighbours"])
        shrink = np.float32(self.params["shrinkage"])
        n = self.train.shape[1]
        kk = min(k, n - 1) if n > 1 else 1
        parts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def neighbours(lo: int, block: sp.csr_matrix) -> None:  # one block of items' co-occurrence rows
            # Only the pairs some user shares (the rest score 0 and are no neighbour): at a shop's 200k items
            # the rows are mostly empty, and a dense row block cost items^2 whatever the data. A product's
            # rows hold each column once, and the selection below does not read their order: no sort needed.
            # Each pair's similarity is computed in the product's own layout and each row's (kk + 1)-th best
            # bounds what is kept (kk + 1: the item's own pair is among its row's and is no neighbour), so only
            # those few pairs a row get a row index, a filter and a sort. Indexing every pair first was half of a
            # fit's CPU.
            b, starts = block.shape[0], block.indptr
            counts = np.diff(starts)
            values = block.data / (np.repeat(norms[lo:lo + b], counts) * norms[block.indices] + shrink)
            at = np.flatnonzero(values >= np.repeat(nth_best_in_rows(values, starts, kk + 1), counts))
            rows, cols = np.searchsorted(starts, at, side="right") - 1, block.indices[at].astype(np.int64)
            values = values[at]
            keep = (cols != rows + lo) & (values > 0)
            # Each item's kk most similar, ties at the last place to the more popular (the model's tie-break).
            rows, cols, values, _ = ranked_entries(rows[keep], cols[keep], values[keep], b, kk, self.tiebreak)
            parts[lo] = (rows + lo, cols, values)

        item_cooccurrence(self.train, max(1, BLOCK_CELLS // max(n, 1)), neighbours, dense=False)
        rows, cols, vals = (np.concatenate([parts[lo][i] for lo in sorted(parts)]) for i in range(3))
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
