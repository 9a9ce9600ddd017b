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

Users are generated in blocks, so memory stays bounded (about 80 MB of logits a block) at 20 M interactions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from recsys import schema
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
    span = config.days * 86400
    signup = start + (rng.random(config.n_users) * 0.7 * span).astype(np.int64)

    block = max(1, min(config.n_users, 20_000_000 // config.n_items))
    writer = None
    interactions_path = out / SYNTHETIC_FILES["interactions"]
    for lo in range(0, config.n_users, block):
        hi = min(lo + block, config.n_users)
        affinity = (config.demographic_weight * taste[lo:hi] @ genre_norm.T
                    + config.individual_weight * (user_latent[lo:hi] @ item_latent.T) / np.sqrt(config.latent_dim))
        logits = affinity + config.popularity_weight * popularity[None, :]
        logits += rng.gumbel(size=logits.shape).astype(np.float32)  # Gumbel top-k = sampling w/o replacement
        k = counts[lo:hi]
        kmax = int(k.max())
        if kmax == 0:
            continue
        top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
        keep = np.arange(kmax)[None, :] < k[:, None]
        # Shuffle each user's picks so that time order is not preference order.
        shuffle = np.argsort(rng.random(top.shape) + ~keep, axis=1)
        top = np.take_along_axis(top, shuffle, axis=1)
        users_block = np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[keep]
        items_block = top[keep]
        aff = np.take_along_axis(affinity, top, axis=1)[keep]
        z = (aff - affinity.mean()) / (affinity.std() + 1e-6)
        ratings = np.clip(np.rint(3.4 + 0.9 * z + rng.normal(0, 0.7, size=z.shape)), 1, 5).astype(np.int64)
        gaps = rng.exponential(size=top.shape) * (span * 0.3 / np.maximum(k, 1))[:, None]
        elapsed = np.cumsum(np.where(keep, gaps, 0), axis=1)
        room = (start + span - signup[lo:hi]) / np.maximum(elapsed[:, -1], 1.0)  # never past the end
        times = signup[lo:hi, None] + (elapsed * np.minimum(room, 1.0)[:, None]).astype(np.int64)
        table = pa.table({
            USER_ID: users_block + 1,
            ITEM_ID: items_block + 1,
            RATING: ratings,
            "timestamp": times[keep],
        })
        if writer is None:
            writer = pacsv.CSVWriter(interactions_path, table.schema)
        writer.write_table(table)
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
