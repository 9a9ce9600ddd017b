"""Models that score items from what is known before anyone rates them: the way new items reach people.

- :class:`ContentKNN`, a content neighbourhood: an item is described by its genres, release decade and title
  words (inverse-document-frequency weighted, unit length); a user's profile is the unit sum of their known
  items' vectors, and an item's score is its cosine with the profile. A film loaded today with no rating is
  scored exactly like one rated a thousand times.
- Two baselines for new items: :class:`GenrePopularity` (how much of a user's history is in the item's
  genres) and :class:`RandomExposure` (a seeded coin per user and item).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import N_DECADES, Recommender, UserBlock, decade_of


def _unit_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return (sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32))
            @ matrix).tocsr().astype(np.float32)


class ContentKNN(Recommender):
    name = "content_knn"
    scores_new_items = True

    @classmethod
    def default_params(cls) -> dict:
        # Relative weight of each kind of content in an item's vector (each part unit length before weighting).
        return {"genre_weight": 1.0, "decade_weight": 0.5, "title_weight": 0.7}

    def _fit(self, seed: int) -> None:
        n = len(self.item_ids)
        genres = sp.csr_matrix(self.item_genres)
        decade = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), decade_of(self.item_year))),
                               shape=(n, N_DECADES))
        decade = decade[:, 1:]  # decade 0 is "unknown": no similarity from not knowing
        tokens = sp.csr_matrix(self.item_tokens, dtype=np.float32)
        document_frequency = np.asarray((tokens > 0).sum(axis=0)).ravel()
        idf = np.log((1.0 + n) / (1.0 + document_frequency)).astype(np.float32)
        # A word in a single title tells nothing about any other item: only words shared by a few titles count.
        idf[document_frequency < 2] = 0.0
        tokens = (tokens @ sp.diags(idf)).tocsr()
        p = self.params
        parts = [float(p["genre_weight"]) * _unit_rows(genres), float(p["decade_weight"]) * _unit_rows(decade),
                 float(p["title_weight"]) * _unit_rows(tokens)]
        self.content = _unit_rows(sp.hstack(parts).tocsr())
        self.content.eliminate_zeros()

    def score_block(self, users: UserBlock) -> np.ndarray:
        profile = np.asarray((users.history @ self.content).todense(), dtype=np.float32)  # (b, d)
        norms = np.linalg.norm(profile, axis=1, keepdims=True)
        np.divide(profile, norms, out=profile, where=norms > 0)
        return np.asarray((self.content @ profile.T).T, dtype=np.float32)

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"similar to <the known item whose content is closest>"."""
        def similarity(known: np.ndarray, target: np.ndarray) -> np.ndarray:
            return np.asarray(self.content[known].multiply(self.content[target]).sum(axis=1)).ravel()

        return self.neighbour_reasons(users, rows, cols, similarity, kind="content")

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "content.npz", self.content)

    def _load_state(self, path: Path) -> None:
        self.content = sp.load_npz(path / "content.npz").tocsr()


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
        per_genre = np.asarray(users.history @ self.item_genres, dtype=np.float32)  # (b, genres)
        totals = per_genre.sum(axis=1, keepdims=True)
        share = np.where(totals > 0, per_genre / np.maximum(totals, 1.0), self.global_share[None, :])
        return (share @ self.item_profile.T).astype(np.float32)

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
            x = (users.user_ids.astype(np.uint64)[:, None] * np.uint64(0xD1B54A32D192ED03)
                 + self.item_ids.astype(np.uint64)[None, :] * np.uint64(0xABC98388FB8FAC03) + self.salt)
            x ^= x >> np.uint64(31)  # splitmix64's finaliser
            x *= np.uint64(0xBF58476D1CE4E5B9)
            x ^= x >> np.uint64(27)
            x *= np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(31)
        return ((x >> np.uint64(40)).astype(np.float32) / np.float32(2**24))

    def _save_state(self, path: Path) -> None:
        np.save(path / "salt.npy", np.array([self.salt], dtype=np.uint64))

    def _load_state(self, path: Path) -> None:
        self.salt = np.load(path / "salt.npy")[0]
