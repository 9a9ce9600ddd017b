"""Peers for the quality benchmark: LightFM, run on the benchmark's own splits.

    pip install '.[peers]'          # rectools-lightfm (a maintained LightFM build)
    recsys benchmark quality --peers ...

Each peer is a :class:`models.base.Recommender`, so it is fitted on exactly the training interactions and
features our models get, scored blockwise by the same code, masked and tie-broken the same way, and measured
by the same metric code: a row of the table, not a number copied from a paper. They are benchmark-only:
nothing in the nightly imports them.

- ``lightfm``: LightFM with WARP loss, user features = id + demographics (gender, age bucket, occupation),
  item features = id + genres. Users not seen in training are represented by their demographics alone (also
  when they have revealed k items: LightFM has no fold-in), which is how LightFM serves cold users.

implicit's ALS, the other peer of earlier tables, is a product model now (``als``, :mod:`models.als`): a row of
every table like EASE's.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.serving import UserBlock

INSTALL_HINT = "the peers are an optional extra: pip install '.[peers]' (rectools-lightfm)"
PEERS = ("lightfm",)


def missing_peers() -> list[str]:
    """Peer libraries that are not installed."""
    return [package for package, module in (("rectools-lightfm", "lightfm"),)
            if importlib.util.find_spec(module) is None]


class _Pickled(Recommender):
    """Peers keep their fitted state in one library object, saved as a pickle."""

    state: tuple[str, ...] = ()

    def _save_state(self, path: Path) -> None:
        with open(path / "peer.pkl", "wb") as f:
            pickle.dump({key: getattr(self, key) for key in self.state}, f)

    def _load_state(self, path: Path) -> None:
        with open(path / "peer.pkl", "rb") as f:
            for key, value in pickle.load(f).items():
                setattr(self, key, value)


class LightFMPeer(_Pickled):
    name = "lightfm"
    state = ("item_biases", "item_embeddings", "model")

    @classmethod
    def default_params(cls) -> dict:
        # 60 epochs: chosen on a validation split inside protocol W's training fold (nDCG@10 0.239; 30: 0.199).
        return {"no_components": 64, "loss": "warp", "learning_rate": 0.05, "epochs": 60, "item_alpha": 1e-6,
                "user_alpha": 1e-6, "num_threads": 2}

    def _demographic_offsets(self) -> np.ndarray:
        sizes = [len(self.vocab[c]) for c in self.vocab]
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)

    def _user_features(self, train_rows: np.ndarray, demographics: np.ndarray) -> sp.csr_matrix:
        """Rows of [user id one-hot | demographic one-hots], normalised to sum 1 (LightFM's own convention)."""
        n_ids = len(self.user_ids)
        width = n_ids + sum(len(self.vocab[c]) for c in self.vocab)
        rows, cols = [], []
        known = np.flatnonzero(train_rows >= 0)
        rows.append(known)
        cols.append(train_rows[known])
        offsets = self._demographic_offsets()
        for j in range(demographics.shape[1]):
            rows.append(np.arange(len(train_rows)))
            cols.append(n_ids + offsets[j] + demographics[:, j])
        r, c = np.concatenate(rows), np.concatenate(cols)
        m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(train_rows), width))
        return sp.diags(1.0 / np.maximum(np.asarray(m.sum(axis=1)).ravel(), 1.0)) @ m

    def _item_features(self) -> sp.csr_matrix:
        features = sp.hstack([sp.identity(len(self.item_ids), dtype=np.float32, format="csr"),
                              sp.csr_matrix(self.item_genres)]).tocsr()
        return sp.diags(1.0 / np.maximum(np.asarray(features.sum(axis=1)).ravel(), 1.0)) @ features

    def _fit(self, seed: int) -> None:
        from lightfm import LightFM  # optional peer library (pip install '.[peers]')

        p = self.params
        user_features = self._user_features(np.arange(len(self.user_ids)), self.demographics_of(self.user_ids))
        item_features = self._item_features()
        self.model = LightFM(no_components=p["no_components"], loss=p["loss"], learning_rate=p["learning_rate"],
                             item_alpha=p["item_alpha"], user_alpha=p["user_alpha"], random_state=seed)
        self.model.fit(self.train.tocoo(), user_features=user_features, item_features=item_features,
                       epochs=p["epochs"], num_threads=p["num_threads"])
        self.item_biases, self.item_embeddings = self.model.get_item_representations(item_features)

    def score_block(self, users: UserBlock) -> np.ndarray:
        features = self._user_features(users.train_rows, users.demographics.astype(np.int64))
        biases, embeddings = self.model.get_user_representations(features)
        return (embeddings @ self.item_embeddings.T + biases[:, None] + self.item_biases[None, :]).astype(np.float32)


PEER_CLASSES: dict[str, type[Recommender]] = {cls.name: cls for cls in (LightFMPeer,)}
