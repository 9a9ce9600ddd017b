"""The two-tower network itself (``models/two_tower.py`` trains and serves it): a user tower, an item tower
and a content tower in backend-agnostic Keras 3, and the helpers that lay out its inputs.

TensorFlow is imported here, once, with its native start-up lines discarded (see
:func:`_native_stderr_discarded`); ``models/two_tower.py`` takes ``keras`` and ``ops`` from this module for
that reason.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import polars as pl

from models.base import positions_of
from models.serving import N_DECADES
from models.text import BUCKETS
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID

HELD_OUT_CHUNK = 1 << 22  # uniform draws at a time when choosing the validation examples (32 MiB)
TENSOR_ALIGNMENT = 64  # bytes: what TensorFlow's kernels require of a tensor's memory (its allocator's alignment)
FIRST_ITEMS_CHUNK = 4_000_000  # interactions whose users' first items are ordered at a time (~400 MB of work)


@contextlib.contextmanager
def _native_stderr_discarded():
    """TensorFlow 2.20 logs "oneDNN custom operations are on" twice from C++ while it is imported, through
    absl before absl is initialised (with absl's own "WARNING: All log messages before absl::InitializeLog()"),
    and no TF_CPP_MIN_LOG_LEVEL or absl/glog level silences it; only TF_ENABLE_ONEDNN_OPTS=0 does, which
    changes the kernels. So the import's native stderr (file descriptor 2) goes to /dev/null; an import
    error still raises, and is printed once the descriptor is back."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _native_stderr_discarded():
    import keras  # noqa: E402
    from keras import ops  # noqa: E402


@keras.saving.register_keras_serializable(package="recsys")
class TwoTowerNet(keras.Model):
    def __init__(self, n_users, n_items, demo_sizes, item_genres, item_decade, item_logpop, item_logq,
                 item_words, item_known, item_text=None, dim=64, hidden=128, temperature=0.05, full_softmax=True,
                 content_weight=1.0, content_share=0.25, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.config_ = {"n_users": int(n_users), "n_items": int(n_items), "demo_sizes": [int(s) for s in demo_sizes],
                        "dim": int(dim), "hidden": int(hidden), "temperature": float(temperature),
                        "full_softmax": bool(full_softmax), "content_weight": float(content_weight),
                        "content_share": float(content_share)}
        self.content_weight = float(content_weight)
        self.content_share = float(content_share)
        self.seeds = keras.random.SeedGenerator(int(seed))
        self.full_softmax = bool(full_softmax)
        self.temperature = float(temperature)
        # Every initial weight from a seed of the net's own: an unseeded Keras initializer draws its seed from
        # Python's process-wide `random`, which another thread (Prefect's, a test's) can move while a fit
        # builds its net, so the same seed gave other weights on a busy machine.
        def own(k):
            return {"embeddings_initializer": keras.initializers.RandomUniform(-0.05, 0.05, seed=seed + k)}

        def dense(k):
            return {"kernel_initializer": keras.initializers.GlorotUniform(seed=seed + k)}

        self.user_id = keras.layers.Embedding(n_users + 1, dim, name=USER_ID, **own(10))  # 0 = unknown user
        self.demo = [keras.layers.Embedding(size, 16, name=f"demo_{k}", **own(20 + k))
                     for k, size in enumerate(demo_sizes)]
        self.bag_items = keras.layers.Embedding(n_items + 1, dim, name="bag_items", **own(11))  # 0 = padding
        self.user_mlp = [keras.layers.Dense(hidden, activation="relu", **dense(12)),
                         keras.layers.Dense(dim, **dense(13))]
        self.item_id = keras.layers.Embedding(n_items, dim, name=ITEM_ID, **own(14))
        self.decade = keras.layers.Embedding(N_DECADES, 8, name="decade", **own(15))
        self.item_mlp = [keras.layers.Dense(hidden, activation="relu", **dense(16)),
                         keras.layers.Dense(dim, **dense(17))]
        # A per-item bias outside the cosine: popularity is shared by everyone, and unit vectors alone
        # spend personalisation capacity to express it.
        self.item_bias = keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros", name="item_bias")
        self.bias_from_popularity = keras.layers.Dense(1, name="bias_from_popularity", **dense(18))
        # The content tower: what an item with no interactions is read with, from seeds of its own, so the
        # towers above start (and learn) the same with or without it.
        self.words = keras.layers.Embedding(BUCKETS + 1, 16, name="title_words", **own(1))  # 0 = padding
        self.content_decade = keras.layers.Embedding(N_DECADES, 8, name="content_decade", **own(2))
        self.content_mlp = [keras.layers.Dense(hidden, activation="relu", **dense(3)),
                            keras.layers.Dense(dim, **dense(4))]
        self.content_bias = keras.layers.Dense(1, name="content_bias", **dense(5))
        for layer in (self.words, self.content_decade, *self.content_mlp, self.content_bias):
            layer.trainable = self.content_weight > 0  # without its loss it has nothing to learn
        # Item side features live in the model as constants, so the item tower needs only an index.
        self.genres = ops.convert_to_tensor(np.asarray(item_genres, dtype="float32"))
        self.decades = ops.convert_to_tensor(np.asarray(item_decade, dtype="int32"))
        self.logpop = ops.convert_to_tensor(np.asarray(item_logpop, dtype="float32")[:, None])
        self.item_words = ops.convert_to_tensor(np.asarray(item_words, dtype="int32"))  # (items, MAX_TOKENS)
        self.item_known = ops.convert_to_tensor(np.asarray(item_known, dtype="bool"))  # any training interaction
        # The pretrained encoder's text vector of each item (width 0 when it is off): content tower only.
        text = np.zeros((len(item_genres), 0)) if item_text is None else item_text
        self.item_text = ops.convert_to_tensor(np.asarray(text, dtype="float32"))
        # log of each item's sampling probability as an in-batch negative (logQ correction, Yi et al. 2019):
        # without it in-batch softmax learns p(i|u)/p(i) and buries popular items.
        self.logq = ops.convert_to_tensor(np.asarray(item_logq, dtype="float32"))

    def user_tower(self, user, demo, bag):
        parts = [self.user_id(user)]
        parts += [layer(demo[:, k]) for k, layer in enumerate(self.demo)]
        mask = ops.cast(ops.greater(bag, 0), "float32")[:, :, None]
        bag_sum = ops.sum(self.bag_items(bag) * mask, axis=1)
        count = ops.sum(mask, axis=1)
        # The mean alone cannot tell one known item from twenty: the size says how far to trust it.
        parts += [bag_sum / ops.maximum(count, 1.0), ops.log1p(count)]
        x = ops.concatenate(parts, axis=-1)
        for layer in self.user_mlp:
            x = layer(x)
        return ops.normalize(x, axis=-1)

    def item_tower(self, item):
        x = ops.concatenate([
            self.item_id(item),
            ops.take(self.genres, item, axis=0),
            self.decade(ops.take(self.decades, item, axis=0)),
            ops.take(self.logpop, item, axis=0),
        ], axis=-1)
        for layer in self.item_mlp:
            x = layer(x)
        bias = self.item_bias(item) + self.bias_from_popularity(ops.take(self.logpop, item, axis=0))
        return ops.normalize(x, axis=-1), ops.squeeze(bias, -1)

    def content_tower(self, item):
        """An item from its content alone (no id, no popularity): genres, decade, title words and the
        pretrained text vector."""
        words = ops.take(self.item_words, item, axis=0)
        mask = ops.cast(ops.greater(words, 0), "float32")[:, :, None]
        title = ops.sum(self.words(words) * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)
        x = ops.concatenate([ops.take(self.genres, item, axis=0),
                             self.content_decade(ops.take(self.decades, item, axis=0)), title,
                             ops.take(self.item_text, item, axis=0)], axis=-1)
        bias = self.content_bias(x)
        for layer in self.content_mlp:
            x = layer(x)
        return ops.normalize(x, axis=-1), ops.squeeze(bias, -1)

    def _logits(self, u, v, bias, item):
        if self.full_softmax:  # every item is a candidate: the label is the item index
            logits = ops.matmul(u, ops.transpose(v)) / self.temperature + bias[None, :]
            # An item nobody interacted with is unknown, not a negative: it is left out of the softmax.
            return ops.where(self.item_known[None, :], logits, -1e9)
        logits = (ops.matmul(u, ops.transpose(v)) / self.temperature + bias[None, :]
                  - ops.take(self.logq, item, axis=0)[None, :])
        # Mask accidental hits: the same item elsewhere in the batch is not a negative.
        same = ops.equal(item[:, None], item[None, :])
        eye = ops.eye(ops.shape(item)[0], dtype="bool")
        return ops.where(ops.logical_and(same, ops.logical_not(eye)), -1e9, logits)

    def call(self, inputs, training=False):
        item = inputs["item"]
        candidates = ops.arange(self.config_["n_items"], dtype="int32") if self.full_softmax else item
        u = self.user_tower(inputs["user"], inputs["demo"], inputs["bag"])
        logits = self._logits(u, *self.item_tower(candidates), item)
        if training and self.content_weight > 0:
            # The content tower learns the same task against the same user vectors, in the same softmax: a
            # random share of the candidates is read by the content tower instead, among the others' fixed
            # logits, so its scores are on the item tower's scale (as a new item competes with known ones
            # when served). Gradients reach the content tower only: the warm path learns what it learns
            # without it (and the validation loss is the item tower's alone).
            content = self._logits(ops.stop_gradient(u), *self.content_tower(candidates), item)
            swap = keras.random.uniform(ops.shape(candidates), seed=self.seeds) < self.content_share
            mixed = ops.where(swap[None, :], content, ops.stop_gradient(logits))
            labels = item if self.full_softmax else ops.arange(ops.shape(item)[0], dtype="int32")
            self.add_loss(self.content_weight * ops.mean(
                keras.losses.sparse_categorical_crossentropy(labels, mixed, from_logits=True)))
        return logits

    def get_config(self):
        return dict(self.config_)


class LazyAdam(keras.optimizers.Adam):
    """Adam whose embedding tables of at least ``lazy_rows`` rows are updated lazily: a step moves the moments
    and weights of the rows its batch touched, nothing else (TF Addons' ``LazyAdam``, which Keras 3 does not
    ship). Keras's Adam rewrites the whole table and both its moments every step: at 138k users x 64 that was
    most of a step (10.3k examples/s; lazily, under XLA, 25k). Smaller tables take Adam's own dense step, which
    is faster when a batch touches a good share of their rows. Only TensorFlow's gradients of a gather are
    sparse (``IndexedSlices``); on other backends every step is Adam's.

    The batch's rows are deduplicated with shapes fixed at trace time (sorted, summed per row, the unused tail
    masked), so the step compiles under XLA; the update is exact Adam for each touched row."""

    def __init__(self, *args, lazy_rows: int = 20_000, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_rows = int(lazy_rows)

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or len(variable.shape) != 2 or variable.shape[0] < self.lazy_rows:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf  # the backend in use (checked above): its sparse gradient type and scatter ops

        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        n = tf.shape(gradient.indices)[0]
        order = tf.argsort(gradient.indices, stable=True)
        ids = tf.gather(gradient.indices, order)
        segment = tf.cumsum(tf.cast(tf.concat([[True], tf.not_equal(ids[1:], ids[:-1])], 0), tf.int32)) - 1
        grad = tf.math.unsorted_segment_sum(tf.gather(tf.cast(gradient.values, variable.dtype), order), segment, n)
        used = tf.range(n) <= segment[-1]  # one slot per distinct row; the tail is padding
        rows = tf.where(used, tf.math.unsorted_segment_max(ids, segment, n), 0)
        keep = tf.cast(used, variable.dtype)[:, None]
        step = tf.cast(self.iterations + 1, variable.dtype)
        alpha = (tf.cast(learning_rate, variable.dtype) * tf.sqrt(1 - self.beta_2**step)
                 / (1 - self.beta_1**step))
        m = self._momentums[self._get_variable_index(variable)].value
        v = self._velocities[self._get_variable_index(variable)].value
        m_old, v_old = tf.gather(m, rows), tf.gather(v, rows)
        m_new = self.beta_1 * m_old + (1 - self.beta_1) * grad
        v_new = self.beta_2 * v_old + (1 - self.beta_2) * tf.square(grad)
        # Added, not assigned: the padding slots all point at row 0, and add nothing.
        m.scatter_add(tf.IndexedSlices((m_new - m_old) * keep, rows))
        v.scatter_add(tf.IndexedSlices((v_new - v_old) * keep, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_new / (tf.sqrt(v_new) + self.epsilon) * keep, rows))

    def get_config(self):
        return {**super().get_config(), "lazy_rows": self.lazy_rows}


def numpy_tensor(array: np.ndarray):
    """A TensorFlow tensor over a copy of ``array`` in NumPy's memory (DLPack, no copy into TensorFlow's
    allocator), freed with the tensor. TensorFlow's CPU allocator with its oneDNN kernels on (this machine's
    default, and 1.5x the two-tower's XLA examples/s) keeps what a large tensor gave back for its next tensors,
    never for the process: the training tables a fit's input pipeline reads (every user's items and their order
    in time, 8 bytes an interaction, copied again where tf.data's graph rewrites serialise what its functions
    capture) stayed after every fit, +1.5 GiB at 30 M interactions under the rest of the night. TensorFlow
    reads a tensor's memory only at its alignment (64 bytes), which the copy is given."""
    import tensorflow as tf  # the TensorFlow backend's own (the callers run only under it)

    buffer = np.empty(array.nbytes + TENSOR_ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % TENSOR_ALIGNMENT
    aligned = buffer[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    aligned[...] = array
    return tf.experimental.dlpack.from_dlpack(aligned.__dlpack__())


def unserialised():
    """tf.data options without the default static optimisations: they rewrite the pipeline through its
    serialised graph, in which every tensor a function captures becomes a constant, a copy in TensorFlow's
    allocator (see :func:`numpy_tensor`); this pipeline is already one map a batch with a prefetch."""
    import tensorflow as tf  # the TensorFlow backend's own (the callers run only under it)

    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return options


class Examples:
    """The two-tower's examples, the (user row, item column) pairs stored in the training CSR, addressed by their
    position in its order without being materialised: a fit reads at most its budget of them (2 M) however many
    there are; at 100 M interactions every pair's row and column, their compacted copies and tensors were ~5-6 GB
    of a fit's peak. ``held_out`` are the sorted positions kept for validation: the training examples are the
    others (``training=True``), the validation examples those alone."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, held_out: np.ndarray, training: bool):
        self.indptr, self.indices, self.held_out, self.training = indptr, indices, held_out, training
        self._before = held_out - np.arange(len(held_out))  # training examples before each held-out one

    @classmethod
    def split(cls, indptr: np.ndarray, indices: np.ndarray, share: float, seed: int) -> tuple[Examples, Examples]:
        """(training, validation): each pair held out with probability ``share`` by one uniform draw in the CSR's
        order (``default_rng(seed).random(n) < share``, drawn in chunks: the same positions, no n-long array)."""
        rng, n = np.random.default_rng(seed), len(indices)
        held = [lo + np.flatnonzero(rng.random(min(HELD_OUT_CHUNK, n - lo)) < share)
                for lo in range(0, n, HELD_OUT_CHUNK)]
        held_out = np.concatenate(held) if held else np.zeros(0, np.int64)
        return cls(indptr, indices, held_out, True), cls(indptr, indices, held_out, False)

    def __len__(self) -> int:
        return len(self.indices) - len(self.held_out) if self.training else len(self.held_out)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The user rows and item columns of the examples at ``rows`` (0 .. len - 1)."""
        rows = np.asarray(rows, np.int64)
        if self.training:
            positions = rows + np.searchsorted(self._before, rows, side="right")
        else:
            positions = self.held_out[rows]
        users = np.searchsorted(self.indptr, positions, side="right") - 1
        return users.astype(np.int32), self.indices[positions].astype(np.int32)

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.take(np.arange(len(self)))


class TrainingBatches(keras.utils.PyDataset):
    """The two-tower's training (or validation) batches in NumPy, for a backend without ``tf.data`` (JAX on a
    GPU machine, where TensorFlow is not installed): the same examples as the ``tf.data`` pipeline of
    ``TwoTower._dataset``, by the same rules (each epoch ``steps`` batches of distinct examples in random order;
    bags sampled from the history or the user's first items; DropoutNet-style id and bag dropout; the target
    never in its own bag), from NumPy random streams seeded by (seed, epoch, step), so the same seed gives
    the same batches. The random numbers differ from ``tf.data``'s: the two paths train alike, not bit for bit.

    ``examples`` are the pairs (:class:`Examples`), ``indptr``/``indices``/``first_items`` the training CSR and its
    rows in time order, ``demographics`` the codes the user tower reads per training user; ``steps`` batches an
    epoch (0: every full batch, in order).
    """

    def __init__(self, examples: Examples, indptr, indices, first_items, demographics, params: dict, batch: int,
                 seed: int, full_softmax: bool, shuffle: bool, steps: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.examples = examples
        self.indptr, self.indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int32)
        self.first_items, self.demographics = np.asarray(first_items, np.int32), np.asarray(demographics, np.int32)
        self.params, self.batch, self.seed = params, int(batch), int(seed)
        self.full_softmax, self.shuffle = bool(full_softmax), bool(shuffle)
        self.steps = int(steps) if shuffle else len(examples) // self.batch
        self.epoch, self._order = 0, None

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch, self._order = self.epoch + 1, None

    def _rows(self, step: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(step * self.batch, (step + 1) * self.batch)
        if self._order is None:  # this epoch's rows: distinct, in random order (no permutation of them all)
            self._order = np.random.default_rng((self.seed, self.epoch)).choice(
                len(self.examples), self.steps * self.batch, replace=False)
        return self._order[step * self.batch:(step + 1) * self.batch]

    def __getitem__(self, step: int):
        if not 0 <= step < self.steps:
            raise IndexError(step)  # the end of an epoch, for a plain ``for batch in batches``
        p, n, bag_size = self.params, self.batch, int(self.params["bag_size"])
        rows = self._rows(int(step))
        u, i = self.examples.take(rows)
        rng = np.random.default_rng((self.seed, self.epoch, int(step)))
        start = self.indptr[u]
        degree = self.indptr[u + 1] - start
        sampled = self.indices[start[:, None] + np.floor(rng.random((n, bag_size)) * degree[:, None]).astype(np.int64)]
        slot = np.arange(bag_size)[None, :]
        first = self.first_items[start[:, None] + np.minimum(slot, degree[:, None] - 1)]
        first = np.where(slot < degree[:, None], first + 1, 0)
        bag = np.where(rng.random((n, 1)) < p["first_items_share"], first, sampled + 1)
        keep = slot < np.floor(rng.random((n, 1)) * (bag_size + 1))
        keep &= bag != (i + 1)[:, None]  # never the target itself
        keep &= rng.random((n, 1)) >= p["bag_dropout"]
        user = np.where(rng.random(n) < p["id_dropout"], 0, u + 1)
        features = {"user": user.astype(np.int32), "demo": self.demographics[u], "bag": np.where(keep, bag, 0).astype(
            np.int32), "item": i}
        return features, (i if self.full_softmax else np.arange(n, dtype=np.int32))


def first_items_by_time(interactions, user_ids: np.ndarray, item_ids: np.ndarray,
                        chunk_rows: int | None = None) -> np.ndarray:
    """Each user's distinct items in the order they were first taken (ties: lower column), laid out like
    the rows of the training CSR (same ``indptr``: a row's items are the same, in time order).

    Each (user, item) pair's first time by a hash group-by, then one multithreaded sort of the pairs by (user,
    first time, item), in Polars: a lexsort of every row and a unique of the pair keys cost a 16 M fit ~10 s.
    Users are independent: the pairs are grouped and sorted for users of about ``chunk_rows`` interactions at a
    time (:data:`FIRST_ITEMS_CHUNK`), so the group-by's and the sort's working set is a chunk's, not every
    interaction's (all at once it was ~100 bytes an interaction: +3.1 GiB at 30 M, the two-tower fit's peak)."""
    chunk_rows = int(chunk_rows or FIRST_ITEMS_CHUNK)
    n_items = len(item_ids)
    rows = positions_of(user_ids, interactions[USER_ID].to_numpy()).astype(np.int32)
    cols = positions_of(item_ids, interactions[ITEM_ID].to_numpy()).astype(np.int32)
    times = interactions[TIMESTAMP].to_physical().to_numpy()
    per_user = np.cumsum(np.bincount(rows, minlength=len(user_ids)))
    bounds = np.unique(np.searchsorted(per_user, np.arange(chunk_rows, len(rows), chunk_rows), side="left") + 1)
    grouped = bool(np.all(rows[1:] >= rows[:-1]))  # a snapshot's rows come by user: a chunk is a slice
    out = []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(user_ids)], strict=True):
        if lo >= hi:
            continue
        take = (slice(*np.searchsorted(rows, [lo, hi])) if grouped
                else np.flatnonzero((rows >= lo) & (rows < hi)))
        pairs = pl.DataFrame({"pair": rows[take].astype(np.int64) * n_items + cols[take], "first": times[take]})
        del take
        ordered = (pairs.lazy().group_by("pair").agg(pl.col("first").min())
                   .sort(pl.col("pair") // n_items, "first", "pair").collect())
        del pairs
        out.append((ordered["pair"].to_numpy() % n_items).astype(np.int32))
    return np.concatenate(out) if out else np.zeros(0, np.int32)
