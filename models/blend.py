"""Tuning a hybrid's blend: per history bucket, the grid of component weights searched on that bucket's
validation users, and kept only where it beats the bucket's best single component significantly; where last
night's blend is given, tonight's choice replaces it only where it beats it significantly on tonight's validation
users (:class:`BlendTuning`, a mixin of :class:`models.hybrid.Hybrid`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from models.ranking import ndcg_at_k, ndcg_from_hits, one_sided_gain, served_z_scores, top_k_indices
from models.tiled import on_scoring_threads
from recsys import progress
from recsys.schema import USER_ID

BUCKET_EDGES = (0, 1, 3, 5, 10, 20)  # bucket b holds history lengths in [edge_b, edge_b+1)
WARM = len(BUCKET_EDGES)  # one more bucket: users seen in training (tuned on warm validation users)


def bucket_of(history_length: np.ndarray, in_training: np.ndarray | None = None) -> np.ndarray:
    buckets = np.searchsorted(np.asarray(BUCKET_EDGES), history_length, side="right") - 1
    if in_training is not None:
        buckets = np.where(in_training, WARM, buckets)
    return buckets


@dataclass
class ValidationCase:
    """One bucket's tuning data: users, what is known of them, and what they did next (the truth).

    ``as_history``: the known interactions are passed as history (cold users with k revealed items); for
    the warm bucket the users are in training already and ``known`` only masks what they have seen.
    """

    label: str
    bucket: int
    users: np.ndarray
    known: pl.DataFrame
    truth: pl.DataFrame
    as_history: bool


@dataclass
class CaseView:
    """What the grid search reads of one validation case: each component's z-scores on the candidate columns
    (``z``) and the truth there (``relevant``), truth items per user (``n_rel``, over the catalogue), each
    component's per-user nDCG@k over the catalogue (``singles``) and whether it ranks none of the users
    (``silent``: no finite, non-zero z-score)."""

    z: list[np.ndarray]
    relevant: np.ndarray
    n_rel: np.ndarray
    singles: list[np.ndarray]
    silent: list[bool]


def _rows_between(frame: pl.DataFrame, low: int, high: int) -> pl.DataFrame:
    """The rows of ``frame`` (sorted by user) whose user is in [low, high]: a block's rows, read without a scan."""
    users = frame[USER_ID].to_numpy()
    start, stop = np.searchsorted(users, low, side="left"), np.searchsorted(users, high, side="right")
    return frame.slice(int(start), int(stop - start))


class BlendTuning:
    """The grid search of :class:`models.hybrid.Hybrid` (its ``params``, ``item_ids`` and the scoring of its
    components)."""

    def _grid(self, n: int) -> list[tuple[float, ...]]:
        steps = int(round(1 / self.params["grid_step"]))
        return [tuple(c / steps for c in combo) for combo in itertools.product(range(steps + 1), repeat=n)
                if sum(combo) == steps]

    def _tune(self, components: dict, cases: list, seed: int = 0, last: dict[int, list[float]] | None = None):
        """Per bucket, the grid weights with the best nDCG@k on that bucket's validation case, kept only when
        they beat the bucket's best single component significantly (else that component alone).

        ``last``: last night's weights per bucket (aligned with ``components``). A bucket keeps them unless
        tonight's choice beats them significantly on tonight's validation users: with a hundred validation
        users two components within a percent of each other trade places from night to night on noise, and
        every switch changes every user's list (on protocol T's fifth cut EASE led ALS 0.1859 to 0.1846 on
        validation and lost 0.176 to 0.185 on the test).

        Cold cases pass their revealed items as history; the warm case's users are in training already.
        A bucket without validation users keeps the first component alone.
        """
        names = list(components)
        grid = self._grid(len(names))
        default = tuple(1.0 if i == 0 else 0.0 for i in range(len(names)))
        weights: dict[int, list[float]] = {b: list(default) for b in range(WARM + 1)}
        tuning: dict[str, dict] = {}
        for case in cases:
            b, label, truth = case.bucket, case.label, case.truth
            users = np.intersect1d(case.users, truth[USER_ID].unique().to_numpy())
            if len(users) == 0:
                continue
            progress.detail(f"tuning the blend for {label} validation users")
            view = self._case_view(components, users, case)
            zc, rel_c, n_rel, silent = view.z, view.relevant, view.n_rel, view.silent
            singles = dict(zip(names, view.singles, strict=True))
            # A component that cannot rank these users at all (e.g. CF with no history) gets no weight,
            # so that ties in the grid do not hand it weight that means nothing.
            candidates = [w for w in grid if not any(wi > 0 and quiet for wi, quiet in zip(w, silent, strict=True))]
            candidates = candidates or grid
            per_user = [self._per_user(sum(wi * zi for wi, zi in zip(w, zc, strict=True) if wi > 0), rel_c, n_rel)
                        for w in candidates]
            results = [float(p.mean()) for p in per_user]
            best = int(np.argmax(results))  # first maximum in grid order: deterministic
            audible = [name for i, name in enumerate(names) if not silent[i]] or names
            best_single = max(audible, key=lambda name: (float(singles[name].mean()), -names.index(name)))
            gain = one_sided_gain(per_user[best], singles[best_single], float(self.params["blend_alpha"]),
                                  int(self.params["bootstrap_samples"]), seed + b)
            blended = sum(1 for wi in candidates[best] if wi > 0) > 1
            kept = blended and gain[1] > 0
            chosen = candidates[best] if kept or not blended else tuple(float(n == best_single) for n in names)
            described = self._describe(chosen, names)
            previous = (last or {}).get(b)
            held = None
            if self._comparable(previous, chosen, silent):
                # Tonight's choice as the rule above judged it: the grid's blend, or a component alone.
                tonight = per_user[best] if kept else singles[names[int(np.argmax(chosen))]]
                before = self._blend_per_user(tuple(previous), names, singles, zc, rel_c, n_rel)
                held = self._hold_last(previous, tonight, before, seed + b)
            if held is not None and held["kept"]:
                chosen = tuple(held["weights"])
                described = "last night's " + self._describe(chosen, names)
            weights[b] = list(chosen)
            tuning[label] = {
                "users": int(len(users)), "weights": dict(zip(names, chosen, strict=True)),
                "grid_best": dict(zip(names, candidates[best], strict=True)), "ndcg_blend": results[best],
                "best_component": best_single,
                "blend_gain": {"lift": gain[0], "ci_low": gain[1], "ci_high": gain[2],
                               "one_sided_alpha": float(self.params["blend_alpha"])},
                "chosen": described,
                "ndcg_components": {name: float(values.mean()) for name, values in singles.items()},
                "bucket": int(b),
                "hit_rate_by_rank": self._hit_rate_by_rank(zc, rel_c, chosen),
            }
            if held is not None:
                tuning[label]["last_night"] = held
        return weights, tuning

    @staticmethod
    def _describe(weights: tuple[float, ...], names: list[str]) -> str:
        return "blend" if sum(1 for w in weights if w > 0) > 1 else f"{names[int(np.argmax(weights))]} alone"

    @staticmethod
    def _comparable(last: list[float] | None, chosen: tuple[float, ...], silent: list[bool]) -> bool:
        """Whether last night's weights can stand against tonight's ``chosen``: given, for the same components,
        other than tonight's, and with no weight on a component that cannot rank these users."""
        return (last is not None and len(last) == len(chosen) and tuple(last) != tuple(chosen) and any(last)
                and not any(wi > 0 and quiet for wi, quiet in zip(last, silent, strict=True)))

    def _blend_per_user(self, w: tuple[float, ...], names: list[str], singles: dict[str, np.ndarray],
                        zc: list[np.ndarray], relevant: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
        """Each validation user's nDCG@k under weights ``w``: a single component's over the catalogue (as the
        singles are judged), a blend's over the candidate view (as the grid is)."""
        if sum(1 for wi in w if wi > 0) == 1:
            return singles[names[int(np.argmax(w))]]
        return self._per_user(sum(wi * zi for wi, zi in zip(w, zc, strict=True) if wi > 0), relevant, n_rel)

    def _hold_last(self, last: list[float], tonight: np.ndarray, before: np.ndarray, seed: int) -> dict:
        """Last night's weights (``before``: each validation user's nDCG@k under them) against tonight's choice
        (``tonight``): kept unless tonight's beats them significantly (one-sided ``blend_alpha``)."""
        gain = one_sided_gain(tonight, before, float(self.params["blend_alpha"]),
                              int(self.params["bootstrap_samples"]), seed)
        return {"weights": [float(w) for w in last], "ndcg": float(before.mean()),
                "ndcg_tonight": float(tonight.mean()),
                "gain_tonight": {"lift": gain[0], "ci_low": gain[1], "ci_high": gain[2]}, "kept": bool(gain[1] <= 0)}

    def _hit_rate_by_rank(self, z: list[np.ndarray], relevant: np.ndarray, weights) -> list[float]:
        """The chosen blend's calibration on the bucket's validation users: at each rank 1..new_item_rank, the
        share of users whose item there is one they took (made non-increasing down the list). What a known
        item at that rank is worth, on the scale of a probability that the user takes it: a new item whose
        calibrated probability is higher belongs above it."""
        blend = sum(w * zi for w, zi in zip(weights, z, strict=True) if w > 0)
        depth = min(int(self.params["new_item_rank"]), blend.shape[1])
        hits = np.take_along_axis(relevant, top_k_indices(blend, depth), axis=1).mean(axis=0)
        return [round(float(v), 6) for v in np.minimum.accumulate(hits)]

    def _case_view(self, components: dict, users: np.ndarray, case: ValidationCase) -> CaseView:
        """Each component's z-scores of one case's ``users`` (the items they have seen masked), reduced to what
        the tuning reads, a block of users at a time: the candidate view (:meth:`_candidate_view`), each
        component's per-user nDCG@k over the catalogue and whether it ranks anyone. A block holds
        ``block_users`` users, so memory is one scoring block per component, not every validation user's
        catalogue per component (3,000 users x 200k items x 7 components: 17 GB)."""
        known, truth = case.known.sort(USER_ID), case.truth.sort(USER_ID)  # each block reads its own rows
        staged = self._tunes_in_stages(components)
        parts: list[CaseView] = []
        for start in range(0, len(users), self.block_users):
            block = users[start:start + self.block_users]
            mine = _rows_between(known, block[0], block[-1])
            history = mine if (case.as_history and mine.height) else None
            known_matrix = self._history_matrix(block, mine if mine.height else None)
            relevant = self._truth_matrix(block, _rows_between(truth, block[0], block[-1]))
            if staged:
                parts.append(self._staged_view(components, block, known_matrix, case.as_history, relevant))
                continue
            seen = known_matrix.nonzero()  # the seen entries' coordinates: no dense mask per block
            z = []
            for model in components.values():
                # Standardised as the served blend standardises it; then the seen items masked.
                zi = served_z_scores(self._align(model, model.score_users(block, history)), known_matrix)
                zi[seen] = -np.inf
                z.append(zi)
            n_rel = relevant.sum(axis=1).astype(np.int64)
            tops = self._candidates(z)
            zc, rel_c = self._candidate_view(z, relevant, tops)
            k = int(self.params["k"])
            if tops is None or tops[0].shape[1] < k:
                singles = [self._per_user(zi, relevant, n_rel, self.tiebreak) for zi in z]
            else:  # a component's own top k are the first k of its candidates (the same order, ties and all)
                singles = [ndcg_from_hits(np.take_along_axis(relevant, top[:, :k], axis=1).astype(np.float64), n_rel)
                           for top in tops]
            parts.append(CaseView(zc, rel_c, n_rel, singles, [not np.any(np.isfinite(zi) & (zi != 0)) for zi in z]))
        return CaseView([np.concatenate([p.z[i] for p in parts]) for i in range(len(components))],
                        np.concatenate([p.relevant for p in parts]), np.concatenate([p.n_rel for p in parts]),
                        [np.concatenate([p.singles[i] for p in parts]) for i in range(len(components))],
                        [all(p.silent[i] for p in parts) for i in range(len(components))])

    def _tunes_in_stages(self, components: dict) -> bool:
        """Whether the grid's columns come from each component's first stage (a catalogue of
        ``retrieval_min_items`` items or more, served in two stages, whose components share its catalogue) rather
        than from each component's z-scores of every item."""
        c = int(self.params["tune_candidates"])
        return (len(self.item_ids) >= int(self.params["retrieval_min_items"]) and int(self.params["k"]) <= c
                and c * len(components) < len(self.item_ids)
                and all(np.array_equal(model.item_ids, self.item_ids) for model in components.values()))

    def _staged_view(self, components: dict, block: np.ndarray, known: sp.csr_matrix, as_history: bool,
                     relevant: np.ndarray) -> CaseView:
        """One block's :class:`CaseView` from the components' first stages (:meth:`Recommender.first_stage`, each
        by its own route: a factor model's product and Gram moments, item-kNN's sparse rows, capped EASE's
        fitted columns), as two-stage serving reads them: each component's best ``tune_candidates`` unseen items
        a user and its z-scores of the block's candidates alone, standardised over all of a user's unseen items
        as the served blend is. At 200k items the dense route standardised and selected over every item, for
        every component and validation user (on a 200k-item catalogue, the tuning fit's time). A user's
        candidates are those of :meth:`_candidate_view` but for the items a component cannot score at all
        (the dense route listed them with z-score 0 where a user had fewer than ``tune_candidates`` others)."""
        c, k = int(self.params["tune_candidates"]), int(self.params["k"])
        extra = known if as_history else sp.csr_matrix(known.shape, dtype=np.float32)
        users = self._user_block(block, extra)
        users.history = (users.history + known).tocsr()  # what the case masks: the known items, seen or not
        users.history.data[:] = 1.0
        stages = [model.first_stage(users, c) for model in components.values()]
        columns = np.unique(np.concatenate([stage.top[stage.top >= 0] for stage in stages]))
        cand = np.concatenate([stage.top for stage in stages], axis=1)
        missing = cand < 0
        order = np.where(missing, len(self.item_ids), self.tiebreak[np.where(missing, 0, cand)])
        by = np.argsort(order, axis=1, kind="stable")
        cand, missing = np.take_along_axis(cand, by, axis=1), np.take_along_axis(missing, by, axis=1)
        repeat = missing.copy()
        repeat[:, 1:] |= cand[:, 1:] == cand[:, :-1]
        at = np.searchsorted(columns, np.where(missing, columns[0] if len(columns) else 0, cand))
        zc = []
        for stage in stages:
            view = np.take_along_axis(stage.z_at(columns), at, axis=1) if len(columns) else np.zeros(cand.shape,
                                                                                                     np.float32)
            view[repeat] = -np.inf
            zc.append(view)
        rel_c = np.take_along_axis(relevant, np.where(missing, 0, cand), axis=1) & ~repeat
        n_rel = relevant.sum(axis=1).astype(np.int64)
        singles = []
        for stage in stages:
            top = self._filled(stage.top[:, :k], users.history)
            hits = np.take_along_axis(relevant, np.maximum(top, 0), axis=1) & (top >= 0)
            singles.append(ndcg_from_hits(hits.astype(np.float64), n_rel))
        # A component that ranks anyone gives each such user positive z-scores on its own best items.
        silent = [not np.any(np.isfinite(z) & (z != 0)) for z in zc]
        return CaseView(zc, rel_c, n_rel, singles, silent)

    def _filled(self, top: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
        """A first stage's lists (``top``, -1 past the items its route scores) completed as the whole
        catalogue's ranking completes them: with the user's other unseen items in the served tie-break order
        (a component that scores nothing of a user, item-kNN for one with no history, ranks the catalogue
        by that order; its items all score alike)."""
        top = top.copy()
        short = np.flatnonzero((top < 0).any(axis=1))
        if len(short) == 0:
            return top
        order = np.empty(len(self.tiebreak), dtype=np.int64)  # the items in tie-break order (its inverse)
        order[self.tiebreak] = np.arange(len(self.tiebreak))
        for row in short:
            have = top[row][top[row] >= 0]
            skip = np.union1d(have, seen.indices[seen.indptr[row]:seen.indptr[row + 1]])
            head = order[:top.shape[1] + len(skip)]
            fill = head[~np.isin(head, skip)][:top.shape[1] - len(have)]
            top[row] = np.concatenate([have, fill, np.full(top.shape[1] - len(have) - len(fill), -1)])
        return top

    def _candidates(self, z: list[np.ndarray]) -> list[np.ndarray] | None:
        """Per component, each user's top ``tune_candidates`` columns in the served order (:func:`top_k_indices`
        with the served tie-break), one component a thread (numpy's selections release the GIL); None where
        the components' candidates would cover the catalogue (:meth:`_candidate_view` takes every column)."""
        c = int(self.params["tune_candidates"])
        if c * len(z) >= z[0].shape[1]:
            return None
        return on_scoring_threads(lambda zi: top_k_indices(zi, c, self.tiebreak), z)

    def _candidate_view(self, z: list[np.ndarray], relevant: np.ndarray,
                        tops: list[np.ndarray] | None) -> tuple[list[np.ndarray], np.ndarray]:
        """The grid search's columns: per user, the union of every component's top ``tune_candidates`` items
        (``tops``, from :meth:`_candidates`), in the served tie-break order (more popular first, then the lower
        id), so that a blend's ties break on these columns as in the published lists.

        A blend of z-scores ranks an item in its top k only if some component ranks it high, so the grid
        runs on a few hundred columns instead of the catalogue (at 27k items, 60x less work a weighting);
        a catalogue of fewer items (``tops`` None) is every column, reordered. Repeats are masked out.
        """
        if tops is None:
            order = np.argsort(self.tiebreak)
            return [zi[:, order] for zi in z], relevant[:, order]
        cand = np.concatenate(tops, axis=1)
        cand = np.take_along_axis(cand, np.argsort(self.tiebreak[cand], axis=1, kind="stable"), axis=1)
        repeat = np.zeros(cand.shape, dtype=bool)
        repeat[:, 1:] = cand[:, 1:] == cand[:, :-1]
        zc = []
        for zi in z:
            view = np.take_along_axis(zi, cand, axis=1)
            view[repeat] = -np.inf
            zc.append(view)
        return zc, np.take_along_axis(relevant, cand, axis=1) & ~repeat

    def _per_user(self, z: np.ndarray, relevant: np.ndarray, n_rel: np.ndarray,
                  tiebreak: np.ndarray | None = None) -> np.ndarray:
        """Each validation user's nDCG@k of the ranking ``z`` (columns aligned with ``relevant``; ties in
        ``tiebreak`` order, default the columns', which the candidate view puts in the served order)."""
        return ndcg_at_k(z, relevant, self.params["k"], n_rel, tiebreak)

    def _truth_matrix(self, users: np.ndarray, truth: pl.DataFrame) -> np.ndarray:
        return self._history_matrix(users, truth).toarray() > 0
