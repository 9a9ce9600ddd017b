"""A nightly increment against a loaded warehouse: what checking a small batch of new rows costs as the warehouse
grows. Memory and time must follow the batch, not the warehouse (the night of a shop appends ~1 % a day).

    python -m benchmarks.increment --loaded 1000000 20000000 --batch 100000

For each warehouse size, in a fresh home: ``--loaded`` interactions written straight into the warehouse (SQL,
not the ingest: this measures the increment), then ``--batch`` rows staged as one run, 1 % of them copies of
loaded rows. Then, each in a process of its own so that its peak RSS is its own, the two steps that compare
the batch with what is loaded: the promotion's plan (``sql/ingest/batch_duplicates.sql`` and
``plan_interactions.sql``: which rows are new) and the gate's batch, read as the gate reads it (the sets
``sql/validate/gate_*.sql`` and the duplicates once, then ``sql/validate/interactions_batch.sql`` chunk by
chunk: the derived columns the expectations judge, duplicates and new users among them). Prints a JSON and a
table; checks the duplicates found are exactly the copies planted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from benchmarks import write_results
from recsys import db
from recsys.progress import peak_rss_gib
from recsys.settings import Settings
from tasks.validate import GATE_CHUNK_ROWS, batch_chunks

RUN_ID = "increment"
COPY_SHARE = 0.01  # of the batch: rows already loaded


def fill(settings: Settings, loaded: int, batch: int) -> None:
    """``loaded`` interactions of 200k users x 60k items, then a staged batch of ``batch`` rows."""
    copies = int(batch * COPY_SHARE)
    with db.warehouse(settings) as wh:
        db.migrate(wh)
        wh.execute("""insert into interactions
                      select (i % 200000) + 1, (hash(i) % 60000) + 1, 4.0, to_timestamp(1.6e9 + i)::timestamp,
                             'loaded', 1
                      from range($n) t(i) order by 4""", {"n": loaded})
        wh.execute("""insert into staging_interactions
                      select $run_id, 2, i + 2, 'new', (i % 250000) + 1, (hash(i + 7) % 60000) + 1, 3.0,
                             to_timestamp(2e9 + i)::timestamp
                      from range($n) t(i)""", {"run_id": RUN_ID, "n": batch - copies})
        wh.execute(f"""insert into staging_interactions
                      select $run_id, 2, $first + row_number() over (order by user_id, item_id, ts), 'copy',
                             user_id, item_id, rating, ts
                      from (select * from interactions using sample reservoir({copies:d} rows) repeatable (1))""",
                   {"run_id": RUN_ID, "first": batch - copies + 2})
        wh.execute("checkpoint")


def plan(wh: db.Warehouse) -> int:
    wh.run("ingest/batch_duplicates", {"run_id": RUN_ID})  # made by the gate in a night; here, on its own
    wh.run("ingest/plan_interactions", {"run_id": RUN_ID})
    return wh.scalar("select count(*) filter (where is_duplicate) from plan_interactions")


def gate_query(wh: db.Warehouse) -> int:
    # The chunks are read whole into frames, as the gate reads them: no column of the query is left out.
    params = {"run_id": RUN_ID, "all_users_known": True, "all_items_known": True}
    return sum(int(frame["is_duplicate"].sum()) for frame in batch_chunks(wh, "interactions", params, GATE_CHUNK_ROWS))


STEPS = {"connect": lambda wh: 0, "plan (promotion)": plan, "gate batch query": gate_query}


def _child(settings: Settings, step: str, out) -> None:
    with db.warehouse(settings) as wh:
        started = time.perf_counter()
        found = STEPS[step](wh)
        seconds = time.perf_counter() - started
    out.send((seconds, found, peak_rss_gib()))


def measure(settings: Settings, step: str) -> dict:
    """One step in a fresh process of its own (spawned, not forked: a fork of a process with threads may hang):
    its wall seconds, its peak RSS and what it found."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(settings, step, sender))
    process.start()
    sender.close()  # the child's copy alone: if it dies without a result, recv raises instead of waiting forever
    try:
        seconds, found, peak = receiver.recv()
    finally:
        process.join()
    if process.exitcode:
        raise RuntimeError(f"step {step} failed (exit code {process.exitcode})")
    return {"step": step, "seconds": round(seconds, 2), "peak_rss_gib": round(peak, 2), "duplicates": int(found or 0)}


def run(loaded: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="increment-") as tmp:
        settings = Settings(home=Path(tmp))
        started = time.perf_counter()
        fill(settings, loaded, batch)
        fill_seconds = time.perf_counter() - started
        steps = [measure(settings, step) for step in STEPS]
    planted = int(batch * COPY_SHARE)
    for step in steps[1:]:
        if step["duplicates"] != planted:
            raise AssertionError(f"{step['step']} found {step['duplicates']} duplicates, {planted} were planted")
    return {"loaded": loaded, "batch": batch, "fill_seconds": round(fill_seconds, 1), "steps": steps}


def format_table(results: list[dict]) -> str:
    lines = [f"{'loaded':>12} {'batch':>9}  {'step':18} {'seconds':>8} {'peak RSS GiB':>13}"]
    for r in results:
        for s in r["steps"]:
            lines.append(f"{r['loaded']:>12,} {r['batch']:>9,}  {s['step']:18} {s['seconds']:>8} "
                         f"{s['peak_rss_gib']:>13}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loaded", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--out", default="var/benchmarks/increment.json")
    args = parser.parse_args(argv)
    results = []
    for loaded in args.loaded:
        results.append(run(loaded, args.batch))
        print(json.dumps(results[-1]), flush=True)
    write_results(results, args.out, format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
