"""Item-based collaborative filtering: cosine item-item similarity with shrinkage, top-k neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.serving import UserBlock, item_cooccurrence


class ItemKNN(Recommender):
    """sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrinkage), pruned to each item's k neighbours.

    A user's score for item j is the sum of the similarities between j and the items they know, so users
    unseen in training are served from whatever history they bring (k-shot) without refitting.
    """

    name = "item_knn"
    description = "items taken by the same users as the user's items"

    @classmethod
    def default_params(cls) -> dict:
        return {"neighbours": 100, "shrinkage": 10.0}

    def _fit(self, seed: int) -> None:
        norms = np.sqrt(np.asarray(self.train.astype(np.float32).sum(axis=0)).ravel())
        k = int(self.params["neighbours"])
        shrink = float(self.params["shrinkage"])
        n = self.train.shape[1]
        kk = min(k, n - 1) if n > 1 else 1
        parts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def neighbours(lo: int, dense: np.ndarray) -> None:  # one block of items' co-occurrence rows
            hi = lo + dense.shape[0]
            dense /= (norms[lo:hi, None] * norms[None, :] + shrink)
            dense[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
            top = np.argpartition(-dense, kk - 1, axis=1)[:, :kk]
            top_vals = np.take_along_axis(dense, top, axis=1)
            keep = (top_vals > 0).ravel()
            parts[lo] = (np.repeat(np.arange(lo, hi), kk)[keep], top.ravel()[keep], top_vals.ravel()[keep])

        item_cooccurrence(self.train, 8_000_000 // max(n, 1), neighbours)
        rows, cols, vals = (np.concatenate([parts[lo][i] for lo in sorted(parts)]) for i in range(3))
        # similarity[i, j]: j is among i's neighbours; scoring uses history @ similarity.
        self.similarity = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return np.asarray((users.history @ self.similarity).todense(), dtype=np.float32)

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"because you rated <the known item most similar to the recommended one>"."""
        return self.neighbour_reasons(users, rows, cols,
                                      lambda known, target: np.asarray(self.similarity[known, target]).ravel())

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "similarity.npz", self.similarity, compressed=False)

    def _load_state(self, path: Path) -> None:
        self.similarity = sp.load_npz(path / "similarity.npz").tocsr()
