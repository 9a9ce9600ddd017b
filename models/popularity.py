"""Popularity baselines: the honest yardstick, especially for users we know nothing about."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.base import DEMOGRAPHIC_COLUMNS, Recommender, UserBlock


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
    the global ranking; a user with unknown demographics gets the global ranking.
    """

    name = "segment_popularity"

    @classmethod
    def default_params(cls) -> dict:
        return {"segment": ["gender", "age_bucket"], "alpha": 50.0}

    def _segment_of(self, demographics: np.ndarray) -> np.ndarray:
        cols = [DEMOGRAPHIC_COLUMNS.index(c) for c in self.params["segment"]]
        sizes = [len(self.vocab[c]) for c in self.params["segment"]]
        return np.ravel_multi_index(tuple(demographics[:, c] for c in cols), sizes).astype(np.int64), int(np.prod(sizes))

    def _fit(self, seed: int) -> None:
        fidx = np.searchsorted(self.feature_user_ids, self.user_ids)
        fidx = np.clip(fidx, 0, max(len(self.feature_user_ids) - 1, 0))
        has = (len(self.feature_user_ids) > 0) & (self.feature_user_ids[fidx] == self.user_ids)
        demo = np.where(has[:, None], self.user_demographics[fidx], 0)
        segment, n_segments = self._segment_of(demo)
        membership = np.zeros((n_segments, len(self.user_ids)), dtype=np.float32)
        membership[segment, np.arange(len(self.user_ids))] = 1.0
        counts = np.asarray(self.train.T.dot(membership.T)).T  # (segments, items)
        prior = self.item_popularity / max(1.0, float(self.item_popularity.sum()))
        alpha = float(self.params["alpha"])
        totals = counts.sum(axis=1, keepdims=True)
        self.segment_scores = ((counts + alpha * prior[None, :]) / (totals + alpha)).astype(np.float32)
        # Segment 0 of every column is "<unk>": users with unknown demographics get the global ranking.
        self.global_scores = prior.astype(np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        segment, _ = self._segment_of(users.demographics)
        unknown = np.any(users.demographics[:, [DEMOGRAPHIC_COLUMNS.index(c) for c in self.params["segment"]]] == 0,
                         axis=1)
        scores = self.segment_scores[segment].copy()
        scores[unknown] = self.global_scores
        return scores

    def _save_state(self, path: Path) -> None:
        np.savez(path / "segments.npz", segment_scores=self.segment_scores, global_scores=self.global_scores)

    def _load_state(self, path: Path) -> None:
        with np.load(path / "segments.npz") as z:
            self.segment_scores, self.global_scores = z["segment_scores"], z["global_scores"]
