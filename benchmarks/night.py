"""The whole night at scale: the same flows ``recsys nightly`` runs, on synthetic data of ML-20M shape.

    python -m benchmarks.night --sizes 1000000 5000000 20000000 --out var/benchmarks/night.json

For each size, in a fresh home: generate (not timed as part of the night), then the ingest flow and the
train-and-publish flow, each step's wall seconds and the process's peak RSS after it. Next to them, in the
same run and on the same files: DuckDB's raw ``read_csv`` of the interactions (the ingest ceiling) and a
numpy float32 SGEMM (the scoring ceiling), against which ingest rows/s and the published model's scoring
GFLOP/s are reported. Prints a JSON and a table. Targets (20 M): <= 30 min, <= 12 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
from prefect import flow

from flows.ingest import ingest_flow
from flows.nightly import peak_rss_gib, train_publish_flow
from models.registry import load
from tasks.generate import SYNTHETIC_FILES, GeneratorConfig, generate

# ML-20M: 138,493 users and 26,744 items rated at 20 M interactions.
USERS_PER_MILLION, ITEMS_PER_MILLION = 6_925, 1_337


def shape(n_interactions: int) -> tuple[int, int]:
    millions = n_interactions / 1e6
    return max(200, int(USERS_PER_MILLION * millions)), max(100, int(ITEMS_PER_MILLION * millions))


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def raw_read_csv_rows_per_s(path: Path) -> float:
    """DuckDB's own ``read_csv`` of the file into a table (sniffed types, no checks): the ingest ceiling."""
    with duckdb.connect() as con:
        started = time.perf_counter()
        con.execute("create table raw as select * from read_csv($path)", {"path": str(path)})
        seconds = time.perf_counter() - started
        rows = con.sql("select count(*) from raw").fetchall()[0][0]
    return rows / seconds


@flow(name="benchmark-warm-up")
def warm_up() -> None:
    """Start Prefect's temporary API server before anything is timed (15-60 s on 2 cores)."""


def scoring_gflops(model_dir: Path, model: str = "ease", users: int = 20_000) -> float:
    """Blockwise scoring of the production EASE: 2 * known interactions * items flops per user."""
    fitted = load(model_dir / model)
    ids = fitted.user_ids[:users]
    nnz = fitted.train[: len(ids)].nnz
    started = time.perf_counter()
    fitted.recommend(ids, n=50)
    return 2 * nnz * len(fitted.item_ids) / (time.perf_counter() - started) / 1e9


def run_size(n: int, home: Path, epochs: int, models: list[str] | None) -> dict:
    n_users, n_items = shape(n)
    os.environ["RECSYS_HOME"] = str(home)
    os.environ["RECSYS_EPOCHS"] = str(epochs)
    landing = home / "generated"  # a --path source, outside the landing area
    generate(landing, GeneratorConfig(n_users=n_users, n_items=n_items, n_interactions=n, seed=1))
    raw = raw_read_csv_rows_per_s(landing / SYNTHETIC_FILES["interactions"])
    warm_up()
    started = time.perf_counter()
    ingested = ingest_flow(source="synthetic", path=str(landing), home=str(home))
    ingest_seconds = time.perf_counter() - started
    rows = ingested["totals"]["rows_read"]
    started = time.perf_counter()
    night = train_publish_flow(run_date=str(date(2026, 11, 23)), models=models, home=str(home),
                               ingested=ingested["totals"])
    night_seconds = time.perf_counter() - started
    steps = [{"step": "ingest (stage + gate + promote)", "seconds": round(ingest_seconds, 1),
              "peak_rss_gib": None}, *night["steps"]]
    gemm = sgemm_gflops()
    scoring = scoring_gflops(Path(night["models"].model_dir))
    return {"interactions": n, "users": n_users, "items": n_items, "steps": steps,
            "total_seconds": round(ingest_seconds + night_seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "ingest_rows_per_s": round(rows / ingest_seconds), "raw_read_csv_rows_per_s": round(raw),
            "ingest_vs_raw": round(rows / ingest_seconds / raw, 3),
            "scoring_gflops": round(scoring, 2), "sgemm_gflops": round(gemm, 1),
            "scoring_vs_sgemm": round(scoring / gemm, 3)}


def format_table(results: list[dict]) -> str:
    names = list(dict.fromkeys(s["step"] for r in results for s in r["steps"]))
    head = f"{'step':34}" + "".join(f"{r['interactions'] / 1e6:>9.0f} M s  {'GiB':>5}" for r in results)
    lines = [head]
    for name in names:
        cells = []
        for r in results:
            s = next((s for s in r["steps"] if s["step"] == name), None)
            rss = "" if s is None or s["peak_rss_gib"] is None else f"{s['peak_rss_gib']:5.1f}"
            cells.append(f"{s['seconds'] if s else float('nan'):11.1f}  {rss:>5}")
        lines.append(f"{name:34}" + "".join(cells))
    for key in ("total_seconds", "peak_rss_gib", "ingest_vs_raw", "scoring_vs_sgemm"):
        lines.append(f"{key:34}" + "".join(f"{r[key]:>18}" for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--epochs", type=int, default=30, help="two-tower epochs (early stopping applies)")
    parser.add_argument("--models", nargs="+", help="models (default: RECSYS_MODELS)")
    parser.add_argument("--out", default="var/benchmarks/night.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one size, this process
    args = parser.parse_args(argv)
    if args.one:  # a child: one size in a fresh process, so its peak RSS is its own
        with tempfile.TemporaryDirectory(prefix=f"night-{args.sizes[0]}-") as tmp:
            Path(args.out).write_text(json.dumps(run_size(args.sizes[0], Path(tmp), args.epochs, args.models)))
        return 0
    results = []
    for n in args.sizes:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, "-m", "benchmarks.night", "--one", "--sizes", str(n), "--epochs",
                       str(args.epochs), "--out", out.name, *(["--models", *args.models] if args.models else [])]
            subprocess.run(command, check=True)
            results.append(json.loads(Path(out.name).read_text()))
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
