"""Where a two-tower fit's time goes: training examples/s of the product's fit and of the same fit with one
cost taken away at a time, on synthetic data whose tables are sized like ML-20M's.

    python -m benchmarks.two_tower                                  # 138,493 users x 26,744 items (ML-20M)
    python -m benchmarks.two_tower --users 34625 --items 6685       # the 5 M night's tables

The step's cost depends on the tables (users, items) and the batch, not on the number of interactions, so the
data is ``--interactions`` rows (3 M) over tables of the chosen size. Each variant is one fit of ``--examples``
training examples (early stopping off); examples/s counts the steps after the first (the first traces and,
under XLA, compiles: reported apart). Variants:

- ``product``: the default parameters, XLA forced on (at this budget "auto" would choose it from 1 M examples);
- ``no_xla``: the same step without XLA (TensorFlow's graph executor, an op at a time);
- ``dense_adam``: every table updated by Keras's Adam (the whole table and both moments, every step);
- ``no_content``: without the content tower's auxiliary softmax (what serves new items);
- ``bag_of_one``: the user's bag of known items cut to one item (its gather and mean);
- ``numpy_input``: the product fed NumPy batches (what feeds it on JAX) instead of ``tf.data``;
- ``input_only``: the training input alone (sampling bags, dropout), no model: ``tf.data`` under TensorFlow,
  the NumPy batches on another backend (``KERAS_BACKEND=jax``, where every variant takes Keras's Adam).

Prints a JSON and a table. Target (this 2-core machine, ML-20M tables): the product >= 25k examples/s.
"""

from __future__ import annotations

import argparse
import json
import time

import polars as pl

from benchmarks.quality import load_synthetic, write_result
from models.registry import build
from models.two_tower import TwoTower
from recsys.settings import Settings
from tasks.features import feature_frames
from tasks.generate import GeneratorConfig
from tasks.item_text import text_vectors

VARIANTS = {"product": {"jit_compile": True}, "no_xla": {"jit_compile": False},
            "dense_adam": {"jit_compile": True, "lazy_rows": 2**62},
            "no_content": {"jit_compile": True, "content_weight": 0.0},
            "bag_of_one": {"jit_compile": True, "bag_size": 1}, "numpy_input": {"jit_compile": True, "input": "numpy"},
            "input_only": {}}


def load(users: int, items: int, interactions: int, settings: Settings) -> tuple[pl.DataFrame, ...]:
    """Generated interactions (through the product's ingest) and their feature frames; the item texts are
    embedded once and cached in the home (RECSYS_HOME)."""
    frames = load_synthetic(config=GeneratorConfig(n_users=users, n_items=items, n_interactions=interactions, seed=1))
    frames.text_vectors = text_vectors(frames.items, settings, log=print)
    return (frames.interactions, *feature_frames(frames, frames.interactions))


def input_only(inter, user_features, item_features, examples: int) -> dict:
    """Examples/s of the training input pipeline alone."""
    model = build("two_tower")
    model._encode(inter, user_features, item_features)
    batch = model.params["batch_size"]
    batches = iter(model._dataset(model._examples(0)[0], batch, 0, shuffle=True, steps=examples // batch))
    started = time.perf_counter()
    next(batches)
    first = time.perf_counter()
    count = sum(1 for _ in batches)
    return {"examples_per_second": round(count * batch / (time.perf_counter() - first)),
            "first_step_seconds": round(first - started, 2)}


def run_variant(name: str, frames, examples: int) -> dict:
    if name == "input_only":
        return input_only(*frames, examples)
    params = {**VARIANTS[name], "example_budget": examples, "passes": 1e9, "patience": 10**6,
              "max_examples_per_epoch": examples // 2}
    started = time.perf_counter()
    model: TwoTower = build("two_tower", **params).fit(*frames, seed=0)
    return {"examples_per_second": model.training_["examples_per_second"],
            "first_step_seconds": model.training_["first_step_seconds"],
            "fit_seconds": round(time.perf_counter() - started, 1)}


def format_table(result: dict) -> str:
    product = result["variants"].get("product", {}).get("examples_per_second")
    lines = [f"two-tower training, {result['users']:,} users x {result['items']:,} items, "
             f"{result['examples']:,} examples a fit", "",
             "| variant | examples/s | vs product | first step (s) |", "|---|---|---|---|"]
    for name, v in result["variants"].items():
        ratio = f"{v['examples_per_second'] / product:.2f}x" if product else ""
        lines.append(f"| {name} | {v['examples_per_second']:,} | {ratio} | {v['first_step_seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--interactions", type=int, default=3_000_000)
    parser.add_argument("--examples", type=int, default=400_000, help="training examples a fit")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default="var/benchmarks/two_tower.json")
    args = parser.parse_args(argv)
    settings = Settings()
    frames = load(args.users, args.items, args.interactions, settings)
    result = {"users": args.users, "items": args.items, "interactions": args.interactions,
              "examples": args.examples, "variants": {}}
    for name in args.variants:
        result["variants"][name] = run_variant(name, frames, args.examples)
        print(name, json.dumps(result["variants"][name]), flush=True)
    return write_result(result, args.out, format_table(result), "")


if __name__ == "__main__":
    raise SystemExit(main())
