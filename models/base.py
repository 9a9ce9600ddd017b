"""One contract for every recommender: ``fit / recommend / save / load``.

The base class owns everything models share: id <-> index maps, encoded side features, the users' known
items, blockwise scoring with bounded memory, excluding seen items, deterministic tie-breaking, and the
save/load envelope (``params.json`` + ``metadata.json`` + arrays). A model only implements how to score a
block of users (:meth:`Recommender.score_block`) and what state it learns.

Users are served three ways, and ``recommend`` tells them apart:
- **warm**: in the training interactions (their training items are their history);
- **k-shot**: unseen in training, with a few known interactions passed as ``history``;
- **zero-shot**: no interactions at all; only their demographics (if in ``user_features``) are known.
"""

from __future__ import annotations

import json
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from models.tiled import scoring_pool
from recsys import progress, schema

# Memory bound of one scoring block: users x items float32 scores.
SCORE_BLOCK_CELLS = 16_000_000
DEMOGRAPHIC_COLUMNS = ("gender", "age_bucket", "occupation", "zip_region")


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


class Recommender(ABC):
    name: ClassVar[str]

    def __init__(self, **params: Any):
        self.params = {**self.default_params(), **params}
        self.seed: int | None = None
        self.fitted = False
        self.meta: dict[str, Any] = {}
        self._loader: Callable[[Path], Recommender] | None = None
        self.saved_path: Path | None = None  # where save() or load() last put or found this model

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {}

    # -- fitting -------------------------------------------------------------------------------------------

    def fit(
        self, interactions: pl.DataFrame, user_features: pl.DataFrame, item_features: pl.DataFrame, seed: int
    ) -> Self:
        started = time.perf_counter()
        self.seed = int(seed)
        self._fingerprint = data_fingerprint(interactions)
        self._encode(interactions, user_features, item_features)
        self._fit(seed)
        self.fitted = True
        self.meta = {
            "model": self.name,
            "params": self.params,
            "seed": self.seed,
            "n_users": int(len(self.user_ids)),
            "n_items": int(len(self.item_ids)),
            "n_interactions": int(self.train.nnz),
            "data_fingerprint": self._fingerprint,
            "training_seconds": round(time.perf_counter() - started, 3),
            "versions": library_versions(),
        }
        return self

    def summary(self) -> str:
        """One line on how the last fit went, beyond its time (e.g. epochs and loss); empty for most models."""
        return ""

    @classmethod
    def can_warm_start(cls) -> bool:
        return cls.warm_start is not Recommender.warm_start

    def warm_start(self, previous: Recommender) -> None:  # noqa: B027 - most models have nothing to carry over
        """Let the next fit start from ``previous`` (a fit of the same model on an earlier fold), where that
        is sound. Models that cannot use it ignore it."""

    @abstractmethod
    def _fit(self, seed: int) -> None:
        """Learn from ``self.train`` (users x items CSR) and the encoded side features."""

    def _encode(self, interactions: pl.DataFrame, user_features: pl.DataFrame, item_features: pl.DataFrame) -> None:
        # The catalogue: every item with features, plus any item seen in training.
        self.item_ids = np.unique(np.concatenate([
            item_features["item_id"].to_numpy(), interactions["item_id"].unique().to_numpy()])).astype(np.int64)
        self.user_ids = np.unique(interactions["user_id"].to_numpy()).astype(np.int64)
        rows = np.searchsorted(self.user_ids, interactions["user_id"].to_numpy())
        cols = np.searchsorted(self.item_ids, interactions["item_id"].to_numpy())
        train = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                              shape=(len(self.user_ids), len(self.item_ids)))
        train.sum_duplicates()
        train.data[:] = 1.0  # implicit feedback: interacted or not
        self.train = train
        self.item_popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
        # Exact tie-breaking: among equal scores, more popular first, then the lower item id. ``tiebreak`` is
        # each item's position in that order (an integer rank, compared exactly, never added to a score).
        order = np.lexsort((self.item_ids, -self.item_popularity))
        self.tiebreak = np.empty(len(self.item_ids), dtype=np.int64)
        self.tiebreak[order] = np.arange(len(order))
        self._encode_side_features(user_features, item_features)

    def _encode_side_features(self, user_features: pl.DataFrame, item_features: pl.DataFrame) -> None:
        uf = user_features.sort("user_id")
        self.feature_user_ids = uf["user_id"].to_numpy().astype(np.int64)
        self.vocab: dict[str, list[str]] = {}
        codes = []
        for column in DEMOGRAPHIC_COLUMNS:
            values = (uf[column].fill_null("unknown").cast(pl.String) if column in uf.columns
                      else pl.Series(column, ["unknown"] * uf.height, dtype=pl.String))
            vocab = ["<unk>"] + sorted(set(values.unique().to_list()) - {"unknown"})
            self.vocab[column] = vocab
            codes.append(values.replace_strict({v: i for i, v in enumerate(vocab)}, default=0,
                                               return_dtype=pl.Int32).to_numpy())
        self.user_demographics = (np.stack(codes, axis=1) if codes else np.zeros((uf.height, 0), np.int32))

        # Item side features, aligned to self.item_ids (items without features keep zeros).
        itf = item_features.sort("item_id")
        self.genre_vocab = list(schema.GENRES)
        rows = np.searchsorted(self.item_ids, itf["item_id"].to_numpy())
        pairs = itf.select("item_id", "genres").explode("genres").drop_nulls()
        pairs = pairs.filter(pl.col("genres").is_in(self.genre_vocab))
        genres = np.zeros((len(self.item_ids), len(self.genre_vocab)), dtype=np.float32)
        genres[np.searchsorted(self.item_ids, pairs["item_id"].to_numpy()),
               pairs["genres"].replace_strict({g: i for i, g in enumerate(self.genre_vocab)},
                                              return_dtype=pl.Int64).to_numpy()] = 1.0
        self.item_genres = genres
        self.item_year = np.zeros(len(self.item_ids), dtype=np.int32)
        self.item_year[rows] = itf["release_year"].fill_null(0).to_numpy().astype(np.int32)

    # -- serving -------------------------------------------------------------------------------------------

    def recommend(
        self, user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True, history: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Top-``n`` items per user as (user_id, item_id, rank, score), scored in blocks of users."""
        return recommend_together({self.name: self}, user_ids, n, exclude_seen, history)[self.name]

    def block_scores(self, users: UserBlock) -> np.ndarray:
        """:meth:`score_block`, computed once per block where several models share it (a hybrid and its
        components in evaluation); a shared array must not be modified."""
        if users.shared is None:
            return np.asarray(self.score_block(users), dtype=np.float32)
        key = id(self)
        if key not in users.shared:
            users.shared[key] = np.asarray(self.score_block(users), dtype=np.float32)
        return users.shared[key]

    @property
    def block_users(self) -> int:
        """Users scored per block (a block's scores are ``block_users x items`` floats). A user's scores are
        bit-for-bit the same whenever the blocks are the same: callers that split users among processes cut
        at multiples of this (BLAS may round a row differently inside a block of another shape)."""
        return max(1, SCORE_BLOCK_CELLS // max(1, len(self.item_ids)))

    def same_encoding(self, other: Recommender) -> bool:
        """Fitted on the same interactions with the same catalogue: a user block of one serves the other."""
        return (self.meta.get("data_fingerprint") == other.meta.get("data_fingerprint")
                and np.array_equal(self.item_ids, other.item_ids) and np.array_equal(self.user_ids, other.user_ids)
                and np.array_equal(self.feature_user_ids, other.feature_user_ids))

    def recommend_for_profiles(self, profiles: pl.DataFrame, n: int = schema.DEFAULT_K) -> pl.DataFrame:
        """Top-``n`` for people who are not in the users table yet, from demographics alone.

        ``profiles`` has any of the demographic columns; a missing or unknown value means "unknown". The
        result's user_id is the profile's row number.
        """
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() or load() before recommend_for_profiles()")
        codes = []
        for column in DEMOGRAPHIC_COLUMNS:
            vocab = {v: i for i, v in enumerate(self.vocab[column])}
            values = (profiles[column].fill_null("unknown").cast(pl.String) if column in profiles.columns
                      else pl.Series([None] * profiles.height, dtype=pl.String).fill_null("unknown"))
            codes.append(values.replace_strict(vocab, default=0, return_dtype=pl.Int32).to_numpy())
        rows = np.arange(profiles.height, dtype=np.int64)
        block = UserBlock(rows, np.full(len(rows), -1), sp.csr_matrix((len(rows), len(self.item_ids)), dtype=np.float32),
                          np.stack(codes, axis=1).astype(np.int32))
        scores = np.asarray(self.score_block(block), dtype=np.float32)
        return _top_n(rows, scores, min(n, len(self.item_ids)), self.item_ids, self.tiebreak)

    def score_users(self, user_ids, history: pl.DataFrame | None = None) -> np.ndarray:
        """Raw scores (len(user_ids), n_items) aligned with ``self.item_ids``; for small user sets."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        block = self._user_block(user_ids, self._history_matrix(user_ids, history))
        return np.asarray(self.score_block(block), dtype=np.float32)

    def _history_matrix(self, user_ids: np.ndarray, history: pl.DataFrame | None) -> sp.csr_matrix:
        """Known interactions passed in at serving time, as a (len(user_ids), n_items) matrix."""
        shape = (len(user_ids), len(self.item_ids))
        if history is None or history.height == 0:
            return sp.csr_matrix(shape, dtype=np.float32)
        order = np.argsort(user_ids, kind="stable")
        h_users = history["user_id"].to_numpy()
        h_items = history["item_id"].to_numpy()
        pos = np.searchsorted(user_ids[order], h_users)
        pos = np.clip(pos, 0, len(user_ids) - 1)
        col = np.searchsorted(self.item_ids, h_items)
        col = np.clip(col, 0, len(self.item_ids) - 1)
        keep = (user_ids[order][pos] == h_users) & (self.item_ids[col] == h_items)  # unknown items ignored
        m = sp.csr_matrix((np.ones(keep.sum(), np.float32), (order[pos[keep]], col[keep])), shape=shape)
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def _user_block(self, user_ids: np.ndarray, extra: sp.csr_matrix) -> UserBlock:
        idx = np.searchsorted(self.user_ids, user_ids)
        idx = np.clip(idx, 0, max(len(self.user_ids) - 1, 0))
        known = (len(self.user_ids) > 0) & (self.user_ids[idx] == user_ids)
        train_rows = np.where(known, idx, -1)
        history = self.train[np.where(known, idx, 0)]
        history = sp.diags(known.astype(np.float32)) @ history + extra
        history = history.tocsr()
        history.data[:] = 1.0
        return UserBlock(user_ids, train_rows, history, self.demographics_of(user_ids))

    def demographics_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Demographic vocabulary codes of these users; 0 (unknown) for users without features."""
        fidx = np.clip(np.searchsorted(self.feature_user_ids, user_ids), 0, max(len(self.feature_user_ids) - 1, 0))
        has_features = (len(self.feature_user_ids) > 0) & (self.feature_user_ids[fidx] == user_ids)
        return np.where(has_features[:, None], self.user_demographics[fidx], 0).astype(np.int32)

    @abstractmethod
    def score_block(self, users: UserBlock) -> np.ndarray:
        """Scores (len(users), n_items); higher is better. Seen items are masked by the caller."""

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "params.json").write_text(json.dumps({"model": self.name, "params": self.params,
                                                      "seed": self.seed}, indent=2, default=str))
        (path / "metadata.json").write_text(json.dumps(self.meta, indent=2, default=str))
        sp.save_npz(path / "train.npz", self.train)
        np.savez(path / "encoding.npz", item_ids=self.item_ids, user_ids=self.user_ids,
                 feature_user_ids=self.feature_user_ids, user_demographics=self.user_demographics,
                 item_genres=self.item_genres, item_year=self.item_year, item_popularity=self.item_popularity,
                 tiebreak=self.tiebreak)
        (path / "vocab.json").write_text(json.dumps({"demographics": self.vocab, "genres": self.genre_vocab}))
        self._save_state(path)
        self.saved_path = path
        return path

    @classmethod
    def load(cls, path: Path, loader: Callable[[Path], Recommender] | None = None) -> Self:
        """Read a saved model. ``loader`` loads nested models of any kind (the hybrid's components)."""
        path = Path(path)
        saved = json.loads((path / "params.json").read_text())
        model = cls(**saved["params"])
        model._loader = loader
        model.seed = saved["seed"]
        model.meta = json.loads((path / "metadata.json").read_text())
        model.train = sp.load_npz(path / "train.npz").tocsr()
        with np.load(path / "encoding.npz") as arrays:
            for key in arrays.files:
                setattr(model, key, arrays[key])
        vocab = json.loads((path / "vocab.json").read_text())
        model.vocab, model.genre_vocab = vocab["demographics"], vocab["genres"]
        model._load_state(path)
        model.fitted = True
        model.saved_path = path
        return model

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write what ``_fit`` learned (arrays, weights)."""

    @abstractmethod
    def _load_state(self, path: Path) -> None:
        """Read what ``_save_state`` wrote."""


RECOMMENDATION_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int32, "score": pl.Float32}


def item_cooccurrence(train: sp.csr_matrix, rows_per_block: int,
                      on_rows: Callable[[int, np.ndarray], None]) -> None:
    """X^T X (item x item co-occurrence counts, float32) a block of item rows at a time: ``on_rows(lo, rows)``
    gets rows lo..lo+len(rows), densified.

    Never the whole product as one sparse matrix (12 bytes per non-zero: about 8 GB at 20 M interactions and
    27k items, measured +4.8 GiB against +2.9 GiB for the dense result alone). Blocks run on the scoring
    threads, so ``on_rows`` must only touch what belongs to its own rows.
    """
    x = sp.csr_matrix(train, dtype=np.float32)
    by_item = x.T.tocsr()  # items x users
    step = max(1, int(rows_per_block))
    list(scoring_pool().map(lambda lo: on_rows(lo, (by_item[lo:lo + step] @ x).toarray()),
                            range(0, x.shape[1], step)))


def recommend_together(
    models: Mapping[str, Recommender], user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True,
    history: pl.DataFrame | None = None,
) -> dict[str, pl.DataFrame]:
    """Top-``n`` of several models for the same users, in one blockwise pass.

    Models fitted on the same interactions share each block of users, so a model scored by several
    (a hybrid's components, scored alone and inside the hybrid) is scored once per block. Models on
    another encoding get their own pass.
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
    user_ids = np.asarray(user_ids, dtype=np.int64)
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name in models}
    for group in groups:
        lead = models[group[0]]
        top = min(n, len(lead.item_ids))
        extra = lead._history_matrix(user_ids, history)
        block = lead.block_users
        for lo in range(0, len(user_ids), block):
            ub = lead._user_block(user_ids[lo:lo + block], extra[lo:lo + block])
            if len(group) > 1:
                ub.shared = {}
            progress.detail(f"{lo:,} of {len(user_ids):,} users scored")
            seen = ub.history.tocoo() if exclude_seen else None
            for name in group:
                scores = models[name].block_scores(ub)
                if seen is not None and seen.nnz:
                    if ub.shared is not None:
                        scores = scores.copy()  # the other models of the block read it too
                    scores[seen.row, seen.col] = -np.inf
                frames[name].append(_top_n(ub.user_ids, scores, top, lead.item_ids, lead.tiebreak))
    return {name: pl.concat(parts) if parts else pl.DataFrame(schema=RECOMMENDATION_SCHEMA)
            for name, parts in frames.items()}


def _top_n(user_ids: np.ndarray, scores: np.ndarray, n: int, item_ids: np.ndarray,
           tiebreak: np.ndarray) -> pl.DataFrame:
    """The n best items per row, ordered exactly by (score desc, tiebreak asc).

    ``np.partition`` finds each row's n-th best score; every item better than it is a candidate, and of the
    items tied with it the n with the best tie-break rank (a row with no signal, e.g. CF for a user without
    history, ties everywhere: its candidates stay n, not the catalogue). One ``lexsort`` over the block's
    candidates orders them by row, score and tie-break rank. Halves of a large block run on the scoring
    threads (numpy releases the GIL). Memory stays within the block.
    """
    b = scores.shape[0]
    if b == 0:
        return pl.DataFrame(schema=RECOMMENDATION_SCHEMA)
    if b < 64:
        return _top_n_rows(user_ids, scores, n, item_ids, tiebreak)
    half = b // 2
    parts = scoring_pool().map(lambda rows: _top_n_rows(user_ids[rows], scores[rows], n, item_ids, tiebreak),
                               [slice(0, half), slice(half, b)])
    return pl.concat(list(parts))


def _top_n_rows(user_ids: np.ndarray, scores: np.ndarray, n: int, item_ids: np.ndarray,
                tiebreak: np.ndarray) -> pl.DataFrame:
    b, n_items = scores.shape
    kth = np.partition(scores, n_items - n, axis=1)[:, n_items - n]  # each row's n-th best score
    candidate = scores >= kth[:, None]
    crowded = np.flatnonzero(np.count_nonzero(candidate, axis=1) > 2 * n)  # many items tied with the n-th
    if len(crowded):
        sub, bound = scores[crowded], kth[crowded, None]
        tied = sub == bound
        best_tied = np.argpartition(np.where(tied, tiebreak[None, :], np.iinfo(np.int64).max), n - 1, axis=1)[:, :n]
        keep = sub > bound
        at = np.arange(len(crowded))[:, None]
        keep[at, best_tied] |= tied[at, best_tied]
        candidate[crowded] = keep
    rows, cols = np.nonzero(candidate)
    values = scores[rows, cols]
    order = np.lexsort((tiebreak[cols], -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(b))
    rank = np.arange(len(rows)) - starts[rows]
    keep = (rank < n) & np.isfinite(values)  # a user who has seen almost everything gets a shorter list
    return pl.DataFrame({
        "user_id": user_ids[rows[keep]],
        "item_id": item_ids[cols[keep]],
        "rank": (rank[keep] + 1).astype(np.int32),
        "score": values[keep].astype(np.float32),
    }, schema=RECOMMENDATION_SCHEMA)


def data_fingerprint(interactions: pl.DataFrame) -> str:
    """A content hash of the training interactions (order-independent)."""
    h = interactions.select(pl.struct("user_id", "item_id").hash(seed=0).sum()).item()
    return f"{interactions.height}-{h:x}"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "scipy", "polars", "keras", "tensorflow-cpu", "tensorflow"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
