"""One contract, every model: fit, recommend, exclude seen, unknown users, save/load, determinism."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import polars as pl
import pytest
from model_helpers import fit_model

from models.blend import WARM
from models.registry import available, build, load, load_many

N = 10


@pytest.fixture(scope="module", params=available())
def fitted(request, small_data):
    train, uf, itf, _ = small_data
    model = fit_model(request.param, train, uf, itf, seed=11)
    return request.param, model


def warm_users(small_data, n=25):
    return np.sort(small_data[0]["user_id"].unique().to_numpy())[:n]


def test_recommend_shape_ranks_and_order(fitted, small_data):
    name, model = fitted
    users = warm_users(small_data)
    recs = model.recommend(users, n=N)
    assert recs.columns == ["user_id", "item_id", "rank", "score"]
    per_user = recs.group_by("user_id").agg(pl.len(), pl.col("rank").sort(), pl.col("score"),
                                            pl.col("item_id").n_unique())
    assert per_user.height == len(users)
    assert (per_user["len"] == N).all() and (per_user["item_id"] == N).all()
    assert per_user["rank"].to_list() == [list(range(1, N + 1))] * len(users)
    for scores in recs.sort("user_id", "rank").group_by("user_id", maintain_order=True).agg("score")["score"]:
        assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)), name


def test_excludes_seen_items_unless_asked(fitted, small_data):
    name, model = fitted
    train = small_data[0]
    users = warm_users(small_data)
    recs = model.recommend(users, n=N)
    seen = recs.join(train.select("user_id", "item_id"), on=["user_id", "item_id"], how="semi")
    assert seen.height == 0, name
    with_seen = model.recommend(users, n=N, exclude_seen=False)
    assert with_seen.group_by("user_id").len()["len"].min() == N


def test_unknown_users_zero_and_k_shot(fitted, small_data):
    name, model = fitted
    _, _, itf, cold = small_data
    strangers = np.array([10**9, 10**9 + 1])  # in neither interactions nor user features
    zero = model.recommend(np.concatenate([cold[:5], strangers]), n=N)
    assert zero.group_by("user_id").len()["len"].to_list() == [N] * 7
    known = itf["item_id"].head(3).to_numpy()
    history = pl.DataFrame({"user_id": [cold[0]] * 3, "item_id": known})
    k_shot = model.recommend(cold[:1], n=N, history=history)
    assert k_shot.height == N
    assert not set(known) & set(k_shot["item_id"].to_list()), f"{name} recommended a known item"


def test_save_load_round_trip_is_identical(fitted, small_data, tmp_path):
    name, model = fitted
    users = np.concatenate([warm_users(small_data), small_data[3][:5]])
    before = model.recommend(users, n=N)
    path = model.save(tmp_path / name)
    meta = json.loads((path / "metadata.json").read_text())
    assert {"params", "seed", "data_fingerprint", "training_seconds", "versions"} <= meta.keys()
    assert meta["seed"] == 11
    after = load(path).recommend(users, n=N)
    assert before.equals(after), name


def test_same_seed_same_recommendations(fitted, small_data):
    name, model = fitted
    train, uf, itf, cold = small_data
    again = fit_model(name, train, uf, itf, seed=11)
    users = np.concatenate([warm_users(small_data), cold[:5]])
    assert model.recommend(users, n=N).equals(again.recommend(users, n=N)), name


def test_loaded_models_are_freed_without_the_cyclic_gc(small_data, tmp_path):
    """A slice's models must go with its task: at 20 M one EASE is 2.9 GB, and models kept alive by a reference
    cycle until the cyclic GC ran piled up slice after slice (the night was killed for memory). Loaded
    together, a hybrid and its components are freed by reference counting alone."""
    train, uf, itf, _ = small_data
    components = {c: fit_model(c, train, uf, itf, seed=3)
                  for c in ("ease", "popularity", "content_knn", "new_item_audience")}
    hybrid = (build("hybrid", components=["ease", "popularity"], wide_components=[],
                    new_item_weights={"content_knn": 1.0})
              .use_components(components).use_weights({b: [0.5, 0.5] for b in range(WARM + 1)})
              .fit(train, uf, itf, seed=3))
    paths = {name: model.save(tmp_path / name) for name, model in {**components, "hybrid": hybrid}.items()}
    gc.collect()
    gc.disable()
    try:
        loaded = load_many(paths)
        assert loaded["hybrid"].components["ease"] is loaded["ease"]  # each folder loaded once
        refs = {name: weakref.ref(model) for name, model in loaded.items()}
        del loaded
        alive = [name for name, ref in refs.items() if ref() is not None]
    finally:
        gc.enable()
    assert not alive, f"held by a reference cycle after their last reference went: {alive}"


def test_models_of_one_fold_loaded_together_hold_one_copy_of_their_training_data(small_data, tmp_path):
    """Models saved from the same training data hold byte-identical training matrices and encodings; loaded
    together (a slice's models, a hybrid and its components) they share one copy. A model trained on other
    data keeps its own, and each scores as it did before saving."""
    train, uf, itf, _ = small_data
    components = {c: fit_model(c, train, uf, itf, seed=3) for c in ("ease", "popularity", "content_knn")}
    hybrid = (build("hybrid", components=["ease", "popularity"], wide_components=[], audience_model="",
                    new_item_weights={"content_knn": 1.0})
              .use_components(components).use_weights({b: [0.5, 0.5] for b in range(WARM + 1)})
              .fit(train, uf, itf, seed=3))
    other_train = train.filter(pl.col("user_id") != train["user_id"][0])
    other = fit_model("popularity", other_train, uf, itf, seed=3)
    paths = {name: model.save(tmp_path / name) for name, model in
             {**components, "hybrid": hybrid, "other": other}.items()}

    loaded = load_many(paths)
    first = loaded["ease"]
    for name in ("popularity", "content_knn", "hybrid"):
        assert loaded[name].train is first.train, name
        assert loaded[name].item_text is first.item_text and loaded[name].item_ids is first.item_ids, name
    assert loaded["other"].train is not first.train
    assert loaded["other"].train.nnz < first.train.nnz

    alone = load(paths["hybrid"])  # a hybrid loaded by itself shares with its own components
    assert all(c.train is alone.train for c in alone.components.values())
    users = warm_users(small_data)
    for name, model in {**components, "hybrid": hybrid, "other": other}.items():
        assert loaded[name].recommend(users, n=N).equals(model.recommend(users, n=N)), name


def test_models_of_one_fold_store_their_shared_files_once_and_each_folder_stays_whole(small_data, tmp_path,
                                                                                      monkeypatch):
    """Saved through a fold's store, the training matrix and encoding every model of the fold holds byte for
    byte are written once and hard-linked into each model's folder; a model of other data has its own. A
    folder is whole on its own: removing the store or another model loses nothing, and where hard links
    cannot be made the file is copied."""
    train, uf, itf, _ = small_data
    store = tmp_path / "fold" / ".files"
    models = {c: fit_model(c, train, uf, itf, seed=3) for c in ("popularity", "ease", "content_knn")}
    models["other"] = fit_model("popularity", train.filter(pl.col("user_id") != train["user_id"][0]), uf, itf,
                                seed=3)
    paths = {name: model.save(tmp_path / "fold" / name, store=store) for name, model in models.items()}

    for file in ("train.npz", "encoding.npz"):
        inodes = {name: (paths[name] / file).stat().st_ino for name in paths}
        assert inodes["popularity"] == inodes["ease"] == inodes["content_knn"] != inodes["other"], file
    assert sorted(p.suffix for p in store.iterdir()) == [".npz"] * 4  # two contents of each file, no temp files
    assert (paths["ease"] / "train.npz").read_bytes() == models["ease"].save(tmp_path / "plain").joinpath(
        "train.npz").read_bytes()  # the same bytes as a save without a store

    loaded = load_many(paths)  # one file under several names is read once, and held once
    assert loaded["ease"].train is loaded["popularity"].train is loaded["content_knn"].train
    assert loaded["ease"].item_ids is loaded["content_knn"].item_ids
    assert loaded["other"].train is not loaded["popularity"].train
    users = warm_users(small_data)
    before = {name: model.recommend(users, n=N) for name, model in models.items()}
    assert all(loaded[name].recommend(users, n=N).equals(before[name]) for name in models)
    del loaded
    for leftover in store.iterdir():
        leftover.unlink()
    store.rmdir()
    for name in ("popularity", "other"):
        assert load(paths[name]).recommend(users, n=N).equals(before[name]), name

    def no_links(*args):
        raise OSError("hard links are not supported here")

    monkeypatch.setattr("os.link", no_links)
    copied = models["ease"].save(tmp_path / "elsewhere" / "ease", store=tmp_path / "elsewhere" / ".files")
    assert (copied / "train.npz").stat().st_nlink == 1
    assert load(copied).recommend(users, n=N).equals(before["ease"])
