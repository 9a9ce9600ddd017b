"""Who will take a new item: content affinity and activity, weighed on items held out of training.

A new item has no interactions, so no CF model can say who wants it; what is known is its content and, of
each user, what they took before and how much. ``NewItemAudience`` scores (user, item) by a logistic model
of four features, all readable for an item nobody has taken yet:

- ``activity``: log(1 + the user's interactions): a heavy user takes more of everything (the strongest
  single signal on MovieLens: ranking users by it alone beats every content model there);
- ``affinity``: the cosine of the item's content (genres, exact year, title words, and the pretrained
  encoder's text vector where it is on: :class:`models.content.ContentKNN`) with the user's profile;
- ``genre share``: the share of the user's history in the item's genres;
- ``activity x affinity``: affinity counts for more when there is more history behind it.

and, for how many users will take the item at all, its **appeal**: the log of the interactions that items
with its content drew, predicted by a ridge regression from genres, release decade and exact year and the
encoder's text vector (:func:`fit_appeal`, fitted on the items with interactions). Appeal is the same for
every user, so it leaves who is in an item's audience as it is; it decides which new items a user is likeliest
to take, and how likely (MovieLens-100k protocol I, 5 seeds: each user's list of new items ranked by this
model, users -> items nDCG@10, 0.036 without appeal, 0.149 with it; the most active users' baseline 0.142).

The weights are learned when fitted, on an item-cold validation fold carved from the training data alone:
a seeded share of the items with interactions is taken out of every history (as the night's item-cold
evaluation does with its test items), the features are computed without them, and the weights maximise the
likelihood of who took each held-out item among all users (a conditional logit per item: what ranks users
for one item, untouched by how popular items differ). A Platt scaling on the same pairs of the score and the
item's appeal (predicted without the held-out items, from the others) turns them into log-odds, so
``sigmoid(score)`` is the probability that the user takes the item, calibrated on those held-out items: the
hybrid reads it to rank a new item's audience and to decide when a new item has earned a slot in a user's
list. The fitted weights and the validation fold's size are in ``summary()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import Recommender
from models.content import ContentKNN, GenrePopularity, one_hot, year_one_hot
from models.serving import N_DECADES, UserBlock, decade_of

FEATURES = ("activity", "affinity", "genre_share", "activity_x_affinity")
APPEAL_BLOCK = 16384  # items a block when the appeal's design is built: bounded memory at any catalogue size


def appeal_design(model: Recommender, rows: np.ndarray) -> np.ndarray:
    """(len(rows), features) float64 of what is known of an item before anyone takes it: an intercept, its
    genres, release decade and exact year (one-hot, as the content neighbourhood encodes them), and its text
    vector."""
    year = model.item_year[rows]
    return np.hstack([np.ones((len(rows), 1)), model.item_genres[rows],
                      one_hot(decade_of(year), N_DECADES)[:, 1:].toarray(),  # 0: unknown
                      year_one_hot(year).toarray(), model.item_text[rows]]).astype(np.float64)


def fit_appeal(model: Recommender, popularity: np.ndarray, train_items: np.ndarray, l2: float,
               rows: np.ndarray | None = None) -> np.ndarray:
    """An item's appeal for ``rows`` of ``model``'s catalogue (default: every item): log(1 + interactions)
    predicted from its content by a ridge regression fitted on ``train_items`` (their ``popularity``).
    Blockwise over items."""
    width = appeal_design(model, train_items[:0]).shape[1]
    gram, moment = np.zeros((width, width)), np.zeros(width)
    for lo in range(0, len(train_items), APPEAL_BLOCK):
        block = train_items[lo:lo + APPEAL_BLOCK]
        x = appeal_design(model, block)
        gram += x.T @ x
        moment += x.T @ np.log1p(popularity[block].astype(np.float64))
    penalty = np.full(width, float(l2))
    penalty[0] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(gram + np.diag(penalty), moment) if len(train_items) else np.zeros(width)
    rows = np.arange(len(model.item_ids)) if rows is None else rows
    return np.concatenate([appeal_design(model, rows[lo:lo + APPEAL_BLOCK]) @ weights
                           for lo in range(0, len(rows), APPEAL_BLOCK)] or [np.zeros(0)]).astype(np.float32)


def fit_audience(x: np.ndarray, truth: np.ndarray, l2: float, iterations: int = 30) -> np.ndarray:
    """Weights of a conditional logit over users, one choice set per item: P(user u | item j) is the softmax
    over users of ``x[j, u] @ w``, each (u, j) taken counted as a draw. This is the likelihood of ranking
    users for an item, so what differs between items (an item's overall appeal) does not pull the weights.
    ``x``: (items, users, features) float; ``truth``: (items, users) bool. Newton steps, float64, each halved
    until the penalised log-likelihood rises (Armijo): a full Newton step from far away can overshoot, and
    on skewed features (a few very active users) it did, to weights in the thousands; where the full step
    rises, which is every step of a well-behaved fit, it is taken unchanged."""
    x = x.astype(np.float64)
    counts = truth.sum(axis=1).astype(np.float64)  # draws per item
    taken = np.einsum("ju,juf->f", truth.astype(np.float64), x)

    def at(w: np.ndarray) -> tuple[np.ndarray, float]:
        """The scores, shifted per item by their maximum, and the penalised log-likelihood at ``w``."""
        s = x @ w
        top = s.max(axis=1, keepdims=True)
        s -= top
        log_norm = np.log(np.exp(s).sum(axis=1)) + top.ravel()
        return s, float(taken @ w - counts @ log_norm - 0.5 * l2 * (w @ w))

    w = np.zeros(x.shape[2])
    s, value = at(w)
    for _ in range(iterations):
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        mean = np.einsum("ju,juf->jf", p, x)
        gradient = taken - counts @ mean - l2 * w
        second = np.einsum("ju,juf,jug->jfg", p, x, x) - np.einsum("jf,jg->jfg", mean, mean)
        hessian = np.einsum("j,jfg->fg", counts, second) + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        if np.max(np.abs(step)) < 1e-8:
            w += step
            break
        rise = float(gradient @ step)  # > 0: the Hessian of the negative log-likelihood is positive definite
        for _ in range(40):
            trial_s, trial = at(w + step)
            if trial >= value + 1e-4 * rise:
                break
            step, rise = step / 2, rise / 2
        else:
            break  # no step along Newton's direction rises the likelihood: w is its maximum to float64's precision
        w, s, value = w + step, trial_s, trial
    return w


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """Weights (intercept first) of an L2-penalised logistic regression by Newton's method (IRLS), float64.
    Deterministic: no sampling, no learning rate; a handful of features, so each step is one small solve."""
    design = np.hstack([np.ones((len(x), 1)), x]).astype(np.float64)
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], float(l2))
    penalty[0] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


class NewItemAudience(Recommender):
    name = "new_item_audience"
    description = 'who takes a new item: activity, content affinity and genre share, calibrated'
    scores_new_items = True

    @classmethod
    def saved_tuning(cls, path: Path) -> dict:
        """What a saved audience model learned and on what (for the report), without loading it: its weights,
        learned on items held out of training."""
        return json.loads((Path(path) / "audience.json").read_text())

    @classmethod
    def default_params(cls) -> dict:
        return {
            "validation_item_share": 0.2,  # of the items with interactions, as the item-cold evaluation holds out
            "max_validation_items": 400,
            "max_validation_users": 8000,  # pairs = users x items: bounded at any scale
            "l2": 1.0,
            "appeal_l2": 1.0,  # the ridge of an item's appeal on its content
            "text_weight": None,  # the content part's weight of the pretrained text vector (None: ContentKNN's)
        }

    def _parts(self) -> tuple[ContentKNN, GenrePopularity]:
        """The content neighbourhood and the genre shares this model reads, on its own encoding."""
        weight = self.params["text_weight"]
        return (ContentKNN.part_of(self, **({} if weight is None else {"text_weight": float(weight)})),
                GenrePopularity.part_of(self))

    def _fit(self, seed: int) -> None:
        self.content_model, self.genre_model = self._parts()
        self.content_model._fit(seed)
        self.genre_model._fit(seed)
        rng = np.random.default_rng(seed)
        p = self.params
        taken = np.flatnonzero(self.item_popularity > 0)
        n_items = min(int(round(len(taken) * float(p["validation_item_share"]))), int(p["max_validation_items"]))
        held = np.sort(rng.choice(taken, size=max(n_items, 1), replace=False)) if len(taken) else taken
        users = np.arange(self.train.shape[0])
        if len(users) > int(p["max_validation_users"]):
            users = np.sort(rng.choice(users, size=int(p["max_validation_users"]), replace=False))
        truth = self.train[users][:, held].toarray() > 0
        keep = np.ones(self.train.shape[1], dtype=np.float32)
        keep[held] = 0.0
        masked = (self.train[users] @ sp.diags(keep)).tocsr()
        masked.eliminate_zeros()
        parts, step = [], self.block_users  # users x catalogue scores a block at a time: bounded memory
        for lo in range(0, len(users), step):
            rows = users[lo:lo + step]
            block = UserBlock(self.user_ids[rows], np.full(len(rows), -1), masked[lo:lo + step],
                              np.zeros((len(rows), 0), dtype=np.int32))
            parts.append(self._features(block, held).reshape(-1, len(FEATURES)))
        x = np.concatenate(parts)
        self.mean, self.scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
        x = ((x - self.mean) / self.scale).reshape(len(users), len(held), len(FEATURES)).transpose(1, 0, 2)
        self.weights = fit_audience(x, truth.T, float(p["l2"]))
        # Platt scaling of the ranking score and the held-out items' appeal (predicted from the other items) on
        # the same pairs: log-odds that the user takes the item.
        others = np.setdiff1d(taken, held)
        held_appeal = fit_appeal(self, self.item_popularity, others, float(p["appeal_l2"]), rows=held)
        pairs = np.column_stack([(x @ self.weights).ravel(), np.repeat(held_appeal, len(users))])
        self.calibration = fit_logistic(pairs, truth.T.ravel().astype(np.float64), 0.0)
        self.appeal = fit_appeal(self, self.item_popularity, taken, float(p["appeal_l2"]))
        self.validation = {"items": int(len(held)), "users": int(len(users)), "pairs": int(truth.size),
                           "positives": int(truth.sum())}

    def _features(self, users: UserBlock, columns: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(users, columns, FEATURES) float32."""
        activity = np.log1p(users.history_length.astype(np.float32))[:, None]
        affinity = self.content_model.column_scores(users, columns)
        share = self.genre_model.column_scores(users, columns)
        activity = np.broadcast_to(activity, affinity.shape)
        return np.stack([activity, affinity, share, activity * affinity], axis=-1).astype(np.float32)

    def score_block(self, users: UserBlock) -> np.ndarray:
        return self.column_scores(users, slice(None))

    def column_scores(self, users: UserBlock, columns: np.ndarray | slice) -> np.ndarray:
        """Log-odds that each user takes each item of ``columns``, as if the item were new (its own
        interactions unread)."""
        a, b, c = self.calibration
        coefficients = (b * self.weights / self.scale).astype(np.float32)
        intercept = np.float32(a - float(np.dot(self.mean, b * self.weights / self.scale)))
        activity = np.log1p(users.history_length.astype(np.float32))[:, None]
        # In place on the parts' own fresh arrays, the same operations in the same order: a new (users x columns)
        # array for each product and sum was half of this method's time (a 1,331 x 12k block: 62 -> 31 ms).
        out = self.content_model.column_scores(users, columns)  # the affinity
        out *= coefficients[1] + coefficients[3] * activity
        share = self.genre_model.column_scores(users, columns)
        share *= coefficients[2]
        out += share
        out += coefficients[0] * activity + intercept
        out += np.float32(c) * self.appeal[columns][None, :]
        return out

    def summary(self) -> str:
        named = ", ".join(f"{name} {w:+.2f}" for name, w in zip(FEATURES, self.weights, strict=True))
        v = self.validation
        return (f"weighed on {v['items']} held-out training items x {v['users']:,} users ({v['positives']:,} taken): "
                f"standardised weights {named}; appeal {float(self.calibration[2]):+.2f} a log-interaction")

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        return self.content_model.explain(users, rows, cols)

    def _save_state(self, path: Path) -> None:
        sp.save_npz(path / "content.npz", self.content_model.content, compressed=False)
        self.genre_model._save_state(path)
        np.savez(path / "audience.npz", weights=self.weights, mean=self.mean, scale=self.scale,
                 calibration=self.calibration, appeal=self.appeal)
        (path / "audience.json").write_text(json.dumps({
            "features": FEATURES, "validation": self.validation,
            "standardised_weights": dict(zip(FEATURES, map(float, self.weights), strict=True)),
            "calibration": {"intercept": float(self.calibration[0]), "slope": float(self.calibration[1]),
                            "appeal": float(self.calibration[2])}}, indent=2))

    def _load_state(self, path: Path) -> None:
        self.content_model, self.genre_model = self._parts()
        self.content_model._load_state(path)
        self.genre_model._load_state(path)
        with np.load(path / "audience.npz") as z:
            self.weights, self.mean = z["weights"], z["mean"]
            self.scale, self.calibration, self.appeal = z["scale"], z["calibration"], z["appeal"]
        self.validation = json.loads((path / "audience.json").read_text())["validation"]


class NewItemAudienceWithoutText(NewItemAudience):
    """The same audience model with the pretrained encoder's text left out: the nightly's ablation of what
    the encoder adds to the published audiences (the report's first line)."""

    name = "new_item_audience_without_text"

    @classmethod
    def default_params(cls) -> dict:
        return {**super().default_params(), "text_weight": 0.0}
