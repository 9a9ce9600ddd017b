"""A two-tower deep model in plain Keras 3 (``keras.ops``, no TFRS) that can serve users with no history.

User tower: user-id embedding + gender and age embeddings + a bag of the user's known items (mean of item
embeddings) -> MLP. Item tower: item-id embedding + genres + release decade + log popularity -> MLP.
Trained with in-batch softmax (accidental hits masked). DropoutNet-style training: the user id is replaced
by the out-of-vocabulary id and the bag is shortened or emptied at random, so the tower learns to rank
from demographics alone (zero-shot) and from a few known items (k-shot). Half the bags are the user's first
items by time (as a new user's are when served, the rest a random sample of the history), and the tower
reads the bag's size beside its mean: one known item is weaker evidence than twenty.

Items with no interactions are served by a content tower of their own: genres + decade + title words (a bag of
hashed words) + the pretrained encoder's text vector (where it is on) -> MLP, trained beside the item tower on
the same examples against the same user vectors, with the user tower's gradient stopped (an auxiliary loss).
It learns to place an item where the user tower looks for it from content alone, and it cannot change the warm
path: the user and item towers learn exactly what they learn without it. Items nobody interacted with are
unknown, never trained as negatives.

The model itself is backend-agnostic Keras (``keras.ops`` only). Its training input is a ``tf.data`` pipeline
under TensorFlow (this machine's backend) and the same batches in NumPy (``models/towers.TrainingBatches``) on
any other backend: ``KERAS_BACKEND=jax`` trains it where TensorFlow is not installed (a GPU machine), with
every step compiled (JAX's jit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from models.base import Recommender, carried_rows
from models.ranking import Stage, factor_moments, factor_stage
from models.serving import DEMOGRAPHIC_COLUMNS, UserBlock, decade_of, padded_rows
from models.text import MAX_TOKENS
from models.towers import (
    Examples,
    LazyAdam,
    TrainingBatches,
    TwoTowerNet,
    first_items_by_time,
    keras,
    numpy_tensor,
    ops,
    unserialised,
)
from recsys import progress
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID


class TwoTower(Recommender):
    name = "two_tower"
    lists_from_stage = True
    SETTINGS = {"epochs": "epochs", "batch_size": "batch_size", "verbose": "verbose"}
    description = "a Keras two-tower network over ids, demographics, the user's items and item content"
    scores_new_items = True
    continues_fits = True

    @classmethod
    def default_params(cls) -> dict:
        return {"dim": 64, "hidden": 128, "temperature": 0.05, "epochs": 30, "batch_size": 1024,
                "learning_rate": 3e-3, "bag_size": 20, "id_dropout": 0.7, "bag_dropout": 0.3,
                # Share of training bags that are the user's first items by time (the rest are a random
                # sample of the history): a new user is served from their first k items.
                "first_items_share": 0.5,
                # The content tower (what serves items with no interactions): its loss's weight (0: none)
                # and the share of candidates it reads in training.
                "content_weight": 1.0, "content_share": 0.25,
                # Epochs without progress before a fit stops; a warm-started fit (production continuing the
                # evaluation fold's) stops after one, since it starts where the earlier fit ended.
                "patience": 3, "warm_patience": 1, "validation_share": 0.05, "negatives": "auto",
                # What the user tower reads of a user's demographics. With occupation and zip region the
                # combination is nearly unique (3k cells for 943 ML-100k users): the tower memorised users
                # through it and ranked new users below popularity (zero-shot nDCG@10 0.504 -> 0.554 without).
                "user_demographics": ["gender", "age_bucket"],
                # full softmax evaluates the item tower on the whole catalogue every step: worth it on small
                # catalogues (ML-100k: 1,682 items), 5x slower a step than in-batch negatives at 6.7k items.
                "full_softmax_max_items": 2_500,
                # The budget follows the data: a fit sees at most ``passes`` times its training examples, and
                # never more than example_budget (a fit from scratch) or warm_start_budget (production
                # continuing the evaluation fold's fit). ML-100k's fits stop early after 12-16 passes; above ~100k
                # interactions the cap binds. An epoch is at most max_examples_per_epoch examples and at most a
                # quarter of the budget, so early stopping can end a capped fit at a quarter, a half, ...
                # At 25-34k examples/s on 2 cores (XLA, lazy Adam; 6.7k-27k items) a 2 M fit is 60-80 s.
                "passes": 20,
                "max_examples_per_epoch": 500_000,
                "example_budget": 2_000_000,
                "warm_start_budget": 500_000,
                "min_validation_examples": 2_048, "max_validation_examples": 100_000,
                # An epoch that lowers the validation loss by less than this is no progress (flat fits end).
                "min_delta": 0.002,
                # XLA compiles the training step: 1.6-2x the examples/s, for ~6-8 s of compiling a fit.
                # "auto": when the fit's budget is at least jit_min_examples, where it pays for itself (from
                # ~170-320k examples at 12-16k/s eager; the production fit's 0.5 M warm start ran eager at 12k/s).
                "jit_compile": "auto", "jit_min_examples": 400_000,
                # Embedding tables with at least this many rows are updated lazily (the rows a batch touches).
                "lazy_rows": 20_000,
                # Training input: "auto" = tf.data under TensorFlow, NumPy batches on other backends (JAX);
                # "numpy" forces the NumPy batches (the same examples by the same rules, other random draws).
                "input": "auto",
                "verbose": False}  # Keras progress: a summary line per fit, or (True) a line per epoch

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
                          self.item_popularity > 0, item_text=self.item_text, dim=self.params["dim"],
                          hidden=self.params["hidden"],
                          temperature=self.params["temperature"], full_softmax=self._full_softmax(),
                          content_weight=self.params["content_weight"], content_share=self.params["content_share"],
                          seed=self.seed or 0)
        dummy = {"user": np.zeros(2, "int32"), "demo": np.zeros((2, len(self.vocab)), "int32"),
                 "bag": np.zeros((2, self.params["bag_size"]), "int32"), "item": np.arange(2, dtype="int32") % max(
                     1, len(self.item_ids))}
        net.content_tower(dummy["item"])  # built first: inference does not call it
        net(dummy)
        return net

    def _item_words(self) -> np.ndarray:
        """(items, MAX_TOKENS) hashed title words + 1 (0 pads), from the encoded title tokens."""
        return padded_rows(self.item_tokens, MAX_TOKENS)

    def _encode(self, interactions, user_features, item_features) -> None:
        # The pairs and their times read once: the encoding selects the pairs from them without a copy.
        interactions = interactions.lazy().select(USER_ID, ITEM_ID, TIMESTAMP).collect()
        super()._encode(interactions, user_features, item_features)
        self.first_items = first_items_by_time(interactions, self.user_ids, self.item_ids)

    def _tower_demographics(self, demographics: np.ndarray) -> np.ndarray:
        """The demographic codes the user tower reads: columns not in ``user_demographics`` read as unknown."""
        used = [c in self.params["user_demographics"] for c in DEMOGRAPHIC_COLUMNS]
        return np.where(np.array(used)[None, :], demographics, 0).astype(np.int32)

    def _examples(self, seed: int) -> tuple[Examples, Examples]:
        """(training, validation) examples: the pairs of the training CSR (:class:`models.towers.Examples`, by
        position, not materialised), with the demographics the user tower reads set for the training users.
        Held out for early stopping: a share, at least min_validation_examples (a small night's 5 % was under one
        batch, so it never stopped early and ran every epoch), at most a fifth of the data and
        max_validation_examples (validation stays cheap at 20 M)."""
        p = self.params
        self.train_demographics = self._tower_demographics(self.demographics_of(self.user_ids))
        n = self.train.nnz
        wanted = min(max(p["validation_share"] * n, p["min_validation_examples"]), 0.2 * n,
                     p["max_validation_examples"])
        return Examples.split(self.train.indptr, self.train.indices, wanted / max(n, 1), seed)

    def _fit(self, seed: int) -> None:
        keras.utils.set_random_seed(seed)  # with seeded ops, and XLA or TensorFlow's CPU kernels: same weights
        p = self.params
        examples, held_out = self._examples(seed)

        n_train = len(examples)
        batch = int(min(p["batch_size"], max(2, n_train)))
        self.net = self._build_net()
        warm = self._continue_from(self._earlier_fit())
        budget = int(min(p["warm_start_budget"] if warm else p["example_budget"], p["passes"] * n_train))
        per_epoch = max(batch, min(n_train, int(p["max_examples_per_epoch"]), budget // 4))
        epochs = max(1, min(int(p["epochs"]), budget // per_epoch))
        steps = max(1, per_epoch // batch)
        jit = (keras.backend.backend() == "jax"  # JAX runs op by op without jit: every fit compiles there
               or p["jit_compile"] is True
               or (p["jit_compile"] == "auto" and epochs * per_epoch >= p["jit_min_examples"]))
        train_ds = self._dataset(examples, batch, seed, shuffle=True, epochs=epochs, steps=steps)
        last = {"loss": ""}
        clock = {"started": time.perf_counter()}  # the first step (tracing, compiling) apart from the rest

        def batch_ended(batch, logs=None):
            clock.setdefault("first_step", time.perf_counter())

        def epoch_started(epoch, logs=None):
            progress.detail(f"epoch {epoch + 1}/{epochs}{last['loss']}")

        def epoch_ended(epoch, logs=None):
            last["loss"] = f", last loss {float((logs or {}).get('loss', float('nan'))):.3f}"

        def training_ended(logs=None):
            clock["ended"] = time.perf_counter()
            progress.detail(f"trained{last['loss']}; caching the item vectors")

        callbacks = [keras.callbacks.LambdaCallback(on_train_batch_end=batch_ended, on_epoch_begin=epoch_started,
                                                    on_epoch_end=epoch_ended, on_train_end=training_ended)]
        val_ds = None
        if len(held_out) >= min(batch, 256):
            val_ds = self._dataset(held_out, int(min(batch, len(held_out))), seed + 1, shuffle=False)
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss",
                                                           patience=p["warm_patience" if warm else "patience"],
                                                           min_delta=p["min_delta"], restore_best_weights=True))
        self.net.compile(optimizer=LazyAdam(p["learning_rate"], lazy_rows=p["lazy_rows"]),
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        # The optimizer's slots made now, not in the first step: a tf.function that creates variables while it
        # is traced is traced twice, and this graph takes seconds to trace (a third of a small night's fit).
        self.net.optimizer.build(self.net.trainable_variables)
        history = self.net.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                               callbacks=callbacks, shuffle=False,
                               verbose=2 if p["verbose"] else 0)
        losses = history.history.get("loss", [])
        # Training examples/s after the first step, validation passes included: what a fit of this size costs.
        examples = (len(losses) * steps - 1) * batch
        after_first = clock.get("ended", 0.0) - clock.get("first_step", 0.0)
        self.training_ = {"examples_per_second": round(examples / after_first) if after_first > 0 else None,
                          "first_step_seconds": round(clock.get("first_step", clock["started"]) - clock["started"], 2),
                          "epochs_planned": epochs, "epochs_run": len(losses), "examples_per_epoch": per_epoch,
                          "warm_started": warm, "jit_compile": jit, "first_loss": losses[0] if losses else None,
                          "final_loss": losses[-1] if losses else None,
                          "best_val_loss": min(history.history["val_loss"]) if "val_loss" in history.history else None}
        self.history_ = {k: [float(x) for x in v] for k, v in history.history.items()}
        self._cache_item_embeddings()

    def summary(self) -> str:
        t = getattr(self, "training_", {})
        if not t:
            return ""
        val = f", best val_loss {t['best_val_loss']:.3f}" if t.get("best_val_loss") is not None else ""
        speed = f" at {t['examples_per_second']:,}/s" if t.get("examples_per_second") else ""
        return (f"{t['epochs_run']}/{t['epochs_planned']} epochs of {t['examples_per_epoch']:,} examples{speed}"
                f"{' (warm start)' if t['warm_started'] else ''}, loss (both towers) {t['first_loss']:.3f} -> "
                f"{t['final_loss']:.3f}{val}")

    def _continue_from(self, previous: TwoTower | None) -> bool:
        """Start from ``previous``'s weights (same architecture): rows of known users and items carried over by
        id, new ones fresh (:meth:`warm_start`; the evaluation fold continues the tuning fold's fit, production
        the evaluation fold's). False where there is nothing to continue."""
        if previous is None or not isinstance(previous, TwoTower):
            return False
        same = all(previous.params[k] == self.params[k] for k in ("dim", "hidden", "bag_size", "temperature"))
        if not same or previous.vocab != self.vocab or previous._full_softmax() != self._full_softmax():
            return False
        new, old = self.net, previous.net
        users = carried_rows(self.user_ids, previous.user_ids)
        items = carried_rows(self.item_ids, previous.item_ids)
        for layer, before, rows, reserved in ((new.user_id, old.user_id, users, 1),
                                              (new.bag_items, old.bag_items, items, 1),
                                              (new.item_id, old.item_id, items, 0),
                                              (new.item_bias, old.item_bias, items, 0)):
            table = ops.convert_to_numpy(layer.embeddings).copy()
            earlier = ops.convert_to_numpy(before.embeddings)
            known = rows >= 0
            table[reserved:][known] = earlier[rows[known] + reserved]
            table[:reserved] = earlier[:reserved]
            layer.embeddings.assign(table)
        for layer, before in zip([*new.demo, *new.user_mlp, *new.item_mlp, new.decade, new.bias_from_popularity,
                                  new.words, new.content_decade, *new.content_mlp, new.content_bias],
                                 [*old.demo, *old.user_mlp, *old.item_mlp, old.decade, old.bias_from_popularity,
                                  old.words, old.content_decade, *old.content_mlp, old.content_bias],
                                 strict=True):
            layer.set_weights(before.get_weights())
        return True

    def _dataset(self, examples: Examples, batch: int, seed: int, shuffle: bool, epochs: int = 1, steps: int = 0):
        """(user, item) pairs -> batches with sampled bags and DropoutNet-style id/bag dropout: ``tf.data`` under
        TensorFlow, NumPy batches (``TrainingBatches``) elsewhere or when ``input`` is "numpy".

        Training batches come from a fresh random permutation each epoch (the first ``steps`` batches of
        it), drawn by a stateless index shuffle: no shuffle buffer, so memory does not grow with the data
        (a 4 M-element buffer held several GiB at 5 M interactions). The shuffle is stateless, so the rows every
        epoch reads are drawn before training and only their pairs are made tensors (at most the fit's budget).
        The tables the batches read (every user's items, the training CSR) are TensorFlow tensors over NumPy's
        memory, and the pipeline is not serialised for tf.data's graph rewrites, which copies what its functions
        capture: see :func:`models.towers.numpy_tensor`.
        """
        if self.params["input"] == "numpy" or keras.backend.backend() != "tensorflow":
            return TrainingBatches(examples, self.train.indptr, self.train.indices, self.first_items,
                                   self.train_demographics, self.params, batch, seed, self._full_softmax(),
                                   shuffle, steps)
        import tensorflow as tf  # the backend in use (checked above): its input pipeline

        p = self.params
        indptr = numpy_tensor(self.train.indptr.astype(np.int64))
        indices = numpy_tensor(self.train.indices.astype(np.int32, copy=False))
        first_indices = numpy_tensor(self.first_items)
        demo_table = numpy_tensor(self.train_demographics)
        bag_size = int(p["bag_size"])
        full = self._full_softmax()

        def featurize(u, i):
            n = tf.shape(u)[0]
            start = tf.gather(indptr, u)
            degree = tf.gather(indptr, u + 1) - start
            r = tf.random.uniform((n, bag_size), seed=seed)
            pos = start[:, None] + tf.cast(tf.floor(r * tf.cast(degree[:, None], tf.float32)), tf.int64)
            sampled = tf.gather(indices, pos) + 1
            # A share of the bags are the user's first items by time, as a new user's are when served.
            slot = tf.range(bag_size, dtype=tf.int64)[None, :]
            first = tf.gather(first_indices, start[:, None] + tf.minimum(slot, degree[:, None] - 1)) + 1
            first = tf.where(slot < degree[:, None], first, 0)
            bag = tf.where(tf.random.uniform((n, 1), seed=seed + 4) < p["first_items_share"], first, sampled)
            keep_k = tf.cast(tf.floor(tf.random.uniform((n, 1), seed=seed + 1) * (bag_size + 1)), tf.int32)
            keep = tf.range(bag_size)[None, :] < keep_k
            keep = keep & tf.not_equal(bag, (i + 1)[:, None])  # never the target itself
            keep = keep & (tf.random.uniform((n, 1), seed=seed + 2) >= p["bag_dropout"])
            bag = tf.where(keep, bag, 0)
            user = tf.where(tf.random.uniform((n,), seed=seed + 3) < p["id_dropout"], 0, u + 1)
            features = {"user": user, "demo": tf.gather(demo_table, u), "bag": bag, "item": i}
            return features, (i if full else tf.range(n))

        if not shuffle:
            ds = tf.data.Dataset.from_tensor_slices(examples.all())
            return ds.batch(batch, drop_remainder=True).map(featurize).prefetch(2).with_options(unserialised())
        per_epoch = steps * batch
        rows = np.concatenate([tf.random.experimental.index_shuffle(
            tf.range(per_epoch, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64),
            max_index=len(examples) - 1).numpy() for epoch in range(epochs)])
        read_users, read_items = (numpy_tensor(a) for a in examples.take(rows))  # in the order they are read

        def batch_of(epoch, step):
            at = tf.range(epoch * per_epoch + step * batch, epoch * per_epoch + (step + 1) * batch, dtype=tf.int64)
            return featurize(tf.gather(read_users, at), tf.gather(read_items, at))

        ds = tf.data.Dataset.range(epochs).flat_map(
            lambda epoch: tf.data.Dataset.range(steps).map(lambda step: batch_of(epoch, step)))
        return ds.prefetch(2).with_options(unserialised())

    # -- serving -------------------------------------------------------------------------------------------

    def _cache_item_embeddings(self) -> None:
        """Each item's vector and bias: from the item tower when it has training interactions, from the
        content tower when it has none."""
        def tower(fn, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = [fn(items[lo:lo + 8192].astype("int32")) for lo in range(0, len(items), 8192)]
            return (np.concatenate([ops.convert_to_numpy(v) for v, _ in parts] or [np.zeros((0, self.params["dim"]))]),
                    np.concatenate([ops.convert_to_numpy(b) for _, b in parts] or [np.zeros(0)]))

        new = self.item_popularity == 0
        self.item_embeddings = np.empty((len(self.item_ids), self.params["dim"]), dtype=np.float32)
        self.item_biases = np.empty(len(self.item_ids), dtype=np.float32)
        for rows, fn in ((np.flatnonzero(~new), self.net.item_tower), (np.flatnonzero(new), self.net.content_tower)):
            self.item_embeddings[rows], self.item_biases[rows] = tower(fn, rows)

    def user_embeddings(self, users: UserBlock) -> np.ndarray:
        bag = padded_rows(users.history, int(self.params["bag_size"]))
        user = np.where(users.train_rows >= 0, users.train_rows + 1, 0).astype(np.int32)
        emb = self.net.user_tower(user, self._tower_demographics(users.demographics), bag)
        return ops.convert_to_numpy(emb).astype(np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        scores = self.user_embeddings(users) @ self.item_embeddings.T
        scores /= self.net.temperature  # in place: a block is users x catalogue, each pass over it counts
        scores += self.item_biases[None, :]
        return scores

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """The block's best ``depth`` a user from the towers' product as :meth:`score_block` computes it; the
        rows' moments from the item vectors' sums and Gram matrix (:class:`models.ranking.FactorMoments`: a
        score is affine in the user's vector), kept for the fitted factors."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        moments = factor_moments(self, self.item_embeddings, self.net.temperature, self.item_biases)
        return factor_stage(self.user_embeddings(users), self.item_embeddings, moments, self.item_biases,
                            users.seen, depth)

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
