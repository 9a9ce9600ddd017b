"""The ``recsys`` command line. Each command is a thin shell around a flow or a task function.

Exit codes: 0 success; 1 unexpected error; 2 bad arguments, mapping or unavailable source;
3 one or more files could not be parsed at all (the others were loaded); 4 the validation gate held
the batch back; 5 the publish gate kept the last good partition.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from recsys.errors import RecsysError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_FILES_FAILED = 0, 1, 2, 3


def _quiet_prefect() -> None:
    # Telemetry of the temporary Prefect server only adds log noise ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _mapping_from_args(args: argparse.Namespace) -> dict | None:
    from tasks.sources import load_mapping, with_overrides

    mapping = load_mapping(Path(args.mapping)) if args.mapping else {}
    flags = {
        "user_id": args.user_col, "item_id": args.item_col, "rating": args.rating_col,
        "timestamp": args.timestamp_col, "timestamp_format": args.timestamp_format,
        "delimiter": args.delimiter,
    }
    if any(value is not None for value in flags.values()):
        base = mapping.get("interactions", {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"})
        mapping["interactions"] = with_overrides(base, **flags)
    return mapping or None


def cmd_generate(args: argparse.Namespace) -> int:
    from tasks.generate import GeneratorConfig, generate

    config = GeneratorConfig(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                             seed=args.seed)
    paths = generate(Path(args.out), config)
    for kind, path in paths.items():
        print(f"{kind:13} {path}")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import ingest_flow

    mapping = _mapping_from_args(args)
    report = ingest_flow(
        source=args.source, path=args.path, mapping=mapping, users=args.users, items=args.items,
        mapping_dir=str(Path(args.mapping).resolve().parent) if args.mapping else None,
    )
    failed = [f for f in report["files"] if f["status"] == "failed"]
    if failed:
        print(f"{len(failed)} file(s) could not be parsed at all; see the messages above", file=sys.stderr)
        return EXIT_FILES_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic data set with planted structure")
    gen.add_argument("--out", required=True, help="folder for users.csv, items.csv, interactions.csv")
    gen.add_argument("--users", type=int, default=1500)
    gen.add_argument("--items", type=int, default=600)
    gen.add_argument("--interactions", type=int, default=75_000)
    gen.add_argument("--seed", type=int, default=42)
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="load a source into the warehouse (incremental, idempotent)")
    _add_source_args(ing)
    ing.set_defaults(func=cmd_ingest)
    return parser


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="synthetic", choices=["synthetic", "movielens-100k", "csv", "parquet"])
    p.add_argument("--path", help="file or folder of the source (synthetic/movielens: a folder); "
                                  "omitted: generate (synthetic) or download (movielens-100k)")
    p.add_argument("--mapping", help="TOML file mapping your columns to user_id, item_id, rating, timestamp")
    p.add_argument("--users", help="users file (csv/parquet sources)")
    p.add_argument("--items", help="items file (csv/parquet sources)")
    p.add_argument("--user-col", help="column holding the user id")
    p.add_argument("--item-col", help="column holding the item id")
    p.add_argument("--rating-col", help="column holding the rating or weight (optional)")
    p.add_argument("--timestamp-col", help="column holding the time")
    p.add_argument("--timestamp-format", help="auto (default), epoch, iso, or a strptime format")
    p.add_argument("--delimiter", help="field separator of CSV files (default ',')")


def main(argv: list[str] | None = None) -> int:
    _quiet_prefect()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
