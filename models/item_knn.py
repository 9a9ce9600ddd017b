"""Item-based collaborative filtering: cosine item-item similarity with shrinkage, top-k neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender, UserBlock


class ItemKNN(Recommender):
    """sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrinkage), pruned to each item's k neighbours.

    A user's score for item j is the sum of the similarities between j and the items they know, so users
    unseen in training are served from whatever history they bring (k-shot) without refitting.
    """

    name = "item_knn"

    @classmethod
    def default_params(cls) -> dict:
        return {"neighbours": 100, "shrinkage": 10.0}

    def _fit(self, seed: int) -> None:
        x = self.train.astype(np.float32).tocsr()
        xt = x.T.tocsr()  # items x users
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        k = int(self.params["neighbours"])
        shrink = float(self.params["shrinkage"])
        n = x.shape[1]
        rows, cols, vals = [], [], []
        block = max(1, 8_000_000 // max(n, 1))
        for lo in range(0, n, block):  # co-occurrence of one block of items at a time, densified
            dense = (xt[lo:lo + block] @ x).toarray()
            hi = lo + dense.shape[0]
            dense /= (norms[lo:hi, None] * norms[None, :] + shrink)
            dense[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
            kk = min(k, n - 1) if n > 1 else 1
            top = np.argpartition(-dense, kk - 1, axis=1)[:, :kk]
            top_vals = np.take_along_axis(dense, top, axis=1)
            keep = top_vals > 0
            rows.append(np.repeat(np.arange(lo, hi), kk)[keep.ravel()])
            cols.append(top.ravel()[keep.ravel()])
            vals.append(top_vals.ravel()[keep.ravel()])
        # similarity[i, j]: j is among i's neighbours; scoring uses history @ similarity.
        self.similarity = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                        shape=(n, n), dtype=np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return np.asarray((users.history @ self.similarity).todense(), dtype=np.float32)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "similarity.npz", self.similarity)

    def _load_state(self, path: Path) -> None:
        self.similarity = sp.load_npz(path / "similarity.npz").tocsr()
