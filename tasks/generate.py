"""Synthetic interaction data with planted structure, so tests can check that a model uses the signal.

What is planted:
- **Demographic taste.** Each user's genre preference is a sum of effects of their gender, age bucket and
  occupation, so a model that sees demographics can rank well for users with no history (zero-shot).
- **Individual taste.** Each user and item also has a private latent vector; only collaborative filtering
  on a user's history can learn it, so warm users reward CF.
- **Popularity skew.** Items get a Zipf-like popularity term.
- **Time.** Each user's interactions have increasing timestamps from their own sign-up date, all before
  ``start + days``.
- **Sign-ups without history.** A few users (``zero_history_share``) have no interactions at all.

Users are generated in blocks, so memory stays bounded. A dense data set (interactions >= 1/64 of users x
items) draws each user's items over the whole catalogue; a sparse one (shop-sized: 100 k items) from a pool of
candidates drawn by popularity, at a cost linear in interactions (``_pooled_blocks``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from recsys import progress, schema
from recsys.schema import ITEM_ID, RATING, USER_ID

SYNTHETIC_FILES = {"users": "users.csv", "items": "items.csv", "interactions": "interactions.csv"}

_GENRES = schema.GENRES[1:]  # no item is generated as "unknown"


# The default synthetic nights (``recsys nightly --synthetic-size``): users, items, interactions.
SIZES = {"small": {"n_users": 800, "n_items": 400, "n_interactions": 30_000},
         "full": {"n_users": 1500, "n_items": 600, "n_interactions": 75_000}}


@dataclass(frozen=True)
class GeneratorConfig:
    n_users: int = 1500
    n_items: int = 600
    n_interactions: int = 75_000
    seed: int = 42
    start: str = "2025-01-01"
    days: int = 600
    latent_dim: int = 8
    demographic_weight: float = 2.0
    individual_weight: float = 1.5
    popularity_weight: float = 1.0
    zero_history_share: float = 0.03

    @classmethod
    def sized(cls, size: str, seed: int) -> GeneratorConfig:
        """The default synthetic night of a size (RECSYS_SYNTHETIC_SIZE): ``small``, a first result in two
        minutes on 2 cores; ``full``, the shape the quality benchmark's synthetic protocol uses."""
        return cls(**SIZES[size], seed=seed)

    def slug(self) -> str:
        return f"u{self.n_users}-i{self.n_items}-n{self.n_interactions}-s{self.seed}"


def _activity(rng: np.random.Generator, config: GeneratorConfig) -> np.ndarray:
    """Interactions per user: log-normal (a few heavy users), at least 5, at most half the catalogue;
    a ``zero_history_share`` of users get none. The counts add up to ``n_interactions`` exactly."""
    cap = max(5, config.n_items // 2)
    silent = rng.random(config.n_users) < config.zero_history_share
    if silent.all():
        silent[:] = False
    raw = rng.lognormal(mean=0.0, sigma=0.8, size=config.n_users) * ~silent
    counts = np.clip(np.floor(raw / raw.sum() * config.n_interactions), 5, cap).astype(np.int64) * ~silent
    deficit = config.n_interactions - int(counts.sum())
    order = rng.permutation(np.flatnonzero(~silent))
    step = 1 if deficit > 0 else -1
    while deficit != 0:  # spread the rounding remainder over active users, within [5, cap]
        room = (counts[order] < cap) if step > 0 else (counts[order] > 5)
        chosen = order[room][: abs(deficit)]
        if len(chosen) == 0:
            break
        counts[chosen] += step
        deficit -= step * len(chosen)
    return counts


def generate(out: Path, config: GeneratorConfig | None = None) -> dict[str, Path]:
    """Write users.csv, items.csv, interactions.csv (and generator.json) into ``out``. Deterministic by seed."""
    config = config or GeneratorConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    n_genres = len(_GENRES)

    # Users and their demographic taste.
    ages = rng.integers(15, 70, size=config.n_users)
    genders = rng.choice(np.array(["M", "F"]), size=config.n_users, p=[0.6, 0.4])
    occupations = rng.integers(0, len(schema.OCCUPATIONS), size=config.n_users)
    zips = rng.integers(10000, 99999, size=config.n_users)
    age_bucket = np.searchsorted([b[1] for b in schema.AGE_BUCKETS], ages)
    gender_effect = rng.normal(0, 1.0, size=(2, n_genres))
    age_effect = rng.normal(0, 1.0, size=(len(schema.AGE_BUCKETS), n_genres))
    occupation_effect = rng.normal(0, 0.7, size=(len(schema.OCCUPATIONS), n_genres))
    taste = (gender_effect[(genders == "F").astype(int)] + age_effect[age_bucket]
             + occupation_effect[occupations]).astype(np.float32)
    user_latent = rng.normal(0, 1, size=(config.n_users, config.latent_dim)).astype(np.float32)

    # Items: 1-3 genres, Zipf-like popularity, a release year, a private latent vector.
    item_genres = np.zeros((config.n_items, n_genres), dtype=np.float32)
    n_item_genres = rng.choice([1, 2, 3], size=config.n_items, p=[0.5, 0.35, 0.15])
    genre_weights = rng.dirichlet(np.full(n_genres, 2.0))
    for count in (1, 2, 3):  # vectorised per genre count, not per item
        rows = np.flatnonzero(n_item_genres == count)
        keys = rng.random((len(rows), n_genres)) ** (1.0 / genre_weights)  # weighted sampling w/o replacement
        picks = np.argsort(-keys, axis=1)[:, :count]
        item_genres[rows[:, None], picks] = 1.0
    popularity = -np.log1p(rng.permutation(config.n_items)).astype(np.float32)  # Zipf: log p ~ -log rank
    popularity -= popularity.mean()
    item_latent = rng.normal(0, 1, size=(config.n_items, config.latent_dim)).astype(np.float32)
    genre_norm = item_genres / np.sqrt(item_genres.sum(axis=1, keepdims=True))
    release_year = rng.integers(1950, 2025, size=config.n_items)

    counts = _activity(rng, config)
    start = int(datetime.fromisoformat(config.start).replace(tzinfo=UTC).timestamp())
    signup = start + (rng.random(config.n_users) * 0.7 * config.days * 86400).astype(np.int64)
    world = _World(config, taste, genre_norm, user_latent, item_latent, popularity, counts, signup, start)

    writer = None
    interactions_path = out / SYNTHETIC_FILES["interactions"]
    blocks = _pooled_blocks if world.pooled() else _full_blocks
    written = 0
    for table in blocks(world, rng):
        if writer is None:
            writer = pacsv.CSVWriter(interactions_path, table.schema)
        writer.write_table(table)
        written += table.num_rows
        progress.detail(f"{written:,} of {config.n_interactions:,} interactions written")
    if writer is not None:
        writer.close()

    pacsv.write_csv(pa.table({
        USER_ID: np.arange(1, config.n_users + 1),
        "age": ages,
        "gender": genders,
        "occupation": np.array(schema.OCCUPATIONS)[occupations],
        "zip": zips.astype(str),
    }), out / SYNTHETIC_FILES["users"])
    genre_names = np.array(_GENRES)
    pacsv.write_csv(pa.table({
        ITEM_ID: np.arange(1, config.n_items + 1),
        "title": [f"Synthetic Item {i + 1} ({y})" for i, y in enumerate(release_year)],
        "release_date": [f"{y}-01-01" for y in release_year],
        "genres": ["|".join(genre_names[row.astype(bool)]) for row in item_genres],
    }), out / SYNTHETIC_FILES["items"])
    (out / "generator.json").write_text(json.dumps(asdict(config), indent=2))
    return {kind: out / name for kind, name in SYNTHETIC_FILES.items()}


# Candidates drawn per interaction by the sampler of sparse data sets (``_pooled_blocks``), and the density
# (interactions / users x items) under which it is used: the whole-row sampler costs users x items, this one
# POOL x interactions (x a sort's log).
POOL = 8
POOLED_BELOW_DENSITY = 1 / 64
PROPOSAL_SHARE = 0.4


@dataclass(frozen=True)
class _World:
    """What the generator planted, for drawing each user's interactions."""

    config: GeneratorConfig
    taste: np.ndarray  # users x genres: the demographic taste
    genre_norm: np.ndarray  # items x genres, rows unit length
    user_latent: np.ndarray
    item_latent: np.ndarray
    popularity: np.ndarray  # items: log popularity (Zipf), centred
    counts: np.ndarray  # interactions per user
    signup: np.ndarray  # each user's first second
    start: int

    def pooled(self) -> bool:
        c = self.config
        return c.n_interactions < POOLED_BELOW_DENSITY * c.n_users * c.n_items

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """The planted taste of ``users`` for every item. (The same taste as :attr:`factors`' product, summed in
        the order the dense data sets were always made with, so that they stay byte-identical.)"""
        c = self.config
        return (c.demographic_weight * self.taste[users] @ self.genre_norm.T + c.individual_weight
                * (self.user_latent[users] @ self.item_latent.T) / np.sqrt(c.latent_dim))

    @cached_property
    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The taste as one product of user and item factors (for pairs: one gather a side)."""
        c = self.config
        return (np.hstack([c.demographic_weight * self.taste,
                           c.individual_weight / np.sqrt(c.latent_dim) * self.user_latent]).astype(np.float32),
                np.hstack([self.genre_norm, self.item_latent]).astype(np.float32))

    def pair_affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The planted taste of user ``users[i]`` for item ``items[i]``."""
        user_factors, item_factors = self.factors
        return np.einsum("ij,ij->i", user_factors.take(users, axis=0), item_factors.take(items, axis=0))

    def whole_rows(self, rng: np.random.Generator, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``count`` items by Gumbel top-k over the whole catalogue (sampling without replacement
        in proportion to exp(taste + popularity)), kmax columns; and the users' taste over the catalogue."""
        affinity = self.affinity(users)
        logits = affinity + self.config.popularity_weight * self.popularity[None, :]
        logits += rng.gumbel(size=logits.shape).astype(np.float32)
        kmax = int(self.counts[users].max())
        return np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax], affinity

    def table(self, rng: np.random.Generator, users: np.ndarray, top: np.ndarray, taste: np.ndarray, mean: float,
              std: float) -> pa.Table:
        """Rows of ``users`` whose picks are ``top`` (users x kmax, the first ``count`` of each row real; their
        planted taste for them in ``taste``): time order shuffled from preference order, ratings from the
        taste standardised by ``mean`` and ``std``, timestamps that advance from each user's sign-up and stay
        before the end."""
        span = self.config.days * 86400
        k = self.counts[users]
        keep = np.arange(top.shape[1])[None, :] < k[:, None]
        # Shuffle each user's picks so that time order is not preference order.
        shuffle = np.argsort(rng.random(top.shape) + ~keep, axis=1)
        top = np.take_along_axis(top, shuffle, axis=1)
        z = (np.take_along_axis(taste, shuffle, axis=1)[keep] - mean) / (std + 1e-6)
        ratings = np.clip(np.rint(3.4 + 0.9 * z + rng.normal(0, 0.7, size=z.shape)), 1, 5).astype(np.int64)
        gaps = rng.exponential(size=top.shape) * (span * 0.3 / np.maximum(k, 1))[:, None]
        elapsed = np.cumsum(np.where(keep, gaps, 0), axis=1)
        room = (self.start + span - self.signup[users]) / np.maximum(elapsed[:, -1], 1.0)  # never past the end
        times = self.signup[users, None] + (elapsed * np.minimum(room, 1.0)[:, None]).astype(np.int64)
        return pa.table({
            USER_ID: np.broadcast_to(users[:, None] + 1, top.shape)[keep],
            ITEM_ID: top[keep] + 1,
            RATING: ratings,
            "timestamp": times[keep],
        })


def _full_blocks(world: _World, rng: np.random.Generator):
    """Blocks of users, each user's picks drawn over the whole catalogue (about 80 MB of logits a block)."""
    c = world.config
    block = max(1, min(c.n_users, 20_000_000 // c.n_items))
    for lo in range(0, c.n_users, block):
        users = np.arange(lo, min(lo + block, c.n_users))
        if world.counts[users].max() == 0:
            continue
        top, affinity = world.whole_rows(rng, users)
        yield world.table(rng, users, top, np.take_along_axis(affinity, top, axis=1), float(affinity.mean()),
                          float(affinity.std()))


def _pooled_blocks(world: _World, rng: np.random.Generator, pairs_per_block: int = 1_000_000):
    """Users' picks at a cost linear in interactions, for sparse data sets: each user draws ``POOL`` x count
    candidates (at least 64) from a flattened popularity (exp(``PROPOSAL_SHARE`` x popularity), with
    replacement) and keeps the ``count`` distinct ones of highest taste + the rest of the popularity + Gumbel
    noise. The whole-row sampler draws in proportion to exp(taste + popularity) over the catalogue; here the
    taste can lift an item at most ``POOL``-fold over the pool's odds, so the planted taste is weaker
    (measured at 5k users x 20k items x 250k interactions: women's and men's genre mix 0.29 apart against the
    whole-row sampler's 0.36; the top decile of items holds 0.46 of the interactions against 0.49; 1.3 s
    against 8.7 s; ``PROPOSAL_SHARE`` 0.4 keeps the skew closest at 6k and 20k items). A user whose pool
    would be half the catalogue, or holds too few distinct items, is drawn over the whole row. Ratings are
    standardised by the taste's mean and spread over a sample of user-item pairs."""
    c = world.config
    n_items = c.n_items
    cdf = np.cumsum(np.exp(PROPOSAL_SHARE * c.popularity_weight * world.popularity.astype(np.float64)))
    cdf /= cdf[-1]
    buckets = np.searchsorted(cdf, np.arange(4 * n_items) / (4 * n_items))  # inverse CDF by table + a short walk
    rest = np.float32((1 - PROPOSAL_SHARE) * c.popularity_weight)
    sample = world.pair_affinity(rng.integers(0, c.n_users, size=200_000), rng.integers(0, n_items, size=200_000))
    mean, std = float(sample.mean()), float(sample.std())
    pool = np.where(world.counts > 0, np.maximum(64, POOL * world.counts), 0)
    whole = pool * 2 >= n_items
    pool[whole] = 0
    bounds = np.cumsum(pool + world.counts)  # blocks of about pairs_per_block candidates
    lo = 0
    while lo < c.n_users:
        done = bounds[lo - 1] if lo else 0
        hi = min(c.n_users, max(lo + 1, int(np.searchsorted(bounds, done + pairs_per_block, side="right"))))
        users, lo = np.arange(lo, hi), hi
        k = world.counts[users]
        if k.max() == 0:
            continue
        owner = np.repeat(np.arange(len(users), dtype=np.int64), pool[users])
        keys = np.sort(owner * n_items + _draw(cdf, buckets, rng.random(len(owner))))
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # each (user, item) once, by user then item
        owner, items = keys // n_items, keys % n_items
        taste = world.pair_affinity(users[owner], items)
        score = taste + rest * world.popularity[items] + rng.gumbel(size=len(keys)).astype(np.float32)
        spread = 2.0 * (float(np.abs(score).max()) + 1.0)
        order = np.argsort(owner * spread - score, kind="stable")  # by user, then best first
        owner, items, taste = owner[order], items[order], taste[order]
        first = np.searchsorted(owner, np.arange(len(users)))
        rank = np.arange(len(owner)) - first[owner]
        short = (np.bincount(owner, minlength=len(users)) < k) | whole[users]
        chosen = (rank < k[owner]) & ~short[owner]
        top = np.zeros((len(users), int(k.max())), dtype=np.int64)
        top_taste = np.zeros(top.shape, dtype=np.float32)
        top[owner[chosen], rank[chosen]] = items[chosen]
        top_taste[owner[chosen], rank[chosen]] = taste[chosen]
        if (heavy := np.flatnonzero(short & (k > 0))).size:
            rows, affinity = world.whole_rows(rng, users[heavy])
            top[heavy, :rows.shape[1]] = rows
            top_taste[heavy, :rows.shape[1]] = np.take_along_axis(affinity, rows, axis=1)
        yield world.table(rng, users, top, top_taste, mean, std)


def _draw(cdf: np.ndarray, buckets: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``searchsorted(cdf, u)`` from a table of where each of len(buckets) equal steps of u starts: a step
    holds about one item, so the walk is a step or two (5x faster than the binary search, whose cdf lookups
    miss the cache)."""
    index = buckets[(u * len(buckets)).astype(np.int64)]
    while (behind := cdf[index] < u).any():
        index[behind] += 1
    return np.minimum(index, len(cdf) - 1)
