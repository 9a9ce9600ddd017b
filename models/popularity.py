"""Popularity baselines: the honest yardstick, especially for users we know nothing about."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import DEMOGRAPHIC_COLUMNS, Recommender, UserBlock, replace


class Popularity(Recommender):
    """Global popularity: the same ranking (most interacted items first) for everyone."""

    name = "popularity"

    def _fit(self, seed: int) -> None:
        self.scores = self.item_popularity / max(1.0, float(self.item_popularity.max()))

    def score_block(self, users: UserBlock) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users.user_ids), len(self.scores))).copy()

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
    from its coarser one (gender x age) rather than from everyone.
    """

    name = "segment_popularity"

    @classmethod
    def default_params(cls) -> dict:
        return {"segment": ["gender", "age_bucket"], "alpha": 50.0, "parent": [], "parent_alpha": 50.0}

    def _fit(self, seed: int) -> None:
        parent = list(self.params["parent"])
        if parent and not set(parent) < set(self.params["segment"]):
            raise ValueError(f"segment_popularity: parent {parent} must be some, not all, of the segment's "
                             f"columns {list(self.params['segment'])}")
        self.segment_scores, self.global_scores = segment_table(
            self, self.params["segment"], float(self.params["alpha"]), parent, float(self.params["parent_alpha"]))
        # A user whose segment is unknown but whose parent segment is known is served by the parent's row.
        self.parent_scores = (segment_table(self, parent, float(self.params["parent_alpha"]))[0] if parent
                              else np.zeros((0, len(self.item_ids)), np.float32))

    def score_block(self, users: UserBlock) -> np.ndarray:
        segment = segment_of(self, users.demographics, self.params["segment"])
        scores = self.segment_scores[np.minimum(segment, len(self.segment_scores) - 1)].copy()
        unknown = segment == len(self.segment_scores)
        if len(self.parent_scores) and unknown.any():
            up = segment_of(self, users.demographics[unknown], list(self.params["parent"]))
            known = up < len(self.parent_scores)
            rows = np.flatnonzero(unknown)
            scores[rows[known]] = self.parent_scores[up[known]]
            unknown[rows[known]] = False
        scores[unknown] = self.global_scores  # unknown demographics
        return scores

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"popular with <the user's segment>" (its parent segment, then global popularity, where it is unknown)."""
        why = self.segment_reasons(users, rows, tuple(self.params["segment"]))
        if self.params["parent"]:
            fallback = np.flatnonzero(why["kind"] == "popular")
            replace(why, fallback, self.segment_reasons(users, rows[fallback], tuple(self.params["parent"])))
        return why

    def _save_state(self, path: Path) -> None:
        np.savez(path / "segments.npz", segment_scores=self.segment_scores, global_scores=self.global_scores,
                 parent_scores=self.parent_scores)

    def _load_state(self, path: Path) -> None:
        with np.load(path / "segments.npz") as z:
            self.segment_scores, self.global_scores = z["segment_scores"], z["global_scores"]
            self.parent_scores = (z["parent_scores"] if "parent_scores" in z.files
                                  else np.zeros((0, len(self.global_scores)), np.float32))


def segment_of(model: Recommender, demographics: np.ndarray, columns: list[str]) -> np.ndarray:
    """Each user's segment (a cell of ``columns``' vocabularies), or the number of segments where one of
    them is unknown (vocabulary index 0): such users get the global ranking."""
    cols = [DEMOGRAPHIC_COLUMNS.index(c) for c in columns]
    sizes = [len(model.vocab[c]) for c in columns]
    segment = np.ravel_multi_index(tuple(demographics[:, c] for c in cols), sizes).astype(np.int64)
    return np.where(np.any(demographics[:, cols] == 0, axis=1), int(np.prod(sizes)), segment)


def segment_table(model: Recommender, columns: list[str], alpha: float, parent: list[str] | tuple = (),
                  parent_alpha: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """(segments x items) popularity within each segment, shrunk towards global, and the global popularity:
    score(i | s) = (count_s(i) + alpha * p(i)) / (n_s + alpha), each row summing to 1. With ``parent``
    columns, p(i) is the segment's parent's row of ``segment_table(model, parent, parent_alpha)`` instead."""
    segment = segment_of(model, model.demographics_of(model.user_ids), columns)
    n_segments = int(np.prod([len(model.vocab[c]) for c in columns]))
    known = segment < n_segments
    membership = sp.csr_matrix((np.ones(int(known.sum()), np.float32), (segment[known], np.flatnonzero(known))),
                               shape=(n_segments, len(model.user_ids)))
    counts = np.asarray((membership @ model.train).todense())  # (segments, items)
    prior = model.item_popularity / max(1.0, float(model.item_popularity.sum()))
    towards = prior[None, :]
    if parent:
        # Each segment's parent: its codes in the parent's columns (segments cover every code combination).
        codes = np.unravel_index(np.arange(n_segments), [len(model.vocab[c]) for c in columns])
        up = np.ravel_multi_index(tuple(codes[list(columns).index(c)] for c in parent),
                                  [len(model.vocab[c]) for c in parent])
        towards = segment_table(model, list(parent), parent_alpha)[0][up]
    totals = counts.sum(axis=1, keepdims=True)
    return (((counts + alpha * towards) / (totals + alpha)).astype(np.float32), prior.astype(np.float32))
