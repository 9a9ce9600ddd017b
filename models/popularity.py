"""Popularity baselines: the honest yardstick, especially for users we know nothing about."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.explain import replace
from models.ranking import Stage, first_unseen, ndcg_from_hits, one_sided_gain, top_k_indices, unseen_moments
from models.serving import DEMOGRAPHIC_COLUMNS, UserBlock
from recsys import schema


class Popularity(Recommender):
    """Global popularity: the same ranking (most interacted items first) for everyone."""

    name = "popularity"
    lists_from_stage = True
    description = 'the same most-taken items for everyone'

    def _fit(self, seed: int) -> None:
        self.scores = self.item_popularity / max(1.0, float(self.item_popularity.max()))

    def score_block(self, users: UserBlock) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users.user_ids), len(self.scores))).copy()

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """Everyone's one row (:func:`table_stage`): a user's best are the catalogue's best less what they have
        seen, without a (users, items) block."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        return table_stage(self, (self.scores,), lambda _: self.scores, users,
                           np.zeros(len(users.user_ids), dtype=np.int64), depth)

    def _save_state(self, path: Path) -> None:
        np.save(path / "scores.npy", self.scores)

    def _load_state(self, path: Path) -> None:
        self.scores = np.load(path / "scores.npy")


class SegmentPopularity(Recommender):
    """Popularity within a demographic segment (default gender x age bucket), shrunk towards global.

    score(i | s) = (count_s(i) + alpha * p(i)) / (n_s + alpha): a segment with few users falls back to
    the global ranking; a user with unknown demographics gets the global ranking. With ``parent`` (some of
    ``segment``'s columns) a segment is shrunk towards its parent segment's popularity instead, itself shrunk
    towards global with ``parent_alpha``: a hierarchy, so a finer segment (gender x age x occupation) starts
    from its coarser one (gender x age) rather than from everyone, and a user whose finer segment is unknown
    is served by the coarser one.

    ``choose_segment``: which demographics tell about a new user differs per dataset (on MovieLens-100k
    nothing beyond gender and age does; on the synthetic data occupation does, by construction). So the fit
    first holds out a seeded share of the training users, counts the others, and ranks the held-out users'
    items (as new users: from demographics alone) with ``segment`` and with each finer segment of
    ``choose_from`` shrunk towards it (``choose_alphas``); a finer segment replaces ``segment`` only when its
    nDCG@10 gain on those users is significant (one-sided ``choose_level`` paired bootstrap). Then it counts
    everyone with the chosen segment; what was compared and chosen is in :attr:`selection`.
    """

    name = "segment_popularity"
    lists_from_stage = True
    description = "the most-taken items of the user's demographic segment"

    @classmethod
    def default_params(cls) -> dict:
        return {"segment": ["gender", "age_bucket"], "alpha": 50.0, "parent": [], "parent_alpha": 50.0,
                "choose_segment": True, "choose_from": [["occupation"], ["zip_region"]],
                "choose_alphas": [1000.0, 5000.0, 20000.0], "choose_share": 0.2, "choose_max_users": 2000,
                "choose_level": 0.05, "choose_min_users": 100, "bootstrap_samples": 1000}

    def _fit(self, seed: int) -> None:
        p = self.params
        if p["parent"] and not set(p["parent"]) < set(p["segment"]):
            raise ValueError(f"segment_popularity: parent {list(p['parent'])} must be some, not all, of the "
                             f"segment's columns {list(p['segment'])}")
        base = {"segment": list(p["segment"]), "parent": list(p["parent"]), "alpha": float(p["alpha"])}
        self.chosen, self.selection = (self._choose(base, seed) if p["choose_segment"]
                                       else (base, {"chosen": "as configured"}))
        self._count(self.chosen)

    def _count(self, spec: dict, counted: np.ndarray | None = None) -> None:
        """The tables of ``spec`` (segment, parent, alpha), counted over the training users ``counted``
        (a boolean mask; default all)."""
        parent = None
        self.parent_scores = np.zeros((0, len(self.item_ids)), np.float32)
        if spec["parent"]:
            self.parent_scores = segment_table(self, spec["parent"], float(self.params["parent_alpha"]), counted)[0]
            parent = (spec["parent"], self.parent_scores)
        self.segment_scores, self.global_scores = segment_table(self, spec["segment"], spec["alpha"], counted, parent)

    def _choose(self, base: dict, seed: int) -> tuple[dict, dict]:
        p = self.params
        candidates = [base] + [{"segment": [*base["segment"], *extra], "parent": list(base["segment"]),
                                "alpha": float(a)}
                               for extra in p["choose_from"] if not set(extra) & set(base["segment"])
                               for a in p["choose_alphas"]]
        degree = np.diff(self.train.indptr)
        eligible = np.flatnonzero(degree >= 5)
        n = min(int(len(eligible) * float(p["choose_share"])), int(p["choose_max_users"]))
        if len(candidates) == 1:
            return base, {"chosen": "as configured", "why": "choose_from adds nothing to the segment"}
        if n < int(p["choose_min_users"]):
            return base, {"chosen": "as configured", "why": f"{n} held-out users, fewer than choose_min_users"}
        held = np.sort(np.random.default_rng(seed).choice(eligible, n, replace=False))
        counted = np.ones(len(self.user_ids), dtype=bool)
        counted[held] = False
        demographics = self.demographics_of(self.user_ids[held])
        ndcg = []
        truth = self.train[held]
        for spec in candidates:
            self._count(spec, counted)
            ndcg.append(shared_rows_ndcg(self._row_keys(demographics, spec), self._table_row, truth,
                                         k=schema.DEFAULT_K))
        means = [float(v.mean()) for v in ndcg]
        best = int(np.argmax(means))  # the first maximum: the configured segment wins ties
        gain = one_sided_gain(ndcg[best], ndcg[0], float(p["choose_level"]), int(p["bootstrap_samples"]), seed)
        kept = best > 0 and gain[1] > 0
        record = {"held_out_users": n,
                  "candidates": [{**spec, "ndcg": m} for spec, m in zip(candidates, means, strict=True)],
                  "best": candidates[best], "gain_over_configured": {"lift": gain[0], "ci_low": gain[1],
                                                                     "ci_high": gain[2]},
                  "chosen": "finer segment" if kept else "as configured"}
        return (candidates[best] if kept else base), record

    def _rows(self, demographics: np.ndarray, spec: dict) -> np.ndarray:
        """Each user's row of the tables: their segment's, else their parent segment's, else global."""
        scores = np.empty((len(demographics), len(self.item_ids)), dtype=np.float32)
        for key, mine in _groups(self._row_keys(demographics, spec)).items():
            scores[mine] = self._table_row(key)
        return scores

    def _row_keys(self, demographics: np.ndarray, spec: dict) -> np.ndarray:
        """Each user's row as one key: their segment (< segments), else segments + their parent segment, else
        segments + parents (global)."""
        n_segments, n_parents = len(self.segment_scores), len(self.parent_scores)
        keys = segment_of(self, demographics, spec["segment"])
        unknown = np.flatnonzero(keys == n_segments)
        if n_parents and len(unknown):
            up = segment_of(self, demographics[unknown], list(spec["parent"]))
            keys[unknown] = n_segments + up  # up == n_parents where the parent is unknown too: global
        else:
            keys[unknown] = n_segments + n_parents
        return keys

    def _table_row(self, key: int) -> np.ndarray:
        n_segments, n_parents = len(self.segment_scores), len(self.parent_scores)
        if key < n_segments:
            return self.segment_scores[key]
        return self.parent_scores[key - n_segments] if key < n_segments + n_parents else self.global_scores

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self._rows(users.demographics, self.chosen)

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """A block's users share a few rows of the tables (:func:`table_stage`)."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        return table_stage(self, (self.segment_scores, self.parent_scores, self.global_scores), self._table_row,
                           users, self._row_keys(users.demographics, self.chosen), depth)

    def summary(self) -> str:
        s = getattr(self, "selection", {})
        if "best" not in s:
            return ""
        gain = s["gain_over_configured"]
        return (f"segment {' x '.join(self.chosen['segment'])} ({s['chosen']}; best finer "
                f"{' x '.join(s['best']['segment'])} {gain['lift']:+.1%} "
                f"[{gain['ci_low']:+.1%}, {gain['ci_high']:+.1%}] "
                f"on {s['held_out_users']:,} held-out users)")

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"popular with <the user's segment>" (its parent segment, then global popularity, where it is unknown)."""
        why = self.segment_reasons(users, rows, tuple(self.chosen["segment"]))
        if self.chosen["parent"]:
            fallback = np.flatnonzero(why["kind"] == "popular")
            replace(why, fallback, self.segment_reasons(users, rows[fallback], tuple(self.chosen["parent"])))
        return why

    def _save_state(self, path: Path) -> None:
        np.savez(path / "segments.npz", segment_scores=self.segment_scores, global_scores=self.global_scores,
                 parent_scores=self.parent_scores)
        (path / "segment.json").write_text(json.dumps({"chosen": self.chosen, "selection": self.selection}, indent=2))

    def _load_state(self, path: Path) -> None:
        with np.load(path / "segments.npz") as z:
            self.segment_scores, self.global_scores = z["segment_scores"], z["global_scores"]
            self.parent_scores = (z["parent_scores"] if "parent_scores" in z.files
                                  else np.zeros((0, len(self.global_scores)), np.float32))
        saved = json.loads((path / "segment.json").read_text()) if (path / "segment.json").exists() else {}
        p = self.params
        self.chosen = saved.get("chosen", {"segment": list(p["segment"]), "parent": list(p.get("parent", [])),
                                           "alpha": float(p["alpha"])})
        self.selection = saved.get("selection", {"chosen": "as configured"})


def shared_rows_ndcg(keys: np.ndarray, table_row, truth: sp.csr_matrix, k: int) -> np.ndarray:
    """Each user's nDCG@k against ``truth`` (users x items) when the users ranked by the same row of a table
    share its ranking (``keys``: each user's row; ``table_row(key)``: the row): each row's best k are found
    once, as :func:`models.ranking.ndcg_at_k` finds a user's (a row's ranking depends on the row alone), and a
    user's hits read off their truth at those k items. The same values as ranking every user's dense row
    (tested), without a users x items matrix: 2,000 held-out users x 200k items were ~3 s a candidate."""
    relevant = (truth > 0).tocsr()
    n_relevant = np.diff(relevant.indptr)
    out = np.empty(truth.shape[0])
    for key, mine in _groups(keys).items():
        best = top_k_indices(table_row(key)[None, :], k)[0]
        out[mine] = ndcg_from_hits(relevant[mine][:, best].toarray().astype(np.float64), n_relevant[mine])
    return out


def row_summary(model: Recommender, tables: tuple[np.ndarray, ...], key: int, row: np.ndarray,
                depth: int) -> tuple[tuple[float, float], np.ndarray]:
    """A table row's (sum, sum of squares) in float64 and its best ``depth`` items ordered as a served list,
    kept on ``model`` per row for its fitted ``tables`` (the longest asked for; forgotten when a table changes)."""
    kept = model.__dict__.get("_summaries")
    if kept is None or len(kept[0]) != len(tables) or any(a is not b for a, b in zip(kept[0], tables, strict=True)):
        kept = model._summaries = (tables, {})
    entry = kept[1].get(key)
    if entry is None or len(entry[1]) < min(depth, len(row)):
        wide = row.astype(np.float64)
        entry = kept[1][key] = ((float(wide.sum()), float(wide @ wide)),
                                top_k_indices(row[None, :], depth, model.tiebreak)[0])
    return entry[0], entry[1][:depth]


def table_stage(model: Recommender, tables: tuple[np.ndarray, ...], table_row, users: UserBlock, keys: np.ndarray,
                depth: int) -> Stage:
    """The first stage of a model whose users share a few rows of its ``tables`` (``keys``: each user's row;
    ``table_row(key)``: the row): each row's sums and best items are found once (:func:`row_summary`),
    a user's best ``depth`` are the row's best less the items they have seen, with their scores (the user's own
    list, :meth:`Recommender.own_list`), and the second stage gathers the columns it asks for."""
    history = users.seen  # canonical: each row's columns ascending
    n_rows, n_items = len(keys), history.shape[1]
    seen = history.tocoo()
    seen_keys = seen.row.astype(np.int64) * n_items + seen.col  # ascending
    lengths = np.diff(history.indptr)
    total, square = np.zeros(n_rows), np.zeros(n_rows)
    seen_scores = np.zeros(seen.nnz)
    top = np.full((n_rows, min(depth, n_items)), -1, dtype=np.int64)
    best_scores = np.full(top.shape, -np.inf, dtype=np.float32)
    rows_of = _groups(keys)  # each row's users, and each row's seen entries
    entries_of = _groups(keys[seen.row])
    for key, mine in rows_of.items():
        row = table_row(key)
        sums, best = row_summary(model, tables, key, row, top.shape[1] + int(lengths[mine].max()))
        total[mine], square[mine] = sums
        if key in entries_of:
            seen_scores[entries_of[key]] = row[seen.col[entries_of[key]]]
        # The row's best less each user's seen items: the first ``depth`` unseen of its best.
        r, c, rank = first_unseen(best, mine, seen_keys, n_items, top.shape[1])
        top[mine[r], rank] = best[c]
        best_scores[mine[r], rank] = row[best[c]]
    mean, inverse = unseen_moments(total, square, n_items, seen.row, seen_scores)

    def scores_at(columns: np.ndarray) -> np.ndarray:
        out = np.empty((n_rows, len(columns)), dtype=np.float32)
        for key, mine in rows_of.items():
            out[mine] = table_row(key)[columns]
        return out

    return Stage(top, scores_at, mean=mean, inverse=inverse, best=best_scores)


def _groups(values: np.ndarray) -> dict[int, np.ndarray]:
    """The positions of each distinct value, ascending within a group."""
    order = np.argsort(values, kind="stable")
    cuts = np.flatnonzero(np.diff(values[order])) + 1
    return {int(values[group[0]]): group for group in np.split(order, cuts)} if len(values) else {}


def segment_of(model: Recommender, demographics: np.ndarray, columns: list[str]) -> np.ndarray:
    """Each user's segment (a cell of ``columns``' vocabularies), or the number of segments where one of
    them is unknown (vocabulary index 0): such users get the global ranking."""
    cols = [DEMOGRAPHIC_COLUMNS.index(c) for c in columns]
    sizes = [len(model.vocab[c]) for c in columns]
    segment = np.ravel_multi_index(tuple(demographics[:, c] for c in cols), sizes).astype(np.int64)
    return np.where(np.any(demographics[:, cols] == 0, axis=1), int(np.prod(sizes)), segment)


def segment_table(model: Recommender, columns: list[str], alpha: float, counted: np.ndarray | None = None,
                  parent: tuple[list[str], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(segments x items) popularity within each segment, shrunk towards global, and the global popularity:
    score(i | s) = (count_s(i) + alpha * p(i)) / (n_s + alpha), each row summing to 1. ``counted``: a mask of
    the training users to count (default all). ``parent``: (columns, table) of a coarser segment (some of
    ``columns``, its table from this function): p(i) is then the segment's parent's row instead."""
    segment = segment_of(model, model.demographics_of(model.user_ids), columns)
    n_segments = int(np.prod([len(model.vocab[c]) for c in columns]))
    known = segment < n_segments
    if counted is not None:
        known &= counted
    membership = sp.csr_matrix((np.ones(int(known.sum()), np.float32), (segment[known], np.flatnonzero(known))),
                               shape=(n_segments, len(model.user_ids)))
    counts = np.asarray((membership @ model.train).todense())  # (segments, items)
    popularity = (model.item_popularity if counted is None
                  else np.asarray(model.train[np.flatnonzero(counted)].sum(axis=0)).ravel())
    prior = (popularity / max(1.0, float(popularity.sum()))).astype(np.float32)
    towards = prior[None, :]
    if parent is not None:
        # Each segment's parent: its codes in the parent's columns (segments cover every code combination).
        parent_columns, parent_table = parent
        codes = np.unravel_index(np.arange(n_segments), [len(model.vocab[c]) for c in columns])
        up = np.ravel_multi_index(tuple(codes[list(columns).index(c)] for c in parent_columns),
                                  [len(model.vocab[c]) for c in parent_columns])
        towards = parent_table[up]
    # In place (the same float32 arithmetic): at 200k items a table of ~500 segments is 0.4 GB a copy.
    table = counts.astype(np.float32, copy=False)
    totals = table.sum(axis=1, keepdims=True)
    table += np.float32(alpha) * towards
    table /= totals + np.float32(alpha)
    return table, prior
