"""The publish step's gate and write alone, at a night's shape: what the night's last task costs in time and
memory without the night before it.

    python -m benchmarks.publish --users 1000000 --per-user 100 --items 200000 --out var/benchmarks/publish.json

Why: the first 100 M shop night (1 M users x 200k items) scored every user and was then killed by the kernel in
its last task, ``publish_recommendations``, at 22.8 GiB: the gate and the atomic write held the snapshot's
100 M interactions beside the night's 50 M published rows with their reasons in words, and a pandas copy of
them for Great Expectations. The step now reads, judges and writes a few thousand whole users at a time
(:func:`tasks.publish.publish_step`); this measures it on files of the night's shape, made in a minute by
DuckDB instead of two hours of night: a snapshot of ``--users`` x ``--per-user`` interactions sorted by user,
``--items`` titled items, and the scoring blocks' top-``--top-n`` lists with reasons of every kind (what
:func:`tasks.publish.score_step` writes), split into ``--blocks`` files. The step runs in a child process
(its wall seconds and peak RSS are its own), once per ``--chunk-rows`` asked (a chunk larger than a scoring
block's rows: one block at a time). Prints a JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb

from benchmarks import write_results
from recsys.progress import peak_rss_gib
from recsys.schema import DEFAULT_TOP_N
from recsys.settings import Settings
from tasks.publish import ScoredBlock, publish_step
from tasks.snapshot import Snapshot
from tasks.validate import GATE_CHUNK_ROWS

RUN_DATE = date(2026, 12, 5)
REASONS = "['neighbour', 'content', 'segment', 'popular']"


def make_files(folder: Path, users: int, per_user: int, items: int, top_n: int, blocks: int) -> dict:
    """The snapshot and the scored blocks, as DuckDB writes them (rows in user id order, as the product's)."""
    if per_user + top_n > items:
        raise SystemExit(f"--per-user {per_user} + --top-n {top_n} must not exceed --items {items}")
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("set preserve_insertion_order = true")
    # A user's items are a run of the catalogue from a place of their own; the lists continue the run (unseen).
    con.execute(f"copy (select i // {per_user} as user_id, (i // {per_user} * 7919 + i % {per_user}) % {items} "
                f"as item_id, 1.0::double as rating, timestamp '2020-01-01' + to_seconds(i % {per_user}) as ts "
                f"from range({users * per_user}) t(i)) to '{folder / 'interactions.parquet'}' (format parquet)")
    con.execute(f"copy (select i as user_id, 20 + i % 60 as age, ['F', 'M'][1 + i % 2] as gender, "
                f"'other' as occupation, '00000' as zip from range({users}) t(i)) "
                f"to '{folder / 'users.parquet'}' (format parquet)")
    con.execute(f"copy (select i as item_id, 'Item number ' || i || ' (2020)' as title, date '2020-01-01' as "
                f"release_date, ['Drama'] as genres from range({items}) t(i)) "
                f"to '{folder / 'items.parquet'}' (format parquet)")
    scored = []
    for block in range(blocks):
        lo, hi = users * block // blocks, users * (block + 1) // blocks
        top, new = folder / f"block-{block:05d}.parquet", folder / f"new-items-{block:05d}.parquet"
        con.execute(f"copy (select u as user_id, (u * 7919 + {per_user} + r) % {items} as item_id, "
                    f"(r + 1)::integer as rank, (1.0 / (r + 1))::float as score, "
                    f"{REASONS}[1 + (u + r) % 4] as reason_kind, "
                    f"case when (u + r) % 4 < 2 then (u * 7919 + r % {per_user}) % {items} end as reason_item_id, "
                    f"case when (u + r) % 4 = 2 then 'gender=F, age_bucket=25-34' end as reason_segment "
                    f"from (select i // {top_n} as u, i % {top_n} as r from range({lo * top_n}, {hi * top_n}) t(i))) "
                    f"to '{top}' (format parquet)")
        con.execute(f"copy (select 0::bigint as item_id, 0::bigint as user_id, 0.0::float as score limit 0) "
                    f"to '{new}' (format parquet)")
        scored.append(ScoredBlock(str(top), str(new)))
    con.execute(f"copy (select 'F' as gender, '25-34' as age_bucket, i::bigint as item_id, (i + 1)::integer "
                f"as rank, 1.0::float as score from range({top_n}) t(i)) to '{folder / 'defaults.parquet'}' "
                f"(format parquet)")
    con.close()
    snap = Snapshot(str(folder), "benchmark", users * per_user, users, items)
    return {"snapshot": snap.__dict__, "scored": [b.__dict__ for b in scored],
            "defaults": str(folder / "defaults.parquet")}


def publish_once(home: Path, files: dict, top_n: int, chunk_rows: int) -> dict:
    """The child's work: the publish step on ``files``, timed, with this process's peak RSS."""
    settings = Settings(home=home, top_n=top_n)
    started = time.perf_counter()
    done = publish_step(settings, "benchmark", RUN_DATE, Snapshot(**files["snapshot"]), "hybrid",
                        [ScoredBlock(**b) for b in files["scored"]], files["defaults"], None, chunk_rows=chunk_rows)
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "users": done["users"], "rows": done["rows"],
            "published_gib": round(Path(done["paths"]["recommendations"]).stat().st_size / 2**30, 2)}


def format_table(results: list[dict]) -> str:
    lines = ["| users | interactions | rows published | chunk rows | seconds | peak RSS GiB | file GiB |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['users']:,} | {r['interactions']:,} | {r['rows']:,} | {r['chunk_rows']:,} | {r['seconds']} | "
              f"{r['peak_rss_gib']} | {r['published_gib']} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--top-n", type=int, default=DEFAULT_TOP_N)
    parser.add_argument("--blocks", type=int, default=2, help="scoring blocks (the local runner's: 2)")
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[GATE_CHUNK_ROWS])
    parser.add_argument("--out", default="var/benchmarks/publish.json")
    parser.add_argument("--child", nargs=3, metavar=("HOME", "FILES", "CHUNK_ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        home, files, chunk_rows = args.child
        print(json.dumps(publish_once(Path(home), json.loads(Path(files).read_text()), args.top_n, int(chunk_rows))))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp:
        started = time.perf_counter()
        files = make_files(Path(tmp) / "files", args.users, args.per_user, args.items, args.top_n, args.blocks)
        made = round(time.perf_counter() - started, 1)
        (Path(tmp) / "files.json").write_text(json.dumps(files))
        for chunk_rows in args.chunk_rows:
            home = Path(tmp) / f"home-{chunk_rows}"
            child = subprocess.run([sys.executable, "-m", "benchmarks.publish", "--top-n", str(args.top_n),
                                    "--child", str(home), str(Path(tmp) / "files.json"), str(chunk_rows)],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                print(child.stdout + child.stderr, file=sys.stderr)
                return child.returncode
            result = {"users": args.users, "interactions": args.users * args.per_user, "items": args.items,
                      "top_n": args.top_n, "blocks": args.blocks, "chunk_rows": chunk_rows, "files_seconds": made,
                      **json.loads(child.stdout.strip().splitlines()[-1])}
            print(json.dumps(result), flush=True)
            results.append(result)
    write_results(results, args.out, format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
