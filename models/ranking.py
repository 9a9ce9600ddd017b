"""Ranking arithmetic shared by models (tuning) and evaluation (reporting): one implementation."""

from __future__ import annotations

from functools import cache

import numpy as np
import scipy.sparse as sp

from models.tiled import on_scoring_threads, one_blas_thread, thread_count


def discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_from_hits(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user nDCG from a (users, K) 0/1 matrix of hits in rank order and each user's relevant count."""
    k = hits.shape[1]
    d = discount(k)
    dcg = (hits * d[None, :]).sum(axis=1)
    ideal_len = np.minimum(n_relevant, k)
    idcg = np.concatenate([[0.0], np.cumsum(d)])[ideal_len]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg, dtype=np.float64), where=idcg > 0)


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int, n_relevant: np.ndarray | None = None,
              tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Per-user nDCG@k of the ranking ``scores`` against the boolean ``relevant`` (same columns);
    ``n_relevant``: each user's relevant count where ``relevant`` shows only some columns (default its row sums);
    ``tiebreak``: the order of tied scores (:func:`top_k_indices`)."""
    hits = np.take_along_axis(relevant, top_k_indices(scores, k, tiebreak), axis=1).astype(np.float64)
    return ndcg_from_hits(hits, relevant.sum(axis=1) if n_relevant is None else n_relevant)


def top_k_indices(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best scores per row, best first: exactly the first k of each row sorted by (score desc,
    ``tiebreak`` asc; default: column order), found as the published top-N finds them (:func:`best_of_rows`),
    so a blend is tuned on the rankings that are served. A NaN ranks below every number, -inf included."""
    b, n_items = scores.shape
    k = min(k, n_items)
    if b == 0 or k == 0:
        return np.zeros((b, k), dtype=np.intp)
    tiebreak = np.arange(n_items, dtype=np.int64) if tiebreak is None else tiebreak
    rows, cols, _, rank = best_of_rows(scores, k, tiebreak)
    if len(rows) < b * k:  # only a row with NaNs has fewer candidates than k: its NaNs ranked last
        short = np.flatnonzero(np.bincount(rows, minlength=b) < k)
        out = np.zeros((b, k), dtype=np.intp)
        done = ~np.isin(rows, short)
        out[rows[done], rank[done]] = cols[done]
        for r in short:
            out[r] = np.lexsort((tiebreak, -np.nan_to_num(scores[r], nan=-np.inf), np.isnan(scores[r])))[:k]
        return out
    out = np.empty((b, k), dtype=np.intp)
    out[rows, rank] = cols
    return out


CROWDED = 64  # a row with more than this many candidates per list place is settled exactly
# A tiled ranking bounds each row's n-th best from a sample of the columns, scored first: a wider sample costs its
# share of the product and lets through fewer candidates to sort (about n x items / width a row), so the width
# that balances the two grows as sqrt(n x items): SAMPLE_BALANCE times it. ALS, 20k users, n 50: at 20k items
# every 16th column 1.07-1.24 s, every 4th (this width) 0.79-0.81; at 200k items every 4th 3.40-3.93 s against
# every 16th's 3.26-3.59, side by side.
SAMPLE_BALANCE = 5


def best_of_rows(scores: np.ndarray, n: int, tiebreak: np.ndarray):
    """Each row's n best entries ordered exactly by (score desc, ``tiebreak`` asc): ``(rows, cols, values,
    rank)``, rows ascending and rank 0..n-1 within a row (fewer where a row has NaNs; non-finite scores are
    entries like any other, the caller drops them if it lists only finite ones).

    The maxima of groups of the columns bound each row's n-th best score from below (:func:`nth_best_at_most`);
    every item at or above the bound is a candidate; a row with too many (ties: a row with no signal, e.g. CF
    for a user without history, ties everywhere) takes its exact n-th best, every item better than it and, of
    the items tied with it, the n with the best tie-break rank: its candidates stay n, not the catalogue. One
    ``lexsort`` over the block's candidates orders them by row, score and tie-break rank. Memory stays within
    the block.
    """
    b, n_items = scores.shape
    bound = nth_best_at_most(scores, n)
    candidate = scores >= bound[:, None]
    # Rows are counted one by one only when the block has many more candidates than the bound lets through
    # untied (about n a row): one count over the block is a tenth of the time of a count per row.
    crowded = (np.flatnonzero(np.count_nonzero(candidate, axis=1) > CROWDED * n)
               if np.count_nonzero(candidate) > CROWDED // 2 * n * b else ())
    if len(crowded):  # many items tied with the n-th (or at the bound): the exact n-th, and the n best-ranked ties
        sub = scores[crowded]
        exact = np.partition(sub, n_items - n, axis=1)[:, n_items - n, None]
        tied = sub == exact
        best_tied = np.argpartition(np.where(tied, tiebreak[None, :], np.iinfo(np.int64).max), n - 1, axis=1)[:, :n]
        keep = sub > exact
        at = np.arange(len(crowded))[:, None]
        keep[at, best_tied] |= tied[at, best_tied]
        candidate[crowded] = keep
    flat = np.flatnonzero(candidate)  # 10x faster than a 2-d np.nonzero over the block
    rows = flat // n_items
    cols = flat - rows * n_items
    values = scores.ravel()[flat] if scores.flags.c_contiguous else scores[rows, cols]  # 1-d: 4x faster
    return ranked_entries(rows, cols, values, b, n, tiebreak)


def ranked_entries(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, b: int, n: int, tiebreak: np.ndarray):
    """Each row's n best of some entries (``rows`` ascending, ``b`` rows) ordered exactly by (value desc,
    ``tiebreak`` of the column asc): ``(rows, cols, values, rank)`` as :func:`best_of_rows` returns them. The
    entries below a row's n-th best are dropped first (:func:`_at_least_nth`), so one sort sees about n a row."""
    rows, cols, values = _at_least_nth(rows, cols, values, b, n)
    order = np.lexsort((tiebreak[cols], -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(b))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < n
    return rows[keep], cols[keep], values[keep], rank[keep]


GROUPS_PER_PLACE = 8  # a row's n-th best is bounded by the n-th best of the maxima of 8 n groups of its columns


def nth_best_at_most(values: np.ndarray, n: int) -> np.ndarray:
    """Per row of ``values``, a number at most its n-th best number (-inf for a row of fewer than n columns): the
    n-th best of the maxima of ``GROUPS_PER_PLACE`` n disjoint groups of its columns (column j in group j mod
    8 n, every column counted: in a catalogue ordered by ceiling, :class:`FactorCatalogue`, the last can be the
    best). The n groups with the best maxima hold n distinct values at least as high, so the row does. A group's
    maximum passes over its NaNs (``np.fmax``); a group of NaNs alone has a NaN maximum, which ``np.partition``
    ranks above every number: a bound so raised lets fewer than n numbers through, and the callers settle such a
    row exactly. Where the row is narrower than two columns a group, its n-th best itself (``np.partition``: NaN
    above every number).

    One elementwise maximum over the row and a selection among 8 n values, instead of a selection among all of
    them, and a bound that lets about 1.07 n values through, where a sixteenth of the columns partitioned let
    through about 16 n: :func:`best_of_rows` of an 800-user block of 20k items took 22.8 ms against 65.1, of an
    82-user block of 200k items 12.3 against 16.5 (n 50). On a tile's sampled columns (:func:`tiled_top`) at
    200k items an 82-user block's sample took 0.21 ms against ``np.partition``'s 5.5."""
    b, m = values.shape
    if m < n:
        return np.full(b, -np.inf, dtype=values.dtype)
    groups = GROUPS_PER_PLACE * n
    width = m // groups
    if width < 2:
        return np.partition(values, m - n, axis=1)[:, m - n]
    # A view whatever the column stride: only the last axis is split.
    maxima = np.fmax.reduce(values[:, :groups * width].reshape(b, width, groups), axis=1)
    rest = values[:, groups * width:]
    np.fmax(maxima[:, :rest.shape[1]], rest, out=maxima[:, :rest.shape[1]])
    return np.partition(maxima, groups - n, axis=1)[:, groups - n]


def _sample_step(n_items: int, n: int) -> int:
    """Every how many columns a tiled ranking (:func:`tiled_top`) scores first, to bound each row's n-th best:
    :data:`SAMPLE_BALANCE` sqrt(n x items) of them, at least 32 n (1: all)."""
    return max(1, n_items // max(int(SAMPLE_BALANCE * np.sqrt(n * n_items)), 32 * n))


def _at_least_nth(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, b: int, n: int):
    """The candidates (``rows`` ascending) whose value is at least their row's n-th best candidate value: the
    candidates' exact bound (:func:`nth_best_in_rows`), so the sort that follows sees about n a row instead of
    the sampled bound's several n (:func:`tiled_top`)."""
    starts = np.searchsorted(rows, np.arange(b + 1))
    if not len(rows) or int(np.diff(starts).max()) <= 2 * n:
        return rows, cols, values
    keep = values >= nth_best_in_rows(values, starts, n)[rows]
    return rows[keep], cols[keep], values[keep]


def nth_best_in_rows(values: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Each row's n-th best value, row r being ``values[starts[r]:starts[r + 1]]`` (a CSR matrix's data and
    indptr); -inf for a row of fewer than n. Found in a (rows x longest row) matrix, or, where the rows are
    ragged (an item-kNN block: a popular item's row beside rare ones), each long row on its own."""
    counts = np.diff(starts)
    b, width = len(counts), int(counts.max()) if len(counts) else 0
    nth = np.full(b, -np.inf, dtype=values.dtype)
    if width < n:
        return nth
    if b * width <= 4 * (starts[-1] - starts[0]):  # rows of like lengths: one partition of the padded matrix
        rows = np.repeat(np.arange(b), counts)
        padded = np.full((b, width), -np.inf, dtype=values.dtype)
        padded[rows, np.arange(starts[0], starts[-1]) - starts[rows]] = values[starts[0]:starts[-1]]
        return np.partition(padded, width - n, axis=1)[:, width - n]
    for row in np.flatnonzero(counts >= n):
        own = values[starts[row]:starts[row + 1]]
        nth[row] = np.partition(own, len(own) - n)[len(own) - n]
    return nth


SQUARE_CHUNK = 256  # columns a float32 partial sum of squares covers before it is added up in float64


def row_squares(z: np.ndarray) -> np.ndarray:
    """Each row's sum of squares (float64) of a float32 (rows, columns) block, at float32 rounding. One einsum
    over the row accumulates it in float32 lanes, whose error grows with the row: at 200k items a row's
    deviation was 2.5e-4 off (measured against float64: EASE's z-scores up to 0.02 off at z ~77), enough to
    reorder near-tied items of a blend and to part the full ranking from the two stages' float64 moments.
    Partial sums of SQUARE_CHUNK columns each, added up in float64, cost the same (4.3-4.9 ms an 80 x 200k
    block, as one einsum) and stay within 3e-8 of the float64 sum; float64 throughout cost 3x."""
    rows, n = z.shape
    whole = n - n % SQUARE_CHUNK
    chunks = z[:, :whole].reshape(rows, whole // SQUARE_CHUNK, SQUARE_CHUNK)
    square = np.einsum("ijk,ijk->ij", chunks, chunks).sum(axis=1, dtype=np.float64)
    if whole < n:
        square += np.einsum("ij,ij->i", z[:, whole:], z[:, whole:])
    return square


def standardize_rows(scores: np.ndarray, exclude: sp.spmatrix | None = None, fill: float = -np.inf) -> np.ndarray:
    """Per-user z-scores over the finite entries, so models on different scales can be blended.

    ``exclude`` (sparse, same shape): entries left out of each row's mean and deviation but standardised
    with the rest, e.g. the items a user has seen, which are never ranked: the z-scores of the candidates
    are then the same whether the seen items are masked before (as when the blend is tuned) or after.
    ``fill``: the value of entries that are not finite (an item the model cannot score; a blend adds 0).

    It runs on every scoring block of every component, so it makes few passes over the block: the row sums
    say whether every entry is finite (one non-finite entry makes its row's sum so), excluded entries are
    taken back out of the dense row sums (float64 per row, a gather of a few entries; 4x faster than the
    masked path on a 600 x 26,740 block), each row is scaled by one multiplier (1 / its deviation; 0 for a
    constant row), and the masked path runs only where a row has entries that are not finite.
    """
    scores = np.asarray(scores, dtype=np.float32)
    rows, n = scores.shape
    excluded = None
    if exclude is not None and exclude.nnz:
        excluded = exclude.tocoo()
        excluded.sum_duplicates()
    total = scores.sum(axis=1)
    if np.isfinite(total).all():
        # The excluded entries' share of each row's sums is taken back out (a gather of a few entries a
        # row), so the common case, a user's seen items, keeps the dense path's passes.
        if excluded is None:
            values, row_of, count = np.zeros(0), np.zeros(0, dtype=np.int64), np.full(rows, max(n, 1))
        else:
            values, row_of = scores[excluded.row, excluded.col].astype(np.float64), excluded.row
            count = np.maximum(n - np.bincount(row_of, minlength=rows), 1)
        mean = (total.astype(np.float64) - np.bincount(row_of, values, minlength=rows)) / count
        z = scores - mean.astype(np.float32)[:, None]
        square = row_squares(z)
        square -= np.bincount(row_of, np.square(values - mean[row_of]), minlength=rows)
        z *= inverse_deviation(np.sqrt(np.maximum(square, 0.0) / count))[:, None]
        return z
    finite = np.isfinite(scores)
    counted = finite.copy()
    if excluded is not None:
        counted[excluded.row, excluded.col] = False
    count = np.maximum(counted.sum(axis=1, keepdims=True), 1)
    mean = scores.sum(axis=1, keepdims=True, where=counted, dtype=np.float64) / count
    z = np.where(finite, scores - mean, np.float32(0))
    std = np.sqrt(np.square(z).sum(axis=1, where=counted, dtype=np.float64) / count.ravel())
    z *= inverse_deviation(std)[:, None]
    z[~finite] = fill
    return z


def served_z_scores(scores: np.ndarray, seen: sp.spmatrix | None) -> np.ndarray:
    """A component's scores as the blend adds them, wherever the blend is served, tuned or explained: each
    user's z-scores over the items they have not seen (``seen``, sparse, left out of the row's mean and
    deviation but standardised with the rest), and 0 for an item the component cannot score (it adds
    nothing). One convention, so that the tuned weights meet, bit for bit, the z-scores they are served with."""
    return standardize_rows(scores, exclude=seen, fill=0.0)


def inverse_deviation(std: np.ndarray) -> np.ndarray:
    """float32 1 / std per row, 0 for a constant row."""
    return np.divide(1.0, std, out=np.zeros(len(std)), where=std > 1e-12).astype(np.float32)


def bootstrap_indices(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """Seeded bootstrap resamples of users: (n_boot, n_users) row indices."""
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


_LAST: dict = {}  # the last resamples and their weights, as one tuple (one slice's resamples serve every metric)


def bootstrap_means(values: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """The mean of ``values`` in each resample: ``values[resamples].mean(axis=1)``, as one matrix-vector product
    with each resample's draw counts (a gather of n_boot x n_users values per call was most of an evaluation
    slice: 1,000 x 5,000 users, thousands of metrics and lifts)."""
    last = _LAST.get("weights")  # read once: another thread may replace it, never change it
    if last is None or last[0] is not resamples:
        n_boot, n = resamples.shape
        counts = np.bincount((np.arange(n_boot)[:, None] * n + resamples).ravel(), minlength=n_boot * n)
        last = _LAST["weights"] = (resamples, counts.reshape(n_boot, n) / n)
    return last[1] @ np.asarray(values, dtype=np.float64)


def paired_lift(model_values: np.ndarray, base_values: np.ndarray, resamples: np.ndarray,
                level: float = 95.0) -> tuple[float, float, float]:
    """Relative lift mean(model)/mean(baseline) - 1, with a paired bootstrap ``level`` % CI over the same users."""
    if len(base_values) == 0 or (base := base_values.mean()) <= 0:
        return float("nan"), float("nan"), float("nan")
    point = float(model_values.mean() / base - 1.0)
    boot_base = bootstrap_means(base_values, resamples)
    boot = bootstrap_means(model_values, resamples) / np.where(boot_base > 0, boot_base, np.nan) - 1.0
    tail = (100.0 - level) / 2
    lo, hi = np.nanpercentile(boot, [tail, 100.0 - tail])
    return point, float(lo), float(hi)


def one_sided_gain(values: np.ndarray, base_values: np.ndarray, alpha: float, n_boot: int,
                   seed: int) -> tuple[float, float, float]:
    """:func:`paired_lift` of ``values`` over ``base_values`` (the same users) with the two-sided (1 - 2 alpha)
    interval: its lower end above zero is a gain significant at one-sided level ``alpha``. How a model picks
    an option over its default on validation users (a blend over one component, a finer segment)."""
    return paired_lift(values, base_values, bootstrap_indices(len(values), n_boot, seed), level=100.0 * (1 - 2 * alpha))


# -- two-stage serving -------------------------------------------------------------------------------------------


class Stage:
    """One component's first stage on a block of users (two-stage serving,
    :meth:`models.hybrid.Hybrid.candidate_scores`): each user's best ``depth`` unseen catalogue columns by the
    component (``top``, best first, -1 where a user has fewer), and what the second stage reads: its served
    z-scores (:func:`served_z_scores`) of any columns.

    Either from the block's whole scores (``z``: the served z-scores themselves, bit for bit what a full ranking
    adds) or from each user's mean and 1 / deviation over their unseen items, known without scoring every item
    (``mean``, ``inverse``; see :func:`unseen_moments`), with ``scores_at`` scoring the columns asked for.
    A stage found a tile at a time (:func:`tiled_top`) also keeps its best items' own scores (``best``, aligned
    with ``top``, -inf past a row's list): the model's own list, served without scoring its columns again."""

    def __init__(self, top: np.ndarray, scores_at, z: np.ndarray | None = None, mean: np.ndarray | None = None,
                 inverse: np.ndarray | None = None, moments=None, best: np.ndarray | None = None):
        """``moments``: instead of ``mean`` and ``inverse``, a function giving them, called when the z-scores are
        first read (a model serving its own lists from the stage never reads them)."""
        self.top, self.best, self._scores_at, self._z = top, best, scores_at, z
        self._moments = cache(moments) if moments is not None else (lambda: (mean, inverse))

    @property
    def mean(self) -> np.ndarray | None:
        return self._moments()[0]

    @property
    def inverse(self) -> np.ndarray | None:
        return self._moments()[1]

    @classmethod
    def of_scores(cls, scores: np.ndarray, seen: sp.spmatrix, depth: int, tiebreak: np.ndarray) -> Stage:
        """The stage of a block's whole scores (not changed: it may be shared with other readers)."""
        return cls(unseen_top(scores, seen, depth, tiebreak), lambda columns: scores[:, columns],
                   z=served_z_scores(scores, seen))

    def shallower(self, depth: int) -> Stage:
        """This stage with each user's best ``depth`` only (the lists are best first: the same as asking for
        ``depth``)."""
        if depth >= self.top.shape[1]:
            return self
        return Stage(self.top[:, :depth], self._scores_at, self._z, moments=self._moments,
                     best=None if self.best is None else self.best[:, :depth])

    def scores_at(self, columns: np.ndarray) -> np.ndarray:
        """(users, len(columns)) the component's own scores of the columns."""
        return self._scores_at(columns)

    def z_at(self, columns: np.ndarray) -> np.ndarray:
        """(users, len(columns)) float32 z-scores over each user's unseen items, 0 where a score is not finite."""
        if self._z is not None:
            return self._z[:, columns]
        z = np.asarray(self._scores_at(columns), dtype=np.float32) - self.mean.astype(np.float32)[:, None]
        z *= self.inverse[:, None]
        z[~np.isfinite(z)] = 0.0
        return z


def unseen_top(scores: np.ndarray, seen: sp.spmatrix, depth: int, tiebreak: np.ndarray,
               in_place: bool = False) -> np.ndarray:
    """Each row's best ``depth`` columns of ``scores`` that ``seen`` does not hold, ordered as a served list
    (:func:`top_k_indices`), -1 past a row's unseen finite scores. ``scores`` is not changed unless
    ``in_place`` (its seen entries are then -inf)."""
    if depth <= 0:
        return np.zeros((len(scores), 0), dtype=np.intp)
    masked = scores if in_place else np.array(scores, dtype=np.float32, copy=True)
    seen = seen.tocoo()
    masked[seen.row, seen.col] = -np.inf
    top = top_k_indices(masked, depth, tiebreak)
    top[~np.isfinite(np.take_along_axis(masked, top, axis=1))] = -1
    return top


def first_unseen(order: np.ndarray, rows: np.ndarray, seen_keys: np.ndarray, n_items: int,
                 depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the block ``rows``, the first ``depth`` columns of ``order`` it has not seen: ``(r, c,
    rank)``, the r-th of ``rows`` lists ``order[c]`` at ``rank``. ``seen_keys``: the block's seen entries as
    row * n_items + column, ascending. ``order`` must run ``depth`` past the most seen of it a row has."""
    wanted = rows[:, None].astype(np.int64) * n_items + order[None, :]
    at = np.minimum(np.searchsorted(seen_keys, wanted), max(len(seen_keys) - 1, 0))
    unseen = seen_keys[at] != wanted if len(seen_keys) else np.ones(wanted.shape, dtype=bool)
    rank = np.cumsum(unseen, axis=1) - 1
    r, c = np.nonzero(unseen & (rank < depth))
    return r, c, rank[r, c]


def with_unscored_items(top: np.ndarray, best: np.ndarray, zeros: np.ndarray, seen: sp.spmatrix,
                        tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists of a model's scored candidates (``top``, ``best``: best first, -1 past a list) merged with the
    items it scores 0 for everyone (``zeros``, in tie-break order), as ranking each user's whole row would:
    each user's first unseen, unlisted ``depth`` of ``zeros`` ranked with the candidates by (score desc,
    tie-break asc). Items beyond capped EASE's fitted ones, the items without a neighbour in a user's
    item-kNN row."""
    b, depth = top.shape
    n_items = len(tiebreak)
    seen = seen.tocoo()
    have = top >= 0
    listed_rows = np.nonzero(have)[0]
    keys = np.union1d(seen.row.astype(np.int64) * n_items + seen.col,
                      listed_rows.astype(np.int64) * n_items + top[have])  # ascending: row, then column
    most = int(np.bincount(keys // n_items, minlength=b).max()) if len(keys) else 0
    r, c, _ = first_unseen(zeros[:depth + most], np.arange(b), keys, n_items, depth)
    rows = np.concatenate([listed_rows, r])
    cols = np.concatenate([top[have], zeros[c]])
    values = np.concatenate([best[have], np.zeros(len(r), dtype=np.float32)])
    by_row = np.argsort(rows, kind="stable")
    rows, cols, values, rank = ranked_entries(rows[by_row], cols[by_row], values[by_row], b, depth, tiebreak)
    merged, scores = np.full((b, depth), -1, dtype=np.intp), np.full((b, depth), -np.inf, dtype=np.float32)
    merged[rows, rank], scores[rows, rank] = cols, values
    return merged, scores


def unseen_moments(total: np.ndarray, square: np.ndarray, n_items: int, seen_rows: np.ndarray,
                   seen_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean (float64) and 1 / deviation (float32, 0 for a constant row) over its unseen items, from
    the sums of its scores and of their squares over the whole catalogue (``total``, ``square``, float64) and
    the scores of its seen items (``seen_scores`` at ``seen_rows``, one entry a distinct seen item), taken back
    out: what :func:`served_z_scores` computes from the whole row, without scoring every item."""
    rows = len(total)
    count = np.maximum(n_items - np.bincount(seen_rows, minlength=rows), 1)
    mean = (total - np.bincount(seen_rows, seen_scores, minlength=rows)) / count
    variance = (square - np.bincount(seen_rows, np.square(seen_scores), minlength=rows)) / count - mean**2
    # A constant row has no deviation; cancellation leaves ~1e-16 of the square.
    variance[variance <= 1e-10 * np.abs(square / count)] = 0.0
    return mean, inverse_deviation(np.sqrt(np.maximum(variance, 0.0)))


def factor_moments(model, factors: np.ndarray, divisor: float = 1.0,
                   bias: np.ndarray | None = None) -> FactorMoments:
    """``model``'s :class:`FactorMoments` of ``factors``, computed once per factors array (a refit or a load
    makes a new array, and new moments)."""
    kept = model.__dict__.get("_factor_moments")
    if kept is None or kept[0] is not factors:
        kept = model._factor_moments = (factors, FactorMoments(factors, divisor, bias, model.tiebreak))
    return kept[1]


class FactorMoments:
    """Sums over a catalogue scored as ``(u . e_i) / divisor + b_i`` (factor models: ALS, the two-tower), in
    float64: with s = 1 / divisor, a user's sum of scores is ``s u . sum_i e_i + sum_i b_i`` and sum of squares
    ``s^2 u G u + 2 s u . sum_i b_i e_i + sum_i b_i^2`` with G = E^T E, so the moments of a row cost
    O(factors^2), not O(items)."""

    def __init__(self, factors: np.ndarray, divisor: float, bias: np.ndarray | None, tiebreak: np.ndarray):
        e = np.asarray(factors, dtype=np.float64)
        b = np.zeros(len(e)) if bias is None else np.asarray(bias, dtype=np.float64)
        self.divisor, self.scale, self.n_items = float(divisor), 1.0 / float(divisor), len(e)
        self.column_sum, self.gram, self.bias_sum = e.sum(axis=0), e.T @ e, b @ e
        self.bias_total, self.bias_square = float(b.sum()), float(b @ b)
        self.catalogue = FactorCatalogue(factors, divisor, bias, tiebreak)

    def sums(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(total, square) of each vector's row of scores over the whole catalogue."""
        u = np.asarray(vectors, dtype=np.float64)
        s = self.scale
        total = s * (u @ self.column_sum) + self.bias_total
        square = s * s * np.einsum("ij,ij->i", u @ self.gram, u) + 2 * s * (u @ self.bias_sum) + self.bias_square
        return total, square


def factor_scores(vectors: np.ndarray, factors: np.ndarray, divisor: float, bias: np.ndarray | None,
                  columns, out: np.ndarray | None = None) -> np.ndarray:
    """A factor model's scores of the catalogue ``columns`` (a slice or indices): ``vectors @ factors.T /
    divisor + bias``, the operations of the models' own ``score_block`` in their order, so the same floats;
    written into ``out`` where one is given (:func:`tiled_top`). ``factors`` may be the transpose of a
    factor-major array (:class:`FactorCatalogue`): a run of its columns is then read in the layout BLAS
    multiplies fastest (BLAS packs either layout into the same panels: the same sums)."""
    scores = np.matmul(vectors, factors[columns].T, out=out)
    if divisor != 1:
        scores /= divisor
    if bias is not None:
        scores += bias[columns][None, :]
    return scores


# A tile of a block's scores (4 MB) is selected from while it is in cache: an 80-user block of a 200k-item
# catalogue is 64 MB, and each pass of a selection over it (mask, bound, compare, gather) read it from memory.
TILE_CELLS = 1 << 20
TILE_MIN_COLUMNS = 1024
HEAD_PER_PLACE = 20  # a catalogue ordered by ceiling bounds each row's n-th best from its first 20 n columns


def tile_width(n_users: int, n_items: int) -> int | None:
    """Columns of a tile of ``n_users`` users' scores (:func:`tiled_top`), or None: a catalogue within two
    tiles is scored whole."""
    width = max(TILE_MIN_COLUMNS, TILE_CELLS // max(n_users, 1))
    return width if n_items > 2 * width else None


def tiled_top(scores_at, n_users: int, n_items: int, seen: sp.spmatrix, depth: int,
              tiebreak: np.ndarray, zero_rows: np.ndarray | None = None,
              ceiling=None) -> tuple[np.ndarray, np.ndarray]:
    """``unseen_top`` of a block's scores, the same columns in the same order, without the block's whole
    scores; and those columns' scores (float32, -inf past a row's list). ``scores_at(columns, rows, out=None)``:
    a float32 array of the scores of the catalogue ``columns`` (a slice) for the block's ``rows`` (a slice or
    indices), fresh, or ``out`` (C-contiguous, rows x columns) written over where one is given; each entry
    computed by the same operations however the columns and rows are cut (a product of row vectors with item
    vectors; BLAS may still round a tiny tile's sums in another order). The tiles of a run share one buffer:
    a fresh 4 MB array a tile was mapped and faulted in anew each time (at 200k items an 82-user block's
    products took 15.3 ms in fresh arrays, 11.2 in one).

    The scores of every ``step``-th column (:func:`_sample_step`; seen items masked) bound each row's
    ``depth``-th best unseen score from below (:func:`nth_best_at_most`); then the catalogue is scored a tile at a time
    (:data:`TILE_CELLS`) and only the entries at or above the bound leave the tile. A row the bound does not
    settle (many ties at it: a zero vector; fewer than ``depth`` unseen candidates: a user who has seen most of
    the catalogue; NaN) is ranked from its whole row. At 200k items an 80-user block of ALS took 51 -> 35 ms,
    the SGEMM alone ~27. The tiles run in as many runs as there are scoring threads, each product on one BLAS
    thread (:func:`models.tiled.one_blas_thread`).

    ``zero_rows`` (a mask): rows the caller knows score every item 0 (a zero vector without a bias: a user
    without history). Every item ties, so such a row lists its first ``depth`` unseen items in tie-break order
    (:func:`_tied_rows_top`) instead of being scored, bounded and ranked whole: cold users at k=0 cost the
    content neighbourhood three times a known user's block.

    ``ceiling`` (:meth:`FactorCatalogue.ceilings`), where the columns come in descending order of what they can
    score: ``ceiling(starts)`` bounds each row's scores from above in each run of columns from a start. The bound
    then comes from the first ``HEAD_PER_PLACE`` x ``depth`` columns (at least a tile's minimum), the best placed,
    and a tile that every row's ceiling there puts below its bound is not scored: nothing would leave it. ALS at
    200k items (100 M shop interactions): an 80-user block scores 1-2 tiles of 16, 20k users' lists 2.9 -> 0.7 s
    (the same lists)."""
    seen = seen.tocoo()
    b = n_users
    width = tile_width(b, n_items)
    if depth <= 0:
        return np.zeros((b, 0), dtype=np.intp), np.zeros((b, 0), dtype=np.float32)
    zero = np.flatnonzero(zero_rows) if zero_rows is not None else np.zeros(0, dtype=np.intp)
    if len(zero) == b:
        return _tied_rows_top(scores_at, zero, seen, depth, tiebreak)
    if width is None:
        return _whole_rows_top(scores_at(slice(None), slice(None)), seen, depth, tiebreak)
    strided = slice(0, None, _sample_step(n_items, depth))
    by_col = np.argsort(seen.col, kind="stable")
    seen_rows, seen_cols = seen.row[by_col], seen.col[by_col]
    tiles = [(lo, min(lo + width, n_items)) for lo in range(0, n_items, width)]
    threads = min(thread_count(), len(tiles))

    def bound_from(sampled: slice) -> np.ndarray:
        """Each row's ``depth``-th best unseen score bounded from below by the ``sampled`` columns' (NaN for the
        zero rows: they are listed below, and no tile takes anything of theirs)."""
        start, stop, step = sampled.indices(n_items)
        sample = scores_at(sampled, slice(None))
        on = (seen.col >= start) & (seen.col < stop) & ((seen.col - start) % step == 0)
        sample[seen.row[on], (seen.col[on] - start) // step] = -np.inf
        bound = nth_best_at_most(sample, depth).astype(np.float32)
        bound[zero] = np.nan
        return bound

    def above(chunk: list[tuple[int, int]]) -> tuple[np.ndarray, list]:
        """One run of tiles: each tile's entries at or above the bound (a bound of its own, crowded rows cut)."""
        cut, counts, found = bound.copy(), np.zeros(b, dtype=np.int64), []
        buffer = np.empty(b * width, dtype=np.float32)  # each tile written into the run's one buffer
        for lo, hi in chunk:
            tile = scores_at(slice(lo, hi), slice(None), out=buffer[:b * (hi - lo)].reshape(b, hi - lo))
            inside = slice(*np.searchsorted(seen_cols, [lo, hi]))
            tile[seen_rows[inside], seen_cols[inside] - lo] = -np.inf
            flat = np.flatnonzero(tile >= cut[:, None])  # NaN >= anything is False: a NaN bound takes no more
            rows = flat // tile.shape[1]
            found.append((rows, flat - rows * tile.shape[1] + lo, tile.ravel()[flat]))
            counts += np.bincount(rows, minlength=b)
            cut[counts > CROWDED * depth] = np.nan  # crowded: ranked from its whole row below
        return counts, found

    with one_blas_thread():  # the tiles side by side, each product on one core
        if ceiling is None:
            bound = bound_from(strided)
        else:
            # The first columns bound the rows. Where that bound leaves most tiles to score (ceilings that do not
            # tell the items apart: the two-tower's unit vectors), the strided sample raises it, since a weak
            # bound lets many candidates through. A tile none of whose rows can reach its bound there would let
            # nothing through and is not scored (one is kept: the runs below need one).
            ceilings = ceiling(np.array([lo for lo, _ in tiles]))
            bound = bound_from(slice(0, min(n_items, max(TILE_MIN_COLUMNS, HEAD_PER_PLACE * depth))))
            reached = np.any(ceilings >= bound[:, None], axis=0)
            if 2 * np.count_nonzero(reached) > len(tiles):
                bound = np.fmax(bound, bound_from(strided))
                reached = np.any(ceilings >= bound[:, None], axis=0)
            tiles = [tile for tile, kept in zip(tiles, reached, strict=True) if kept] or tiles[:1]
            threads = min(thread_count(), len(tiles))
        runs = on_scoring_threads(above, [tiles[k * len(tiles) // threads:(k + 1) * len(tiles) // threads]
                                          for k in range(threads)])
    counts = np.sum([run[0] for run in runs], axis=0)
    rows, cols, values = (np.concatenate(part) for part in zip(*(p for run in runs for p in run[1]), strict=True))
    crowded = counts > CROWDED * depth  # a row crowded in any run has more than this in all of them
    keep = ~crowded[rows]
    order = np.flatnonzero(keep)[np.argsort(rows[keep], kind="stable")]  # rows ascending, columns ascending
    rows, cols, values = rows[order], cols[order], values[order]
    short = np.bincount(rows, minlength=b) < depth
    short[zero] = False
    exact = np.flatnonzero(crowded | short)
    if len(exact):
        rows, cols, values = (a[~np.isin(rows, exact)] for a in (rows, cols, values))
    rows, cols, values, rank = ranked_entries(rows, cols, values, b, depth, tiebreak)
    top, best = np.full((b, depth), -1, dtype=np.intp), np.full((b, depth), -np.inf, dtype=np.float32)
    listed = np.isfinite(values)
    top[rows[listed], rank[listed]] = cols[listed]
    best[rows[listed], rank[listed]] = values[listed]
    if len(exact):
        # The zero rows are ranked whole beside them, as before they were told apart: the same rows in the
        # product give its other rows the same floats (BLAS rounds a product of fewer rows its own way).
        exact = np.union1d(exact, zero)
        top[exact], best[exact] = _whole_rows_top(scores_at(slice(None), exact), seen.tocsr()[exact], depth,
                                                  tiebreak)
    elif len(zero):
        top[zero], best[zero] = _tied_rows_top(scores_at, zero, seen, depth, tiebreak)
    return top, best


def _tied_rows_top(scores_at, rows: np.ndarray, seen: sp.spmatrix, depth: int,
                   tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tiled_top` of the block's ``rows`` whose every score is the same: each one's first ``depth`` unseen
    columns in tie-break order (as ranking the whole row orders ties), their scores read back from ``scores_at``
    for the few columns listed, so the floats are the model's own."""
    seen = seen.tocsr()[rows].tocoo()  # canonical: keys ascending
    n_items = len(tiebreak)
    wanted = min(n_items, depth + (int(np.bincount(seen.row).max()) if seen.nnz else 0))
    order = np.argpartition(tiebreak, wanted - 1)[:wanted] if wanted < n_items else np.arange(n_items)
    order = order[np.argsort(tiebreak[order], kind="stable")]
    r, c, rank = first_unseen(order, np.arange(len(rows)), seen.row.astype(np.int64) * n_items + seen.col,
                              n_items, depth)
    top = np.full((len(rows), depth), -1, dtype=np.intp)
    best = np.full((len(rows), depth), -np.inf, dtype=np.float32)
    listed = np.unique(order[c])
    values = scores_at(listed, rows)
    if not np.isfinite(values).all():  # not one number after all (a non-finite factor): ranked whole
        return _whole_rows_top(scores_at(slice(None), rows), seen, depth, tiebreak)
    top[r, rank] = order[c]
    best[r, rank] = values[r, np.searchsorted(listed, order[c])]
    return top, best


def _whole_rows_top(scores: np.ndarray, seen: sp.spmatrix, depth: int,
                    tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`unseen_top` of whole rows (changed in place) and the scores of the columns it lists."""
    top = unseen_top(scores, seen, depth, tiebreak, in_place=True)
    best = np.take_along_axis(scores, np.maximum(top, 0), axis=1).astype(np.float32)
    best[top < 0] = -np.inf
    return top, best


def factor_top(vectors: np.ndarray, catalogue: FactorCatalogue, seen: sp.spmatrix,
               depth: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tiled_top` of a factor model's scores (:func:`factor_scores`) over its catalogue in the order of
    the items' ceilings (:class:`FactorCatalogue`), so that a block scores only the tiles that can hold one of
    its rows' best; the columns listed are the catalogue's own."""
    zero = ~vectors.any(axis=1) if catalogue.bias is None else None  # no history, no signal: every item scores 0
    seen = seen.tocoo()
    ordered_seen = sp.coo_matrix((seen.data, (seen.row, catalogue.position[seen.col])), shape=seen.shape)
    top, best = tiled_top(catalogue.scores_at(vectors), len(vectors), len(catalogue.items), ordered_seen, depth,
                          catalogue.ordered_tiebreak, zero, catalogue.ceilings(vectors))
    return np.where(top >= 0, catalogue.items[np.maximum(top, 0)], -1), best


class FactorCatalogue:
    """A factor model's catalogue in descending order of its items' ceilings, for :func:`tiled_top`. A score
    ``(u . e_i) / divisor + b_i`` is at most ``|u| |e_i| / divisor + b_i`` (Cauchy-Schwarz), so a user whose
    ``depth``-th best is known to be at least some bound needs no item whose ceiling is below it. Where the
    catalogue has a long tail most items' factors are short, and a block of users needs the first few tiles of
    this order instead of the whole catalogue: ALS on 100 M shop interactions (200k items), the items' lengths
    0.05 at the median, 0.76 at the 99th percentile and 18.0 at most; the 50th best unseen item of each user of
    an 80-user block lies within the first 1.4 % of this order (4,000 users sampled).

    ``items``: the catalogue's columns in this order (the ceiling of a user vector of length 1, descending; ties
    by column), ``position``: each column's place in it; ``ordered_tiebreak``: the tie-break ranks in this order.
    A tile's ceiling for a block (:meth:`ceilings`) is taken from its items' longest factors and highest bias, so
    it holds whatever the users' lengths."""

    MARGIN = 1e-4  # relative: float32 rounding of a product of a few hundred factors, with room to spare

    def __init__(self, factors: np.ndarray, divisor: float, bias: np.ndarray | None, tiebreak: np.ndarray):
        n = len(factors)
        self.divisor, self.bias = float(divisor), bias
        lengths = np.linalg.norm(np.asarray(factors, dtype=np.float64), axis=1) / self.divisor
        b = np.zeros(n) if bias is None else np.asarray(bias, dtype=np.float64)
        self.items = np.lexsort((np.arange(n), -(lengths + b)))  # a NaN last
        self.position = np.empty(n, dtype=np.intp)
        self.position[self.items] = np.arange(n)
        self.ordered_tiebreak = np.asarray(tiebreak)[self.items]
        # The factors in this order factor-major (factors x items, C order), the layout BLAS multiplies a tile of
        # the catalogue from fastest (:func:`factor_scores`): an 82-user block at 200k items, 11.2 -> 10.2 ms.
        self._by_factor = np.ascontiguousarray(np.asarray(factors)[self.items].T)
        self._ordered_bias = None if bias is None else np.asarray(bias)[self.items]
        self._lengths, self._bias = lengths[self.items], b[self.items]

    def scores_at(self, vectors: np.ndarray):
        """``scores_at(columns, rows, out=None)`` of :func:`tiled_top` for ``vectors``, columns of the ordered
        catalogue: each score the same product as the model's own."""
        def scores_at(columns, rows, out=None) -> np.ndarray:
            return factor_scores(vectors[rows], self._by_factor.T, self.divisor, self._ordered_bias, columns, out)

        return scores_at

    def ceilings(self, vectors: np.ndarray):
        """``ceiling(starts)``: (rows, len(starts)) each of ``vectors``' rows' ceiling over each run of the
        ordered columns from a start to the next (the last to the end), float64; +inf where a factor or the
        vector is not finite (no bound: the run is scored)."""
        norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)

        def ceiling(starts: np.ndarray) -> np.ndarray:
            top_bias = np.maximum.reduceat(self._bias, starts)
            cap = np.multiply.outer(norms, np.maximum.reduceat(self._lengths, starts) * (1 + self.MARGIN))
            cap += top_bias + self.MARGIN * np.abs(top_bias)
            return np.nan_to_num(cap, nan=np.inf)

        return ceiling


def factor_stage(vectors: np.ndarray, factors: np.ndarray, moments: FactorMoments, bias: np.ndarray | None,
                 seen: sp.spmatrix, depth: int) -> Stage:
    """The first stage of a factor model: each user's best ``depth`` unseen columns by the model's scores
    (:func:`factor_top`, none computed for ``depth`` 0); the moments come from :class:`FactorMoments` and the
    seen items' scores, and the second stage scores its columns from the vectors (a sliver of the SGEMM)."""
    divisor = moments.divisor

    def scores_at(columns) -> np.ndarray:
        return factor_scores(vectors, factors, divisor, bias, columns)

    seen = seen.tocoo()  # canonical (``UserBlock.seen``)
    # With no candidates asked for (``Recommender.column_z_scores``), no product with the catalogue at all.
    top, best = factor_top(vectors, moments.catalogue, seen, depth)

    def unseen() -> tuple[np.ndarray, np.ndarray]:
        # The seen items' scores in float64, as the sums are: a user who has seen most of the catalogue keeps a
        # few unseen items' worth of the row, which float32 scores would drown in rounding.
        seen_scores = np.einsum("ij,ij->i", vectors[seen.row].astype(np.float64),
                                factors[seen.col].astype(np.float64))
        seen_scores *= moments.scale
        if bias is not None:
            seen_scores += bias[seen.col]
        return unseen_moments(*moments.sums(vectors), moments.n_items, seen.row, seen_scores)

    return Stage(top, scores_at, moments=unseen, best=best)
