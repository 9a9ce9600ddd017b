"""Blockwise serving: blocks of users scored by one or several fitted models at once, top-N per user with
deterministic tie-breaking, each row's reason, and an item's best users, in bounded memory.

Functions here take fitted models (:class:`models.base.Recommender`) and use only their public scoring
methods; the contract itself is in ``models/base.py``, the reasons in ``models/explain.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import scipy.sparse as sp

from models.ranking import best_of_rows
from models.tiled import on_scoring_threads, side_by_side
from recsys import progress, schema
from recsys.schema import ITEM_ID, USER_ID

# Memory bound of one scoring block: users x items float32 scores.
SCORE_BLOCK_CELLS = 16_000_000
PENDING_CELLS = 8_000_000  # a new-items audience buffer: scores of this many (item, user) cells before a merge
# Users in a block that scores a few columns (new items' audiences): a block's histories and profiles grow with its
# users whatever the columns, so it stops here even where the cells would allow more.
COLUMN_BLOCK_MAX_USERS = 8192
DEMOGRAPHIC_COLUMNS = ("gender", "age_bucket", "occupation", "zip_region")
N_DECADES = 16  # 0 = unknown, 1 = before 1910 ... 15 = 2030s


def decade_of(years: np.ndarray) -> np.ndarray:
    return np.where(years > 0, np.clip((years - 1900) // 10 + 1, 1, N_DECADES - 1), 0).astype(np.int32)


@dataclass
class UserBlock:
    """A block of users to score, with everything a model may use."""

    user_ids: np.ndarray  # (b,) external ids
    train_rows: np.ndarray  # (b,) row in the training matrix, -1 if unseen in training
    history: sp.csr_matrix  # (b, n_items) known interactions (training items for warm users)
    demographics: np.ndarray  # (b, len(DEMOGRAPHIC_COLUMNS)) vocabulary indices, 0 = unknown
    # Set when several models score this block: each model's scores of it (by id), computed once and shared.
    shared: dict[int, np.ndarray] | None = None

    @property
    def history_length(self) -> np.ndarray:
        return np.diff(self.history.indptr)

    @functools.cached_property
    def seen(self) -> sp.csr_matrix:
        """The block's known items, each (user, item) once and each row's columns ascending: a canonical copy of
        ``history`` (left as it is), made once for every first stage and standardisation of the block."""
        seen = sp.csr_matrix(self.history, dtype=np.float32, copy=True)
        seen.sum_duplicates()
        return seen




def padded_rows(matrix: sp.csr_matrix, width: int) -> np.ndarray:
    """(rows, width) int32: each row's first ``width`` column indices + 1, 0 padding (a bag for Keras)."""
    matrix = sp.csr_matrix(matrix)
    lengths = np.minimum(np.diff(matrix.indptr), width)
    out = np.zeros((matrix.shape[0], width), dtype=np.int32)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, offsets] = matrix.indices[np.repeat(matrix.indptr[:-1], lengths) + offsets] + 1
    return out


@dataclass
class Served:
    """One model's pass over the users: each user's top-n (with reasons when explained) and, for the items
    asked about, their best users."""

    top: pl.DataFrame
    by_item: pl.DataFrame


class OwnList(NamedTuple):
    """A block's top-n already ranked by the model (``Recommender.own_list``): ``top`` (users, n) catalogue
    columns, best first, -1 past a user's list; ``best`` their scores; ``asked`` (users, columns asked for) the
    scores of the columns whose audiences are wanted, seen items at -inf."""
    top: np.ndarray
    best: np.ndarray
    asked: np.ndarray


def item_cooccurrence(train: sp.csr_matrix, rows_per_block: int,
                      on_rows: Callable[[int, Any], None], lower: bool = False) -> None:
    """X^T X (item x item co-occurrence counts, float32) a block of item rows at a time: ``on_rows(lo, rows)``
    gets rows lo..lo+len(rows), densified; with ``lower``, only their columns up to the block's last row (the
    lower triangle and the diagonal block: what a symmetric factorisation reads, half the products).

    Never the whole product as one sparse matrix (12 bytes per non-zero: about 8 GB at 20 M interactions and
    27k items, measured +4.8 GiB against +2.9 GiB for the dense result alone). Blocks run on the scoring
    threads, so ``on_rows`` must only touch what belongs to its own rows.
    """
    x = sp.csr_matrix(train, dtype=np.float32)
    by_item = x.T.tocsr()  # items x users
    step = max(1, int(rows_per_block))

    def block(lo: int) -> np.ndarray:
        if not lower:
            return (by_item[lo:lo + step] @ x).toarray()
        hi = min(x.shape[1], lo + step)
        # The block's columns of the rows above it, transposed: only the block itself changes format.
        return (by_item[:hi] @ by_item[lo:hi].T.tocsr()).T.toarray()

    on_scoring_threads(lambda lo: on_rows(lo, block(lo)), list(range(0, x.shape[1], step)))


def recommend_together(
    models: Mapping[str, Any], user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True,
    history: pl.DataFrame | None = None,
) -> dict[str, pl.DataFrame]:
    """Top-``n`` of several models for the same users, in one blockwise pass (:func:`serve_together`)."""
    return {name: served.top for name, served in serve_together(models, user_ids, n, exclude_seen, history).items()}


def serve_together(
    models: Mapping[str, Any], user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True,
    history: pl.DataFrame | None = None, explain: bool = False, items: np.ndarray | None = None,
    users_per_item: int = 0,
) -> dict[str, Served]:
    """Top-``n`` of several models for the same users, in one blockwise pass.

    Models fitted on the same interactions share each block of users, so a model scored by several
    (a hybrid's components, scored alone and inside the hybrid) is scored once per block. Models on
    another encoding get their own pass. ``explain`` adds each row's reason (``schema.REASON_SCHEMA``), taken
    from the block's scores before the next block is scored. ``items`` (ids): each one's best
    ``users_per_item`` users among ``user_ids`` by the same scores (seen items excluded), ordered by
    (score desc, user id asc): the users to show a new item to.
    """
    for name, model in models.items():
        if not model.fitted:
            raise RuntimeError(f"{name}: call fit() or load() before recommend()")
    groups: list[list[str]] = []
    for name in models:
        group = next((g for g in groups if models[g[0]].same_encoding(models[name])), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    groups = [_readers_first(models, group) for group in groups]
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if items is not None:
        user_ids = np.sort(user_ids)  # block rows in user id order: ties among users break by id
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name in models}
    by_item: dict[str, BestUsers] = {}  # per model: each new item's best users so far
    for group in groups:
        lead = models[group[0]]
        top = min(n, len(lead.item_ids))
        extra = lead._history_matrix(user_ids, history)
        columns = _columns_of(lead.item_ids, items)
        if len(columns) and users_per_item > 0:
            by_item.update({name: BestUsers(lead.item_ids[columns], users_per_item) for name in group})
        block = lead.serving_block_users if len(group) == 1 else lead.block_users
        serve_block = functools.partial(_served_block, models, group, user_ids, extra, block, columns, top,
                                        exclude_seen, explain, {name for name in group if name in by_item})
        # Blocks side by side (BLAS on one thread throughout: the same floats however they overlap), their
        # lists and audiences taken in block order: every frame and every item's best users as one by one.
        starts = range(0, len(user_ids), block)
        for lo, (block_users, served) in zip(starts, side_by_side(serve_block, starts), strict=True):
            progress.detail(f"{lo + len(block_users):,} of {len(user_ids):,} users scored")
            for name, (frame, audience) in served.items():
                frames[name].append(frame)
                if audience is not None:
                    by_item[name].add(block_users, audience)
    empty = pl.DataFrame(schema={**schema.RECOMMENDATION_SCHEMA, **(schema.REASON_SCHEMA if explain else {})})
    return {name: Served(pl.concat(frames[name]) if frames[name] else empty,
                         by_item[name].frame() if name in by_item else pl.DataFrame(schema=schema.BY_ITEM_SCHEMA))
            for name in models}


def _served_block(models: Mapping[str, Any], group: list[str], user_ids: np.ndarray, extra: sp.csr_matrix,
                  block: int, columns: np.ndarray, n: int, exclude_seen: bool, explain: bool, audiences: set[str],
                  lo: int) -> tuple[np.ndarray, dict[str, tuple[pl.DataFrame, np.ndarray | None]]]:
    """One block of :func:`serve_together` (users ``lo`` to ``lo + block``), scored by the models of one
    encoding ``group``: the block's users, and per model its list frame (with reasons where ``explain``) and, for
    the models in ``audiences``, its scores of the ``columns`` whose best users are wanted (else None)."""
    lead = models[group[0]]
    ub = lead._user_block(user_ids[lo:lo + block], extra[lo:lo + block])
    if len(group) > 1 or explain or (len(columns) and audiences):
        ub.shared = {}  # scores computed once per block, whoever reads them (audiences, reasons)
    served = {}
    for name in group:
        frame, asked = _block_top(models[name], ub, columns, n, exclude_seen)
        if explain:
            frame = _with_reasons(models[name], ub, frame)
        served[name] = (frame, models[name].audience_scores(ub, columns, asked) if name in audiences else None)
    # Dropped now, not by the cyclic collector: a first stage kept here reads its columns back through the block
    # (a closure over it), so block and scores are a cycle. Left to the collector, the blocks of a pass piled
    # up: the 100 M night's item-cold slice (14 models, 200k items) grew by GiBs.
    ub.shared = None
    return ub.user_ids, served


def _block_top(model: Any, ub: UserBlock, columns: np.ndarray, n: int,
               exclude_seen: bool) -> tuple[pl.DataFrame, np.ndarray]:
    """One model's top-``n`` frame of a block and its scores of the ``columns`` whose audiences are wanted
    (seen items at -inf where ``exclude_seen``): from the model's own ranked list where it serves one (a tiled
    first stage), from its scores of some columns where it serves in two stages (the hybrid at a wide
    catalogue), from the block's whole scores otherwise."""
    listed = model.own_list(ub, columns, n) if exclude_seen else None
    if listed is not None:
        return ranked_frame(ub.user_ids, listed.top, listed.best, model.item_ids), listed.asked
    found = model.candidate_scores(ub, columns, n) if exclude_seen else None
    if found is None:
        scored, scores = slice(None), model.block_scores(ub)
        seen, asked = ub.history, columns
    else:
        scored, scores = found
        seen, asked = ub.history.tocsr()[:, scored], np.searchsorted(scored, columns)
    seen = seen.tocoo() if exclude_seen else None
    if seen is not None and seen.nnz:
        if found is None and ub.shared is not None:
            scores = scores.copy()  # the other models of the block read it too
        scores[seen.row, seen.col] = -np.inf
    return top_n(ub.user_ids, scores, n, model.item_ids[scored], model.tiebreak[scored]), scores[:, asked]


def _readers_first(models: Mapping[str, Any], group: list[str]) -> list[str]:
    """The group with the models that read others of it (a hybrid and its components) first, in order otherwise:
    a reader decides how each component's block is computed (whole, or a first stage in two-stage serving), and
    the component served after it reads the same, instead of computing its own beside it."""
    members = {id(models[name]) for name in group}

    def reads_others(name: str) -> bool:
        components = getattr(models[name], "components", None) or {}
        return any(id(component) in members for component in components.values())

    return sorted(group, key=lambda name: not reads_others(name))


def _columns_of(item_ids: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """Catalogue columns of the ``items`` ids that are in the catalogue."""
    if items is None or len(items) == 0:
        return np.array([], dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    pos = np.clip(np.searchsorted(item_ids, items), 0, len(item_ids) - 1)
    return np.unique(pos[item_ids[pos] == items])


def _with_reasons(model: Any, users: UserBlock, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (one block's top-n) with each row's reason from ``model.explain``."""
    order = np.argsort(users.user_ids, kind="stable")
    uid = frame[USER_ID].to_numpy()
    rows = order[np.searchsorted(users.user_ids[order], uid)]
    cols = np.searchsorted(model.item_ids, frame[ITEM_ID].to_numpy())
    return frame.with_columns(reason_columns(model, model.explain(users, rows, cols)))


def reason_columns(model: Any, why: dict[str, np.ndarray]) -> list[pl.Series]:
    """:meth:`Recommender.reasons` as the columns of ``schema.REASON_SCHEMA`` (the named item as its id)."""
    item = why["item"]
    named = pl.Series("reason_item_id", model.item_ids[np.maximum(item, 0)] if len(item) else [], dtype=pl.Int64)
    if (item < 0).any():
        named = named.scatter(np.flatnonzero(item < 0), None)
    return [pl.Series("reason_kind", why["kind"].astype(str), dtype=pl.String), named,
            pl.Series("reason_segment", list(why["segment"]), dtype=pl.String)]


class BestUsers:
    """Each of ``item_ids``' best ``m`` users over blocks of users scored in user id order, by (score desc,
    user id asc), as (items, m) arrays of scores and user ids.

    A row's place in ``[kept, pending]`` is its user id's order, so the m-th best score of each item settles it:
    every better row, and of the rows tied with it the first ones. One ``np.partition`` a merge, in place of
    sorting every block's users per item and merging the frames (a third of the new-items slice at 60k items).
    Until m users are kept, blocks are gathered in a buffer ``width`` users wide (at least m, about
    ``PENDING_CELLS`` cells) and merged when it is full. Once m users are kept, each block is compared with each
    item's m-th best in its own layout and only its entrants (the users above it: about m x block / users seen an
    item, a falling share) are gathered, as (user, item, score) triples, until they number a quarter of the kept
    cells or some item has m; then each item they entered is merged from its entrants alone. The transposed copy
    of every block into the buffer and a merge of the kept m of every item it touched were most of the pass (a
    million users' audiences of 40k new items: 147 ms a 400-user block, the m kept re-partitioned each time).
    """

    def __init__(self, item_ids: np.ndarray, m: int, width: int | None = None):
        self.item_ids, self.m = item_ids, m
        self.values = np.zeros((len(item_ids), 0), dtype=np.float32)
        self.users = np.zeros((len(item_ids), 0), dtype=np.int64)
        self.width = width or max(m, PENDING_CELLS // max(len(item_ids), 1))
        self._pending: np.ndarray | None = None  # (items, width): the gathered blocks' scores, users in order
        self._pending_users: list[np.ndarray] = []
        self._filled = 0
        self._floor = np.full(len(item_ids), -np.inf, dtype=np.float32)  # each item's m-th best at the last merge
        self._entrants: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (users, items, scores), users in order
        self._entering = np.zeros(len(item_ids), dtype=np.int64)  # the gathered entrants of each item

    def add(self, user_ids: np.ndarray, scores: np.ndarray) -> None:
        """A block's ``scores`` (users x items) of ``user_ids``, users after every earlier block's."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if self.values.shape[1] >= self.m:
            self._drain()  # the rest of a block that filled the m, gathered first: its users come first
            self._gather(user_ids, scores)
            return
        if self._pending is None:
            self._pending = np.empty((len(self.item_ids), self.width), dtype=np.float32)
        lo = 0
        while lo < len(user_ids):  # a block wider than the buffer's room goes in parts
            take = min(len(user_ids) - lo, self.width - self._filled)
            self._pending[:, self._filled:self._filled + take] = scores[lo:lo + take].T
            self._pending_users.append(user_ids[lo:lo + take])
            self._filled += take
            lo += take
            if self._filled == self.width:
                self._flush()

    def _flush(self) -> None:
        self._drain()
        self._merge_entrants()

    def _drain(self) -> None:
        """The buffer's users merged (fewer than m kept) or gathered as entrants."""
        if not self._filled:
            return
        block, user_ids = self._pending[:, :self._filled], np.concatenate(self._pending_users)
        self._pending_users, self._filled = [], 0
        if self.values.shape[1] < self.m:
            self.values, self.users = self._merge(self.values, self.users, block, user_ids)
            if self.values.shape[1] >= self.m:
                self._floor = self.values.min(axis=1)
        else:
            self._gather(user_ids, np.ascontiguousarray(block.T))

    def _gather(self, user_ids: np.ndarray, scores: np.ndarray) -> None:
        """A block (users x items, users after every kept one) once m users are kept: its entrants, the entries
        above their item's m-th best at the last merge (a tie goes to the earlier user, and a NaN never
        enters). A block that some item's users nearly all enter (the first blocks past m) is merged whole."""
        width = scores.shape[1]
        flat = np.flatnonzero(scores > self._floor)  # row-major: each item's entrants in user order
        if not len(flat):
            return
        at_user, at_item = np.divmod(flat, width)
        counts = np.bincount(at_item, minlength=width)
        if 2 * int(counts.max()) >= len(user_ids):
            self._merge_entrants()
            rows = np.flatnonzero(counts)
            self._merge_rows(rows, np.ascontiguousarray(scores[:, rows].T), user_ids)
            return
        self._entrants.append((user_ids[at_user], at_item, scores.ravel()[flat] if scores.flags.c_contiguous
                               else scores[at_user, at_item]))
        self._entering += counts
        if 4 * int(self._entering.sum()) >= self.values.size or self._entering.max() >= self.m:
            self._merge_entrants()

    def _merge_entrants(self) -> None:
        """Each item the gathered entrants entered, merged from its entrants alone (in user order, padded with
        -inf: a pad is never among the m best, the m kept and at least one entrant being better or earlier)."""
        if not self._entrants:
            return
        users, items, values = (np.concatenate(part) for part in zip(*self._entrants, strict=True))
        counts = self._entering
        self._entrants, self._entering = [], np.zeros(len(self.item_ids), dtype=np.int64)
        order = np.argsort(items, kind="stable")  # by item, each item's in user order
        rows = np.flatnonzero(counts)
        counts = counts[rows]
        place = np.repeat(np.arange(len(rows)), counts)
        slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
        entrants = np.full((len(rows), int(counts.max())), -np.inf, dtype=np.float32)
        entrants[place, slot] = values[order]
        entrant_users = np.zeros(entrants.shape, dtype=np.int64)
        entrant_users[place, slot] = users[order]
        self._merge_rows(rows, entrants, entrant_users)

    def _merge_rows(self, rows: np.ndarray, block: np.ndarray, user_ids: np.ndarray) -> None:
        """The kept ``rows`` (items) merged with ``block`` (those items x users, :meth:`_merge`), their floors
        updated."""
        self.values[rows], self.users[rows] = self._merge(self.values[rows], self.users[rows], block, user_ids)
        self._floor[rows] = self.values[rows].min(axis=1)

    def nth_best(self) -> np.ndarray:
        """Each item's m-th best score so far (-inf where fewer than m users were added)."""
        self._flush()
        return self._floor.copy()

    def _merge(self, kept: np.ndarray, kept_users: np.ndarray, block: np.ndarray,
               user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best m of each row of ``[kept, block]`` in that order (scores, user ids); ``user_ids``: the
        block's columns' users (one row for all), or each row's (the same shape as ``block``)."""
        values = np.concatenate([kept, block], axis=1)
        r, width, m, before = values.shape[0], values.shape[1], self.m, kept.shape[1]
        if width <= m:
            return values, np.concatenate([kept_users, np.broadcast_to(user_ids, block.shape)], axis=1)
        nth = np.partition(values, width - m, axis=1)[:, width - m, None]
        keep = values >= nth
        if np.count_nonzero(keep) > r * m:  # some row has more than m at or above its m-th: ties, first ones
            crowded = np.flatnonzero(np.count_nonzero(keep, axis=1) > m)
            sub, at = values[crowded], nth[crowded]
            better, tied = sub > at, sub == at
            keep[crowded] = better | (tied & (np.cumsum(tied, axis=1) <= m - better.sum(axis=1, keepdims=True)))
        cols = (np.flatnonzero(keep).reshape(r, m) - (np.arange(r) * width)[:, None])  # m a row, in user order
        at = np.maximum(cols - before, 0)
        users = user_ids[at] if user_ids.ndim == 1 else np.take_along_axis(user_ids, at, axis=1)
        if before:
            from_kept = cols < before
            users[from_kept] = np.take_along_axis(kept_users, np.minimum(cols, before - 1), axis=1)[from_kept]
        return np.take_along_axis(values, cols, axis=1), users

    def frame(self) -> pl.DataFrame:
        """The best users, finite scores only, ranked (``schema.BY_ITEM_SCHEMA``): each item's row ordered by
        (score desc, user id asc) in place, where sorting the long frame by item too cost most of this call."""
        self._flush()
        self._pending = None
        rows = np.argsort(self.item_ids, kind="stable")
        values, users = self.values[rows], self.users[rows]
        order = np.lexsort((users, -values), axis=1)
        values, users = np.take_along_axis(values, order, axis=1), np.take_along_axis(users, order, axis=1)
        keep = np.isfinite(values)
        rank = np.cumsum(keep, axis=1, dtype=np.int32)  # among the finite scores, as the list shows them
        return pl.DataFrame({ITEM_ID: np.broadcast_to(self.item_ids[rows][:, None], values.shape)[keep],
                             USER_ID: users[keep], "score": values[keep], "rank": rank[keep]}).select(
            *schema.BY_ITEM_SCHEMA).cast(schema.BY_ITEM_SCHEMA)


def merge_best_users(candidates: pl.DataFrame, m: int) -> pl.DataFrame:
    """Each item's best ``m`` users among candidates from several blocks, ranked by (score desc, user id asc)."""
    return (candidates.sort([ITEM_ID, "score", USER_ID], descending=[False, True, False])
            .with_columns(rank=(pl.int_range(pl.len()).over(ITEM_ID) + 1).cast(pl.Int32))
            .filter(pl.col("rank") <= m).select(*schema.BY_ITEM_SCHEMA))


def top_n(user_ids: np.ndarray, scores: np.ndarray, n: int, item_ids: np.ndarray,
           tiebreak: np.ndarray) -> pl.DataFrame:
    """The n best items per row, ordered exactly by (score desc, tiebreak asc), as
    :func:`models.ranking.best_of_rows` finds them; halves of a large block run on the scoring threads (numpy
    releases the GIL). Non-finite scores (seen items, items a model cannot score) are not listed."""
    b = scores.shape[0]
    n = min(n, scores.shape[1])
    if b == 0 or n == 0:
        return pl.DataFrame(schema=schema.RECOMMENDATION_SCHEMA)
    if b < 64:
        return _top_n_rows(user_ids, scores, n, item_ids, tiebreak)
    half = b // 2
    parts = on_scoring_threads(lambda rows: _top_n_rows(user_ids[rows], scores[rows], n, item_ids, tiebreak),
                               [slice(0, half), slice(half, b)])
    return pl.concat(parts)


def ranked_frame(user_ids: np.ndarray, top: np.ndarray, best: np.ndarray, item_ids: np.ndarray) -> pl.DataFrame:
    """:func:`top_n`'s frame of lists already ranked: ``top`` (users, n) columns best first, -1 past a list,
    ``best`` their scores (only finite ones listed)."""
    rows, rank = np.nonzero(top >= 0)  # rows ascending, rank ascending within a row
    return _list_frame(user_ids, item_ids, rows, top[rows, rank], best[rows, rank], rank)


def _top_n_rows(user_ids: np.ndarray, scores: np.ndarray, n: int, item_ids: np.ndarray,
                tiebreak: np.ndarray) -> pl.DataFrame:
    return _list_frame(user_ids, item_ids, *best_of_rows(scores, n, tiebreak))


def _list_frame(user_ids: np.ndarray, item_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                rank: np.ndarray) -> pl.DataFrame:
    """Ranked entries (block rows, catalogue columns, scores, 0-based ranks) as a top-n frame, finite scores
    only (a user who has seen almost everything gets a shorter list)."""
    keep = np.isfinite(values)
    return pl.DataFrame({
        USER_ID: user_ids[rows[keep]],
        ITEM_ID: item_ids[cols[keep]],
        "rank": (rank[keep] + 1).astype(np.int32),
        "score": values[keep].astype(np.float32),
    }, schema=schema.RECOMMENDATION_SCHEMA)
