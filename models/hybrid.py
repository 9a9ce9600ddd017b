"""A hybrid that blends a feature-based deep model, collaborative filtering and segment popularity.

The blend weights depend on how much history a user has: a user with no interactions is served by features and
popularity, a user with many by CF. They also depend on how much history an item has: an item with
``item_evidence`` or more interactions is scored by the user's blend, an item with none by the models that
read content (``new_item_weights``: the two-tower's item tower and the content neighbourhood), and one in
between by a mix in proportion to its interactions, so a new item never gets a CF score it has no data for.
Whom to show a new item to (its audience) is ranked by the audience model (``audience_model``:
:class:`models.audience.NewItemAudience`, content affinity and activity weighed on items held out of
training), and an item nobody has taken enters a user's own list on the same scale as the known items: its
probability of being taken in a window like the validation window, against what a known item at each rank is
worth there, the tuned blend's hit rate at that rank on the user's bucket of validation users
(:meth:`models.blend.BlendTuning._hit_rate_by_rank`). That probability is the audience model's (that the user
takes the item at all, calibrated on items held out of training) times the window's measured rate
(:meth:`Hybrid._new_item_rates`): how many of the items nobody had taken before the window the bucket's
validation users took in it, against how many the audience model expected them to take. Where the window's
new items are obscure (a random hold-out: they are the catalogue's rarest) the rate is low and new items
stay out of the lists; where they are what users take next (a catalogue's new releases, or an
item-cold hold-out) it is of the order of one; ``new_item_min_rate`` (RECSYS_NEW_ITEM_MIN_RATE) is a floor under it for
nights whose untaken items are arrivals no past window has seen. A new item is placed only in the lists of
the users it is published to (its ``new_item_users`` likeliest training users), just above the first known
item it is more likely to be taken than, within the top ``new_item_rank``, at most ``new_item_slots`` a list.
Without an audience model, new items compete through the new-item scorers' per-user z-scores, which aims them at users
hardly better than at random. The hybrid fits nothing itself: it receives its fitted components
(:meth:`Hybrid.use_components`), and either tunes the weights per history bucket on validation cases
(:meth:`Hybrid.use_validation`, built by ``tasks.split.carve_validation`` from training users, never test
users) or takes weights tuned earlier (:meth:`Hybrid.use_weights`: the production fit reuses the evaluation
fold's weights, so no component is ever fitted twice on the same fold)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from models.base import Recommender, distinct_ids
from models.blend import BlendTuning, ValidationCase, bucket_of
from models.explain import replace
from models.ranking import Stage, served_z_scores, top_k_indices
from models.serving import BestUsers, UserBlock
from recsys import schema
from recsys.schema import USER_ID

# ALS beside EASE: on a random hold-out they are level (ML-100k protocol W 0.4887 / 0.4898) and the tuned blend of
# both with the two-tower beats either (0.4987); on the log cut in time (protocol T) ALS is the best single model;
# and it scores the whole catalogue where EASE's memory cap leaves items out.
COMPONENTS = ("two_tower", "ease", "item_knn", "segment_popularity", "als")
# How items with no (or few) interactions are scored: by the models that read an item's content.
NEW_ITEM_WEIGHTS = {"two_tower": 0.5, "content_knn": 0.5}


class MixWeight(NamedTuple):
    """A component's weight in a block: ``by_user * evidence + by_item`` for each (user, item), kept apart so
    that it costs no (users, items) array: a weight per user on the items with evidence (most of a catalogue),
    the whole formula on the few columns without."""
    by_user: np.ndarray  # (users, 1)
    evidence: np.ndarray  # (1, items): the item's interactions over item_evidence, at most 1
    by_item: np.ndarray  # (1, items): the new-item weight, times 1 - evidence

    def item_dependent(self) -> np.ndarray:
        """The columns whose weight depends on the item (too few interactions, or a new-item weight)."""
        return np.flatnonzero((self.evidence[0] < 1) | (self.by_item[0] != 0))

    def apply(self, part: np.ndarray) -> None:
        """``part`` times the weights, in place."""
        cols = self.item_dependent()
        if 2 * len(cols) >= part.shape[1]:
            # Most columns depend on the item (a wide catalogue's second stage, whose columns are mostly the
            # items with little evidence): one product with the whole weight instead of gathering and scattering
            # them. The same floats: elsewhere the weight is by_user * 1 + 0.
            part *= self.by_user * self.evidence + self.by_item
            return
        few = part[:, cols] * (self.by_user * self.evidence[:, cols] + self.by_item[:, cols])
        part *= self.by_user
        part[:, cols] = few


class ColumnPart:
    """A component's part of a block's blend where it is weighed on a few columns alone: their values, 0 on
    every other column. It reads like a dense part, at paired (rows, columns) or as ``part[:, columns]``,
    without a (users, items) array of zeros per such component and block (8 % of a served block's time at
    60k items)."""

    def __init__(self, columns: np.ndarray, values: np.ndarray):
        self.columns = columns  # sorted, unique
        self.values = values  # (users, len(columns))

    def __getitem__(self, index: tuple) -> np.ndarray:
        rows, cols = index
        cols = np.asarray(cols)
        if len(self.columns) == 0:
            shape = (len(self.values[rows]), len(cols)) if isinstance(rows, slice) else np.shape(cols)
            return np.zeros(shape, dtype=np.float32)
        pos = np.minimum(np.searchsorted(self.columns, cols), len(self.columns) - 1)
        hit = self.columns[pos] == cols
        picked = self.values[rows][:, pos] if isinstance(rows, slice) else self.values[rows, pos]
        return np.where(hit, picked, np.float32(0.0))


class Hybrid(BlendTuning, Recommender):
    name = "hybrid"
    SETTINGS = {"new_item_slots": "new_item_slots", "new_item_min_rate": "new_item_min_rate",
                "new_item_users": "new_item_users", "retrieval_depth": "retrieval_depth",
                "retrieval_min_items": "retrieval_min_items", "retrieval_block_users": "retrieval_block_users"}
    description = ("the two-tower, EASE, item-kNN, segment popularity and ALS blended with weights tuned per "
                   "history length on validation users; new items placed by the audience model")

    @classmethod
    def default_params(cls) -> dict:
        return {
            # item_knn next to EASE: on short (k-shot) histories neighbourhood CF generalises better,
            # on long ones EASE does; the tuned weights pick per history bucket.
            "components": list(COMPONENTS),
            # Models fitted every night and blended only where a component above leaves items with interactions
            # out (EASE beyond its memory cap); the tuning record's "blend" says which and why. None by default:
            # ALS, which scores the whole catalogue, is a component.
            "wide_components": [],
            "grid_step": 0.2,
            "k": schema.DEFAULT_K,
            "tune_candidates": 100,  # per component and user: the grid search's columns (see _candidate_view)
            # A blend replaces the bucket's best single component only when its validation gain over it is
            # significant: the lower end of the one-sided (1 - alpha) paired-bootstrap interval above zero.
            # Otherwise the grid's maximum is chance on a few hundred users, and it does not carry over.
            "blend_alpha": 0.05,
            "bootstrap_samples": 1000,
            "new_item_weights": dict(NEW_ITEM_WEIGHTS),
            "item_evidence": 3,  # interactions from which an item is scored by the user's blend alone
            "scale_users": 2048,  # training users whose scores set each component's scale for audiences
            # New items: who to show them to, and the exploration policy that puts them in users' lists.
            "audience_model": "new_item_audience",
            "new_item_slots": 2,
            "new_item_rank": 10,
            # A floor under the measured new-item rate (RECSYS_NEW_ITEM_MIN_RATE): the operator's word that
            # tonight's untaken items are arrivals, which no validation window of the past can have seen.
            "new_item_min_rate": 0.0,
            # A new item enters only the lists of the users it is published to (its audience, this many users):
            # the lists and the new_items table tell one story, and a list slot goes to a user picked for the
            # item, not to whoever the item is likeliest for (on a variant of MovieLens-100k whose films lost
            # their ratings: 3x random exposure given the film, against 1.4-1.7x ungated).
            "new_item_users": 100,
            # Two-stage serving (:meth:`candidate_scores`): catalogues of at least ``retrieval_min_items`` items
            # are served from each component's best ``retrieval_depth`` a user (0: the whole catalogue ranked).
            "retrieval_depth": 50,
            "retrieval_min_items": 50_000,
            # Served alone in two stages, a block holds its users' candidates, not the catalogue: the 100 M
            # night's hybrid (200k items, a block's union ~9.3k columns at 80 to 640 users) published 457 users/s
            # in blocks of 80 (its catalogue blocks), 598 in 320, 565 in 640, 504 in 1,280; the same rows.
            "retrieval_block_users": 320,
        }

    @classmethod
    def needed_components(cls, params: dict | None = None) -> list[str]:
        """Every model a hybrid with ``params`` reads: the blended components, then the new-item scorers."""
        params = {**cls.default_params(), **(params or {})}
        names = list(params["components"])
        names += [n for n in params["wide_components"] if n not in names]
        names += [n for n, w in params["new_item_weights"].items() if w > 0 and n not in names]
        return names + ([params["audience_model"]] if params["audience_model"] and params["audience_model"] not in names
                        else [])

    def compose(self, components: Mapping[str, Recommender], weights: dict | None = None,
                validation: list | None = None, last: dict | None = None) -> Hybrid:
        """``weights``: a blend tuned elsewhere (a saved hybrid's :meth:`saved_blend`), or ``validation`` cases to
        tune on, with ``last`` night's published blend (its saved blend) to keep unless tonight's beats it."""
        self.use_components(dict(components))
        if weights is not None:
            return self.use_weights(weights["weights"], weights.get("tuning"))
        return self.use_validation(validation, last) if validation is not None else self

    def use_components(self, fitted: dict[str, Recommender]) -> Hybrid:
        """The fitted components to blend (fitted on the same interactions the hybrid is fitted on)."""
        missing = [name for name in self.needed_components(self.params) if name not in fitted]
        if missing:
            raise ValueError(f"hybrid: components {', '.join(missing)} were not fitted; fit them first")
        self.components = {name: fitted[name] for name in self.needed_components(self.params)}
        blind = [name for name, w in self.params["new_item_weights"].items() if w > 0
                 and not self.components[name].scores_new_items]
        if blind:
            raise ValueError(f"hybrid: new_item_weights names {', '.join(blind)}, which cannot score an item with no "
                             "interactions; use models that read item content (two_tower, content_knn)")
        return self

    def use_validation(self, cases: Sequence[ValidationCase], last: dict | None = None) -> Hybrid:
        """Tune the weights on these validation cases when fitted; ``last``: last night's saved blend, whose
        weights a bucket keeps unless tonight's choice beats them significantly (where it blended the same
        components)."""
        self._cases, self._last = list(cases), last
        return self

    def use_weights(self, weights: dict[int, list[float]], tuning: dict | None = None) -> Hybrid:
        """Use weights tuned elsewhere (e.g. the evaluation fold's) instead of tuning; they are aligned with the
        components that tuning blended (its ``blend`` record)."""
        self.weights = {int(b): list(w) for b, w in weights.items()}
        self.tuning = dict(tuning or {})
        self._cases = None
        return self

    @property
    def blended(self) -> list[str]:
        """The components the weights are aligned with: ``components``, and ``wide_components`` where the
        tuning found a component leaving items out (see :meth:`_blended_for`)."""
        tuning = getattr(self, "tuning", None) or {}
        return list(tuning.get("blend", {}).get("components", self.params["components"]))

    def _blended_for(self, components: dict[str, Recommender]) -> dict:
        """Which components to blend, and why: the wide components join when one of ``components`` leaves out
        items that have interactions (their scores there would otherwise come from the others alone)."""
        names = list(self.params["components"])
        short = {name: n for name in names if (n := components[name].items_left_out()) > 0}
        wide = [n for n in self.params["wide_components"] if n not in names]
        gaps = ", ".join(f"{name} leaves out {n:,} items with interactions" for name, n in short.items())
        if short and wide:
            return {"components": names + wide, "why": f"{gaps}: {', '.join(wide)} blended for the whole catalogue"}
        if short:
            scoring = [n for n in names if n not in short]
            return {"components": names, "why": f"{gaps}: {', '.join(scoring)} rank them"}
        return {"components": names, "why": "every component scores every item with interactions" + (
            f": {', '.join(wide)} not blended" if wide else "")}

    @property
    def hit_rates(self) -> dict[int, tuple[np.ndarray, float]]:
        """Per history bucket, the tuned blend's hit rate at each rank (see :meth:`_hit_rate_by_rank`) and the
        validation window's new-item rate (see :meth:`_new_item_rates`)."""
        return {int(t["bucket"]): (np.asarray(t["hit_rate_by_rank"], dtype=np.float64),
                                   float(t["new_items"]["rate"]))
                for t in getattr(self, "tuning", {}).values() if "hit_rate_by_rank" in t and "new_items" in t}

    def _new_item_rates(self, cases: Sequence[ValidationCase]) -> dict[str, dict]:
        """Per validation case: the items nobody had taken before its window (no interaction in the data the
        hybrid is fitted on), how many (user, item) of them its users took in the window, how many the audience
        model expected (the sum of its probabilities over the users' unseen new items), and their ratio, the
        ``rate`` that turns the audience model's probability into one of being taken in such a window."""
        audience = self.params["audience_model"]
        new = np.flatnonzero(self.item_popularity == 0)
        if not audience:
            return {}
        model = self.components[audience]
        out = {}
        for case in cases:
            users = np.intersect1d(case.users, case.truth[USER_ID].unique().to_numpy())
            taken = expected = 0.0
            step = model.column_block_users(len(new))
            for lo in range(0, len(users) if len(new) else 0, step):
                block_users = users[lo:lo + step]
                known = model._history_matrix(block_users, case.known if case.known.height else None)
                # Cold users' known items are their history; warm users are in training, known only masks.
                block = model._user_block(block_users, known if case.as_history else sp.csr_matrix(known.shape))
                p = 1.0 / (1.0 + np.exp(-model.column_scores(block, new).astype(np.float64)))
                p[(known[:, new] + block.history[:, new]).toarray() > 0] = 0.0  # seen items are not listed
                expected += float(p.sum())
                taken += float(model._history_matrix(block_users, case.truth)[:, new].sum())
            out[case.label] = {"items": int(len(new)), "taken": int(taken), "expected": round(expected, 3),
                               "rate": round(taken / expected, 6) if expected > 0 else 0.0}
        return out

    def _fit(self, seed: int) -> None:
        components = getattr(self, "components", None)
        if components is None:
            raise ValueError("hybrid: call use_components() with the fitted components before fit()")
        for name, model in components.items():
            if model.meta.get("data_fingerprint") != self._fingerprint:
                raise ValueError(f"hybrid: component {name} was fitted on other interactions than the hybrid")
        cases = getattr(self, "_cases", None)
        if cases is not None:
            blend = self._blended_for(components)
            last = getattr(self, "_last", None)
            same = last is not None and last.get("tuning", {}).get("blend", {}).get("components") == blend["components"]
            last_weights = {int(b): w for b, w in last["weights"].items()} if same else None
            self.weights, self.tuning = self._tune({name: components[name] for name in blend["components"]}, cases,
                                                   seed, last_weights)
            for label, rate in self._new_item_rates(cases).items():
                if label in self.tuning:
                    self.tuning[label]["new_items"] = rate
            self.tuning["blend"] = blend
            if last is not None:
                self.tuning["last_night"] = {"compared": same, "why": (
                    "each bucket keeps last night's weights unless tonight's choice beats them significantly" if same
                    else "last night blended other components: tuned afresh")}
        elif not getattr(self, "weights", None):
            raise ValueError("hybrid: call use_validation() or use_weights() before fit()")
        self.audience_scale = self._audience_scale(seed)
        if cases is None:  # a fit with weights tuned elsewhere is one that is scored: its floor now, saved with it
            self.audience_floor = self._audience_floor()
        else:  # a tuning fit (the night's tuning fold's is never scored): measured if it ever is
            self.__dict__.pop("audience_floor", None)

    @functools.cached_property
    def audience_floor(self) -> np.ndarray:
        """See :meth:`_audience_floor`; measured on first use where the fit did not."""
        return self._audience_floor()

    def _audience_scale(self, seed: int) -> dict[str, tuple[float, float]]:
        """Per component, the mean and standard deviation of its finite scores over the training users (a
        seeded sample of ``scale_users`` of them) and the whole catalogue: the scale :meth:`audience_scores`
        puts the components on."""
        if self.params["audience_model"]:
            return {}  # audiences come from the audience model
        users = self.user_ids
        if len(users) > int(self.params["scale_users"]):
            rng = np.random.default_rng(seed)
            users = np.sort(rng.choice(users, int(self.params["scale_users"]), replace=False))
        scale = {}
        for name, model in self.components.items():
            total, squares, count = 0.0, 0.0, 0
            for start in range(0, len(users), model.block_users):
                scores = model.score_users(users[start:start + model.block_users])
                finite = scores[np.isfinite(scores)].astype(np.float64)
                total, squares, count = total + finite.sum(), squares + np.square(finite).sum(), count + finite.size
            mean = total / max(count, 1)
            std = float(np.sqrt(max(squares / max(count, 1) - mean * mean, 0.0)))
            scale[name] = (float(mean), std if std > 1e-12 else 1.0)
        return scale

    def _audience_floor(self) -> np.ndarray:
        """Per item nobody has taken (in item order), the audience model's log-odds of its ``new_item_users``-th
        likeliest training user: a new item is placed only in the lists of users at or above it, the users it
        is published to. Blockwise over users (blocks as wide as those few columns allow,
        :meth:`Recommender.column_block_users`), keeping the best ``new_item_users`` per item
        (:class:`models.serving.BestUsers`)."""
        new = np.flatnonzero(self.item_popularity == 0)
        audience = self.params["audience_model"]
        size = min(int(self.params["new_item_users"]), len(self.user_ids))
        if not audience or len(new) == 0 or size == 0 or int(self.params["new_item_slots"]) <= 0:
            return np.full(len(new), np.inf, dtype=np.float32)  # no new item is placed anywhere
        model = self.components[audience]
        best = BestUsers(self.item_ids[new], size)
        step = model.column_block_users(len(new))
        for start in range(0, len(self.user_ids), step):
            users = self.user_ids[start:start + step]
            best.add(users, model.column_scores(model._user_block(users, model._history_matrix(users, None)), new))
        return best.nth_best()

    def _align(self, model: Recommender, scores: np.ndarray) -> np.ndarray:
        if np.array_equal(model.item_ids, self.item_ids):
            return scores
        out = np.full((scores.shape[0], len(self.item_ids)), -np.inf, dtype=np.float32)
        pos = np.searchsorted(self.item_ids, model.item_ids)
        ok = (pos < len(self.item_ids)) & (self.item_ids[np.clip(pos, 0, len(self.item_ids) - 1)] == model.item_ids)
        out[:, pos[ok]] = scores[:, ok]
        return out

    def _mix(self, users: UserBlock, columns: np.ndarray | slice = slice(None)):
        """Per component that weighs anything in this block: its weight for each (user, item of ``columns``):
        the user's bucket weight where the item has ``item_evidence`` interactions, the new-item weight where
        it has none, in proportion in between."""
        buckets = bucket_of(users.history_length, users.train_rows >= 0)
        w = np.array([self.weights[int(b)] for b in buckets], dtype=np.float32)  # (users, components)
        evidence = np.minimum(self.item_popularity[columns] / max(float(self.params["item_evidence"]), 1e-9), 1.0)
        evidence = evidence.astype(np.float32)[None, :]
        blended = self.blended
        for name in self.components:
            by_user = w[:, blended.index(name)][:, None] if name in blended else np.zeros((len(w), 1), np.float32)
            by_item = np.float32(self.params["new_item_weights"].get(name, 0.0)) * (1 - evidence)
            if by_user.any() or by_item.any():
                yield name, MixWeight(by_user, evidence, by_item)

    def score_block(self, users: UserBlock) -> np.ndarray:
        """The blend of the components' z-scores per user bucket, mixed per item with the new-item scorers'
        by the item's interactions; a component no user or item of the block weighs is not scored. Where the
        block is shared (several models, or explaining), each component's part is kept for :meth:`explain`.

        Each component is standardised over the items the user has not seen, as when the blend was tuned:
        CF models score a user's own items highest, and counting them in the mean and deviation would
        shrink every candidate's z-score by a different factor per component and user (measured on protocol
        W: 0.4870 counting them, 0.4936 not, with the same weights)."""
        return self._blend(users)

    @property
    def serves_in_two_stages(self) -> bool:
        """Whether served lists come from two stages (:meth:`candidate_scores`): a catalogue of at least
        ``retrieval_min_items`` items and a ``retrieval_depth``."""
        return int(self.params["retrieval_depth"]) > 0 and len(self.item_ids) >= int(self.params["retrieval_min_items"])

    @property
    def serving_block_users(self) -> int:
        """Served alone in two stages, ``retrieval_block_users`` users a block (never fewer than
        :attr:`block_users`): the second stage's columns are the block's candidates, not the catalogue."""
        if not self.serves_in_two_stages:
            return self.block_users
        return max(self.block_users, int(self.params["retrieval_block_users"]))

    def candidate_scores(self, users: UserBlock, keep: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Two-stage serving of a wide catalogue (``retrieval_min_items`` items or more; None below: the
        whole catalogue is ranked). First stage: each blended component's best ``retrieval_depth`` unseen
        items a user (:meth:`Recommender.first_stage`, each by its own cheapest route). Second stage: the
        blend, the new items' placement and the reasons of :meth:`score_block`, on the union of the block's
        candidates, the items with fewer than ``item_evidence`` interactions (scored apart at any scale, as in
        full ranking) and ``keep``; each component still standardised over all of a user's unseen items, as
        when the blend was tuned (the same z-scores to float rounding: a stage's mean and deviation are
        summed in float64 from the item side). Judged before it was built (``benchmarks/retrieval.py``): the
        top 50 of each component held every published list of 11.4k users but one. ``n`` is not read: the
        first stages' depth is ``retrieval_depth``."""
        if not self.serves_in_two_stages:
            return None
        depth = int(self.params["retrieval_depth"])
        stages = {name: self.components[name].stage_of(users, depth)
                  for name, weight in self._mix(users) if weight.by_user.any()}
        few = np.flatnonzero(self.item_popularity < float(self.params["item_evidence"]))
        columns = distinct_ids(np.concatenate([stage.top[stage.top >= 0] for stage in stages.values()]
                                              + [few, np.asarray(keep, dtype=np.int64)]))
        return columns, self._blend(users, columns, stages)

    def _blend(self, users: UserBlock, columns: np.ndarray | None = None,
               stages: Mapping[str, Stage] | None = None) -> np.ndarray:
        """:meth:`score_block` on the catalogue ``columns`` (default: all), each component's z-scores read
        from its first stage (``stages``) where given. ``columns`` must hold every item with fewer than
        ``item_evidence`` interactions (those whose weight depends on the item)."""
        width = len(self.item_ids) if columns is None else len(columns)
        out = np.zeros((len(users.user_ids), width), dtype=np.float32)
        parts: dict[str, np.ndarray | ColumnPart] = {}
        apart = self._local(self._placed_apart(), columns)
        for name, weight in self._mix(users, slice(None) if columns is None else columns):
            model = self.components[name]
            if weight.by_user.any():
                part = (served_z_scores(model.block_scores(users), users.history) if stages is None
                        else stages[name].z_at(columns))
                weight.apply(part)
                out += part
                if columns is not None:
                    part = ColumnPart(columns, part)
            else:  # weighed only on the items with too few interactions: those columns alone are scored
                local = np.setdiff1d(weight.item_dependent(), apart, assume_unique=True)
                cols = local if columns is None else columns[local]
                few = model.column_z_scores(users, cols)
                few *= weight.by_item[:, local]
                out[:, local] += few
                part = ColumnPart(cols, few)
            if users.shared is not None:
                parts[name] = part
        placed = self._place_new_items(users, out, columns)
        if users.shared is not None:
            if placed is not None:
                # The reason of a placed item is the audience model's (content), and of no other item.
                mark = np.where(placed > 0, np.float32(np.inf), np.float32(-np.inf))
                parts[self.params["audience_model"]] = mark if columns is None else ColumnPart(columns, mark)
            users.shared[("parts", id(self))] = parts
        return out

    @staticmethod
    def _local(catalogue_columns: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
        """The places of ``catalogue_columns`` (all among ``columns``) in a block scored on ``columns``."""
        return catalogue_columns if columns is None else np.searchsorted(columns, catalogue_columns)

    def _place_new_items(self, users: UserBlock, out: np.ndarray,
                         columns: np.ndarray | None = None) -> np.ndarray | None:
        """Items nobody has taken, placed on the known items' scale. They are out of the blend's ranking;
        per user, the best (at most ``new_item_slots``) by the audience model's calibrated probability p go
        just above the first known item of the top ``new_item_rank`` whose rank's hit rate (the user's
        bucket's, from tuning) is below p. ``out``: the block's scores of the catalogue ``columns`` (default
        all), changed in place; returns an array of its shape, 1 where an item was placed (None when nothing
        was)."""
        slots = int(self.params["new_item_slots"])
        catalogue_new = self._placed_apart()
        if len(catalogue_new) == 0 or len(users.user_ids) == 0:
            return None
        new = self._local(catalogue_new, columns)
        out[:, new] = -np.inf  # an item nobody has taken is listed by the calibrated placement alone
        curves = self.hit_rates
        buckets = bucket_of(users.history_length, users.train_rows >= 0)
        rows = np.flatnonzero(np.isin(buckets, list(curves)))
        if slots <= 0 or len(rows) == 0:
            return None
        history = users.history.tocsr() if columns is None else users.history.tocsr()[:, columns]
        logit = self._audience_of(users, catalogue_new)[rows].astype(np.float64)
        seen_new = history[rows][:, new].tocoo()
        logit[seen_new.row, seen_new.col] = -np.inf
        logit[logit < self.audience_floor[None, :]] = -np.inf  # only for the users it is published to
        slots = min(slots, len(new))
        best = top_k_indices(logit, slots)  # (rows, slots), most likely first
        p = 1.0 / (1.0 + np.exp(-np.take_along_axis(logit, best, axis=1)))  # 0 where out of every audience
        depth = int(self.params["new_item_rank"])
        rate = np.full((len(rows), depth), np.inf)  # a rank without a calibrated hit rate takes no new item
        for bucket, (curve, measured) in curves.items():
            mine = buckets[rows] == bucket
            rate[mine, :len(curve[:depth])] = curve[:depth]
            measured = max(measured, float(self.params["new_item_min_rate"]))
            p[mine] = np.minimum(p[mine] * measured, 1.0)  # taken at all -> in a window like the hit rates'

        # The known item each placed one goes above: the first rank whose hit rate is below p (depth: none).
        target = (rate[:, None, :] >= p[:, :, None]).sum(axis=2)  # rates are non-increasing down the list
        if not (target < depth).any():
            return None
        known = out[rows].copy()
        seen = history[rows].tocoo()
        known[seen.row, seen.col] = -np.inf
        order = top_k_indices(known, min(depth, known.shape[1]))
        above = np.take_along_axis(known, order, axis=1)  # (rows, depth) the known items' scores by rank
        placed = np.zeros(out.shape, dtype=np.float32)
        for j in range(slots - 1, -1, -1):  # the most likely item last: it ends highest above the same item
            go = np.flatnonzero((target[:, j] < depth) & (target[:, j] < above.shape[1]))
            if len(go) == 0:
                continue
            floor = above[go, target[go, j]].astype(np.float32)
            floor = np.where(np.isfinite(floor), floor, np.float32(0.0))
            # Above the known item, and above any new item already put there.
            value = np.maximum(np.nextafter(floor, np.float32(np.inf)),
                               np.nextafter(out[rows[go]][:, new].max(axis=1), np.float32(np.inf)))
            value = np.where(np.isfinite(value), value, np.nextafter(floor, np.float32(np.inf)))
            cols = new[best[go, j]]
            out[rows[go], cols] = value
            placed[rows[go], cols] = 1.0
        return placed if placed.any() else None

    def _placed_apart(self) -> np.ndarray:
        """The columns of the items nobody has taken: with an audience model they are out of the blend's
        ranking, listed by :meth:`_place_new_items` alone (none without one)."""
        if not self.params["audience_model"]:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.item_popularity == 0)

    def _audience_of(self, users: UserBlock, columns: np.ndarray) -> np.ndarray:
        """The audience model's scores of ``columns`` only: a block lists and explains a few new items, and
        scoring the whole catalogue for them doubled the content work of every block."""
        return self.components[self.params["audience_model"]].block_column_scores(users, columns)

    def audience_scores(self, users: UserBlock, columns: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The audience model's scores of these items (seen ones stay out); without one, the same mix as
        :meth:`score_block` of each component's scores standardised over all training users
        (``audience_scale``) instead of per user: a per-user z-score drops what sets one user's scores above
        another's, which is all that ranking users for an item reads."""
        if self.params["audience_model"]:
            out = self._audience_of(users, columns)
            seen = users.history[:, columns].tocoo()  # not the list's -inf: unplaced new items are -inf there
            out[seen.row, seen.col] = -np.inf
            return out
        out = np.zeros((len(users.user_ids), len(columns)), dtype=np.float32)
        for name, weight in self._mix(users, columns):
            mean, std = self.audience_scale[name]
            part = self.components[name].block_scores(users)[:, columns] - np.float32(mean)
            part *= np.float32(1.0 / std)
            part[~np.isfinite(part)] = 0.0
            weight.apply(part)
            out += part
        out[np.isneginf(scores)] = -np.inf  # seen items stay out
        return out

    def explain(self, users: UserBlock, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """The reason of the component that added most to each pair's score, in that component's words."""
        if users.shared is None:
            users.shared = {}
        if ("parts", id(self)) not in users.shared:
            self.score_block(users)
        parts = users.shared[("parts", id(self))]
        names = list(parts)
        if not names:
            return super().explain(users, rows, cols)
        top = np.argmax(np.stack([parts[name][rows, cols] for name in names]), axis=0)  # ties: first component
        why = self.reasons(rows, np.full(len(rows), "popular", dtype=object))
        for k, name in enumerate(names):
            mine = np.flatnonzero(top == k)
            if len(mine):
                replace(why, mine, self.components[name].explain(users, rows[mine], cols[mine]))
        return why

    def _save_state(self, path: Path) -> None:
        """Components already saved elsewhere are referenced by relative path, not copied."""
        where = {}
        for name, model in self.components.items():
            saved = model.saved_path if model.saved_path and model.saved_path.exists() else model.save(
                path / "components" / name)
            where[name] = os.path.relpath(saved.resolve(), path.resolve())
        (path / "components.json").write_text(json.dumps(where, indent=2))
        (path / "weights.json").write_text(json.dumps({"weights": {str(b): w for b, w in self.weights.items()},
                                                       "tuning": self.tuning,
                                                       "audience_scale": self.audience_scale}, indent=2))
        if "audience_floor" in vars(self):
            np.save(path / "audience_floor.npy", self.audience_floor)

    @classmethod
    def tuned_file(cls, path: Path) -> Path:
        """The JSON file of a saved hybrid's blend, ``{"weights": ..., "tuning": ...}``: what another fold's
        fit takes as its weights."""
        return Path(path) / "weights.json"

    @classmethod
    def saved_blend(cls, path: Path) -> dict:
        """The blend a saved hybrid uses, without loading its components."""
        return json.loads(cls.tuned_file(path).read_text())

    @classmethod
    def saved_tuning(cls, path: Path) -> dict:
        return cls.saved_blend(path)["tuning"]

    @classmethod
    def component_folders(cls, path: Path) -> dict[str, Path]:
        """The folders a saved hybrid loads its components from, by name (none for a folder not a hybrid's)."""
        where = Path(path) / "components.json"
        if not where.exists():
            return {}
        return {name: (Path(path) / relative).resolve() for name, relative in json.loads(where.read_text()).items()}

    def _load_state(self, path: Path) -> None:
        if self._loader is None:
            raise ValueError("a hybrid loads its components by kind: load it with models.registry.load()")
        where = self.component_folders(path)
        self.components = {name: self._loader(where[name]) for name in self.needed_components(self.params)}
        saved = self.saved_blend(path)
        self.weights = {int(b): w for b, w in saved["weights"].items()}
        self.tuning = saved["tuning"]
        self.audience_scale = ({name: tuple(v) for name, v in saved["audience_scale"].items()}
                               if "audience_scale" in saved else self._audience_scale(self.seed))
        floor = path / "audience_floor.npy"
        if floor.exists():
            self.audience_floor = np.load(floor)
