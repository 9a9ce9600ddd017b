"""The two-tower's NumPy training input (what feeds it on a backend without ``tf.data``, JAX on a GPU machine):
the same examples by the same rules as the ``tf.data`` pipeline, and a fit fed by it learns as much."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import towers
from models.registry import build

FAST = {"dim": 8, "hidden": 16, "batch_size": 128}


@pytest.fixture(scope="module")
def fitted(small_data):
    train, uf, itf, _ = small_data
    return build("two_tower", **FAST, epochs=1, validation_share=0.0, min_validation_examples=0).fit(
        train, uf, itf, seed=3)


def _batches(model, source: str, epochs: int, steps: int, seed: int = 11):
    model.params["input"] = source
    examples, held_out = model._examples(seed)
    assert len(held_out) == 0
    users, items = examples.all()
    data = model._dataset(examples, 128, seed, shuffle=True, epochs=epochs, steps=steps)
    if source == "numpy":
        out = []
        for _ in range(epochs):
            out += [data[k] for k in range(len(data))]
            data.on_epoch_end()
        return users, items, out
    return users, items, [(({k: v.numpy() for k, v in x.items()}), y.numpy()) for x, y in data]


def test_numpy_batches_follow_the_pipelines_rules(fitted):
    users, items, batches = _batches(fitted, "numpy", epochs=2, steps=20)
    assert len(batches) == 40
    history = {u: set(fitted.train.indices[fitted.train.indptr[u]:fitted.train.indptr[u + 1]]) for u in range(
        len(fitted.user_ids))}
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    data = fitted._dataset(fitted._examples(11)[0], 128, 11, shuffle=True, epochs=2, steps=20)
    epochs = []
    for _ in range(2):  # each epoch: the first 20 batches of a fresh permutation, no example twice
        rows = np.concatenate([data._rows(k) for k in range(len(data))])
        assert len(np.unique(rows)) == len(rows) == 20 * 128
        epochs.append(rows)
        data.on_epoch_end()
    assert not np.array_equal(epochs[0], epochs[1])
    ids_dropped, bag_sizes = [], []
    for x, y in batches:
        assert np.array_equal(y, x["item"]) if fitted._full_softmax() else np.array_equal(y, np.arange(128))
        for user, demo, bag, item in zip(x["user"], x["demo"], x["bag"], x["item"], strict=True):
            ids_dropped.append(user == 0)
            known = bag[bag > 0] - 1
            bag_sizes.append(len(known))
            assert item not in known  # never the target itself
            if user:
                assert (user - 1, item) in pairs and set(known) <= history[user - 1]
                assert np.array_equal(demo, fitted.train_demographics[user - 1])
    # DropoutNet-style rates as the parameters say (id dropout 0.7 of 5,120 examples: +-4 standard errors).
    assert abs(np.mean(ids_dropped) - 0.7) < 4 * np.sqrt(0.21 / len(ids_dropped))
    assert 0 < np.mean(np.equal(bag_sizes, 0)) < 1
    # The same seed, the same batches.
    again = _batches(fitted, "numpy", epochs=2, steps=20)[2]
    for (a, _), (b, _) in zip(batches, again, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_examples_are_the_training_pairs_by_position_and_only_those_read_become_tensors(fitted, monkeypatch):
    """:class:`models.towers.Examples` addresses the CSR's pairs without materialising them: the training
    examples are every stored pair but the held-out ones, in the CSR's order; the held-out ones are those drawn
    by ``default_rng(seed).random(n) < share`` (in chunks: the same draw). The ``tf.data`` batches are each
    epoch's first batches of a stateless shuffle of all training examples, as when every pair was a tensor."""
    import tensorflow as tf  # the backend this suite runs (heavy: imported where a test reads its shuffle)

    monkeypatch.setattr(towers, "HELD_OUT_CHUNK", 97)  # many chunks on a small CSR
    csr = fitted.train
    coo = csr.tocoo()
    training, held_out = towers.Examples.split(csr.indptr, csr.indices, 0.1, seed=5)
    drawn = np.random.default_rng(5).random(csr.nnz) < 0.1
    assert np.array_equal(held_out.all()[0], coo.row[drawn]) and np.array_equal(held_out.all()[1], coo.col[drawn])
    assert np.array_equal(training.all()[0], coo.row[~drawn]) and np.array_equal(training.all()[1], coo.col[~drawn])
    assert len(training) + len(held_out) == csr.nnz and 0 < len(held_out) < 0.2 * csr.nnz
    rows = np.array([0, 3, len(training) - 1, 3])
    assert np.array_equal(np.stack(training.take(rows)), np.stack([coo.row[~drawn][rows], coo.col[~drawn][rows]]))

    fitted.params["input"] = "tf.data"
    data = list(fitted._dataset(training, 128, 11, shuffle=True, epochs=2, steps=5))
    users, items = coo.row[~drawn], coo.col[~drawn]
    for epoch in range(2):
        order = tf.random.experimental.index_shuffle(tf.range(5 * 128, dtype=tf.int64), seed=[11, epoch],
                                                     max_index=len(training) - 1).numpy()
        for step in range(5):
            x, _ = data[epoch * 5 + step]
            rows = order[step * 128:(step + 1) * 128]
            assert np.array_equal(x["item"].numpy(), items[rows])
            read = x["user"].numpy()
            assert np.array_equal(read[read > 0] - 1, users[rows][read > 0])  # ids not dropped


def test_the_input_pipelines_tables_are_numpy_memory_given_back_with_them(tmp_path):
    """The tables a fit's input pipeline reads are TensorFlow tensors over aligned NumPy memory, and the pipeline
    is not serialised for graph rewrites: nothing of them stays in TensorFlow's allocator after the fit (with
    ``tf.constant`` and the default rewrites a 240 MB table left 480 MB behind). In a fresh process, so that
    the allocator holds nothing from other tests; glibc's count of what is allocated, not a time."""
    script = (
        "import gc, numpy as np, tensorflow as tf\n"
        "from recsys import memory\n"
        "from models.towers import numpy_tensor, unserialised\n"
        "def in_use():\n"
        "    gc.collect(); return memory.heap_gib()['in_use']\n"
        "for dtype, shape in ((np.int32, (0,)), (np.int64, (7,)), (np.int32, (5, 3))):\n"
        "    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)\n"
        "    t = numpy_tensor(a[::1])\n"
        "    assert t.dtype == a.dtype and np.array_equal(t.numpy(), a), (t, a)\n"
        "before = in_use()\n"
        "table = numpy_tensor(np.arange(60_000_000, dtype=np.int32) % 1000)\n"
        "ds = tf.data.Dataset.range(50).map(lambda i: tf.gather(table, tf.range(i * 1000, (i + 1) * 1000)))\n"
        "ds = ds.prefetch(2).with_options(unserialised())\n"
        "assert sum(int(x[0]) for x in ds) == sum(i * 1000 % 1000 for i in range(50))\n"
        "del ds, table\n"
        "left = in_use() - before\n"
        "assert left < 0.05, f'{left:.2f} GiB of a 0.22 GiB table stayed allocated'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_numpy_and_tf_data_batches_agree_in_distribution(fitted):
    """The two paths draw different random numbers by the same rules: their batches' statistics agree."""
    stats = {}
    for source in ("numpy", "tf.data"):
        _, _, batches = _batches(fitted, source, epochs=1, steps=40)
        x = {k: np.concatenate([b[0][k] for b in batches]) for k in ("user", "bag", "item")}
        sizes = (x["bag"] > 0).sum(axis=1)
        stats[source] = {"id_dropout": np.mean(x["user"] == 0), "empty_bag": np.mean(sizes == 0),
                         "mean_bag": sizes.mean(), "distinct_items": len(np.unique(x["item"]))}
    for key, value in stats["numpy"].items():
        assert value == pytest.approx(stats["tf.data"][key], rel=0.15), (key, stats)


def test_a_numpy_fed_fit_learns_like_the_tf_data_fit(small_data):
    train, uf, itf, _ = small_data
    fits = {source: build("two_tower", **FAST, epochs=4, input=source).fit(train, uf, itf, seed=3)
            for source in ("numpy", "auto")}
    assert fits["auto"].training_["best_val_loss"] is not None
    loss = {s: f.training_["best_val_loss"] for s, f in fits.items()}
    assert loss["numpy"] == pytest.approx(loss["auto"], rel=0.02), loss
    again = build("two_tower", **FAST, epochs=4, input="numpy").fit(train, uf, itf, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again.net.get_weights(), fits["numpy"].net.get_weights(),
                                                    strict=True))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (an option for GPUs)")
def test_the_model_trains_on_the_jax_backend(small_synthetic, tmp_path):
    """``KERAS_BACKEND=jax``: the same model, fed NumPy batches, every step compiled."""
    script = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "import keras, polars as pl\n"
        "from pathlib import Path\n"
        "from model_helpers import featurize, load_synthetic\n"
        "from models.registry import build\n"
        "inter, users, items = load_synthetic(Path(sys.argv[2]))\n"
        "uf, itf = featurize(inter, users, items)\n"
        "m = build('two_tower', dim=8, hidden=16, batch_size=128, epochs=2).fit(inter, uf, itf, seed=3)\n"
        "assert keras.backend.backend() == 'jax' and m.training_['jit_compile'], m.training_\n"
        "assert m.training_['final_loss'] < m.training_['first_loss'], m.training_\n"
        "print('ok', m.summary())\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(small_synthetic)],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
