"""One contract for every recommender: ``fit / recommend / save / load``.

The base class owns what models share: id <-> index maps, encoded side features, the users' known items
and the save/load envelope (``params.json`` + ``metadata.json`` + arrays). A model only implements how to
score a block of users (:meth:`Recommender.score_block`) and what state it learns. Serving blocks of users
with bounded memory and deterministic top-N is in ``models/serving.py``; the reasons for a row in
``models/explain.py``.

Users are served three ways, and ``recommend`` tells them apart:
- **warm**: in the training interactions (their training items are their history);
- **k-shot**: unseen in training, with a few known interactions passed as ``history``;
- **zero-shot**: no interactions at all; only their demographics (if in ``user_features``) are known.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from models.explain import Explaining
from models.ranking import Stage, tile_width
from models.serving import (
    COLUMN_BLOCK_MAX_USERS,
    DEMOGRAPHIC_COLUMNS,
    SCORE_BLOCK_CELLS,
    OwnList,
    Served,
    UserBlock,
    recommend_together,
    serve_together,
    top_n,
)
from models.text import BUCKETS, title_token_matrix
from recsys import schema
from recsys.schema import ITEM_ID, USER_ID


class Recommender(Explaining, ABC):
    name: ClassVar[str]
    # What the model is, in one line for people (the report's headline names the published model with it).
    description: ClassVar[str] = ""
    # Whether the model's first stage holds its own list, ranked as the full ranking ranks it (``Stage.best``):
    # at a wide catalogue it is served from the stage (:meth:`own_list`), never as a users x items block.
    lists_from_stage: ClassVar[bool] = False
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

    # What encoding the training data sets (:meth:`_encode`): the same for every model fitted on the same data.
    ENCODING: ClassVar[tuple[str, ...]] = (
        "user_ids", "item_ids", "train", "item_popularity", "tiebreak", "feature_user_ids", "vocab",
        "user_demographics", "genre_vocab", "item_genres", "item_year", "item_tokens", "item_text")

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

    def fit(self, interactions: pl.DataFrame | pl.LazyFrame, user_features: pl.DataFrame,
            item_features: pl.DataFrame, seed: int) -> Self:
        """Learn from ``interactions``: a frame, or a lazy scan of one (the night's fits read their fold's file
        so), of which the encoding collects only the columns it reads (the pairs; the two-tower also their
        times) and holds none of it while the model learns: at 100 M interactions the whole frame was 3.2 GB
        alive under every fit."""
        started = time.perf_counter()
        self.seed = int(seed)
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

    def items_left_out(self) -> int:
        """Items with interactions this fit does not score (e.g. EASE beyond its memory cap); 0 for most."""
        return 0

    # What a model takes from the night's settings: its parameter -> the settings field (RECSYS_<FIELD>).
    SETTINGS: ClassVar[dict[str, str]] = {}

    # -- composing fitted models (the hybrid; every other model composes nothing) ---------------------------

    @classmethod
    def needed_components(cls, params: dict | None = None) -> list[str]:
        """The fitted models this one composes: fitted before it and handed to :meth:`compose`."""
        return []

    def compose(self, components: Mapping[str, Recommender], weights: dict | None = None,
                validation: list | None = None) -> Self:
        """Take the fitted ``components`` and either ``weights`` tuned on another fold (as
        :meth:`tuned_file` holds them) or ``validation`` cases to tune on when fitted."""
        return self

    @classmethod
    def tuned_file(cls, path: Path) -> Path | None:
        """The file of what a saved fit tuned on validation users, which a fit on another fold can take as its
        ``weights`` (None: it tunes nothing)."""
        return None

    @classmethod
    def saved_tuning(cls, path: Path) -> dict | None:
        """What a saved fit learned on validation data, for the report, without loading it (None: nothing)."""
        return None

    # Whether a fit can continue an earlier fold's fit of the same model (warm_start): the two-tower, ALS.
    continues_fits: ClassVar[bool] = False

    @classmethod
    def can_warm_start(cls) -> bool:
        return cls.continues_fits

    def warm_start(self, previous: Recommender) -> None:
        """Let the next fit start from ``previous`` (a fit of the same model on an earlier fold), where that
        is sound: a model that ``continues_fits`` takes it in its fit (:meth:`_earlier_fit`); others ignore it."""
        if self.continues_fits:
            self._previous = previous

    def _earlier_fit(self) -> Recommender | None:
        """The fit :meth:`warm_start` named, handed over once: the new fit does not keep it alive."""
        return self.__dict__.pop("_previous", None)

    @abstractmethod
    def _fit(self, seed: int) -> None:
        """Learn from ``self.train`` (users x items CSR) and the encoded side features."""

    def _encode(self, interactions: pl.DataFrame | pl.LazyFrame, user_features: pl.DataFrame,
                item_features: pl.DataFrame) -> None:
        interactions = interactions.lazy().select(USER_ID, ITEM_ID).collect()
        self._fingerprint = data_fingerprint(interactions)
        key = (self._fingerprint, frame_fingerprint(user_features), frame_fingerprint(item_features))
        if LAST_ENCODING.restore(key, self):
            return
        self._encode_afresh(interactions, user_features, item_features)
        LAST_ENCODING.keep(key, {name: getattr(self, name) for name in self.ENCODING})

    def _encode_afresh(self, interactions: pl.DataFrame, user_features: pl.DataFrame,
                       item_features: pl.DataFrame) -> None:
        # The catalogue: every item with features, plus any item seen in training.
        items = interactions[ITEM_ID].to_numpy()
        self.item_ids = np.unique(np.concatenate([item_features[ITEM_ID].to_numpy(), distinct_ids(items)])).astype(
            np.int64)
        users = interactions[USER_ID].to_numpy()
        self.user_ids = distinct_ids(users)
        rows, cols = positions_of(self.user_ids, users), positions_of(self.item_ids, items)
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
        uf = user_features.sort(USER_ID)
        self.feature_user_ids = uf[USER_ID].to_numpy().astype(np.int64)
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
        itf = item_features.sort(ITEM_ID)
        self.genre_vocab = list(schema.GENRES)
        rows = np.searchsorted(self.item_ids, itf[ITEM_ID].to_numpy())
        pairs = itf.select(ITEM_ID, "genres").explode("genres").drop_nulls()
        pairs = pairs.filter(pl.col("genres").is_in(self.genre_vocab))
        genres = np.zeros((len(self.item_ids), len(self.genre_vocab)), dtype=np.float32)
        genres[np.searchsorted(self.item_ids, pairs[ITEM_ID].to_numpy()),
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
                self.item_text[np.searchsorted(self.item_ids, known[ITEM_ID].to_numpy())] = vectors

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

    def column_z_scores(self, users: UserBlock, columns: np.ndarray) -> np.ndarray:
        """The block's scores of the catalogue ``columns`` as z-scores over each user's unseen items (what a
        blend adds, :func:`models.ranking.served_z_scores`; 0 where a score is not finite): its first stage's,
        with no candidates asked for. By default that is the whole catalogue scored and standardised; a model
        whose first stage knows its rows' mean and deviation without scoring every item (the factor models)
        scores the columns alone."""
        return self.first_stage(users, 0).z_at(columns)

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """The first stage of two-stage serving (:class:`models.ranking.Stage`): each user's best ``depth`` unseen
        items by this model and its z-scores of any columns. Default: from the block's whole scores, exact; a
        model that finds its best items and its rows' moments without a dense block of z-scores overrides it
        (and defers here where the block's whole scores are already shared, :meth:`_block_is_scored`)."""
        return Stage.of_scores(self.block_scores(users), users.history, depth, self.tiebreak)

    def _block_is_scored(self, users: UserBlock) -> bool:
        """Whether the block's whole scores are already computed and shared (another reader scored it)."""
        return users.shared is not None and id(self) in users.shared

    def candidate_scores(self, users: UserBlock, keep: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Two-stage serving of the block's top ``n`` unseen items: the catalogue columns this model scores for
        the block (sorted, ``keep`` among them) and its scores of them, or None: it ranks the whole catalogue
        (:meth:`block_scores`). Default: None; the hybrid serves a wide catalogue in two stages (a factor model
        and the content neighbourhood serve their own lists from their first stage, :meth:`own_list`)."""
        return None

    def own_list(self, users: UserBlock, keep: np.ndarray, n: int) -> OwnList | None:
        """The block's top ``n`` unseen items already ranked, without a (users, items) array, or None: the
        model is served from its :meth:`candidate_scores` or whole block. For a model whose first stage holds
        its own list (:attr:`lists_from_stage`) at a catalogue wide enough to be tiled
        (:func:`models.ranking.tile_width`): each user's best ``n`` unseen items in the full ranking's order with
        the scores the stage found them by, and the scores of the ``keep`` columns (seen items at -inf). None
        where the block's whole scores are already computed (another reader scored it)."""
        if (not self.lists_from_stage or n <= 0 or self._block_is_scored(users)
                or tile_width(len(users.user_ids), len(self.item_ids)) is None):
            return None
        stage = self.stage_of(users, n)
        if stage.best is None:  # found from the block's whole scores after all
            return None
        keep = np.asarray(keep, dtype=np.int64)
        asked = stage.scores_at(keep)
        seen = users.history.tocsr()[:, keep].tocoo()
        asked[seen.row, seen.col] = -np.inf
        return OwnList(stage.top, stage.best, asked)

    def by_tiebreak(self) -> np.ndarray:
        """The catalogue's columns in tie-break order (how items that score alike are ranked), kept for the
        fitted encoding."""
        kept = self.__dict__.get("_by_tiebreak")
        if kept is None or kept[0] is not self.tiebreak:
            kept = self._by_tiebreak = (self.tiebreak, np.argsort(self.tiebreak, kind="stable"))
        return kept[1]

    def stage_of(self, users: UserBlock, depth: int) -> Stage:
        """:meth:`first_stage`, found once per shared block: a model served beside a hybrid that blends it
        (evaluation) lists its own best items from the stage the hybrid reads (the deeper of the two asks)."""
        if users.shared is None:
            return self.first_stage(users, depth)
        key = ("stage", id(self))
        kept = users.shared.get(key)
        if kept is None or kept.top.shape[1] < depth:
            kept = users.shared[key] = self.first_stage(users, depth)
        return kept.shallower(depth)

    def block_scores(self, users: UserBlock) -> np.ndarray:
        """:meth:`score_block`, computed once per block where several models share it (a hybrid and its
        components in evaluation); a shared array must not be modified."""
        if users.shared is None:
            return np.asarray(self.score_block(users), dtype=np.float32)
        key = id(self)
        if key not in users.shared:
            users.shared[key] = np.asarray(self.score_block(users), dtype=np.float32)
        return users.shared[key]

    def block_column_scores(self, users: UserBlock, columns: np.ndarray) -> np.ndarray:
        """``column_scores`` of a model that scores catalogue columns alone, as :meth:`block_scores` is to
        :meth:`score_block`: where the block is shared, the columns already scored for it are read back and
        only the others scored (a served block reads a new-item audience model twice: the untaken items to
        place them, then every item with few interactions, which include them). A fresh array each call."""
        if users.shared is None:
            return self.column_scores(users, columns)
        key = ("columns", id(self))
        known, scores = users.shared.get(key, (np.zeros(0, dtype=np.int64), None))
        columns = np.asarray(columns, dtype=np.int64)
        # Catalogue columns, so marked in a table as wide as the catalogue (sorting them twice a call was a
        # tenth of scoring a new-items audience): the same sorted arrays as np.setdiff1d and np.union1d.
        marked = np.zeros(len(self.item_ids), dtype=bool)
        marked[columns] = True
        marked[known] = False
        missing = np.flatnonzero(marked)
        if len(missing):
            fresh = np.asarray(self.column_scores(users, missing), dtype=np.float32)
            marked[known] = True
            merged = np.flatnonzero(marked)
            both = np.empty((len(users.user_ids), len(merged)), dtype=np.float32)
            both[:, np.searchsorted(merged, missing)] = fresh
            if scores is not None:
                both[:, np.searchsorted(merged, known)] = scores
            known, scores = merged, both
            users.shared[key] = (known, scores)
        return scores[:, np.searchsorted(known, columns)]

    @property
    def block_users(self) -> int:
        """Users scored per block (a block's scores are ``block_users x items`` floats). A user's scores are
        bit-for-bit the same whenever the blocks are the same: callers that split users among processes cut
        at multiples of this (BLAS may round a row differently inside a block of another shape)."""
        return max(1, SCORE_BLOCK_CELLS // max(1, len(self.item_ids)))

    @property
    def serving_block_users(self) -> int:
        """Users a block where this model is served alone (:func:`models.serving.serve_together`; the publish
        cuts its users at multiples of it): :attr:`block_users`, unless its serving holds less than the
        catalogue a user (a hybrid served in two stages)."""
        return self.block_users

    def column_block_users(self, n_columns: int) -> int:
        """Users a block where only ``n_columns`` catalogue columns are scored (:meth:`column_scores` of the
        items nobody has taken, for their audiences): as many as keep the block's scores within
        ``SCORE_BLOCK_CELLS``, at most ``COLUMN_BLOCK_MAX_USERS`` and never fewer than :attr:`block_users`. At
        200k items a catalogue-wide block is 80 users, and a pass over a million users in such blocks paid
        each block's fixed costs (its history rows, profiles and selection) 12,500 times."""
        return max(self.block_users, min(COLUMN_BLOCK_MAX_USERS, SCORE_BLOCK_CELLS // max(1, n_columns)))

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
        block = UserBlock(rows, np.full(len(rows), -1),
                          sp.csr_matrix((len(rows), len(self.item_ids)), dtype=np.float32),
                          np.stack(codes, axis=1).astype(np.int32))
        scores = np.asarray(self.score_block(block), dtype=np.float32)
        return top_n(rows, scores, min(n, len(self.item_ids)), self.item_ids, self.tiebreak)

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
        h_users = history[USER_ID].to_numpy()
        h_items = history[ITEM_ID].to_numpy()
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

    def save(self, path: Path, store: Path | None = None) -> Path:
        """Write the model under ``path``. ``store``: a folder the models of one fold share, through which the
        training matrix and the encoding (byte for byte alike in every model fitted on the same data) are
        written once and hard-linked into each model's folder (:func:`write_by_content`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "params.json").write_text(json.dumps({"model": self.name, "params": self.params,
                                                      "seed": self.seed}, indent=2, default=str))
        (path / "metadata.json").write_text(json.dumps(self.meta, indent=2, default=str))
        digest = write_by_content(path / "train.npz", lambda f: sp.save_npz(f, self.train, compressed=False), store)
        if digest is not None:
            LAST_ENCODING.saved("train.npz", digest, self.train)
        write_by_content(path / "encoding.npz", lambda f: np.savez(
            f, item_ids=self.item_ids, user_ids=self.user_ids, feature_user_ids=self.feature_user_ids,
            user_demographics=self.user_demographics, item_genres=self.item_genres, item_year=self.item_year,
            item_popularity=self.item_popularity, tiebreak=self.tiebreak, item_tokens_indptr=self.item_tokens.indptr,
            item_tokens_indices=self.item_tokens.indices, item_text=self.item_text.astype(np.float16)), store)
        (path / "vocab.json").write_text(json.dumps({"demographics": self.vocab, "genres": self.genre_vocab}))
        self._save_state(path)
        self.saved_path = path
        return path

    @classmethod
    def load(cls, path: Path, loader: Callable[[Path], Recommender] | None = None, state: bool = True,
             files: SharedFiles | None = None) -> Self:
        """Read a saved model. ``loader`` loads nested models of any kind (the hybrid's components).
        ``state=False`` reads only the encoding (catalogue, histories, features): enough to explain, not to
        score. ``files``: models loaded together share what they read from byte-identical files."""
        path = Path(path)
        files = files or SharedFiles()
        saved = json.loads((path / "params.json").read_text())
        model = cls(**saved["params"])
        model._loader = loader
        model.seed = saved["seed"]
        model.meta = json.loads((path / "metadata.json").read_text())
        model.train = files.read(path / "train.npz", lambda f: sp.load_npz(f).tocsr())
        for key, value in files.read(path / "encoding.npz", _read_encoding).items():
            setattr(model, key, value)
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


# The widest range of ids indexed through a table (4 bytes an id of the range: 128 MB); wider ones (hashed ids)
# are searched.
ID_TABLE_MAX = 1 << 25


def distinct_ids(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` as int64, by marking each id in a table over the ids' range where it is narrow
    (every night's ids: a fit's users and items), else by sorting. A sort of 16 M ids and a binary search of
    each (:func:`positions_of`) cost a fit 2-3 s; through tables they are two passes each. The same arrays."""
    values = np.asarray(values)
    if len(values) == 0:
        return np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo >= ID_TABLE_MAX:
        return np.unique(values).astype(np.int64)
    present = np.zeros(hi - lo + 1, dtype=bool)
    present[values - lo] = True
    return np.flatnonzero(present).astype(np.int64) + lo


def positions_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's place in the sorted ``ids`` (every value is one of them): ``np.searchsorted``, through a table
    where the ids' range is narrow."""
    if len(ids) == 0 or int(ids[-1]) - int(ids[0]) >= ID_TABLE_MAX:
        return np.searchsorted(ids, values)
    lo = int(ids[0])
    table = np.zeros(int(ids[-1]) - lo + 1, dtype=np.int32)
    table[ids - lo] = np.arange(len(ids), dtype=np.int32)
    return table[values - lo].astype(np.int64)


def carried_rows(ids: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Each id's row in the sorted ``earlier`` ids, or -1 where it is new: what a warm start carries over from
    an earlier fold's fit (unlike :func:`positions_of`, an id need not be among the earlier ones)."""
    if len(earlier) == 0:
        return np.full(len(ids), -1)
    pos = np.clip(np.searchsorted(earlier, ids), 0, len(earlier) - 1)
    return np.where(earlier[pos] == ids, pos, -1)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of unsigned 64-bit words (wrapping arithmetic): a hash whose value for one word
    does not depend on any other (seeded by adding a salt first: :class:`~models.content.RandomExposure`'s
    scores, the evaluation's user sample). A ``uint64`` array is hashed in place (pass a copy to keep it)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping multiplication is the point
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def write_by_content(target: Path, write: Callable[[BinaryIO], None], store: Path | None = None) -> bytes | None:
    """Write ``target`` with ``write`` (given an open binary file). With a ``store`` folder the bytes are
    kept there once per content (named by their sha256) and ``target`` is a hard link to them (a copy where
    the file system has no hard links): each model folder stays whole on its own, and a fold's models share
    one copy on disk. Each of a fold's 8-14 models used to write its own zlib-compressed copy of the same
    training matrix: at 16 M interactions 6.1 s and 37 MB a model, against 0.44 s and 128 MB once a fold
    uncompressed. Writers of the same content at once (a fold's models on several workers) each rename a
    complete file into place. Returns the content's sha256 where it is kept in a store (None without one)."""
    if store is None:
        with open(target, "wb") as f:
            write(f)
        return None
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=store, prefix=".writing-", suffix=target.suffix, delete=False) as f:
        temp = Path(f.name)
        try:
            write(f)
            f.seek(0)
            digest = hashlib.file_digest(f, "sha256").digest()
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    kept = store / f"{digest.hex()}{target.suffix}"
    if kept.exists():
        temp.unlink()
    else:
        os.replace(temp, kept)
    target.unlink(missing_ok=True)
    try:
        os.link(kept, target)
    except OSError:  # no hard links here (another file system, or one without them)
        shutil.copyfile(kept, target)
    return digest


class SharedFiles:
    """What models loaded together read from byte-identical files, held once. Models saved from one fold
    hold the same training matrix and encoding: the item-cold slice's fourteen models held fourteen copies of
    both (at 30 M interactions and 60k items ~0.3 GB a model; at 100 M and 200k items, 1.1 GB), and a loaded
    hybrid one per component. Models never change what they load (a fit builds new arrays), so sharing is
    safe; the files are told apart by content (sha256), not by path. A fold's models hold hard links to one
    file (:func:`write_by_content`): a file already read under another name is known by its inode, unread.
    A file this process saved from the encoding it still keeps (:class:`LastEncoding`: the hybrid's production
    fit loads its components right after the fits that saved them) is that encoding's array, unread: the
    hybrid's fit held the fold's training matrix twice, the kept one and the components' (0.8 GB at 100 M)."""

    def __init__(self) -> None:
        self._read: dict[tuple[str, bytes], Any] = {}
        self._inodes: dict[tuple[int, ...], tuple[str, bytes]] = {}

    def read(self, file: Path, parse: Callable[[BinaryIO], Any]) -> Any:
        with open(file, "rb") as f:  # hashed and parsed through one descriptor: the same bytes, never copied whole
            stat = os.fstat(f.fileno())
            inode = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if inode in self._inodes:
                return self._read[self._inodes[inode]]
            key = (file.name, hashlib.file_digest(f, "sha256").digest())
            if key not in self._read:
                value = LAST_ENCODING.saved_array(*key)
                if value is None:
                    f.seek(0)
                    value = parse(f)
                self._read[key] = value
        self._inodes[inode] = key
        return self._read[key]


def _read_encoding(file: BinaryIO) -> dict[str, Any]:
    """A saved encoding's arrays, as the model holds them."""
    with np.load(file) as arrays:
        out = {key: arrays[key] for key in arrays.files}
    n_items = len(out["item_ids"])
    out["item_tokens"] = tokens_from(out.pop("item_tokens_indptr", None), out.pop("item_tokens_indices", None),
                                     n_items)
    out["item_text"] = np.asarray(out.get("item_text", np.zeros((n_items, 0))), dtype=np.float32)
    return out


def tokens_from(indptr: np.ndarray | None, indices: np.ndarray | None, n_items: int) -> sp.csr_matrix:
    """The saved title-token matrix (none saved: no titles)."""
    if indptr is None or indices is None:
        return sp.csr_matrix((n_items, BUCKETS), dtype=np.float32)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n_items, BUCKETS))


class LastEncoding:
    """The last training data this process encoded, for the next fit on the same data. A fold's 8-14 models
    are fitted one after another on the same interactions and features, and each encoded them anew: 1.3 s a fit
    at 13 M interactions (the ids' positions, the CSR matrix, the side features), ~50 s of a 20 M night. Told
    apart by content (:func:`data_fingerprint`, :func:`frame_fingerprint`), the encoding is the same whichever
    model made it; its arrays are shared, as :class:`SharedFiles` shares what models load (a fit builds new
    arrays and never changes these), and anything else is copied. One entry: the fits of a fold run together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._values: dict[str, Any] = {}
        self._files: dict[tuple[str, bytes], Any] = {}  # (file name, sha256) -> the kept array saved in it

    def restore(self, key: tuple, model: Recommender) -> bool:
        """Set ``model``'s encoding from the one kept for ``key``; False when none is."""
        with self._lock:
            if key != self._key:
                return False
            values = dict(self._values)
        for name, value in values.items():
            shared = isinstance(value, np.ndarray | sp.spmatrix | sp.sparray)
            setattr(model, name, value if shared else copy.deepcopy(value))
        return True

    def keep(self, key: tuple, values: dict[str, Any]) -> None:
        with self._lock:
            self._key, self._values, self._files = key, values, {}

    def saved(self, name: str, digest: bytes, value: Any) -> None:
        """A model saved ``value`` as the file ``name`` with this content (sha256): remembered where ``value``
        is the kept encoding's own array, so that loading that file again (:class:`SharedFiles`) shares it."""
        with self._lock:
            if any(value is kept for kept in self._values.values()):
                self._files[(name, digest)] = value

    def saved_array(self, name: str, digest: bytes) -> Any:
        """The kept array a file of this name and content was saved from (None: none kept)."""
        with self._lock:
            return self._files.get((name, digest))

    def forget(self) -> None:
        """Let go of the kept encoding (the night's fits are over: at 100 M interactions it is ~1 GB)."""
        self.keep(None, {})


LAST_ENCODING = LastEncoding()


def frame_fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a feature frame (its columns, rows and values; row order does not matter)."""
    return f"{frame.height}-{','.join(frame.columns)}-{frame.hash_rows(seed=0).sum() if frame.height else 0:x}"


def data_fingerprint(interactions: pl.DataFrame) -> str:
    """A content hash of the training interactions' (user, item) pairs (order-independent): each pair's hash
    (its two ids' hashes combined and hashed again), summed. 0.08 s at 13 M rows; a hash of the pair as a
    struct took 0.3-0.4 s, paid by every fit."""
    h = interactions.select((pl.col(USER_ID).hash(seed=0) ^ pl.col(ITEM_ID).hash(seed=1)).hash(seed=2).sum()).item()
    return f"{interactions.height}-{h:x}"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "scipy", "polars", "keras", "tensorflow-cpu", "tensorflow"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
