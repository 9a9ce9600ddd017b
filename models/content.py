"""Models that score items from what is known before anyone rates them: the way new items reach people.

- :class:`ContentKNN`, a content neighbourhood: an item is described by its genres, release decade and exact
  year, title words (inverse-document-frequency weighted) and, where the encoder is on, the pretrained
  sentence vector of its text, each part unit length and weighted; a user's profile is the unit sum of their
  known items' vectors, and an item's score is its cosine with the profile. A film loaded today with no
  rating is scored exactly like one rated a thousand times.
- Baselines for new items, the ones a model must beat: :class:`Activity` (users ranked by how much they
  interact: a heavy user has rated more of everything; for a user, the newest items by genre share),
  :class:`GenreYear` (the content neighbourhood on genres and exact release year alone),
  :class:`GenrePopularity` (how much of a user's history is in the item's genres) and
  :class:`RandomExposure` (a seeded coin per user and item).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender, mix64
from models.ranking import Stage, tiled_top, unseen_moments
from models.serving import N_DECADES, UserBlock, decade_of

FIRST_YEAR, LAST_YEAR = 1880, 2040  # exact release years one-hot; others (and unknown) have no year part
# Content columns set in at least this share of items are scored as one dense BLAS product (the encoder's text
# vector: every item; genres): scipy's single-threaded sparse x dense product over them was 57 % of scoring
# the published hybrid at 5 M interactions. The rest (title words, years) stays sparse.
DENSE_COLUMN_SHARE = 0.05
# The sparse part's scores are added to the dense part's this many at a time (float32: 1 MB, in cache).
CONTENT_ADD_VALUES = 1 << 18


def _unit_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return (sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32))
            @ matrix).tocsr().astype(np.float32)


class ContentKNN(Recommender):
    name = "content_knn"
    lists_from_stage = True
    description = "items whose genres, year and text (pretrained encoder) are like the user's"
    scores_new_items = True

    @classmethod
    def default_params(cls) -> dict:
        # Relative weight of each kind of content in an item's vector (each part unit length before weighting).
        # Chosen on protocol I's split seeds 1-2 (not the benchmark's seeds 0-4), items -> users and
        # users -> items nDCG; the text part only counts where the pretrained encoder is on.
        # (items -> users nDCG@100 0.178 -> 0.294 with the encoder and the exact year, users -> items nDCG@10
        # 0.043; text weights 1.5-8 and year weights 0-1 were tried).
        return {"genre_weight": 1.0, "decade_weight": 0.5, "year_weight": 1.0, "title_weight": 0.7,
                "text_weight": 3.0}

    def _fit(self, seed: int) -> None:
        n = len(self.item_ids)
        p = self.params
        parts = [(p["genre_weight"], sp.csr_matrix(self.item_genres)),
                 (p["decade_weight"], one_hot(decade_of(self.item_year), N_DECADES)[:, 1:]),  # 0: unknown
                 (p["year_weight"], year_one_hot(self.item_year))]
        if float(p["title_weight"]) > 0:
            tokens = sp.csr_matrix(self.item_tokens, dtype=np.float32)
            document_frequency = np.asarray((tokens > 0).sum(axis=0)).ravel()
            idf = np.log((1.0 + n) / (1.0 + document_frequency)).astype(np.float32)
            # A word in a single title tells nothing about any other item: only words shared by a few titles count.
            idf[document_frequency < 2] = 0.0
            parts.append((p["title_weight"], (tokens @ sp.diags(idf)).tocsr()))
        if self.item_text.shape[1]:
            parts.append((p["text_weight"], sp.csr_matrix(self.item_text)))
        self.content = _unit_rows(sp.hstack([float(w) * _unit_rows(part) for w, part in parts if float(w) > 0]).tocsr())
        self.content.eliminate_zeros()
        self._scoring = self._gram_parts = self._kept_columns = None

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self.column_scores(users, slice(None))

    def column_scores(self, users: UserBlock, columns: np.ndarray | slice) -> np.ndarray:
        """The block's scores of the catalogue ``columns`` only (a caller that needs a few items, the new
        ones, does not pay for the catalogue): the dense content columns by BLAS, the sparse ones by scipy."""
        return self._scores(self._profile(users), columns)

    def _profile(self, users: UserBlock) -> tuple[np.ndarray, sp.csr_matrix]:
        """Each user's profile, the sum of their items' content rows scaled to unit length (zero without any),
        in the two parts of :meth:`_scoring_parts`: dense float32 and CSR float32 (a user's years and title
        words are a few of thousands of columns: densified, they were most of a block's profile)."""
        dense, sparse = self._scoring_parts()
        in_dense = np.asarray(users.history @ dense, dtype=np.float32)
        in_sparse = sp.csr_matrix(users.history @ sparse, dtype=np.float32)
        in_sparse.sum_duplicates()
        square = np.square(in_dense).sum(axis=1) + _row_sums(in_sparse.multiply(in_sparse))
        scale = np.divide(1.0, np.sqrt(square), out=np.zeros_like(square), where=square > 0).astype(np.float32)
        in_dense *= scale[:, None]
        in_sparse.data *= np.repeat(scale, np.diff(in_sparse.indptr))
        return in_dense, in_sparse

    def _scores(self, profile: tuple[np.ndarray, sp.csr_matrix], columns: np.ndarray | slice) -> np.ndarray:
        return self._scores_of(profile[0], _words_of(profile[1]), columns)

    def _scores_of(self, dense_profile: np.ndarray, words: np.ndarray, columns: np.ndarray | slice,
                   out: np.ndarray | None = None) -> np.ndarray:
        """The scores of ``columns`` from a block's profile: its dense part and its sparse part densified,
        transposed (:func:`_words_of`; a tiled first stage densifies it once, not once a tile); written into
        ``out`` where one is given (:func:`models.ranking.tiled_top`)."""
        dense_columns, sparse_columns = self._columns(columns)
        scores = np.matmul(dense_profile, dense_columns.T, out=out)
        if sparse_columns.nnz:
            # The sum is dense (users x columns) anyway: the sparse columns times the profile's few thousand word and
            # year columns densified, in one pass, instead of a sparse product that built a CSR of nearly every
            # pair before densifying it (an 80-user block of 200k items: 0.171 s -> 0.024 s). Added in column
            # chunks whose transposed product stays in cache (~1 MB): added whole, the transposed read of a
            # catalogue-wide product was most of the sum (an 80-user block of 200k items: 0.10 s -> 0.06 s).
            # Each score is the same product, summed in the same order.
            step = max(1, CONTENT_ADD_VALUES // max(1, words.shape[1]))
            for lo in range(0, sparse_columns.shape[0], step):
                scores[:, lo:lo + step] += (sparse_columns[lo:lo + step] @ words).T
        return scores

    def _columns(self, columns: np.ndarray | slice) -> tuple[np.ndarray, sp.csr_matrix]:
        """:meth:`_scoring_parts`' rows of ``columns``, kept for the few sets asked for again and again (every
        block asks for the same new items: gathering them was a tenth of scoring them)."""
        dense, sparse = self._scoring_parts()
        if isinstance(columns, slice):
            return dense[columns], sparse[columns]
        columns = np.asarray(columns)
        kept = self._kept_columns = getattr(self, "_kept_columns", None) or {}
        key = hash(columns.tobytes())
        entry = kept.get(key)  # one read: blocks scored on other threads may replace the entries
        if entry is None or not np.array_equal(entry[0], columns):
            entry = (columns.copy(), dense[columns], sparse[columns])
            if len(kept) >= 4:
                kept.clear()
            kept[key] = entry
        return entry[1], entry[2]

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """Each user's best ``depth`` unseen items from the block's profiles a tile of the catalogue at a time
        (:func:`models.ranking.tiled_top`), and the rows' moments without scoring the catalogue (a blend weighs
        the content neighbourhood only on the items with too few interactions: a sixth of a 60k-item shop
        catalogue). A score is the profile p (unit length) dotted with an item's content row c_i, so over the
        whole catalogue a row's sum is p . sum_i c_i and its sum of squares p G p with G = C^T C, the
        content's Gram matrix (features x features, kept after the first call); the seen items' own scores are
        taken back out, as :func:`models.ranking.served_z_scores` does. Where the block's full scores are
        already computed (shared with the model scored alone), they are read instead."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        profile = self._profile(users)
        seen = users.seen.tocoo()

        def unseen() -> tuple[np.ndarray, np.ndarray]:
            column_sum_dense, column_sum_sparse, gram_dense, gram_cross, gram_sparse = self._gram()
            p_dense, p_sparse = profile[0].astype(np.float64), profile[1].astype(np.float64)
            total = p_dense @ column_sum_dense + p_sparse @ column_sum_sparse
            # p G p over the parts: dense G dense + 2 sparse G dense + sparse G sparse.
            square = (np.einsum("ij,ij->i", p_dense @ gram_dense + 2 * (p_sparse @ gram_cross), p_dense)
                      + _row_sums(p_sparse.multiply(p_sparse @ gram_sparse)))
            return unseen_moments(total, square, len(self.item_ids), seen.row,
                                  self._pair_scores(*profile, seen.row, seen.col))

        words = _words_of(profile[1])

        def scores_at(columns, rows=slice(None), out=None) -> np.ndarray:
            return self._scores_of(profile[0][rows], words[:, rows], columns, out)

        # A profile without any content (a user without history) scores every item 0.
        zero = ~profile[0].any(axis=1) & (np.diff(profile[1].indptr) == 0)
        top, best = tiled_top(scores_at, len(users.user_ids), len(self.item_ids), seen, depth, self.tiebreak, zero)
        return Stage(top, scores_at, moments=unseen, best=best)

    def _pair_scores(self, profile_dense: np.ndarray, profile_sparse: sp.csr_matrix, rows: np.ndarray,
                     cols: np.ndarray) -> np.ndarray:
        """The scores of the (row, item column) pairs (``rows`` ascending) from the block's profiles: a
        product of each user's items with their profile (a pair-by-pair float64 product was 25x slower); the
        sparse part by looking each pair's item features up among its user's (sorted keys, one search)."""
        dense, sparse = self._scoring_parts()
        out = np.zeros(len(rows), dtype=np.float64)
        starts = np.searchsorted(rows, np.arange(profile_dense.shape[0] + 1))
        for row in np.flatnonzero(np.diff(starts)):
            pairs = slice(starts[row], starts[row + 1])
            out[pairs] = dense[cols[pairs]] @ profile_dense[row]
        if sparse.nnz and profile_sparse.nnz:
            part = sparse[cols]  # a few title words and a year an item
            pair = np.repeat(np.arange(len(cols)), np.diff(part.indptr))
            width = np.int64(sparse.shape[1])
            profile = profile_sparse.tocoo()  # canonical: keys ascending
            keys = profile.row.astype(np.int64) * width + profile.col
            wanted = rows[pair].astype(np.int64) * width + part.indices
            at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            value = np.where(keys[at] == wanted, profile.data[at], 0.0)
            out += np.bincount(pair, part.data * value, minlength=len(cols))
        return out

    def _gram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix]:
        """The content's column sums and Gram matrix C^T C in float64, in the parts of :meth:`_scoring_parts`
        (dense-dense, sparse-dense, sparse-sparse), computed once."""
        gram = getattr(self, "_gram_parts", None)
        if gram is None:
            dense, sparse = self._scoring_parts()
            dense64, sparse64 = dense.astype(np.float64), sparse.astype(np.float64)
            gram = self._gram_parts = (dense64.sum(axis=0), np.asarray(sparse64.sum(axis=0)).ravel(),
                                       dense64.T @ dense64, np.asarray(sparse64.T @ dense64),
                                       (sparse64.T @ sparse64).tocsr())
        return gram

    def _scoring_parts(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """The content matrix split by column (kept after the first call): the columns set in at least
        :data:`DENSE_COLUMN_SHARE` of items as a dense (items, columns) array, the others as CSR."""
        parts = getattr(self, "_scoring", None)
        if parts is None:
            dense = np.diff(self.content.tocsc().indptr) >= DENSE_COLUMN_SHARE * self.content.shape[0]
            parts = self._scoring = (np.ascontiguousarray(self.content[:, np.flatnonzero(dense)].toarray()),
                                     self.content[:, np.flatnonzero(~dense)].tocsr())
        return parts

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"similar to <the known item whose content is closest>"."""
        def similarity(known: np.ndarray, target: np.ndarray) -> np.ndarray:
            return np.asarray(self.content[known].multiply(self.content[target]).sum(axis=1)).ravel()

        return self.neighbour_reasons(users, rows, cols, similarity, kind="content")

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "content.npz", self.content, compressed=False)

    def _load_state(self, path: Path) -> None:
        self.content = sp.load_npz(path / "content.npz").tocsr()
        self._scoring = self._gram_parts = self._kept_columns = None


def _words_of(profile_sparse: sp.csr_matrix) -> np.ndarray:
    """A block's sparse profile part (users x year and word columns) densified and transposed, as the sparse
    content columns' product reads it: C-contiguous, once. scipy's CSR x dense product reads its operand
    raveled, so a transposed view was copied whole by every column chunk's product: at the production
    hybrid's audience floor (1,258 new items for blocks of tens of thousands of users) each chunk of a few
    items copied a ~GB array."""
    return np.ascontiguousarray(profile_sparse.toarray().T)


def _row_sums(matrix: sp.spmatrix) -> np.ndarray:
    return np.asarray(matrix.sum(axis=1)).ravel()


def one_hot(codes: np.ndarray, width: int) -> sp.csr_matrix:
    n = len(codes)
    return sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), codes)), shape=(n, width))


def year_one_hot(years: np.ndarray) -> sp.csr_matrix:
    """Exact release year, one-hot (an unknown or out-of-range year: an empty row)."""
    known = (years >= FIRST_YEAR) & (years <= LAST_YEAR)
    rows = np.flatnonzero(known)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, years[known] - FIRST_YEAR)),
                         shape=(len(years), LAST_YEAR - FIRST_YEAR + 1))


class GenreYear(ContentKNN):
    """Baseline: the content neighbourhood on genres and exact release year alone (no title, no encoder):
    what a new item's most basic metadata tells."""

    name = "genre_year"

    @classmethod
    def default_params(cls) -> dict:
        return {"genre_weight": 1.0, "decade_weight": 0.0, "year_weight": 1.0, "title_weight": 0.0,
                "text_weight": 0.0}


class Activity(Recommender):
    """Baseline: users ranked by how many items they interacted with in training (for any item, a heavy user
    comes first: they have taken more of everything); within a user's own list, items with fewer
    interactions first (the newest), then by the user's genre share (:class:`GenrePopularity`).

    score(u, i) = n_u + 0.5 [i has no interaction] + 0.25 genre_share(u, i): integer activities differ by at
    least 1, so across users activity decides alone; for one user n_u is constant. Exact in float32 up to
    n_u ~ 2^16 (beyond, the genre share's resolution coarsens; the order by activity holds)."""

    name = "activity"
    scores_new_items = True

    def _fit(self, seed: int) -> None:
        self.genres = GenrePopularity.part_of(self)
        self.genres._fit(seed)

    def score_block(self, users: UserBlock) -> np.ndarray:
        share = self.genres.score_block(users)
        share *= np.float32(0.25)
        share += np.float32(0.5) * (self.item_popularity == 0).astype(np.float32)[None, :]
        share += users.history_length.astype(np.float32)[:, None]
        return share

    def _save_state(self, path: Path) -> None:
        self.genres._save_state(path)

    def _load_state(self, path: Path) -> None:
        self.genres = GenrePopularity.part_of(self)
        self.genres._load_state(path)


class GenrePopularity(Recommender):
    """Baseline: score(u, i) = the share of u's known interactions in i's genres (the catalogue's shares for a
    user without any), averaged over i's genres. Scores new items; knows nothing finer than genre."""

    name = "genre_popularity"
    scores_new_items = True

    def _fit(self, seed: int) -> None:
        counts = np.asarray(self.train.sum(axis=0)).ravel() @ self.item_genres
        self.global_share = (counts / max(float(counts.sum()), 1.0)).astype(np.float32)
        sizes = self.item_genres.sum(axis=1, keepdims=True)
        self.item_profile = np.divide(self.item_genres, sizes, out=np.zeros_like(self.item_genres),
                                      where=sizes > 0).astype(np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self.column_scores(users, slice(None))

    def column_scores(self, users: UserBlock, columns: np.ndarray | slice) -> np.ndarray:
        """The block's scores of the catalogue ``columns`` only."""
        per_genre = np.asarray(users.history @ self.item_genres, dtype=np.float32)  # (b, genres)
        totals = per_genre.sum(axis=1, keepdims=True)
        share = np.where(totals > 0, per_genre / np.maximum(totals, 1.0), self.global_share[None, :])
        return (share @ self.item_profile[columns].T).astype(np.float32, copy=False)

    def _save_state(self, path: Path) -> None:
        np.savez(path / "genres.npz", global_share=self.global_share, item_profile=self.item_profile)

    def _load_state(self, path: Path) -> None:
        with np.load(path / "genres.npz") as z:
            self.global_share, self.item_profile = z["global_share"], z["item_profile"]


class RandomExposure(Recommender):
    """Baseline: every (user, item) gets a seeded uniform score, the same whatever block the user is scored
    in (a hash of seed, user id and item id): what showing a new item to people at random achieves."""

    name = "random"
    scores_new_items = True

    def _fit(self, seed: int) -> None:
        with np.errstate(over="ignore"):  # wrapping multiplication is the point
            self.salt = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)

    def score_block(self, users: UserBlock) -> np.ndarray:
        with np.errstate(over="ignore"):
            x = mix64(users.user_ids.astype(np.uint64)[:, None] * np.uint64(0xD1B54A32D192ED03)
                      + self.item_ids.astype(np.uint64)[None, :] * np.uint64(0xABC98388FB8FAC03) + self.salt)
        return ((x >> np.uint64(40)).astype(np.float32) / np.float32(2**24))

    def _save_state(self, path: Path) -> None:
        np.save(path / "salt.npy", np.array([self.salt], dtype=np.uint64))

    def _load_state(self, path: Path) -> None:
        self.salt = np.load(path / "salt.npy")[0]
