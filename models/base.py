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

from models.text import BUCKETS, title_token_matrix
from models.tiled import scoring_pool
from recsys import progress, schema

# Memory bound of one scoring block: users x items float32 scores.
SCORE_BLOCK_CELLS = 16_000_000
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


class Recommender(ABC):
    name: ClassVar[str]
    # What the model is, in one line for people (the report's headline names the published model with it).
    description: ClassVar[str] = ""
    # Scores an item from its content, so an item with no interactions gets a real score (not a CF zero).
    scores_new_items: ClassVar[bool] = False

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

    # What a model built inside another (part_of) reads of the parent's encoding.
    PART_ENCODING: ClassVar[tuple[str, ...]] = ("item_ids", "item_genres", "item_year", "item_tokens", "item_text",
                                                "train")

    @classmethod
    def part_of(cls, parent: Recommender, **params: Any) -> Self:
        """A model of this kind sharing ``parent``'s encoding (the same arrays, not copies), to be fitted or
        loaded as a part of ``parent`` (a baseline or a feature built from another model's scores)."""
        part = cls(**params)
        for key in cls.PART_ENCODING:
            setattr(part, key, getattr(parent, key))
        return part

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
        titles: list[str | None] = [None] * len(self.item_ids)
        if "title" in itf.columns:
            for row, title in zip(rows, itf["title"].to_list(), strict=True):
                titles[row] = title
        self.item_tokens = title_token_matrix(titles)  # (items, text.BUCKETS) hashed title words
        # (items, d) the pretrained encoder's unit vectors of each item's text (d = 0 when it is off; zero rows
        # for items without text), rounded to float16 once here so a saved model scores exactly as fitted.
        self.item_text = np.zeros((len(self.item_ids), 0), dtype=np.float32)
        if "text_vector" in itf.columns:
            known = itf.filter(pl.col("text_vector").is_not_null())
            if known.height:
                vectors = known["text_vector"].to_numpy().astype(np.float16).astype(np.float32)
                self.item_text = np.zeros((len(self.item_ids), vectors.shape[1]), dtype=np.float32)
                self.item_text[np.searchsorted(self.item_ids, known["item_id"].to_numpy())] = vectors

    # -- serving -------------------------------------------------------------------------------------------

    def recommend(
        self, user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True, history: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Top-``n`` items per user as (user_id, item_id, rank, score), scored in blocks of users."""
        return recommend_together({self.name: self}, user_ids, n, exclude_seen, history)[self.name]

    def serve(self, user_ids, n: int, explain: bool = True, items: np.ndarray | None = None,
              users_per_item: int = 0) -> Served:
        """Top-``n`` per user with the reason for each row, and for ``items`` the best ``users_per_item``
        users of ``user_ids``, all in one blockwise pass (see :func:`serve_together`)."""
        return serve_together({self.name: self}, user_ids, n, explain=explain, items=items,
                              users_per_item=users_per_item)[self.name]

    def audience_scores(self, users: UserBlock, columns: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Scores of the catalogue ``columns`` for the block's users, comparable across users: what ranks the
        users to show those items to. ``scores``: the block's scores of them, seen items at -inf. Default:
        those scores; a model whose scores are on a per-user scale puts them on a common one."""
        return scores

    # -- explaining ----------------------------------------------------------------------------------------

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """Why each recommended (block row, catalogue column) pair was scored high, as :meth:`reasons`.
        Called on the block just scored (its ``shared`` scores are still there). Default: popularity."""
        return self.reasons(rows, np.full(len(rows), "popular", dtype=object))

    def reasons(self, rows: np.ndarray, kinds: np.ndarray, items: np.ndarray | None = None,
                segments: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Reasons aligned with ``rows``: a kind (``neighbour`` or ``content``: a known item it resembles by
        interactions or by content; ``segment``: the user's demographic segment; ``popular``), the catalogue
        column of the item it names (-1 for none) and the segment it names (None for none)."""
        n = len(rows)
        return {"kind": np.asarray(kinds, dtype=object),
                "item": np.full(n, -1, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64),
                "segment": np.full(n, None, dtype=object) if segments is None else np.asarray(segments, dtype=object)}

    def neighbour_reasons(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray,
                          affinity: Callable[[np.ndarray, np.ndarray], np.ndarray], kind: str = "neighbour",
                          segment: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """``kind`` naming the known item with the highest ``affinity(known, recommended)``; for a user
        without history, the user's ``segment`` (:meth:`segment_reasons`) or else ``popular``."""
        item = best_history_item(users.history, rows, cols, affinity)
        why = self.reasons(rows, np.where(item >= 0, kind, "popular"), item)
        cold = np.flatnonzero(item < 0)
        if segment and len(cold):
            replace(why, cold, self.segment_reasons(users, rows[cold], segment))
        return why

    def content_vectors(self) -> np.ndarray:
        """(items, genres + decades + text) unit rows of what is known of an item before anyone rates it (the
        text part: the pretrained encoder's vector, where it is on)."""
        decades = np.eye(N_DECADES, dtype=np.float32)[decade_of(self.item_year)][:, 1:]  # decade 0: unknown
        vectors = np.concatenate([self.item_genres, 0.5 * decades, self.item_text], axis=1).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def explain_new_items(self, user_ids: np.ndarray, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Reasons for showing new items to users (the published ``new_items``), without scoring anyone
        again: "similar to <the user's known item closest in genres and decade>", or for a user without
        history "popular with <gender, age>"."""
        user_ids, item_ids = np.asarray(user_ids, dtype=np.int64), np.asarray(item_ids, dtype=np.int64)
        vectors = self.content_vectors()

        def closeness(known: np.ndarray, target: np.ndarray) -> np.ndarray:
            return np.einsum("ij,ij->i", vectors[known], vectors[target])

        users = np.unique(user_ids)
        block = self._user_block(users, sp.csr_matrix((len(users), len(self.item_ids)), dtype=np.float32))
        return self.neighbour_reasons(block, np.searchsorted(users, user_ids), np.searchsorted(self.item_ids, item_ids),
                                      closeness, kind="content", segment=("gender", "age_bucket"))

    def segment_reasons(self, users: UserBlock, rows: np.ndarray, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """``segment`` naming the user's cell of ``columns`` (e.g. gender=F, age_bucket=25-34); ``popular``
        where one of them is unknown."""
        codes = users.demographics[rows][:, [DEMOGRAPHIC_COLUMNS.index(c) for c in columns]]
        known = np.all(codes > 0, axis=1)
        labels = np.full(len(rows), None, dtype=object)
        if known.any():  # one label per distinct segment, not per row
            cells, which = np.unique(codes[known], axis=0, return_inverse=True)
            names = [", ".join(f"{c}={self.vocab[c][code]}" for c, code in zip(columns, cell, strict=True))
                     for cell in cells]
            labels[known] = np.asarray(names, dtype=object)[which.ravel()]
        return self.reasons(rows, np.where(known, "segment", "popular"), segments=labels)

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
                 tiebreak=self.tiebreak, item_tokens_indptr=self.item_tokens.indptr,
                 item_tokens_indices=self.item_tokens.indices, item_text=self.item_text.astype(np.float16))
        (path / "vocab.json").write_text(json.dumps({"demographics": self.vocab, "genres": self.genre_vocab}))
        self._save_state(path)
        self.saved_path = path
        return path

    @classmethod
    def load(cls, path: Path, loader: Callable[[Path], Recommender] | None = None, state: bool = True) -> Self:
        """Read a saved model. ``loader`` loads nested models of any kind (the hybrid's components).
        ``state=False`` reads only the encoding (catalogue, histories, features): enough to explain, not to
        score."""
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
        model.item_tokens = tokens_from(model.__dict__.pop("item_tokens_indptr", None),
                                        model.__dict__.pop("item_tokens_indices", None), len(model.item_ids))
        model.item_text = np.asarray(model.__dict__.get("item_text", np.zeros((len(model.item_ids), 0))),
                                     dtype=np.float32)
        vocab = json.loads((path / "vocab.json").read_text())
        model.vocab, model.genre_vocab = vocab["demographics"], vocab["genres"]
        if not state:
            return model
        try:
            model._load_state(path)
        finally:
            # The loader is for loading only: kept, it would tie the model into a reference cycle with the
            # loader's cache (``load_many``), freed only by the cyclic GC, so a slice's 2.9 GB EASE would
            # outlive its task.
            model._loader = None
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
REASON_SCHEMA = {"reason_kind": pl.String, "reason_item_id": pl.Int64, "reason_segment": pl.String}
BY_ITEM_SCHEMA = {"item_id": pl.Int64, "user_id": pl.Int64, "rank": pl.Int32, "score": pl.Float32}


def replace(why: dict[str, np.ndarray], where: np.ndarray, other: dict[str, np.ndarray]) -> None:
    """Put the reasons ``other`` (aligned with ``where``) into ``why`` at ``where``."""
    for key in why:
        why[key][where] = other[key]


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


def best_history_item(history: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
                      affinity: Callable[[np.ndarray, np.ndarray], np.ndarray], chunk: int = 1 << 21) -> np.ndarray:
    """For each (row, col) pair, the known item of that row's history with the highest ``affinity(known,
    col)`` (ties: the lower catalogue column); -1 for a row without history. Vectorised over every (pair,
    known item), about ``chunk`` of them at a time: memory stays bounded however many pairs a block has (a
    1 M-interaction night's one block of 6.9k users x 50 items expands to 50 M)."""
    history = history.tocsr()
    if not history.has_sorted_indices:
        history = history.sorted_indices()
    lengths = np.diff(history.indptr)[rows]
    best = np.full(len(rows), -1, dtype=np.int64)
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(rows):
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + chunk, side="right")))
        best[lo:hi] = _best_known(history, rows[lo:hi], cols[lo:hi], lengths[lo:hi], affinity)
        lo = hi
    return best


def _best_known(history: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, lengths: np.ndarray,
                affinity: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    best = np.full(len(rows), -1, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return best
    pair = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    known = history.indices[np.repeat(history.indptr[rows], lengths) + offsets].astype(np.int64)
    values = np.asarray(affinity(known, cols[pair]), dtype=np.float64)
    values[np.isnan(values)] = -np.inf  # an undefined affinity never wins (and never breaks the maximum)
    # Each pair's known items are one contiguous run in ascending column order: the run's maximum, then its
    # first position holding it.
    has = np.flatnonzero(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)])[has]
    top = np.maximum.reduceat(values, starts)
    position = np.where(values == np.repeat(top, lengths[has]), np.arange(total), total)
    best[has] = known[np.minimum.reduceat(position, starts)]
    return best


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
    """Top-``n`` of several models for the same users, in one blockwise pass (:func:`serve_together`)."""
    return {name: served.top for name, served in serve_together(models, user_ids, n, exclude_seen, history).items()}


def serve_together(
    models: Mapping[str, Recommender], user_ids, n: int = schema.DEFAULT_K, exclude_seen: bool = True,
    history: pl.DataFrame | None = None, explain: bool = False, items: np.ndarray | None = None,
    users_per_item: int = 0,
) -> dict[str, Served]:
    """Top-``n`` of several models for the same users, in one blockwise pass.

    Models fitted on the same interactions share each block of users, so a model scored by several
    (a hybrid's components, scored alone and inside the hybrid) is scored once per block. Models on
    another encoding get their own pass. ``explain`` adds each row's reason (``REASON_SCHEMA``), taken
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
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if items is not None:
        user_ids = np.sort(user_ids)  # block rows in user id order: ties among users break by id
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name in models}
    by_item: dict[str, list[pl.DataFrame]] = {name: [] for name in models}
    for group in groups:
        lead = models[group[0]]
        top = min(n, len(lead.item_ids))
        extra = lead._history_matrix(user_ids, history)
        columns = _columns_of(lead.item_ids, items)
        block = lead.block_users
        for lo in range(0, len(user_ids), block):
            ub = lead._user_block(user_ids[lo:lo + block], extra[lo:lo + block])
            if len(group) > 1 or explain or (len(columns) and users_per_item > 0):
                ub.shared = {}  # scores computed once per block, whoever reads them (audiences, reasons)
            progress.detail(f"{lo:,} of {len(user_ids):,} users scored")
            seen = ub.history.tocoo() if exclude_seen else None
            for name in group:
                scores = models[name].block_scores(ub)
                if seen is not None and seen.nnz:
                    if ub.shared is not None:
                        scores = scores.copy()  # the other models of the block read it too
                    scores[seen.row, seen.col] = -np.inf
                frame = _top_n(ub.user_ids, scores, top, lead.item_ids, lead.tiebreak)
                if explain:
                    frame = _with_reasons(models[name], ub, frame)
                frames[name].append(frame)
                if len(columns) and users_per_item > 0:
                    audience = models[name].audience_scores(ub, columns, scores[:, columns])
                    by_item[name].append(_best_users(ub.user_ids, audience, lead.item_ids[columns], users_per_item))
    empty = pl.DataFrame(schema={**RECOMMENDATION_SCHEMA, **(REASON_SCHEMA if explain else {})})
    return {name: Served(pl.concat(frames[name]) if frames[name] else empty,
                         _merge_best_users(by_item[name], users_per_item)) for name in models}


def _columns_of(item_ids: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """Catalogue columns of the ``items`` ids that are in the catalogue."""
    if items is None or len(items) == 0:
        return np.array([], dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    pos = np.clip(np.searchsorted(item_ids, items), 0, len(item_ids) - 1)
    return np.unique(pos[item_ids[pos] == items])


def _with_reasons(model: Recommender, users: UserBlock, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (one block's top-n) with each row's reason from ``model.explain``."""
    order = np.argsort(users.user_ids, kind="stable")
    uid = frame["user_id"].to_numpy()
    rows = order[np.searchsorted(users.user_ids[order], uid)]
    cols = np.searchsorted(model.item_ids, frame["item_id"].to_numpy())
    return frame.with_columns(reason_columns(model, model.explain(users, rows, cols)))


def reason_columns(model: Recommender, why: dict[str, np.ndarray]) -> list[pl.Series]:
    """:meth:`Recommender.reasons` as the columns of ``REASON_SCHEMA`` (the named item as its id)."""
    item = why["item"]
    named = pl.Series("reason_item_id", model.item_ids[np.maximum(item, 0)] if len(item) else [], dtype=pl.Int64)
    if (item < 0).any():
        named = named.scatter(np.flatnonzero(item < 0), None)
    return [pl.Series("reason_kind", why["kind"].astype(str), dtype=pl.String), named,
            pl.Series("reason_segment", list(why["segment"]), dtype=pl.String)]


def _best_users(user_ids: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, m: int) -> pl.DataFrame:
    """Per column of ``scores`` (one per item), its best ``m`` rows by (score desc, row asc), finite only."""
    m = min(m, scores.shape[0])
    order = np.argsort(-scores, axis=0, kind="stable")[:m]  # (m, items); rows are in user id order
    values = np.take_along_axis(scores, order, axis=0)
    keep = np.isfinite(values)
    return pl.DataFrame({"item_id": np.broadcast_to(item_ids[None, :], order.shape)[keep],
                         "user_id": user_ids[order[keep]], "score": values[keep].astype(np.float32)})


def _merge_best_users(parts: list[pl.DataFrame], m: int) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=BY_ITEM_SCHEMA)
    return merge_best_users(pl.concat(parts), m)


def merge_best_users(candidates: pl.DataFrame, m: int) -> pl.DataFrame:
    """Each item's best ``m`` users among candidates from several blocks, ranked by (score desc, user id asc)."""
    return (candidates.sort(["item_id", "score", "user_id"], descending=[False, True, False])
            .with_columns(rank=(pl.int_range(pl.len()).over("item_id") + 1).cast(pl.Int32))
            .filter(pl.col("rank") <= m).select(*BY_ITEM_SCHEMA))


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


def tokens_from(indptr: np.ndarray | None, indices: np.ndarray | None, n_items: int) -> sp.csr_matrix:
    """The saved title-token matrix (none saved: no titles)."""
    if indptr is None or indices is None:
        return sp.csr_matrix((n_items, BUCKETS), dtype=np.float32)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n_items, BUCKETS))


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
