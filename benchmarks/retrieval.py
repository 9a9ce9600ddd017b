"""Two-stage retrieval, judged before it was built and as built: would the published lists survive if the hybrid
reranked only a few hundred candidates a user instead of scoring the whole catalogue, and do they survive the
product's own two-stage serving (:meth:`models.hybrid.Hybrid.candidate_scores`, ``served`` in the result)?

    python -m benchmarks.retrieval --datasets ml-100k synthetic shop --out var/benchmarks/retrieval.json

Why: publishing scores every user against every item with every component (users x items cells, 558 s of the
30 M shop night; ~6,200 s projected at 1 M users x 200 k items), so the 100 M night needs a first stage that
proposes candidates at a cost that does not grow with users x items x components, and a second that reranks
them. Whether that changes what is published is measured here on real (MovieLens-100k) and planted
(synthetic) data, on the night's shape: the log cut in time (``--cut``), the hybrid fitted and tuned as the
nightly fits it on what was known then, scored on what the known users did next (warm) and on the users first
seen after the cut with their first k interactions revealed (k-shot).

Each user's candidates are the union of the top ``C`` of some cheap sources (a component's own ranking of the
user's unseen items: ALS's and the two-tower's are a thin SGEMM, item-kNN's a sparse product, segment
popularity's a lookup, EASE's a sparse x dense product on the items it holds), plus the best ``n`` by the
hybrid's own score of the items with fewer than its ``item_evidence`` interactions (those are scored apart, on
their columns alone, at any scale, and a list holds at most ``n`` of them: this part loses nothing). The
second stage here is exact: the hybrid's own scores (z-scored over each user's unseen items), kept on the
candidates. So the numbers isolate what the candidate cut loses:

- ``list_recall``: the share of the full ranking's top-``n`` that is among the candidates;
- ``same_lists``: the share of users whose reranked top-``n`` is the full one, item for item and in order;
- ``ndcg``: nDCG@``n`` of the reranked lists against what the users really did next, beside the full lists';
- ``block_columns``: the columns a second stage would score for a block of 80 users (the union of their
  candidates), against the catalogue: what it would cost against today's whole rows.

``served``: the product's two-stage serving against its full ranking, both as the publish step serves them
(:func:`served_slice`): there each component's mean and deviation come from its own first stage, not from the
whole row. The first stage's cost at a shop's width is ``--stage-one-items``: ALS-shaped factors (random, 24
dimensions) in the product's scoring blocks against that many items, top-``C`` per user by the product's own
selection, seconds per million users.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl
import scipy.sparse as sp

import models.base
from benchmarks.night import shape
from benchmarks.quality import fit_tuned, load_ml100k, load_synthetic, ml100k_dir, write_result
from models.base import Recommender, positions_of
from models.ranking import ndcg_from_hits, top_k_indices
from models.serving import SCORE_BLOCK_CELLS, serve_together
from recsys.schema import ITEM_ID, USER_ID
from recsys.settings import Settings
from tasks.evaluate import tuning_shape
from tasks.features import Frames
from tasks.generate import GeneratorConfig
from tasks.split import temporal_cut

SOURCES = ("als", "item_knn", "segment_popularity", "two_tower", "ease")
# Candidate sets judged: each source alone, and unions in the order of what they cost at a shop's scale.
UNIONS = {"als+item_knn+segment_popularity": ("als", "item_knn", "segment_popularity"),
          "+two_tower": ("als", "item_knn", "segment_popularity", "two_tower"),
          "all five": SOURCES}
DEPTHS = (50, 100, 200, 500)
BLOCK_USERS = 512
# A second stage scores a block of users on the union of their candidates: the product's block at 200k items
# (SCORE_BLOCK_CELLS / 200k). ``block_columns``: how many columns such a block needs, against the catalogue.
STAGE_TWO_USERS = 80


def users_history(train: pl.DataFrame, history: pl.DataFrame | None, users: np.ndarray,
                  item_ids: np.ndarray) -> sp.csr_matrix:
    """(users, items) 0/1: what each of ``users`` is known to have taken (training, plus ``history`` for users
    first seen after the cut): what a list leaves out."""
    known = train if history is None else pl.concat([train.select(USER_ID, ITEM_ID),
                                                     history.select(USER_ID, ITEM_ID)])
    rows = known.filter(pl.col(USER_ID).is_in(pl.Series(users).implode())
                        & pl.col(ITEM_ID).is_in(pl.Series(item_ids).implode()))
    m = sp.csr_matrix((np.ones(rows.height, dtype=np.float32),
                       (np.searchsorted(users, rows[USER_ID].to_numpy()),
                        positions_of(item_ids, rows[ITEM_ID].to_numpy()))), shape=(len(users), len(item_ids)))
    m.sum_duplicates()
    return m


def aligned_scores(model: Recommender, item_ids: np.ndarray, users: np.ndarray,
                   history: pl.DataFrame | None) -> np.ndarray:
    """``model``'s scores of ``users`` on the columns ``item_ids`` (-inf where it holds no such item)."""
    scores = model.score_users(users, history)
    if np.array_equal(model.item_ids, item_ids):
        return scores
    out = np.full((len(users), len(item_ids)), -np.inf, dtype=np.float32)
    pos = np.searchsorted(item_ids, model.item_ids)
    out[:, pos] = scores  # a component's items are among the hybrid's
    return out


def judge_slice(hybrid: Recommender, train: pl.DataFrame, truth: pl.DataFrame, history: pl.DataFrame | None,
                n: int, depths: tuple[int, ...]) -> dict:
    """The candidate sets' numbers (module docstring) for the users of ``truth``."""
    item_ids, tiebreak = hybrid.item_ids, hybrid.tiebreak
    users = np.sort(truth.filter(pl.col(ITEM_ID).is_in(pl.Series(item_ids).implode()))[USER_ID].unique().to_numpy())
    few = np.flatnonzero(hybrid.item_popularity < float(hybrid.params["item_evidence"]))
    sets = {**{s: (s,) for s in SOURCES}, **UNIONS}
    totals = {name: {c: np.zeros(5) for c in depths} for name in sets}  # recall, same lists, ndcg, candidates, columns
    full_ndcg = 0.0
    for lo in range(0, len(users), BLOCK_USERS):
        block = users[lo:lo + BLOCK_USERS]
        known = None if history is None else history.filter(pl.col(USER_ID).is_in(pl.Series(block).implode()))
        seen = users_history(train, known, block, item_ids).tocoo()
        relevant = users_history(truth, None, block, item_ids).toarray() > 0
        relevant[seen.row, seen.col] = False
        n_relevant = relevant.sum(axis=1)
        scores = aligned_scores(hybrid, item_ids, block, known)
        scores[seen.row, seen.col] = -np.inf
        full = top_k_indices(scores, n, tiebreak)
        # The items with too little evidence are scored apart (their columns alone, at any scale): the best n of
        # them by the hybrid's own score hold every one of them the full list can hold.
        few_top = few[top_k_indices(scores[:, few], min(n, len(few)), tiebreak[few])] if len(few) else full[:, :0]
        full_ndcg += ndcg_from_hits(np.take_along_axis(relevant, full, axis=1), n_relevant).sum()
        tops = {}
        for source in SOURCES:
            own = aligned_scores(hybrid.components[source], item_ids, block, known)
            own[seen.row, seen.col] = -np.inf
            tops[source] = top_k_indices(own, max(depths), tiebreak)
        listed = np.isfinite(np.take_along_axis(scores, full, axis=1))  # the full lists' items
        for c in depths:
            for name, members in sets.items():
                candidate = np.zeros(scores.shape, dtype=bool)
                np.put_along_axis(candidate, few_top, True, axis=1)
                for source in members:
                    np.put_along_axis(candidate, tops[source][:, :c], True, axis=1)
                candidate[seen.row, seen.col] = False
                reranked = top_k_indices(np.where(candidate, scores, -np.inf), n, tiebreak)
                kept = np.take_along_axis(candidate, full, axis=1) & listed
                totals[name][c] += [
                    (kept.sum(axis=1) / np.maximum(listed.sum(axis=1), 1)).sum(),
                    (reranked == full).all(axis=1).sum(),
                    ndcg_from_hits(np.take_along_axis(relevant, reranked, axis=1), n_relevant).sum(),
                    candidate.sum(),
                    sum(candidate[g:g + STAGE_TWO_USERS].any(axis=0).sum() * len(candidate[g:g + STAGE_TWO_USERS])
                        for g in range(0, len(block), STAGE_TWO_USERS))]
    count = max(len(users), 1)
    return {"users": int(len(users)), "few_evidence_items": int(len(few)), "full_ndcg": round(full_ndcg / count, 4),
            "sets": {name: {str(c): {"list_recall": round(t[0] / count, 4), "same_lists": round(t[1] / count, 4),
                                     "ndcg": round(t[2] / count, 4), "candidates": round(t[3] / count, 1),
                                     "block_columns": round(t[4] / count, 1)}
                            for c, t in by_depth.items()} for name, by_depth in totals.items()}}


def served_slice(hybrid: Recommender, train: pl.DataFrame, truth: pl.DataFrame, history: pl.DataFrame | None,
                 n: int, depth: int) -> dict:
    """The product's own two-stage serving (:meth:`models.hybrid.Hybrid.candidate_scores`, forced here whatever
    the catalogue's width: ``retrieval_min_items`` 0, ``retrieval_depth`` ``depth``) against its full ranking,
    both as the publish step serves them (with reasons) in blocks of ``STAGE_TWO_USERS`` users, the product's
    block at 200k items (on these catalogues its own blocks hold thousands of users, whose candidates together
    are the whole catalogue: nothing would be judged): the users whose published list is the same item for item
    and in order, the full lists' rows kept, the same reasons, nDCG@``n`` of both against what the users did
    next, and the seconds of each pass on this machine."""
    item_ids = hybrid.item_ids
    users = np.sort(truth.filter(pl.col(ITEM_ID).is_in(pl.Series(item_ids).implode()))[USER_ID].unique().to_numpy())
    relevant = users_history(truth, None, users, item_ids).toarray() > 0
    seen = users_history(train, history, users, item_ids).tocoo()
    relevant[seen.row, seen.col] = False

    def serve() -> tuple[pl.DataFrame, float]:
        started = time.perf_counter()
        top = serve_together({"hybrid": hybrid}, users, n, history=history, explain=True)["hybrid"].top
        return top.sort(USER_ID, "rank"), time.perf_counter() - started

    def ndcg(top: pl.DataFrame) -> float:
        rows, cols = np.searchsorted(users, top[USER_ID].to_numpy()), positions_of(item_ids, top[ITEM_ID].to_numpy())
        hits = np.zeros((len(users), n))
        hits[rows, top["rank"].to_numpy() - 1] = relevant[rows, cols]
        return float(ndcg_from_hits(hits, relevant.sum(axis=1)).mean())

    kept, cells = dict(hybrid.params), models.base.SCORE_BLOCK_CELLS
    models.base.SCORE_BLOCK_CELLS = STAGE_TWO_USERS * len(item_ids)  # what block_users reads
    try:
        full, full_seconds = serve()
        hybrid.params.update(retrieval_min_items=0, retrieval_depth=depth)
        two, two_seconds = serve()
    finally:
        hybrid.params.update(kept)
        models.base.SCORE_BLOCK_CELLS = cells
    lists = [top.group_by(USER_ID, maintain_order=True).agg(ITEM_ID, "reason_kind") for top in (full, two)]
    both = lists[0].join(lists[1], on=USER_ID, how="left")
    rows = full.join(two, on=[USER_ID, ITEM_ID], how="left")
    return {"users": int(len(users)), "depth": depth,
            "same_lists": round(float((both[ITEM_ID] == both[f"{ITEM_ID}_right"]).mean()), 4),
            "rows_kept": round(float(rows["rank_right"].is_not_null().mean()), 4),
            "same_reasons": round(float((rows["reason_kind"] == rows["reason_kind_right"]).mean()), 4),
            "ndcg_full": round(ndcg(full), 4), "ndcg_two_stage": round(ndcg(two), 4),
            "seconds_full": round(full_seconds, 2), "seconds_two_stage": round(two_seconds, 2)}


def judge(frames: Frames, label: str, settings: Settings, cut: float, n: int, depths: tuple[int, ...],
          k_shots: tuple[int, ...], log=print) -> dict:
    """Fit the night's hybrid on the log before ``cut`` and judge the candidate sets on its warm and k-shot users."""
    split = temporal_cut(frames.interactions, cut, k_shots)
    started = time.perf_counter()
    hybrid = fit_tuned(["hybrid"], frames, split.train, settings, label=f"retrieval, {label}",
                       **tuning_shape(settings))["hybrid"]
    log(f"  {label}: hybrid fitted on {split.train.height:,} interactions before the cut in "
        f"{time.perf_counter() - started:.0f} s; {len(hybrid.item_ids):,} items")
    cases = {"warm": (split.warm, None)}
    cases.update({f"k={k}": (split.cold.truth[k], split.cold.history[k]) for k in k_shots
                  if k > 0 and split.cold.truth.get(k) is not None and split.cold.truth[k].height})
    slices = {name: judge_slice(hybrid, split.train, truth, history, n, depths)
              for name, (truth, history) in cases.items()}
    served = {name: served_slice(hybrid, split.train, truth, history, n, settings.retrieval_depth)
              for name, (truth, history) in cases.items()}
    return {"dataset": label, "cut": cut, "items": int(len(hybrid.item_ids)), "train": split.train.height,
            "slices": slices, "served": served, "seconds": round(time.perf_counter() - started, 1)}


def stage_one_seconds(items: int, depths: tuple[int, ...], users: int = 4096, factors: int = 24,
                      seed: int = 0) -> list[dict]:
    """Seconds per million users of the cheapest first stage at a shop's width: blocks of users' factors (as
    many users a block as the product scores, ``SCORE_BLOCK_CELLS`` / items) against ``items`` item factors
    (one SGEMM each), top-``depth`` per user by the product's selection (:func:`models.ranking.top_k_indices`).
    Random factors: the cost, not the ranking, is measured. Each block's product is written twice over: into a
    fresh array, as the product's scoring does today, and into one array reused from block to block (this
    machine backs memory a process has just been given slowly: a fresh block of 64 MB is mapped and faulted
    in anew each time). One block first, untimed."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((users, factors), dtype=np.float32)
    v = rng.standard_normal((items, factors), dtype=np.float32)
    tiebreak = np.arange(items, dtype=np.int64)
    block = max(1, SCORE_BLOCK_CELLS // items)
    reused = np.empty((block, items), dtype=np.float32)
    out = []
    for depth in depths:
        row = {"items": items, "depth": depth, "users": users, "block_users": block, "factors": factors}
        for label, into in (("fresh", None), ("reused", reused)):
            top_k_indices(u[:block] @ v.T, depth, tiebreak)
            multiplied = selected = 0.0
            for lo in range(0, users, block):
                started = time.perf_counter()
                left = u[lo:lo + block]
                product = left @ v.T if into is None else np.matmul(left, v.T, out=into[:len(left)])
                multiplied += time.perf_counter() - started
                top_k_indices(product, depth, tiebreak)
                selected += time.perf_counter() - started
            row[f"sgemm_s_per_million_users_{label}"] = round(multiplied * 1e6 / users, 1)
            row[f"s_per_million_users_{label}"] = round(selected * 1e6 / users, 1)
        out.append(row)
    return out


def format_table(result: dict) -> str:
    lines = []
    for data in result["datasets"]:
        lines.append(f"{data['dataset']}: {data['items']:,} items, the log cut at {data['cut']:.0%} "
                     f"({data['train']:,} interactions before it); the hybrid's top {result['n']} against each "
                     f"user's candidates (+ its best {result['n']} of the items with too little evidence)")
        for name, part in data["slices"].items():
            lines.append(f"  {name:6} {part['users']:>6,} users, full lists nDCG@{result['n']} {part['full_ndcg']:.4f}"
                         f" ({part['few_evidence_items']} items with too little evidence)")
            lines.append(f"    {'candidates from':34} {'C':>4} {'per user':>9} {'list recall':>12} "
                         f"{'same lists':>11} {'nDCG':>7} {'80-user block':>14}")
            for set_name, by_depth in part["sets"].items():
                for c, v in by_depth.items():
                    lines.append(f"    {set_name:34} {c:>4} {v['candidates']:>9,.0f} {v['list_recall']:>12.4f} "
                                 f"{v['same_lists']:>11.4f} {v['ndcg']:>7.4f} {v['block_columns']:>14,.0f}")
    for data in result["datasets"]:
        for name, v in data.get("served", {}).items():
            lines.append(f"{data['dataset']} {name:6} served in two stages (top {v['depth']} a component) against "
                         f"the full ranking, {v['users']:,} users in blocks of {STAGE_TWO_USERS}: same lists "
                         f"{v['same_lists']:.4f}, rows kept "
                         f"{v['rows_kept']:.4f}, same reasons {v['same_reasons']:.4f}, nDCG@{result['n']} "
                         f"{v['ndcg_two_stage']:.4f} / {v['ndcg_full']:.4f}, {v['seconds_two_stage']} s / "
                         f"{v['seconds_full']} s")
    for s in result.get("stage_one", []):
        lines.append(f"stage one at {s['items']:,} items ({s['block_users']} users a block), top {s['depth']}: "
                     f"{s['s_per_million_users_fresh']} s a million users with a fresh block "
                     f"({s['sgemm_s_per_million_users_fresh']} s the SGEMM), {s['s_per_million_users_reused']} s "
                     f"reusing one ({s['sgemm_s_per_million_users_reused']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=["ml-100k", "synthetic", "shop"],
                        default=["ml-100k", "synthetic", "shop"])
    parser.add_argument("--path", help="the MovieLens-100k folder (default RECSYS_ML100K_DIR)")
    parser.add_argument("--shop-size", type=int, default=500_000,
                        help="interactions of the shop-shaped synthetic set (100 a user, 2,000 items a million)")
    parser.add_argument("--cut", type=float, default=0.8, help="where the log is cut in time (a quantile)")
    parser.add_argument("--n", type=int, default=10, help="list length")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS), help="candidates per source")
    parser.add_argument("--stage-one-items", type=int, nargs="*", default=[200_000],
                        help="catalogue widths at which the first stage's cost is timed (none: skip)")
    parser.add_argument("--out", default="var/benchmarks/retrieval.json")
    args = parser.parse_args(argv)
    settings = Settings()
    depths, k_shots = tuple(sorted(args.depths)), tuple(k for k in settings.k_shots if 0 < k <= 5)
    started = time.perf_counter()
    result = {"n": args.n, "depths": list(depths), "seed": settings.seed, "datasets": []}
    for name in args.datasets:
        if name == "ml-100k":
            frames = load_ml100k(ml100k_dir(args.path))
        elif name == "synthetic":
            frames = load_synthetic(settings.seed)
        else:
            users, items = shape(args.shop_size, "shop")
            frames = load_synthetic(config=GeneratorConfig(n_users=users, n_items=items,
                                                           n_interactions=args.shop_size, seed=settings.seed))
            name = f"shop {args.shop_size:,}"
        result["datasets"].append(judge(frames, name, settings, args.cut, args.n, depths, k_shots))
    result["stage_one"] = [row for items in args.stage_one_items for row in stage_one_seconds(items, depths)]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return write_result(result, args.out, format_table(result), "")


if __name__ == "__main__":
    raise SystemExit(main())
