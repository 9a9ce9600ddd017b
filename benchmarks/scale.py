"""Scale benchmark: the pipeline's steps on N synthetic interactions (default 20 M), time and peak memory.

    python -m benchmarks.scale --interactions 20000000 --out var/benchmarks/scale.json

Runs in-process, step by step (generate, ingest + gate, features, train, score all users), and prints JSON
and a table. Peak memory is the process's max RSS after each step (it never goes down).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(n_interactions: int, n_users: int, n_items: int, models: list[str], home: Path, epochs: int) -> dict:
    from models.registry import build
    from recsys import db
    from recsys.settings import Settings
    from tasks import features, ingest, validate
    from tasks.generate import GeneratorConfig, generate
    from tasks.sources import synthetic_specs
    from tasks.train import build_features, load_frames, model_params

    settings = Settings(home=home, epochs=epochs)
    steps: list[dict] = []

    def step(name: str, fn):
        started = time.perf_counter()
        out = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_gib": round(_rss_gib(), 2)})
        print(f"  {name:28} {steps[-1]['seconds']:8.1f} s   peak RSS {steps[-1]['peak_rss_gib']:6.2f} GiB", flush=True)
        return out

    config = GeneratorConfig(n_users=n_users, n_items=n_items, n_interactions=n_interactions, seed=1)
    step("generate", lambda: generate(home / "landing", config))
    con = db.connect(settings)
    step("ingest: stage", lambda: ingest.stage_batch(con, settings, synthetic_specs(home / "landing"), "scale", "synthetic"))
    gate = step("ingest: validation gate", lambda: validate.validate_batch(con, settings, "scale"))
    step("ingest: promote", lambda: ingest.promote_batch(con, settings, "scale"))
    frames = step("load frames (Arrow -> Polars)", lambda: load_frames(con))
    uf, itf = step("features (Polars)", lambda: build_features(frames, frames.interactions))
    step("features: write tables", lambda: features.write_features(con, settings, "scale", uf, itf))
    con.close()
    users = np.sort(uf["user_id"].to_numpy())
    fitted = {}
    for name in models:
        model = build(name, **model_params(name, settings))
        if hasattr(model, "use_fitted"):
            model.use_fitted(fitted)
        fitted[name] = step(f"train {name}", lambda m=model: m.fit(frames.interactions, uf, itf, seed=1))
        step(f"score all users: {name}", lambda m=fitted[name]: m.recommend(users, n=50).height)
    return {"interactions": n_interactions, "users": n_users, "items": n_items, "models": models, "steps": steps,
            "gate_passed": gate.passed, "total_seconds": round(sum(s["seconds"] for s in steps), 1),
            "peak_rss_gib": round(_rss_gib(), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=138_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--models", nargs="+", default=["popularity", "segment_popularity", "item_knn", "ease",
                                                         "two_tower", "hybrid"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="var/benchmarks/scale.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent if Path(args.out).parent.exists() else None) as tmp:
        result = run(args.interactions, args.users, args.items, args.models, Path(tmp), args.epochs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
