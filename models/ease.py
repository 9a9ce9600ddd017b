"""EASE (Steck, 2019): a closed-form linear item-item model, strong on implicit feedback.

B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0. Scores are history @ B, so k-shot
users are served from their known items; with no history the scores are zero and the tie-breaker
(popularity) decides, which is why the hybrid pairs it with a model that sees features.

Item-degree normalisation (``degree_norm`` = a): the Gram matrix is fitted as D^-a X^T X D^-a (D: each item's
interaction count), the symmetric normalisation of the item-item graph that GF-CF (Shen et al., 2021) and
LightGCN use, here with a mild exponent, and the history is read on the same scale (B's rows carry D^-a, so
scoring is still history @ B). It stops the most popular items' co-occurrences from dominating every
regression. The ridge keeps its ratio to the mean diagonal, so ``l2`` stays in units of raw co-occurrence
counts (a = 0 is plain EASE). Chosen on protocol W's split seeds 1-3 (nDCG@10, mean: a = 0 0.4776, 0.15
0.4822; 0.25 with l2 x2 0.4818) and confirmed on seed 42, the benchmark's own split (0.4808 -> 0.4898). Items
nobody interacted with (new items, the item-cold fold's held-out ones) have a zero row and column in B
whatever lambda is (their Gram row is lambda on the diagonal only), so the model is fitted and stored on the
items with interactions alone: the same weights, and at a fifth of the catalogue held out about half the
Cholesky's flops and 0.64x its memory. Memory is one n_known^2 float32 matrix, fitted in place and laid out in
column tiles for scoring in the same memory (:mod:`models.tiled`): ~2.9 GB at 27k items, 40 GB at 100k.

The catalogue cap (``max_items``, ``RECSYS_EASE_MAX_ITEMS``): EASE is fitted on the most-taken items up to the
cap (ties by catalogue order), the regression of those items on each other; the rest score zero here and are
ranked by the hybrid's other components (the two-tower, item-kNN), whose memory grows with the catalogue, not
its square. Unset (0), the cap is ``DEFAULT_MAX_ITEMS`` or what a quarter of this machine's memory holds as one
float32 square (:func:`memory_item_cap`: ~40k items at 24 GiB), whichever is smaller, so a wide catalogue no
longer stops the night; the cap used and the items it kept are in the report (``saved_tuning``). The time
grows as the cube: 388 s a fit at 39.7k items on this 2-core machine (a wide catalogue's night, measured,
with a single-threaded factorisation), ~41 s at 20k (16 M interactions: 7.5 s the Gram matrix's lower
triangle, 12 s the Cholesky in threaded blocks, 18 s the inverse), and a night fits EASE four times (the
tuning, evaluation and item-cold folds, production)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import psutil
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from models.base import Recommender
from models.ranking import Stage, unseen_moments, unseen_top, with_unscored_items
from models.serving import OwnList, UserBlock, item_cooccurrence
from models.tiled import TiledMatrix

# The default cap on EASE's items: four fits a night of ~41 s each at 20k items (the cube of the items).
DEFAULT_MAX_ITEMS = 20_000

# The largest matrix handed to OpenBLAS's threaded spotrf at once. Its threaded path (SkylakeX kernels, 0.3.30
# in scipy's wheel, also 0.3.31 and 0.3.34) segfaults in ssyrk's packing from about 26,300 float32 items on
# (26,200 fine; 20k in float64: the limit moves with the build and the threads), the size of a 20 M interactions
# night; larger matrices are factorised in blocks of at most this size, a third of the smallest crash seen (at
# 20k items 8,192 and 16,384 both take 11.6 s).
THREADED_POTRF_MAX = 8_192


class EASE(Recommender):
    name = "ease"
    lists_from_stage = True
    description = "a linear item-to-item autoencoder (EASE) over the user's history"

    @classmethod
    def default_params(cls) -> dict:
        return {"l2": 500.0, "degree_norm": 0.15, "max_items": 0}

    SETTINGS = {"max_items": "ease_max_items"}

    def _fit(self, seed: int) -> None:
        # float32 and in place: one n_items^2 matrix at a time (27k items: 2.9 GB, not the 14 GB of float64
        # copies). Co-occurrence counts are exact in float32 up to 2^24; the l2 ridge keeps the inverse
        # well conditioned (measured: weights within 3e-8 of a float64 fit on 1,500 items, largest 0.02). The
        # Gram matrix is symmetric positive definite, so its inverse is a Cholesky inverse (half an LU's flops).
        counts = np.diff(self.train.tocsc().indptr)
        cap = int(self.params["max_items"]) or min(DEFAULT_MAX_ITEMS, memory_item_cap())
        self.known = fitted_items(counts, cap)  # None: every item of the catalogue
        self._position = None
        self.catalogue = {"items_fitted": len(counts) if self.known is None else len(self.known),
                          "items_with_interactions": int(np.count_nonzero(counts)), "catalogue": len(counts),
                          "max_items": cap, "cap_from": "RECSYS_EASE_MAX_ITEMS" if self.params["max_items"]
                          else f"the default: {DEFAULT_MAX_ITEMS:,} or a quarter of this machine's memory"}
        train = self.train if self.known is None else self.train[:, self.known]
        n = train.shape[1]
        degree = (counts if self.known is None else counts[self.known]).astype(np.float64)  # all >= 1
        alpha = float(self.params["degree_norm"])
        scale = np.power(degree, -alpha).astype(np.float32)
        l2 = float(self.params["l2"]) * float(np.mean(degree ** (1 - 2 * alpha)) / np.mean(degree))
        gram = np.empty((n, n), dtype=np.float32)

        def into_gram(lo: int, rows: np.ndarray) -> None:
            block = gram[lo:lo + len(rows), :rows.shape[1]]
            np.multiply(rows, scale[None, :rows.shape[1]], out=block)
            block *= scale[lo:lo + len(rows), None]

        # The lower triangle alone (row-major): what the factorisation and the inverse read (LAPACK's upper
        # triangle of the Fortran view); 7.5 s instead of 11.8 s at 20k items and 16 M interactions.
        item_cooccurrence(train, 1024, into_gram, lower=True)
        gram[np.diag_indices_from(gram)] += np.float32(l2)
        inverse = _spd_inverse_in_place(gram)  # in gram's memory
        # B = diag(scale) (I - P / diag(P)), in P's memory: the history is read on the normalised scale
        self.weights = TiledMatrix.ease_weights_in_place(inverse, row_scale=scale)

    def score_block(self, users: UserBlock) -> np.ndarray:
        if self.known is None:
            return self.weights.rmatmul(users.history)
        scores = np.zeros((len(users.user_ids), len(self.item_ids)), dtype=np.float32)
        return self.weights.rmatmul(self._fitted_history(users), out=scores, columns=self.known)

    def _fitted_history(self, users: UserBlock) -> sp.csr_matrix:
        """The block's history on the fitted items' columns (positions by a lookup: scipy's column indexing
        is a sparse product)."""
        history = users.history.tocsr()
        position = self._positions()[history.indices]
        kept = position >= 0
        row = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))[kept]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=history.shape[0]))])
        return sp.csr_matrix((history.data[kept], position[kept], indptr), shape=(history.shape[0], len(self.known)))

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """Scored on the fitted items alone (beyond the memory cap every item scores 0, and none is a
        candidate): the block's best ``depth`` a user and its rows' moments from that dense block."""
        if self._block_is_scored(users) or self.known is None:
            return super().first_stage(users, depth)
        fitted = self._fitted_history(users)
        scores = self.weights.rmatmul(fitted)  # (users, fitted items)
        seen = users.seen.tocoo()
        position = self._positions()[seen.col]
        on_fitted = position >= 0
        seen_scores = np.zeros(seen.nnz)  # an item beyond the cap scores 0
        seen_scores[on_fitted] = scores[seen.row[on_fitted], position[on_fitted]]
        mean, inverse = unseen_moments(scores.sum(axis=1, dtype=np.float64),
                                       np.einsum("ij,ij->i", scores, scores, dtype=np.float64), len(self.item_ids),
                                       seen.row, seen_scores)
        top = unseen_top(scores, fitted, depth, self.tiebreak[self.known])
        best = np.where(top >= 0, np.take_along_axis(scores, np.maximum(top, 0), axis=1), -np.inf)
        top = np.where(top >= 0, self.known[np.maximum(top, 0)], -1)

        def scores_at(columns: np.ndarray) -> np.ndarray:
            position = self._positions()[columns]
            fitted_columns = position >= 0
            out = np.zeros((len(users.user_ids), len(columns)), dtype=np.float32)
            out[:, fitted_columns] = scores[:, position[fitted_columns]]
            return out

        return Stage(top, scores_at, mean=mean, inverse=inverse, best=best.astype(np.float32))

    def own_list(self, users: UserBlock, keep: np.ndarray, n: int) -> OwnList | None:
        """The block's lists from the first stage on the fitted items, as the full ranking orders them: each
        user's best fitted items merged with the items beyond the cap, which all score 0 (the first ``n`` of
        them the user has not seen, by the tie-break): above a negative score, below a positive one."""
        listed = super().own_list(users, keep, n) if self.known is not None else None
        if listed is None:
            return None
        top, best = with_unscored_items(listed.top, listed.best, self._beyond_by_tiebreak(), users.seen,
                                        self.tiebreak)
        return OwnList(top, best, listed.asked)

    def _beyond_by_tiebreak(self) -> np.ndarray:
        """The catalogue's columns beyond the cap in tie-break order (kept)."""
        kept = self.__dict__.get("_beyond")
        if kept is None or kept[0] is not self.known:
            order = self.by_tiebreak()
            kept = self._beyond = (self.known, order[self._positions()[order] < 0])
        return kept[1]

    def _positions(self) -> np.ndarray:
        """Each catalogue column's row in the fitted weights, -1 for an item left out (kept after the first call)."""
        position = getattr(self, "_position", None)
        if position is None:
            position = np.full(len(self.item_ids), -1, dtype=np.int64)
            position[self.known] = np.arange(len(self.known))
            self._position = position
        return position

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"because you rated <the known item with the largest weight towards the recommended one>"."""
        return self.neighbour_reasons(users, rows, cols, self._weight)

    def _weight(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """B[rows[i], cols[i]] by catalogue column (0 where either item has no interactions)."""
        if self.known is None:
            return self.weights.take(rows, cols)
        position = self._positions()
        r, c = position[rows], position[cols]
        both = (r >= 0) & (c >= 0)
        out = np.zeros(len(rows), dtype=np.float32)
        out[both] = self.weights.take(r[both], c[both])
        return out

    def summary(self) -> str:
        fitted, taken = self.catalogue["items_fitted"], self.catalogue["items_with_interactions"]
        return (f"on the {fitted:,} most taken of {taken:,} items (cap {self.catalogue['max_items']:,})"
                if fitted < taken else "")

    def items_left_out(self) -> int:
        return self.catalogue["items_with_interactions"] - self.catalogue["items_fitted"]

    def _save_state(self, path: Path) -> None:
        self.weights.save(path / "weights.npy")
        if self.known is not None:
            np.save(path / "known_items.npy", self.known)
        (path / "catalogue.json").write_text(json.dumps(self.catalogue, indent=2))

    @classmethod
    def saved_tuning(cls, path: Path) -> dict | None:
        """The items EASE was fitted on and the cap that chose them (for the report)."""
        saved = Path(path) / "catalogue.json"
        return json.loads(saved.read_text()) if saved.exists() else None

    def _load_state(self, path: Path) -> None:
        known = path / "known_items.npy"
        self.known = np.load(known) if known.exists() else None
        self.weights = TiledMatrix.load(path / "weights.npy", len(self.item_ids) if self.known is None
                                        else len(self.known))
        self._position = None
        self.catalogue = self.saved_tuning(path) or {}


def fitted_items(counts: np.ndarray, cap: int) -> np.ndarray | None:
    """The catalogue columns EASE is fitted on: the items with interactions, the ``cap`` most-taken of them
    where there are more (ties by catalogue order), ascending; None when that is the whole catalogue."""
    taken = np.flatnonzero(counts)
    if len(taken) > cap:
        taken = np.sort(taken[np.argsort(-counts[taken], kind="stable")[:cap]])
    return None if len(taken) == len(counts) else taken


def memory_item_cap(share: float = 0.25) -> int:
    """The most items whose float32 square fits in ``share`` of this machine's memory (the smaller of the
    machine's and its container's limit). The machine's, not what is free now, so that the same machine fits
    the same model every night."""
    memory = psutil.virtual_memory().total
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.exists() and (text := limit.read_text().strip()).isdigit():
        memory = min(memory, int(text))
    return max(1, math.isqrt(int(share * memory) // 4))


def _spd_inverse_in_place(matrix: np.ndarray, block: int = 1024, most: int | None = None) -> np.ndarray:
    """The inverse of a symmetric positive definite float32 matrix, in its own memory where LAPACK allows.

    Cholesky (:func:`_cholesky_in_place` + ``potri``) costs half the flops of an LU inverse (measured 1.6x
    faster at 4k items, same error against float64). LAPACK sees the C array as its Fortran transpose, the same
    symmetric matrix, and leaves one triangle; it is mirrored block by block (no n^2 temporaries). Only the
    lower triangle of the row-major ``matrix`` is read. ``most``: see :func:`_cholesky_in_place`.
    """
    factor = matrix.T
    info = _cholesky_in_place(factor, most or THREADED_POTRF_MAX)
    if info == 0:
        inverse, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"ease: the regularised Gram matrix is not positive definite (LAPACK info {info}); "
                         "raise the l2 parameter")
    n = inverse.shape[0]
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        inverse[lo:hi, :lo] = inverse[:lo, lo:hi].T
        diagonal = inverse[lo:hi, lo:hi]
        inverse[lo:hi, lo:hi] = np.triu(diagonal) + np.triu(diagonal, 1).T
    return np.ascontiguousarray(inverse.T)  # the same memory when LAPACK worked in place


def _cholesky_in_place(m: np.ndarray, most: int = THREADED_POTRF_MAX, columns: int = 2048) -> int:
    """The upper Cholesky factor U (m = U^T U) of the symmetric positive definite Fortran-ordered float32 ``m``,
    written over its upper triangle (the lower one is left as it was); LAPACK's ``info`` (0: done).

    Up to ``most`` rows it is LAPACK's threaded ``spotrf``; beyond, right-looking by halves: U11 = chol(m11),
    U12 = U11^-T m12 (``strsm``), then chol(m22 - U12^T U12), the update of the upper triangle alone, a block
    of ``columns`` at a time (half the flops of the full product, no n^2 temporary). Threaded throughout:
    one BLAS thread cost 16.4 s at 20k items, this 11.6 s (2 threads, measured; threaded ``spotrf``
    on the whole matrix 8.7 s, where it does not crash)."""
    n = m.shape[0]
    if n <= most:
        factor, info = lapack.spotrf(m, lower=False, overwrite_a=True, clean=False)
        if not np.may_share_memory(factor, m):  # a view of a larger matrix: LAPACK worked on a copy
            m[...] = factor
        return int(info)
    half = n // 2 if n < 2 * most else most
    info = _cholesky_in_place(m[:half, :half], most, columns)
    if info:
        return info
    panel = np.asfortranarray(m[:half, half:])
    panel = blas.strsm(1.0, m[:half, :half], panel, side=0, lower=0, trans_a=1, overwrite_b=True)
    m[:half, half:] = panel
    rest = m[half:, half:]
    for lo in range(0, n - half, columns):
        hi = min(n - half, lo + columns)
        rest[:hi, lo:hi] -= panel[:, :hi].T @ panel[:, lo:hi]
    del panel
    info = _cholesky_in_place(rest, most, columns)
    return half + info if info else 0
