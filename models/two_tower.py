"""A two-tower deep model in plain Keras 3 (``keras.ops``, no TFRS) that can serve users with no history.

User tower: user-id embedding + gender and age embeddings + a bag of the user's known items (mean of item
embeddings) -> MLP. Item tower: item-id embedding + genres + release decade + title words (a bag of hashed
words) + log popularity -> MLP. Trained with in-batch softmax (accidental hits masked). DropoutNet-style
training on both sides: the user id is replaced by the out-of-vocabulary id and the bag is shortened or
emptied at random, so the tower learns to rank from demographics alone (zero-shot) and from a few known
items (k-shot); an item's id and popularity are hidden at random, so the item tower learns to place an item
from its content alone, which is how it serves items with no interactions (they always read as unknown, and
are never trained as negatives).

The model itself is backend-agnostic Keras; the training input pipeline is ``tf.data`` on this machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from models.base import DEMOGRAPHIC_COLUMNS, N_DECADES, Recommender, UserBlock, decade_of, padded_rows
from models.text import BUCKETS, MAX_TOKENS
from recsys import progress

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402


@keras.saving.register_keras_serializable(package="recsys")
class TwoTowerNet(keras.Model):
    def __init__(self, n_users, n_items, demo_sizes, item_genres, item_decade, item_logpop, item_logq,
                 item_words, item_known, dim=64, hidden=128, temperature=0.05, full_softmax=True, item_dropout=0.1,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        self.config_ = {"n_users": int(n_users), "n_items": int(n_items), "demo_sizes": [int(s) for s in demo_sizes],
                        "dim": int(dim), "hidden": int(hidden), "temperature": float(temperature),
                        "full_softmax": bool(full_softmax), "item_dropout": float(item_dropout)}
        self.item_dropout = float(item_dropout)
        self.seeds = keras.random.SeedGenerator(int(seed))
        self.full_softmax = bool(full_softmax)
        self.temperature = float(temperature)
        self.user_id = keras.layers.Embedding(n_users + 1, dim, name="user_id")  # 0 = unknown user
        self.demo = [keras.layers.Embedding(size, 16, name=f"demo_{k}") for k, size in enumerate(demo_sizes)]
        self.bag_items = keras.layers.Embedding(n_items + 1, dim, name="bag_items")  # 0 = padding
        self.user_mlp = [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(dim)]
        self.item_id = keras.layers.Embedding(n_items + 1, dim, name="item_id")  # 0 = an item with no interactions
        self.decade = keras.layers.Embedding(N_DECADES, 8, name="decade")
        self.words = keras.layers.Embedding(BUCKETS + 1, 16, name="title_words")  # 0 = padding
        self.item_mlp = [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(dim)]
        # A per-item bias outside the cosine: popularity is shared by everyone, and unit vectors alone
        # spend personalisation capacity to express it.
        self.item_bias = keras.layers.Embedding(n_items + 1, 1, embeddings_initializer="zeros", name="item_bias")
        self.bias_from_popularity = keras.layers.Dense(1, name="bias_from_popularity")
        # Item side features live in the model as constants, so the item tower needs only an index.
        self.genres = ops.convert_to_tensor(np.asarray(item_genres, dtype="float32"))
        self.decades = ops.convert_to_tensor(np.asarray(item_decade, dtype="int32"))
        self.logpop = ops.convert_to_tensor(np.asarray(item_logpop, dtype="float32")[:, None])
        self.item_words = ops.convert_to_tensor(np.asarray(item_words, dtype="int32"))  # (items, MAX_TOKENS)
        self.item_known = ops.convert_to_tensor(np.asarray(item_known, dtype="bool"))  # any training interaction
        # An unknown item's popularity input: the lowest value (log popularity grows with interactions).
        self.unknown_logpop = float(np.min(item_logpop)) if len(item_logpop) else 0.0
        # log of each item's sampling probability as an in-batch negative (logQ correction, Yi et al. 2019):
        # without it in-batch softmax learns p(i|u)/p(i) and buries popular items.
        self.logq = ops.convert_to_tensor(np.asarray(item_logq, dtype="float32"))

    def user_tower(self, user, demo, bag):
        parts = [self.user_id(user)]
        parts += [layer(demo[:, k]) for k, layer in enumerate(self.demo)]
        mask = ops.cast(ops.greater(bag, 0), "float32")[:, :, None]
        bag_sum = ops.sum(self.bag_items(bag) * mask, axis=1)
        parts.append(bag_sum / ops.maximum(ops.sum(mask, axis=1), 1.0))
        x = ops.concatenate(parts, axis=-1)
        for layer in self.user_mlp:
            x = layer(x)
        return ops.normalize(x, axis=-1)

    def _identity(self, item, training=False):
        """The id row and popularity input an item is read with: its own, or the unknown item's (an item with
        no training interactions always; a known item at random while training)."""
        known = ops.take(self.item_known, item, axis=0)
        if training and self.item_dropout > 0:
            kept = keras.random.uniform(ops.shape(item), seed=self.seeds) >= self.item_dropout
            known = ops.logical_and(known, kept)
        row = ops.where(known, item + 1, 0)
        logpop = ops.where(known[:, None], ops.take(self.logpop, item, axis=0), self.unknown_logpop)
        return row, logpop

    def item_tower(self, item, training=False):
        row, logpop = self._identity(item, training)
        words = ops.take(self.item_words, item, axis=0)
        mask = ops.cast(ops.greater(words, 0), "float32")[:, :, None]
        title = ops.sum(self.words(words) * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)
        x = ops.concatenate([
            self.item_id(row),
            ops.take(self.genres, item, axis=0),
            self.decade(ops.take(self.decades, item, axis=0)),
            title,
            logpop,
        ], axis=-1)
        for layer in self.item_mlp:
            x = layer(x)
        return ops.normalize(x, axis=-1), ops.squeeze(self.item_bias(row) + self.bias_from_popularity(logpop), -1)

    def call(self, inputs, training=False):
        item = inputs["item"]
        u = self.user_tower(inputs["user"], inputs["demo"], inputs["bag"])
        if self.full_softmax:  # every item is a candidate: the label is the item index
            every = ops.arange(self.config_["n_items"], dtype="int32")
            v, bias = self.item_tower(every, training)
            logits = ops.matmul(u, ops.transpose(v)) / self.temperature + bias[None, :]
            # An item nobody interacted with is unknown, not a negative: it is left out of the softmax.
            return ops.where(self.item_known[None, :], logits, -1e9)
        v, bias = self.item_tower(item, training)
        logits = (ops.matmul(u, ops.transpose(v)) / self.temperature + bias[None, :]
                  - ops.take(self.logq, item, axis=0)[None, :])
        # Mask accidental hits: the same item elsewhere in the batch is not a negative.
        same = ops.equal(item[:, None], item[None, :])
        eye = ops.eye(ops.shape(item)[0], dtype="bool")
        return ops.where(ops.logical_and(same, ops.logical_not(eye)), -1e9, logits)

    def get_config(self):
        return dict(self.config_)


def _positions(ids: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Each id's row in the sorted ``earlier`` ids, or -1 where it is new."""
    if len(earlier) == 0:
        return np.full(len(ids), -1)
    pos = np.clip(np.searchsorted(earlier, ids), 0, len(earlier) - 1)
    return np.where(earlier[pos] == ids, pos, -1)


class TwoTower(Recommender):
    name = "two_tower"
    scores_new_items = True

    @classmethod
    def default_params(cls) -> dict:
        return {"dim": 64, "hidden": 128, "temperature": 0.05, "epochs": 30, "batch_size": 1024,
                "learning_rate": 3e-3, "bag_size": 20, "id_dropout": 0.5, "bag_dropout": 0.3,
                # Share of known items read as unknown in training: what teaches the item tower new items.
                "item_dropout": 0.1,
                "patience": 3, "validation_share": 0.05, "negatives": "auto",
                # What the user tower reads of a user's demographics. With occupation and zip region the
                # combination is nearly unique (3k cells for 943 ML-100k users): the tower memorised users
                # through it and ranked new users below popularity (zero-shot nDCG@10 0.504 -> 0.554 without).
                "user_demographics": ["gender", "age_bucket"],
                # full softmax evaluates the item tower on the whole catalogue every step: worth it on small
                # catalogues (ML-100k: 1,682 items), 5x slower a step than in-batch negatives at 6.7k items.
                "full_softmax_max_items": 2_500,
                # The cost per night is bounded: each epoch sees a fresh random sample of at most
                # max_examples_per_epoch examples, and a fit sees at most example_budget in all (early
                # stopping usually ends it sooner). A fit warm-started from an earlier fit (production from the
                # evaluation fold) continues for at most warm_start_budget examples. On 2 cores the Keras
                # step runs ~25-30k examples/s at 1k items and ~12k/s at 27k items and 138k users (20 M
                # interactions): 4 M examples is 2.5-5.5 min, 1 M 0.6-1.4 min, so the deep model costs at most
                # ~7 min of a 20 M night. ML-100k (100k examples an epoch) stops early well before either.
                "max_examples_per_epoch": 1_000_000,
                "example_budget": 4_000_000,
                "warm_start_budget": 1_000_000,
                "max_validation_examples": 100_000,
                "verbose": 0}  # Keras progress: 0 quiet (a summary line per fit), 2 one line per epoch

    # -- training ------------------------------------------------------------------------------------------

    def _full_softmax(self) -> bool:
        """Softmax over the whole catalogue when it is small enough, else in-batch negatives with logQ."""
        mode = self.params["negatives"]
        return mode == "full" or (mode == "auto" and len(self.item_ids) <= self.params["full_softmax_max_items"])

    def _build_net(self) -> TwoTowerNet:
        logpop = np.log1p(self.item_popularity)
        logpop = (logpop - logpop.mean()) / (logpop.std() + 1e-6)
        logq = np.log((self.item_popularity + 1.0) / (self.item_popularity.sum() + len(self.item_popularity)))
        net = TwoTowerNet(len(self.user_ids), len(self.item_ids), [len(self.vocab[c]) for c in self.vocab],
                          self.item_genres, decade_of(self.item_year), logpop, logq, self._item_words(),
                          self.item_popularity > 0, dim=self.params["dim"], hidden=self.params["hidden"],
                          temperature=self.params["temperature"], full_softmax=self._full_softmax(),
                          item_dropout=self.params["item_dropout"], seed=self.seed or 0)
        dummy = {"user": np.zeros(2, "int32"), "demo": np.zeros((2, len(self.vocab)), "int32"),
                 "bag": np.zeros((2, self.params["bag_size"]), "int32"), "item": np.arange(2, dtype="int32") % max(
                     1, len(self.item_ids))}
        net(dummy)
        return net

    def _item_words(self) -> np.ndarray:
        """(items, MAX_TOKENS) hashed title words + 1 (0 pads), from the encoded title tokens."""
        return padded_rows(self.item_tokens, MAX_TOKENS)

    def _tower_demographics(self, demographics: np.ndarray) -> np.ndarray:
        """The demographic codes the user tower reads: columns not in ``user_demographics`` read as unknown."""
        used = [c in self.params["user_demographics"] for c in DEMOGRAPHIC_COLUMNS]
        return np.where(np.array(used)[None, :], demographics, 0).astype(np.int32)

    def _fit(self, seed: int) -> None:
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        p = self.params
        coo = self.train.tocoo()
        users, items = coo.row.astype(np.int32), coo.col.astype(np.int32)
        rng = np.random.default_rng(seed)
        # Held-out examples for early stopping: a share, capped so validation stays cheap at 20 M.
        val_share = min(p["validation_share"], p["max_validation_examples"] / max(len(users), 1))
        is_val = rng.random(len(users)) < val_share
        self.train_demographics = self._tower_demographics(self.demographics_of(self.user_ids))

        batch = int(min(p["batch_size"], max(2, (~is_val).sum())))
        self.net = self._build_net()
        warm = self._continue_from(getattr(self, "_previous", None))
        per_epoch = min(int((~is_val).sum()), int(p["max_examples_per_epoch"]))
        budget = int(p["warm_start_budget"] if warm else p["example_budget"])
        epochs = max(1, min(int(p["epochs"]), budget // max(per_epoch, 1)))
        steps = max(1, per_epoch // batch)
        train_ds = self._dataset(users[~is_val], items[~is_val], batch, seed, shuffle=True, epochs=epochs,
                                 steps=steps)
        last = {"loss": ""}

        def epoch_started(epoch, logs=None):
            progress.detail(f"epoch {epoch + 1}/{epochs}{last['loss']}")

        def epoch_ended(epoch, logs=None):
            last["loss"] = f", last loss {float((logs or {}).get('loss', float('nan'))):.3f}"

        callbacks = [keras.callbacks.LambdaCallback(on_epoch_begin=epoch_started, on_epoch_end=epoch_ended)]
        val_ds = None
        if is_val.sum() >= batch:
            val_ds = self._dataset(users[is_val], items[is_val], batch, seed + 1, shuffle=False)
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=p["patience"],
                                                           restore_best_weights=True))
        self.net.compile(optimizer=keras.optimizers.Adam(p["learning_rate"]),
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = self.net.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                               callbacks=callbacks, shuffle=False, verbose=p["verbose"])
        losses = history.history.get("loss", [])
        self.training_ = {"epochs_planned": epochs, "epochs_run": len(losses), "examples_per_epoch": per_epoch,
                          "warm_started": warm, "first_loss": losses[0] if losses else None,
                          "final_loss": losses[-1] if losses else None,
                          "best_val_loss": min(history.history["val_loss"]) if "val_loss" in history.history else None}
        self.history_ = {k: [float(x) for x in v] for k, v in history.history.items()}
        self._cache_item_embeddings()

    def summary(self) -> str:
        t = getattr(self, "training_", {})
        if not t:
            return ""
        val = f", best val_loss {t['best_val_loss']:.3f}" if t.get("best_val_loss") is not None else ""
        return (f"{t['epochs_run']}/{t['epochs_planned']} epochs of {t['examples_per_epoch']:,} examples"
                f"{' (warm start)' if t['warm_started'] else ''}, loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}{val}")

    def warm_start(self, previous: Recommender) -> None:
        """Start the next fit from ``previous``'s weights (same architecture): rows of known users and items
        are carried over by id, new ones start fresh. The production fit continues the evaluation fold's."""
        self._previous = previous

    def _continue_from(self, previous: TwoTower | None) -> bool:
        if previous is None or not isinstance(previous, TwoTower):
            return False
        same = all(previous.params[k] == self.params[k] for k in ("dim", "hidden", "bag_size", "temperature"))
        if not same or previous.vocab != self.vocab or previous._full_softmax() != self._full_softmax():
            return False
        new, old = self.net, previous.net
        users = _positions(self.user_ids, previous.user_ids)
        items = _positions(self.item_ids, previous.item_ids)
        for layer, before, rows, reserved in ((new.user_id, old.user_id, users, 1), (new.bag_items, old.bag_items, items, 1),
                                              (new.item_id, old.item_id, items, 1),
                                              (new.item_bias, old.item_bias, items, 1)):
            table = ops.convert_to_numpy(layer.embeddings).copy()
            earlier = ops.convert_to_numpy(before.embeddings)
            known = rows >= 0
            table[reserved:][known] = earlier[rows[known] + reserved]
            table[:reserved] = earlier[:reserved]
            layer.embeddings.assign(table)
        for layer, before in zip([*new.demo, *new.user_mlp, *new.item_mlp, new.decade, new.words,
                                  new.bias_from_popularity],
                                 [*old.demo, *old.user_mlp, *old.item_mlp, old.decade, old.words,
                                  old.bias_from_popularity],
                                 strict=True):
            layer.set_weights(before.get_weights())
        return True

    def _dataset(self, users: np.ndarray, items: np.ndarray, batch: int, seed: int, shuffle: bool,
                 epochs: int = 1, steps: int = 0):
        """tf.data: (user, item) pairs -> batches with sampled bags and DropoutNet-style id/bag dropout.

        Training batches come from a fresh random permutation each epoch (the first ``steps`` batches of
        it), drawn by a stateless index shuffle: no shuffle buffer, so memory does not grow with the data
        (a 4 M-element buffer held several GiB at 5 M interactions).
        """
        import tensorflow as tf

        p = self.params
        indptr = tf.constant(self.train.indptr.astype(np.int64))
        indices = tf.constant(self.train.indices.astype(np.int32))
        demo_table = tf.constant(self.train_demographics)
        bag_size = int(p["bag_size"])
        full = self._full_softmax()

        def featurize(u, i):
            n = tf.shape(u)[0]
            start = tf.gather(indptr, u)
            degree = tf.gather(indptr, u + 1) - start
            r = tf.random.uniform((n, bag_size), seed=seed)
            pos = start[:, None] + tf.cast(tf.floor(r * tf.cast(degree[:, None], tf.float32)), tf.int64)
            bag = tf.gather(indices, pos) + 1
            keep_k = tf.cast(tf.floor(tf.random.uniform((n, 1), seed=seed + 1) * (bag_size + 1)), tf.int32)
            keep = tf.range(bag_size)[None, :] < keep_k
            keep = keep & tf.not_equal(bag, (i + 1)[:, None])  # never the target itself
            keep = keep & (tf.random.uniform((n, 1), seed=seed + 2) >= p["bag_dropout"])
            bag = tf.where(keep, bag, 0)
            user = tf.where(tf.random.uniform((n,), seed=seed + 3) < p["id_dropout"], 0, u + 1)
            features = {"user": user, "demo": tf.gather(demo_table, u), "bag": bag, "item": i}
            return features, (i if full else tf.range(n))

        if not shuffle:
            ds = tf.data.Dataset.from_tensor_slices((users, items))
            return ds.batch(batch, drop_remainder=True).map(featurize).prefetch(2)
        all_users, all_items = tf.constant(users), tf.constant(items)
        last = tf.constant(len(users) - 1, dtype=tf.int64)

        def batch_of(epoch, step):
            positions = tf.range(step * batch, (step + 1) * batch, dtype=tf.int64)
            rows = tf.random.experimental.index_shuffle(
                positions, seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
                max_index=last)
            return featurize(tf.gather(all_users, rows), tf.gather(all_items, rows))

        ds = tf.data.Dataset.range(epochs).flat_map(
            lambda epoch: tf.data.Dataset.range(steps).map(lambda step: batch_of(epoch, step)))
        return ds.prefetch(2)

    # -- serving -------------------------------------------------------------------------------------------

    def _cache_item_embeddings(self) -> None:
        parts = [self.net.item_tower(np.arange(lo, min(lo + 8192, len(self.item_ids)), dtype="int32"))
                 for lo in range(0, len(self.item_ids), 8192)]
        self.item_embeddings = np.concatenate([ops.convert_to_numpy(v) for v, _ in parts]).astype(np.float32)
        self.item_biases = np.concatenate([ops.convert_to_numpy(b) for _, b in parts]).astype(np.float32)

    def user_embeddings(self, users: UserBlock) -> np.ndarray:
        bag = padded_rows(users.history, int(self.params["bag_size"]))
        user = np.where(users.train_rows >= 0, users.train_rows + 1, 0).astype(np.int32)
        emb = self.net.user_tower(user, self._tower_demographics(users.demographics), bag)
        return ops.convert_to_numpy(emb).astype(np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self.user_embeddings(users) @ self.item_embeddings.T / self.net.temperature + self.item_biases[None, :]

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """With known items, "because you rated <the known item closest to the recommended one in the item
        tower's space>"; without, "popular with <gender, age>" (what the tower reads of a new user)."""
        def closeness(known: np.ndarray, target: np.ndarray) -> np.ndarray:
            return np.einsum("ij,ij->i", self.item_embeddings[known], self.item_embeddings[target])

        columns = tuple(c for c in DEMOGRAPHIC_COLUMNS if c in self.params["user_demographics"])
        return self.neighbour_reasons(users, rows, cols, closeness, segment=columns)

    def _save_state(self, path: Path) -> None:
        self.net.save_weights(path / "two_tower.weights.h5")
        np.save(path / "train_demographics.npy", self.train_demographics)
        (path / "training_history.json").write_text(json.dumps({**getattr(self, "history_", {}),
                                                                 "training": getattr(self, "training_", {})}))

    def _load_state(self, path: Path) -> None:
        self.train_demographics = np.load(path / "train_demographics.npy")
        self.net = self._build_net()
        self.net.load_weights(path / "two_tower.weights.h5")
        self._cache_item_embeddings()
