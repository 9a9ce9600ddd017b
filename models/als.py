"""Alternating least squares (Hu, Koren and Volinsky, 2008) from ``implicit``: a factorised CF model whose
memory grows with the catalogue, not its square.

The interaction matrix is binary with confidence 1 + alpha; users and items get ``factors``-dimensional
vectors. Warm users are scored by their fitted vector; a k-shot user (unseen in training, a few interactions
revealed) is folded in: their vector is solved against the fixed item factors from those interactions
(implicit's ``recalculate_user``, the same least squares the fit runs); a user with no history has no vector
and scores zero everywhere (the tie-breaker, popularity, decides). A block of users is scored by one SGEMM
of their vectors with the item factors, so at 200k items it is the cheapest CF model to score and to hold
(200k x 24 floats: 19 MB, against EASE's items^2).

Defaults chosen on a validation split inside protocol W's training fold (the quality benchmark's peer
``implicit_als``: nDCG@10 0.276 for 24 factors, l2 30, alpha 4, 15 iterations; 64 factors, l2 0.05: 0.211).
``implicit`` is MIT-licensed; its CPU solver runs its own threads, so BLAS runs one thread under it.

A warm start (:meth:`ALS.warm_start`: the production fit continuing the evaluation fold's, the evaluation fold's
continuing the tuning fold's) begins from the earlier fit's factors, carried by id (new users and items start as
a fit from scratch does), and runs ``warm_iterations`` sweeps instead of ``iterations``. Fifteen sweeps from
scratch are not converged (the planted test data: nDCG@10 0.535 at 15, 0.542 at 30), so a continuation judged
against them needs about as many sweeps as its data is new. Continuing a fit on the first 70 % of the training
by time (the tuning fold's shape): 5 sweeps -1.3 % [-1.9, -0.8] against 15 from scratch, 8 sweeps -0.4 %
[-0.9, +0.0], 10 sweeps +0.1 % [-0.3, +0.5] (paired over 774 warm users). At 16 M interactions a sweep costs
2.4 s: 10 sweeps save a third of each continued fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from models.base import Recommender, carried_rows
from models.ranking import Stage, factor_moments, factor_stage
from models.serving import UserBlock


class ALS(Recommender):
    name = "als"
    lists_from_stage = True
    continues_fits = True
    description = "user and item factors of the interaction matrix (implicit's alternating least squares)"

    @classmethod
    def default_params(cls) -> dict:
        return {"factors": 24, "regularization": 30.0, "alpha": 4.0, "iterations": 15, "warm_iterations": 10}

    def _solver(self, seed: int) -> AlternatingLeastSquares:
        p = self.params
        with threadpool_limits(1, "blas"):  # it checks (and warns) on construction
            return AlternatingLeastSquares(factors=int(p["factors"]), regularization=float(p["regularization"]),
                                           alpha=float(p["alpha"]), iterations=int(p["iterations"]),
                                           random_state=seed)

    def _fit(self, seed: int) -> None:
        self.solver = self._solver(seed)
        self.training_ = {"iterations": int(self.params["iterations"]), "warm_started": False}
        self._continue_from(self._earlier_fit(), seed)
        with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS threads under it slow it down
            self.solver.fit(self.train.tocsr(), show_progress=False)

    def _continue_from(self, previous: Recommender | None, seed: int) -> None:
        """Start from ``previous``'s factors (:meth:`warm_start`: an ALS fit on an earlier fold with as many
        factors): the rows of known users and items carried over by id, for ``warm_iterations`` sweeps."""
        if not isinstance(previous, ALS) or previous.solver.factors != self.solver.factors:
            return
        # New rows drawn as implicit draws a fit from scratch (uniform, times 0.01), from the fit's seed.
        rng = np.random.default_rng(seed)
        factors = {}
        for kind, ids, earlier_ids, earlier in (
                ("users", self.user_ids, previous.user_ids, previous.solver.user_factors),
                ("items", self.item_ids, previous.item_ids, previous.solver.item_factors)):
            rows = carried_rows(ids, earlier_ids)
            known = rows >= 0
            factors[kind] = rng.random((len(ids), self.solver.factors), dtype=np.float32) * np.float32(0.01)
            factors[kind][known] = earlier[rows[known]]
            self.training_[f"carried_{kind}"] = int(np.count_nonzero(known))
        self.solver.user_factors, self.solver.item_factors = factors["users"], factors["items"]
        self.solver.iterations = int(self.params["warm_iterations"])
        self.training_.update(iterations=self.solver.iterations, warm_started=True)

    def summary(self) -> str:
        t = getattr(self, "training_", {})
        if not t.get("warm_started"):
            return ""
        return (f"{t['iterations']} sweeps continuing an earlier fit (warm start: {t['carried_users']:,} of "
                f"{len(self.user_ids):,} users and {t['carried_items']:,} of {len(self.item_ids):,} items carried)")

    def user_vectors(self, users: UserBlock) -> np.ndarray:
        """(block, factors): fitted for warm users, folded in from the history for k-shot ones, zero else."""
        vectors = np.zeros((len(users.user_ids), self.solver.factors), dtype=np.float32)
        warm = users.train_rows >= 0
        vectors[warm] = self.solver.user_factors[users.train_rows[warm]]
        fold_in = np.flatnonzero(~warm & (users.history_length > 0))
        if len(fold_in):
            with threadpool_limits(1, "blas"):
                vectors[fold_in] = self.solver.recalculate_user(fold_in, users.history[fold_in].tocsr())
        return vectors

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self.user_vectors(users) @ self.solver.item_factors.T

    def first_stage(self, users: UserBlock, depth: int) -> Stage:
        """The block's best ``depth`` a user from one product with the item factors; the rows' moments from
        the factors' sums and Gram matrix (:class:`models.ranking.FactorMoments`), kept for the fitted factors."""
        if self._block_is_scored(users):
            return super().first_stage(users, depth)
        factors = self.solver.item_factors
        return factor_stage(self.user_vectors(users), factors, factor_moments(self, factors), None, users.seen,
                            depth)

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """"because you rated <the known item whose factors are closest to the recommended one's>"."""
        items = self.solver.item_factors
        return self.neighbour_reasons(users, rows, cols,
                                      lambda known, target: np.einsum("ij,ij->i", items[known], items[target]))

    def _save_state(self, path: Path) -> None:
        np.save(path / "user_factors.npy", self.solver.user_factors)
        np.save(path / "item_factors.npy", self.solver.item_factors)
        (path / "training.json").write_text(json.dumps(getattr(self, "training_", {})))

    def _load_state(self, path: Path) -> None:
        self.solver = self._solver(self.seed)
        self.solver.user_factors = np.load(path / "user_factors.npy")
        self.solver.item_factors = np.load(path / "item_factors.npy")
        training = path / "training.json"
        self.training_ = json.loads(training.read_text()) if training.exists() else {}
