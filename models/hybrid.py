"""A hybrid that blends a feature-based deep model, collaborative filtering and segment popularity.

The blend weights depend on how much history a user has: a user with no interactions is served by
features and popularity, a user with many by CF. Weights are tuned per history bucket on *validation
users* drawn from the training interactions (never from test users): their first k interactions by time
are revealed as history and the rest are the truth, as for cold users at evaluation time. Users seen in
training form one more bucket, tuned on other validation users who stay in training without their latest
20 % (the truth). The
components are then refitted on all training interactions.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl

from models.base import Recommender, UserBlock, data_fingerprint
from models.ranking import ndcg_from_hits, standardize_rows, top_k_indices

BUCKET_EDGES = (0, 1, 3, 5, 10, 20)  # bucket b holds history lengths in [edge_b, edge_b+1)
WARM = len(BUCKET_EDGES)  # one more bucket: users seen in training (tuned on warm validation users)
WARM_TRUTH_SHARE = 0.2


def bucket_of(history_length: np.ndarray, in_training: np.ndarray | None = None) -> np.ndarray:
    buckets = np.searchsorted(np.asarray(BUCKET_EDGES), history_length, side="right") - 1
    if in_training is not None:
        buckets = np.where(in_training, WARM, buckets)
    return buckets


class Hybrid(Recommender):
    name = "hybrid"

    @classmethod
    def default_params(cls) -> dict:
        return {
            # item_knn next to EASE: on short (k-shot) histories neighbourhood CF generalises better,
            # on long ones EASE does; the tuned weights pick per history bucket.
            "components": ["two_tower", "ease", "item_knn", "segment_popularity"],
            "component_params": {},
            "validation_share": 0.25,
            "max_validation_users": 3000,  # bounds tuning memory: users x items x components floats
            "min_validation_history": 5,
            "grid_step": 0.2,
            "k": 10,
            "refit": True,
        }

    def fit(self, interactions, user_features, item_features, seed):
        self._frames = (interactions, user_features, item_features)
        try:
            return super().fit(interactions, user_features, item_features, seed)
        finally:
            del self._frames

    def use_fitted(self, models: dict[str, Recommender]) -> None:
        """Offer already-fitted components; one fitted on the same interactions is reused, not refitted."""
        self._prefitted = dict(models)

    def _component(self, name: str) -> Recommender:
        from models.registry import build

        return build(name, **self.params["component_params"].get(name, {}))

    def _fit(self, seed: int) -> None:
        interactions, user_features, item_features = self._frames
        p = self.params
        counts = interactions.group_by("user_id").len()
        eligible = counts.filter(pl.col("len") >= p["min_validation_history"] + 1)["user_id"].sort().to_numpy()
        rng = np.random.default_rng(seed)
        n_val = min(int(round(len(eligible) * p["validation_share"])), int(p["max_validation_users"]))
        picked = rng.permutation(eligible)
        # Cold validation users leave training entirely (their first k interactions are revealed when
        # tuning the k-shot buckets); warm validation users stay in training with all but their latest
        # interactions, which tune the warm bucket as true warm users.
        cold_users = np.sort(picked[:n_val])
        warm_users = np.sort(picked[n_val:2 * n_val])
        ordered = interactions.sort("user_id", "ts", "item_id").with_columns(
            position=pl.int_range(pl.len()).over("user_id"), n=pl.len().over("user_id"))
        warm_rows = ordered.filter(pl.col("user_id").is_in(warm_users))
        warm_truth = warm_rows.filter(pl.col("position") >= (pl.col("n") * (1 - WARM_TRUTH_SHARE)).ceil())
        fit_part = (ordered.filter(~pl.col("user_id").is_in(cold_users))
                    .join(warm_truth.select("user_id", "item_id", "ts"), on=["user_id", "item_id", "ts"], how="anti")
                    .drop("position", "n"))
        val_part = ordered.filter(pl.col("user_id").is_in(cold_users))
        cases = [(str(k), cold_users, val_part.filter(pl.col("position") < k).drop("position", "n"),
                  val_part.filter(pl.col("position") >= k).drop("position", "n"), k > 0)
                 for k in BUCKET_EDGES]
        warm_known = warm_rows.join(warm_truth.select("user_id", "item_id", "ts"), on=["user_id", "item_id", "ts"],
                                    how="anti").drop("position", "n")
        cases.append(("warm", warm_users, warm_known, warm_truth.drop("position", "n"), False))

        components = {name: self._component(name).fit(fit_part, user_features, item_features, seed)
                      for name in p["components"]}
        self.weights, self.tuning = self._tune(components, cases)
        if p["refit"]:
            fingerprint = data_fingerprint(interactions)
            prefitted = getattr(self, "_prefitted", {})
            components = {}
            for name in p["components"]:
                ready = prefitted.get(name)
                same = (ready is not None and ready.meta.get("data_fingerprint") == fingerprint
                        and ready.seed == seed and ready.params == self._component(name).params)
                components[name] = ready if same else self._component(name).fit(
                    interactions, user_features, item_features, seed)
        self.components = components

    def _grid(self) -> list[tuple[float, ...]]:
        steps = int(round(1 / self.params["grid_step"]))
        n = len(self.params["components"])
        return [tuple(c / steps for c in combo) for combo in itertools.product(range(steps + 1), repeat=n)
                if sum(combo) == steps]

    def _tune(self, components: dict[str, Recommender], cases: list):
        """Per bucket, the grid weights with the best nDCG@k on that bucket's validation case.

        A case is (label, users, known interactions, truth, pass the known interactions as history): cold
        cases pass their revealed items as history; the warm case's users are in training already.
        """
        names = list(components)
        grid = self._grid()
        weights: dict[int, list[float]] = {}
        tuning: dict[str, dict] = {}
        default = tuple(1.0 if i == 0 else 0.0 for i in range(len(names)))
        for b, (label, case_users, known, truth, as_history) in enumerate(cases):
            users = np.intersect1d(case_users, truth["user_id"].unique().to_numpy())
            if len(users) == 0:
                weights[b] = list(default)
                continue
            history = known if (as_history and known.height) else None
            z, relevant = [], None
            for name in names:
                model = components[name]
                scores = self._align(model, model.score_users(users, history))
                seen = self._history_mask(users, known if known.height else None)
                scores[seen] = -np.inf
                z.append(standardize_rows(scores))
                if relevant is None:
                    relevant = self._truth_matrix(users, truth)
            n_rel = relevant.sum(axis=1).astype(np.int64)
            # A component that cannot rank these users at all (e.g. CF with no history) gets no weight,
            # so that ties in the grid do not hand it weight that means nothing.
            silent = [not np.any(np.where(np.isfinite(zi), zi, 0.0)) for zi in z]
            candidates = [w for w in grid if not any(wi > 0 and quiet for wi, quiet in zip(w, silent, strict=True))]
            candidates = candidates or grid
            results = []
            for w in candidates:
                blend = sum(wi * zi for wi, zi in zip(w, z, strict=True) if wi > 0)
                top = top_k_indices(blend, self.params["k"])
                hits = np.take_along_axis(relevant, top, axis=1).astype(np.float64)
                results.append(float(ndcg_from_hits(hits, n_rel).mean()))
            best = int(np.argmax(results))  # first maximum in grid order: deterministic
            weights[b] = list(candidates[best])
            tuning[label] = {
                "users": int(len(users)), "weights": dict(zip(names, candidates[best], strict=True)),
                "ndcg_blend": results[best],
                "ndcg_components": {name: self._single(z[i], relevant, n_rel) for i, name in enumerate(names)},
            }
        return weights, tuning

    def _single(self, z: np.ndarray, relevant: np.ndarray, n_rel: np.ndarray) -> float:
        hits = np.take_along_axis(relevant, top_k_indices(z, self.params["k"]), axis=1).astype(np.float64)
        return float(ndcg_from_hits(hits, n_rel).mean())

    def _align(self, model: Recommender, scores: np.ndarray) -> np.ndarray:
        if np.array_equal(model.item_ids, self.item_ids):
            return scores
        out = np.full((scores.shape[0], len(self.item_ids)), -np.inf, dtype=np.float32)
        pos = np.searchsorted(self.item_ids, model.item_ids)
        ok = (pos < len(self.item_ids)) & (self.item_ids[np.clip(pos, 0, len(self.item_ids) - 1)] == model.item_ids)
        out[:, pos[ok]] = scores[:, ok]
        return out

    def _history_mask(self, users: np.ndarray, history: pl.DataFrame | None) -> np.ndarray:
        return self._history_matrix(users, history).toarray() > 0

    def _truth_matrix(self, users: np.ndarray, truth: pl.DataFrame) -> np.ndarray:
        return self._history_matrix(users, truth).toarray() > 0

    def score_block(self, users: UserBlock) -> np.ndarray:
        buckets = bucket_of(users.history_length, users.train_rows >= 0)
        z = [standardize_rows(np.asarray(self.components[name].score_block(users), dtype=np.float32))
             for name in self.params["components"]]
        w = np.array([self.weights[int(b)] for b in buckets], dtype=np.float32)  # (users, components)
        out = np.zeros_like(z[0])
        for j, zj in enumerate(z):
            out += w[:, j:j + 1] * np.where(np.isfinite(zj), zj, 0.0)
        return out

    def _save_state(self, path: Path) -> None:
        for name, model in self.components.items():
            model.save(path / "components" / name)
        (path / "weights.json").write_text(json.dumps({"weights": {str(b): w for b, w in self.weights.items()},
                                                       "tuning": self.tuning}, indent=2))

    def _load_state(self, path: Path) -> None:
        from models.registry import load

        self.components = {name: load(path / "components" / name) for name in self.params["components"]}
        saved = json.loads((path / "weights.json").read_text())
        self.weights = {int(b): w for b, w in saved["weights"].items()}
        self.tuning = saved["tuning"]
