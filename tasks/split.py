"""Seeded train/test splits: held-out cold users (zero- and few-shot) and two warm protocols.

Every split is a pure function of (interactions, parameters, seed) and never lets a test interaction
into training: tests in tests/unit/test_split.py check exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from models.base import mix64
from models.blend import BUCKET_EDGES, WARM, ValidationCase
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID

WARM_TRUTH_SHARE = 0.2
WARM_TRUTHS = ("latest", "random", "items", "window")


@dataclass
class ColdSplit:
    """Cold users are absent from ``train``; for each k their first k interactions are the history."""

    train: pl.DataFrame
    cold_users: np.ndarray
    history: dict[int, pl.DataFrame] = field(default_factory=dict)  # k -> first k interactions by time
    truth: dict[int, pl.DataFrame] = field(default_factory=dict)  # k -> the rest
    excluded: dict[int, int] = field(default_factory=dict)  # k -> cold users with no truth left


@dataclass
class ItemColdSplit:
    """Held-out items are absent from ``train`` (their features stay in the catalogue): ``truth`` is what
    users did with them, for users still in ``train``."""

    train: pl.DataFrame
    new_items: np.ndarray
    truth: pl.DataFrame
    excluded_users: int  # users whose every interaction was with a held-out item (nothing to serve them from)


def item_cold_split(interactions: pl.DataFrame, share: float, seed: int,
                    everything: pl.DataFrame | None = None) -> ItemColdSplit:
    """A seeded ``share`` of the items that have interactions, held out entirely: new items as a catalogue
    sees them on the night they arrive. ``interactions`` is what the fold trains on (less the held-out items);
    ``everything`` (default: ``interactions``) is where the items are drawn from and the truth is read: the
    nightly trains the item-cold fold on its evaluation fold's training, and takes as truth every interaction
    its users ever had with the held-out items."""
    everything = interactions if everything is None else everything
    items = np.sort(everything[ITEM_ID].unique().to_numpy())
    n_new = int(round(len(items) * share))
    new = np.sort(np.random.default_rng(seed).choice(items, size=n_new, replace=False)) if n_new else items[:0]
    is_new = pl.col(ITEM_ID).is_in(new)
    train = interactions.filter(~is_new)
    held = everything.filter(is_new)
    truth = held.filter(pl.col(USER_ID).is_in(train[USER_ID].unique()))
    return ItemColdSplit(train, new, truth, held[USER_ID].n_unique() - truth[USER_ID].n_unique())


def user_sample(interactions: pl.DataFrame, max_interactions: int, seed: int) -> pl.DataFrame:
    """The rows of the users first in a seeded order, as many users as keep their rows within
    ``max_interactions`` (every row where that is 0 or they all fit). A user's place in the order is a hash of
    their id and ``seed`` alone, so the sample is the same users from night to night as the log grows (new users
    join it at their own places). What the nightly evaluation is carved from at scale: its fits, tuning and
    slices then cost what this many interactions cost, whatever the warehouse holds."""
    if max_interactions <= 0 or interactions.height <= max_interactions:
        return interactions
    counts = interactions.group_by(USER_ID).len().sort(USER_ID)
    ids, rows = counts[USER_ID].to_numpy(), counts["len"].to_numpy()
    place = mix64(ids.astype(np.uint64) + mix64(np.array([seed % 2**64], dtype=np.uint64))[0])
    order = np.lexsort((ids, place))
    taken = max(1, int(np.searchsorted(np.cumsum(rows[order]), max_interactions, side="right")))
    return interactions.filter(pl.col(USER_ID).is_in(np.sort(ids[order[:taken]])))


@dataclass
class WarmSplit:
    train: pl.DataFrame
    test: pl.DataFrame
    protocol: str


def cold_user_split(
    interactions: pl.DataFrame, cold_fraction: float, k_shots: tuple[int, ...] | list[int], seed: int,
) -> ColdSplit:
    users = np.sort(interactions[USER_ID].unique().to_numpy())
    rng = np.random.default_rng(seed)
    n_cold = int(round(len(users) * cold_fraction))
    cold = np.sort(rng.choice(users, size=n_cold, replace=False)) if n_cold else np.array([], dtype=np.int64)
    is_cold = pl.col(USER_ID).is_in(cold)
    return reveal_first(ColdSplit(train=interactions.filter(~is_cold), cold_users=cold),
                        interactions.filter(is_cold), k_shots)


def reveal_first(split: ColdSplit, rows: pl.DataFrame, k_shots: tuple[int, ...] | list[int]) -> ColdSplit:
    """Fill ``split`` per k from its cold users' ``rows``: the first k by time are the history, the rest the
    truth (ties broken by item id, so the split is deterministic)."""
    rows = rows.sort(USER_ID, TIMESTAMP, ITEM_ID).with_columns(position=pl.int_range(pl.len()).over(USER_ID))
    for k in sorted(set(int(k) for k in k_shots)):
        split.history[k] = rows.filter(pl.col("position") < k).drop("position")
        split.truth[k] = rows.filter(pl.col("position") >= k).drop("position")
        split.excluded[k] = int(len(split.cold_users) - split.truth[k][USER_ID].n_unique())
    return split


@dataclass
class TemporalCut:
    """The night's shape on a log: everything before a moment is known; ``warm`` is what the users known then
    did after it; users first seen after it are ``cold`` (their first k interactions revealed, the rest truth)."""

    cut: object  # the moment (a timestamp of the data's type)
    train: pl.DataFrame
    warm: pl.DataFrame
    cold: ColdSplit


def temporal_cut(interactions: pl.DataFrame, quantile: float, k_shots: tuple[int, ...] | list[int]) -> TemporalCut:
    """Cut the log at the ``quantile`` of its interaction times (a global cut, as a night sees it: not per user).
    Ties at the cut go to training."""
    cut = interactions[TIMESTAMP].sort()[min(int(quantile * interactions.height), interactions.height - 1)]
    before, after = interactions.filter(pl.col(TIMESTAMP) <= cut), interactions.filter(pl.col(TIMESTAMP) > cut)
    known = before[USER_ID].unique().implode()
    warm = after.filter(pl.col(USER_ID).is_in(known))
    newcomers = after.filter(~pl.col(USER_ID).is_in(known))
    cold = ColdSplit(train=before, cold_users=np.sort(newcomers[USER_ID].unique().to_numpy()))
    return TemporalCut(cut, before, warm, reveal_first(cold, newcomers, k_shots))


def stratified_split(interactions: pl.DataFrame, ratio: float = 0.75, seed: int = 42, by: str = "user") -> WarmSplit:
    """Random ``ratio`` of each user's (or item's) interactions to train, the rest to test.

    ``by="user"`` is what Microsoft Recommenders' ``python_stratified_split`` does by default in its
    ML-100k benchmark; ``by="item"`` stratifies per item instead.
    """
    rng = np.random.default_rng(seed)
    key = USER_ID if by == "user" else ITEM_ID
    ranked = (interactions.sort(USER_ID, ITEM_ID, TIMESTAMP)
              .with_columns(_r=pl.Series(rng.random(interactions.height)))
              .with_columns(_pos=pl.col("_r").rank("ordinal").over(key), _n=pl.len().over(key)))
    in_train = pl.col("_pos") <= (pl.col("_n") * ratio).round(0)
    return WarmSplit(train=ranked.filter(in_train).drop("_r", "_pos", "_n"),
                     test=ranked.filter(~in_train).drop("_r", "_pos", "_n"), protocol=f"stratified-{by}")


def temporal_split(interactions: pl.DataFrame, test_share: float = 0.2) -> WarmSplit:
    """The last ``test_share`` of each user's interactions by time are the test set."""
    ordered = interactions.sort(USER_ID, TIMESTAMP, ITEM_ID).with_columns(
        _pos=pl.int_range(pl.len()).over(USER_ID), _n=pl.len().over(USER_ID))
    in_train = pl.col("_pos") < (pl.col("_n") * (1 - test_share)).ceil()
    return WarmSplit(train=ordered.filter(in_train).drop("_pos", "_n"),
                     test=ordered.filter(~in_train).drop("_pos", "_n"), protocol="temporal")


@dataclass
class ValidationFold:
    """Training interactions with validation users carved out, and the cases to tune on."""

    train: pl.DataFrame  # what the components are fitted on
    cases: list[ValidationCase]
    cold_users: np.ndarray
    warm_users: np.ndarray
    shape: str = ""  # what the warm users' truth is, in words (the report's protocol says it)

    def save(self, folder: Path) -> Path:
        """Write the fold as Parquet (``train``, the cases' users, known and truth rows), for tasks that run
        elsewhere: they read the fold from here instead of carving it again."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.train.write_parquet(folder / "train.parquet")
        pl.concat([pl.DataFrame({USER_ID: c.users.astype(np.int64)}).with_columns(
            case=pl.lit(c.label), bucket=pl.lit(c.bucket, pl.Int32), as_history=pl.lit(c.as_history))
            for c in self.cases]).write_parquet(folder / "validation_users.parquet")
        for part in ("known", "truth"):
            pl.concat([getattr(c, part).with_columns(case=pl.lit(c.label)) for c in self.cases]).write_parquet(
                folder / f"validation_{part}.parquet")
        return folder

    @staticmethod
    def train_path(folder: Path) -> Path:
        return Path(folder) / "train.parquet"

    @staticmethod
    def load_cases(folder: Path) -> list[ValidationCase]:
        """The validation cases of a saved fold (what a hybrid tunes on; its training rows are read apart)."""
        folder = Path(folder)
        users = pl.read_parquet(folder / "validation_users.parquet")
        known, truth = (pl.read_parquet(folder / f"validation_{part}.parquet") for part in ("known", "truth"))
        cases = []
        for label in users["case"].unique(maintain_order=True):
            mine = users.filter(pl.col("case") == label)
            cases.append(ValidationCase(label, int(mine["bucket"][0]), mine[USER_ID].to_numpy(),
                                        known.filter(pl.col("case") == label).drop("case"),
                                        truth.filter(pl.col("case") == label).drop("case"),
                                        bool(mine["as_history"][0])))
        return cases


def carve_validation(
    interactions: pl.DataFrame, share: float, seed: int, max_users: int = 3000, min_history: int = 5,
    warm_truth: str = "latest", warm_truth_share: float = WARM_TRUTH_SHARE, warm_share: float | None = None,
) -> ValidationFold:
    """Validation users drawn from training users (never from test users), shaped like serving.

    Cold validation users (``share`` of the eligible users, at most ``max_users``) leave training entirely;
    their first k interactions are revealed for the k-shot buckets. Warm validation users (``warm_share``,
    default ``share``) stay in training without ``warm_truth_share`` of their interactions, which tune the
    warm bucket as true warm users, taken the way the warm test takes them: ``warm_truth="latest"`` their
    latest by time (the nightly's temporal warm test), ``"random"`` a seeded random share of each user's
    (a per-user random holdout such as protocol W), ``"items"`` their interactions with a seeded
    ``warm_truth_share`` of the items, which leave the fold's training entirely (an item-cold hold-out such as
    protocol I: what users do with items nobody has taken), ``"window"`` the night's own shape: the log cut at the
    moment before its last ``warm_truth_share`` of interactions, the fold's training everything before it (every
    user's later rows leave, so nothing of the window's popularity leaks in), the warm users those known before
    it who came back in it (all of them, up to ``max_users``; ``warm_share`` does not apply), their truth what
    they did in it; cold users are drawn from the others. Where nobody came back, each user's latest share.
    A blend tuned on one shape does not carry over to
    the other: on ML-100k the latest interactions favour neighbourhood CF, a random holdout EASE; and how often
    users take the items that were new at the window's start decides whether new items earn a place in lists
    (:meth:`models.hybrid.Hybrid._new_item_rates`).
    """
    if warm_truth not in WARM_TRUTHS:
        raise ValueError(f"warm_truth must be one of {', '.join(WARM_TRUTHS)}, not {warm_truth!r}")
    window, requested = None, warm_truth
    if warm_truth == "window":
        cut = temporal_cut(interactions, 1 - warm_truth_share, ())
        returning = np.intersect1d(_eligible(cut.train, min_history), cut.warm[USER_ID].unique().to_numpy())
        if len(returning):
            interactions, window = cut.train, cut.warm.filter(pl.col(USER_ID).is_in(returning))
        else:
            warm_truth, warm_truth_share = "latest", WARM_TRUTH_SHARE
    eligible = _eligible(interactions, min_history)
    n_val = min(int(round(len(eligible) * share)), int(max_users))
    n_warm = min(int(round(len(eligible) * (share if warm_share is None else warm_share))), int(max_users),
                 len(eligible) - n_val)
    picked = np.random.default_rng(seed).permutation(eligible)
    if window is None:
        cold_users, warm_users = np.sort(picked[:n_val]), np.sort(picked[n_val:n_val + n_warm])
    else:  # the returning users are the warm ones (all of them); the cold ones are drawn from the others
        back = np.isin(picked, returning)
        cold_users, warm_users = np.sort(picked[~back][:n_val]), np.sort(picked[back][:int(max_users)])
    ordered = interactions.sort(USER_ID, TIMESTAMP, ITEM_ID).with_columns(
        position=pl.int_range(pl.len()).over(USER_ID), n=pl.len().over(USER_ID))
    warm_rows = ordered.filter(pl.col(USER_ID).is_in(warm_users))
    if warm_truth == "random":  # a seeded random order within each user instead of time
        draw = pl.Series(np.random.default_rng(seed + 1).random(warm_rows.height))
        warm_rows = warm_rows.with_columns(_draw=draw).with_columns(
            position=pl.col("_draw").rank("ordinal").over(USER_ID).cast(pl.Int64) - 1).drop("_draw")
    held_items = None
    if warm_truth == "items":
        items = np.sort(interactions[ITEM_ID].unique().to_numpy())
        held_items = np.sort(np.random.default_rng(seed + 2).choice(
            items, size=int(round(len(items) * warm_truth_share)), replace=False))
        is_truth = pl.col(ITEM_ID).is_in(held_items)
    elif window is None:
        is_truth = pl.col("position") >= (pl.col("n") * (1 - warm_truth_share)).ceil()
    if window is None:
        warm_truth_rows = warm_rows.filter(is_truth).drop("position", "n")
        warm_known = warm_rows.filter(~is_truth).drop("position", "n")
    else:  # their truth is the window (out of ``interactions`` already), all they did before it is known
        warm_truth_rows = window.filter(pl.col(USER_ID).is_in(warm_users)).sort(USER_ID, TIMESTAMP, ITEM_ID)
        warm_known = warm_rows.drop("position", "n")
    keys = [USER_ID, ITEM_ID, TIMESTAMP]
    train = (ordered.filter(~pl.col(USER_ID).is_in(cold_users)).drop("position", "n")
             .join(warm_truth_rows.select(keys), on=keys, how="anti"))
    if held_items is not None:  # nobody's interactions with the held-out items stay in the fold's training
        train = train.filter(~pl.col(ITEM_ID).is_in(held_items))
    cold_rows = ordered.filter(pl.col(USER_ID).is_in(cold_users))
    cases = [ValidationCase(str(k), b, cold_users, cold_rows.filter(pl.col("position") < k).drop("position", "n"),
                            cold_rows.filter(pl.col("position") >= k).drop("position", "n"), k > 0)
             for b, k in enumerate(BUCKET_EDGES)]
    cases.append(ValidationCase("warm", WARM, warm_users, warm_known, warm_truth_rows, False))
    moment = cut.cut if window is not None else None
    return ValidationFold(train, cases, cold_users, warm_users,
                          _describe(warm_truth, warm_truth_share, moment, len(warm_users), requested != warm_truth))


def _describe(warm_truth: str, share: float, moment, n_warm: int, fell_back: bool) -> str:
    """A validation fold's warm truth in words (the report's protocol says it)."""
    text = {"window": f"window: the last {share:.0%} of the interactions by time (after {moment}) held out of the "
                      f"tuning fold; the warm users are the {n_warm:,} known before it who came back in it",
            "latest": f"latest: each warm validation user's latest {share:.0%}",
            "random": f"random: a random {share:.0%} of each warm validation user's interactions",
            "items": f"items: {share:.0%} of the items held out of the fold"}[warm_truth]
    return text + (" (nobody came back after the window's start)" if fell_back else "")


def _eligible(interactions: pl.DataFrame, min_history: int) -> np.ndarray:
    """Users with at least ``min_history`` interactions and one more (sorted)."""
    counts = interactions.group_by(USER_ID).len()
    return counts.filter(pl.col("len") >= min_history + 1)[USER_ID].sort().to_numpy()
